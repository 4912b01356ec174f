#!/usr/bin/env bash
# Tests of the demo proxy (examples/demo_proxy.rs): builds it, runs the official MCP SDK
# client end to end through it (tests/node/run-demo-proxy.sh: oidc-provider AS + SDK
# upstream + the proxy with a decK config), then the example's unit tests. The Rust tests
# that run the binary (tests/demo_proxy.rs) run under plain `cargo test`.
# Needs scripts/install-demo.sh. Every service is started on
# 127.0.0.1 by the tests themselves and stopped by pid.
#
# Debug profile: it reuses what `cargo test` built (CI runs that first), so CI does not
# compile everything a second time in release; scripts/bench-demo.sh uses release.
set -euo pipefail
cd "$(dirname "$0")/.."

export DEMO_PROXY_BIN="$PWD/target/debug/examples/demo_proxy"
cargo build --example demo_proxy

timeout 180 tests/node/run-demo-proxy.sh

# The example's own unit tests (tests/demo_proxy.rs already ran under `cargo test`).
timeout 600 cargo test --example demo_proxy
