#!/bin/sh
# Guest init: loads the modules, waits for the Lunar disk, writes 32 MiB of
# random data with O_DIRECT, reads it back with O_DIRECT, compares checksums
# and prints one result line on the serial console, then powers off.
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
while [ ! -b /dev/sda ]; do
    i=$((i + 1))
    [ $i -gt 600 ] && result "FAIL no disk"
    sleep 0.1
done
echo "LUNAR-VM: disk after $i polls"
sectors=$(cat /sys/block/sda/size)
echo "LUNAR-VM: sda $sectors sectors, $(cat /sys/block/sda/queue/logical_block_size)-byte blocks"
for d in /sys/class/scsi_device/*; do echo "LUNAR-VM: scsi_device $(basename "$d") $(cat "$d/device/model")"; done
dd if=/dev/urandom of=/tmp/data bs=1M count=32 2>/dev/null || result "FAIL urandom"
want=$(sha256sum /tmp/data | cut -d' ' -f1)
dd if=/tmp/data of=/dev/sda bs=1M oflag=direct 2>/tmp/err || result "FAIL write $(cat /tmp/err)"
rm -f /tmp/data
dd if=/dev/sda of=/tmp/back bs=1M count=32 iflag=direct 2>/tmp/err || result "FAIL read $(cat /tmp/err)"
got=$(sha256sum /tmp/back | cut -d' ' -f1)
if [ "$want" = "$got" ]; then
    result "PASS sectors=$sectors sha256=$got"
else
    result "FAIL checksum want=$want got=$got"
fi
