# shellcheck shell=sh
# Guest side shared by the init scripts in tests/vm (init.sh,
# init-reconnect.sh, init-conformance.sh): build-initramfs.sh puts it at
# /guest-lib.sh and each init sources it first. It installs busybox's
# applets, mounts /proc, /sys, /dev and /tmp, loads the modules listed in
# /mods/order (virtio-scsi, sd, sg and their dependencies) and defines the
# helpers below. The host reads the serial console: lines "LUNAR-VM: ...",
# then "LUNAR-VM-RESULT: ..." last, before the guest powers off.
/bin/busybox mkdir -p /usr/bin /sbin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
while read -r m; do
    insmod "/mods/$m" || echo "LUNAR-VM: insmod $m failed"
done < /mods/order

say() { echo "LUNAR-VM: $*"; }
# dmesg_tail PATTERN N: the last N lines of the kernel log that match
# PATTERN (grep -i), as "LUNAR-VM: dmesg: ..." lines.
dmesg_tail() { dmesg | grep -i "$1" | tail -n "$2" | sed 's/^/LUNAR-VM: dmesg: /'; }
# result TEXT: the result line, then power off. When the init sets
# result_dmesg (a PATTERN), the last 20 kernel log lines matching it come
# first.
result() {
    [ -z "${result_dmesg:-}" ] || dmesg_tail "$result_dmesg" 20
    echo "LUNAR-VM-RESULT: $*"
    sync
    poweroff -f
}
fail() { result "FAIL $*"; }

# wait_until TENTHS COMMAND...: polls every 0.1 s; false after TENTHS polls.
wait_until() {
    wait_n=$1
    shift
    while ! "$@" >/dev/null 2>&1; do
        wait_n=$((wait_n - 1))
        [ "$wait_n" -le 0 ] && return 1
        sleep 0.1
    done
}
# The sysfs directory of LUN $1 of target 0, if it exists.
lun_dir() {
    for d in /sys/class/scsi_device/*:0:0:"$1"; do
        [ -e "$d" ] && echo "$d" && return 0
    done
    return 1
}
# Its block device (sdX) and SCSI generic (sgN) names.
disk_of() { ls "$(lun_dir "$1")/device/block" 2>/dev/null; }
sg_of() { ls "$(lun_dir "$1")/device/scsi_generic" 2>/dev/null; }
has_disk() { [ -n "$(disk_of "$1")" ] && [ -b "/dev/$(disk_of "$1")" ]; }
no_lun() { ! lun_dir "$1"; }
sha() { sha256sum "$1" | cut -d' ' -f1; }
