#!/usr/bin/env bash
# wrk benchmark of resty.mcp_oauth2 in a real nginx (127.0.0.1 only, bounded in time).
# Scenarios, interleaved over ROUNDS rounds (one nginx worker pinned to CPU 0, wrk on CPU 1):
#   (a) proxying, no access handler
#   (b) a no-op access_by_lua_block that sets one header (the floor of any Lua handler)
#   (c) the module on cache hits, one claim header (the core's metrics are always counted)
#   (d) every request introspected against a fast local AS: no cache, and a new token per
#       request (unique-token.lua), so no request shares another's AS call
#   (e) the floor of (d): a Lua access handler making the same subrequest to the same AS,
#       without the module (what ngx.location.capture + the AS round trip cost by themselves)
#   (f) (c) plus the body filter that ends streams when their token ends
# Prints per-scenario median req/s, p99 and ratios to (a), and the µs per request (c) adds
# over (b), two ways: from throughput (1e6/rps_c - 1e6/rps_b, one saturated worker) and
# from the worker's own CPU time per request (/proc/PID/schedstat), which other load on a
# shared machine disturbs much less.
#   ROUNDS=5 DURATION=3 CONNECTIONS=32 bash benches/nginx/bench.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-3}
CONNECTIONS=${CONNECTIONS:-32}

cargo build --release -p mcp-oauth2-lua --features module
cp target/release/libmcp_oauth2_lua.so lua/mcp_oauth2.so

echo "== native module, outside nginx"
luajit -e 'package.path = "lua/?.lua;" .. package.path; package.cpath = "lua/?.so;" .. package.cpath' benches/nginx/native.lua
echo "== nginx + wrk"

RUN=$(mktemp -d /tmp/mcp-oauth2-bench.XXXXXX)
cleanup() {
  if [ -f "$RUN/logs/nginx.pid" ]; then kill "$(cat "$RUN/logs/nginx.pid")" 2>/dev/null || true; fi
  sleep 0.2
  rm -rf "$RUN"
}
trap cleanup EXIT
mkdir -p "$RUN/lua" "$RUN/conf" "$RUN/logs" "$RUN/tmp"
cp -r lua/resty lua/mcp_oauth2.so "$RUN/lua/"
free_port() { node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'; }
PORT=$(free_port); UP=$(free_port); ASPORT=$(free_port)
sed -e "s#@RUN@#$RUN#g" -e "s#@PORT@#$PORT#g" -e "s#@UP@#$UP#g" -e "s#@ASPORT@#$ASPORT#g" \
  benches/nginx/nginx.conf.template >"$RUN/conf/nginx.conf"
chmod -R a+rX "$RUN"
nginx -p "$RUN" -c conf/nginx.conf
for _ in $(seq 1 50); do [ -s "$RUN/logs/nginx.pid" ] && break; sleep 0.1; done

BASE="http://127.0.0.1:$PORT"
AUTH="Authorization: Bearer bench-token-0123456789abcdefghijklmnopqrstuvwxyz"
check() { # path expected-status
  local got; got=$(curl -s -o /dev/null -w '%{http_code}' -H "$AUTH" "$BASE$1")
  [ "$got" = "$2" ] || { echo "sanity check failed: $1 -> $got (want $2)"; tail -5 "$RUN/logs/error.log"; exit 1; }
}
check /a/mcp 200; check /b/mcp 200; check /mcp 200; check /d/mcp 200; check /e/mcp 200; check /f/mcp 200
curl -s -o /dev/null -w '' "$BASE/mcp" # (no token) warms the 401 path too

# In-worker loop of the (b) and (c) handler bodies (best of 5 runs each).
LOOP=$(curl -s -H "$AUTH" "$BASE/loop?n=200000")
echo "in-worker loop, µs per call (best of 5): $LOOP"
echo "$LOOP" | awk '{printf "(c) over (b), in-worker loop: %.2f µs added per request (target <= 1.5)\n", $4 - $2}' >"$RUN/loop.txt"

WORKER=$(pgrep -P "$(cat "$RUN/logs/nginx.pid")" | head -1)
cpu_ns() { awk '{print $1}' "/proc/$WORKER/schedstat"; }
WRK="wrk"
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then WRK="taskset -c 1 wrk"; fi
declare -A PATHS=([a]=/a/mcp [b]=/b/mcp [c]=/mcp [d]=/d/mcp [e]=/e/mcp [f]=/f/mcp)
OUT="$RUN/results.txt"; : >"$OUT"
# Warm-up (JIT, connection pools).
run_wrk() { # scenario duration [extra wrk args...]
  local s=$1 d=$2; shift 2
  if [ "$s" = d ] || [ "$s" = e ]; then
    $WRK -t1 -c"$CONNECTIONS" -d"$d" "$@" -s benches/nginx/unique-token.lua "$BASE${PATHS[$s]}"
  else
    $WRK -t1 -c"$CONNECTIONS" -d"$d" "$@" -H "$AUTH" "$BASE${PATHS[$s]}"
  fi
}
for s in a b c d e f; do run_wrk "$s" 1s >/dev/null; done
for r in $(seq 1 "$ROUNDS"); do
  for s in a b c d e f; do
    calls0=$(curl -s "$BASE/as_calls")
    t0=$(cpu_ns)
    res=$(run_wrk "$s" "${DURATION}s" --latency)
    t1=$(cpu_ns)
    reqs=$(awk '/requests in/{print $1}' <<<"$res")
    if [ "$s" = d ]; then
      calls=$(( $(curl -s "$BASE/as_calls") - calls0 ))
      # Every completed request was introspected (in-flight ones at the end may add a few).
      [ "$calls" -ge "$reqs" ] || { echo "scenario d: $calls AS calls for $reqs requests"; exit 1; }
    fi
    cpu_us=$(awk -v a="$t0" -v b="$t1" -v n="$reqs" 'BEGIN{printf "%.3f", (b-a)/1000/n}')
    rps=$(awk '/^Requests\/sec:/{print $2}' <<<"$res")
    p99=$(awk '$1=="99%"{print $2}' <<<"$res")
    non2xx=$(awk '/Non-2xx/{print $NF}' <<<"$res")
    [ -z "$non2xx" ] || { echo "scenario $s: $non2xx non-2xx responses"; exit 1; }
    echo "$s $r $rps $p99 $cpu_us" >>"$OUT"
    echo "round $r ($s): $rps req/s, p99 $p99, worker CPU $cpu_us µs/request"
  done
done

node - "$OUT" <<'JS'
const lines = require('fs').readFileSync(process.argv[2], 'utf8').trim().split('\n').map((l) => l.split(' '));
const ms = (v) => v.endsWith('us') ? parseFloat(v) / 1000 : v.endsWith('ms') ? parseFloat(v) : parseFloat(v) * 1000;
const median = (xs) => { const s = [...xs].sort((a, b) => a - b); const m = s.length >> 1; return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2; };
const by = {};
for (const [s, , rps, p99, cpu] of lines) {
  by[s] ??= { rps: [], p99: [], cpu: [] };
  by[s].rps.push(+rps); by[s].p99.push(ms(p99)); by[s].cpu.push(+cpu);
}
const names = { a: 'proxy, no access handler', b: 'no-op access_by_lua (1 header)', c: 'mcp_oauth2, cache hit, 1 claim header', d: 'mcp_oauth2, introspect every request', e: 'capture to the AS only (floor of d)', f: '(c) + the stream body filter' };
const a = median(by.a.rps);
console.log('\nscenario                                   req/s (median)   p99 ms   ratio to (a)   worker CPU µs/req');
for (const s of ['a', 'b', 'c', 'd', 'e', 'f']) {
  const r = median(by[s].rps);
  console.log(`(${s}) ${names[s].padEnd(38)} ${r.toFixed(0).padStart(12)} ${median(by[s].p99).toFixed(2).padStart(8)}   ${(r / a).toFixed(3).padStart(12)}   ${median(by[s].cpu).toFixed(2).padStart(10)}`);
}
// Paired per round (b and c run back to back), then the median: robust to load drifting
// between rounds on a shared machine.
const pairedCpu = by.b.cpu.map((cb, i) => by.c.cpu[i] - cb);
const pairedRps = by.b.rps.map((rb, i) => 1e6 / by.c.rps[i] - 1e6 / rb);
console.log(`\n(c) over (b), worker CPU time: ${median(pairedCpu).toFixed(2)} µs added per request (median of rounds; target <= 1.5)`);
console.log(`  per round: ${pairedCpu.map((x) => x.toFixed(2)).join(' ')}`);
console.log(`(c) over (b), from throughput: ${median(pairedRps).toFixed(2)} µs added per request (median of rounds; meaningful only if the worker is saturated)`);
console.log(`  per round: ${pairedRps.map((x) => x.toFixed(2)).join(' ')}`);
console.log(`(b) over (a), worker CPU time: ${median(by.a.cpu.map((ca, i) => by.b.cpu[i] - ca)).toFixed(2)} µs; (d) over (b): ${median(by.b.cpu.map((cb, i) => by.d.cpu[i] - cb)).toFixed(2)} µs`);
const eOverB = median(by.b.cpu.map((cb, i) => by.e.cpu[i] - cb));
const dOverE = median(by.e.cpu.map((ce, i) => by.d.cpu[i] - ce));
console.log(`(e) over (b), worker CPU time: ${eOverB.toFixed(2)} µs (the subrequest and the AS round trip); (d) over (e): ${dOverE.toFixed(2)} µs (the module, its subrequest location and the uncached decision)`);
console.log(`(f) over (c), worker CPU time: ${median(by.c.cpu.map((cc, i) => by.f.cpu[i] - cc)).toFixed(2)} µs (the body filter that ends streams)`);
console.log(`(d)/(a) from worker CPU time: ${(median(by.a.cpu) / median(by.d.cpu)).toFixed(3)} (target >= 0.30; the throughput ratio above is noisier)`);
JS
cat "$RUN/loop.txt"
