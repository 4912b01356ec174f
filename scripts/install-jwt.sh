#!/usr/bin/env bash
# Installs what scripts/test-jwt.sh needs beyond the Rust toolchain: the Node test harness
# (oidc-provider, the real authorization server of tests/jwt_real_as.rs). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v node >/dev/null || { echo "install-jwt: node (20+) is required" >&2; exit 1; }
if [ ! -d tests/node/node_modules/oidc-provider ]; then
    npm ci --prefix tests/node --no-audit --no-fund
fi
echo "install-jwt: ok"
