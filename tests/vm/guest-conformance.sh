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
#      and StartStopUnit families need a removable medium),
#      KEEP_LOGS (a directory: keep the serial console and lunard logs there)
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

tests=${1:-ALL}
guest_timeout=${GUEST_TIMEOUT:-3000}
out=${OUT:-$PWD/guest-conformance.log}
summary=${CU_SUMMARY:-$repo/../shared/tools/cu-summary}

vm_need iscsi-test-cu libiscsi-bin
vm_install
vm_build
vm_setup init-conformance.sh iscsi-test-cu
vm_start_lunard "$work/lunard.log" 2 --iothreads 2 --lun "${LUN:-backend=mem,size=128M,removable=on}"
vm_qemu 2 2 "lunar.tests=$tests"
vm_wait_guest
serial > "$out"
cp "$work/lunard.log" "${out%.log}.lunard.log"
echo "guest ran $(elapsed) s; console log: $out"
grep -a "LUNAR-VM" "$out" || true
sed -n '/^LUNAR-CU-BEGIN$/,/^LUNAR-CU-END$/p' "$out" | "$summary" --suites
grep -a "^LUNAR-CU-END" "$out" >/dev/null
