#!/usr/bin/env bash
# Local JWT validation (docs/jwt.md): unit tests, integration tests against in-memory and
# mockito servers, and the real oidc-provider AS (started and stopped by the test itself on
# 127.0.0.1, see tests/jwt_real_as.rs). Assumes scripts/install.sh has run (npm ci of tests/node).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -d tests/node/node_modules/oidc-provider ]; then
    echo "test-jwt: tests/node/node_modules is missing; run scripts/install.sh" >&2
    exit 1
fi

# The test binaries spawn `node tests/node/as-server.mjs`; run them in their own process
# group so that an interrupted run leaves no server behind.
setsid timeout 900 bash -c '
    set -euo pipefail
    cargo test --lib -- jwt jwks discovery
    cargo test --test jwt --test jwt_real_as
' &
group=$!
trap 'kill -- "-$group" 2>/dev/null || true' EXIT INT TERM
wait "$group"
