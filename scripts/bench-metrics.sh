#!/usr/bin/env bash
# What metrics cost a cache-hit decision: the same loop of cache-hit decisions
# (benches/metrics_cost.rs) built with counting and without (feature _bench-metrics-off,
# never in a release), run in alternation ROUNDS times; prints each run and the median
# difference in ns per decision (issue target: <= 50 ns).
#
#   scripts/bench-metrics.sh            # ROUNDS=7 DECISIONS=5000000
#   MODE=instructions scripts/bench-metrics.sh
#       # instructions per decision with and without counting, under callgrind: exact and
#       # repeatable whatever else the machine runs (a busy 2-core VM blurs the timings
#       # by more than the difference being measured)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${ROUNDS:-7}"
export DECISIONS="${DECISIONS:-5000000}"

build() { # features... -> path of the bench executable
  cargo bench --no-run --bench metrics_cost "$@" --message-format=json 2>/dev/null \
    | sed -n 's/.*"executable":"\([^"]*metrics_cost[^"]*\)".*/\1/p' | tail -1
}
with=$(build)
without=$(build --features _bench-metrics-off)
[ -x "$with" ] && [ -x "$without" ] && [ "$with" != "$without" ] || { echo "bench-metrics: build failed" >&2; exit 1; }

if [ "${MODE:-time}" = instructions ]; then
  command -v valgrind >/dev/null || { echo "bench-metrics: MODE=instructions needs valgrind" >&2; exit 1; }
  count() { # executable decisions -> instructions of the whole run
    DECISIONS=$2 valgrind --tool=callgrind --callgrind-out-file=/dev/null "$1" 2>&1 \
      | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
  }
  per_decision() { # executable -> instructions per decision (two run lengths cancel start-up)
    local short long
    short=$(count "$1" 1000)
    long=$(count "$1" 21000)
    awk -v s="$short" -v l="$long" 'BEGIN { printf "%.1f", (l - s) / 20000 }'
  }
  a=$(per_decision "$with")
  b=$(per_decision "$without")
  echo "instructions per cache-hit decision: with metrics $a, without $b, difference $(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.1f", a - b }')"
  exit 0
fi

diffs=()
for _ in $(seq 1 "$ROUNDS"); do
  a=$("$with");    echo "$a"
  b=$("$without"); echo "$b"
  ns_a=$(sed -E 's/.*: ([0-9.]+) ns.*/\1/' <<<"$a")
  ns_b=$(sed -E 's/.*: ([0-9.]+) ns.*/\1/' <<<"$b")
  diffs+=("$(awk -v a="$ns_a" -v b="$ns_b" 'BEGIN { printf "%.1f", a - b }')")
done
median=$(printf '%s\n' "${diffs[@]}" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')
echo "metrics cost per cache-hit decision: median difference ${median} ns over $ROUNDS alternating pairs (differences: ${diffs[*]})"
