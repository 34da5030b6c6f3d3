#!/bin/bash
# End-to-end test of lunard's vhost-user-scsi front-end with a real Linux
# guest, in one boot: QEMU (TCG) boots Debian's kernel with a busybox
# initramfs (tests/vm/init.sh) on a lunard that serves two LUNs (64 MiB and
# 32 MiB) over both iSCSI and vhost-user. Checks:
#
#  1. identity: what sg3-utils in the guest reports (sg_inq, sg_vpd -p sn /
#     -p di, sg_readcap -l, sg_luns) is what libiscsi's tools report over
#     iSCSI for the same LUNs (iscsi-inq, iscsi-readcapacity16, iscsi-ls -s);
#     every LUN visible with its size;
#  2. multi-queue: the guest runs one pinned writer and reader per CPU and
#     verifies the data; lunard's log must show every request queue served
#     requests (a line per queue when the ring stops);
#  3. hot plug: when the guest prints "LUNAR-HOTPLUG: add" / "remove", this
#     script runs `lunarctl lun add` / `lun remove`; the guest waits for the
#     LUN to come and go in /sys/class/scsi_device (event queue);
#  4. resets: sg_reset --device / --target while two dd write and their
#     commands are held in lunard (`lunarctl stop --lun 1` on the guest's
#     cue, `cont --lun 1` after); the LUN reset must find commands in
#     flight; dd ends, the data verifies.
#
# Installs what it needs on a fresh Debian 12 machine. Bounded: QEMU is
# killed after $GUEST_TIMEOUT s. CI runs it as `vhost-guest.sh 4 2 4`.
#
# usage: tests/vm/vhost-guest.sh [NUM_QUEUES] [IOTHREADS] [SMP]   (SMP >= NUM_QUEUES:
# Linux maps each CPU to a request queue; every queue must see I/O)
# env: GUEST_TIMEOUT (s, default 200), KEEP_LOGS (a directory: keep the
# serial console, lunard and lunarctl logs there)
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

queues=${1:-4}
iothreads=${2:-2}
smp=${3:-4}
guest_timeout=${GUEST_TIMEOUT:-200}

vm_need sg_inq sg3-utils
vm_need iscsi-inq libiscsi-bin
vm_install
vm_build
vm_setup init.sh "sg_inq sg_vpd sg_readcap sg_luns sg_reset"
vm_start_lunard "$work/lunard.log" "$queues" --iothreads "$iothreads" \
    --lun backend=mem,size=64M --lun backend=mem,size=32M
portal=$(grep -o -m1 'portal 127.0.0.1:[0-9]*' "$work/lunard.log" | cut -d' ' -f2)
iqn=$(grep -o -m1 'target iqn[^ ]*' "$work/lunard.log" | cut -d' ' -f2)

# What an iSCSI initiator sees (libiscsi), before the guest boots.
ref=$work/ref
mkdir -p "$ref"
for lun in 0 1; do
    url=iscsi://$portal/$iqn/$lun
    timeout 20 iscsi-inq "$url" > "$ref/inq$lun"
    timeout 20 iscsi-inq -e 1 -c 128 "$url" > "$ref/sn$lun"
    timeout 20 iscsi-inq -e 1 -c 131 "$url" > "$ref/di$lun"
    timeout 20 iscsi-readcapacity16 "$url" > "$ref/cap$lun"
done
timeout 20 iscsi-ls -s "iscsi://$portal" > "$ref/ls"

# Hot plug, and holding LUN 1's commands for the reset test, on the
# guest's cue (the serial console).
# on_cue VAR MARKER ARGS...: the first time the console shows MARKER, VAR
# gets the time and `lunarctl ARGS` runs.
on_cue() {
    local var=$1 marker=$2
    shift 2
    if [ -n "${!var}" ] || ! serial_has "$marker"; then
        return 0
    fi
    printf -v "$var" %s "$(date +%s)"
    "$lunarctl" --control "$ctl" "$@" >> "$work/lunarctl.log" 2>&1 ||
        echo "lunarctl $* failed: $(cat "$work/lunarctl.log")"
}
cues() {
    on_cue added "LUNAR-HOTPLUG: add" lun add 'backend=mem,size=16M' --lun 2
    on_cue removed "LUNAR-HOTPLUG: remove" lun remove 2
    on_cue paused "LUNAR-RESET: pause" stop --lun 1
    on_cue resumed "LUNAR-RESET: cont" cont --lun 1
}
added='' removed='' paused='' resumed=''
vm_qemu "$smp" "$queues"
vm_wait_guest cues
echo "guest ran $(elapsed) s"
# The rings stop as QEMU goes: give lunard a moment to log the queues.
for _ in $(seq 50); do
    [ "$(grep -c "request queue stopped" "$work/lunard.log")" -ge "$queues" ] && break
    sleep 0.1
done

# The guest's output of one sg3-utils command: LUN, tag.
plain_log() { plain "$work/lunard.log"; }
CHECK_GOT=guest/lunard

serial | grep -a "LUNAR-VM\|LUNAR-HOTPLUG" || true
check_guest_result

# 1. Identity: guest (virtio-scsi, sg3-utils) against iSCSI (libiscsi).
naa_of=()
for lun in 0 1; do
    check_identity "$lun" "$(sed -n 's/^Lun:\([0-9]*\).*/\1/p' "$ref/ls" | tr '\n' ' ' | trim)"
    # The size the guest's sd driver found, in 512-byte sectors.
    sectors=$(serial | sed -n "s/^LUNAR-VM: scsi_device [0-9]*:0:0:$lun .* \([0-9]*\) sectors .*/\1/p")
    check "LUN $lun size (sectors)" "$sectors" "$(((want_blocks + 1) * want_bs / 512))"
done
check "NAA designators differ between LUNs" "$([ -n "${naa_of[0]}" ] && [ "${naa_of[0]}" != "${naa_of[1]}" ] && echo yes)" yes

# 2. Every request queue served requests (lunard logs its count when the
# ring stops). The guest's pinned readers and writers alone are 128
# commands per CPU.
for q in $(seq 0 $((queues - 1))); do
    n=$(plain_log | sed -n "s/.*request queue stopped.* queue=$q .*requests=\([0-9]*\).*/\1/p" | tail -1)
    check "request queue $q served >= 64 requests" "$([ "${n:-0}" -ge 64 ] && echo "yes ($n)")" "yes ($n)"
done

# 3. Hot plug.
check "hot add: lunarctl ran, guest saw the LUN" \
    "$([ -n "$added" ] && serial_has "LUNAR-VM: hot-added .*:0:0:2 sd[a-z]* 32768 sectors" && echo yes)" yes
check "hot remove: lunarctl ran, LUN left the guest" \
    "$([ -n "$removed" ] && serial_has "LUNAR-VM: hot-removed LUN 2" && echo yes)" yes

# 4. Resets. Linux's virtio-scsi sends LOGICAL UNIT RESET for --device; it
# has no target reset handler, so --target fails in the guest (EIO) and
# sends nothing: it must just not hang.
check "sg_reset --device succeeded" "$(serial | grep -ao "sg_reset --device rc=[0-9]*")" "sg_reset --device rc=0"
lu_reset=$(plain_log | grep -a "task management done" | grep -a 'tmf="LOGICAL UNIT RESET"' |
    grep -ao -m1 "lun=1 .*aborted=[0-9]*" || true)
waited=$(echo "$lu_reset" | sed -n 's/.*aborted=//p')
check "LOGICAL UNIT RESET of LUN 1 found commands in flight ($lu_reset)" "$([ "${waited:-0}" -ge 1 ] && echo yes)" yes
check "LUN 1 paused and resumed by lunarctl" "$([ -n "$paused" ] && [ -n "$resumed" ] && echo yes)" yes
check "sg_reset --target ended" "$(serial_has "sg_reset --target rc=" && echo yes)" yes
check "resets: dd ended, data verified" "$(serial_has "LUNAR-VM: resets: data verified" && echo yes)" yes

echo "---- lunard warnings"
plain_log | grep -a "WARN\|ERROR" | tail -5 || true
if [ "$failed" -gt 0 ]; then
    echo "---- serial console"
    serial | tail -60
    echo "---- lunard"
    plain_log | tail -40
fi
vm_summary vhost-guest
