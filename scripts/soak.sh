#!/usr/bin/env bash
# Soak / flood of both gateways (issue 13, "Flood and soak"): prints figures, asserts no
# timings. Everything runs on 127.0.0.1 and is stopped by pid on exit (also on Ctrl-C).
#
#   scripts/soak.sh [MINUTES]        (default 5)
#
# Starts two oidc-provider AS instances (tests/node/as-server.mjs; one per gateway, so each
# gateway's introspections are counted apart), an upstream (scripts/soak/upstream.mjs),
# nginx with 2 workers and the real module (scripts/soak/nginx.conf.template) and the demo
# proxy (release builds), mints a pool of valid tokens per gateway, then drives each gateway
# for a minute in turn (nginx, demo, nginx, ...), as fast as it answers, with wrk
# (scripts/soak/traffic.lua): PRM requests, malformed Authorization headers, and bearer
# tokens of which 90 % are invalid (random, at most SOAK_POOL distinct ones per
# negative-cache window) and 10 % valid (from the pool). After every minute it prints, per
# gateway: requests, statuses per kind of request, AS calls against the distinct tokens
# sent, RSS of every process, the gateway's CPU per request, nginx's shared zone. At the
# end: PASS/FAIL lines (scripts/soak/report.py); exit 1 on any FAIL. A run takes 2 x MINUTES
# minutes of load (each gateway gets MINUTES) plus the setup. See docs/soak.md.
#
# Knobs (environment):
#   SOAK_CONNECTIONS=8     wrk connections per gateway (one per wrk thread)
#   SOAK_POOL=500          distinct invalid tokens per negative-cache window; 0 = every
#                          invalid token new (pure flood: one AS call per invalid request)
#   SOAK_NEG_TTL=5         cache_ttl_negative of both gateways (seconds) = the window
#   SOAK_VALID_POOL=100    valid tokens minted per gateway
#   SOAK_VALID_PCT=10  SOAK_PRM_PCT=5  SOAK_MALFORMED_PCT=5
#   SOAK_MINUTE_SECONDS=60 length of a "minute" (shorter only to try the script out)
#   SOAK_GATEWAYS="nginx demo"  the gateways to drive (both always run)
#   SOAK_PARALLEL=1        drive both at once in each minute (default: nginx's minute, then
#                          the demo's: on 2 cores the demo's threads otherwise starve nginx's
#                          2 single-threaded workers and the rates say little)
#   SOAK_SKIP_INSTALL=1    do not run the installers; SOAK_SKIP_BUILD=1 do not run cargo
#   KEEP_RUN=1             keep the run directory (logs, wrk output, samples)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

MINUTES="${1:-5}"
[[ "$MINUTES" =~ ^[1-9][0-9]*$ ]] || { echo "usage: scripts/soak.sh [MINUTES]   (a positive integer)" >&2; exit 2; }
CONNECTIONS="${SOAK_CONNECTIONS:-8}"
POOL="${SOAK_POOL:-500}"
NEG_TTL="${SOAK_NEG_TTL:-5}"
VALID_POOL="${SOAK_VALID_POOL:-100}"
VALID_PCT="${SOAK_VALID_PCT:-10}"
PRM_PCT="${SOAK_PRM_PCT:-5}"
MALFORMED_PCT="${SOAK_MALFORMED_PCT:-5}"
MINUTE_SECONDS="${SOAK_MINUTE_SECONDS:-60}"
GATEWAYS="${SOAK_GATEWAYS:-nginx demo}"
PARALLEL="${SOAK_PARALLEL:-}"

# ---- 1. install and build ------------------------------------------------------------
if [[ -z "${SOAK_SKIP_INSTALL:-}" ]]; then
  apt_install wrk
  bash scripts/install.sh >/dev/null
fi
command -v wrk >/dev/null || { echo "soak: wrk is missing" >&2; exit 1; }
if [[ -z "${SOAK_SKIP_BUILD:-}" ]]; then
  cargo build --release -p mcp-oauth2-lua --features module
  cargo build --release -p mcp-oauth2-demo
fi
DEMO_BIN="$PWD/target/release/demo_proxy"
LUA_SO="$PWD/target/release/libmcp_oauth2_lua.so"
[[ -x "$DEMO_BIN" && -f "$LUA_SO" ]] || { echo "soak: build products missing" >&2; exit 1; }

# ---- 2. run directory, cleanup ------------------------------------------------------------
RUN="$(mktemp -d /tmp/mcp-oauth2-soak.XXXXXX)"
PIDS=()      # node processes and the demo proxy
WRK_PIDS=()  # the current minute's wrk processes
NGINX_STARTED=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  for p in "${WRK_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  if [[ -n "$NGINX_STARTED" && -s "$RUN/nginx/logs/nginx.pid" ]]; then
    local master
    master="$(cat "$RUN/nginx/logs/nginx.pid")"
    kill "$master" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$master" 2>/dev/null || break; sleep 0.1; done
  fi
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [[ "$rc" -ne 0 ]]; then
    for f in nginx/logs/error.log demo.log as-nginx.log as-demo.log upstream.log; do
      [[ -s "$RUN/$f" ]] && { echo "---- $f (last 15 lines)" >&2; tail -n 15 "$RUN/$f" >&2; }
    done
  fi
  if [[ -n "${KEEP_RUN:-}" ]]; then
    echo "soak: run directory kept: $RUN"
  else
    rm -rf "$RUN"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'echo "soak: interrupted" >&2; exit 130' INT TERM

# nginx workers run as nobody when started as root: what they read is world-readable.
mkdir -p "$RUN/lua" "$RUN/nginx/conf" "$RUN/nginx/logs" "$RUN/nginx/tmp" "$RUN/samples"
cp -r lua/resty "$RUN/lua/"
cp "$LUA_SO" "$RUN/lua/mcp_oauth2.so"
chmod -R a+rX "$RUN"

wait_listening() { # file -> port
  for _ in $(seq 1 200); do
    if grep -q '^LISTENING' "$1" 2>/dev/null; then awk '/^LISTENING/{print $2; exit}' "$1"; return 0; fi
    sleep 0.1
  done
  echo "soak: service did not start: $1" >&2
  return 1
}
free_port() { node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'; }

# ---- 3. services ---------------------------------------------------------------------------
# Tokens must outlive the run (an expired pool token would be a correct 401).
TOKEN_TTL=$((2 * MINUTES * MINUTE_SECONDS + 3600))
AS_TOKEN_TTL=$TOKEN_TTL node tests/node/as-server.mjs >"$RUN/as-nginx.out" 2>"$RUN/as-nginx.log" & PIDS+=($!); AS_NGINX_PID=$!
AS_TOKEN_TTL=$TOKEN_TTL node tests/node/as-server.mjs >"$RUN/as-demo.out" 2>"$RUN/as-demo.log" & PIDS+=($!); AS_DEMO_PID=$!
node scripts/soak/upstream.mjs >"$RUN/upstream.out" 2>"$RUN/upstream.log" & PIDS+=($!); UP_PID=$!
AS_NGINX_PORT="$(wait_listening "$RUN/as-nginx.out")"
AS_DEMO_PORT="$(wait_listening "$RUN/as-demo.out")"
UP_PORT="$(wait_listening "$RUN/upstream.out")"
AS_NGINX="http://127.0.0.1:$AS_NGINX_PORT"
AS_DEMO="http://127.0.0.1:$AS_DEMO_PORT"

NGINX_PORT="$(free_port)"
sed -e "s#@RUN@#$RUN#g" -e "s#@PORT@#$NGINX_PORT#g" -e "s#@AS@#$AS_NGINX#g" -e "s#@AS_PORT@#$AS_NGINX_PORT#g" \
  -e "s#@UP_PORT@#$UP_PORT#g" -e "s#@NEG_TTL@#$NEG_TTL#g" scripts/soak/nginx.conf.template >"$RUN/nginx/conf/nginx.conf"
chmod -R a+rX "$RUN"
nginx -p "$RUN/nginx" -c conf/nginx.conf
NGINX_STARTED=1
for _ in $(seq 1 50); do [[ -s "$RUN/nginx/logs/nginx.pid" ]] && break; sleep 0.1; done
NGINX_MASTER="$(cat "$RUN/nginx/logs/nginx.pid")"

DEMO_PORT="$(free_port)"
cat >"$RUN/demo.json" <<JSON
{
  "resource": "http://127.0.0.1:$DEMO_PORT/mcp",
  "authorization_servers": ["$AS_DEMO"],
  "introspection_endpoint": "$AS_DEMO/token/introspection",
  "client_id": "gateway",
  "client_secret": "gateway-secret",
  "scopes_supported": ["mcp:read", "mcp:write"],
  "claim_to_header": [{"claim": "client_id", "header": "X-Client-Id"}],
  "cache_ttl_negative": $NEG_TTL
}
JSON
# The request log (one line per request) stays on, as in real use, into a file opened for
# appending, which is emptied after every minute (tens of thousands of lines a second).
"$DEMO_BIN" --config "$RUN/demo.json" --upstream "http://127.0.0.1:$UP_PORT" --listen "127.0.0.1:$DEMO_PORT" \
  >"$RUN/demo.out" 2>>"$RUN/demo.log" & PIDS+=($!); DEMO_PID=$!

NGINX_URL="http://127.0.0.1:$NGINX_PORT"
DEMO_URL="http://127.0.0.1:$DEMO_PORT"
for url in "$NGINX_URL" "$DEMO_URL"; do
  for _ in $(seq 1 100); do
    [[ "$(curl -s -o /dev/null -w '%{http_code}' "$url/mcp/.well-known/oauth-protected-resource")" == 200 ]] && break
    sleep 0.1
  done
done

# ---- 4. token pools, and one request of each kind by hand -----------------------------------
mint() { # as-url resource -> a token
  curl -sf -u app:app-secret -d grant_type=client_credentials -d "resource=$2" -d 'scope=mcp:read mcp:write' "$1/token" \
    | sed -E 's/.*"access_token":"([^"]+)".*/\1/'
}
for g in nginx demo; do
  if [[ $g == nginx ]]; then as=$AS_NGINX url=$NGINX_URL; else as=$AS_DEMO url=$DEMO_URL; fi
  : >"$RUN/tokens-$g"
  for _ in $(seq 1 "$VALID_POOL"); do echo "$(mint "$as" "$url/mcp")" >>"$RUN/tokens-$g"; done
  [[ "$(sort -u "$RUN/tokens-$g" | grep -c .)" -eq "$VALID_POOL" ]] || { echo "soak: could not mint $VALID_POOL tokens at $as" >&2; exit 1; }
  tok="$(head -n 1 "$RUN/tokens-$g")"
  check() { # expected-status curl-args...
    local want=$1; shift
    local got
    got="$(curl -s -o /dev/null -w '%{http_code}' "$@")"
    [[ "$got" == "$want" ]] || { echo "soak: $g: expected $want, got $got for: $*" >&2; exit 1; }
  }
  check 200 -X POST "$url/mcp" -H "Authorization: Bearer $tok" -H 'Content-Type: application/json' -d '{"jsonrpc":"2.0","id":1,"method":"ping"}'
  check 401 -X POST "$url/mcp" -H "Authorization: Bearer not-a-token-of-this-as" -H 'Content-Type: application/json' -d '{}'
  check 200 "$url/.well-known/oauth-protected-resource/mcp"
  check 400 -X POST "$url/mcp" -H "Authorization: Bearer" -d '{}'
done
curl -sf -X POST "$AS_NGINX/__test/reset" >/dev/null
curl -sf -X POST "$AS_DEMO/__test/reset" >/dev/null

# ---- 5. the soak -----------------------------------------------------------------------------
PREFIX="$(head -c 15 /dev/urandom | base64 | tr '+/' '-_')"
cat >"$RUN/soak.env" <<ENV
MINUTES=$MINUTES
MINUTE_SECONDS=$MINUTE_SECONDS
CONNECTIONS=$CONNECTIONS
POOL=$POOL
NEG_TTL=$NEG_TTL
VALID_POOL=$VALID_POOL
CLK_TCK=$(getconf CLK_TCK)
GATEWAYS=$GATEWAYS
PARALLEL=$PARALLEL
ENV

# VmRSS, and its anonymous (heap) and shared-memory (nginx's lua_shared_dict zone) parts, in kB.
rss_kb() { awk '/^VmRSS:/{r=$2} /^RssAnon:/{a=$2} /^RssShmem:/{s=$2} END{print r+0, a+0, s+0}' "/proc/$1/status" 2>/dev/null || echo 0 0 0; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
sample() { # file
  {
    echo "time $(date +%s.%N)"
    echo "as nginx $(curl -s "$AS_NGINX/__test/stats" || echo null)"
    echo "as demo $(curl -s "$AS_DEMO/__test/stats" || echo null)"
    echo "rss nginx-master $NGINX_MASTER $(rss_kb "$NGINX_MASTER")"
    for w in $(ps -o pid= --ppid "$NGINX_MASTER" | sort -n); do echo "rss nginx-worker $w $(rss_kb "$w")"; done
    echo "rss demo $DEMO_PID $(rss_kb "$DEMO_PID")"
    echo "rss as-nginx $AS_NGINX_PID $(rss_kb "$AS_NGINX_PID")"
    echo "rss as-demo $AS_DEMO_PID $(rss_kb "$AS_DEMO_PID")"
    echo "rss upstream $UP_PID $(rss_kb "$UP_PID")"
    echo "upstream $(curl -s "http://127.0.0.1:$UP_PORT/__soak/stats" || echo null)"
    echo "shm $(curl -s "$NGINX_URL/__soak/shm" || echo null)"
    # CPU time (user + system, clock ticks) of the gateways' processes.
    for w in "$NGINX_MASTER" $(ps -o pid= --ppid "$NGINX_MASTER"); do echo "cpu nginx $w $(cpu_ticks "$w")"; done
    echo "cpu demo $DEMO_PID $(cpu_ticks "$DEMO_PID")"
    for p in nginx-master:$NGINX_MASTER demo:$DEMO_PID; do
      if kill -0 "${p#*:}" 2>/dev/null; then echo "alive ${p%%:*} ${p#*:} 1"; else echo "alive ${p%%:*} ${p#*:} 0"; fi
    done
  } >"$1"
}

echo "soak: $MINUTES minute(s) of ${MINUTE_SECONDS}s; nginx $NGINX_URL (2 workers, pid $NGINX_MASTER), demo $DEMO_URL (pid $DEMO_PID)"
echo "soak: AS for nginx $AS_NGINX, AS for demo $AS_DEMO, upstream 127.0.0.1:$UP_PORT; wrk -t$CONNECTIONS -c$CONNECTIONS per gateway"
echo "soak: traffic: ${PRM_PCT} % PRM, ${MALFORMED_PCT} % malformed Authorization, the rest bearer tokens:" \
  "${VALID_PCT} % from a pool of $VALID_POOL valid ones, the others invalid" \
  "($( [[ $POOL -gt 0 ]] && echo "at most $POOL distinct per ${NEG_TTL}s negative-cache window" || echo "every one new"))"
sample "$RUN/samples/m0"
for n in $(seq 1 "$MINUTES"); do
  mkdir -p "$RUN/m$n"
  WRK_PIDS=()
  for g in $GATEWAYS; do
    if [[ $g == nginx ]]; then url=$NGINX_URL; else url=$DEMO_URL; fi
    wrk -t"$CONNECTIONS" -c"$CONNECTIONS" -d"${MINUTE_SECONDS}s" --timeout 10s -s scripts/soak/traffic.lua "$url" -- \
      "$RUN/tokens-$g" "$PREFIX" "$POOL" "$NEG_TTL" "$PRM_PCT" "$MALFORMED_PCT" "$VALID_PCT" "$RUN/m$n/$g.out" \
      >"$RUN/m$n/$g.txt" 2>&1 &
    WRK_PIDS+=($!)
    if [[ -z "$PARALLEL" ]]; then wait "$!" || true; WRK_PIDS=(); fi
  done
  for p in "${WRK_PIDS[@]}"; do wait "$p" || true; done
  WRK_PIDS=()
  sample "$RUN/samples/m$n"
  tail -n 20 "$RUN/demo.log" >"$RUN/m$n/demo.log.tail"; : >"$RUN/demo.log"
  python3 scripts/soak/report.py minute "$RUN" "$n"
done

echo
python3 scripts/soak/report.py final "$RUN"
