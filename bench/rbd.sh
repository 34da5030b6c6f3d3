#!/usr/bin/env bash
# Benchmark (not a test, not in CI): one RBD image on one cluster, measured
# three ways side by side in one run, alternating rounds:
#   fio   fio's rbd engine straight on librbd (the ceiling: no gateway)
#   tgt   tgtd with bs_rbd (Debian's tgt-rbd) over iSCSI on loopback
#   lunar lunard with backend=rbd over iSCSI on loopback
# 4 KiB random read and write at QD1 and QD32. Over iSCSI, reads are driven
# by libiscsi's iscsi-perf and writes by crates/initiator's iscsi-load
# example (iscsi-perf only reads; Debian's fio has no libiscsi engine); each
# row uses the same client for both targets. Prints IOPS and the ratios
# lunar/fio and lunar/tgt.
#
#   bash bench/rbd.sh [SECONDS_PER_RUN] [ROUNDS]
#
# Without LUNAR_CEPH_CONF it starts a single-node cluster for the run
# (tests/ceph/micro-cluster.sh run) and stops it after. The image (256 MiB)
# is written through first: reads of never-written extents are cheaper.
# LUNAR_BENCH_PROFILE=dev uses the dev-profile binaries (opt-level 1: for
# trying the script, not for figures); default release.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
if [ -z "${LUNAR_CEPH_CONF:-}" ]; then
  exec "$root/tests/ceph/micro-cluster.sh" run -- bash "$0" "$@"
fi
secs=${1:-10}
rounds=${2:-3}
conf=$LUNAR_CEPH_CONF
need=()
command -v fio >/dev/null || need+=(fio)
command -v tgtd >/dev/null || need+=(tgt)
[ -e /usr/lib/tgt/backing-store/bs_rbd.so ] || need+=(tgt-rbd)
command -v iscsi-perf >/dev/null || need+=(libiscsi-bin)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
profile=${LUNAR_BENCH_PROFILE:-release}
if [ "$profile" = release ]; then
  cargo build --release -q -p lunard -p lunar-initiator --example iscsi-load
  bin=target/release
else
  cargo build -q -p lunard -p lunar-initiator --example iscsi-load
  bin=target/debug
fi

image=bench-$$
rbd -c "$conf" create --size 256M "rbd/$image"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pt=$(free_port); pl=$(free_port)
iqn_t=iqn.2026-11.dev.lunar:bench-tgt
iqn_l=iqn.2026-11.dev.lunar:disk0
ctl=$(( (RANDOM % 800) + 100 ))
log=$(mktemp -d /tmp/lunar-bench-rbd.XXXXXX)
cleanup() {
  tgtadm -C "$ctl" --lld iscsi --op delete --mode target --tid 1 --force >/dev/null 2>&1 || true
  [ -n "${lun_pid:-}" ] && kill "$lun_pid" 2>/dev/null || true
  [ -n "${tgt_pid:-}" ] && kill -9 "$tgt_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rbd -c "$conf" rm --no-progress "rbd/$image" >/dev/null 2>&1 || true
}
trap cleanup EXIT

fio_run() { # rw qd -> IOPS (fio's rbd engine on the image)
  fio --name=b --ioengine=rbd --clientname=admin --pool=rbd --rbdname="$image" \
      --rw="$1" --bs="$3" --iodepth="$2" --direct=1 --time_based --runtime="$secs" \
      --output-format=terse --terse-version=3 --size=256M 2>/dev/null |
    awk -F';' -v rw="$1" '{ print (rw ~ /read/) ? $8 : $49 }'
}

# Written through first, with the rbd engine (4 MiB sequential).
CEPH_CONF=$conf fio --name=fill --ioengine=rbd --clientname=admin --pool=rbd --rbdname="$image" \
  --rw=write --bs=4M --iodepth=4 --size=256M >/dev/null 2>&1

# tgtd uses a control socket per instance: a private control port avoids
# clashing with a system tgtd or a previous run.
tgtd -f --iscsi "portal=127.0.0.1:$pt" -C "$ctl" >"$log/tgtd.log" 2>&1 &
tgt_pid=$!
sleep 1
T="tgtadm -C $ctl --lld iscsi"
$T --op new --mode target --tid 1 -T "$iqn_t"
$T --op new --mode logicalunit --tid 1 --lun 1 --bstype rbd --backing-store "rbd/$image" --bsopts "conf=$conf"
$T --op bind --mode target --tid 1 -I ALL

"$bin/lunard" --listen "127.0.0.1:$pl" --lun "backend=rbd,pool=rbd,image=$image,conf=$conf" >"$log/lunard.log" 2>&1 &
lun_pid=$!
sleep 2

perf() { # url qd -> IOPS (iscsi-perf, 4 KiB random reads)
  timeout $((secs + 20)) iscsi-perf -m "$2" -b 8 -r -t "$secs" "$1" 2>/dev/null |
    tr '\r' '\n' | grep -o 'iops average [0-9]*' | tail -1 | awk '{print $3}'
}
load() { # addr iqn lun qd -> IOPS (iscsi-load, 4 KiB random writes)
  timeout $((secs + 20)) "$bin/examples/iscsi-load" "$1" "$2" "$3" write "$4" "$secs" 2>/dev/null |
    awk '/^iops/ {print $2}'
}

export CEPH_CONF=$conf
printf '%-14s %10s %10s %10s %10s %10s\n' workload fio tgt lunar lunar/fio lunar/tgt
for w in "randread 1" "randread 32" "randwrite 1" "randwrite 32"; do
  set -- $w
  rw=$1; qd=$2
  sf=0; st=0; sl=0
  for _ in $(seq "$rounds"); do
    f=$(fio_run "$rw" "$qd" 4k); sf=$((sf + ${f:-0}))
    if [ "$rw" = randread ]; then
      t=$(perf "iscsi://127.0.0.1:$pt/$iqn_t/1" "$qd"); l=$(perf "iscsi://127.0.0.1:$pl/$iqn_l/0" "$qd")
    else
      t=$(load "127.0.0.1:$pt" "$iqn_t" 1 "$qd"); l=$(load "127.0.0.1:$pl" "$iqn_l" 0 "$qd")
    fi
    st=$((st + ${t:-0})); sl=$((sl + ${l:-0}))
  done
  af=$((sf / rounds)); at=$((st / rounds)); al=$((sl / rounds))
  ratio() { python3 -c "print(f'{$1/$2:.2f}' if $2 else 'n/a')"; }
  printf '%-14s %10d %10d %10d %10s %10s\n' "4k-$rw-qd$qd" "$af" "$at" "$al" "$(ratio "$al" "$af")" "$(ratio "$al" "$at")"
done
echo "(IOPS, means of $rounds rounds of $secs s; $profile build; logs in $log)"
