#!/usr/bin/env bash
# Benchmark (not a test, not in CI): gateways of RBD images, two initiators,
# aggregate IOPS, measured side by side in one run (issue 16):
#
#   one-gw       one gateway serves the image; both initiators log in to it
#   all-active   two gateways serve the image with alua=all-active; each
#                initiator logs in to its own gateway (reads are served by
#                both; writes hand the image's lock from one to the other)
#   owner        two gateways, alua=owner (the default): the image's owner
#                serves both initiators (the standby gateway refuses media
#                access), so this is one-gw with a standby beside it
#   two-images   two images, two gateways, alua=owner, each gateway owning
#                one image (`lunarctl alua set`); each initiator uses its
#                image's owner: what active/passive per image scales to
#   two-images-one-gw  the same two images, both owned by one gateway
#
# 4 KiB random reads and writes, QD16 per initiator (crates/initiator's
# iscsi-load example: two processes at once), for SECONDS each; ROUNDS
# rounds in an order that rotates (both images rewritten whole before each
# run: see refill); prints the median aggregate IOPS of each
# configuration, its spread, and its ratio to one-gw (for two-images: to
# two-images-one-gw).
#
#   bash bench/gateways.sh [SECONDS_PER_RUN] [ROUNDS]
#
# Without LUNAR_CEPH_CONF it starts a single-node cluster for the run
# (tests/ceph/micro-cluster.sh run). Everything shares this machine's cores:
# a configuration with two gateways does not get more CPU than one.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
if [ -z "${LUNAR_CEPH_CONF:-}" ]; then
  exec "$root/tests/ceph/micro-cluster.sh" run -- bash "$0" "$@"
fi
secs=${1:-10}
rounds=${2:-3}
conf=$LUNAR_CEPH_CONF
cargo build --release -q -p lunard -p lunar-initiator --bins --example iscsi-load
bin=${CARGO_TARGET_DIR:-$root/target}/release
iqn=iqn.2026-11.dev.lunar:bench
work=$(mktemp -d)
pids=()
images=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  for i in "${images[@]}"; do rbd -c "$conf" rm --no-progress "rbd/$i" >/dev/null 2>&1 || true; done
  rm -rf "$work"
}
# shellcheck disable=SC2317 # (run by the trap)
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
for i in a b; do
  rbd -c "$conf" create --size 256M "rbd/gwbench-$$-$i"
  images+=("gwbench-$$-$i")
done
img_a=${images[0]} img_b=${images[1]}

# gateways MODE LUNSPEC...: starts gw1 and gw2 (one [[gateway]] list) with
# one LUN per LUNSPEC's image (LUN 0, 1, ...); sets ports p1, p2.
gateways() {
  local mode=$1 g l
  shift
  p1=$(free_port) p2=$(free_port)
  for g in 1 2; do
    {
      echo "listen = [\"127.0.0.1:$([ $g = 1 ] && echo "$p1" || echo "$p2")\"]"
      echo "local-gateway = \"gw$g\""
      echo "iothreads = 1"
      printf '[[gateway]]\nname = "gw1"\nportal = "127.0.0.1:%s"\n[[gateway]]\nname = "gw2"\nportal = "127.0.0.1:%s"\n' "$p1" "$p2"
      printf '[[target]]\nname = "%s"\n' "$iqn"
      for l in "$@"; do
        printf '[[target.lun]]\nspec = "backend=rbd,pool=rbd,image=%s,conf=%s,pr=cluster,alua=%s"\n' "$l" "$conf" "$mode"
      done
    } > "$work/gw$g.toml"
    "$bin/lunard" --config "$work/gw$g.toml" --control "$work/gw$g.sock" > "$work/gw$g.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 100); do [ -S "$work/gw$g.sock" ] && break; sleep 0.1; done
    [ -S "$work/gw$g.sock" ] || { cat "$work/gw$g.log"; echo "gateway $g did not start"; exit 1; }
    # gw1 first: it takes the locks of alua=owner LUNs.
    sleep 0.5
  done
}
stop_gateways() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  pids=()
}
# load RW ADDR1 LUN1 ADDR2 LUN2: two iscsi-load at once; prints the sum.
load() {
  local rw=$1
  "$bin/examples/iscsi-load" "$2" "$iqn" "$3" "$rw" 16 "$secs" > "$work/l1" 2>&1 &
  local a=$!
  "$bin/examples/iscsi-load" "$4" "$iqn" "$5" "$rw" 16 "$secs" > "$work/l2" 2>&1 &
  local b=$!
  wait "$a" || { cat "$work/l1" >&2; echo 0; return; }
  wait "$b" || { cat "$work/l2" >&2; echo 0; return; }
  echo $(( $(sed -n 's/^iops \([0-9]*\).*/\1/p' "$work/l1") + $(sed -n 's/^iops \([0-9]*\).*/\1/p' "$work/l2") ))
}

# refill: both images rewritten whole, in 4 MiB sequential writes, before
# every run: reads of never-written extents are cheaper, and the in-memory
# store slows down as random writes fragment its objects (rates fell by
# half within a round without it).
refill() {
  local i
  for i in "${images[@]}"; do
    rbd -c "$conf" bench --io-type write --io-pattern seq --io-size 4M --io-threads 4 --io-total 256M \
      "rbd/$i" > /dev/null
  done
}

declare -A got
configs=(one-gw all-active owner two-images two-images-one-gw)
run_config() { # run_config NAME RW
  local name=$1 rw=$2
  refill
  case "$name" in
    one-gw)
      p1=$(free_port)
      "$bin/lunard" --listen "127.0.0.1:$p1" --iothreads 1 --target "$iqn" --control "$work/one.sock" \
        --lun "backend=rbd,pool=rbd,image=$img_a,conf=$conf" > "$work/one.log" 2>&1 &
      pids+=($!)
      for _ in $(seq 100); do [ -S "$work/one.sock" ] && break; sleep 0.1; done
      load "$rw" "127.0.0.1:$p1" 0 "127.0.0.1:$p1" 0 ;;
    all-active)
      gateways all-active "$img_a"
      load "$rw" "127.0.0.1:$p1" 0 "127.0.0.1:$p2" 0 ;;
    owner)
      gateways owner "$img_a"
      load "$rw" "127.0.0.1:$p1" 0 "127.0.0.1:$p1" 0 ;;
    two-images)
      gateways owner "$img_a" "$img_b"
      "$bin/lunarctl" --control "$work/gw2.sock" alua set 1 gw2 active-optimized > /dev/null
      load "$rw" "127.0.0.1:$p1" 0 "127.0.0.1:$p2" 1 ;;
    two-images-one-gw)
      gateways owner "$img_a" "$img_b"
      load "$rw" "127.0.0.1:$p1" 0 "127.0.0.1:$p1" 1 ;;
  esac
  stop_gateways
}
for r in $(seq "$rounds"); do
  n=${#configs[@]}
  for i in $(seq 0 $((n - 1))); do
    c=${configs[$(( (i + r) % n ))]}
    for rw in read write; do
      v=$(run_config "$c" "$rw")
      got[$c.$rw]="${got[$c.$rw]:-} $v"
      echo "round $r: $c $rw: $v IOPS" >&2
    done
  done
done
median() { printf '%s\n' "$@" | sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : int((a[NR / 2] + a[NR / 2 + 1]) / 2) }'; }
spread() { printf '%s\n' "$@" | sort -n | awk 'NR == 1 { lo = $1 } { hi = $1 } END { print lo "-" hi }'; }
echo
echo "4 KiB random, two initiators at QD16 each, ${secs} s runs, median of $rounds rounds (aggregate IOPS; spread)"
printf '%-18s %14s %14s %8s %8s\n' config read write "r/base" "w/base"
for c in "${configs[@]}"; do
  # shellcheck disable=SC2086
  rd=$(median ${got[$c.read]}) wr=$(median ${got[$c.write]})
  base=one-gw
  [ "$c" = two-images ] && base=two-images-one-gw
  # shellcheck disable=SC2086
  brd=$(median ${got[$base.read]}) bwr=$(median ${got[$base.write]})
  # shellcheck disable=SC2086
  printf '%-18s %6s %7s %6s %7s %8s %8s\n' "$c" "$rd" "($(spread ${got[$c.read]}))" "$wr" "($(spread ${got[$c.write]}))" \
    "$(awk -v a="$rd" -v b="$brd" 'BEGIN { printf "%.2f", b ? a / b : 0 }')" \
    "$(awk -v a="$wr" -v b="$bwr" 'BEGIN { printf "%.2f", b ? a / b : 0 }')"
done
