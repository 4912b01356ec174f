#!/usr/bin/env bash
# Tests of the demo proxy (examples/demo_proxy.rs): builds it, runs the official MCP SDK
# client end to end through it (tests/node/run-demo-proxy.sh: oidc-provider AS + SDK
# upstream + the proxy with a decK config), then the Rust tests that run the binary
# (embedded demo: printed commands, 401 → token → 200, SSE, config files, errors) and the
# example's unit tests. Needs scripts/install-demo.sh. Every service is started on
# 127.0.0.1 by the tests themselves and stopped by pid.
set -euo pipefail
cd "$(dirname "$0")/.."

export DEMO_PROXY_BIN="$PWD/target/release/examples/demo_proxy"
cargo build --release --example demo_proxy

timeout 180 tests/node/run-demo-proxy.sh

# Release, so the already-built dependencies are reused; the last line is cargo's summary.
timeout 600 cargo test --release --example demo_proxy --test demo_proxy
