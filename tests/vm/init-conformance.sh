#!/bin/sh
# Guest init for tests/vm/guest-conformance.sh: waits for the Lunar disk
# (LUN 0), runs libiscsi's conformance suite against it through SG_IO
# (`iscsi-test-cu -d -v -t ALL /dev/sgN`; not -S: libiscsi 1.19's
# Sanitize.OverwriteReserved dereferences its iSCSI context, which a SG_IO
# device has not, and the suite dies of a segmentation fault), prints its output on the serial
# console between markers, then powers off.
# shellcheck source-path=SCRIPTDIR source=guest-lib.sh
. /guest-lib.sh
wait_until 600 sg_of 0 || fail "no disk"
sg=/dev/$(sg_of 0)
wait_until 100 test -c "$sg" || fail "no $sg"
tests=$(sed -n 's/.*lunar.tests=\([^ ]*\).*/\1/p' /proc/cmdline)
echo "LUNAR-VM: running iscsi-test-cu -d -v -t ${tests:-ALL} $sg"
t0=$(date +%s)
echo "LUNAR-CU-BEGIN"
iscsi-test-cu -d -v -t "${tests:-ALL}" "$sg" 2>&1
rc=$?
echo "LUNAR-CU-END"
result "DONE rc=$rc in $(($(date +%s) - t0)) s"
