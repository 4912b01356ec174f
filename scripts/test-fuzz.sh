#!/usr/bin/env bash
# Coverage-guided fuzzing in the test suite: every fuzz target for 30 s (scripts/fuzz.sh 30)
# when the nightly toolchain cargo-fuzz needs is installed; otherwise says clearly that
# fuzzing was not run, and why, and passes (fuzzing is not in the required path without
# nightly). The regression tests of fuzz findings (tests/fuzz_regressions.rs) run in
# `cargo test` on stable either way.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  echo "FUZZING NOT RUN: no nightly toolchain (rustup toolchain list shows none; cargo-fuzz needs one)."
  echo "  To run it: rustup toolchain install nightly && scripts/fuzz.sh 30"
  exit 0
fi
if ! rustup run nightly rustc -V >/dev/null 2>&1; then
  echo "FUZZING NOT RUN: the nightly toolchain is listed but does not run (rustup run nightly rustc -V failed)."
  exit 0
fi
exec bash scripts/fuzz.sh 30
