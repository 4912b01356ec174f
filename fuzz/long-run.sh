#!/usr/bin/env bash
# The long fuzz run: every target of fuzz/ to RUNS executions (default 10,000,000:
# `-runs=RUNS`), all at once, each under `nice -n 19`, each logging to
# $LOGDIR/<target>.log (default fuzz/long-run-logs/, not in git) on a scratch copy of its
# seed corpus ($LOGDIR/corpus/<target>/). Crashing inputs go to fuzz/artifacts/<target>/.
#   fuzz/long-run.sh [RUNS] [TARGET...]     start (in the foreground; use nohup … & to detach)
#   fuzz/long-run.sh status                 executions reached so far, exec/s, crashes
# docs/fuzzing.md records the figures of the documented run.
set -euo pipefail
cd "$(dirname "$0")"
LOGDIR=${LOGDIR:-$PWD/long-run-logs}

status() {
  printf '%-16s %12s %9s %10s  %s\n' target executions exec/s elapsed state
  for log in "$LOGDIR"/*.log; do
    [ -e "$log" ] || continue
    local t runs rate secs state
    t=$(basename "$log" .log)
    # libFuzzer progress lines: "#1234567	pulse  cov: … exec/s: 2345 rss: …"; the final
    # "Done N runs in S second(s)" when the run completed.
    runs=$(grep -ao '^#[0-9]*' "$log" | tail -n1 | tr -d '#' || true)
    rate=$(grep -ao 'exec/s: [0-9]*' "$log" | tail -n1 | awk '{print $2}' || true)
    secs=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -n1 || true)
    if grep -aq 'Test unit written to\|ERROR: AddressSanitizer\|panicked at' "$log"; then
      state="CRASH: $(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n1)"
    elif grep -aq '^Done [0-9]* runs' "$log"; then
      runs=$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$log" | tail -n1)
      state=done
    else
      state=running
    fi
    printf '%-16s %12s %9s %10s  %s\n' "$t" "${runs:-0}" "${rate:-?}" "${secs:+${secs}s}" "$state"
  done
}

if [ "${1:-}" = status ]; then
  status
  exit 0
fi

RUNS=${1:-10000000}
shift || true
if [ $# -gt 0 ]; then TARGETS=("$@"); else mapfile -t TARGETS < <(cargo +nightly fuzz list); fi
mkdir -p "$LOGDIR"
echo "building ${TARGETS[*]}"
nice -n 19 cargo +nightly fuzz build
echo "started $(date -u +%FT%TZ): ${#TARGETS[@]} targets to $RUNS runs each; logs in $LOGDIR" | tee "$LOGDIR/started"
pids=()
for t in "${TARGETS[@]}"; do
  mkdir -p "$LOGDIR/corpus/$t"
  cp -a "corpus/$t/." "$LOGDIR/corpus/$t/"
  nice -n 19 cargo +nightly fuzz run "$t" "$LOGDIR/corpus/$t" -- \
    -runs="$RUNS" -timeout=10 -print_final_stats=1 >"$LOGDIR/$t.log" 2>&1 &
  pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=1; done
echo "finished $(date -u +%FT%TZ)" | tee -a "$LOGDIR/started"
status
exit $rc
