#!/usr/bin/env bash
# Benchmark (not a test): the same 1 GiB RAM-backed disk (a file on
# /dev/shm) served over vhost-user-scsi by lunard and by rust-vmm's
# vhost-device-scsi, driven side by side by bench/vhost-driver (a frontend
# that plays QEMU and the guest driver, guest memory a shared file), in
# alternating rounds. 4 KiB random reads and writes at QD1 and QD32 on one
# request queue, and on two for lunard (vhost-device-scsi 0.1.0 offers one).
# Prints IOPS of both and the ratio of the medians.
#
#   bash bench/vhost-vs-vds.sh [SECONDS_PER_RUN] [ROUNDS]
#
# LUNARD_VHOST_OPTS is appended to lunard's --vhost-user (e.g. ",poll-us=0").
# LUNARD_BEFORE=/path/to/an/older/lunard adds that build, measured in the
# same rounds (before/after comparisons on this shared machine).
#
# Each cell is the median of the rounds, with the spread (min-max) beside
# it; lunard's CPU per I/O (user + system time of the process over the
# run, from /proc/PID/stat) is the last columns.
#
# Installs vhost-device-scsi with `cargo install` into target/tools if it is
# not on PATH. vhost-device-scsi exits when its frontend disconnects, so it is
# restarted for every run.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
secs=${1:-10}
rounds=${2:-3}
tools=$root/target/tools
if command -v vhost-device-scsi >/dev/null; then
  vds=$(command -v vhost-device-scsi)
elif [ -x "$tools/bin/vhost-device-scsi" ]; then
  vds=$tools/bin/vhost-device-scsi
else
  echo "installing vhost-device-scsi into $tools (a few minutes)"
  cargo install -q vhost-device-scsi --version 0.1.0 --root "$tools"
  vds=$tools/bin/vhost-device-scsi
fi
cargo build --release -q -p lunard -p lunar-vhost-driver
target_dir=${CARGO_TARGET_DIR:-$root/target}
lunard=$target_dir/release/lunard
driver=$target_dir/release/vhost-driver

work=$(mktemp -d)
img=/dev/shm/lunar-bench-vhost.img
truncate -s 1G "$img"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work" "$img"
}
trap cleanup EXIT

wait_socket() {
  for _ in $(seq 100); do [ -S "$1" ] && return 0; sleep 0.05; done
  echo "no socket $1" >&2; return 1
}

# lunard serves the whole run (2 request queues, 2 I/O threads); so does
# the older build, on its own socket.
start_lunard() { # NAME BINARY
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  "$2" --listen "127.0.0.1:$port" --iothreads 2 --vhost-user "$work/$1.sock,num-queues=2${LUNARD_VHOST_OPTS:-}" \
    --lun "backend=file,path=$img" >"$work/$1.log" 2>&1 &
  pids+=($!)
  declare -g "pid_$1=$!"
  wait_socket "$work/$1.sock" || { cat "$work/$1.log"; exit 1; }
}
start_lunard lunar "$lunard"
before=${LUNARD_BEFORE:-}
[ -n "$before" ] && start_lunard before "$before"

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
clk=$(getconf CLK_TCK)

# run NAME WORKLOAD QD QUEUES -> prints "IOPS CPU_US_PER_IO"
run() {
  local who=$1 rw=$2 qd=$3 queues=$4 sock out pid t0 t1
  if [ "$who" = vds ]; then
    sock=$work/vds.sock
    rm -f "$sock"
    # Its CPU time from its rusage when it exits (it exits with its frontend).
    python3 -c 'import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:-1])
_, _, ru = os.wait4(pid, 0)
open(sys.argv[-1], "w").write(str(ru.ru_utime + ru.ru_stime))' "$vds" --socket-path "$sock" "$img" "$work/vds.cpu" >"$work/vds.log" 2>&1 &
    local vpid=$!
    wait_socket "$sock"
  else
    sock=$work/$who.sock
    pid=$(eval echo "\$pid_$who")
  fi
  [ "$who" = vds ] || t0=$(ticks "$pid")
  out=$("$driver" "$sock" --rw "$rw" --qd "$qd" --queues "$queues" --seconds "$secs" 2>&1) || {
    echo "driver failed against $who: $out" >&2
    echo "0 0"
    [ "$who" = vds ] && { kill "$vpid" 2>/dev/null || true; wait "$vpid" 2>/dev/null || true; }
    return 0
  }
  local iops cpu
  iops=$(echo "$out" | sed -E 's/.*: ([0-9]+) IOPS.*/\1/')
  if [ "$who" = vds ]; then
    wait "$vpid" 2>/dev/null || true
    cpu=$(cat "$work/vds.cpu" 2>/dev/null || echo 0)
  else
    cpu=$(python3 -c "print(($(ticks "$pid") - $t0) / $clk)")
  fi
  python3 -c "i=$iops; print(i, f'{$cpu*1e6/(i*$secs):.2f}' if i else 0)"
}

median() { tr ' ' '\n' | sed '/^$/d' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
spread() { tr ' ' '\n' | sed '/^$/d' | sort -n | awk 'NR==1{lo=$1} {hi=$1} END {print lo "-" hi}'; }

declare -A vds_qd32 vds_qd32_cpu
if [ -n "$before" ]; then
  printf '| workload | vhost-device-scsi IOPS | lunard before IOPS | lunard IOPS | lunard / vds | lunard / before | CPU µs per I/O: vds, before, lunard |\n|---|---:|---:|---:|---:|---:|---:|\n'
else
  printf '| workload | vhost-device-scsi IOPS | lunard IOPS | ratio | CPU µs per I/O: vds, lunard |\n|---|---:|---:|---:|---:|\n'
fi
for spec in "rand-read 1 1" "rand-read 32 1" "rand-write 1 1" "rand-write 32 1" "rand-read 32 2" "rand-write 32 2"; do
  set -- $spec
  rw=$1 qd=$2 queues=$3
  v=() l=() b=() vc=() lc=() bc=()
  for _ in $(seq "$rounds"); do
    if [ "$queues" = 1 ]; then read -r i c < <(run vds "$rw" "$qd" 1); v+=("$i"); vc+=("$c"); fi
    if [ -n "$before" ]; then read -r i c < <(run before "$rw" "$qd" "$queues"); b+=("$i"); bc+=("$c"); fi
    read -r i c < <(run lunar "$rw" "$qd" "$queues"); l+=("$i"); lc+=("$c")
  done
  lm=$(echo "${l[*]}" | median) lcm=$(echo "${lc[*]}" | median)
  if [ "$queues" = 1 ]; then
    vm=$(echo "${v[*]}" | median) vcm=$(echo "${vc[*]}" | median)
    vcell="$vm ($(echo "${v[*]}" | spread))"
    [ "$qd" = 32 ] && { vds_qd32[$rw]=$vm; vds_qd32_cpu[$rw]=$vcm; }
    label="4k $rw QD$qd, 1 queue"
  else
    # vhost-device-scsi offers one request queue: its QD32 one-queue figure.
    vm=${vds_qd32[$rw]:-0} vcm=${vds_qd32_cpu[$rw]:-0}
    vcell="$vm (its 1 queue)"
    label="4k $rw QD$qd, 2 queues"
  fi
  ratio=$(python3 -c "print(f'{$lm/$vm:.2f}' if $vm else 'n/a')")
  lcell="$lm ($(echo "${l[*]}" | spread))"
  if [ -n "$before" ]; then
    bm=$(echo "${b[*]}" | median) bcm=$(echo "${bc[*]}" | median)
    bratio=$(python3 -c "print(f'{$lm/$bm:.2f}' if $bm else 'n/a')")
    printf '| %s | %s | %s | %s | %s | %s | %s, %s, %s |\n' "$label" "$vcell" "$bm ($(echo "${b[*]}" | spread))" "$lcell" \
      "$ratio" "$bratio" "$vcm" "$bcm" "$lcm"
  else
    printf '| %s | %s | %s | %s | %s, %s |\n' "$label" "$vcell" "$lcell" "$ratio" "$vcm" "$lcm"
  fi
done
