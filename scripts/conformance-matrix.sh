#!/usr/bin/env bash
# iscsi-test-cu against each configuration of lunard that issue 4 names,
# one scripts/conformance.sh run per configuration:
#
#   thin       a thin provisioned `file` LUN (holes of a sparse file)
#   readonly   a read-only RAM LUN
#   removable  a removable RAM LUN
#   twoluns    two RAM LUNs on one target (EXTENDED COPY between them)
#
#   bash scripts/conformance-matrix.sh [SHARED_DIR] [CONFIG...]
#
# Each configuration has its own list of known failures,
# tests/conformance/known-failures-<config>.txt (one "<Suite.Test> <reason>"
# a line), handed to conformance.sh as KNOWN_FAILURES. Prints a table of the
# closing lines and the number of tests that passed in at least one
# configuration; the per-test results stay in target/conformance-matrix/.
# Fails if any configuration failed (a failure not listed, or a listed one
# that passes). CONFORMANCE overrides the script run for each configuration.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
shared="${1:-$root/../shared}"
shift || true
conformance="${CONFORMANCE:-$root/scripts/conformance.sh}"
out="$root/target/conformance-matrix"
mkdir -p "$out"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

all_configs=(thin readonly removable twoluns)
configs=("$@")
[ $# -eq 0 ] && configs=("${all_configs[@]}")

lun_args() {
  case "$1" in
    thin) echo "--lun backend=file,path=$scratch/thin.img,size=1G,thin=on" ;;
    readonly) echo "--lun backend=mem,size=1G,readonly=on" ;;
    removable) echo "--lun backend=mem,size=1G,removable=on" ;;
    twoluns) echo "--lun backend=mem,size=1G --lun backend=mem,size=1G" ;;
    *) echo "unknown configuration: $1" >&2; return 1 ;;
  esac
}

status=0
declare -A closing verdict
for c in "${configs[@]}"; do
  args=$(lun_args "$c")
  rm -f "$scratch"/*.img
  conf_dir="${CONF_OUT:-$root/target/conformance}"
  rm -f "$conf_dir/tests.txt" # a run that breaks off must not leave the last one's results
  echo "== $c: lunard $args"
  # shellcheck disable=SC2086 # the LUN arguments are words on purpose
  if KNOWN_FAILURES="$root/tests/conformance/known-failures-$c.txt" \
    bash "$conformance" "$shared" -- $args | tee "$out/$c.out"; then
    verdict[$c]=ok
  else
    verdict[$c]=FAILED
    status=1
  fi
  cp "$conf_dir/tests.txt" "$out/$c.tests.txt" 2>/dev/null || : >"$out/$c.tests.txt"
  closing[$c]=$(tail -n 1 "$out/$c.tests.txt")
done

echo
printf '%-10s  %-44s  %s\n' configuration "closing line" verdict
for c in "${configs[@]}"; do
  printf '%-10s  %-44s  %s\n' "$c" "${closing[$c]}" "${verdict[$c]}"
done
union=$(for c in "${configs[@]}"; do awk '$1=="passed"{print $2}' "$out/$c.tests.txt"; done | sort -u | wc -l)
tests=$(for c in "${configs[@]}"; do awk '$1~/^(passed|failed|skipped)$/{print $2}' "$out/$c.tests.txt"; done | sort -u | wc -l)
echo "union: $union of $tests tests passed in at least one configuration"
exit $status
