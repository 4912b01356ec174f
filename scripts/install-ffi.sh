#!/usr/bin/env bash
# Installs what scripts/test-ffi.sh needs: gcc, valgrind, Go (cgo), cbindgen (pinned), the
# Node harness (the real oidc-provider AS). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

CBINDGEN_VERSION=0.29.4

need_apt=()
command -v gcc >/dev/null || need_apt+=(gcc libc6-dev)
command -v g++ >/dev/null || need_apt+=(g++)
command -v curl >/dev/null || need_apt+=(curl)
command -v nm >/dev/null || need_apt+=(binutils)
command -v valgrind >/dev/null || need_apt+=(valgrind)
command -v go >/dev/null || need_apt+=(golang-go)
command -v python3 >/dev/null || need_apt+=(python3)
command -v node >/dev/null || need_apt+=(nodejs npm)
if [ ${#need_apt[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need_apt[@]}"
fi

if ! cbindgen --version 2>/dev/null | grep -qx "cbindgen $CBINDGEN_VERSION"; then
    cargo install cbindgen --version "$CBINDGEN_VERSION" --locked
fi

if [ ! -d tests/node/node_modules/oidc-provider ]; then
    npm ci --prefix tests/node --no-audit --no-fund
fi
