#!/usr/bin/env bash
# libiscsi's conformance suite (iscsi-test-cu) against lunard, one test
# family per process (a family that leaves a broken hook behind cannot spoil
# the next one), summed with shared/tools/cu-summary.
#
#   bash scripts/conformance.sh [SHARED_DIR] [-- LUNARD_ARGS...]
#
# Raw logs go to target/conformance/; what is printed is cu-summary's table
# and closing line. Fails if a test fails that tests/conformance/known-failures.txt
# does not list (with its reason), or if that list names a test that passes.
# KNOWN_FAILURES names another list (one per configuration: see
# scripts/conformance-matrix.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
shared="${1:-$root/../shared}"
shift || true
[ "${1:-}" = "--" ] && shift
extra_args=("$@")
summary="$shared/tools/cu-summary"
out="$root/target/conformance"
mkdir -p "$out"
rm -f "$out"/*.log

command -v iscsi-test-cu >/dev/null || { echo "iscsi-test-cu missing (apt-get install libiscsi-bin)"; exit 1; }
cargo build --release -q -p lunard
lunard="$root/target/release/lunard"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port)
port2=$(free_port)
iqn=iqn.2026-11.dev.lunar:disk0
"$lunard" --listen "127.0.0.1:$port" --listen "127.0.0.1:$port2" --iothreads 2 "${extra_args[@]}" \
  >"$out/lunard.out" 2>"$out/lunard.err" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  iscsi-inq "iscsi://127.0.0.1:$port/$iqn/0" >/dev/null 2>&1 && break
  kill -0 $pid 2>/dev/null || { echo "lunard exited:"; cat "$out/lunard.err"; exit 1; }
  sleep 0.1
done
url="iscsi://127.0.0.1:$port/$iqn/0"
url2="iscsi://127.0.0.1:$port2/$iqn/0"

families=$(iscsi-test-cu --list | grep -E '^ALL\.[A-Za-z0-9_]+$')
start=$(date +%s)
for f in $families; do
  name=${f#ALL.}
  urls=("$url")
  [ "$name" = MultipathIO ] && urls=("$url" "$url2")
  timeout 300 iscsi-test-cu -d -S -v -t "$f" "${urls[@]}" >"$out/$name.log" 2>&1 || true
  kill -0 $pid 2>/dev/null || { echo "lunard died during $name:"; tail -20 "$out/lunard.err"; exit 1; }
done
cat "$out"/*.log > "$out/all.log"
echo "iscsi-test-cu: $(echo "$families" | wc -w) families in $(( $(date +%s) - start )) s (raw logs: $out)"
"$summary" --suites "$out/all.log" | sed '$d'
"$summary" --tests "$out/all.log" > "$out/tests.txt"
known="${KNOWN_FAILURES:-$root/tests/conformance/known-failures.txt}"
failed=$(awk '$1=="failed"{print $2}' "$out/tests.txt" | sort -u)
listed=$(grep -vE '^\s*(#|$)' "$known" 2>/dev/null | awk '{print $1}' | sort -u || true)
new=$(comm -23 <(echo "$failed" | sed '/^$/d') <(echo "$listed" | sed '/^$/d'))
fixed=$(comm -13 <(echo "$failed" | sed '/^$/d') <(echo "$listed" | sed '/^$/d'))
line=$(tail -n 1 "$out/tests.txt")
echo "conformance: $line"
status=0
if [ -n "$new" ]; then
  echo "FAILED, not in $known:"; echo "$new" | sed 's/^/  /'
  grep -E "^failed" "$out/tests.txt" | sed 's/^/  /' | head -40
  status=1
fi
if [ -n "$fixed" ]; then
  echo "Listed as known failures but passing now (remove them from $known):"; echo "$fixed" | sed 's/^/  /'
  status=1
fi
exit $status
