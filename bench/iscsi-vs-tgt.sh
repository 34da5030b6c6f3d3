#!/usr/bin/env bash
# Benchmark (not a test): the same 1 GiB RAM-backed LUN (a file on /dev/shm)
# served by tgtd and by lunard on loopback, measured with libiscsi's
# iscsi-perf, alternating, for 4 KiB random reads at QD1 and QD32 and
# 64 KiB random reads at QD32. Prints IOPS of both and the ratio.
#
#   bash bench/iscsi-vs-tgt.sh [SECONDS_PER_RUN] [ROUNDS]
#
# LUNARD_BEFORE=/path/to/an/older/lunard adds that build, measured in the
# same rounds. Each cell is the median of the rounds with the spread
# (min-max); each lunard's CPU per I/O (user + system time of the process
# over the run, /proc/PID/stat) is the last column.
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
img_b=/dev/shm/lunar-bench-before.img
before=${LUNARD_BEFORE:-}
truncate -s 1G "$img_t" "$img_l"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pt=$(free_port); pl=$(free_port); pb=$(free_port)
iqn_t=iqn.2026-11.dev.lunar:bench-tgt
iqn_l=iqn.2026-11.dev.lunar:disk0
ctl=$(( (RANDOM % 800) + 100 ))
cleanup() {
  tgtadm -C "$ctl" --lld iscsi --op delete --mode target --tid 1 --force >/dev/null 2>&1 || true
  kill "${lun_pid:-}" "${before_pid:-}" 2>/dev/null || true
  kill -9 "${tgt_pid:-}" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -f "$img_t" "$img_l" "$img_b"
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
if [ -n "$before" ]; then
  truncate -s 1G "$img_b"
  "$before" --listen "127.0.0.1:$pb" --lun "backend=file,path=$img_b" >/tmp/lunar-bench-before.log 2>&1 &
  before_pid=$!
  sleep 1
fi
# Fill the images so that reads are of written data.
dd if=/dev/urandom of="$img_t" bs=1M count=1024 conv=notrunc status=none
cp "$img_t" "$img_l"
[ -z "$before" ] || cp "$img_t" "$img_b"

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
clk=$(getconf CLK_TCK)
perf() { # url qd blocks -> IOPS
  timeout $((secs + 20)) iscsi-perf -m "$2" -b "$3" -r -t "$secs" "$1" 2>/dev/null |
    tr '\r' '\n' | grep -o 'iops average [0-9]*' | tail -1 | awk '{print $3}'
}
# run URL QD BLOCKS PID -> "IOPS CPU_US_PER_IO" (CPU of PID over the run)
run() {
  local t0 iops
  t0=$(ticks "$4")
  iops=$(perf "$1" "$2" "$3")
  python3 -c "i=${iops:-0}; print(i, f'{($(ticks "$4") - $t0)/$clk*1e6/(i*$secs):.2f}' if i else 0)"
}
median() { tr ' ' '\n' | sed '/^$/d' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
spread() { tr ' ' '\n' | sed '/^$/d' | sort -n | awk 'NR==1{lo=$1} {hi=$1} END {print lo "-" hi}'; }

if [ -n "$before" ]; then
  printf '| workload | tgt IOPS | lunard before IOPS | lunard IOPS | lunard / tgt | lunard / before | CPU µs per I/O: tgt, before, lunard |\n|---|---:|---:|---:|---:|---:|---:|\n'
else
  printf '| workload | tgt IOPS | lunard IOPS | lunard / tgt | CPU µs per I/O: tgt, lunard |\n|---|---:|---:|---:|---:|\n'
fi
for w in "4k-qd1 1 8" "4k-qd32 32 8" "64k-qd32 32 128"; do
  set -- $w
  name=$1; qd=$2; blocks=$3
  t=() l=() b=() tc=() lc=() bc=()
  for _ in $(seq "$rounds"); do
    read -r i c < <(run "iscsi://127.0.0.1:$pt/$iqn_t/1" "$qd" "$blocks" "$tgt_pid"); t+=("$i"); tc+=("$c")
    if [ -n "$before" ]; then
      read -r i c < <(run "iscsi://127.0.0.1:$pb/$iqn_l/0" "$qd" "$blocks" "$before_pid"); b+=("$i"); bc+=("$c")
    fi
    read -r i c < <(run "iscsi://127.0.0.1:$pl/$iqn_l/0" "$qd" "$blocks" "$lun_pid"); l+=("$i"); lc+=("$c")
  done
  tm=$(echo "${t[*]}" | median) lm=$(echo "${l[*]}" | median)
  ratio=$(python3 -c "print(f'{$lm/$tm:.2f}' if $tm else 'n/a')")
  if [ -n "$before" ]; then
    bm=$(echo "${b[*]}" | median)
    bratio=$(python3 -c "print(f'{$lm/$bm:.2f}' if $bm else 'n/a')")
    printf '| %s | %s (%s) | %s (%s) | %s (%s) | %s | %s | %s, %s, %s |\n' "$name" "$tm" "$(echo "${t[*]}" | spread)" \
      "$bm" "$(echo "${b[*]}" | spread)" "$lm" "$(echo "${l[*]}" | spread)" "$ratio" "$bratio" \
      "$(echo "${tc[*]}" | median)" "$(echo "${bc[*]}" | median)" "$(echo "${lc[*]}" | median)"
  else
    printf '| %s | %s (%s) | %s (%s) | %s | %s, %s |\n' "$name" "$tm" "$(echo "${t[*]}" | spread)" \
      "$lm" "$(echo "${l[*]}" | spread)" "$ratio" "$(echo "${tc[*]}" | median)" "$(echo "${lc[*]}" | median)"
  fi
done
