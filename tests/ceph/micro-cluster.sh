#!/usr/bin/env bash
# A single-node Ceph cluster for tests, from Debian 12's packages (Pacific).
#
#   micro-cluster.sh install          apt-get install what the cluster and the
#                                     RBD backend's build need (never removes)
#   micro-cluster.sh start DIR        start a cluster under DIR (created, must be
#                                     empty or absent); prints DIR/ceph.conf
#   micro-cluster.sh stop DIR         stop its daemons (by their pids) and delete DIR
#   micro-cluster.sh image DIR NAME SIZE   create image NAME (rbd create --size SIZE)
#   micro-cluster.sh stop-osd DIR     freeze the OSD (SIGSTOP): it answers nothing,
#                                     as an OSD gone away; its memstore data stays
#   micro-cluster.sh start-osd DIR    thaw it (SIGCONT): the cluster is back
#   micro-cluster.sh run [--] CMD...  start a cluster in a temp dir, run CMD with
#                                     LUNAR_CEPH_CONF=<conf> and CEPH_CONF=<conf>,
#                                     stop it, exit with CMD's status
#
# One monitor, one manager and one OSD with the in-memory object store
# (memstore), no cephx, pool size 1, everything (data, logs, admin sockets,
# pid files) under DIR. The daemons run in the foreground (-f) as children
# started by this script; their pids are in DIR/pids. Only 127.0.0.1 is used;
# the monitor's port is chosen free at start (CEPH_MON_PORT overrides it).
# The pool `rbd` exists when `start` returns.
#
# Environment: CEPH_MEMSTORE_BYTES (default 2 GiB: memstore keeps whole object
# pages, about 3 GB of OSD memory per GiB written; keep test images small),
# CEPH_START_TIMEOUT (seconds, default 60).
set -euo pipefail

PACKAGES=(ceph-mon ceph-mgr ceph-osd ceph-common librbd-dev librados-dev)

log() { echo "micro-cluster: $*" >&2; }
die() { log "error: $*"; exit 1; }

cmd_install() {
    local missing=()
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        log "packages present"
        return 0
    fi
    local sudo=()
    [ "$(id -u)" = 0 ] || sudo=(sudo)
    log "installing ${missing[*]}"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2 \
        || { "${sudo[@]}" apt-get update >&2 && "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y --no-install-recommends "${missing[@]}" >&2; }
}

free_port() {
    python3 - <<'PY'
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
PY
}

# Runs a daemon in the foreground as a background child, its pid in DIR/pids.
spawn() {
    local dir=$1 name=$2
    shift 2
    # setsid: the daemons outlive this script (start returns) and do not get
    # the terminal's signals; stop kills them by pid.
    setsid "$@" -f -c "$dir/ceph.conf" >"$dir/log/$name.out" 2>&1 </dev/null &
    echo "$name $!" >>"$dir/pids"
}

ceph_() { timeout 30 ceph -c "$DIR/ceph.conf" "$@"; }

wait_for() {
    local what=$1 deadline=$(($(date +%s) + ${CEPH_START_TIMEOUT:-60}))
    shift
    until "$@" >/dev/null 2>&1; do
        if [ "$(date +%s)" -ge "$deadline" ]; then
            log "timed out waiting for $what; logs in $DIR/log"
            tail -n 20 "$DIR"/log/*.out "$DIR"/log/*.log >&2 2>/dev/null || true
            return 1
        fi
        sleep 0.2
    done
}

osd_up() { ceph_ osd stat 2>/dev/null | grep -q " 1 up"; }

cmd_start() {
    DIR=${1:?usage: start DIR}
    for b in ceph-mon ceph-mgr ceph-osd ceph rbd monmaptool; do
        command -v "$b" >/dev/null || die "$b not found (run: $0 install)"
    done
    if [ -e "$DIR" ] && [ -n "$(ls -A "$DIR")" ]; then die "$DIR is not empty"; fi
    mkdir -p "$DIR"
    DIR=$(cd "$DIR" && pwd)
    mkdir -p "$DIR/log" "$DIR/run" "$DIR/mon" "$DIR/osd" "$DIR/mgr"
    : >"$DIR/pids"
    local t0 port fsid
    t0=$(date +%s.%N)
    port=${CEPH_MON_PORT:-$(free_port)}
    fsid=$(python3 -c 'import uuid; print(uuid.uuid4())')
    cat >"$DIR/ceph.conf" <<CONF
[global]
fsid = $fsid
mon host = v2:127.0.0.1:$port
public addr = 127.0.0.1
ms bind msgr1 = false
auth cluster required = none
auth service required = none
auth client required = none
auth allow insecure global id reclaim = true
mon warn on insecure global id reclaim allowed = false
mon warn on pool no redundancy = false
mon allow pool size one = true
mon allow pool delete = true
osd pool default size = 1
osd pool default min size = 1
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
run dir = $DIR/run
admin socket = $DIR/run/\$name.asok
pid file = $DIR/run/\$name.pid
log file = $DIR/log/\$name.log
keyring = $DIR/keyring
mon data = $DIR/mon
osd data = $DIR/osd
mgr data = $DIR/mgr
[mon]
mon data avail warn = 1
mon data avail crit = 0
[osd]
osd objectstore = memstore
memstore device bytes = ${CEPH_MEMSTORE_BYTES:-2147483648}
osd op num shards = 1
osd op num threads per shard = 2
osd class load list = *
osd class default list = *
CONF
    # The monitor: a map with itself, then its store.
    monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$port]" "$DIR/monmap" >/dev/null
    ceph-mon -c "$DIR/ceph.conf" --mkfs -i a --monmap "$DIR/monmap" >"$DIR/log/mon-mkfs.out" 2>&1 \
        || { cat "$DIR/log/mon-mkfs.out" >&2; die "ceph-mon --mkfs failed"; }
    spawn "$DIR" mon ceph-mon -i a
    wait_for "the monitor" ceph_ mon stat
    # The OSD: an id from the monitor, a place in the CRUSH map, its store.
    local id
    id=$(ceph_ osd create)
    ceph_ osd crush add "osd.$id" 1 root=default host=localhost >/dev/null 2>&1
    ceph-osd -c "$DIR/ceph.conf" -i "$id" --mkfs >"$DIR/log/osd-mkfs.out" 2>&1 \
        || { cat "$DIR/log/osd-mkfs.out" >&2; die "ceph-osd --mkfs failed"; }
    spawn "$DIR" osd ceph-osd -i "$id"
    spawn "$DIR" mgr ceph-mgr -i x
    wait_for "the OSD to come up" osd_up
    ceph_ osd pool create rbd 8 >/dev/null 2>&1
    timeout 30 rbd -c "$DIR/ceph.conf" pool init rbd
    log "cluster up in $(python3 -c "print(round($(date +%s.%N) - $t0, 1))") s under $DIR"
    echo "$DIR/ceph.conf"
}

# The pid is a daemon of this cluster if its command line names our conf.
ours() { { tr '\0' ' ' <"/proc/$1/cmdline"; } 2>/dev/null | grep -qF "$2/ceph.conf"; }

cmd_stop() {
    local dir=${1:?usage: stop DIR}
    [ -f "$dir/pids" ] || { log "no cluster under $dir"; return 0; }
    local pids=()
    while read -r _ pid; do pids+=("$pid"); done <"$dir/pids"
    for pid in "${pids[@]}"; do
        if ours "$pid" "$dir"; then
            kill -TERM "$pid" 2>/dev/null || true
        fi
    done
    for _ in $(seq 30); do
        local alive=0
        for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ $alive = 0 ] && break
        sleep 0.1
    done
    for pid in "${pids[@]}"; do
        if ours "$pid" "$dir"; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    rm -rf "$dir"
    log "cluster under $dir stopped"
}

# The OSD's pid, checked to be this cluster's daemon. Freezing it stands for
# an OSD gone away: killing a memstore OSD would lose every object with it.
osd_pid() {
    local dir=${1:?usage: stop-osd|start-osd DIR} name pid
    while read -r name pid; do
        if [ "$name" = osd ] && ours "$pid" "$dir"; then echo "$pid"; return 0; fi
    done <"$dir/pids"
    die "no OSD of a cluster under $dir"
}

cmd_stop_osd() { local pid; pid=$(osd_pid "$@"); kill -STOP "$pid"; log "OSD $pid frozen"; }
cmd_start_osd() { local pid; pid=$(osd_pid "$@"); kill -CONT "$pid"; log "OSD $pid thawed"; }

cmd_image() {
    local dir=${1:?usage: image DIR NAME SIZE} name=${2:?} size=${3:?}
    timeout 30 rbd -c "$dir/ceph.conf" create --size "$size" "rbd/$name"
}

cmd_run() {
    [ "${1:-}" = "--" ] && shift
    [ $# -gt 0 ] || die "usage: run [--] CMD..."
    local conf rc=0
    RUN_DIR=$(mktemp -d /tmp/lunar-ceph.XXXXXX)
    trap 'cmd_stop "$RUN_DIR"' EXIT
    conf=$(cmd_start "$RUN_DIR")
    LUNAR_CEPH_CONF=$conf CEPH_CONF=$conf "$@" || rc=$?
    return $rc
}

case "${1:-}" in
    install) shift; cmd_install "$@" ;;
    start) shift; cmd_start "$@" ;;
    stop) shift; cmd_stop "$@" ;;
    image) shift; cmd_image "$@" ;;
    stop-osd) shift; cmd_stop_osd "$@" ;;
    start-osd) shift; cmd_start_osd "$@" ;;
    run) shift; cmd_run "$@" ;;
    *) sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
