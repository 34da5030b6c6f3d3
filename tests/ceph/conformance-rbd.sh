#!/usr/bin/env bash
# libiscsi's conformance suite against an RBD LUN, through the same runner
# as the file LUN (scripts/conformance.sh: one test family per process,
# summed with shared/tools/cu-summary), for comparison with the `thin`
# file LUN of scripts/conformance-matrix.sh (1 GiB, thin).
#
#   LUNAR_CEPH_CONF=<ceph.conf> bash tests/ceph/conformance-rbd.sh [SHARED_DIR]
#
# Without LUNAR_CEPH_CONF a cluster is started for the run with
# tests/ceph/micro-cluster.sh. A fresh 1 GiB image `conformance-<pid>` in
# pool rbd is created and removed afterwards. Known failures:
# tests/conformance/known-failures-rbd.txt (fails on a failure it does not
# list, or on a listed test that passes). Results: target/conformance-rbd/.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
shared="${1:-$root/../shared}"
if [ -z "${LUNAR_CEPH_CONF:-}" ]; then
  exec "$root/tests/ceph/micro-cluster.sh" run -- bash "$0" "$shared"
fi
conf=$LUNAR_CEPH_CONF
image="conformance-$$"
out="$root/target/conformance-rbd"
mkdir -p "$out"
rbd -c "$conf" create --size 1G "rbd/$image"
trap 'rbd -c "$conf" rm --no-progress "rbd/$image" >/dev/null 2>&1 || true' EXIT
rm -f "$root/target/conformance/tests.txt"
status=0
KNOWN_FAILURES="$root/tests/conformance/known-failures-rbd.txt" \
  bash "$root/scripts/conformance.sh" "$shared" -- --lun "backend=rbd,pool=rbd,image=$image,conf=$conf" \
  | tee "$out/summary.txt" || status=$?
cp "$root/target/conformance/tests.txt" "$out/tests.txt" 2>/dev/null || true
cp "$root/target/conformance/lunard.err" "$out/lunard.err" 2>/dev/null || true
exit $status
