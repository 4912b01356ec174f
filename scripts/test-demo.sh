#!/usr/bin/env bash
# Tests of the demo proxy (the `mcp-oauth2-demo` crate in demo/): builds it and runs the
# official MCP SDK client end to end through it (tests/node/run-demo-proxy.sh:
# oidc-provider AS + SDK upstream + the proxy with a decK config;
# tests/node/run-demo-proxy-exchange.sh: the same with token exchange at
# tests/nginx/exchange-as.mjs and an upstream that accepts only the exchanged token). The
# crate's Rust tests (its unit tests, demo/tests/demo_proxy.rs and demo/tests/operations.rs,
# which run the binary; the latter with redis-server and oidc-provider) run under plain
# `cargo test` at the root (the crate is a default workspace member), or alone with
# `cargo test -p mcp-oauth2-demo`.
# Needs scripts/install-demo.sh (and redis-server for demo/tests/operations.rs). Every
# service is started on 127.0.0.1 by the tests themselves and stopped by pid.
#
# Debug profile: it reuses the dependencies `cargo test` built (CI runs that first), so CI
# does not compile everything a second time in release (only the core, without its
# default features, and this crate are compiled again: seconds); scripts/bench-demo.sh
# uses release.
set -euo pipefail
cd "$(dirname "$0")/.."

export DEMO_PROXY_BIN="$PWD/target/debug/demo_proxy"
cargo build -p mcp-oauth2-demo

timeout 180 tests/node/run-demo-proxy.sh
timeout 180 tests/node/run-demo-proxy-exchange.sh
