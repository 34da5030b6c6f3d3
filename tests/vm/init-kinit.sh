#!/bin/sh
# Guest init for tests/vm/kernel-initiator.sh: Linux's own iSCSI initiator
# (open-iscsi's iscsid and iscsiadm, the iscsi_tcp module) against lunard
# on the host, over QEMU's user-mode network (the guest is 10.0.2.15; the
# host's portals are at the address in lunar.a= and lunar.b= on the kernel
# command line, which the guest reaches through slirp). Each step prints
# "LUNAR-KI: <name> <result>" lines on the serial console for the host to
# check; cues for the host are "LUNAR-CUE: <what>" lines, after which the
# guest waits (bounded) for the effect. "LUNAR-VM-RESULT: PASS|FAIL ..."
# comes last, then power off. Every wait is bounded.
#
# Targets (the host's lunard.toml): kinit-open (no CHAP; LUN 0 512 MiB,
# LUN 1 64 MiB), kinit-chap (one-way CHAP), kinit-mutual (mutual CHAP),
# kinit-recover (a file LUN, for the write loops; with a TargetAlias),
# kinit-slow (a mem LUN with fault=on) on portal A; kinit-dchap on portal
# B, whose discovery needs CHAP. lunar.cut= is the host's relay to portal
# A, which cuts connections mid-PDU. lunar.only=STEP,... runs only those
# steps (slow, cut, recovery) after discovery, for working on them.
# shellcheck source-path=SCRIPTDIR source=guest-lib.sh
. /guest-lib.sh
result_dmesg="iscsi\|connection\|session\|I/O error\|EXT4\|sd [0-9]"

arg() { sed -n "s/.*lunar\.$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
A=$(arg a)
B=$(arg b)
CUT=$(arg cut)
IQN=iqn.2026-11.dev.lunar
ki() { echo "LUNAR-KI: $*"; }
cue() { echo "LUNAR-CUE: $*"; }
# now: seconds since boot, in hundredths.
now() { awk '{ printf "%d", $1 * 100 }' /proc/uptime; }

# Network: user-mode networking, static address.
ip link set lo up
ip link set eth0 up || fail "no eth0"
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2

# open-iscsi: its configuration, databases, and iscsid.
mkdir -p /etc/iscsi /run/lock/iscsi /var/lib/iscsi /var/lock
# iscsid answers only root (it looks the peer's uid up).
echo "root:x:0:0:root:/root:/bin/sh" > /etc/passwd
echo "root:x:0:" > /etc/group
echo "InitiatorName=$IQN:guest" > /etc/iscsi/initiatorname.iscsi
cat > /etc/iscsi/iscsid.conf <<'EOF'
node.startup = manual
node.session.timeo.replacement_timeout = 120
node.conn[0].timeo.login_timeout = 15
node.conn[0].timeo.noop_out_interval = 5
node.conn[0].timeo.noop_out_timeout = 5
node.session.initial_login_retry_max = 4
node.session.cmds_max = 128
node.session.queue_depth = 32
node.session.iscsi.InitialR2T = No
node.session.iscsi.ImmediateData = Yes
node.session.iscsi.FirstBurstLength = 262144
node.session.iscsi.MaxBurstLength = 16776192
node.conn[0].iscsi.MaxRecvDataSegmentLength = 262144
node.conn[0].iscsi.HeaderDigest = None
node.conn[0].iscsi.DataDigest = None
EOF
# In the foreground (-f), its log in /tmp/iscsid.log (shown on failure).
iscsid -f > /tmp/iscsid.log 2>&1 &
sleep 1
kill -0 $! || fail "iscsid did not start: $(cat /tmp/iscsid.log)"
ki "iscsid $(iscsiadm --version 2>&1)"

# The sysfs directory of LUN $2 of the session with target $1.
lun_of() {
    for s in /sys/class/iscsi_session/session*; do
        [ "$(cat "$s/targetname" 2>/dev/null)" = "$1" ] || continue
        for d in "$s"/device/target*/*:*:*:"$2"; do
            [ -e "$d" ] && echo "$d" && return 0
        done
    done
    return 1
}
disk() { ls "$(lun_of "$1" "$2")/block" 2>/dev/null; }
sgdev() { ls "$(lun_of "$1" "$2")/scsi_generic" 2>/dev/null; }
has() { [ -n "$(disk "$1" "$2")" ] && [ -b "/dev/$(disk "$1" "$2")" ]; }
sectors() { cat "/sys/block/$(disk "$1" "$2")/size" 2>/dev/null; }
node() { # node TARGET ARGS...: iscsiadm on the node record of TARGET at portal A
    node_t=$1
    shift
    iscsiadm -m node -T "$node_t" -p "$A" "$@"
}
set_node() { # set_node TARGET KEY VALUE
    node "$1" -o update -n "$2" -v "$3" >/dev/null
}
login() { # login TARGET: rc of iscsiadm --login (output to /tmp/login)
    node "$1" --login > /tmp/login 2>&1
}
logout() {
    node "$1" --logout > /tmp/logout 2>&1
}
digests() { # the digests in force on the session of TARGET: "HEADER DATA"
    iscsiadm -m session -P 2 2>/dev/null | awk -v t="$1" '
        /^Target: / { on = ($2 == t) }
        on && /HeaderDigest:/ { h = $2 }
        on && /DataDigest:/ { d = $2 }
        END { print h, d }'
}
# Prints a command's output, each line tagged "LUNAR-SG L<lun> <tag>: ".
show() {
    lun=$1 tag=$2
    shift 2
    "$@" > /tmp/out 2>&1
    rc=$?
    sed "s/^/LUNAR-SG L$lun $tag: /" /tmp/out
    echo "LUNAR-SG L$lun $tag: rc=$rc"
}
# verify_io DEV MIB: writes MIB MiB of random data with O_DIRECT, reads it
# back, "ok" if it compares.
verify_io() {
    dd if=/dev/urandom of=/tmp/v bs=1M count="$2" 2>/dev/null
    dd if=/tmp/v of="$1" bs=1M oflag=direct 2>/tmp/err || { echo "write failed: $(cat /tmp/err)"; return; }
    dd if="$1" of=/tmp/w bs=1M count="$2" iflag=direct 2>/tmp/err || { echo "read failed: $(cat /tmp/err)"; return; }
    [ "$(sha /tmp/v)" = "$(sha /tmp/w)" ] && echo ok || echo "data differ"
    rm -f /tmp/v /tmp/w
}

T0=$IQN:kinit-open
TC=$IQN:kinit-chap
TM=$IQN:kinit-mutual
TR=$IQN:kinit-recover
TS=$IQN:kinit-slow

# Steps 12 and 13, recovery: an O_DIRECT write loop on kinit-recover (a file LUN) at
# portal PORTAL while the host disturbs it, until the host writes STOP in
# the image's last 4 KiB block. Each chunk of 256 KiB is four concurrent
# 64 KiB writes (no scheduler, no merges: one SCSI WRITE each). Then every
# chunk written is read back and compared. Lines "LUNAR-KI: NAME ..."; the
# host's cue is "LUNAR-CUE: NAME".
wloop() { # wloop NAME PORTAL
    wl_name=$1 wl_portal=$2
    iscsiadm -m node -T "$TR" -p "$wl_portal" > /dev/null 2>&1 ||
        iscsiadm -m node -o new -T "$TR" -p "$wl_portal" > /dev/null
    iscsiadm -m node -T "$TR" -p "$wl_portal" --login > /tmp/login 2>&1
    ki "$wl_name login rc=$?"
    wait_until 200 has "$TR" 0 || fail "$wl_name: no disk for kinit-recover: $(cat /tmp/login)"
    name=$(disk "$TR" 0)
    d=/dev/$name
    echo none > "/sys/block/$name/queue/scheduler" 2>/dev/null
    echo 2 > "/sys/block/$name/queue/nomerges"
    last=$(($(sectors "$TR" 0) / 8 - 1))
    max=$(((last * 4096) / 262144 - 1))
    # A STOP left by an earlier loop goes first.
    dd if=/dev/zero of="$d" bs=4096 seek="$last" count=1 oflag=direct 2>/dev/null
    stop() { [ "$(dd if="$d" bs=4096 skip="$last" count=1 iflag=direct 2>/dev/null | head -c 4)" = STOP ]; }
    head -c 262144 /base.bin > /tmp/base
    pattern() { (echo "$wl_name chunk $1"; cat /tmp/base) | head -c 262144 > "$2"; }
    errors=0
    stall=0
    i=0
    t0=$(now)
    dmesg -c > /dev/null
    cue "$wl_name"
    while [ $i -lt $max ]; do
        if [ $((i % 4)) -eq 0 ] && stop; then
            break
        fi
        pattern $i /tmp/chunk
        t=$(now)
        pids=
        for q in 0 1 2 3; do
            dd if=/tmp/chunk of="$d" bs=64k skip=$q seek=$((i * 4 + q)) count=1 oflag=direct 2>/tmp/err$q &
            pids="$pids $!"
        done
        for p in $pids; do
            wait "$p" || errors=$((errors + 1))
        done
        took=$(($(now) - t))
        [ "$took" -gt "$stall" ] && stall=$took
        echo "LUNAR-KI: $wl_name wrote chunk $i in $((took * 10)) ms"
        i=$((i + 1))
    done
    chunks=$i
    ki "$wl_name loop: $chunks chunks in $(( ($(now) - t0) / 100 )) s, longest chunk $((stall * 10)) ms, write errors $errors"
    bad=0
    i=0
    while [ $i -lt "$chunks" ]; do
        pattern $i /tmp/chunk
        if ! dd if="$d" of=/tmp/back bs=256k skip=$i count=1 iflag=direct 2>/tmp/err ||
            [ "$(sha /tmp/back)" != "$(sha /tmp/chunk)" ]; then
            bad=$((bad + 1))
        fi
        i=$((i + 1))
    done
    ki "$wl_name verify: $chunks chunks, $bad bad"
    # The connection errors of this session (connectionN:0, N its session's number).
    sid=$(for x in /sys/class/iscsi_session/session*; do
        [ "$(cat "$x/targetname")" = "$TR" ] && basename "$x"; done | sed 's/session//')
    ki "$wl_name conn errors $(dmesg | grep -c "connection$sid:0: detected conn error") io errors $(dmesg | grep -ci "I/O error")"
    iscsiadm -m node -T "$TR" -p "$wl_portal" --logout > /tmp/logout 2>&1
    ki "$wl_name logout rc=$?"
    wait_until 100 gone_tr
}
gone_tr() { ! lun_of "$TR" 0; }

# Step 11: a slow backend drives the kernel's SCSI error handler: the host
# slows kinit-slow's LUN (fault=on; lunarctl lun fault) down far beyond
# the disk's command timeout (3 s here) while four 64 KiB O_DIRECT writes
# are in flight. They time out and the error handler aborts them (ABORT
# TASK); the host removes the delay once lunard has received it, and lunard
# answers it as soon as the write has ended. The error handler's next steps
# go through the same kernel handlers when asked from user space: with the
# LUN slowed down again and four writes in flight, an LU reset (sg_reset
# -d: iscsi_eh_device_reset), then a target reset (sg_reset -t:
# iscsi_eh_recover_target); the host removes the delay once lunard has
# each. Every write must complete without an error and read back. (With
# an abort timeout shorter than the backend's delay, the initiator drops
# the connection instead and the LU reset it tries next finds no session:
# see docs/conformance.md.)
slow_writes() { # slow_writes FIRST: four 64 KiB writes at 64 KiB blocks FIRST..FIRST+3
    sw_pids=
    for q in 0 1 2 3; do
        dd if=/tmp/slow of="$d" bs=64k skip=$q seek=$(($1 + q)) count=1 oflag=direct 2>/tmp/err$q &
        sw_pids="$sw_pids $!"
    done
}
slow_wait() { # sw_errors: the number of writes of slow_writes that failed
    sw_errors=0
    for p in $sw_pids; do
        wait "$p" || sw_errors=$((sw_errors + 1))
    done
}
slow_step() {
    set_node "$TS" node.session.err_timeo.abort_timeout 15
    set_node "$TS" node.session.err_timeo.lu_reset_timeout 15
    set_node "$TS" node.session.err_timeo.tgt_reset_timeout 15
    login "$TS"
    ki "slow login rc=$?"
    wait_until 200 has "$TS" 0 || fail "no disk for kinit-slow: $(cat /tmp/login)"
    name=$(disk "$TS" 0)
    d=/dev/$name
    echo none > "/sys/block/$name/queue/scheduler" 2>/dev/null
    echo 2 > "/sys/block/$name/queue/nomerges"
    echo 3 > "/sys/block/$name/device/timeout"
    ki "slow command timeout $(cat "/sys/block/$name/device/timeout") s"
    head -c 262144 /base.bin > /tmp/slow
    dmesg -c > /dev/null
    first=0
    for phase in abort lu target; do
        cue "slow-$phase"
        # The host sets the delay within 0.2 s of the cue.
        sleep 1
        t=$(now)
        slow_writes $first
        case $phase in
            lu) sleep 1; sg_reset -d "/dev/$(sgdev "$TS" 0)" > /tmp/sgreset 2>&1; ki "slow $phase sg_reset rc=$?" ;;
            target) sleep 1; sg_reset -t "/dev/$(sgdev "$TS" 0)" > /tmp/sgreset 2>&1; ki "slow $phase sg_reset rc=$?" ;;
        esac
        slow_wait
        ki "slow $phase writes: 4 in $(( ($(now) - t) * 10 )) ms, errors $sw_errors"
        first=$((first + 4))
    done
    ok=0
    for first in 0 4 8; do
        dd if="$d" of=/tmp/back bs=64k skip=$first count=4 iflag=direct 2>/dev/null
        [ "$(sha /tmp/back)" = "$(sha /tmp/slow)" ] && ok=$((ok + 1))
    done
    if [ $ok = 3 ]; then ki "slow verify ok"; else ki "slow verify: $ok of 3 read back"; fi
    ki "slow kernel log: conn errors $(dmesg | grep -c "detected conn error") io errors $(dmesg | grep -ci "I/O error") offline $(dmesg | grep -ci "offlin")"
    dmesg | grep -i "iscsi\|connection\|session\|abort\|reset\|sd [0-9]" | tail -20 | sed 's/^/LUNAR-KI: slow dmesg: /'
    ki "slow device state $(cat "/sys/block/$name/device/state")"
    logout "$TS"
    ki "slow logout rc=$?"
}

# Only some steps (lunar.only=slow,cut on the kernel command line; for
# working on them): discovery first, then those.
only=$(arg only)
if [ -n "$only" ]; then
    iscsiadm -m discovery -t st -p "$A" > /tmp/disc 2>&1
    for s in $(echo "$only" | tr , ' '); do
        case $s in
            slow) slow_step ;;
            cut) wloop cut "$CUT" ;;
            recovery) wloop recovery "$A" ;;
        esac
    done
    result "PASS only $only"
fi
# 1. SendTargets discovery on A (no discovery CHAP): every record as
# advertised, then its portal reachable (the records are what logins use).
iscsiadm -m discovery -t st -p "$A" > /tmp/disc 2>&1
rc=$?
ki "discovery A rc=$rc"
[ $rc = 0 ] || tail -20 /tmp/iscsid.log | sed 's/^/LUNAR-KI: iscsid: /'
sed 's/^/LUNAR-KI: discovered A: /' /tmp/disc

# 2. Discovery on B: CHAP required; refused without it and with a wrong
# secret.
disc_b() { # disc_b AUTHMETHOD [USER SECRET]: rc of a discovery on B
    iscsiadm -m discoverydb -t st -p "$B" -o new > /dev/null 2>&1
    iscsiadm -m discoverydb -t st -p "$B" -o update -n discovery.sendtargets.auth.authmethod -v "$1" > /dev/null
    if [ $# -eq 3 ]; then
        iscsiadm -m discoverydb -t st -p "$B" -o update -n discovery.sendtargets.auth.username -v "$2" > /dev/null
        iscsiadm -m discoverydb -t st -p "$B" -o update -n discovery.sendtargets.auth.password -v "$3" > /dev/null
    fi
    iscsiadm -m discoverydb -t st -p "$B" --discover > /tmp/discb 2>&1
}
disc_b None
ki "discovery B without CHAP rc=$?"
disc_b CHAP bob wrong-discovery-secret
ki "discovery B wrong CHAP secret rc=$?"
disc_b CHAP bob discovery-secret-1
ki "discovery B CHAP rc=$?"
sed 's/^/LUNAR-KI: discovered B: /' /tmp/discb

# 3. Login to the discovered record of kinit-open (no digests): two LUNs.
t=$(now)
login "$T0"
ki "login open rc=$? in $(( ($(now) - t) * 10 )) ms"
if ! wait_until 200 has "$T0" 0 || ! wait_until 100 has "$T0" 1; then
    fail "no disks for LUNs 0 and 1: $(cat /tmp/login)"
fi
ki "open LUNs $(disk "$T0" 0) $(sectors "$T0" 0) $(disk "$T0" 1) $(sectors "$T0" 1)"
ki "digests open: $(digests "$T0")"
# What iscsiadm -m session -P 3 shows of the session, for the host to
# check. (iscsi_tcp keeps no targetalias in sysfs: the host checks the
# TargetAlias in the Login Responses its relay saw.)
iscsiadm -m session -P 3 > /tmp/p3 2>&1
ki "session -P 3 rc=$?"
sed 's/^/LUNAR-P3: /' /tmp/p3

# 4. Identity: sg3-utils through SG_IO, for the host to compare with libiscsi.
for lun in 0 1; do
    sg=/dev/$(sgdev "$T0" $lun)
    show "$lun" inq sg_inq "$sg"
    show "$lun" sn sg_vpd -p sn "$sg"
    show "$lun" di sg_vpd -p di "$sg"
    show "$lun" readcap sg_readcap -l "$sg"
    show "$lun" luns sg_luns "$sg"
done

# 5. ext4 on LUN 0: 256 MiB written through the file system, read back
# after a remount (the host knows the checksum of the stream), fsck clean.
d0=/dev/$(disk "$T0" 0)
big() {
    i=0
    while [ $i -lt 64 ]; do
        printf '%08d' $i
        cat /base.bin
        i=$((i + 1))
    done
}
t=$(now)
mkfs.ext4 -q -F "$d0" > /tmp/mkfs 2>&1
ki "mkfs rc=$? in $(( ($(now) - t) / 100 )) s"
mkdir -p /mnt
mount -t ext4 "$d0" /mnt || fail "mount: $(dmesg | tail -3)"
t=$(now)
big > /mnt/big && sync
ki "write 256 MiB rc=$? in $(( ($(now) - t) / 100 )) s"
umount /mnt || fail "umount"
mount -t ext4 "$d0" /mnt || fail "mount again"
t=$(now)
ki "read sha256 $(sha /mnt/big) size $(wc -c < /mnt/big) in $(( ($(now) - t) / 100 )) s"
umount /mnt
e2fsck -fn "$d0" > /tmp/fsck 2>&1
ki "fsck rc=$?"
tail -2 /tmp/fsck | sed 's/^/LUNAR-KI: fsck: /'

# 6. Hot add (the host runs lunarctl lun add) and resize (lun resize),
# seen after iscsiadm -m session --rescan.
rescan_until() { # rescan_until TRIES COMMAND...: rescans until COMMAND holds
    n=$1
    shift
    while [ "$n" -gt 0 ]; do
        iscsiadm -m session --rescan > /dev/null 2>&1
        sleep 1
        "$@" && return 0
        n=$((n - 1))
    done
    return 1
}
cue add
rescan_until 30 has "$T0" 2
ki "hot-added LUN 2 $(disk "$T0" 2) $(sectors "$T0" 2)"
[ -n "$(disk "$T0" 2)" ] && ki "LUN 2 I/O $(verify_io "/dev/$(disk "$T0" 2)" 4)"
before=$(sectors "$T0" 1)
cue resize
grown() { [ "$(sectors "$T0" 1)" != "$before" ]; }
rescan_until 30 grown
ki "resized LUN 1 from $before to $(sectors "$T0" 1)"
ki "LUN 1 I/O after resize $(verify_io "/dev/$(disk "$T0" 1)" 4)"

# 7. Logout, then login again: the file system is still there.
logout "$T0"
ki "logout open rc=$?"
gone() { ! lun_of "$T0" 0; }
wait_until 100 gone && ki "open LUNs gone after logout"
login "$T0"
ki "relogin open rc=$?"
wait_until 200 has "$T0" 0 || fail "no LUN 0 after the second login"
e2fsck -fn "/dev/$(disk "$T0" 0)" > /tmp/fsck 2>&1
ki "fsck after relogin rc=$?"
logout "$T0"

# 8. CRC32C header and data digests.
set_node "$T0" node.conn[0].iscsi.HeaderDigest CRC32C
set_node "$T0" node.conn[0].iscsi.DataDigest CRC32C
login "$T0"
ki "login open with digests rc=$?"
wait_until 200 has "$T0" 1 || fail "no LUN 1 with digests"
ki "digests open: $(digests "$T0")"
ki "digest I/O $(verify_io "/dev/$(disk "$T0" 1)" 16)"
logout "$T0"

# 9. One-way CHAP: the right secret, a wrong one, none.
set_node "$TC" node.session.auth.authmethod CHAP
set_node "$TC" node.session.auth.username alice
set_node "$TC" node.session.auth.password wrong-secret-xyz
login "$TC"
ki "chap wrong secret rc=$?"
set_node "$TC" node.session.auth.authmethod None
login "$TC"
ki "chap no secret rc=$?"
set_node "$TC" node.session.auth.authmethod CHAP
set_node "$TC" node.session.auth.password correct-horse-battery
login "$TC"
ki "chap rc=$?"
wait_until 200 has "$TC" 0 && ki "chap I/O $(verify_io "/dev/$(disk "$TC" 0)" 4)"
logout "$TC"

# 10. Mutual CHAP: both right; the target's secret wrong (the initiator
# must refuse the target); the initiator's secret wrong.
set_node "$TM" node.session.auth.authmethod CHAP
set_node "$TM" node.session.auth.username carol
set_node "$TM" node.session.auth.password carol-secret-123
set_node "$TM" node.session.auth.username_in target-m
set_node "$TM" node.session.auth.password_in not-the-target-secret
login "$TM"
ki "mutual wrong target secret rc=$?"
set_node "$TM" node.session.auth.password_in target-secret-456
set_node "$TM" node.session.auth.password carol-wrong-secret
login "$TM"
ki "mutual wrong initiator secret rc=$?"
set_node "$TM" node.session.auth.password carol-secret-123
login "$TM"
ki "mutual rc=$?"
wait_until 200 has "$TM" 0 && ki "mutual I/O $(verify_io "/dev/$(disk "$TM" 0)" 4)"
logout "$TM"

# 11. The slow backend (slow_step above).
slow_step

# 12. Connections cut mid-PDU: the same loop through the host's relay
# (lunar.cut= on the kernel command line), which cuts the connection after
# a random number of bytes, several times.
wloop cut "$CUT"

# 13. lunard killed (SIGKILL) and started again, the session killed
# (lunarctl session kill): the loop at portal A.
wloop recovery "$A"
result "PASS guest steps done"
