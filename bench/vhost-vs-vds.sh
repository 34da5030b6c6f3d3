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

# lunard serves the whole run (2 request queues, 2 I/O threads).
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$lunard" --listen "127.0.0.1:$port" --iothreads 2 --vhost-user "$work/lunar.sock,num-queues=2${LUNARD_VHOST_OPTS:-}" --lun "backend=file,path=$img" \
  >"$work/lunard.log" 2>&1 &
pids+=($!)
wait_socket "$work/lunar.sock" || { cat "$work/lunard.log"; exit 1; }

# run NAME WORKLOAD QD QUEUES -> prints IOPS
run() {
  local who=$1 rw=$2 qd=$3 queues=$4 sock out
  if [ "$who" = vds ]; then
    sock=$work/vds.sock
    rm -f "$sock"
    "$vds" --socket-path "$sock" "$img" >"$work/vds.log" 2>&1 &
    local vpid=$!
    wait_socket "$sock"
  else
    sock=$work/lunar.sock
  fi
  out=$("$driver" "$sock" --rw "$rw" --qd "$qd" --queues "$queues" --seconds "$secs" 2>&1) || {
    echo "driver failed against $who: $out" >&2
    echo 0
    [ "$who" = vds ] && { kill "$vpid" 2>/dev/null || true; wait "$vpid" 2>/dev/null || true; }
    return 0
  }
  [ "$who" = vds ] && { wait "$vpid" 2>/dev/null || true; }
  echo "$out" | sed -E 's/.*: ([0-9]+) IOPS.*/\1/'
}

median() { tr ' ' '\n' | sed '/^$/d' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

declare -A vds_qd32
printf '| workload | vhost-device-scsi IOPS | lunard IOPS | ratio |\n|---|---:|---:|---:|\n'
for spec in "rand-read 1 1" "rand-read 32 1" "rand-write 1 1" "rand-write 32 1" "rand-read 32 2" "rand-write 32 2"; do
  set -- $spec
  rw=$1 qd=$2 queues=$3
  v=() l=()
  for _ in $(seq "$rounds"); do
    [ "$queues" = 1 ] && v+=("$(run vds "$rw" "$qd" 1)")
    l+=("$(run lunar "$rw" "$qd" "$queues")")
  done
  lm=$(echo "${l[*]}" | median)
  if [ "$queues" = 1 ]; then
    vm=$(echo "${v[*]}" | median)
    [ "$qd" = 32 ] && vds_qd32[$rw]=$vm
    label="4k $rw QD$qd, 1 queue"
  else
    # vhost-device-scsi offers one request queue: its QD32 one-queue figure.
    vm=${vds_qd32[$rw]:-0}
    label="4k $rw QD$qd, 2 queues (vhost-device-scsi: its 1)"
  fi
  ratio=$(python3 -c "print(f'{$lm/$vm:.2f}' if $vm else 'n/a')")
  printf '| %s | %s | %s | %s |\n' "$label" "$vm" "$lm" "$ratio"
done
