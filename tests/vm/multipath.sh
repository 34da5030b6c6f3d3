#!/bin/bash
# Failover between two lunard gateways of one Ceph RBD image, seen by a
# Linux host running dm-multipath: QEMU (TCG) boots Debian's kernel with a
# busybox initramfs holding open-iscsi (iscsid, iscsiadm) and
# multipath-tools (multipathd, multipath, mpathpersist; both extracted from
# Debian's packages, not installed here), sg3-utils and the modules
# iscsi_tcp, dm_multipath and scsi_dh_alua; its init is
# tests/vm/init-multipath.sh.
#
# Everything runs in a network namespace of this script: a single-node
# Ceph cluster (tests/ceph/micro-cluster.sh) on its 127.0.0.1, gateway 1 at
# 192.0.2.1:3260 and gateway 2 at 192.0.2.2:3260 (one [[gateway]] list, an
# rbd LUN with pr=cluster: the image's owner is the holder of its lock,
# reservations live in a RADOS object), QEMU, whose guest reaches both
# portals through slirp, and a small HTTP server on 127.0.0.1 (the guest's
# 10.0.2.2) where the host publishes STOP for the guest's write loop.
#
# While the guest writes (O_DIRECT, verified afterwards) on the multipath
# device, the host ends the gateway that owns the image at each of $EVENTS,
# each WHAT:DOWN: kill = SIGKILL, term = SIGTERM (a clean stop: the lock is
# released), upgrade = SIGTERM and a start from another copy of the binary;
# the gateway starts again DOWN s later. Down longer than the guest's
# replacement_timeout (3 s), the host's multipath fails over: SET TARGET
# PORT GROUPS to the standby gateway, which takes the image over. Back
# within it, the gateway resumes as the owner (its previous process's lock
# taken over, or the released lock taken). The next event waits until the
# guest wrote 6 more chunks (I/O resumed). Checks: both portals
# discovered, the map with two path groups (ALUA prio 50 and 1), the
# owner moved at each long event, zero write errors in the application,
# every chunk written reads back, the persistent reservation (Write
# Exclusive - Registrants Only, made with mpathpersist through the map)
# seen alike through both gateways before and after the failovers and the
# other host's WRITE refused with RESERVATION CONFLICT through the first
# owner and through the last one; reported: the time the application's I/O
# stalled at each event (the longest chunk among the two after it), median
# and max, for failovers and for quick restarts.
#
# Needs root (network namespace). Installs what it needs on Debian 12.
# usage: tests/vm/multipath.sh
# With ALUA=all-active the LUN says alua=all-active: both gateways are
# Active/Optimized, multipath puts both paths in one group and writes
# through both; an event ends the gateway holding the image's lock at that
# moment, the other fences it once writes waited 5 s for the lock.
#
# env: GUEST_TIMEOUT (s, default 480), EVENTS (default "kill:8 kill:8
#      upgrade:1 kill:1 term:8"), ALUA (owner or all-active, default
#      owner), KEEP_LOGS (a directory: keep the serial console and the
#      lunard logs there)
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

guest_timeout=${GUEST_TIMEOUT:-480}
alua=${ALUA:-owner}
case "$alua" in owner | all-active) ;; *) echo "ALUA: owner or all-active, not $alua"; exit 2 ;; esac
read -r -a events <<< "${EVENTS:-kill:8 kill:8 upgrade:1 kill:1 term:8}"
# A failover needs the gateway down longer than the guest's replacement_timeout.
failover_down=5
[ "$(id -u)" = 0 ] || { echo "multipath: needs root (it creates a network namespace)"; exit 1; }

vm_need sg_inq sg3-utils
vm_need jq jq
vm_need ip iproute2
vm_need python3 python3
dpkg -s libisns0 libopeniscsiusr >/dev/null 2>&1 || need+=(libisns0 libopeniscsiusr)
for lib in libaio1 liburcu8 libjson-c5 libedit2 libdevmapper1.02.1; do
    dpkg -s "$lib" >/dev/null 2>&1 || need+=("$lib")
done
vm_install
"$repo/tests/ceph/micro-cluster.sh" install
vm_build

# open-iscsi's and multipath-tools' programs, from Debian's packages
# (cached beside the build).
debs=${CARGO_TARGET_DIR:-$repo/target}/multipath-debs
if [ ! -x "$debs/root/sbin/multipathd" ] || [ ! -x "$debs/root/sbin/iscsid" ]; then
    rm -rf "$debs" && mkdir -p "$debs"
    (cd "$debs" && apt-get download -q open-iscsi multipath-tools 2>/dev/null) ||
        { echo "apt-get download open-iscsi multipath-tools failed"; exit 1; }
    for d in "$debs"/*.deb; do dpkg-deb -x "$d" "$debs/root"; done
fi
echo "packages: $(cd "$debs" && printf '%s ' ./*.deb)"

ns=lunar-mpath-$$
work=$(mktemp -d)
gw_pid=("" "")
http_pid=
cluster=$work/ceph
cleanup() {
    for p in "${gw_pid[@]}" "$http_pid"; do
        if [ -n "$p" ]; then
            kill -9 "$p" 2>/dev/null || true
            wait "$p" 2>/dev/null || true
        fi
    done
    [ ! -e "$cluster/pids" ] || "$repo/tests/ceph/micro-cluster.sh" stop "$cluster" >/dev/null 2>&1 || true
    vm_cleanup
    ip netns del "$ns" 2>/dev/null || true
}
trap cleanup EXIT
kernel=$(printf '%s\n' /boot/vmlinuz-* | sort -V | tail -1)
kver=${kernel#/boot/vmlinuz-}

extra=$work/extra
mkdir -p "$extra/sbin" "$extra/lib"
cp "$debs/root/sbin/iscsid" "$debs/root/sbin/iscsiadm" "$debs/root/sbin/multipathd" "$debs/root/sbin/multipath" \
    "$debs/root/sbin/mpathpersist" "$extra/sbin/"
cp -a "$debs/root/lib/multipath" "$debs/root/lib"/lib*.so.* "$extra/lib/"
head -c 262144 /dev/urandom > "$extra/base.bin"
EXTRA_ROOT=$extra EXTRA_FILES=/lib/x86_64-linux-gnu/libgcc_s.so.1 INIT=$here/init-multipath.sh \
    MODULES="virtio_pci virtio_net sd_mod sg crc32c_generic crc32c scsi_dh_alua dm_multipath dm_service_time dm_round_robin iscsi_tcp" \
    BINARIES="sg_inq sg_persist sg_raw sg_rtpg sg_turs blockdev" \
    "$here/build-initramfs.sh" "$work/initramfs.gz" "$kver"

ip netns add "$ns"
ip -n "$ns" link set lo up
ip -n "$ns" addr add 192.0.2.1/32 dev lo
ip -n "$ns" addr add 192.0.2.2/32 dev lo
inns() { ip netns exec "$ns" "$@"; }
addrs=(192.0.2.1 192.0.2.2)

# The cluster and the image (memstore: a small image).
inns "$repo/tests/ceph/micro-cluster.sh" start "$cluster" > /dev/null
conf=$cluster/ceph.conf
inns "$repo/tests/ceph/micro-cluster.sh" image "$cluster" mpath 256M
echo "ceph cluster up; image rbd/mpath 256 MiB"

iqn=iqn.2026-11.dev.lunar
for g in 1 2; do
    cat > "$work/gw$g.toml" <<EOF
listen = ["${addrs[g - 1]}:3260"]
local-gateway = "gw$g"

[[gateway]]
name = "gw1"
portal = "${addrs[0]}:3260"

[[gateway]]
name = "gw2"
portal = "${addrs[1]}:3260"

[[target]]
name = "$iqn:shared"

[[target.lun]]
spec = "backend=rbd,pool=rbd,image=mpath,conf=$conf,pr=cluster,alua=$alua"
EOF
done
# A second copy of the binary, for the "upgrade" event (the same build:
# what is tested is a restart from another file while the host writes).
cp "$lunard" "$work/lunard-upgraded"

starts=0
# start_gw G [BINARY]: starts gateway G (1 or 2) in the namespace.
start_gw() {
    local g=$1 bin=${2:-$lunard} log
    starts=$((starts + 1))
    log=$work/gw$g-$starts.log
    ip netns exec "$ns" "$bin" --config "$work/gw$g.toml" --control "$work/ctl$g.sock" --log info > "$log" 2>&1 &
    gw_pid[g - 1]=$!
    for _ in $(seq 100); do
        grep -a "portal ${addrs[g - 1]}:3260" "$log" >/dev/null && [ -S "$work/ctl$g.sock" ] && return 0
        kill -0 "${gw_pid[g - 1]}" 2>/dev/null || { cat "$log"; echo "gateway $g exited"; exit 1; }
        sleep 0.1
    done
    cat "$log"
    echo "gateway $g did not start listening"
    exit 1
}
# owner: the gateway (1 or 2) that holds the image's lock, or nothing.
owner() {
    local g
    for g in 1 2; do
        [ -n "${gw_pid[g - 1]}" ] || continue
        if [ "$("$lunarctl" --control "$work/ctl$g.sock" --json alua show 2>/dev/null |
            jq -r '.luns[0].ownership.lock_held')" = true ]; then
            echo "$g"
            return 0
        fi
    done
}
start_gw 1
# (alua=owner: gw1 takes the lock at start; all-active: whoever writes does)
[ "$alua" = all-active ] || for _ in $(seq 100); do [ "$(owner)" = 1 ] && break; sleep 0.1; done
start_gw 2
echo "gateways up; owner: gateway $(owner)"

mkdir -p "$work/www"
inns python3 -m http.server 8080 --bind 127.0.0.1 --directory "$work/www" > "$work/http.log" 2>&1 &
http_pid=$!

# ---- the failover events, on the guest's progress
last_chunk() { serial | sed -n 's/^LUNAR-MP: failover wrote chunk \([0-9]*\) .*/\1/p' | tail -1; }
failover='' done_at='' mark=0 next=0
event_chunk=() event_what=() event_owner=() event_down=()
events() {
    [ -z "$failover" ] && serial_has "^LUNAR-CUE: failover" && failover=$(date +%s)
    [ -n "$failover" ] && [ -z "$done_at" ] || return 0
    local c o what down
    c=$(last_chunk)
    [ "${c:--1}" -ge $((mark + 6)) ] || return 0
    o=$(owner)
    [ -n "$o" ] || return 0
    event_owner+=("$o")
    if [ "$next" -ge "${#events[@]}" ]; then
        echo STOP > "$work/www/stop"
        done_at=$(date +%s)
        echo "STOP published at $(elapsed) s after chunk $c (owner: gateway $o)"
        return 0
    fi
    what=${events[next]%%:*}
    down=${events[next]#*:}
    [ "$down" != "${events[next]}" ] || down=1
    next=$((next + 1))
    sleep "0.$((RANDOM % 5))"
    case "$what" in
        kill) kill -9 "${gw_pid[o - 1]}" ;;
        term | upgrade) kill -TERM "${gw_pid[o - 1]}" ;;
        *) echo "unknown event $what"; exit 1 ;;
    esac
    wait "${gw_pid[o - 1]}" 2>/dev/null || true
    gw_pid[o - 1]=
    c=$(last_chunk)
    event_chunk+=("$c") event_what+=("$what") event_down+=("$down")
    echo "$what: gateway $o (the owner) ended at $(elapsed) s after chunk $c; down $down s"
    sleep "$down"
    if [ "$what" = upgrade ]; then start_gw "$o" "$work/lunard-upgraded"; else start_gw "$o"; fi
    echo "gateway $o started again at $(elapsed) s$([ "$what" = upgrade ] && echo " (from $work/lunard-upgraded)")"
    mark=$(last_chunk)
}

start=$(date +%s)
timeout -s KILL "$guest_timeout" ip netns exec "$ns" qemu-system-x86_64 \
    -machine q35 -accel tcg -cpu max -m 512M -smp 1 \
    -kernel "$kernel" -initrd "$work/initramfs.gz" \
    -append "console=ttyS0 panic=-1 quiet loglevel=4 no_timer_check lunar.g1=${addrs[0]}:3260 lunar.g2=${addrs[1]}:3260 lunar.stop=http://10.0.2.2:8080/stop" \
    -netdev user,id=n0,net=10.0.2.0/24 -device virtio-net-pci,netdev=n0 \
    -display none -serial file:"$work/serial.log" -monitor none -no-reboot > "$work/qemu.log" 2>&1 &
qemu_pid=$!
vm_wait_guest events
echo "guest ran $(elapsed) s"

# ---- checks
m() { serial | sed -n "s#^LUNAR-MP: $1##p" | head -1; }
serial | grep -a "^LUNAR-MP\|^LUNAR-CUE\|^LUNAR-VM" | grep -v "wrote chunk" || true
serial | grep -a "^LUNAR-MPLL" || true
check_guest_result

check "SendTargets through gateway 1 lists both gateways' portals" "$(m "discovered: " | trim)" \
    "${addrs[0]}:3260,1 ${addrs[1]}:3260,2"
check "logins: both gateways, as this host and as the other host" \
    "$(serial | grep -a "^LUNAR-MP: login .* rc=" | grep -c "rc=0$")" 4
check "both paths have the image's size (READ CAPACITY answered in standby)" \
    "$(m "sizes: ")" "$((256 * 2048)) $((256 * 2048))"
check "scsi_dh_alua attached to both paths" "$(m "device handlers: ")" "alua alua"
ll() { serial | sed -n "s/^LUNAR-MPLL $1: //p"; }
if [ "$alua" = owner ]; then
    check "the map: two path groups, ALUA prio 50 (active/optimized) and 1 (standby)" \
        "$(ll start | grep -o "prio=[0-9]*" | sort -u | tr '\n' ' ' | trim)" "prio=1 prio=50"
else
    check "the map: one path group, ALUA prio 50 (both active/optimized), two paths ready" \
        "$(ll start | grep -o "prio=[0-9]*" | tr '\n' ' ' | trim) $(ll start | grep -c "active ready running")" "prio=50 2"
fi
check "the map: hardware handler alua" "$(ll start | grep -c "hwhandler='1 alua'")" 1
check "the map has the image's size" "$(m "map size ")" $((256 * 2048))

# Reservations.
check "mpathpersist register" "$(m "pr register rc=" | cut -c1)" 0
check "mpathpersist reserve (Write Exclusive, registrants only)" "$(m "pr reserve rc=" | cut -c1)" 0
check "the key registered on both paths (two I_T nexuses)" "$(m "pr map keys: " | trim)" "0x4c554e4152 0x4c554e4152"
check "gateway 2 (standby) reports gateway 1's registrations" "$(m "pr keys g2: ")" "$(m "pr keys g1: ")"
check "both gateways report the reservation" "$(m "pr reservation g2: " | trim)" "$(m "pr reservation g1: " | trim)"
check "the reservation: our key, Write Exclusive registrants only" \
    "$(m "pr reservation g1: " | grep -o "0x4c554e4152.*Write Exclusive, registrants only" | sed 's/ .*, / /')" \
    "0x4c554e4152 registrants only"
check "the other host's WRITE through the owner (gateway 1): RESERVATION CONFLICT" \
    "$(m "pr other write g1: " | trim)" "Reservation Conflict"
check "the other host's READ through the owner: allowed" "$(m "pr other read g1: " | trim)" "Good"

# Failover.
loop=$(m "failover loop: ")
echo "failover: loop: $loop"
echo "failover: guest kernel: $(m "failover kernel: ")"
check "events done while the guest wrote" "${#event_what[@]}" "${#events[@]}"
check "the loop ended on STOP" "$([ -n "$done_at" ] && echo yes)" yes
check "zero write errors in the application" "$(echo "$loop" | sed -n 's/.*write errors \([0-9]*\).*/\1/p')" 0
check "every chunk written reads back" "$(m "failover verify: " | sed -n 's/.* \([0-9]*\) bad/\1/p')" 0
check "both paths back after the loop" "$(ll end | grep -c "active ready running\|active ghost running")" 2
# Each event: the owner before and after, and the stall (the longest chunk
# among the two after it).
took() { serial | sed -n "s/^LUNAR-MP: failover wrote chunk $1 in \([0-9]*\) ms/\1/p" | head -1; }
long_events=0 moved=0 fo_stalls=() quick_stalls=()
for i in "${!event_what[@]}"; do
    c=${event_chunk[i]} s=0
    for k in $((c + 1)) $((c + 2)); do
        t=$(took "$k")
        [ "${t:-0}" -gt "$s" ] && s=$t
    done
    before=${event_owner[i]} after=${event_owner[i + 1]:-?}
    if [ "${event_down[i]}" -ge "$failover_down" ]; then
        long_events=$((long_events + 1))
        [ "$after" != "$before" ] && moved=$((moved + 1))
        fo_stalls+=("$s")
        kind="failover"
    else
        quick_stalls+=("$s")
        kind="restart within the replacement timeout"
    fi
    echo "event $((i + 1)): ${event_what[i]}, down ${event_down[i]} s ($kind): owner gateway $before -> $after; I/O stalled $s ms"
done
stats() { # stats MS...: "median M ms, max X ms" of the arguments
    [ $# -gt 0 ] || { echo "none"; return; }
    printf '%s\n' "$@" | sort -n | awk '{ a[NR] = $1 } END { printf "median %d ms, max %d ms (%d)\n", (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2, a[NR], NR }'
}
echo "failover summary: $long_events failovers: I/O stall $(stats "${fo_stalls[@]}"); ${#quick_stalls[@]} quick restarts: $(stats "${quick_stalls[@]}"); application write errors $(echo "$loop" | sed -n 's/.*write errors \([0-9]*\).*/\1/p'), chunks verified $(m "failover verify: ")"
[ "$alua" = all-active ] || check "the owner moved to the other gateway at each failover" "$moved" "$long_events"
check "the guest's dm-multipath failed a path at each failover" \
    "$(f=$(m "failover kernel: " | sed -n 's/failing path \([0-9]*\).*/\1/p'); [ "${f:-0}" -ge "$long_events" ] && echo yes)" yes
final_owner=${event_owner[${#event_owner[@]} - 1]:-}

# Reservations after the failovers.
check "after the failovers: both gateways report the same registrations" "$(m "pr after keys g2: ")" "$(m "pr after keys g1: ")"
check "after the failovers: the registrations kept" "$(m "pr after keys g1: " | trim)" "0x4c554e4152 0x4c554e4152"
check "after the failovers: the reservation kept" "$(m "pr after reservation g1: " | trim)" "$(m "pr reservation g1: " | trim)"
check "after the failovers: the other host's WRITE through the last owner (gateway $final_owner): RESERVATION CONFLICT" \
    "$(m "pr after other write g${final_owner:-0}: " | trim)" "Reservation Conflict"
check "the reservation cleared (mpathpersist)" "$(m "pr clear rc=" | cut -c1)" 0
check "after the clear, no key registered" "$(m "pr cleared keys g1: " | trim | grep . || echo none)" none

echo "---- lunard warnings"
cat "$work"/gw*.log | sed 's/\x1b\[[0-9;]*m//g' | grep -a "WARN\|ERROR" | tail -12 || true
echo "---- lunard events"
cat "$work"/gw*.log | sed 's/\x1b\[[0-9;]*m//g' | grep -ai "take\|fence\|owner\|blocklist" | tail -20 || true
if [ "$failed" -gt 0 ]; then
    echo "---- serial console"
    serial | grep -av "wrote chunk" | tail -80
fi
vm_summary "multipath (alua=$alua)"
