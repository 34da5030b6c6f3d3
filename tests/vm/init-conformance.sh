#!/bin/sh
# Guest init for tests/vm/guest-conformance.sh: waits for the Lunar disk
# (LUN 0), runs libiscsi's conformance suite against it through SG_IO
# (`iscsi-test-cu -d -v -t ALL /dev/sgN`; not -S: libiscsi 1.19's
# Sanitize.OverwriteReserved dereferences its iSCSI context, which a SG_IO
# device has not, and the suite dies of a segmentation fault), prints its output on the serial
# console between markers, then powers off.
/bin/busybox mkdir -p /usr/bin /sbin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
for m in $(cat /mods/order); do
    insmod "/mods/$m" || echo "LUNAR-VM: insmod $m failed"
done
result() {
    echo "LUNAR-VM-RESULT: $*"
    sync
    poweroff -f
}
i=0
while ! ls /sys/class/scsi_device/*:0:0:0/device/scsi_generic >/dev/null 2>&1; do
    i=$((i + 1))
    [ $i -gt 600 ] && result "FAIL no disk"
    sleep 0.1
done
sg=/dev/$(ls /sys/class/scsi_device/*:0:0:0/device/scsi_generic)
i=0
while [ ! -c "$sg" ]; do
    i=$((i + 1))
    [ $i -gt 100 ] && result "FAIL no $sg"
    sleep 0.1
done
tests=$(sed -n 's/.*lunar.tests=\([^ ]*\).*/\1/p' /proc/cmdline)
echo "LUNAR-VM: running iscsi-test-cu -d -v -t ${tests:-ALL} $sg"
t0=$(date +%s)
echo "LUNAR-CU-BEGIN"
iscsi-test-cu -d -v -t "${tests:-ALL}" "$sg" 2>&1
rc=$?
echo "LUNAR-CU-END"
result "DONE rc=$rc in $(($(date +%s) - t0)) s"
