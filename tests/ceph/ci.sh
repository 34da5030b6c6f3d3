#!/usr/bin/env bash
# The Ceph step of scripts/test-all.sh: a single-node cluster for the
# duration of the step (tests/ceph/micro-cluster.sh run), then, against it,
# the rbd backend's tests (faults among them: an OSD frozen under I/O, a
# pool over its quota), lunard's end-to-end RBD tests, the verified stress
# test on RBD LUNs, persistent reservations shared by gateways (the race
# test among them), iscsi-test-cu against an RBD LUN and its reservation and
# MultipathIO families across two gateways. With
# LUNAR_REQUIRE_CEPH=1 a test that finds no cluster fails instead of skipping.
#
#   bash tests/ceph/ci.sh [SHARED_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
shared="${1:-$root/../shared}"
if [ -z "${LUNAR_CEPH_CONF:-}" ]; then
  exec "$root/tests/ceph/micro-cluster.sh" run -- bash "$0" "$shared"
fi
export LUNAR_REQUIRE_CEPH=1
start=$(date +%s)
echo "-- cargo test -p lunar-block --lib rbd, --test rbd_backend (cluster: $LUNAR_CEPH_CONF)"
cargo test -q -p lunar-block --lib rbd 2>&1 | grep -E '^(test result|.*FAILED|.*panicked|error)'
cargo test -q -p lunar-block --test rbd_backend 2>&1 | grep -E '^(test result|.*FAILED|.*panicked|error)'
echo "-- cargo test -p lunard --test rbd"
cargo test -q -p lunard --test rbd 2>&1 | grep -E '^(test result|.*FAILED|.*panicked|error)'
echo "-- cargo test -p lunar-core --test cluster_pr, -p lunard --test rbd_cluster_pr (reservations shared by gateways)"
cargo test -q -p lunar-core --test cluster_pr -- --nocapture 2>&1 | grep -E '^(test result|.*PR OUT|.*FAILED|.*panicked|error)'
cargo test -q -p lunard --test rbd_cluster_pr 2>&1 | grep -E '^(test result|.*FAILED|.*panicked|error)'
echo "-- cargo test -p lunar-tests --test stress stress_on_rbd_luns"
cargo test -q -p lunar-tests --test stress stress_on_rbd_luns -- --nocapture 2>&1 | grep -E '^(test result|stress:|.*FAILED|.*panicked|error)'
echo "-- iscsi-test-cu against an RBD LUN"
bash "$root/tests/ceph/conformance-rbd.sh" "$shared"
echo "-- iscsi-test-cu's reservation and MultipathIO families across two gateways (alua=all-active), against one lunard"
bash "$root/tests/ceph/conformance-gateways.sh" "$shared"
echo "ceph step: $(( $(date +%s) - start )) s with the cluster up"
