#!/usr/bin/env bash
# Builds the Debian package of Lunar with cargo-deb (installed from
# crates.io if missing): both binaries, the systemd unit
# (dist/lunard.service), the default configuration (dist/lunard.toml, a
# conffile), the man pages and the bash/zsh/fish completions generated
# from the clap definitions. Prints the path of the .deb on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_DEB_VERSION=${CARGO_DEB_VERSION:-}
if ! cargo deb --version >/dev/null 2>&1; then
    echo "package.sh: installing cargo-deb from crates.io" >&2
    cargo install cargo-deb --locked ${CARGO_DEB_VERSION:+--version "$CARGO_DEB_VERSION"} >&2
fi

# LUNAR_DEB_PROFILE=dev packages the debug build (what `cargo test` built:
# quick, for CI); the default is the release build.
profile=${LUNAR_DEB_PROFILE:-release}
cargo build --profile "$profile" -p lunard --bins >&2
rm -rf target/docs
cargo run --profile "$profile" -q -p lunard --example gen-docs -- target/docs >&2
gzip -9n target/docs/man/*.8
rm -f target/debian/lunar_*.deb
cargo deb -p lunard --no-build --strip --profile "$profile" >&2
deb=$(ls target/debian/lunar_*.deb)
test -s "$deb"
echo "$deb"
