#!/usr/bin/env bash
# libiscsi's persistent-reservation, RESERVE(6) and MultipathIO families
# across two gateways of one RBD image (issue 16), against the same
# families on a single lunard serving that image:
#
#   single: one lunard, the rbd LUN with pr=cluster, two portals (the
#           families that take a second path get the second portal; the
#           others clone a session with a second initiator name)
#   two gateways: gw1 and gw2 (one [[gateway]] list, pr=cluster); gw1
#           started first owns the image (ALUA Active/Optimized), gw2 is
#           Standby; iscsi-test-cu gets gw1's URL, then gw2's (its second
#           session, sd2, is then the one to gw2)
#
#   LUNAR_CEPH_CONF=<ceph.conf> bash tests/ceph/conformance-gateways.sh [SHARED_DIR]
#
# Without LUNAR_CEPH_CONF a cluster is started for the run. One family per
# process, summed with shared/tools/cu-summary; raw logs and per-test
# results in target/conformance-gateways/{single,gateways}/. Fails if a
# test fails across the gateways that tests/conformance/known-failures-gateways.txt
# does not list (with its reason), or if the list names a test that passes;
# prints which tests fail across the gateways but not on the single lunard.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
shared="${1:-$root/../shared}"
if [ -z "${LUNAR_CEPH_CONF:-}" ]; then
  exec "$root/tests/ceph/micro-cluster.sh" run -- bash "$0" "$shared"
fi
conf=$LUNAR_CEPH_CONF
summary="$shared/tools/cu-summary"
out="$root/target/conformance-gateways"
rm -rf "$out"
mkdir -p "$out/single" "$out/gateways"
command -v iscsi-test-cu >/dev/null || { echo "iscsi-test-cu missing (apt-get install libiscsi-bin)"; exit 1; }
cargo build --release -q -p lunard --bins
lunard="$root/target/release/lunard"
iqn=iqn.2026-11.dev.lunar:disk0
families=(PrinReadKeys PrinServiceactionRange PrinReportCapabilities ProutRegister ProutReserve ProutClear
  ProutPreempt Reserve6 MultipathIO)

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pids=()
images=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  for i in "${images[@]}"; do rbd -c "$conf" rm --no-progress "rbd/$i" >/dev/null 2>&1 || true; done
}
trap cleanup EXIT
new_image() {
  local name="conformance-gw-$$-$1"
  rbd -c "$conf" create --size 1G "rbd/$name"
  images+=("$name")
  echo "$name"
}
wait_up() { # wait_up URL PID LOG
  for _ in $(seq 200); do
    iscsi-inq "$1" >"$out/inq.txt" 2>&1 && return 0
    kill -0 "$2" 2>/dev/null || { echo "lunard exited:"; cat "$3"; exit 1; }
    sleep 0.1
  done
  echo "lunard did not answer at $1: $(cat "$out/inq.txt")"; tail -5 "$3"; exit 1
}
# run_families DIR URL...: each family in its own iscsi-test-cu.
run_families() {
  local dir=$1
  shift
  for f in "${families[@]}"; do
    timeout 300 iscsi-test-cu -d -S -v -t "ALL.$f" "$@" >"$dir/$f.log" 2>&1 || true
  done
  cat "$dir"/*.log >"$dir/all.log"
  "$summary" --tests "$dir/all.log" >"$dir/tests.txt"
}

# Single lunard.
image=$(new_image single)
p1=$(free_port) p2=$(free_port)
"$lunard" --listen "127.0.0.1:$p1" --listen "127.0.0.1:$p2" --target "$iqn" \
  --lun "backend=rbd,pool=rbd,image=$image,conf=$conf,pr=cluster" --control "$out/single/lunard.sock" >"$out/single/lunard.out" 2>"$out/single/lunard.err" &
pids+=($!)
wait_up "iscsi://127.0.0.1:$p1/$iqn/0" "${pids[-1]}" "$out/single/lunard.err"
run_families "$out/single" "iscsi://127.0.0.1:$p1/$iqn/0" "iscsi://127.0.0.1:$p2/$iqn/0"
kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true
echo "single lunard:  $(tail -1 "$out/single/tests.txt")"

# Two gateways.
image=$(new_image gateways)
g1=$(free_port) g2=$(free_port)
for g in 1 2; do
  cat >"$out/gateways/gw$g.toml" <<EOF
listen = ["127.0.0.1:$([ $g = 1 ] && echo "$g1" || echo "$g2")"]
local-gateway = "gw$g"

[[gateway]]
name = "gw1"
portal = "127.0.0.1:$g1"

[[gateway]]
name = "gw2"
portal = "127.0.0.1:$g2"

[[target]]
name = "$iqn"

[[target.lun]]
spec = "backend=rbd,pool=rbd,image=$image,conf=$conf,pr=cluster,alua=all-active"
EOF
  "$lunard" --config "$out/gateways/gw$g.toml" --control "$out/gateways/gw$g.sock" >"$out/gateways/gw$g.out" 2>"$out/gateways/gw$g.err" &
  pids+=($!)
  wait_up "iscsi://127.0.0.1:$([ $g = 1 ] && echo "$g1" || echo "$g2")/$iqn/0" "${pids[-1]}" "$out/gateways/gw$g.err"
done
run_families "$out/gateways" "iscsi://127.0.0.1:$g1/$iqn/0" "iscsi://127.0.0.1:$g2/$iqn/0"
echo "two gateways:   $(tail -1 "$out/gateways/tests.txt")"
"$summary" --suites "$out/gateways/all.log" | sed '$d'

failed_in() { awk '$1=="failed"{print $2}' "$1/tests.txt" | sort -u; }
only=$(comm -13 <(failed_in "$out/single") <(failed_in "$out/gateways"))
echo "failing across the gateways, not on the single lunard: $(echo "$only" | grep -c . || true)"
for t in $only; do echo "  $t"; done
known="$root/tests/conformance/known-failures-gateways.txt"
listed=$(grep -vE '^\s*(#|$)' "$known" 2>/dev/null | awk '{print $1}' | sort -u || true)
status=0
for t in $(failed_in "$out/gateways"); do
  echo "$listed" | grep -qx "$t" || { echo "FAIL: $t fails across the gateways and is not in $known"; status=1; }
done
for t in $listed; do
  failed_in "$out/gateways" | grep -qx "$t" || { echo "FAIL: $t is listed in $known but did not fail"; status=1; }
done
exit $status
