#!/usr/bin/env bash
# Installs what the demo proxy's tests and benchmark need (idempotent):
#   curl  the banner's commands are curl commands, and the tests run them as printed
#   wrk   scripts/bench-demo.sh (requests/s and p99 through the proxy vs direct)
#   redis-server  the cluster-cache tests (demo/tests/operations.rs) start their own
#   openssl       the mutual-TLS tests (demo/tests/client_auth.rs) make their certificates
#   npm packages of tests/node (oidc-provider, the official MCP SDK), from the lockfile
# Rust crates come from Cargo.lock when scripts/test-demo.sh builds.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
for cmd_pkg in curl:curl wrk:wrk timeout:coreutils redis-server:redis-server openssl:openssl; do
  command -v "${cmd_pkg%%:*}" >/dev/null 2>&1 || missing+=("${cmd_pkg##*:}")
done
if ((${#missing[@]})); then
  SUDO=""
  [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update
  $SUDO apt-get install -y --no-install-recommends "${missing[@]}"
fi

if [[ ! -d tests/node/node_modules/@modelcontextprotocol/sdk || ! -d tests/node/node_modules/oidc-provider ]]; then
  npm ci --prefix tests/node
fi
echo "install-demo: curl, wrk, redis-server, openssl and tests/node packages present"
