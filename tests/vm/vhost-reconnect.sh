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
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

guest_timeout=${GUEST_TIMEOUT:-240}
down=${DOWN:-2}
chardev_opts=${CHARDEV_OPTS-,reconnect=1}

vm_need jq jq
vm_install 802
if [ "$(qemu_version)" -lt 802 ]; then
    echo "SKIP: $(qemu_name) cannot reconnect vhost-user-scsi (8.2 or later can)"
    echo "vhost-reconnect: 0 passed, 0 failed, 1 skipped"
    exit 77
fi
qemu_name
vm_build
vm_setup init-reconnect.sh ""

image=$work/disk.img
truncate -s 64M "$image"
start_lunard() { # log file
    vm_start_lunard "$1" 1 --iothreads 1 --lun "backend=file,path=$image"
}
# restart_lunard WHAT: kills lunard (SIGKILL; WHAT: how it stood, for the
# log), waits $down s and starts the next one (log lunardN.log).
killed=0
restart_lunard() {
    kill -9 "$lunard_pid"
    wait "$lunard_pid" 2>/dev/null || true
    lunard_pid=
    killed=$((killed + 1))
    echo "lunard $killed killed (SIGKILL) at $(elapsed) s $1"
    sleep "$down"
    start_lunard "$work/lunard$((killed + 1)).log"
    echo "lunard $((killed + 1)) started at $(elapsed) s"
}
lun0() { # jq path under LUN 0 of lunard's status
    { "$lunarctl" --control "$ctl" --json status 2>/dev/null || true; } | jq -r ".targets[0].luns[0].$1" 2>/dev/null || true
}
last_written() { serial | sed -n 's/^LUNAR-VM: wrote chunk \([0-9]*\) .*/\1/p' | tail -1; }
start_lunard "$work/lunard1.log"

# held: the chunk whose writes lunard 1 held when killed, and how many.
held='' held_chunk='' free='' free_chunk='' done_chunks='' writes2='' writes3=''
cues() {
    if [ -z "$held" ] && serial_has "^LUNAR-RECONNECT: hold"; then
        "$lunarctl" --control "$ctl" stop --lun 0 > "$work/lunarctl.log" 2>&1 ||
            echo "lunarctl stop --lun 0 failed: $(cat "$work/lunarctl.log")"
        for _ in $(seq 100); do
            held=$(lun0 in_flight)
            [ "${held:-0}" -ge 4 ] && break
            sleep 0.2
        done
        held_chunk=$(($(last_written) + 1))
        restart_lunard "holding $held commands (chunk $held_chunk)"
    fi
    if [ -z "$free" ] && [ -n "$held" ] && serial_has "^LUNAR-RECONNECT: kill"; then
        free=$(date +%s)
        free_chunk=$(serial | sed -n 's/^LUNAR-RECONNECT: kill \([0-9]*\)/\1/p')
        writes2=$(lun0 stats.commands.write)
        printf GO | dd of="$image" bs=4096 seek=$((64 * 256 - 1)) conv=notrunc status=none
        sleep "0.$((RANDOM % 8 + 2))"
        # Chunks the guest saw end before the kill: lunard 3 never gets their writes.
        done_chunks=$(($(last_written) + 1))
        restart_lunard "after chunk $(last_written) (it had served $writes2 writes at the cue)"
    fi
}
vm_qemu 1 1 "" "$chardev_opts" > "$work/qemu.log" 2>&1
vm_wait_guest cues
echo "guest ran $(elapsed) s"
[ "$killed" -eq 2 ] && [ -n "$lunard_pid" ] && writes3=$(lun0 stats.commands.write)

resubmitted() { # log: the counts of "resubmitting" lines, space-separated
    { plain "$1" | grep -a "resubmitting the requests" || true; } | sed -n 's/.* requests=\([0-9]*\).*/\1/p' |
        tr '\n' ' ' | sed 's/ $//'
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
check_guest_result
vm_summary vhost-reconnect
