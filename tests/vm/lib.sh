# shellcheck shell=bash disable=SC2034
# Host side shared by the guest tests in tests/vm (vhost-guest.sh,
# vhost-reconnect.sh, guest-conformance.sh), sourced after `set -euo
# pipefail`: the packages a guest needs, building lunard, a work directory
# removed on exit, lunard on a vhost-user socket, a Debian-kernel busybox
# guest under QEMU (TCG) on that socket, its serial console, and the checks
# with their pass/fail counts.
#
# Sets: here (tests/vm), repo, SUDO; lunard, lunarctl (vm_build); work, sock,
# ctl, kernel, kver (vm_setup); lunard_pid (vm_start_lunard); qemu_pid, start
# (vm_qemu); passed, failed (check). Reads guest_timeout (s, vm_qemu) and
# CHECK_GOT (check's name for what it got, default "got"). (SC2034: the
# variables it sets are for the scripts.)
# env: KEEP_LOGS (a directory: $work/*.log are copied there on exit)

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
SUDO=
[ "$(id -u)" = 0 ] || SUDO=sudo
need=()
lunard_pid=
qemu_pid=
passed=0
failed=0

# vm_need COMMAND PACKAGE: vm_install installs PACKAGE if COMMAND is missing.
vm_need() { command -v "$1" >/dev/null || need+=("$2"); }

# QEMU's version as MAJOR*100+MINOR (0 when not installed).
qemu_version() {
    qemu-system-x86_64 --version 2>/dev/null |
        sed -n '1s/^QEMU emulator version \([0-9]*\)\.\([0-9]*\).*/\1 \2/p' |
        { read -r major minor && echo $((major * 100 + minor)) || echo 0; }
}
# The first line of `qemu-system-x86_64 --version`, or "no QEMU".
qemu_name() { qemu-system-x86_64 --version 2>/dev/null | sed -n 1p | grep . || echo "no QEMU"; }

# vm_install [MIN_QEMU]: installs (apt-get) what vm_need asked for and what
# every guest needs: Debian's kernel, busybox, cpio and QEMU. MIN_QEMU
# (MAJOR*100+MINOR): on Debian 12 an older or missing QEMU is replaced by
# bookworm-backports' (QEMU 10.0); elsewhere the caller checks qemu_version.
# shellcheck disable=SC2120
vm_install() {
    local min=${1:-0} backports=
    ls /boot/vmlinuz-* >/dev/null 2>&1 || need+=(linux-image-amd64)
    [ -x /bin/busybox ] || need+=(busybox-static)
    vm_need cpio cpio
    if [ "$(qemu_version)" -lt "$min" ] || ! command -v qemu-system-x86_64 >/dev/null; then
        if [ "$min" -gt 0 ] && grep -qx "VERSION_CODENAME=bookworm" /etc/os-release 2>/dev/null; then
            backports=1
        else
            vm_need qemu-system-x86_64 qemu-system-x86
        fi
    fi
    [ ${#need[@]} -gt 0 ] || [ -n "$backports" ] || return 0
    if [ -n "$backports" ]; then
        echo "$(qemu_name): installing qemu-system-x86 from bookworm-backports"
        if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
            printf '%s\n' "Types: deb" "URIs: http://deb.debian.org/debian" "Suites: bookworm-backports" \
                "Components: main" "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg" |
                $SUDO tee /etc/apt/sources.list.d/lunar-bookworm-backports.sources >/dev/null
        fi
    fi
    $SUDO apt-get update -qq
    if [ ${#need[@]} -gt 0 ]; then
        echo "installing ${need[*]}"
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${need[@]}" kmod >/dev/null
    fi
    if [ -n "$backports" ]; then
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            -t bookworm-backports qemu-system-x86 >/dev/null
    fi
}

# vm_build: builds lunard and lunarctl (in $CARGO_TARGET_DIR, default target/).
vm_build() {
    (cd "$repo" && cargo build -q -p lunard --bins)
    lunard=${CARGO_TARGET_DIR:-$repo/target}/debug/lunard
    lunarctl=${CARGO_TARGET_DIR:-$repo/target}/debug/lunarctl
}

# On exit: QEMU and lunard stopped, the logs kept (KEEP_LOGS), $work removed.
vm_cleanup() {
    # timeout(1) runs QEMU in a process group of its own: end both.
    if [ -n "$qemu_pid" ]; then
        kill -9 -- "-$qemu_pid" 2>/dev/null || kill -9 "$qemu_pid" 2>/dev/null || true
    fi
    if [ -n "$lunard_pid" ]; then
        kill "$lunard_pid" 2>/dev/null || true
        wait "$lunard_pid" 2>/dev/null || true
    fi
    if [ -n "${KEEP_LOGS:-}" ]; then
        { mkdir -p "$KEEP_LOGS" && cp "$work"/*.log "$KEEP_LOGS"/; } 2>/dev/null || true
    fi
    rm -rf "$work"
}

# vm_setup INIT BINARIES: the work directory $work (cleaned up on exit), its
# socket paths $sock (vhost-user) and $ctl (lunard's control), and the
# guest's initramfs for the newest installed kernel ($kernel, $kver):
# build-initramfs.sh with tests/vm/INIT as /init and the host programs
# BINARIES.
vm_setup() {
    work=$(mktemp -d)
    trap vm_cleanup EXIT
    sock=$work/vus.sock
    ctl=$work/ctl.sock
    kernel=$(printf '%s\n' /boot/vmlinuz-* | sort -V | tail -1)
    kver=${kernel#/boot/vmlinuz-}
    INIT=$here/$1 BINARIES=$2 "$here/build-initramfs.sh" "$work/initramfs.gz" "$kver"
}

# vm_start_lunard LOG QUEUES ARGS...: starts lunard ARGS in the background
# (lunard_pid), its output in LOG, with an iSCSI portal on 127.0.0.1, the
# control socket $ctl and a vhost-user-scsi controller of QUEUES request
# queues on $sock. Waits (10 s at most) until all three are up; exits 1 if
# lunard ends or does not get there.
vm_start_lunard() {
    local log=$1 queues=$2
    shift 2
    "$lunard" --listen 127.0.0.1:0 --control "$ctl" --vhost-user "$sock,num-queues=$queues" --log info \
        "$@" > "$log" 2>&1 &
    lunard_pid=$!
    for _ in $(seq 100); do
        grep "vhost-user-scsi controller listening" "$log" >/dev/null &&
            grep "portal 127.0.0.1:" "$log" >/dev/null && [ -S "$ctl" ] && return 0
        kill -0 "$lunard_pid" 2>/dev/null || { cat "$log"; echo "lunard exited"; exit 1; }
        sleep 0.1
    done
    cat "$log"
    echo "lunard did not start listening"
    exit 1
}

# vm_qemu SMP QUEUES [APPEND [CHARDEV_OPTS]]: boots the guest in the
# background (qemu_pid; start: when) with SMP CPUs and 512 MiB of shared
# (memfd) memory, the vhost-user-scsi disk on $sock with QUEUES request
# queues, APPEND added to the kernel command line and CHARDEV_OPTS to the
# socket chardev; serial console in $work/serial.log. QEMU is killed after
# $guest_timeout s.
vm_qemu() {
    start=$(date +%s)
    timeout -s KILL "${guest_timeout:?}" qemu-system-x86_64 \
        -machine q35 -accel tcg -cpu max -m 512M -smp "$1" \
        -object memory-backend-memfd,id=mem,size=512M,share=on -numa node,memdev=mem \
        -kernel "$kernel" -initrd "$work/initramfs.gz" \
        -append "console=ttyS0 panic=-1 quiet loglevel=4 no_timer_check${3:+ $3}" \
        -chardev "socket,id=vus,path=$sock${4:-}" \
        -device vhost-user-scsi-pci,chardev=vus,num_queues="$2" \
        -display none -serial file:"$work/serial.log" -monitor none -no-reboot &
    qemu_pid=$!
}

# vm_wait_guest [COMMAND...]: until QEMU ends, runs COMMAND (what the host
# does on the guest's cues) every 0.2 s.
# shellcheck disable=SC2120
vm_wait_guest() {
    while kill -0 "$qemu_pid" 2>/dev/null; do
        [ $# -eq 0 ] || "$@"
        sleep 0.2
    done
    wait "$qemu_pid" || true
    qemu_pid=
}

# Seconds since QEMU started.
elapsed() { echo $(($(date +%s) - start)); }
# The serial console so far, without carriage returns.
serial() { tr -d '\r' 2>/dev/null < "$work/serial.log" || true; }
# serial_has PATTERN: the console has a line matching PATTERN (grep).
serial_has() { serial | grep -a "$1" >/dev/null; }
# plain LOG: a lunard log without colours.
plain() { sed 's/\x1b\[[0-9;]*m//g' "$1" 2>/dev/null; }

# check WHAT GOT WANT: passes when GOT is WANT and not empty.
check() {
    if [ "$2" = "$3" ] && [ -n "$3" ]; then
        passed=$((passed + 1))
        echo "ok   $1: $2"
    else
        failed=$((failed + 1))
        echo "FAIL $1: ${CHECK_GOT:-got} '$2', expected '$3'"
    fi
}
trim() { sed 's/^[[:space:]]*//; s/[[:space:]]*$//'; }
# sg_out LUN TOOL: what the guest printed of sg3-utils' TOOL for LUN.
sg_out() { serial | sed -n "s/^LUNAR-SG L$1 $2: //p"; }
# check_identity LUN "WANT LUNS": sg3-utils in the guest against libiscsi
# on the host ($ref/{inq,sn,di,cap}LUN): vendor, product, revision, unit
# serial number, the T10 vendor and SCSI name designators as iSCSI shows
# them; the NAA (binary: iscsi-inq cannot print it) must be NAA 6 and carry
# the identifier of the serial number (lunard makes both from one id); the
# capacity, and REPORT LUNS against WANT LUNS. Sets naa_of[LUN], want_blocks
# and want_bs.
check_identity() {
    local lun=$1 want_luns=$2 serial_no t10 naa id luns
    # shellcheck disable=SC2154 # $ref: the caller's directory of libiscsi's answers
    field() { sed -n "s/^$1:\(.*\)/\1/p" "$ref/$2$lun" | head -1 | trim; }
    check "LUN $lun vendor" "$(sg_out "$lun" inq | sed -n 's/.*Vendor identification: //p' | trim)" "$(field Vendor inq)"
    check "LUN $lun product" "$(sg_out "$lun" inq | sed -n 's/.*Product identification: //p' | trim)" "$(field Product inq)"
    check "LUN $lun revision" "$(sg_out "$lun" inq | sed -n 's/.*Product revision level: //p' | trim)" "$(field Revision inq)"
    serial_no=$(sed -n 's/^Unit Serial Number:\[\(.*\)\]/\1/p' "$ref/sn$lun")
    check "LUN $lun unit serial number" "$(sg_out "$lun" sn | sed -n 's/.*Unit serial number: //p' | trim)" "$serial_no"
    t10=$(sed -n 's/^Designator:\[\(LUNAR .*\)\]/\1/p' "$ref/di$lun" | awk '{ print $1, $2 }')
    check "LUN $lun T10 vendor designator" \
        "$(sg_out "$lun" di | sed -n 's/.*vendor id: //p' | trim) $(sg_out "$lun" di | sed -n 's/.*vendor specific: //p' | trim)" \
        "$t10"
    check "LUN $lun SCSI name string" "$(sg_out "$lun" di | grep -A1 "SCSI name string:" | tail -1 | trim)" \
        "$(sed -n 's/^Designator:\[\(iqn[^]]*\)\]/\1/p' "$ref/di$lun" | head -1)"
    naa=$(sg_out "$lun" di | { grep -A1 "designator type: NAA" || true; } | tail -1 | trim | tr 'A-F' 'a-f')
    id=$(echo "${serial_no#LUNAR}" | tr 'A-F' 'a-f')
    check "LUN $lun NAA 6 designator carries the serial's id" \
        "$([[ $naa =~ ^0x6[0-9a-f]{31}$ ]] && [ -n "$id" ] && [ "${naa%"$id"}" != "$naa" ] && echo "yes ($naa)")" \
        "yes ($naa)"
    naa_of[lun]=$naa
    want_blocks=$(sed -n 's/^RETURNED LOGICAL BLOCK ADDRESS:\([0-9]*\)/\1/p' "$ref/cap$lun")
    want_bs=$(sed -n 's/^LOGICAL BLOCK LENGTH IN BYTES:\([0-9]*\)/\1/p' "$ref/cap$lun")
    check "LUN $lun last LBA" "$(sg_out "$lun" readcap | sed -n 's/.*Last LBA=\([0-9]*\).*/\1/p')" "$want_blocks"
    check "LUN $lun block size" "$(sg_out "$lun" readcap | sed -n 's/.*Logical block length=\([0-9]*\) bytes.*/\1/p')" "$want_bs"
    luns=$(sg_out "$lun" luns | { grep -Eo '^ *[0-9a-f]{16}' || true; } | trim | while read -r l; do
        echo $((0x${l:0:4} & 0x3fff))
    done | tr '\n' ' ' | trim)
    check "LUN $lun REPORT LUNS" "$luns" "$want_luns"
}
# The guest's result line ("LUNAR-VM-RESULT: PASS ..." last on the console)
# must say PASS.
check_guest_result() {
    check "guest result" "$({ serial | grep -a "^LUNAR-VM-RESULT:" || true; } | cut -d' ' -f1-2)" \
        "LUNAR-VM-RESULT: PASS"
}
# vm_summary NAME: "NAME: P passed, F failed"; false if a check failed.
vm_summary() {
    echo "$1: $passed passed, $failed failed"
    [ "$failed" -eq 0 ]
}
