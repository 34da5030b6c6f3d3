#!/bin/sh
# Guest init for tests/vm/vhost-guest.sh: one boot, four checks, each
# printed on the serial console (lines "LUNAR-VM: ...", "LUNAR-SG ...") for
# the host to assert on; "LUNAR-VM-RESULT: PASS|FAIL ..." last, then power off.
#
#  1. identity: sg_inq, sg_vpd -p sn / -p di, sg_readcap -l, sg_luns on
#     LUNs 0 and 1 (the host compares them with what iSCSI initiators see);
#  2. multi-queue: one O_DIRECT writer then reader pinned to each CPU, on its
#     own region of LUN 0, checksums compared (the host checks that every
#     request queue served requests);
#  3. hot plug: prints "LUNAR-HOTPLUG: add" and waits (bounded) for LUN 2 to
#     appear in /sys/class/scsi_device (the host adds it with lunarctl),
#     uses it, prints "LUNAR-HOTPLUG: remove" and waits for it to go;
#  4. resets: sg_reset --device and --target on LUN 1 while two background
#     dd write to it and the host holds their commands (it pauses the LUN on
#     "LUNAR-RESET: pause", resumes it on "LUNAR-RESET: cont"); dd must end
#     (bounded), the data must verify, and data written afterwards too.
# Every wait is bounded; a failure ends the run at once.
# shellcheck source-path=SCRIPTDIR source=guest-lib.sh
. /guest-lib.sh
# Prints a command's output, each line tagged "LUNAR-SG L<lun> <tag>: ".
show() {
    lun=$1 tag=$2
    shift 2
    "$@" > /tmp/out 2>&1
    rc=$?
    sed "s/^/LUNAR-SG L$lun $tag: /" /tmp/out
    echo "LUNAR-SG L$lun $tag: rc=$rc"
}
sha() { sha256sum "$1" | cut -d' ' -f1; }

t0=$(date +%s)
wait_until 600 has_disk 0 || fail "no disk for LUN 0"
wait_until 100 has_disk 1 || fail "no disk for LUN 1"
say "disks after $(($(date +%s) - t0)) s, $(nproc) CPUs"
for d in /sys/class/scsi_device/*; do
    say "scsi_device $(basename "$d") $(cat "$d/device/model") $(ls "$d/device/block") $(cat "$d/device/block"/*/size) sectors $(ls "$d/device/scsi_generic")"
done

# 1. Identity, as sg3-utils sees it through SG_IO.
for lun in 0 1; do
    sg=/dev/$(sg_of $lun)
    show "$lun" inq sg_inq "$sg"
    show "$lun" sn sg_vpd -p sn "$sg"
    show "$lun" di sg_vpd -p di "$sg"
    show "$lun" readcap sg_readcap -l "$sg"
    show "$lun" luns sg_luns "$sg"
done
say "identity done"

# 2. One writer, then one reader, pinned to each CPU: the block layer
# submits from the CPU the process runs on, and virtio-scsi maps each CPU
# to its own request queue. 4 MiB each, on 4 regions of LUN 0.
d0=/dev/$(disk_of 0)
ncpu=$(nproc)
dd if=/dev/urandom of=/tmp/pattern bs=1M count=4 2>/dev/null || fail "urandom"
want=$(sha /tmp/pattern)
t=$(date +%s)
pids=
for c in $(seq 0 $((ncpu - 1))); do
    taskset -c "$c" dd if=/tmp/pattern of="$d0" bs=64k seek=$((c * 64)) oflag=direct 2>"/tmp/werr$c" &
    pids="$pids $!"
done
for p in $pids; do wait "$p" || fail "pinned writer: $(cat /tmp/werr*)"; done
pids=
for c in $(seq 0 $((ncpu - 1))); do
    taskset -c "$c" dd if="$d0" of="/tmp/back$c" bs=64k skip=$((c * 64)) count=64 iflag=direct 2>"/tmp/rerr$c" &
    pids="$pids $!"
done
for p in $pids; do wait "$p" || fail "pinned reader: $(cat /tmp/rerr*)"; done
for c in $(seq 0 $((ncpu - 1))); do
    [ "$(sha "/tmp/back$c")" = "$want" ] || fail "checksum of region $c (CPU $c)"
    rm -f "/tmp/back$c"
done
say "multiqueue: $ncpu pinned writers+readers, 4 MiB each, verified in $(($(date +%s) - t)) s"

# 3. Hot plug, driven by the host (it watches for the markers).
t=$(date +%s)
echo "LUNAR-HOTPLUG: add"
wait_until 300 has_disk 2 || fail "hot-added LUN 2 did not appear"
d2=/dev/$(disk_of 2)
say "hot-added $(basename "$(lun_dir 2)") $(basename "$d2") $(cat /sys/block/"$(basename "$d2")"/size) sectors after $(($(date +%s) - t)) s"
dd if=/tmp/pattern of="$d2" bs=64k oflag=direct 2>/tmp/err || fail "write hot-added: $(cat /tmp/err)"
dd if="$d2" of=/tmp/back bs=64k count=64 iflag=direct 2>/tmp/err || fail "read hot-added: $(cat /tmp/err)"
[ "$(sha /tmp/back)" = "$want" ] || fail "checksum on the hot-added LUN"
t=$(date +%s)
echo "LUNAR-HOTPLUG: remove"
wait_until 300 no_lun 2 || fail "hot-removed LUN 2 still in /sys/class/scsi_device"
say "hot-removed LUN 2 after $(($(date +%s) - t)) s"
wait_until 20 has_disk 0 || fail "LUN 0 gone after the hot remove"

# 4. Resets with I/O in flight on LUN 1.
d1=/dev/$(disk_of 1)
sg1=/dev/$(sg_of 1)
dd if=/dev/urandom of=/tmp/big bs=1M count=8 2>/dev/null || fail "urandom"
t=$(date +%s)
# The host pauses LUN 1 (lunarctl stop --lun 1): the writers' commands are
# held inside lunard, so the LUN reset finds them in flight.
echo "LUNAR-RESET: pause"
sleep 1
# Two writers (8 MiB each, at 0 and 8 MiB).
dd if=/tmp/big of="$d1" bs=64k oflag=direct 2>/tmp/dderr0 &
dd_pids=$!
dd if=/tmp/big of="$d1" bs=64k seek=128 oflag=direct 2>/tmp/dderr1 &
dd_pids="$dd_pids $!"
sleep 1.5
sg_reset --device "$sg1" > /tmp/out 2>&1
say "sg_reset --device rc=$? $(tr '\n' ' ' < /tmp/out)"
sleep 0.3
sg_reset --target "$sg1" > /tmp/out 2>&1
say "sg_reset --target rc=$? $(tr '\n' ' ' < /tmp/out)"
echo "LUNAR-RESET: cont"
for p in $dd_pids; do
    n=600
    while kill -0 "$p" 2>/dev/null; do
        n=$((n - 1))
        [ $n -le 0 ] && fail "dd hung after the resets"
        sleep 0.1
    done
    wait "$p" || fail "dd across the resets failed: $(cat /tmp/dderr*)"
done
say "2 dd across the resets ended after $(($(date +%s) - t)) s: $(tail -n1 /tmp/dderr0) / $(tail -n1 /tmp/dderr1)"
for half in 0 1; do
    dd if="$d1" of=/tmp/back bs=64k skip=$((half * 128)) count=128 iflag=direct 2>/tmp/err || fail "read back: $(cat /tmp/err)"
    [ "$(sha /tmp/back)" = "$(sha /tmp/big)" ] || fail "data written across the resets differs (half $half)"
done
dd if=/tmp/pattern of="$d1" bs=64k seek=256 oflag=direct 2>/tmp/err || fail "write after the resets: $(cat /tmp/err)"
dd if="$d1" of=/tmp/back bs=64k skip=256 count=64 iflag=direct 2>/tmp/err || fail "read after the resets: $(cat /tmp/err)"
[ "$(sha /tmp/back)" = "$want" ] || fail "data written after the resets differs"
dmesg_tail "reset\|abort\|timing out\|virtio_scsi" 8
say "resets: data verified"
result "PASS sectors=$(cat /sys/block/"$(disk_of 0)"/size),$(cat /sys/block/"$(disk_of 1)"/size) in $(($(date +%s) - t0)) s"
