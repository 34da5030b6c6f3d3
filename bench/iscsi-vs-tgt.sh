#!/usr/bin/env bash
# Benchmark (not a test): the same 1 GiB RAM-backed LUN (a file on /dev/shm)
# served by tgtd and by lunard on loopback, measured with libiscsi's
# iscsi-perf, alternating, for 4 KiB random reads at QD1 and QD32 and
# 64 KiB random reads at QD32. Prints IOPS of both and the ratio.
#
#   bash bench/iscsi-vs-tgt.sh [SECONDS_PER_RUN] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
rounds=${2:-3}
need=()
command -v tgtd >/dev/null || need+=(tgt)
command -v iscsi-perf >/dev/null || need+=(libiscsi-bin)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo build --release -q -p lunard

img_t=/dev/shm/lunar-bench-tgt.img
img_l=/dev/shm/lunar-bench-lunard.img
truncate -s 1G "$img_t" "$img_l"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pt=$(free_port); pl=$(free_port)
iqn_t=iqn.2026-11.dev.lunar:bench-tgt
iqn_l=iqn.2026-11.dev.lunar:disk0
ctl=$(( (RANDOM % 800) + 100 ))
cleanup() {
  tgtadm -C "$ctl" --lld iscsi --op delete --mode target --tid 1 --force >/dev/null 2>&1 || true
  kill "${lun_pid:-}" 2>/dev/null || true
  kill -9 "${tgt_pid:-}" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -f "$img_t" "$img_l"
}
trap cleanup EXIT

# tgtd uses a control socket per instance: a private control port avoids
# clashing with a system tgtd or a previous run.
tgtd -f --iscsi "portal=127.0.0.1:$pt" -C "$ctl" >/tmp/lunar-bench-tgtd.log 2>&1 &
tgt_pid=$!
sleep 1
T="tgtadm -C $ctl --lld iscsi"
$T --op new --mode target --tid 1 -T "$iqn_t"
$T --op new --mode logicalunit --tid 1 --lun 1 -b "$img_t"
$T --op bind --mode target --tid 1 -I ALL

./target/release/lunard --listen "127.0.0.1:$pl" --lun "backend=file,path=$img_l" >/tmp/lunar-bench-lunard.log 2>&1 &
lun_pid=$!
sleep 1
# Fill both images so that reads are of written data.
dd if=/dev/urandom of="$img_t" bs=1M count=1024 conv=notrunc status=none
cp "$img_t" "$img_l"

perf() { # url qd blocks -> IOPS
  timeout $((secs + 20)) iscsi-perf -m "$2" -b "$3" -r -t "$secs" "$1" 2>/dev/null |
    tr '\r' '\n' | grep -o 'iops average [0-9]*' | tail -1 | awk '{print $3}'
}

printf '%-22s %12s %12s %8s\n' "workload" "tgt IOPS" "lunard IOPS" "ratio"
for w in "4k-qd1 1 8" "4k-qd32 32 8" "64k-qd32 32 128"; do
  set -- $w
  name=$1; qd=$2; blocks=$3
  st=0; sl=0
  for r in $(seq "$rounds"); do
    t=$(perf "iscsi://127.0.0.1:$pt/$iqn_t/1" "$qd" "$blocks"); st=$((st + ${t:-0}))
    l=$(perf "iscsi://127.0.0.1:$pl/$iqn_l/0" "$qd" "$blocks"); sl=$((sl + ${l:-0}))
  done
  at=$((st / rounds)); al=$((sl / rounds))
  ratio=$(python3 -c "print(f'{$al/$at:.2f}' if $at else 'n/a')")
  printf '%-22s %12d %12d %8s\n' "$name" "$at" "$al" "$ratio"
done
