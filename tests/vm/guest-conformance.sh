#!/bin/bash
# libiscsi's SCSI conformance suite run by a Linux guest against a Lunar LUN
# over vhost-user-scsi: the guest runs `iscsi-test-cu -d -v -t TESTS
# /dev/sgN` (SG_IO through virtio-scsi; tests/vm/init-conformance.sh). The
# console log is kept as $OUT (default ./guest-conformance.log) and
# summarised with cu-summary. Slow under TCG: not part of CI.
#
# usage: tests/vm/guest-conformance.sh [TESTS]   (default ALL; e.g. SCSI.Read10)
# env: OUT (log path), GUEST_TIMEOUT (s, default 3000), CU_SUMMARY (the summariser),
#      LUN (lunard's --lun spec, default a removable RAM disk: the PreventAllow
#      and StartStopUnit families need a removable medium)
set -euo pipefail

tests=${1:-ALL}
guest_timeout=${GUEST_TIMEOUT:-3000}
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=${OUT:-$PWD/guest-conformance.log}
summary=${CU_SUMMARY:-/work/shared/tools/cu-summary}

need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
ls /boot/vmlinuz-* >/dev/null 2>&1 || need+=(linux-image-amd64)
[ -x /bin/busybox ] || need+=(busybox-static)
command -v cpio >/dev/null || need+=(cpio)
command -v iscsi-test-cu >/dev/null || need+=(libiscsi-bin)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" kmod >/dev/null
fi

target_dir=${CARGO_TARGET_DIR:-$repo/target}
(cd "$repo" && cargo build -q -p lunard --bins)
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
INIT=$here/init-conformance.sh BINARIES=iscsi-test-cu "$here/build-initramfs.sh" "$work/initramfs.gz" "${kernel#/boot/vmlinuz-}"

sock=$work/vus.sock
"$lunard" --iothreads 2 --listen 127.0.0.1:0 --control "$work/ctl.sock" \
    --lun "${LUN:-backend=mem,size=128M,removable=on}" --vhost-user "$sock,num-queues=2" --log info > "$work/lunard.log" 2>&1 &
lunard_pid=$!
for _ in $(seq 100); do
    [ -S "$sock" ] && break
    sleep 0.1
done
[ -S "$sock" ] || { cat "$work/lunard.log"; echo "no vhost-user socket"; exit 1; }

start=$(date +%s)
timeout -s KILL "$guest_timeout" qemu-system-x86_64 \
    -machine q35 -accel tcg -cpu max -m 512M -smp 2 \
    -object memory-backend-memfd,id=mem,size=512M,share=on -numa node,memdev=mem \
    -kernel "$kernel" -initrd "$work/initramfs.gz" \
    -append "console=ttyS0 panic=-1 quiet loglevel=4 no_timer_check lunar.tests=$tests" \
    -chardev socket,id=vus,path="$sock" \
    -device vhost-user-scsi-pci,chardev=vus,num_queues=2 \
    -display none -serial file:"$work/serial.log" -monitor none -no-reboot &
qemu_pid=$!
wait "$qemu_pid" || true
qemu_pid=
tr -d '\r' < "$work/serial.log" > "$out"
cp "$work/lunard.log" "${out%.log}.lunard.log"
echo "guest ran $(($(date +%s) - start)) s; console log: $out"
grep -a "LUNAR-VM" "$out" || true
sed -n '/^LUNAR-CU-BEGIN$/,/^LUNAR-CU-END$/p' "$out" | "$summary" --suites
grep -aq "^LUNAR-CU-END" "$out"
