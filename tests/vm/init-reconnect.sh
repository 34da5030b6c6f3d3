#!/bin/sh
# Guest init for tests/vm/vhost-reconnect.sh: an O_DIRECT write loop over
# LUN 0 while the host kills lunard (SIGKILL) and starts it again on the same
# socket and image. Prints "LUNAR-RECONNECT: kill" once the loop runs (the
# host's cue), then progress lines "LUNAR-VM: ..." and finally
# "LUNAR-VM-RESULT: PASS|FAIL ..." (the data read back, and the kernel log
# free of I/O errors), then powers off. Every wait is bounded.
/bin/busybox mkdir -p /usr/bin /sbin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
for m in $(cat /mods/order); do
    insmod "/mods/$m" || echo "LUNAR-VM: insmod $m failed"
done
say() { echo "LUNAR-VM: $*"; }
result() {
    dmesg | grep -i "error\|abort\|reset\|timing out\|offline\|virtio_scsi" | tail -20 | sed 's/^/LUNAR-VM: dmesg: /'
    echo "LUNAR-VM-RESULT: $*"
    sync
    poweroff -f
}
fail() { result "FAIL $*"; }
disk() {
    for d in /sys/class/scsi_device/*:0:0:0/device/block/*; do
        [ -e "$d" ] && basename "$d" && return 0
    done
    return 1
}
sha() { sha256sum "$1" | cut -d' ' -f1; }

n=600
while ! disk >/dev/null 2>&1; do
    n=$((n - 1))
    [ $n -le 0 ] && fail "no disk for LUN 0"
    sleep 0.1
done
d=/dev/$(disk)
say "disk $d"
# 48 chunks of 256 KiB, each a distinct pattern (chunk number in it).
dd if=/dev/urandom of=/tmp/base bs=256k count=1 2>/dev/null || fail "urandom"
chunks=48
t0=$(date +%s)
i=0
while [ $i -lt $chunks ]; do
    [ $i -eq 4 ] && echo "LUNAR-RECONNECT: kill"
    (echo "chunk $i"; cat /tmp/base) | head -c 262144 > /tmp/chunk
    # Each write is bounded by the guest's own SCSI timeouts; the loop as a
    # whole by the host's timeout (QEMU is killed).
    dd if=/tmp/chunk of="$d" bs=256k seek=$i count=1 oflag=direct 2>/tmp/err || fail "write of chunk $i: $(cat /tmp/err)"
    say "wrote chunk $i at $(($(date +%s) - t0)) s"
    i=$((i + 1))
    sleep 0.2
done
i=0
while [ $i -lt $chunks ]; do
    (echo "chunk $i"; cat /tmp/base) | head -c 262144 > /tmp/chunk
    dd if="$d" of=/tmp/back bs=256k skip=$i count=1 iflag=direct 2>/tmp/err || fail "read of chunk $i: $(cat /tmp/err)"
    [ "$(sha /tmp/back)" = "$(sha /tmp/chunk)" ] || fail "chunk $i differs"
    i=$((i + 1))
done
say "data verified"
if dmesg | grep -qi "I/O error\|critical target error\|rejecting I/O\|offline device"; then
    fail "I/O errors in the kernel log"
fi
result "PASS $chunks chunks in $(($(date +%s) - t0)) s"
