#!/bin/bash
# Builds a busybox initramfs for a QEMU guest that uses a vhost-user-scsi
# disk: Debian's kernel modules virtio_pci, virtio_scsi, sd_mod, sg (with
# their dependencies, in load order, from modprobe -D), an init script
# (tests/vm/init.sh, or $INIT) that the test asserts on through the serial
# console and the guest-side helpers it sources (tests/vm/guest-lib.sh, as
# /guest-lib.sh). Host programs named in $BINARIES (default: the sg3-utils the
# guest test uses, those installed) are copied with every library they load
# (ldd) and the dynamic loader, at the same paths. $MODULES replaces the
# module list (with their dependencies, as above); $EXTRA_ROOT names a
# directory whose tree is copied into the initramfs as it is, with the
# libraries of its ELF programs; $EXTRA_FILES are host files copied to the
# same paths.
#
# usage: build-initramfs.sh OUT.cpio.gz [KERNEL_VERSION]
set -euo pipefail

out=$1
kver=${2:-$(printf '%s\n' /boot/vmlinuz-* | sort -V | tail -1 | sed 's,^/boot/vmlinuz-,,')}
here=$(cd "$(dirname "$0")" && pwd)
init=${INIT:-$here/init.sh}

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,dev,proc,sys,tmp,mods,usr/bin}
cp /bin/busybox "$root/bin/busybox"
ln -s busybox "$root/bin/sh"
cp "$init" "$root/init"
chmod +x "$root/init"
cp "$here/guest-lib.sh" "$root/guest-lib.sh"

# Dynamically linked host programs, with their libraries.
binaries=${BINARIES-sg_inq sg_vpd sg_readcap sg_luns sg_reset}
copy_file() {
    mkdir -p "$root$(dirname "$1")"
    cp -L "$1" "$root$1"
}
copy_libs() {
    ldd "$1" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | while read -r lib; do
        [ -e "$root$lib" ] || copy_file "$lib"
    done
}
for b in $binaries; do
    path=$(command -v "$b") || { echo "build-initramfs: $b not installed" >&2; exit 1; }
    copy_file "$path"
    [ "$(dirname "$path")" = /usr/bin ] || ln -sf "$path" "$root/usr/bin/$b" 2>/dev/null || true
    copy_libs "$path"
done
for f in ${EXTRA_FILES:-}; do
    copy_file "$f"
done
if [ -n "${EXTRA_ROOT:-}" ]; then
    cp -a "$EXTRA_ROOT/." "$root/"
    find "$EXTRA_ROOT" -type f | while read -r f; do
        if [ "$(head -c 4 "$f" | od -An -c | tr -d ' ')" = '177ELF' ]; then
            copy_libs "$f"
        fi
    done
fi

# Modules in load order (dependencies first), without duplicates.
: > "$root/mods/order"
for m in ${MODULES:-virtio_pci virtio_scsi sd_mod sg}; do
    modprobe -S "$kver" -D "$m" | awk '$1 == "insmod" { print $2 }' | while read -r path; do
        name=$(basename "$path")
        if ! grep -qx "$name" "$root/mods/order"; then
            case "$path" in
                *.ko) cp "$path" "$root/mods/$name" ;;
                *.ko.xz) xz -dc "$path" > "$root/mods/${name%.xz}"; name=${name%.xz} ;;
                *.ko.zst) zstd -qdc "$path" > "$root/mods/${name%.zst}"; name=${name%.zst} ;;
                *) echo "unknown module format: $path" >&2; exit 1 ;;
            esac
            echo "$name" >> "$root/mods/order"
        fi
    done
done
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) > "$out"
echo "initramfs $out: kernel $kver, modules: $(tr '\n' ' ' < "$root/mods/order")${binaries:+programs: $binaries}"
