#!/usr/bin/env bash
# End-to-end: the official MCP SDK client (mcp-client.test.mjs) talks ONLY to the
# demo proxy, which protects mcp-upstream.mjs with a real config (the decK file
# examples/configs/deck-oidc-provider.yaml, values from DECK_* variables) and
# introspects at the real oidc-provider AS (as-server.mjs). Everything on 127.0.0.1.
#
#   tests/node/run-demo-proxy.sh        (from anywhere; needs `npm ci --prefix tests/node`
#                                         and the built proxy, see below)
#
# The proxy binary is $DEMO_PROXY_BIN, default target/release/demo_proxy
# (`cargo build --release -p mcp-oauth2-demo`).
set -euo pipefail
cd "$(dirname "$0")/../.."

BIN="${DEMO_PROXY_BIN:-target/release/demo_proxy}"
if [[ ! -x "$BIN" ]]; then
  echo "run-demo-proxy: $BIN not found; run: cargo build --release -p mcp-oauth2-demo" >&2
  exit 1
fi
if [[ ! -d tests/node/node_modules/@modelcontextprotocol/sdk ]]; then
  echo "run-demo-proxy: run: npm ci --prefix tests/node" >&2
  exit 1
fi

WORK="$(mktemp -d)"
PIDS=()
cleanup() {
  local status=$?
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [[ $status -ne 0 ]]; then
    for f in as.log up.log proxy.log; do
      [[ -f "$WORK/$f" ]] && { echo "---- $f (last 40 lines)" >&2; tail -n 40 "$WORK/$f" >&2; }
    done
  fi
  rm -rf "$WORK"
  exit "$status"
}
trap cleanup EXIT INT TERM

# wait_for FILE PATTERN: until a line matching PATTERN appears in FILE (20 s at most).
wait_for() {
  for _ in $(seq 1 200); do
    if grep -q "$2" "$1" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "run-demo-proxy: timed out waiting for '$2' in $1" >&2
  return 1
}

node tests/node/as-server.mjs >"$WORK/as.out" 2>"$WORK/as.log" &
PIDS+=($!)
node tests/node/mcp-upstream.mjs >"$WORK/up.out" 2>"$WORK/up.log" &
PIDS+=($!)
wait_for "$WORK/as.out" '^LISTENING'
wait_for "$WORK/up.out" '^LISTENING'
AS_URL="http://127.0.0.1:$(awk '/^LISTENING/{print $2}' "$WORK/as.out")"
UPSTREAM_URL="http://127.0.0.1:$(awk '/^LISTENING/{print $2}' "$WORK/up.out")"

# The proxy's resource URL contains its port, so pick a free one first.
PROXY_PORT="$(node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})')"
PROXY_URL="http://127.0.0.1:$PROXY_PORT/mcp"

DECK_MCP_RESOURCE="$PROXY_URL" DECK_AS_URL="$AS_URL" DECK_CLIENT_SECRET=gateway-secret \
  "$BIN" --config examples/configs/deck-oidc-provider.yaml --upstream "$UPSTREAM_URL" \
  --listen "127.0.0.1:$PROXY_PORT" >"$WORK/proxy.out" 2>"$WORK/proxy.log" &
PIDS+=($!)
wait_for "$WORK/proxy.out" '^  proxy listening on'

echo "AS $AS_URL, upstream $UPSTREAM_URL, proxy $PROXY_URL"
PROXY_URL="$PROXY_URL" UPSTREAM_URL="$UPSTREAM_URL" AS_URL="$AS_URL" \
  timeout 120 node --test tests/node/mcp-client.test.mjs

# The proxy logged the SDK's requests, one line each, and no secret.
grep -q ' proxy .* POST /mcp 401 no_credentials' "$WORK/proxy.log"
grep -q ' proxy .* POST /mcp 200 allowed' "$WORK/proxy.log"
if grep -Eq 'gateway-secret|mcp-client-secret|Bearer ' "$WORK/proxy.log"; then
  echo "run-demo-proxy: a secret or token reached the proxy log" >&2
  exit 1
fi
echo "run-demo-proxy: proxy log has $(wc -l <"$WORK/proxy.log") request lines, no secrets"
