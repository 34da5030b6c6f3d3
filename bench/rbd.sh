#!/usr/bin/env bash
# Benchmark (not a test, not in CI): one RBD image on one cluster, measured
# four ways side by side in one run:
#   fio     fio's rbd engine straight on librbd (the ceiling: no gateway)
#   tgt     tgtd with bs_rbd (Debian's tgt-rbd) over iSCSI on loopback
#   lunar   lunard with backend=rbd over iSCSI on loopback
#   vhost   the same lunard over vhost-user (bench/vhost-driver as the guest)
# 4 KiB random read and write at QD1 and QD32, 64 KiB sequential read and
# write at QD16. Over iSCSI, reads are driven by libiscsi's iscsi-perf and
# writes by crates/initiator's iscsi-load example (iscsi-perf only reads;
# Debian's fio has no libiscsi engine); each row uses the same client for
# both targets. Within a round the four run one after the other, in an
# order that rotates from round to round (the cluster's own speed drifts as
# its in-memory store fills and fragments; a fixed order would hand that
# drift to whoever runs last).
#
# Prints the median IOPS of the rounds, the ratios lunar/fio, lunar/tgt and
# vhost/fio, the spread (min-max) of each, and the CPU each side spends per
# I/O at QD32 and for 64 KiB: the gateway process (tgtd, lunard; for fio,
# fio itself with librbd inside), its client, and the OSD, in microseconds
# of CPU time per I/O from /proc (user + system, all threads).
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
[ -x /usr/bin/time ] || need+=(time)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
profile=${LUNAR_BENCH_PROFILE:-release}
target_dir=${CARGO_TARGET_DIR:-$root/target}
if [ "$profile" = release ]; then
  cargo build --release -q -p lunard -p lunar-vhost-driver -p lunar-initiator --bins --example iscsi-load
  bin=$target_dir/release
else
  cargo build -q -p lunard -p lunar-vhost-driver -p lunar-initiator --bins --example iscsi-load
  bin=$target_dir/debug
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

# Written through first, with the rbd engine (4 MiB sequential); again
# before every run that writes: the memstore OSD keeps each object as a
# list of the pieces written, so random 4 KiB writes fragment it and every
# later run would be slower than the one before (3x within one round,
# measured); whole-object writes make each object one piece again.
fill() {
  CEPH_CONF=$conf fio --name=fill --ioengine=rbd --clientname=admin --pool=rbd --rbdname="$image" \
    --rw=write --bs=4M --iodepth=4 --size=256M >/dev/null 2>&1
}
fill

# tgtd uses a control socket per instance: a private control port avoids
# clashing with a system tgtd or a previous run.
tgtd -f --iscsi "portal=127.0.0.1:$pt" -C "$ctl" >"$log/tgtd.log" 2>&1 &
tgt_pid=$!
sleep 1
T="tgtadm -C $ctl --lld iscsi"
$T --op new --mode target --tid 1 -T "$iqn_t"
$T --op new --mode logicalunit --tid 1 --lun 1 --bstype rbd --backing-store "rbd/$image" --bsopts "conf=$conf"
$T --op bind --mode target --tid 1 -I ALL

sock=$log/lunar.sock
"$bin/lunard" --listen "127.0.0.1:$pl" --vhost-user "$sock" \
  --lun "backend=rbd,pool=rbd,image=$image,conf=$conf,controller=$sock" >"$log/lunard.log" 2>&1 &
lun_pid=$!
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
[ -S "$sock" ] || { cat "$log/lunard.log"; exit 1; }
osd_pid=$(awk '$1 == "osd" {print $2}' "$(dirname "$conf")/pids" | head -1)

# CPU time (user + system, clock ticks) of a process, all its threads.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
hz=$(getconf CLK_TCK)

# One run: prints "IOPS GATEWAY_TICKS CLIENT_SECONDS OSD_TICKS".
# Workload: rw (randread randwrite read write), qd, block size in KiB.
run() {
  local who=$1 rw=$2 qd=$3 kib=$4 gw=0 g0 o0 out iops
  local blocks=$((kib * 2)) tf=$log/time
  case $who in tgt) gw=$tgt_pid ;; lunar|vhost) gw=$lun_pid ;; esac
  g0=$( [ "$gw" != 0 ] && ticks "$gw" || echo 0 ); o0=$(ticks "$osd_pid")
  case $who in
    fio)
      out=$(CEPH_CONF=$conf /usr/bin/time -f '%U %S' -o "$tf" fio --name=b --ioengine=rbd --clientname=admin \
        --pool=rbd --rbdname="$image" --rw="$rw" --bs="${kib}k" --iodepth="$qd" --direct=1 --time_based \
        --runtime="$secs" --output-format=terse --terse-version=3 --size=256M 2>/dev/null)
      iops=$(echo "$out" | awk -F';' -v rw="$rw" '{ print (rw ~ /read/) ? $8 : $49 }') ;;
    tgt|lunar)
      local addr iqn lun
      if [ "$who" = tgt ]; then addr=127.0.0.1:$pt iqn=$iqn_t lun=1; else addr=127.0.0.1:$pl iqn=$iqn_l lun=0; fi
      case $rw in
        randread|read)
          local r=""; [ "$rw" = randread ] && r=-r
          out=$(timeout $((secs + 20)) /usr/bin/time -f '%U %S' -o "$tf" iscsi-perf -m "$qd" -b "$blocks" $r \
            -t "$secs" "iscsi://$addr/$iqn/$lun" 2>/dev/null || true)
          iops=$(echo "$out" | tr '\r' '\n' | grep -o 'iops average [0-9]*' | tail -1 | awk '{print $3}') ;;
        *)
          local pattern=rand; [ "$rw" = write ] && pattern=seq
          out=$(timeout $((secs + 20)) /usr/bin/time -f '%U %S' -o "$tf" "$bin/examples/iscsi-load" "$addr" "$iqn" \
            "$lun" write "$qd" "$secs" "$blocks" "$pattern" 2>/dev/null || true)
          iops=$(echo "$out" | awk '/^iops/ {print $2}') ;;
      esac ;;
    vhost)
      local vrw
      case $rw in randread) vrw=rand-read ;; randwrite) vrw=rand-write ;; read) vrw=seq-read ;; write) vrw=seq-write ;; esac
      out=$(timeout $((secs + 20)) /usr/bin/time -f '%U %S' -o "$tf" "$bin/vhost-driver" "$sock" --rw "$vrw" \
        --qd "$qd" --bs $((kib * 1024)) --seconds "$secs" 2>&1 || true)
      iops=$(echo "$out" | sed -nE 's/.*: ([0-9]+) IOPS.*/\1/p' | tail -1) ;;
  esac
  local g1 o1 client
  g1=$( [ "$gw" != 0 ] && ticks "$gw" || echo 0 ); o1=$(ticks "$osd_pid")
  client=$(awk 'END {print $1 + $2}' "$tf" 2>/dev/null || echo 0)
  echo "${iops:-0} $((g1 - g0)) ${client:-0} $((o1 - o0))"
}

median() { tr ' ' '\n' | sed '/^$/d' | sort -n | awk '{a[NR]=$1} END {print (NR ? a[int((NR+1)/2)] : 0)}'; }
spread() { tr ' ' '\n' | sed '/^$/d' | sort -n | awk 'NR==1 {lo=$1} {hi=$1} END {print lo "-" hi}'; }
ratio() { python3 -c "print(f'{$1/$2:.2f}' if $2 else 'n/a')"; }
# CPU microseconds per I/O: ticks (or seconds with s) over IOPS x seconds.
per_io() { python3 -c "
t, iops = float('$1'), float('$2')
print(f'{t * 1e6 / ($3) / (iops * $secs):.0f}' if iops else 'n/a')"; }

engines=(fio tgt lunar vhost)
workloads=("randread 1 4" "randread 32 4" "randwrite 1 4" "randwrite 32 4" "read 16 64" "write 16 64")
declare -A iops cpu_gw cpu_cl cpu_osd
for r in $(seq "$rounds"); do
  for w in "${workloads[@]}"; do
    set -- $w
    for k in 0 1 2 3; do
      e=${engines[$(( (k + r) % 4 ))]}
      [[ $1 == *write ]] && fill
      read -r i g c o <<<"$(run "$e" "$1" "$2" "$3")"
      key="$w/$e"
      iops[$key]="${iops[$key]:-} $i"
      cpu_gw[$key]="${cpu_gw[$key]:-} $(per_io "$g" "$i" "$hz")"
      cpu_cl[$key]="${cpu_cl[$key]:-} $(per_io "$c" "$i" 1)"
      cpu_osd[$key]="${cpu_osd[$key]:-} $(per_io "$o" "$i" "$hz")"
      echo "round $r $key: $i IOPS (gateway $g ticks, client $c s, osd $o ticks)" >>"$log/rounds.txt"
    done
  done
done

label() { set -- $1; local kind=random; [ "$1" = read ] || [ "$1" = write ] && kind=sequential
  local dir=read; [[ $1 == *write ]] && dir=write; echo "$3 KiB $kind $dir QD$2"; }
printf '| workload | fio rbd | tgt bs_rbd | lunard iSCSI | lunard vhost | lunard/fio | lunard/tgt | vhost/fio |\n'
printf '|---|---:|---:|---:|---:|---:|---:|---:|\n'
for w in "${workloads[@]}"; do
  f=$(echo "${iops[$w/fio]}" | median); t=$(echo "${iops[$w/tgt]}" | median)
  l=$(echo "${iops[$w/lunar]}" | median); v=$(echo "${iops[$w/vhost]}" | median)
  printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$(label "$w")" "$f" "$t" "$l" "$v" \
    "$(ratio "$l" "$f")" "$(ratio "$l" "$t")" "$(ratio "$v" "$f")"
done
echo
echo "Spread of the rounds (min-max IOPS):"
echo
printf '| workload | fio rbd | tgt bs_rbd | lunard iSCSI | lunard vhost |\n|---|---:|---:|---:|---:|\n'
for w in "${workloads[@]}"; do
  printf '| %s | %s | %s | %s | %s |\n' "$(label "$w")" "$(echo "${iops[$w/fio]}" | spread)" \
    "$(echo "${iops[$w/tgt]}" | spread)" "$(echo "${iops[$w/lunar]}" | spread)" "$(echo "${iops[$w/vhost]}" | spread)"
done
echo
echo "CPU per I/O (microseconds, medians; gateway = tgtd or lunard, for fio the fio process with librbd):"
echo
printf '| workload | side | gateway | client | OSD |\n|---|---|---:|---:|---:|\n'
for w in "${workloads[@]}"; do
  set -- $w
  [ "$2" = 1 ] && continue
  for e in "${engines[@]}"; do
    gw=$(echo "${cpu_gw[$w/$e]}" | median); cl=$(echo "${cpu_cl[$w/$e]}" | median)
    [ "$e" = fio ] && { gw=$cl; cl=-; }
    printf '| %s | %s | %s | %s | %s |\n' "$(label "$w")" "$e" "$gw" "$cl" "$(echo "${cpu_osd[$w/$e]}" | median)"
  done
done
echo
echo "(medians of $rounds rounds of $secs s; $profile build; per-run figures in $log/rounds.txt)"
