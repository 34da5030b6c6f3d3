#!/bin/bash
# Linux's own iSCSI initiator against lunard: QEMU (TCG) boots Debian's
# kernel with a busybox initramfs holding open-iscsi's iscsid and iscsiadm
# (from Debian's open-iscsi package, extracted here, not installed on the
# host), the iscsi_tcp, libiscsi_tcp, libiscsi, scsi_transport_iscsi and
# crc32c modules of the guest kernel, sg3-utils and e2fsprogs; its init is
# tests/vm/init-kinit.sh. QEMU's user-mode network reaches lunard, which
# listens on the wildcard address 0.0.0.0 in a network namespace of this
# script whose loopback also holds 192.0.2.1: the guest connects to
# 192.0.2.1 through slirp, lunard sees that address as the local end and
# must advertise it (not 0.0.0.0) in SendTargets, and the guest logs in to
# the discovered records. Two lunard processes: A (port 3260; targets
# kinit-open, kinit-chap, kinit-mutual, kinit-recover, kinit-slow) and B
# (port 3261, discovery CHAP; target kinit-dchap).
#
# Checks: SendTargets discovery with and without discovery CHAP (a wrong
# secret and none refused), the advertised portal reached, two LUNs,
# one-way and mutual CHAP (wrong secrets refused), CRC32C header and data
# digests on and off, mkfs.ext4 + 256 MiB written and verified through the
# file system + e2fsck clean, sg_inq / sg_vpd / sg_readcap / sg_luns in the
# guest equal to what libiscsi's tools report on the host, logout and
# login again, a LUN hot-added (lunarctl lun add) and one resized (lunarctl
# lun resize) seen after `iscsiadm -m session --rescan`, what `iscsiadm -m
# session -P 3` shows, the TargetAlias in the Login Responses. A slow
# backend (kinit-slow, fault=on, slowed by lunarctl lun fault beyond the
# guest's 3 s command timeout) drives the kernel's SCSI error handler:
# ABORT TASK, then LU reset and target reset (sg_reset -d, -t: the error
# handler's own entry points) must reach lunard in that order, be answered
# FUNCTION COMPLETE, and the writes in flight complete and read back. Then
# recovery: an O_DIRECT write loop (four 64 KiB writes in flight) on
# kinit-recover (a file LUN), first through tests/vm/cut-relay.py, which
# cuts the connection $CUTS times after a random number of bytes (inside
# PDUs, inside data segments), then at portal A while lunard A is killed
# with SIGKILL and started again $KILLS times and its session is killed
# once (lunarctl session kill); no write may fail and every chunk written
# must read back; the cuts, kills, reconnects and the longest stall are
# reported. Needs python3 (the relay).
#
# Needs root (network namespace). Installs what it needs on Debian 12.
# Bounded: QEMU is killed after $GUEST_TIMEOUT s.
# usage: tests/vm/kernel-initiator.sh
# env: GUEST_TIMEOUT (s, default 420), KILLS (SIGKILLs of lunard, default 3),
#      DOWN (s lunard stays dead, default 1), CUTS (connections cut by the
#      relay, default 4), SLOW_MS (the slow backend's delay, default 60000),
#      SLOW_MAX (s at most before the delay is removed, default 40), ONLY
#      (slow,cut,recovery: only those guest steps, for working on them; the
#      other checks fail), KEEP_LOGS (a directory: keep the serial console
#      and lunard logs there)
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

guest_timeout=${GUEST_TIMEOUT:-420}
kills=${KILLS:-3}
down=${DOWN:-1}
cuts=${CUTS:-4}
slow_ms=${SLOW_MS:-60000}
slow_max=${SLOW_MAX:-40}
[ "$(id -u)" = 0 ] || { echo "kernel-initiator: needs root (it creates a network namespace)"; exit 1; }

vm_need sg_inq sg3-utils
vm_need iscsi-inq libiscsi-bin
vm_need mkfs.ext4 e2fsprogs
vm_need jq jq
vm_need ip iproute2
vm_need od coreutils
vm_need python3 python3
dpkg -s libisns0 libopeniscsiusr >/dev/null 2>&1 || need+=(libisns0 libopeniscsiusr)
vm_install
vm_build

# open-iscsi's programs, from Debian's package (cached beside the build).
deb=${CARGO_TARGET_DIR:-$repo/target}/open-iscsi-deb
if [ ! -x "$deb/root/sbin/iscsid" ]; then
    rm -rf "$deb" && mkdir -p "$deb"
    (cd "$deb" && apt-get download -q open-iscsi 2>/dev/null) || { echo "apt-get download open-iscsi failed"; exit 1; }
    dpkg-deb -x "$deb"/open-iscsi_*.deb "$deb/root"
fi
echo "open-iscsi: $(basename "$deb"/open-iscsi_*.deb)"

ns=lunar-kinit-$$
lunard_b_pid=
relay_pid=
work=$(mktemp -d)
cleanup() {
    for p in "$lunard_b_pid" "$relay_pid"; do
        if [ -n "$p" ]; then
            kill "$p" 2>/dev/null || true
            wait "$p" 2>/dev/null || true
        fi
    done
    vm_cleanup
    ip netns del "$ns" 2>/dev/null || true
}
trap cleanup EXIT
ctl=$work/ctl.sock
kernel=$(printf '%s\n' /boot/vmlinuz-* | sort -V | tail -1)
kver=${kernel#/boot/vmlinuz-}

# The initramfs: iscsid, iscsiadm, 4 MiB of random data (the guest writes
# it 64 times, each copy after an 8-digit counter: 256 MiB whose checksum
# this side computes).
extra=$work/extra
mkdir -p "$extra/sbin"
cp "$deb/root/sbin/iscsid" "$deb/root/sbin/iscsiadm" "$extra/sbin/"
head -c 4M /dev/urandom > "$extra/base.bin"
want_sha=$(for i in $(seq 0 63); do printf '%08d' "$i"; cat "$extra/base.bin"; done | sha256sum | cut -d' ' -f1)
EXTRA_ROOT=$extra EXTRA_FILES=/etc/mke2fs.conf INIT=$here/init-kinit.sh \
    MODULES="virtio_pci virtio_net sd_mod sg crc32c_generic crc32c iscsi_tcp ext4" \
    BINARIES="sg_inq sg_vpd sg_readcap sg_luns sg_reset mkfs.ext4 e2fsck" \
    "$here/build-initramfs.sh" "$work/initramfs.gz" "$kver"

# The network namespace: loopback with 127.0.0.1 and 192.0.2.1 (the
# address the guest uses; TEST-NET-1, nothing outside answers to it).
ip netns add "$ns"
ip -n "$ns" link set lo up
ip -n "$ns" addr add 192.0.2.1/32 dev lo
addr=192.0.2.1
inns() { ip netns exec "$ns" "$@"; }

iqn=iqn.2026-11.dev.lunar
alias="Lunar kernel-initiator test (recover)"
cat > "$work/lunard.toml" <<EOF
iothreads = 2
listen = ["0.0.0.0:3260"]

# (LUNs as [[target.lun]] tables: lunarctl's lun add and resize write
# them back into this file, which it can edit in that form.)
[[target]]
name = "$iqn:kinit-open"
[[target.lun]]
spec = "backend=mem,size=512M"
[[target.lun]]
spec = "backend=mem,size=64M"

[[target]]
name = "$iqn:kinit-chap"
chap = { user = "alice", secret = "correct-horse-battery" }
lun = [{ spec = "backend=mem,size=16M" }]

[[target]]
name = "$iqn:kinit-mutual"
chap = { user = "carol", secret = "carol-secret-123" }
mutual-chap = { user = "target-m", secret = "target-secret-456" }
lun = [{ spec = "backend=mem,size=16M" }]

[[target]]
name = "$iqn:kinit-recover"
alias = "$alias"
lun = [{ spec = "backend=file,path=$work/recover.img,size=64M" }]

[[target]]
name = "$iqn:kinit-slow"
lun = [{ spec = "backend=mem,size=16M,fault=on" }]
EOF

# wait_log LOG PATTERN PID: until LOG has PATTERN (10 s at most); exits if
# the process ends or does not get there.
wait_log() {
    for _ in $(seq 100); do
        grep -a "$2" "$1" >/dev/null && return 0
        kill -0 "$3" 2>/dev/null || { cat "$1"; echo "lunard exited"; exit 1; }
        sleep 0.1
    done
    cat "$1"
    echo "lunard did not start listening"
    exit 1
}
started=0
start_a() {
    started=$((started + 1))
    # (not through inns: $! must be lunard's pid; ip netns exec execs it)
    ip netns exec "$ns" "$lunard" --config "$work/lunard.toml" --control "$ctl" --log info \
        > "$work/lunard$started.log" 2>&1 &
    lunard_pid=$!
    wait_log "$work/lunard$started.log" "portal 0.0.0.0:3260" "$lunard_pid"
    for _ in $(seq 50); do [ -S "$ctl" ] && break; sleep 0.1; done
}
start_a
ip netns exec "$ns" "$lunard" --listen 0.0.0.0:3261 --control "$work/ctl-b.sock" --target "$iqn:kinit-dchap" \
    --lun backend=mem,size=16M --discovery-chap-user bob --discovery-chap-secret discovery-secret-1 \
    > "$work/lunard-b.log" 2>&1 &
lunard_b_pid=$!
wait_log "$work/lunard-b.log" "portal 0.0.0.0:3261" "$lunard_b_pid"
ctlcmd() { "$lunarctl" --control "$ctl" "$@"; }
# The relay of the cut loop (tests/vm/cut-relay.py) at $addr:3262, to lunard
# A: its first CUTS connections are cut after 64 KiB to 4 MiB from the
# initiator (inside a write's data most of the time: each chunk is 256 KiB
# of data).
ip netns exec "$ns" python3 -u "$here/cut-relay.py" "$addr:3262" 127.0.0.1:3260 "$cuts" 65536 4194304 \
    > "$work/relay.log" 2>&1 &
relay_pid=$!
for _ in $(seq 50); do grep -q "^relay: listening" "$work/relay.log" && break; sleep 0.1; done
grep -q "^relay: listening" "$work/relay.log" || { cat "$work/relay.log"; echo "the relay did not start"; exit 1; }

# What libiscsi sees, before the guest boots.
ref=$work/ref
mkdir -p "$ref"
for lun in 0 1; do
    url=iscsi://$addr:3260/$iqn:kinit-open/$lun
    inns timeout 20 iscsi-inq "$url" > "$ref/inq$lun"
    inns timeout 20 iscsi-inq -e 1 -c 128 "$url" > "$ref/sn$lun"
    inns timeout 20 iscsi-inq -e 1 -c 131 "$url" > "$ref/di$lun"
    inns timeout 20 iscsi-readcapacity16 "$url" > "$ref/cap$lun"
done
# (iscsi-ls fails on the CHAP targets: it lists the others all the same)
inns timeout 20 iscsi-ls -s "iscsi://$addr:3260" > "$ref/ls" || true

# ---- the guest's cues
# on_cue VAR MARKER ARGS...: the first time the console shows MARKER, VAR
# gets the time and `lunarctl ARGS` runs.
on_cue() {
    local var=$1 marker=$2
    shift 2
    if [ -n "${!var}" ] || ! serial_has "$marker"; then
        return 0
    fi
    printf -v "$var" %s "$(date +%s)"
    ctlcmd "$@" >> "$work/lunarctl.log" 2>&1 || echo "lunarctl $* failed: $(cat "$work/lunarctl.log")"
}
# The slow backend: on each of the guest's cues "slow-abort", "slow-lu",
# "slow-target", kinit-slow's LUN is delayed by SLOW_MS per operation; the
# delay is removed once lunard has received the task management function
# of that phase (ABORT TASK, LU reset, target reset), or SLOW_MAX s after
# the cue. lunard's task management counts and log lines are kept when the
# guest logs out of kinit-slow.
slow_phases='' slow_at='' slow_want='' slow_off_why='' tmf_seen=''
tmf() { ctlcmd --json status | jq -c '.task_management'; }
slow_delay() { ctlcmd lun fault 0 --delay-ms "$1" --target "$iqn:kinit-slow" >> "$work/lunarctl.log" 2>&1 ||
    echo "lunarctl lun fault failed: $(tail -2 "$work/lunarctl.log")"; }
keep_tmf() {
    if [ -z "$tmf_seen" ] && serial_has "^LUNAR-KI: slow logout"; then
        tmf_seen=$(tmf)
        plain "$work/lunard$started.log" | grep -a "task management" > "$work/tmf.log" || true
    fi
}
slow() {
    local phase n
    keep_tmf
    if [ -z "$slow_at" ]; then
        for phase in abort:abort_task lu:lu_reset target:target_warm_reset; do
            case " $slow_phases " in *" ${phase%%:*} "*) continue ;; esac
            serial_has "^LUNAR-CUE: slow-${phase%%:*}\$" || continue
            slow_phases="$slow_phases ${phase%%:*}"
            slow_at=$(date +%s)
            slow_want=${phase#*:}
            slow_delay "$slow_ms"
            echo "kinit-slow delayed by $slow_ms ms per operation at $(elapsed) s (until $slow_want)"
            break
        done
    fi
    [ -n "$slow_at" ] || return 0
    n=$(tmf | jq ".received.$slow_want")
    if [ "${n:-0}" -ge 1 ] || [ $(($(date +%s) - slow_at)) -ge "$slow_max" ]; then
        slow_delay 0
        slow_off_why="$slow_off_why${slow_off_why:+; }$([ "${n:-0}" -ge 1 ] && echo "$slow_want received" || echo "$slow_max s passed") after $(($(date +%s) - slow_at)) s"
        echo "kinit-slow delay removed at $(elapsed) s ($slow_want: ${n:-0})"
        slow_at=
    fi
}

# Recovery loops. The guest's loop NAME writes chunks until the host writes
# STOP into the image's last 4 KiB block. "cut": the relay (started at the
# cue) cuts the connection CUTS times; STOP 6 chunks after the last cut.
# "recovery": each event (KILLS SIGKILLs of lunard A, each followed by a
# new lunard A DOWN s later, then a session kill) waits until the guest
# wrote 6 chunks since the last one ended (so it reconnected and goes on);
# 6 chunks after the last, STOP.
last_chunk() { serial | sed -n "s/^LUNAR-KI: $1 wrote chunk \([0-9]*\) .*/\1/p" | tail -1; }
write_stop() {
    printf STOP | dd of="$work/recover.img" bs=4096 seek=$((64 * 256 - 1)) conv=notrunc status=none
}
cut_at='' cut_stopped='' cut_mark=0 cut_seen=0
relay_cuts() { grep -c "^relay: cut " "$work/relay.log" 2>/dev/null || true; }
cut_phase() {
    [ -n "$cut_at" ] && [ -z "$cut_stopped" ] || return 0
    local n c
    n=$(relay_cuts)
    c=$(last_chunk cut)
    if [ "$n" -gt "$cut_seen" ]; then
        cut_seen=$n
        cut_mark=${c:--1}
        echo "relay: $(grep "^relay: cut " "$work/relay.log" | tail -1 | sed 's/^relay: //') after chunk ${c:-none}"
    fi
    if [ "$n" -ge "$cuts" ] && [ "${c:--1}" -ge $((cut_mark + 6)) ]; then
        write_stop
        cut_stopped=$(date +%s)
        echo "STOP written at $(elapsed) s after cut chunk $c"
    fi
}
killed=0 session_killed=0 stopped='' mark=0 recovery=''
recover() {
    [ -n "$recovery" ] || return 0
    [ -z "$stopped" ] || return 0
    local c
    c=$(last_chunk recovery)
    [ "${c:-0}" -ge $((mark + 6)) ] || return 0
    mark=$c
    if [ "$killed" -lt "$kills" ]; then
        sleep "0.$((RANDOM % 5))"
        kill -9 "$lunard_pid"
        wait "$lunard_pid" 2>/dev/null || true
        lunard_pid=
        killed=$((killed + 1))
        echo "lunard killed (SIGKILL) at $(elapsed) s after chunk $(last_chunk recovery)"
        sleep "$down"
        start_a
        echo "lunard $started started at $(elapsed) s"
        mark=$(last_chunk recovery)
    elif [ "$session_killed" -eq 0 ]; then
        local id
        id=$(ctlcmd --json session list | jq -r '(.sessions? // .) | .[] | select(.target | endswith("kinit-recover")) | .id' | head -1)
        if [ -n "$id" ] && ctlcmd session kill "$id" >> "$work/lunarctl.log" 2>&1; then
            session_killed=1
            echo "session $id killed (lunarctl session kill) at $(elapsed) s after chunk $c"
            mark=$(last_chunk recovery)
        else
            echo "lunarctl session kill failed (session '${id}')"
            session_killed=-1
        fi
    else
        write_stop
        stopped=$(date +%s)
        echo "STOP written at $(elapsed) s after chunk $c"
    fi
}
cues() {
    on_cue added "^LUNAR-CUE: add" lun add backend=mem,size=16M --lun 2 --target "$iqn:kinit-open"
    on_cue resized "^LUNAR-CUE: resize" lun resize 1 96M --target "$iqn:kinit-open"
    slow
    if [ -z "$cut_at" ] && serial_has "^LUNAR-CUE: cut"; then
        cut_at=$(date +%s)
    fi
    cut_phase
    if [ -z "$recovery" ] && serial_has "^LUNAR-CUE: recovery"; then
        recovery=$(date +%s)
        mark=0
    fi
    recover
}
added='' resized=''

start=$(date +%s)
timeout -s KILL "$guest_timeout" ip netns exec "$ns" qemu-system-x86_64 \
    -machine q35 -accel tcg -cpu max -m 512M -smp 1 \
    -kernel "$kernel" -initrd "$work/initramfs.gz" \
    -append "console=ttyS0 panic=-1 quiet loglevel=4 no_timer_check lunar.a=$addr:3260 lunar.b=$addr:3261 lunar.cut=$addr:3262${ONLY:+ lunar.only=$ONLY}" \
    -netdev user,id=n0,net=10.0.2.0/24 -device virtio-net-pci,netdev=n0 \
    -display none -serial file:"$work/serial.log" -monitor none -no-reboot > "$work/qemu.log" 2>&1 &
qemu_pid=$!
vm_wait_guest cues
keep_tmf
echo "guest ran $(elapsed) s"

# ---- checks
check() {
    if [ "$2" = "$3" ] && [ -n "$3" ]; then
        passed=$((passed + 1))
        echo "PASS $1: $2"
    else
        failed=$((failed + 1))
        echo "FAIL $1: got '$2', expected '$3'"
    fi
}
ki() { serial | sed -n "s#^LUNAR-KI: $1##p" | head -1; }
refused() { # refused RC: "refused" when the rc is not 0
    if [ -n "$1" ] && [ "$1" != 0 ]; then echo refused; else echo "accepted (rc=${1:-none})"; fi
}
rc_of() { ki "$1 rc=" | sed -n 's/^\([0-9]*\).*/\1/p'; }

serial | grep -a "^LUNAR-KI\|^LUNAR-CUE\|^LUNAR-VM" | grep -v "wrote chunk" || true
check_guest_result

# Discovery.
all_targets() { printf '%s\n' "$@" | sort | tr '\n' ' ' | trim; }
check "SendTargets on the wildcard portal: rc" "$(rc_of "discovery A")" 0
check "SendTargets: every target advertised at $addr:3260,1 (not 0.0.0.0)" \
    "$(serial | sed -n 's/^LUNAR-KI: discovered A: //p' | tr ' ' '=' | sort | tr '\n' ' ' | trim)" \
    "$(all_targets "$addr:3260,1=$iqn:kinit-chap" "$addr:3260,1=$iqn:kinit-mutual" "$addr:3260,1=$iqn:kinit-open" \
        "$addr:3260,1=$iqn:kinit-recover" "$addr:3260,1=$iqn:kinit-slow")"
check "login to the discovered record (portal as advertised)" "$(rc_of "login open")" 0
check "discovery CHAP: discovery without CHAP" "$(refused "$(rc_of "discovery B without CHAP")")" refused
check "discovery CHAP: wrong secret" "$(refused "$(rc_of "discovery B wrong CHAP secret")")" refused
check "discovery CHAP: right secret" "$(rc_of "discovery B CHAP")" 0
check "discovery CHAP: target advertised" "$(serial | sed -n 's/^LUNAR-KI: discovered B: //p')" "$addr:3261,1 $iqn:kinit-dchap"

# Two LUNs; no digests by default.
check "two LUNs (512 MiB, 64 MiB) in sectors" "$(ki "open LUNs " | awk '{ print $2, $4 }')" "1048576 131072"
check "digests off" "$(ki "digests open: " | head -1)" "None None"

# TargetAlias and what iscsiadm -m session -P 3 shows of the session. The
# bursts: the guest offers FirstBurstLength 256 KiB and MaxBurstLength
# 16776192; lunard declares FirstBurstLength 256 KiB and MaxBurstLength
# 1 MiB, and both sides take the smaller value.
want_fbl=262144 want_mbl=1048576
# (Linux's iscsi_tcp keeps the alias but shows it nowhere: no targetalias
# in sysfs, nothing in -P 3; the relay shows the Login Responses open-iscsi
# received from kinit-recover.)
check "TargetAlias in the Login Responses the guest received (kinit-recover)" \
    "$(grep -o "login response keys: .*TargetAlias=[^=]*TargetPortalGroupTag" "$work/relay.log" | head -1 | sed 's/.*TargetAlias=//; s/ TargetPortalGroupTag$//')" "$alias"
p3() { serial | sed -n 's/^LUNAR-P3: //p' | sed -n "/^Target: $iqn:kinit-open/,/^Target: /p" | trim | sed -n "s/^$1//p" | head -1 | trim; }
echo "iscsiadm -m session -P 3:"
serial | sed -n 's/^LUNAR-P3: /  /p'
check "-P 3: iscsiadm rc" "$(rc_of "session -P 3")" 0
check "-P 3: current portal (the advertised one)" "$(p3 "Current Portal: ")" "$addr:3260,1"
check "-P 3: persistent portal" "$(p3 "Persistent Portal: ")" "$addr:3260,1"
check "-P 3: connection and session state" "$(p3 "iSCSI Connection State: ") / $(p3 "iSCSI Session State: ")" "LOGGED IN / LOGGED_IN"
check "-P 3: negotiated parameters" \
    "$(for k in HeaderDigest DataDigest MaxRecvDataSegmentLength MaxXmitDataSegmentLength FirstBurstLength MaxBurstLength ImmediateData InitialR2T MaxOutstandingR2T; do printf '%s=%s ' "$k" "$(p3 "$k: ")"; done | trim)" \
    "HeaderDigest=None DataDigest=None MaxRecvDataSegmentLength=262144 MaxXmitDataSegmentLength=262144 FirstBurstLength=$want_fbl MaxBurstLength=$want_mbl ImmediateData=Yes InitialR2T=No MaxOutstandingR2T=1"
check "-P 3: both LUNs attached and running" \
    "$(serial | sed -n 's/^LUNAR-P3: //p' | grep -c "Attached scsi disk sd[a-z]*[[:space:]]*State: running")" 2

# Identity: sg3-utils in the guest against libiscsi on the host.
naa_of=()
for lun in 0 1; do
    check_identity "$lun" \
        "$(sed -n "/^Target:$iqn:kinit-open /,/^Target:/s/^Lun:\([0-9]*\).*/\1/p" "$ref/ls" | tr '\n' ' ' | trim)"
done
check "NAA designators differ between LUNs" "$([ -n "${naa_of[0]}" ] && [ "${naa_of[0]}" != "${naa_of[1]}" ] && echo yes)" yes

# ext4.
check "mkfs.ext4" "$(rc_of mkfs)" 0
check "256 MiB written through ext4" "$(rc_of "write 256 MiB")" 0
check "256 MiB read back after a remount (sha256, size)" "$(ki "read sha256 " | awk '{ print $1, $3 }')" \
    "$want_sha $((64 * (4194304 + 8)))"
check "e2fsck -fn clean" "$(rc_of fsck)" 0

# Hot add, resize.
check "hot-added LUN 2 seen after rescan (sectors)" "$([ -n "$added" ] && ki "hot-added LUN 2 " | awk '{ print $2 }')" 32768
check "hot-added LUN 2 I/O" "$(ki "LUN 2 I/O ")" ok
check "resized LUN 1 seen after rescan (sectors)" "$([ -n "$resized" ] && ki "resized LUN 1 from " | awk '{ print $1, $3 }')" \
    "131072 196608"
check "LUN 1 I/O after resize" "$(ki "LUN 1 I/O after resize ")" ok

# Logout, login again.
check "logout" "$(rc_of "logout open")" 0
check "LUNs gone after logout" "$(serial_has "^LUNAR-KI: open LUNs gone after logout" && echo yes)" yes
check "login again" "$(rc_of "relogin open")" 0
check "e2fsck -fn clean after login again" "$(rc_of "fsck after relogin")" 0

# Digests.
check "login with CRC32C digests" "$(rc_of "login open with digests")" 0
check "digests on (header, data)" "$(serial | sed -n 's/^LUNAR-KI: digests open: //p' | sed -n 2p)" "CRC32C CRC32C"
check "I/O with digests (16 MiB verified)" "$(ki "digest I/O ")" ok

# CHAP.
check "one-way CHAP: wrong secret" "$(refused "$(rc_of "chap wrong secret")")" refused
check "one-way CHAP: no secret" "$(refused "$(rc_of "chap no secret")")" refused
check "one-way CHAP: login" "$(rc_of "chap")" 0
check "one-way CHAP: I/O" "$(ki "chap I/O ")" ok
check "mutual CHAP: wrong target secret (initiator refuses)" "$(refused "$(rc_of "mutual wrong target secret")")" refused
check "mutual CHAP: wrong initiator secret" "$(refused "$(rc_of "mutual wrong initiator secret")")" refused
check "mutual CHAP: login" "$(rc_of "mutual")" 0
check "mutual CHAP: I/O" "$(ki "mutual I/O ")" ok
refusals=$(plain "$work/lunard1.log" | grep -a '"session.login_failed"' | grep -a '"reason":"chap"' |
    grep -ac "$iqn:guest" || true)
check "lunard reported the guest's refused CHAP logins (login_failed, reason chap)" \
    "$([ "$refusals" -ge 3 ] && echo "yes ($refusals)")" "yes ($refusals)"

# A slow backend and the kernel's SCSI error handler.
echo "slow: delay removed: $slow_off_why; task management: $tmf_seen"
# (lunard's log lines without time and level)
{ sed 's/^[^ ]* *INFO [^ ]* //; s/^/slow: lunard: /' "$work/tmf.log" 2>/dev/null || true; } | head -24
check "slow: the LUN was delayed beyond the command timeout (3 s), three times" \
    "$(ki "slow command timeout ") $(echo "$slow_off_why" | grep -o "received" | wc -l)" "3 s 3"
tmf_n() { echo "$tmf_seen" | jq -r ".$1 // 0"; }
for f in abort_task lu_reset target_warm_reset; do
    n=$(tmf_n "received.$f")
    check "slow: lunard received $f" "$([ "${n:-0}" -ge 1 ] && echo "yes ($n)")" "yes ($n)"
done
order=$(grep -a "task management request" "$work/tmf.log" 2>/dev/null | sed -n 's/.*function="*\([a-z_]*\).*/\1/p' |
    uniq | tr '\n' ' ' | trim)
check "slow: in the error handler's order (ABORT TASK, LU reset, target reset)" \
    "$(echo "$order" | grep -qx "abort_task lu_reset target_warm_reset" && echo "yes ($order)")" "yes ($order)"
resp() { grep -a "task management response" "$work/tmf.log" 2>/dev/null | grep -a "function=\"*$1\"* " |
    sed -n 's/.*response="*\([a-z_]*\).*/\1/p' | sort -u | tr '\n' ' ' | trim; }
# (An abort of a write that completed meanwhile is answered TASK DOES NOT EXIST.)
check "slow: ABORT TASK answered (FUNCTION COMPLETE once the write ended)" \
    "$(resp abort_task | sed 's/ task_does_not_exist//')" function_complete
check "slow: the LU reset answered FUNCTION COMPLETE" "$(resp lu_reset)" function_complete
check "slow: the target reset answered FUNCTION COMPLETE" "$(resp target_warm_reset)" function_complete
check "slow: every TMF received was answered" \
    "$(echo "$tmf_seen" | jq -r '"\([.received[]] | add) received, \([.answered[]] | add) answered"')" \
    "$(echo "$tmf_seen" | jq -r '"\([.received[]] | add) received, \([.received[]] | add) answered"')"
check "slow: sg_reset -d and -t succeeded in the guest" "$(rc_of "slow lu sg_reset") $(rc_of "slow target sg_reset")" "0 0"
check "slow: the writes completed without an error (abort, LU reset, target reset)" \
    "$(for p in abort lu target; do ki "slow $p writes: " | sed -n 's/.*errors \([0-9]*\).*/\1/p'; done | tr '\n' ' ' | trim)" "0 0 0"
check "slow: the data reads back" "$(ki "slow verify ")" ok
check "slow: the disk stayed online, no I/O error, no connection error" \
    "$(ki "slow device state ") $(ki "slow kernel log: " | sed -n 's/.*conn errors \([0-9]*\) io errors \([0-9]*\) offline \([0-9]*\).*/\1 \2 \3/p')" "running 0 0 0"
check "slow: logout" "$(rc_of "slow logout")" 0

# Connections cut mid-PDU (the relay).
cut_loop=$(ki "cut loop: ")
cut_stall=$(echo "$cut_loop" | sed -n 's/.*longest chunk \([0-9]*\) ms.*/\1/p')
inside=$(grep -c "^relay: cut .*(in " "$work/relay.log" || true)
in_data=$(grep -c "^relay: cut .*in the data segment" "$work/relay.log" || true)
cut_logins=$(cat "$work"/lunard[0-9]*.log | sed 's/\x1b\[[0-9;]*m//g' | grep -a "session logged in" |
    grep -a "peer=127.0.0.1" | grep -ac "target=$iqn:kinit-recover" || true)
echo "cut: $(relay_cuts) cuts ($inside inside a PDU, $in_data inside a data segment); $cut_logins logins through the relay; loop: $cut_loop"
grep "^relay: cut " "$work/relay.log" | sed 's/^relay: /cut: /' || true
check "cut: the relay cut the connection mid-loop" "$(relay_cuts)" "$cuts"
check "cut: cuts inside PDUs (at least half), some inside a data segment" \
    "$([ "$((inside * 2))" -ge "$cuts" ] && [ "$in_data" -ge 1 ] && echo "yes ($inside in PDUs, $in_data in data)")" \
    "yes ($inside in PDUs, $in_data in data)"
check "cut: the loop ended on STOP" "$([ -n "$cut_stopped" ] && echo yes)" yes
check "cut: the guest logged in again after every cut" "$cut_logins" $((1 + cuts))
check "cut: no write failed" "$(echo "$cut_loop" | sed -n 's/.*write errors \([0-9]*\).*/\1/p')" 0
check "cut: every chunk written reads back" "$(ki "cut verify: " | sed -n 's/.* \([0-9]*\) bad/\1/p')" 0
check "cut: the guest's kernel saw each cut (detected conn error)" "$(ki "cut conn errors " | awk '{ print $1 }')" "$cuts"
check "cut: no I/O error in the guest's kernel log" "$(ki "cut conn errors " | sed -n 's/.*io errors \([0-9]*\).*/\1/p')" 0
check "cut: logout" "$(rc_of "cut logout")" 0

# Recovery.
logins=$(cat "$work"/lunard[0-9]*.log | sed 's/\x1b\[[0-9;]*m//g' | grep -a "session logged in" | grep -av "peer=127.0.0.1" |
    grep -a "initiator=$iqn:guest " | grep -ac "target=$iqn:kinit-recover" || true)
loop=$(ki "recovery loop: ")
echo "recovery: $killed SIGKILLs + $session_killed session kill; the guest logged in to kinit-recover $logins times; loop: $loop"
echo "recovery: guest kernel log: $(ki "recovery conn errors ")"
check "lunard killed (SIGKILL) and restarted mid-loop" "$killed" "$kills"
check "session killed mid-loop (lunarctl session kill)" "$session_killed" 1
check "the loop ended on STOP" "$([ -n "$stopped" ] && echo yes)" yes
check "the guest logged in again after every kill (logins of kinit-recover)" "$logins" $((1 + kills + 1))
check "no write failed" "$(echo "$loop" | sed -n 's/.*write errors \([0-9]*\).*/\1/p')" 0
check "every chunk written reads back" "$(ki "recovery verify: " | sed -n 's/.* \([0-9]*\) bad/\1/p')" 0
check "the guest's kernel saw each connection end once (detected conn error)" \
    "$(ki "recovery conn errors " | awk '{ print $1 }')" $((kills + 1))
check "no I/O error in the guest's kernel log" "$(ki "recovery conn errors " | sed -n 's/.*io errors \([0-9]*\).*/\1/p')" 0
check "logout after recovery" "$(rc_of "recovery logout")" 0
echo "recovery summary: $killed SIGKILLs, $session_killed session kill, $(relay_cuts) cuts mid-PDU; longest stall: cut loop ${cut_stall:-?} ms, kill loop $(echo "$loop" | sed -n 's/.*longest chunk \([0-9]*\) ms.*/\1/p') ms"

echo "---- lunard warnings"
cat "$work"/lunard[0-9]*.log "$work/lunard-b.log" | sed 's/\x1b\[[0-9;]*m//g' | grep -a "WARN\|ERROR" | tail -8 || true
if [ "$failed" -gt 0 ]; then
    echo "---- serial console"
    serial | grep -av "wrote chunk" | tail -60
    echo "---- lunard"
    plain "$work/lunard$started.log" | tail -30
fi
vm_summary kernel-initiator
