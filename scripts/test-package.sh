#!/usr/bin/env bash
# Builds the Debian package (scripts/package.sh), checks its contents
# (dpkg-deb -c), installs it on this machine with dpkg -i (as root), reads
# the installed man pages with man -l, starts the installed lunard from the
# installed configuration (it must serve no LUN and write changes back),
# then purges the package (unless --keep). Needs root, dpkg, man-db.
set -euo pipefail
cd "$(dirname "$0")/.."
keep=${1:-}
[ "$(id -u)" = 0 ] || { echo "test-package.sh: run as root (dpkg -i)" >&2; exit 1; }
for t in dpkg dpkg-deb man; do type -P "$t" >/dev/null || { echo "test-package.sh: $t is missing" >&2; exit 1; }; done

deb=$(bash scripts/package.sh | tail -1)
echo "== $deb"
dpkg-deb -I "$deb"
contents=$(dpkg-deb -c "$deb")
echo "$contents"
for f in ./usr/bin/lunard ./usr/bin/lunarctl ./etc/lunar/lunard.toml \
         ./usr/lib/systemd/system/lunard.service \
         ./usr/share/man/man8/lunard.8.gz ./usr/share/man/man8/lunarctl.8.gz \
         ./usr/share/man/man8/lunarctl-lun-add.8.gz ./usr/share/man/man8/lunarctl-top.8.gz \
         ./usr/share/man/man8/lunarctl-chap-set.8.gz ./usr/share/man/man8/lunarctl-target-add.8.gz \
         ./usr/share/man/man8/lunarctl-acl-add.8.gz ./usr/share/man/man8/lunarctl-portal-add.8.gz \
         ./usr/share/bash-completion/completions/lunarctl \
         ./usr/share/zsh/vendor-completions/_lunarctl \
         ./usr/share/fish/vendor_completions.d/lunarctl.fish; do
    grep -q " $f\$" <<<"$contents" || { echo "FAIL: $f is not in the package" >&2; exit 1; }
done
grep -Eq -- '^-rw------- (root/root|0/0) .* ./etc/lunar/lunard.toml$' <<<"$contents" \
    || { echo "FAIL: lunard.toml is not 0600 root" >&2; exit 1; }
ctl=$(mktemp -d); dpkg-deb -e "$deb" "$ctl"
grep -qx /etc/lunar/lunard.toml "$ctl/conffiles" || { echo "FAIL: lunard.toml is not a conffile" >&2; exit 1; }

# Install for real.
work=$(mktemp -d)
cleanup() {
    [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
    if [ "$keep" != --keep ]; then dpkg --purge lunar >/dev/null || true; fi
    rm -rf "$work" "$ctl"
}
trap cleanup EXIT
dpkg -i "$deb"
dpkg -s lunar | grep -q '^Status: install ok installed' || { echo "FAIL: not installed" >&2; exit 1; }
/usr/bin/lunard --version
/usr/bin/lunarctl --version
man -l /usr/share/man/man8/lunard.8.gz 2>/dev/null | grep -q -- '--config <FILE>' || { echo "FAIL: man -l lunard.8" >&2; exit 1; }
man -l /usr/share/man/man8/lunarctl.8.gz 2>/dev/null | grep -q 'Control a running lunard' || { echo "FAIL: man -l lunarctl.8" >&2; exit 1; }
man -l /usr/share/man/man8/lunarctl-chap-set.8.gz 2>/dev/null | grep -q 'standard input' || { echo "FAIL: man -l lunarctl-chap-set.8" >&2; exit 1; }
echo "man -l: lunard.8, lunarctl.8 and lunarctl-chap-set.8 render"
bash -n /usr/share/bash-completion/completions/lunarctl
if type -P systemd-analyze >/dev/null; then systemd-analyze verify /usr/lib/systemd/system/lunard.service; fi

# The installed configuration serves no LUN; a change is written back into it.
cp /etc/lunar/lunard.toml "$work/lunard.toml"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
/usr/bin/lunard --config "$work/lunard.toml" --listen "127.0.0.1:$port" --control "$work/ctl.sock" >"$work/out" 2>"$work/log" &
pid=$!
for _ in $(seq 100); do [ -S "$work/ctl.sock" ] && break; sleep 0.1; done
/usr/bin/lunarctl --control "$work/ctl.sock" --json status | python3 -c '
import json, sys
s = json.load(sys.stdin)
assert [len(t["luns"]) for t in s["targets"]] == [0], s["targets"]
assert s["config"]["persistent"] is True, s["config"]'
/usr/bin/lunarctl --control "$work/ctl.sock" lun add backend=mem,size=1M | grep -q "written to $work/lunard.toml"
grep -q '^backend = "mem"$' "$work/lunard.toml"
grep -q '^# /etc/lunar/lunard.toml' "$work/lunard.toml"
/usr/bin/lunarctl --control "$work/ctl.sock" acl add iqn.1994-05.com.redhat:client | grep -q "written to $work/lunard.toml"
grep -q '^allow-initiators = \["iqn.1994-05.com.redhat:client"\]$' "$work/lunard.toml"
echo "PASS: package built, installed (dpkg -i), man pages read (man -l), default configuration serves no LUN"
