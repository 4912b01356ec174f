#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo-fuzz, libFuzzer, AddressSanitizer): runs every target of
# fuzz/ for SECONDS seconds each (default 30) on a scratch copy of its committed seed corpus
# (fuzz/corpus/<target>/; new inputs stay out of git), then prints the executions per target.
# Exits non-zero if any target crashed (a panic, a failed property assertion, a sanitizer
# report) and says where libFuzzer wrote the crashing input (fuzz/artifacts/<target>/).
# Reproduce one: cargo +nightly fuzz run <target> fuzz/artifacts/<target>/<file>
# Needs the nightly toolchain; installs cargo-fuzz when missing. docs/fuzzing.md explains.
#   scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

SECS=${1:-30}
shift || true
case "$SECS" in '' | *[!0-9]*) echo "usage: scripts/fuzz.sh [SECONDS] [TARGET...]" >&2; exit 2 ;; esac

if ! rustup run nightly rustc -V >/dev/null 2>&1; then
  echo "fuzz.sh: the nightly toolchain is missing (cargo-fuzz needs it): rustup toolchain install nightly" >&2
  exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz"
  cargo install cargo-fuzz --locked --quiet
fi

cd fuzz
if [ $# -gt 0 ]; then TARGETS=("$@"); else mapfile -t TARGETS < <(cargo +nightly fuzz list); fi

echo "== building ${#TARGETS[@]} fuzz targets (nightly, ASan)"
if [ $# -gt 0 ]; then
  for t in "${TARGETS[@]}"; do cargo +nightly fuzz build "$t"; done
else
  cargo +nightly fuzz build
fi

SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT
failed=()
summary=()
for t in "${TARGETS[@]}"; do
  mkdir -p "$SCRATCH/corpus/$t"
  if [ -d "corpus/$t" ]; then cp -a "corpus/$t/." "$SCRATCH/corpus/$t/"; fi
  log="$SCRATCH/$t.log"
  echo "== fuzz $t for ${SECS}s"
  set +e
  cargo +nightly fuzz run "$t" "$SCRATCH/corpus/$t" -- \
    -max_total_time="$SECS" -timeout=10 -print_final_stats=1 >"$log" 2>&1
  rc=$?
  set -e
  runs=$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\).*/\1/p' "$log" | tail -n1)
  [ -n "$runs" ] || runs=$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$log" | tail -n1)
  [ -n "$runs" ] || runs=$(grep -o '^#[0-9]*' "$log" | tail -n1 | tr -d '#')
  rate=$(grep -o 'exec/s: [0-9]*' "$log" | tail -n1 | awk '{print $2}')
  if [ "$rc" -ne 0 ]; then
    artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n1)
    grep -E 'panicked at|ERROR: AddressSanitizer|ERROR: libFuzzer|SUMMARY' "$log" | head -n 5 || true
    tail -n 20 "$log" | grep -v '^$' | tail -n 8
    echo "CRASH in $t (exit $rc); input: ${artifact:-see the log above}"
    echo "  reproduce: cargo +nightly fuzz run $t ${artifact:-fuzz/artifacts/$t/<file>}"
    failed+=("$t")
    summary+=("$(printf '%-16s %12s runs  %8s exec/s  CRASH' "$t" "${runs:-?}" "${rate:-?}")")
  else
    summary+=("$(printf '%-16s %12s runs  %8s exec/s  ok' "$t" "${runs:-?}" "${rate:-?}")")
  fi
done

echo "== fuzz summary (${SECS}s per target)"
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED: ${failed[*]} (crashing inputs under $ROOT/fuzz/artifacts/)"
  exit 1
fi
echo "no crashes"
