#!/bin/bash
# Reconnect test of lunard's vhost-user-scsi front-end: a Linux guest runs an
# O_DIRECT write loop over LUN 0 (a `file` image, so the data outlives the
# daemon; tests/vm/init-reconnect.sh) and the host kills lunard with SIGKILL
# twice mid-loop, each time starting it again on the same socket and image.
# QEMU runs with `-chardev socket,...,reconnect=1` and hands the new process
# the inflight region (INFLIGHT_SHMFD) of the dead one.
#
#  1. held kill: on the guest's cue "hold" the host pauses LUN 0
#     (`lunarctl stop --lun 0`), waits until lunard holds the four writes of
#     the next chunk, and kills it: the new lunard must log that it submits
#     those 4 again, and serve each once (the write count it reports when the
#     guest reaches the second cue is exactly the guest's writes since);
#  2. free kill: on the cue "kill" the host records the write count, writes
#     "GO" into the image (the guest polls for it with reads), and kills
#     lunard a random moment later, amid four concurrent writes.
#
# Passes when the loop ends (a command the new lunard loses hangs it: Linux's
# virtio-scsi never times a command out) with no I/O error, command timeout
# or abort in the guest (dd and the kernel log), the data reads back, and
# the checks above hold.
#
# Needs a QEMU whose vhost-user-scsi reconnects: 8.2 or later. QEMU 7.2
# (Debian 12's) cannot: with reconnect=1 the device fails at start. When
# qemu-system-x86_64 is older than 8.2 (or missing) on Debian 12, this
# script installs qemu-system-x86 from bookworm-backports (QEMU 10.0); on
# another system with an old QEMU it exits 77 (skipped).
# `reconnect=1` is deprecated since QEMU 9.2 (for `reconnect-ms`) and still
# accepted by 10.0: CHARDEV_OPTS can say `,reconnect-ms=1000` instead.
# Bounded: QEMU is killed after $GUEST_TIMEOUT s (default 240).
# usage: tests/vm/vhost-reconnect.sh
# env: GUEST_TIMEOUT, KEEP_LOGS (a directory: keep the logs there),
#      DOWN (seconds lunard stays dead, default 2),
#      CHARDEV_OPTS (appended to QEMU's -chardev socket; default ",reconnect=1")
set -euo pipefail

guest_timeout=${GUEST_TIMEOUT:-240}
down=${DOWN:-2}
chardev_opts=${CHARDEV_OPTS-,reconnect=1}
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo

# QEMU's version as MAJOR*100+MINOR (0 when not installed).
qemu_version() {
    qemu-system-x86_64 --version 2>/dev/null |
        sed -n '1s/^QEMU emulator version \([0-9]*\)\.\([0-9]*\).*/\1 \2/p' |
        { read -r major minor && echo $((major * 100 + minor)) || echo 0; }
}
need=()
ls /boot/vmlinuz-* >/dev/null 2>&1 || need+=(linux-image-amd64)
[ -x /bin/busybox ] || need+=(busybox-static)
command -v cpio >/dev/null || need+=(cpio)
command -v jq >/dev/null || need+=(jq)
backports=
if [ "$(qemu_version)" -lt 802 ]; then
    if grep -qx "VERSION_CODENAME=bookworm" /etc/os-release 2>/dev/null; then
        backports=1
    else
        command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
    fi
fi
if [ ${#need[@]} -gt 0 ] || [ -n "$backports" ]; then
    if [ -n "$backports" ]; then
        echo "$(qemu-system-x86_64 --version 2>/dev/null | head -1 || echo "no QEMU"): installing qemu-system-x86 from bookworm-backports"
        if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
            printf '%s\n' "Types: deb" "URIs: http://deb.debian.org/debian" "Suites: bookworm-backports" \
                "Components: main" "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg" |
                $SUDO tee /etc/apt/sources.list.d/lunar-bookworm-backports.sources >/dev/null
        fi
    fi
    $SUDO apt-get update -qq
    if [ ${#need[@]} -gt 0 ]; then
        echo "installing ${need[*]}"
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" kmod >/dev/null
    fi
    if [ -n "$backports" ]; then
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
            -t bookworm-backports qemu-system-x86 >/dev/null
    fi
fi
if [ "$(qemu_version)" -lt 802 ]; then
    echo "SKIP: $(qemu-system-x86_64 --version 2>/dev/null | head -1 || echo "no QEMU") cannot reconnect vhost-user-scsi (8.2 or later can)"
    echo "vhost-reconnect: 0 passed, 0 failed, 1 skipped"
    exit 77
fi
qemu-system-x86_64 --version | head -1

target_dir=${CARGO_TARGET_DIR:-$repo/target}
(cd "$repo" && cargo build -q -p lunard --bins)
lunard=$target_dir/debug/lunard
lunarctl=$target_dir/debug/lunarctl

work=$(mktemp -d)
lunard_pid=
qemu_pid=
cleanup() {
    [ -n "$qemu_pid" ] && kill -9 "$qemu_pid" 2>/dev/null || true
    [ -n "$lunard_pid" ] && kill "$lunard_pid" 2>/dev/null || true
    [ -n "$lunard_pid" ] && wait "$lunard_pid" 2>/dev/null || true
    if [ -n "${KEEP_LOGS:-}" ]; then
        mkdir -p "$KEEP_LOGS" && cp "$work"/*.log "$KEEP_LOGS"/ 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

kernel=$(ls -1 /boot/vmlinuz-* | sort -V | tail -1)
kver=${kernel#/boot/vmlinuz-}
INIT=$here/init-reconnect.sh BINARIES= "$here/build-initramfs.sh" "$work/initramfs.gz" "$kver"

sock=$work/vus.sock
ctl=$work/ctl.sock
image=$work/disk.img
truncate -s 64M "$image"
start_lunard() { # log file
    "$lunard" --iothreads 1 --listen 127.0.0.1:0 --control "$ctl" --lun "backend=file,path=$image" \
        --vhost-user "$sock,num-queues=1" --log info > "$1" 2>&1 &
    lunard_pid=$!
    for _ in $(seq 100); do
        grep -q "vhost-user-scsi controller listening" "$1" 2>/dev/null && [ -S "$ctl" ] && return 0
        kill -0 "$lunard_pid" 2>/dev/null || { cat "$1"; echo "lunard exited"; exit 1; }
        sleep 0.1
    done
    cat "$1"
    echo "lunard did not listen"
    exit 1
}
kill_lunard() {
    kill -9 "$lunard_pid"
    wait "$lunard_pid" 2>/dev/null || true
    lunard_pid=
}
lun0() { # jq path under LUN 0 of lunard's status
    "$lunarctl" --control "$ctl" --json status 2>/dev/null | jq -r ".targets[0].luns[0].$1" 2>/dev/null
}
serial() { tr -d '\r' 2>/dev/null < "$work/serial.log" || true; }
last_written() { serial | sed -n 's/^LUNAR-VM: wrote chunk \([0-9]*\) .*/\1/p' | tail -1; }
start_lunard "$work/lunard1.log"

start=$(date +%s)
timeout -s KILL "$guest_timeout" qemu-system-x86_64 \
    -machine q35 -accel tcg -cpu max -m 512M -smp 1 \
    -object memory-backend-memfd,id=mem,size=512M,share=on -numa node,memdev=mem \
    -kernel "$kernel" -initrd "$work/initramfs.gz" \
    -append "console=ttyS0 panic=-1 quiet loglevel=4 no_timer_check" \
    -chardev socket,id=vus,path="$sock"$chardev_opts \
    -device vhost-user-scsi-pci,chardev=vus,num_queues=1 \
    -display none -serial file:"$work/serial.log" -monitor none -no-reboot \
    > "$work/qemu.log" 2>&1 &
qemu_pid=$!

# held: the chunk whose writes lunard 1 held when killed, and how many.
held= held_chunk= free= free_chunk= done_chunks= writes2= writes3= killed=0
while kill -0 "$qemu_pid" 2>/dev/null; do
    if [ -z "$held" ] && serial | grep -aq "^LUNAR-RECONNECT: hold"; then
        "$lunarctl" --control "$ctl" stop --lun 0 > "$work/lunarctl.log" 2>&1 ||
            echo "lunarctl stop --lun 0 failed: $(cat "$work/lunarctl.log")"
        for _ in $(seq 100); do
            held=$(lun0 in_flight)
            [ "${held:-0}" -ge 4 ] && break
            sleep 0.2
        done
        held_chunk=$(($(last_written) + 1))
        kill_lunard
        killed=$((killed + 1))
        echo "lunard 1 killed (SIGKILL) at $(($(date +%s) - start)) s holding $held commands (chunk $held_chunk)"
        sleep "$down"
        start_lunard "$work/lunard2.log"
        echo "lunard 2 started at $(($(date +%s) - start)) s"
    fi
    if [ -z "$free" ] && [ -n "$held" ] && serial | grep -aq "^LUNAR-RECONNECT: kill"; then
        free=$(date +%s)
        free_chunk=$(serial | sed -n 's/^LUNAR-RECONNECT: kill \([0-9]*\)/\1/p')
        writes2=$(lun0 stats.commands.write)
        printf GO | dd of="$image" bs=4096 seek=$((64 * 256 - 1)) conv=notrunc status=none
        sleep "0.$((RANDOM % 8 + 2))"
        # Chunks the guest saw end before the kill: lunard 3 never gets their writes.
        done_chunks=$(($(last_written) + 1))
        kill_lunard
        killed=$((killed + 1))
        echo "lunard 2 killed (SIGKILL) at $(($(date +%s) - start)) s after chunk $(last_written) (it had served $writes2 writes at the cue)"
        sleep "$down"
        start_lunard "$work/lunard3.log"
        echo "lunard 3 started at $(($(date +%s) - start)) s"
    fi
    sleep 0.2
done
wait "$qemu_pid" || true
qemu_pid=
echo "guest ran $(($(date +%s) - start)) s"
[ $killed -eq 2 ] && [ -n "$lunard_pid" ] && writes3=$(lun0 stats.commands.write)

plain() { sed 's/\x1b\[[0-9;]*m//g' "$1" 2>/dev/null; }
resubmitted() { # log: the counts of "resubmitting" lines, space-separated
    { plain "$1" | grep -a "resubmitting the requests" || true; } | sed -n 's/.* requests=\([0-9]*\).*/\1/p' |
        tr '\n' ' ' | sed 's/ $//'
}
passed=0 failed=0
check() { # what got want
    if [ "$2" = "$3" ] && [ -n "$3" ]; then
        passed=$((passed + 1))
        echo "ok   $1: $2"
    else
        failed=$((failed + 1))
        echo "FAIL $1: got '$2', expected '$3'"
    fi
}
serial | grep -a "LUNAR-VM\|LUNAR-RECONNECT" | grep -v "wrote chunk" || true
serial | grep -a "wrote chunk \(${held_chunk:-x}\|${free_chunk:-x}\) " || true
serial | grep -a "wrote chunk" | tail -1 || true
echo "---- QEMU"
cat "$work/qemu.log"
for n in 2 3; do
    echo "---- lunard $n"
    { plain "$work/lunard$n.log" | grep -a "vhost" || true; } | tail -8
done
result=$(serial | grep -a "^LUNAR-VM-RESULT:" || true)
check "lunard killed twice mid-loop and started again" "$killed" 2
check "lunard 1 held the 4 writes of the chunk after the cue when killed" "$held $held_chunk" "4 4"
check "lunard 2: frontend connected" "$(plain "$work/lunard2.log" | grep "frontend connected" >/dev/null && echo yes)" yes
check "lunard 2 resubmitted the 4 held writes" "$(resubmitted "$work/lunard2.log")" 4
# Each resubmitted write served once: at the free kill's cue (the guest only
# reads meanwhile) lunard 2 has served the 4 held writes and 4 per chunk since.
check "lunard 2 served each write once (held chunk $held_chunk to chunk $free_chunk)" \
    "$writes2" "$([ -n "$held_chunk" ] && [ -n "$free_chunk" ] && echo $((4 * (free_chunk - held_chunk))))"
check "lunard 3: frontend connected" "$(plain "$work/lunard3.log" | grep "frontend connected" >/dev/null && echo yes)" yes
# lunard 3 gets again what lunard 2 had taken and not answered (a write
# lunard 2 carried out but had not answered runs twice: the guest never saw
# it end, that is allowed) and the writes the guest issues after the kill;
# never those of a chunk the guest saw end before the kill. (A lost command
# hangs the guest's loop: QEMU is killed at $GUEST_TIMEOUT, and the guest
# result fails.)
again=$(resubmitted "$work/lunard3.log")
most=$((4 * (48 - ${done_chunks:-48})))
check "lunard 3 served at most the writes of chunks $done_chunks-47 ($most; it resubmitted ${again:-none})" \
    "$([ -n "$writes3" ] && [ "$writes3" -le $most ] && echo "yes ($writes3)")" "yes ($writes3)"
check "guest result" "$(echo "$result" | cut -d' ' -f1-2)" "LUNAR-VM-RESULT: PASS"
echo "vhost-reconnect: $passed passed, $failed failed"
[ $failed -eq 0 ]
