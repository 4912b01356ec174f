#!/usr/bin/env bash
# The whole test suite: formatting, lints, docs, Rust unit + integration tests (mockito and
# a real oidc-provider AS), then every area's suite (scripts/test-*.sh: C/Go, Lua/nginx,
# demo proxy + MCP SDK client). Installs what is missing first.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install.sh

echo "== cargo fmt / clippy / doc"
cargo fmt --all -- --check
# Every crate of the workspace: the core, the Lua module, the demo proxy.
cargo clippy --workspace --all-targets -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet

echo "== cargo test"
cargo test

for s in scripts/test-*.sh; do
  [ -e "$s" ] || continue
  echo "== $s"
  bash "$s"
done
