#!/bin/bash
# End-to-end test of lunard's vhost-user-scsi front-end with a real Linux
# guest: QEMU (TCG) boots Debian's kernel with a busybox initramfs; the guest
# writes 32 MiB of random data to the Lunar LUN with O_DIRECT, reads it back
# and compares checksums (tests/vm/init.sh). Installs what it needs on a
# fresh Debian 12 machine. Bounded: QEMU is killed after $GUEST_TIMEOUT s.
#
# usage: tests/vm/vhost-guest.sh [NUM_QUEUES] [IOTHREADS] [SMP]
set -euo pipefail

queues=${1:-2}
iothreads=${2:-2}
smp=${3:-2}
guest_timeout=${GUEST_TIMEOUT:-150}
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)

need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
ls /boot/vmlinuz-* >/dev/null 2>&1 || need+=(linux-image-amd64)
[ -x /bin/busybox ] || need+=(busybox-static)
command -v cpio >/dev/null || need+=(cpio)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" kmod >/dev/null
fi

target_dir=${CARGO_TARGET_DIR:-$repo/target}
(cd "$repo" && cargo build -q -p lunard)
lunard=$target_dir/debug/lunard

work=$(mktemp -d)
lunard_pid=
qemu_pid=
cleanup() {
    [ -n "$qemu_pid" ] && kill -9 "$qemu_pid" 2>/dev/null || true
    [ -n "$lunard_pid" ] && kill "$lunard_pid" 2>/dev/null || true
    [ -n "$lunard_pid" ] && wait "$lunard_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

kernel=$(ls -1 /boot/vmlinuz-* | sort -V | tail -1)
kver=${kernel#/boot/vmlinuz-}
"$here/build-initramfs.sh" "$work/initramfs.gz" "$kver"

sock=$work/vus.sock
"$lunard" --iothreads "$iothreads" --listen 127.0.0.1:0 --control "$work/ctl.sock" \
    --lun backend=mem,size=64M --vhost-user "$sock,num-queues=$queues" --log info \
    > "$work/lunard.log" 2>&1 &
lunard_pid=$!
for _ in $(seq 100); do
    [ -S "$sock" ] && break
    kill -0 "$lunard_pid" 2>/dev/null || { cat "$work/lunard.log"; echo "lunard exited"; exit 1; }
    sleep 0.1
done
[ -S "$sock" ] || { cat "$work/lunard.log"; echo "no vhost-user socket"; exit 1; }

start=$(date +%s)
timeout -s KILL "$guest_timeout" qemu-system-x86_64 \
    -machine q35 -accel tcg -cpu max -m 512M -smp "$smp" \
    -object memory-backend-memfd,id=mem,size=512M,share=on -numa node,memdev=mem \
    -kernel "$kernel" -initrd "$work/initramfs.gz" \
    -append "console=ttyS0 panic=-1 quiet loglevel=4" \
    -chardev socket,id=vus,path="$sock" \
    -device vhost-user-scsi-pci,chardev=vus,num_queues="$queues" \
    -display none -serial file:"$work/serial.log" -monitor none -no-reboot &
qemu_pid=$!
wait "$qemu_pid" || true
qemu_pid=
echo "guest ran $(( $(date +%s) - start )) s"
grep -a "LUNAR-VM" "$work/serial.log" || true
if grep -aq "LUNAR-VM-RESULT: PASS sectors=131072 " "$work/serial.log"; then
    grep -a "WARN\|ERROR" "$work/lunard.log" | tail -5 || true
    echo "vhost-guest: 1 passed, 0 failed"
else
    echo "---- serial console"; tail -50 "$work/serial.log"
    echo "---- lunard"; tail -50 "$work/lunard.log"
    echo "vhost-guest: 0 passed, 1 failed"
    exit 1
fi
