#!/usr/bin/env bash
# The whole test suite of Lunar, on a fresh Debian 12 machine (run as root, or
# with sudo available for apt-get). Installs what it needs first.
#
#   bash scripts/test-all.sh
#
# Steps: packages -> fmt -> clippy -> unit and end-to-end tests -> the
# model-checked tests of the ownership-following protocol (and proof that
# they catch the deliberately broken variant) -> iSCSI conformance
# (libiscsi's iscsi-test-cu against lunard), when lunard serves iSCSI ->
# Ceph RBD (a single-node cluster, the rbd backend's tests and conformance) ->
# Linux guests over vhost-user-scsi (QEMU, TCG): the guest test, then the
# reconnect test (which installs QEMU 10 from bookworm-backports on Debian 12)
# -> a Linux guest with the kernel's iSCSI initiator -> a Linux guest with
# dm-multipath in front of two gateways of one RBD image (failover). After
# the Rust tests:
# the Debian package, built, installed and purged.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
shared="$root/../shared"

step() { printf '\n==== %s\n' "$*"; }

# Every external tool the tests run, and the Debian package that has it. The
# end-to-end tests of crates/lunard fail (they do not skip) when one is missing.
tools=(
  iscsi-inq:libiscsi-bin iscsi-ls:libiscsi-bin iscsi-readcapacity16:libiscsi-bin
  iscsi-perf:libiscsi-bin iscsi-test-cu:libiscsi-bin
  sg_inq:sg3-utils cc:gcc mount:mount umount:mount kill:procps
  man:man-db dpkg-deb:dpkg
  ceph-mon:ceph-mon ceph-mgr:ceph-mgr ceph-osd:ceph-osd ceph:ceph-common rbd:ceph-common monmaptool:ceph-common
  /usr/include/rbd/librbd.h:librbd-dev /usr/include/rados/librados.h:librados-dev
)
# A tool is a command on PATH, or (starting with /) a file such as a header
# the build needs (librbd's, so that the rbd backend is built and tested).
have_tool() { case "$1" in /*) [ -e "$1" ] ;; *) type -P "$1" >/dev/null 2>&1 ;; esac; }
need_pkgs=()
for t in "${tools[@]}"; do
  have_tool "${t%%:*}" || need_pkgs+=("${t##*:}")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
  mapfile -t need_pkgs < <(printf '%s\n' "${need_pkgs[@]}" | sort -u)
  step "installing ${need_pkgs[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi
for t in "${tools[@]}"; do
  have_tool "${t%%:*}" || { echo "ERROR: ${t%%:*} still missing after installing ${t##*:}"; exit 1; }
done
# The tmpfs tests of crates/lunard/tests/live.rs mount file systems.
[ "$(id -u)" = 0 ] || echo "WARNING: not root: the tmpfs tests of crates/lunard/tests/live.rs will fail"
command -v cargo >/dev/null || { echo "cargo is needed (rustup)"; exit 1; }
rustup component add rustfmt clippy >/dev/null 2>&1 || true

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings

step "unit and end-to-end tests"
set +e
cargo test --workspace --no-fail-fast -- --nocapture 2>&1 | tee /tmp/lunar-cargo-test.log |
  grep -E '^(test result|stress:|error|.*FAILED|.*panicked)'
rc=${PIPESTATUS[0]}
set -e
[ "$rc" = 0 ] || { echo "cargo test failed (full log: /tmp/lunar-cargo-test.log)"; exit 1; }

step "Debian package: build (the debug binaries just tested), dpkg -c, dpkg -i, man -l, start the installed lunard, purge"
LUNAR_DEB_PROFILE=dev bash scripts/test-package.sh

step "fuzzing smoke: the regression inputs, then each libFuzzer target (AddressSanitizer) for about 20 s from the committed corpus"
bash scripts/fuzz.sh --smoke

step "model-checked tests (shuttle) of the ownership-following protocol"
CARGO_TARGET_DIR="$root/target/model" cargo test --quiet -p lunar-core --features shuttle --test model_follow

step "the same model tests must catch the deliberately broken protocol"
# Each of these must FAIL on the broken variant (a job that must follow a
# moved list is dropped). Any other outcome fails CI: the variant does not
# build, a listed test passes, or the run ends without listing them.
# (iteration_survives_hot_remove passes on it: a job dropped while its list
# is removed looks like one that arrived after the removal, which is allowed.)
must_fail=(
  iteration_follows_the_list_when_it_moves
  iteration_follows_the_list_when_it_moves_twice
  iteration_follows_the_list_to_the_main_loop_on_stop
)
broken_log=/tmp/lunar-broken.log
if ! CARGO_TARGET_DIR="$root/target/model" cargo test --no-run -p lunar-core --features shuttle,broken-follow \
     --test model_follow >"$broken_log" 2>&1; then
  tail -n 30 "$broken_log"
  echo "ERROR: the broken variant (--features shuttle,broken-follow) does not build; it proves nothing (log: $broken_log)"
  exit 1
fi
set +e
CARGO_TARGET_DIR="$root/target/model" cargo test -p lunar-core --features shuttle,broken-follow \
  --test model_follow >"$broken_log" 2>&1
rc=$?
set -e
if [ "$rc" = 0 ]; then
  echo "ERROR: the model tests passed on the broken variant (they would not catch the bug; log: $broken_log)"
  exit 1
fi
grep -q '^test result: FAILED' "$broken_log" || {
  tail -n 30 "$broken_log"
  echo "ERROR: the broken-variant run failed without a test result (exit $rc; log: $broken_log)"
  exit 1
}
for t in "${must_fail[@]}"; do
  grep -qE "^test $t \.\.\. FAILED\$" "$broken_log" || {
    grep -E '^test ' "$broken_log"
    echo "ERROR: $t did not fail on the broken variant: the model test no longer catches the bug (log: $broken_log)"
    exit 1
  }
done
echo "ok: ${#must_fail[@]} model tests fail on the broken variant, as they must: ${must_fail[*]}"

if [ -x scripts/conformance.sh ]; then
  step "iSCSI conformance: iscsi-test-cu against lunard"
  bash scripts/conformance.sh "$shared"
fi
step "Ceph RBD: a single-node cluster (tests/ceph/micro-cluster.sh: mon, mgr, memstore OSD), the rbd backend's tests, lunard's RBD tests, iscsi-test-cu against an RBD LUN; the cluster is stopped after"
bash tests/ceph/ci.sh "$shared"
step "vhost-user-scsi: a Linux guest (QEMU, TCG, 4 CPUs, 4 queues on 2 I/O threads): sg3-utils vs iSCSI, multi-queue I/O, hot plug, resets"
bash tests/vm/vhost-guest.sh 4 2 4
step "vhost-user-scsi reconnect: lunard killed (SIGKILL) twice during a guest's O_DIRECT write loop, QEMU reconnects (reconnect=1)"
# Needs QEMU >= 8.2: on Debian 12 the script installs qemu-system-x86 from
# bookworm-backports (QEMU 10.0) when the installed one is older.
bash tests/vm/vhost-reconnect.sh
step "Linux's iSCSI initiator: open-iscsi (iscsid, iscsiadm, iscsi_tcp) in a QEMU guest (TCG) against lunard on 0.0.0.0: discovery, CHAP, digests, ext4, sg3-utils vs libiscsi, hot add/resize, recovery across SIGKILLs"
bash tests/vm/kernel-initiator.sh
step "Two gateways of one RBD image under Linux's dm-multipath (multipathd, ALUA, scsi_dh_alua) in a QEMU guest: the owning gateway killed, stopped and upgraded during a verified O_DIRECT write loop; reservations made with mpathpersist enforced through both gateways"
bash tests/vm/multipath.sh
step "The same failover loop with alua=all-active: both gateways Active/Optimized, multipath writes through both"
ALUA=all-active bash tests/vm/multipath.sh

echo
echo "all tests passed"
