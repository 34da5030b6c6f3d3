#!/bin/sh
# Guest init for tests/vm/multipath.sh: Linux's iSCSI initiator and
# dm-multipath (multipathd from Debian's multipath-tools, with ALUA: `prio
# alua`, `path_grouping_policy group_by_prio`, scsi_dh_alua) in front of two
# lunard gateways of one RBD image, reached over QEMU's user-mode network
# at the portals in lunar.g1= and lunar.g2= on the kernel command line.
# Lines "LUNAR-MP: <what> <result>" are for the host's checks, "LUNAR-CUE:
# <what>" are cues for the host; "LUNAR-VM-RESULT: PASS|FAIL ..." comes last,
# then power off. Every wait is bounded.
#
# Steps: SendTargets through gateway 1 (both gateways' portals expected);
# logins to both portals as this host (iqn...:guest) and as a second host
# (iqn...:other, its own iSCSI interface; its disks are kept out of
# multipath); multipathd builds the map; the multipath topology; persistent
# reservations: mpathpersist registers this host's key on both paths and
# reserves Write Exclusive - Registrants Only through the map, both
# gateways report the same registrations and reservation (sg_persist on
# each path), and the other host's WRITE is refused with RESERVATION
# CONFLICT (its READ allowed); then the failover loop: O_DIRECT writes on
# the map (each chunk of 256 KiB four concurrent 64 KiB writes) while the
# host kills and restarts the gateway that owns the image, until the host
# publishes STOP at lunar.stop= (an HTTP URL); every chunk written is read
# back and compared; the reservation is checked again through both
# gateways and the other host's WRITE refused through the new owner; the
# reservation is cleared.
# shellcheck source-path=SCRIPTDIR source=guest-lib.sh
. /guest-lib.sh
result_dmesg="iscsi\|connection\|session\|I/O error\|multipath\|alua\|reservation\|device-mapper"

arg() { sed -n "s/.*lunar\.$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
G1=$(arg g1)
G2=$(arg g2)
STOP_URL=$(arg stop)
IQN=iqn.2026-11.dev.lunar
T=$IQN:shared
KEY=0x4c554e4152
mp() { echo "LUNAR-MP: $*"; }
cue() { echo "LUNAR-CUE: $*"; }
# now: seconds since boot, in hundredths.
now() { awk '{ printf "%d", $1 * 100 }' /proc/uptime; }

ip link set lo up
ip link set eth0 up || fail "no eth0"
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2

mkdir -p /etc/iscsi /run/lock/iscsi /var/lib/iscsi /var/lock /etc/multipath /run/multipathd
echo "root:x:0:0:root:/root:/bin/sh" > /etc/passwd
echo "root:x:0:" > /etc/group
echo "InitiatorName=$IQN:guest" > /etc/iscsi/initiatorname.iscsi
# replacement_timeout: how long a session that lost its gateway holds its
# commands before failing them to dm-multipath (which then moves them to
# the other gateway); the NOP-Outs find a dead gateway within 4 s.
cat > /etc/iscsi/iscsid.conf <<'EOF'
node.startup = manual
node.session.timeo.replacement_timeout = 3
node.conn[0].timeo.login_timeout = 5
node.conn[0].timeo.noop_out_interval = 2
node.conn[0].timeo.noop_out_timeout = 2
node.session.initial_login_retry_max = 4
node.session.cmds_max = 128
node.session.queue_depth = 32
node.session.iscsi.InitialR2T = No
node.session.iscsi.ImmediateData = Yes
node.session.iscsi.FirstBurstLength = 262144
node.session.iscsi.MaxBurstLength = 16776192
node.conn[0].iscsi.MaxRecvDataSegmentLength = 262144
EOF
iscsid -f > /tmp/iscsid.log 2>&1 &
sleep 1
kill -0 $! || fail "iscsid did not start: $(cat /tmp/iscsid.log)"

# The other host: an iSCSI interface with its own initiator name.
iscsiadm -m iface -I other -o new > /dev/null 2>&1
iscsiadm -m iface -I other -o update -n iface.initiatorname -v "$IQN:other" > /dev/null ||
    fail "iface other: $(iscsiadm -m iface -I other 2>&1 | tail -3)"

iscsiadm -m discovery -t st -p "$G1" -I default -I other > /tmp/disc 2>&1
mp "discovery rc=$?"
mp "discovered: $(awk '{ print $1 }' /tmp/disc | sort -u | tr '\n' ' ')"
for iface in default other; do
    for p in "$G1" "$G2"; do
        iscsiadm -m node -T "$T" -p "$p" -I "$iface" --login > /tmp/login 2>&1
        mp "login $iface $p rc=$?"
    done
done

# disk_of_path INITIATOR ADDRESS: the sd disk of the session of INITIATOR
# (iqn) to the gateway at ADDRESS (ip).
disk_of_path() {
    for s in /sys/class/iscsi_session/session*; do
        [ "$(cat "$s/initiatorname" 2>/dev/null)" = "$1" ] || continue
        n=${s##*/session}
        [ "$(cat "/sys/class/iscsi_connection/connection$n:0/persistent_address" 2>/dev/null)" = "$2" ] || continue
        for d in "$s"/device/target*/*:*:*:0/block/*; do
            [ -e "$d" ] && basename "$d" && return 0
        done
    done
    return 1
}
four_disks() {
    for i in "$IQN:guest" "$IQN:other"; do
        for a in "${G1%:*}" "${G2%:*}"; do disk_of_path "$i" "$a" > /dev/null || return 1; done
    done
}
wait_until 300 four_disks || fail "not four disks: $(ls /sys/block) $(cat /tmp/login)"
P1=$(disk_of_path "$IQN:guest" "${G1%:*}")
P2=$(disk_of_path "$IQN:guest" "${G2%:*}")
O1=$(disk_of_path "$IQN:other" "${G1%:*}")
O2=$(disk_of_path "$IQN:other" "${G2%:*}")
mp "paths: guest g1=$P1 g2=$P2 other g1=$O1 g2=$O2"
mp "sizes: $(cat /sys/block/"$P1"/size) $(cat /sys/block/"$P2"/size)"
mp "device handlers: $(cat /sys/block/"$P1"/device/dh_state 2>/dev/null) $(cat /sys/block/"$P2"/device/dh_state 2>/dev/null)"

# No udevd here: the udev database entries its rules would write for the
# two paths (scsi_id's ID_SERIAL, "3" and the NAA designator, the same on
# both; ID_WWN and SCSI_IDENT_*, which multipath's default property
# blacklist exception wants), without which libudev calls a device
# uninitialized and multipathd's discovery skips it.
mkdir -p /run/udev/data
for d in "$P1" "$P2"; do
    wwid=$(cat "/sys/block/$d/device/wwid")
    naa=${wwid#naa.}
    {
        echo "I:1000000"
        echo "E:ID_SERIAL=3$naa"
        echo "E:ID_BUS=scsi"
        echo "E:DEVTYPE=disk"
        echo "E:ID_WWN=0x$(echo "$naa" | cut -c1-16)"
        echo "E:ID_WWN_WITH_EXTENSION=0x$naa"
        echo "E:SCSI_IDENT_LUN_NAA_REGEXT=$naa"
    } > "/run/udev/data/b$(cat "/sys/block/$d/dev")"
done
mp "wwid: $(cat "/sys/block/$P1/device/wwid") $(cat "/sys/block/$P2/device/wwid")"
cat > /etc/multipath.conf <<EOF
defaults {
    user_friendly_names yes
    find_multipaths off
    polling_interval 1
    reservation_key file
}
blacklist {
    devnode "^($O1|$O2)\$"
}
devices {
    device {
        vendor "LUNAR"
        product ".*"
        path_grouping_policy group_by_prio
        prio alua
        hardware_handler "1 alua"
        path_checker tur
        failback manual
        no_path_retry queue
    }
}
EOF
multipathd -d -s -v3 > /tmp/multipathd.log 2>&1 &
mpd=$!
sleep 2
kill -0 "$mpd" || fail "multipathd ended: $(tail -20 /tmp/multipathd.log)"
M=/dev/mapper/mpatha
# The map's node: /dev/dm-N from devtmpfs, and the /dev/mapper link udev
# would make.
map_ready() {
    if [ ! -b "$M" ]; then
        for dm in /sys/block/dm-*; do
            [ "$(cat "$dm/dm/name" 2>/dev/null)" = mpatha ] && ln -sf "../${dm##*/}" "$M"
        done
    fi
    [ -b "$M" ] && [ "$(multipathd show paths raw format '%d' 2>/dev/null | grep -c sd)" -ge 2 ]
}
if ! wait_until 200 map_ready; then
    multipath -v3 > /tmp/multipath.log 2>&1
    sed 's/^/LUNAR-MPLOG: /' /tmp/multipath.log
    wait_until 100 map_ready || fail "no map $M: $(tail -40 /tmp/multipathd.log | tr '\n' '|')"
fi
topology() { # topology TAG: `multipath -ll` as "LUNAR-MPLL TAG: " lines
    multipath -ll > /tmp/ll 2>&1
    sed "s/^/LUNAR-MPLL $1: /" /tmp/ll
}
topology start
mp "map size $(blockdev --getsz "$M")"

# Persistent reservations through the map, then read through each gateway.
# (the keys are the lines holding only a number; "PR generation=0x.." is not one)
prkeys() { sg_persist --in -k -n "/dev/$1" 2>&1 | grep -o "^ *0x[0-9a-f]*$" | trim | sort | tr '\n' ' '; }
trim() { sed 's/^[[:space:]]*//; s/[[:space:]]*$//'; }
prres() { sg_persist --in -r -n "/dev/$1" 2>&1 | sed -n 's/.*Key=\(0x[0-9a-f]*\).*/\1/p; s/.*scope: \(.*\)/\1/p' | tr '\n' ' '; }
# The other host's WRITE(10) or READ(10) of the last block (outside the
# loop's chunks), with sg_raw: its SCSI status and sense.
last=$(printf '%08x' $(($(cat "/sys/block/$O1/size") - 1)) | sed 's/\(..\)/\1 /g')
other_cmd() { # other_cmd DISK read|write
    if [ "$2" = write ]; then
        head -c 512 /dev/zero > /tmp/blk
        # shellcheck disable=SC2086 # $last: four bytes
        sg_raw -s 512 -i /tmp/blk "/dev/$1" 2a 00 $last 00 00 01 00 > /tmp/raw 2>&1
    else
        # shellcheck disable=SC2086
        sg_raw -r 512 "/dev/$1" 28 00 $last 00 00 01 00 > /tmp/raw 2>&1
    fi
    sed -n 's/.*SCSI Status: *//p' /tmp/raw | head -1 | sed 's/ *$//'
    sed -n 's/.*Sense key: *\([^ ]*\).*/sense \1/p; s/.*Additional sense: *//p' /tmp/raw | head -2 | tr '\n' ' '
}
mpathpersist --out --register --param-sark=$KEY "$M" > /tmp/pr 2>&1
mp "pr register rc=$? $(tr '\n' ' ' < /tmp/pr)"
mpathpersist --out --reserve --param-rk=$KEY --prout-type=5 "$M" > /tmp/pr 2>&1
mp "pr reserve rc=$? $(tr '\n' ' ' < /tmp/pr)"
mpathpersist --in -k "$M" > /tmp/pr 2>&1
mp "pr map keys: $(grep -o "^ *0x[0-9a-f]*$" /tmp/pr | trim | sort | tr '\n' ' ')"
mp "pr keys g1: $(prkeys "$P1")"
mp "pr keys g2: $(prkeys "$P2")"
mp "pr reservation g1: $(prres "$P1")"
mp "pr reservation g2: $(prres "$P2")"
mp "pr other write g1: $(other_cmd "$O1" write)"
mp "pr other read g1: $(other_cmd "$O1" read)"

# The failover loop.
echo none > "/sys/block/$P1/queue/scheduler" 2>/dev/null
echo none > "/sys/block/$P2/queue/scheduler" 2>/dev/null
max=$(($(blockdev --getsz "$M") / 512 - 1))
stop() { wget -q -O /tmp/stop "$STOP_URL" 2>/dev/null && grep -q STOP /tmp/stop; }
head -c 262144 /base.bin > /tmp/base
pattern() { (echo "failover chunk $1"; cat /tmp/base) | head -c 262144 > "$2"; }
errors=0
stall=0
i=0
t0=$(now)
dmesg -c > /dev/null
cue failover
while [ $i -lt $max ]; do
    if [ $((i % 4)) -eq 0 ] && stop; then
        break
    fi
    pattern $i /tmp/chunk
    t=$(now)
    pids=
    for q in 0 1 2 3; do
        dd if=/tmp/chunk of="$M" bs=64k skip=$q seek=$((i * 4 + q)) count=1 oflag=direct 2>/tmp/err$q &
        pids="$pids $!"
    done
    for p in $pids; do
        wait "$p" || errors=$((errors + 1))
    done
    took=$(($(now) - t))
    [ "$took" -gt "$stall" ] && stall=$took
    echo "LUNAR-MP: failover wrote chunk $i in $((took * 10)) ms"
    i=$((i + 1))
done
chunks=$i
mp "failover loop: $chunks chunks in $(( ($(now) - t0) / 100 )) s, longest chunk $((stall * 10)) ms, write errors $errors"
dmesg > /tmp/dmesg
mp "failover kernel: failing path $(grep -c "Failing path" /tmp/dmesg) reinstated $(grep -ci "reinstat" /tmp/dmesg) queued no-path $(grep -c "queue_if_no_path" /tmp/dmesg) conn errors $(grep -c "detected conn error" /tmp/dmesg) path I/O errors $(grep -ci "I/O error" /tmp/dmesg)"
bad=0
i=0
while [ $i -lt "$chunks" ]; do
    pattern $i /tmp/chunk
    if ! dd if="$M" of=/tmp/back bs=256k skip=$i count=1 iflag=direct 2>/tmp/err ||
        [ "$(sha /tmp/back)" != "$(sha /tmp/chunk)" ]; then
        bad=$((bad + 1))
    fi
    i=$((i + 1))
done
mp "failover verify: $chunks chunks, $bad bad"
# The paths are back (multipathd's checker, every second).
two_paths_up() { [ "$(multipath -ll 2>/dev/null | grep -c "active ready\|active ghost")" -ge 2 ]; }
wait_until 150 two_paths_up
topology end

mp "pr after keys g1: $(prkeys "$P1")"
mp "pr after keys g2: $(prkeys "$P2")"
mp "pr after reservation g1: $(prres "$P1")"
mp "pr after reservation g2: $(prres "$P2")"
mp "pr after other write g1: $(other_cmd "$O1" write)"
mp "pr after other write g2: $(other_cmd "$O2" write)"
mpathpersist --out --clear --param-rk=$KEY "$M" > /tmp/pr 2>&1
mp "pr clear rc=$? $(tr '\n' ' ' < /tmp/pr)"
mp "pr cleared keys g1: $(prkeys "$P1")"
mp "pr cleared other write: $(other_cmd "$O1" write) / $(other_cmd "$O2" write)"

kill "$mpd" 2>/dev/null
mp "multipathd log: $(grep -ci "error\|fail" /tmp/multipathd.log) lines with error or fail"
result PASS
