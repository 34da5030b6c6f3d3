#!/usr/bin/env bash
# Soak lunard's vhost-user-scsi path: one lunard (two request queues, two
# I/O threads, a 1 GiB file LUN on /dev/shm) driven by bench/vhost-driver in
# a loop over workloads (QD32 reads and writes, QD1 reads, two queues) for
# MINUTES, checking after every run that lunard is alive and every request
# was answered. Every run's driver output and lunard's whole log are kept in
# OUT, so that a rare stall or crash leaves its evidence. Not part of CI.
#
# usage: scripts/soak-vhost.sh [MINUTES] [OUT]   (default 10, ./soak-vhost)
# env:   LUNARD (the binary; default: this checkout's release build),
#        RUN_SECS (seconds per driver run; default 4)
# exit:  0 when every run succeeded and lunard stopped cleanly, 1 otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-10}
out=${2:-$PWD/soak-vhost}
run_secs=${RUN_SECS:-4}
case $minutes in '' | *[!0-9]*) echo "MINUTES must be a whole number, not '$minutes'" >&2; exit 2 ;; esac

cargo build --release -q -p lunard -p lunar-vhost-driver
lunard=${LUNARD:-$PWD/target/release/lunard}
driver=$PWD/target/release/vhost-driver
mkdir -p "$out"
work=$(mktemp -d)
img=/dev/shm/lunar-soak-$$.img
truncate -s 1G "$img"
sock=$work/vhost.sock
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$lunard" --listen "127.0.0.1:$port" --iothreads 2 --control "$work/ctl.sock" \
  --vhost-user "$sock,num-queues=2" --lun "backend=file,path=$img" >"$out/lunard.log" 2>&1 &
pid=$!
cleanup() {
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  rm -rf "$work" "$img"
}
trap cleanup EXIT
for _ in $(seq 200); do [ -S "$sock" ] && break; sleep 0.05; done
[ -S "$sock" ] || { echo "lunard did not listen on $sock; its log: $out/lunard.log" >&2; exit 1; }

end=$(($(date +%s) + minutes * 60))
runs=0 failed=0
while [ "$(date +%s)" -lt "$end" ]; do
  for w in "rand-read 32 1" "rand-write 32 1" "rand-read 1 1" "rand-read 32 2" "rand-write 8 2"; do
    set -- $w
    runs=$((runs + 1))
    if ! "$driver" "$sock" --rw "$1" --qd "$2" --queues "$3" --seconds "$run_secs" >"$out/run-$runs.txt" 2>&1; then
      failed=$((failed + 1))
      echo "run $runs ($w) failed: $(tr '\n' ' ' <"$out/run-$runs.txt")"
    else
      rm -f "$out/run-$runs.txt"
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      wait "$pid" && rc=0 || rc=$?
      echo "lunard exited (status $rc) after run $runs ($w); its log: $out/lunard.log"
      trap - EXIT
      rm -rf "$work" "$img"
      exit 1
    fi
  done
  echo "$(date +%T) $runs runs, $failed failed"
done
kill "$pid"
wait "$pid" && rc=0 || rc=$?
trap - EXIT
rm -rf "$work" "$img"
echo "soak: $runs runs of ${run_secs} s, $failed failed; lunard's exit status after SIGTERM: $rc (0 expected)"
[ "$failed" = 0 ] && [ "$rc" = 0 ]
