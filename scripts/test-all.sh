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
# Linux guests over vhost-user-scsi (QEMU, TCG): the guest test, then the
# reconnect test (which installs QEMU 10 from bookworm-backports on Debian 12).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
shared="$root/../shared"

step() { printf '\n==== %s\n' "$*"; }

need_pkgs=()
command -v iscsi-test-cu >/dev/null 2>&1 || need_pkgs+=(libiscsi-bin)
command -v sg_inq >/dev/null 2>&1 || need_pkgs+=(sg3-utils)
command -v cc >/dev/null 2>&1 || need_pkgs+=(gcc)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  step "installing ${need_pkgs[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "cargo is needed (rustup)"; exit 1; }
rustup component add rustfmt clippy >/dev/null 2>&1 || true

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings

step "unit and end-to-end tests"
set +e
cargo test --workspace -- --nocapture 2>&1 | tee /tmp/lunar-cargo-test.log |
  grep -E '^(test result|stress:|error|.*FAILED|.*panicked)'
rc=${PIPESTATUS[0]}
set -e
[ "$rc" = 0 ] || { echo "cargo test failed (full log: /tmp/lunar-cargo-test.log)"; exit 1; }

step "model-checked tests (shuttle) of the ownership-following protocol"
CARGO_TARGET_DIR="$root/target/model" cargo test --quiet -p lunar-target --features shuttle --test model_follow

step "the same model tests must catch the deliberately broken protocol"
if CARGO_TARGET_DIR="$root/target/model" cargo test -p lunar-target --features shuttle,broken-follow \
     --test model_follow >/tmp/lunar-broken.log 2>&1; then
  echo "ERROR: the model tests passed on the broken variant (they would not catch the bug)"
  exit 1
fi
echo "ok: $(grep -c '\.\.\. FAILED' /tmp/lunar-broken.log) model tests fail on the broken variant, as they must"

if [ -x scripts/conformance.sh ]; then
  step "iSCSI conformance: iscsi-test-cu against lunard"
  bash scripts/conformance.sh "$shared"
fi
step "vhost-user-scsi: a Linux guest (QEMU, TCG, 4 CPUs, 4 queues on 2 I/O threads): sg3-utils vs iSCSI, multi-queue I/O, hot plug, resets"
bash tests/vm/vhost-guest.sh 4 2 4
step "vhost-user-scsi reconnect: lunard killed (SIGKILL) twice during a guest's O_DIRECT write loop, QEMU reconnects (reconnect=1)"
# Needs QEMU >= 8.2: on Debian 12 the script installs qemu-system-x86 from
# bookworm-backports (QEMU 10.0) when the installed one is older.
bash tests/vm/vhost-reconnect.sh

echo
echo "all tests passed"
