#!/usr/bin/env bash
# Coverage-guided fuzzing of Lunar (libFuzzer, on the stable toolchain).
#
#   bash scripts/fuzz.sh SECONDS [TARGET...]   run each target SECONDS (default
#                                              all targets, one after another);
#                                              new inputs go to fuzz/corpus/<target>/
#   bash scripts/fuzz.sh --smoke [TARGET...]   CI: build, replay fuzz/regressions,
#                                              then each target ~20 s from the
#                                              committed corpus (not modified);
#                                              fails on any crash, OOM or timeout
#   bash scripts/fuzz.sh --regressions [TARGET...]  run every file of
#                                              fuzz/regressions/<target>/ once
#   bash scripts/fuzz.sh --cmin [TARGET...]    minimize fuzz/corpus/<target>/ in place
#   bash scripts/fuzz.sh --build               only build
#   bash scripts/fuzz.sh --list                the targets
#
# Environment: FUZZ_JOBS=N runs N targets at once (default 1), FUZZ_SMOKE_SECONDS
# (default 20), FUZZ_SANITIZER=address|none (default: address when the
# toolchain ships its runtime), FUZZ_ARGS (extra libFuzzer flags), FUZZ_LOG_DIR
# (libFuzzer logs; default fuzz/logs).
#
# The targets are built with plain cargo and the flags cargo-fuzz 0.13 uses
# (libFuzzer's sancov instrumentation, -Zsanitizer=address, debug
# assertions); the -Z flags need RUSTC_BOOTSTRAP=1 on a stable toolchain.
# cargo-fuzz itself is not needed (`cargo fuzz run TARGET` works as well, see
# docs/fuzzing.md). Crash reproducers land in fuzz/artifacts/<target>/.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
FUZZ="$ROOT/fuzz"
TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
TARGETS=(pdu_decode cdb_execute virtio_chain control_rpc)
SMOKE_SECONDS=${FUZZ_SMOKE_SECONDS:-20}
JOBS=${FUZZ_JOBS:-1}
LOGDIR=${FUZZ_LOG_DIR:-$FUZZ/logs}

log() { printf 'fuzz: %s\n' "$*" >&2; }

# libFuzzer flags per target. Every target: no single allocation above
# 64 MiB (8x MAX_TRANSFER_BYTES) and 2 GiB of RSS, 10 s per input.
# virtio_chain: lunar-vhost's own per-request bound is MAX_TRANSFER = 64 MiB
# (+4 KiB), which a guest may legitimately reach: its limit is 80 MiB (see
# docs/fuzzing.md, finding V1).
flags_for() {
    local t=$1
    local malloc=64
    [[ $t == virtio_chain ]] && malloc=80
    echo "-rss_limit_mb=2048 -malloc_limit_mb=$malloc -timeout=10 -max_len=65536 -print_final_stats=1 ${FUZZ_ARGS:-}"
}

setup() {
    command -v cargo >/dev/null || { log "cargo not found (install rustup's stable toolchain)"; exit 1; }
    if ! command -v c++ >/dev/null; then
        # libfuzzer-sys compiles libFuzzer (C++).
        log "installing g++"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q g++ >/dev/null
    fi
    SANITIZER=${FUZZ_SANITIZER:-}
    if [[ -z $SANITIZER ]]; then
        local sysroot
        sysroot=$(rustc --print sysroot)
        if ls "$sysroot/lib/rustlib/$TRIPLE/lib/"librustc-*_rt.asan.a >/dev/null 2>&1; then
            SANITIZER=address
        else
            log "this toolchain has no AddressSanitizer runtime: building without a sanitizer"
            SANITIZER=none
        fi
    fi
}

build() {
    # The flags of cargo-fuzz 0.13, in its order (same RUSTFLAGS: the same
    # build as `cargo fuzz build`, shared with it in fuzz/target).
    local flags=" -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4"
    flags+=" -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table"
    flags+=" -Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing"
    flags+=" -Cllvm-args=-simplifycfg-branch-fold-threshold=0"
    [[ $SANITIZER != none ]] && flags+=" -Zsanitizer=$SANITIZER"
    flags+=" -Cllvm-args=-sanitizer-coverage-stack-depth -Cdebug-assertions"
    local profile=(--release --config 'profile.release.debug="line-tables-only"') dir=release
    TARGET_DIR="$FUZZ/target"
    if [[ ${SMOKE:-0} == 1 ]]; then
        # The smoke build favours build time over speed (a fresh CI machine
        # builds everything): the dev profile (opt-level 0, several codegen
        # units, no debug info), in a directory of its own (other RUSTFLAGS).
        profile=(--config 'profile.dev.opt-level=0' --config 'profile.dev.debug=0')
        dir=debug
        TARGET_DIR="$FUZZ/target/smoke"
    else
        # One codegen unit as cargo-fuzz does (ThinLTO can then inline
        # through the instrumentation).
        flags+=" -Ccodegen-units=1"
    fi
    log "building ${TARGETS[*]} (sanitizer: $SANITIZER) in $TARGET_DIR"
    local start=$SECONDS
    RUSTC_BOOTSTRAP=1 RUSTFLAGS="$flags" cargo build --manifest-path "$FUZZ/Cargo.toml" \
        --target "$TRIPLE" "${profile[@]}" --target-dir "$TARGET_DIR" --bins --locked -q
    log "built in $((SECONDS - start)) s"
    BIN="$TARGET_DIR/$TRIPLE/$dir"
}

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_odr_violation=0}

# One line per target from libFuzzer's output.
summarize() {
    local t=$1 logf=$2 secs=$3 rc=$4 corpus=$5
    local last runs eps cov ft rss files size
    last=$(grep -E '^#[0-9]+' "$logf" | tail -1 || true)
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$logf" | tail -1)
    eps=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$logf" | tail -1)
    rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$logf" | tail -1)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
    files=$(find "$corpus" -type f | wc -l)
    size=$(find "$corpus" -type f -exec cat {} + | wc -c)
    printf '%-13s wall=%ss runs=%-10s exec/s=%-7s cov=%-6s ft=%-6s corpus=%s files/%s bytes peak_rss=%sMB %s\n' \
        "$t" "$secs" "${runs:-?}" "${eps:-?}" "${cov:-?}" "${ft:-?}" "$files" "$size" "${rss:-?}" \
        "$([[ $rc == 0 ]] && echo ok || echo "FAILED (exit $rc, see $logf)")"
}

# run_target TARGET SECONDS WRITE_CORPUS(0|1)
run_target() {
    local t=$1 secs=$2 write=$3
    local corpus="$FUZZ/corpus/$t" art="$FUZZ/artifacts/$t/" logdir="$LOGDIR"
    mkdir -p "$corpus" "$art" "$logdir"
    local logf="$logdir/$t.log" dirs
    if [[ $write == 1 ]]; then
        dirs=("$corpus")
    else
        # New inputs go to a scratch directory; the committed corpus is read only.
        local scratch
        scratch=$(mktemp -d)
        dirs=("$scratch" "$corpus")
    fi
    local rc=0 start=$SECONDS
    # shellcheck disable=SC2046
    "$BIN/$t" $(flags_for "$t") -max_total_time="$secs" -artifact_prefix="$art" "${dirs[@]}" >"$logf" 2>&1 || rc=$?
    secs=$((SECONDS - start))
    [[ $write == 1 ]] || rm -rf "${dirs[0]}"
    summarize "$t" "$logf" "$secs" "$rc" "$corpus"
    if [[ $rc != 0 ]]; then
        grep -E 'ERROR: |panicked at|SUMMARY: |Test unit written' "$logf" | head -8 >&2 || true
    fi
    return "$rc"
}

# Runs "$@" (target names) through run_target, $JOBS at a time.
run_all() {
    local secs=$1 write=$2
    shift 2
    local fail=0 pids=() names=()
    for t in "$@"; do
        run_target "$t" "$secs" "$write" &
        pids+=($!)
        names+=("$t")
        if ((${#pids[@]} >= JOBS)); then
            wait "${pids[0]}" || fail=1
            pids=("${pids[@]:1}")
            names=("${names[@]:1}")
        fi
    done
    for p in "${pids[@]}"; do wait "$p" || fail=1; done
    return "$fail"
}

regressions() {
    local fail=0
    for t in "$@"; do
        local dir="$FUZZ/regressions/$t"
        [[ -d $dir ]] || continue
        mapfile -t files < <(find "$dir" -type f | sort)
        ((${#files[@]})) || continue
        local logf="$LOGDIR/$t.regressions.log"
        mkdir -p "$LOGDIR"
        # shellcheck disable=SC2046
        if "$BIN/$t" $(flags_for "$t") -runs=1 "${files[@]}" >"$logf" 2>&1; then
            log "$t: ${#files[@]} regression input(s) pass"
        else
            log "$t: a regression input fails (see $logf)"
            grep -E 'ERROR: |panicked at|SUMMARY: |Running: ' "$logf" | tail -6 >&2 || true
            fail=1
        fi
    done
    return "$fail"
}

cmin() {
    for t in "$@"; do
        local corpus="$FUZZ/corpus/$t" tmp
        tmp=$(mktemp -d)
        local before
        before=$(find "$corpus" -type f | wc -l)
        # shellcheck disable=SC2046
        "$BIN/$t" $(flags_for "$t") -merge=1 "$tmp" "$corpus" >"$LOGDIR/$t.cmin.log" 2>&1
        rm -rf "$corpus"
        mv "$tmp" "$corpus"
        log "$t: corpus minimized, $before -> $(find "$corpus" -type f | wc -l) files, $(find "$corpus" -type f -exec cat {} + | wc -c) bytes"
    done
}

pick() {
    if (($#)); then
        for t in "$@"; do
            [[ " ${TARGETS[*]} " == *" $t "* ]] || { log "unknown target $t (targets: ${TARGETS[*]})"; exit 2; }
        done
        SELECTED=("$@")
    else
        SELECTED=("${TARGETS[@]}")
    fi
}

mkdir -p "$LOGDIR"
case "${1:-}" in
    --list)
        printf '%s\n' "${TARGETS[@]}"
        ;;
    --build)
        setup
        build
        ;;
    --smoke)
        shift
        pick "$@"
        setup
        SMOKE=1 build
        fail=0
        regressions "${SELECTED[@]}" || fail=1
        JOBS=${FUZZ_JOBS:-2} run_all "$SMOKE_SECONDS" 0 "${SELECTED[@]}" || fail=1
        if ((fail)); then
            log "smoke: FAILED"
            exit 1
        fi
        log "smoke: every target ran ${SMOKE_SECONDS} s without a crash"
        ;;
    --regressions)
        shift
        pick "$@"
        setup
        build
        regressions "${SELECTED[@]}"
        ;;
    --cmin)
        shift
        pick "$@"
        setup
        build
        cmin "${SELECTED[@]}"
        ;;
    '' | -h | --help)
        sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'
        ;;
    *)
        [[ $1 =~ ^[0-9]+$ ]] || { log "expected SECONDS or an option, got $1"; exit 2; }
        secs=$1
        shift
        pick "$@"
        setup
        build
        run_all "$secs" 1 "${SELECTED[@]}"
        ;;
esac
