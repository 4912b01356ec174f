#!/usr/bin/env bash
# End-to-end token exchange (RFC 8693) through the demo proxy: the official MCP SDK client
# (mcp-client-exchange.test.mjs) talks only to the proxy, which validates its token at the
# real oidc-provider AS (as-server.mjs), exchanges it at the exchange AS
# (tests/nginx/exchange-as.mjs) for a token meant for the upstream, and forwards with that
# token to mcp-upstream.mjs, which accepts only tokens for its own audience
# (MCP_REQUIRE_AUDIENCE). Then the exchange AS is stopped: a new token gets 503 (never its
# own token forwarded, never 401), while the token whose exchange is cached is still served.
# Everything on 127.0.0.1.
#
#   tests/node/run-demo-proxy-exchange.sh   (needs `npm ci --prefix tests/node` and the
#                                            built proxy: $DEMO_PROXY_BIN, default
#                                            target/release/demo_proxy)
set -euo pipefail
cd "$(dirname "$0")/../.."

BIN="${DEMO_PROXY_BIN:-target/release/demo_proxy}"
if [[ ! -x "$BIN" ]]; then
  echo "run-demo-proxy-exchange: $BIN not found; run: cargo build --release -p mcp-oauth2-demo" >&2
  exit 1
fi
if [[ ! -d tests/node/node_modules/@modelcontextprotocol/sdk ]]; then
  echo "run-demo-proxy-exchange: run: npm ci --prefix tests/node" >&2
  exit 1
fi

WORK="$(mktemp -d)"
PIDS=()
EX_PID=""
cleanup() {
  local status=$?
  for pid in "${PIDS[@]}" $EX_PID; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}" $EX_PID; do wait "$pid" 2>/dev/null || true; done
  if [[ $status -ne 0 ]]; then
    for f in as.log ex.log up.log proxy.log; do
      [[ -f "$WORK/$f" ]] && { echo "---- $f (last 40 lines)" >&2; tail -n 40 "$WORK/$f" >&2; }
    done
  fi
  rm -rf "$WORK"
  exit "$status"
}
trap cleanup EXIT INT TERM

wait_for() {
  for _ in $(seq 1 200); do
    if grep -q "$2" "$1" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "run-demo-proxy-exchange: timed out waiting for '$2' in $1" >&2
  return 1
}

AUDIENCE="urn:mcp-upstream"
node tests/node/as-server.mjs >"$WORK/as.out" 2>"$WORK/as.log" &
PIDS+=($!)
node tests/nginx/exchange-as.mjs >"$WORK/ex.out" 2>"$WORK/ex.log" &
EX_PID=$!
MCP_REQUIRE_AUDIENCE="$AUDIENCE" node tests/node/mcp-upstream.mjs >"$WORK/up.out" 2>"$WORK/up.log" &
PIDS+=($!)
wait_for "$WORK/as.out" '^LISTENING'
wait_for "$WORK/ex.out" '^LISTENING'
wait_for "$WORK/up.out" '^LISTENING'
AS_URL="http://127.0.0.1:$(awk '/^LISTENING/{print $2}' "$WORK/as.out")"
EXCHANGE_URL="http://127.0.0.1:$(awk '/^LISTENING/{print $2}' "$WORK/ex.out")"
UPSTREAM_URL="http://127.0.0.1:$(awk '/^LISTENING/{print $2}' "$WORK/up.out")"
PROXY_PORT="$(node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})')"
PROXY_URL="http://127.0.0.1:$PROXY_PORT/mcp"

# The upstream really refuses what is not meant for it: the client's own token.
CLIENT_TOKEN="$(curl -sf -u mcp-client:mcp-client-secret -d grant_type=client_credentials \
  --data-urlencode "resource=$PROXY_URL" -d 'scope=mcp:read mcp:write' "$AS_URL/token" \
  | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).access_token))')"
PING='{"jsonrpc":"2.0","id":1,"method":"ping"}'
MCP_HEADERS=(-H 'Content-Type: application/json' -H 'Accept: application/json, text/event-stream')
status="$(curl -s -o /dev/null -w '%{http_code}' -X POST "$UPSTREAM_URL/mcp" "${MCP_HEADERS[@]}" \
  -H "Authorization: Bearer $CLIENT_TOKEN" -d "$PING")"
[[ "$status" == 401 ]] || { echo "run-demo-proxy-exchange: the upstream accepted the client's token ($status)" >&2; exit 1; }

cat >"$WORK/exchange.json" <<JSON
{
  "resource": "$PROXY_URL",
  "authorization_servers": ["$AS_URL"],
  "introspection_endpoint": "$AS_URL/token/introspection",
  "client_id": "gateway",
  "client_secret": "gateway-secret",
  "scopes_supported": ["mcp:read", "mcp:write"],
  "passthrough_credentials": true,
  "claim_to_header": [{"claim": "sub", "header": "X-Sub"}],
  "token_exchange": {
    "enabled": true,
    "token_endpoint": "$EXCHANGE_URL/token",
    "client_auth": "client_secret_basic",
    "client_id": "exchanger",
    "client_secret": "exchanger-secret",
    "request": {"audience": ["$AUDIENCE"]}
  }
}
JSON
"$BIN" --config "$WORK/exchange.json" --upstream "$UPSTREAM_URL" --listen "127.0.0.1:$PROXY_PORT" \
  >"$WORK/proxy.out" 2>"$WORK/proxy.log" &
PIDS+=($!)
wait_for "$WORK/proxy.out" '^  proxy listening on'

echo "AS $AS_URL, exchange AS $EXCHANGE_URL, upstream $UPSTREAM_URL (audience $AUDIENCE), proxy $PROXY_URL"
PROXY_URL="$PROXY_URL" UPSTREAM_URL="$UPSTREAM_URL" AS_URL="$AS_URL" EXCHANGE_URL="$EXCHANGE_URL" \
  EXPECT_AUDIENCE="$AUDIENCE" timeout 120 node --test tests/node/mcp-client-exchange.test.mjs

# The token obtained above through the proxy: exchanged once, then served from the cache.
status="$(curl -s -o /dev/null -w '%{http_code}' -X POST "$PROXY_URL" "${MCP_HEADERS[@]}" \
  -H "Authorization: Bearer $CLIENT_TOKEN" -d "$PING")"
[[ "$status" == 200 ]] || { echo "run-demo-proxy-exchange: expected 200, got $status" >&2; exit 1; }

# The exchange AS goes away: a new token cannot be exchanged → 503, never forwarded.
kill "$EX_PID"
wait "$EX_PID" 2>/dev/null || true
EX_PID=""
NEW_TOKEN="$(curl -sf -u mcp-client:mcp-client-secret -d grant_type=client_credentials \
  --data-urlencode "resource=$PROXY_URL" -d 'scope=mcp:read mcp:write' "$AS_URL/token" \
  | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).access_token))')"
seen_before="$(curl -sf "$UPSTREAM_URL/__headers" | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).length))')"
status="$(curl -s -o "$WORK/503.json" -w '%{http_code}' -X POST "$PROXY_URL" "${MCP_HEADERS[@]}" \
  -H "Authorization: Bearer $NEW_TOKEN" -d "$PING")"
[[ "$status" == 503 ]] || { echo "run-demo-proxy-exchange: exchange AS down: expected 503, got $status" >&2; exit 1; }
seen_after="$(curl -sf "$UPSTREAM_URL/__headers" | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).length))')"
[[ "$seen_after" == "$seen_before" ]] || { echo "run-demo-proxy-exchange: a request reached the upstream without an exchange" >&2; exit 1; }
status="$(curl -s -o /dev/null -w '%{http_code}' -X POST "$PROXY_URL" "${MCP_HEADERS[@]}" \
  -H "Authorization: Bearer $CLIENT_TOKEN" -d "$PING")"
[[ "$status" == 200 ]] || { echo "run-demo-proxy-exchange: cached exchange: expected 200, got $status" >&2; exit 1; }
echo "run-demo-proxy-exchange: exchange AS down → 503 ($(cat "$WORK/503.json")); cached exchange still 200"

grep -q ' proxy .* POST /mcp 503 authorization_server_unavailable' "$WORK/proxy.log"
if grep -Eq "gateway-secret|exchanger-secret|mcp-client-secret|Bearer |$CLIENT_TOKEN|$NEW_TOKEN" "$WORK/proxy.log"; then
  echo "run-demo-proxy-exchange: a secret or token reached the proxy log" >&2
  exit 1
fi
echo "run-demo-proxy-exchange: ok"
