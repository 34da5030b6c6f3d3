#!/bin/sh
# Guest init for tests/vm/vhost-reconnect.sh: an O_DIRECT write loop over
# LUN 0 while the host kills lunard (SIGKILL) twice and starts it again on
# the same socket and image. Each chunk of 256 KiB is written as four
# concurrent 64 KiB O_DIRECT writes (one SCSI WRITE each: no scheduler, no
# merges), so up to four commands are in flight at once.
#
#  1. held kill: before chunk $HOLD the guest prints "LUNAR-RECONNECT: hold"
#     and waits 3 s; the host pauses LUN 0 (`lunarctl stop --lun 0`), waits
#     until lunard holds the four writes of chunk $HOLD, and kills it. The
#     new lunard must submit them again (once each) from the inflight region;
#  2. free kill: before chunk $FREE the guest prints "LUNAR-RECONNECT: kill"
#     and waits until it reads "GO" in the last 4 KiB of the disk (reads
#     only: the host counts the writes lunard served so far), then writes
#     without pause; the host writes "GO" into the image, waits a moment and
#     kills lunard wherever it is.
#
# Then every chunk is read back and compared. The result line
# "LUNAR-VM-RESULT: PASS|FAIL ..." (also FAIL on an I/O error, a command
# timeout, an abort or a reset in the kernel log) comes last, then power off.
# Every wait is bounded.
# shellcheck source-path=SCRIPTDIR source=guest-lib.sh
. /guest-lib.sh
result_dmesg="error\|abort\|reset\|timing out\|offline\|virtio_scsi\|not a head"

wait_until 600 has_disk 0 || fail "no disk for LUN 0"
name=$(disk_of 0)
d=/dev/$name
# One SCSI command per dd: no I/O scheduler, no merging of neighbours.
echo none > "/sys/block/$name/queue/scheduler" 2>/dev/null
echo 2 > "/sys/block/$name/queue/nomerges" || fail "cannot disable merges"
say "disk $d scheduler $(cat "/sys/block/$name/queue/scheduler") nomerges $(cat "/sys/block/$name/queue/nomerges")"

chunks=48
hold=4
free=24
# The host's cue for the free kill: "GO" in the last 4 KiB block (never
# written by the loop: the loop covers the first 12 MiB).
last=$(($(cat "/sys/block/$name/size") / 8 - 1))
go() { [ "$(dd if="$d" bs=4096 skip=$last count=1 iflag=direct 2>/dev/null | head -c 2)" = GO ]; }
go && fail "GO already on the disk"

# 48 chunks of 256 KiB, each a distinct pattern (chunk number in it).
dd if=/dev/urandom of=/tmp/base bs=256k count=1 2>/dev/null || fail "urandom"
pattern() { (echo "chunk $1"; cat /tmp/base) | head -c 262144 > "$2"; }
t0=$(date +%s)
i=0
while [ $i -lt $chunks ]; do
    if [ $i -eq $hold ]; then
        echo "LUNAR-RECONNECT: hold $i"
        sleep 3
    fi
    if [ $i -eq $free ]; then
        echo "LUNAR-RECONNECT: kill $i"
        n=300
        until go; do
            n=$((n - 1))
            [ $n -le 0 ] && fail "no GO from the host"
            sleep 0.2
        done
    fi
    pattern $i /tmp/chunk
    # Bounded by the host's time limit (QEMU is killed): virtio-scsi in
    # Linux never times a command out.
    pids=
    for q in 0 1 2 3; do
        dd if=/tmp/chunk of="$d" bs=64k skip=$q seek=$((i * 4 + q)) count=1 oflag=direct 2>/tmp/err$q &
        pids="$pids $!"
    done
    q=0
    for p in $pids; do
        wait "$p" || fail "write of chunk $i part $q: $(cat /tmp/err$q)"
        q=$((q + 1))
    done
    say "wrote chunk $i at $(($(date +%s) - t0)) s"
    i=$((i + 1))
done
i=0
while [ $i -lt $chunks ]; do
    pattern $i /tmp/chunk
    dd if="$d" of=/tmp/back bs=256k skip=$i count=1 iflag=direct 2>/tmp/err || fail "read of chunk $i: $(cat /tmp/err)"
    [ "$(sha /tmp/back)" = "$(sha /tmp/chunk)" ] || fail "chunk $i differs"
    i=$((i + 1))
done
say "data verified"
if dmesg | grep -qi "I/O error\|critical target error\|rejecting I/O\|offline device"; then
    fail "I/O errors in the kernel log"
fi
# A command the new lunard never answered hangs the loop (Linux's
# virtio-scsi re-arms its timer: the host's time limit fails the test);
# should a timeout, an abort or a reset show up anyway, it fails here, as
# does a used entry the driver did not expect.
if dmesg | grep -qi "timing out\|abort\|: device reset$\|is not a head\|id [0-9]* out of range"; then
    fail "command timeouts, aborts, resets or ring errors in the kernel log"
fi
result "PASS $chunks chunks in $(($(date +%s) - t0)) s"
