#!/usr/bin/env bash
# Load benchmark of the demo proxy: requests/s and p99 latency of an MCP `ping` POST
# through the proxy (one token, so every request is an introspection cache hit) against
# the embedded echo MCP server directly, in one invocation, on 127.0.0.1 only.
# Bounded: two wrk runs of $DURATION each ($ROUNDS times, alternating). Besides requests/s
# it prints the CPU time the demo process (proxy + echo server + AS) spent per request,
# which other load on the machine disturbs much less than throughput.
#
#   scripts/bench-demo.sh                # DURATION=5s THREADS=2 CONNECTIONS=32 ROUNDS=1
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${DURATION:-5s}"
THREADS="${THREADS:-2}"
CONNECTIONS="${CONNECTIONS:-32}"
ROUNDS="${ROUNDS:-1}"
if [[ -n "${DEMO_PROXY_BIN:-}" ]]; then
  BIN="$DEMO_PROXY_BIN"
else
  cargo build --release -p mcp-oauth2-demo
  BIN=target/release/demo_proxy
fi

WORK="$(mktemp -d)"
PID=""
cleanup() {
  [[ -n "$PID" ]] && { kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; }
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

# The request log (one line per request) stays on, as in real use; it goes to a file.
"$BIN" --listen 127.0.0.1:0 --as-listen 127.0.0.1:0 --upstream-listen 127.0.0.1:0 \
  >"$WORK/banner" 2>"$WORK/log" &
PID=$!
for _ in $(seq 1 100); do grep -q '^Requests are logged' "$WORK/banner" && break; sleep 0.1; done
PROXY="$(awk '/proxy listening on/{print $4}' "$WORK/banner")/mcp"
ISSUER="$(awk '/auth server/{print $3}' "$WORK/banner")"
UPSTREAM="$(awk '/echo MCP server/{print $4}' "$WORK/banner")"
TOKEN="$(curl -s -u demo-client:demo-secret -d grant_type=client_credentials -d "resource=$PROXY" \
  "$ISSUER/token" | sed -E 's/.*"access_token":"([^"]+)".*/\1/')"

cat >"$WORK/ping.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"jsonrpc":"2.0","id":1,"method":"ping"}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json"
LUA

# Warm the cache (one introspection), and check the proxy really answers 200.
status="$(curl -s -o /dev/null -w '%{http_code}' -X POST "$PROXY" -H "Authorization: Bearer $TOKEN" \
  -H 'Content-Type: application/json' -H 'Accept: application/json' -d '{"jsonrpc":"2.0","id":1,"method":"ping"}')"
[[ "$status" == 200 ]] || { echo "bench-demo: proxy answered $status, not 200" >&2; exit 1; }

TICK="$(getconf CLK_TCK)"
cpu_ticks() { awk '{print $14 + $15}' "/proc/$PID/stat"; }

run() { # name url [header]
  local name=$1 url=$2; shift 2
  local c0 c1 rps p99 errors reqs
  c0="$(cpu_ticks)"
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s "$WORK/ping.lua" "$@" "$url" >"$WORK/$name.txt"
  c1="$(cpu_ticks)"
  rps="$(awk '/^Requests\/sec:/{print $2}' "$WORK/$name.txt")"
  p99="$(awk '$1=="99%"{print $2}' "$WORK/$name.txt")"
  reqs="$(awk '/requests in/{print $1}' "$WORK/$name.txt")"
  errors="$(grep -E 'Non-2xx|Socket errors' "$WORK/$name.txt" || true)"
  cpu="$(awk -v c=$((c1 - c0)) -v t="$TICK" -v r="$reqs" 'BEGIN { printf "%.1f", c * 1e6 / t / r }')"
  printf '%-22s %12s req/s   p99 %10s   %6s us CPU/req   %s\n' "$name" "$rps" "$p99" "$cpu" "$errors"
  echo "$rps" >"$WORK/$name.rps"
  echo "$cpu" >"$WORK/$name.cpu"
}

echo "wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency, POST ping (JSON), 127.0.0.1"
for round in $(seq 1 "$ROUNDS"); do
  run upstream-direct "$UPSTREAM"
  run proxy-cache-hit "$PROXY" -H "Authorization: Bearer $TOKEN"
  awk -v a="$(cat "$WORK/proxy-cache-hit.rps")" -v b="$(cat "$WORK/upstream-direct.rps")" \
    -v ca="$(cat "$WORK/proxy-cache-hit.cpu")" -v cb="$(cat "$WORK/upstream-direct.cpu")" \
    'BEGIN { printf "proxy / direct throughput ratio: %.2f   (CPU per request: %.2fx)\n", a / b, ca / cb }'
done
introspections="$(grep -c ' as .* POST /introspect ' "$WORK/log" || true)"
echo "introspection calls during the run: $introspections (cache hits otherwise)"
