#!/usr/bin/env bash
# The C ABI, checked the way C and Go hosts use it:
#   1. include/mcp_oauth2.h is what cbindgen 0.29.4 generates from src/ffi/ (no drift);
#   2. libmcp_oauth2.so and libmcp_oauth2.a build; the .so exports only mcp_oauth2_*;
#      the shipped build contains no test panic trigger;
#   3. C11 programs (-Wall -Wextra -Werror -pedantic) under ASan+UBSan and under valgrind:
#      the API test, the panic test, the blocking flow against the real oidc-provider AS,
#      and the C example of docs/c-and-go.md exactly as printed there;
#   4. the Go (cgo) module against the static library, under `go test -race`.
# Needs scripts/install-ffi.sh. Starts the AS on 127.0.0.1 and stops it by pid on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

OUT=target/ffi-tests
mkdir -p "$OUT"
WORK=$(mktemp -d)
AS_PID=
cleanup() {
    if [ -n "$AS_PID" ]; then kill "$AS_PID" 2>/dev/null || true; wait "$AS_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

step() { printf '\n== %s\n' "$*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
PASSED=0
pass() { PASSED=$((PASSED + 1)); echo "ok: $*"; }

CFLAGS=(-std=c11 -Wall -Wextra -Werror -pedantic -g -Iinclude -Iffi-tests/c)
SAN=(-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer)
LIBS=(-lpthread -ldl -lm)
# Every run is bounded in time; valgrind is ~50x slower than native.
VALGRIND=(timeout 600 valgrind -q --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite,indirect
          --show-leak-kinds=definite,indirect)
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

step "header drift (cbindgen $(cbindgen --version | awk '{print $2}'))"
[ "$(cbindgen --version)" = 'cbindgen 0.29.4' ] || fail "cbindgen 0.29.4 required (scripts/install-ffi.sh)"
cbindgen -q --config cbindgen.toml --output "$WORK/mcp_oauth2.h"
if ! diff -u include/mcp_oauth2.h "$WORK/mcp_oauth2.h"; then
    fail "include/mcp_oauth2.h is stale: run cbindgen --config cbindgen.toml --output include/mcp_oauth2.h"
fi
pass "include/mcp_oauth2.h matches the sources"

step "libraries"
# The test-only panic build first, then the shipped features (so target/debug holds those).
cargo build --lib --features ffi-test-panic --quiet
cp target/debug/libmcp_oauth2.a "$OUT/libmcp_oauth2_test_panic.a"
cargo build --lib --quiet
LIB_A=$ROOT/target/debug/libmcp_oauth2.a
LIB_SO=$ROOT/target/debug/libmcp_oauth2.so
[ -f "$LIB_A" ] && [ -f "$LIB_SO" ] || fail "libmcp_oauth2.a / .so not built"
exported=$(nm -D --defined-only "$LIB_SO" | awk '{print $3}')
[ -n "$exported" ] || fail "the .so exports nothing"
others=$(grep -v '^mcp_oauth2_' <<<"$exported" || true)
[ -z "$others" ] || fail "the .so exports symbols outside mcp_oauth2_*: $others"
pass "libmcp_oauth2.so exports only mcp_oauth2_* ($(wc -l <<<"$exported") functions)"
# Every function the header declares is exported, and the other way round.
declared=$(grep -oE '\bmcp_oauth2_[a-z0-9_]+\(' include/mcp_oauth2.h | tr -d '(' | sort -u)
[ "$declared" = "$(sort -u <<<"$exported")" ] || fail "header declarations and .so exports differ"
pass "header declarations = .so exports"
if grep -q 'mcp-oauth2-test-panic' "$LIB_SO" "$LIB_A"; then fail "the shipped build contains the test panic trigger"; fi
grep -q 'mcp-oauth2-test-panic' "$OUT/libmcp_oauth2_test_panic.a" || fail "the ffi-test-panic build lacks its trigger"
pass "no test panic trigger in the shipped build"

step "compile the C programs (C11, -Wall -Wextra -Werror -pedantic)"
for t in test_api test_blocking test_panic; do
    gcc "${CFLAGS[@]}" "ffi-tests/c/$t.c" "$LIB_A" "${LIBS[@]}" -o "$OUT/$t"
    gcc "${CFLAGS[@]}" "${SAN[@]}" "ffi-tests/c/$t.c" "$LIB_A" "${LIBS[@]}" -o "$OUT/${t}_asan"
done
gcc "${CFLAGS[@]}" ffi-tests/c/test_panic.c "$OUT/libmcp_oauth2_test_panic.a" "${LIBS[@]}" -o "$OUT/test_panic_trigger"
gcc "${CFLAGS[@]}" "${SAN[@]}" ffi-tests/c/test_panic.c "$OUT/libmcp_oauth2_test_panic.a" "${LIBS[@]}" \
    -o "$OUT/test_panic_trigger_asan"
# Dynamic linking against the .so (the -L/-l form a packager uses).
gcc "${CFLAGS[@]}" ffi-tests/c/test_api.c -L"$ROOT/target/debug" -lmcp_oauth2 -Wl,-rpath,"$ROOT/target/debug" \
    "${LIBS[@]}" -o "$OUT/test_api_shared"
grep -q 'libmcp_oauth2.so' <<<"$(ldd "$OUT/test_api_shared")" || fail "test_api_shared is not linked to the .so"
# The example of docs/c-and-go.md, exactly as printed (the first ```c block).
awk '/^```c$/ {on = 1; next} /^```$/ && on {exit} on' docs/c-and-go.md > "$WORK/example.c"
[ -s "$WORK/example.c" ] || fail "no C example found in docs/c-and-go.md"
# The README shows the same program: it must stay identical to the one compiled here.
awk '/^## C and Go/{f=1} f&&/^```c$/ {on = 1; next} /^```$/ && on {exit} on' README.md > "$WORK/readme_example.c"
cmp -s "$WORK/example.c" "$WORK/readme_example.c" || fail "the C example in README.md differs from docs/c-and-go.md"
gcc "${CFLAGS[@]}" "$WORK/example.c" "$LIB_A" "${LIBS[@]}" -o "$OUT/example"
gcc "${CFLAGS[@]}" "${SAN[@]}" "$WORK/example.c" "$LIB_A" "${LIBS[@]}" -o "$OUT/example_asan"
g++ -std=c++17 -Wall -Wextra -Werror -pedantic -Iinclude ffi-tests/c/header_cpp.cpp "$LIB_A" "${LIBS[@]}" \
    -o "$OUT/header_cpp"
"$OUT/header_cpp" || fail "the header from C++"
pass "C programs compile without warnings; the header works from C++17"

step "C API test (no network)"
timeout 300 "$OUT/test_api_asan" || fail "test_api under ASan+UBSan"
pass "test_api under ASan+UBSan"
"${VALGRIND[@]}" "$OUT/test_api" || fail "test_api under valgrind"
pass "test_api under valgrind"
timeout 300 "$OUT/test_api_shared" || fail "test_api against libmcp_oauth2.so"
pass "test_api against libmcp_oauth2.so"

step "panic boundary"
timeout 300 "$OUT/test_panic_trigger_asan" expect-panic 2> "$WORK/panic.err" || { cat "$WORK/panic.err" >&2; fail "panic test"; }
grep -q 'mcp-oauth2 test panic' "$WORK/panic.err" || fail "the test panic did not happen"
pass "a Rust panic becomes MCP_OAUTH2_RESULT_PANIC under ASan+UBSan"
"${VALGRIND[@]}" "$OUT/test_panic_trigger" expect-panic 2> "$WORK/panic.err" || { cat "$WORK/panic.err" >&2; fail "panic test (valgrind)"; }
pass "a Rust panic becomes MCP_OAUTH2_RESULT_PANIC under valgrind"
timeout 300 "$OUT/test_panic_asan" expect-no-panic || fail "the shipped build has no panic trigger"
pass "the shipped build has no panic trigger"

step "C example of docs/c-and-go.md"
timeout 300 "$OUT/example_asan" > "$WORK/example.out"
cat "$WORK/example.out"
grep -q '^allowed: forward upstream' "$WORK/example.out" || fail "the documented example did not allow"
"${VALGRIND[@]}" "$OUT/example" > /dev/null || fail "the documented example runs clean (ASan+UBSan, valgrind)"
pass "the documented example runs clean (ASan+UBSan, valgrind)"

step "authorization server (oidc-provider, tests/node)"
[ -d tests/node/node_modules/oidc-provider ] || fail "run scripts/install-ffi.sh (npm ci --prefix tests/node)"
AS_TOKEN_TTL=600 node tests/node/as-server.mjs > "$WORK/as.out" 2> "$WORK/as.log" &
AS_PID=$!
for _ in $(seq 1 100); do grep -q '^LISTENING' "$WORK/as.out" && break; sleep 0.1; done
grep -q '^LISTENING' "$WORK/as.out" || { cat "$WORK/as.log" >&2; fail "the AS did not start"; }
export AS_URL="http://127.0.0.1:$(awk '/^LISTENING/{print $2}' "$WORK/as.out")"
export RESOURCE="http://127.0.0.1:8080/mcp"
token() { # [resource]: a client_credentials token of client "app"
    local args=(-sf -u app:app-secret -d grant_type=client_credentials -d 'scope=mcp:read mcp:write')
    [ $# -gt 0 ] && args+=(-d "resource=$1")
    curl "${args[@]}" "$AS_URL/token" | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])'
}
echo "AS at $AS_URL"

step "blocking flow against the AS"
# Fresh tokens per run: the C program counts introspections, so none may be cached yet.
export JWT_RESOURCE="http://127.0.0.1:8080/jwt/mcp"
run_blocking() {
    TOKEN=$(token "$RESOURCE") TOKEN_THREADS=$(token "$RESOURCE") TOKEN_SLOW=$(token "$RESOURCE") \
        TOKEN_NO_AUD=$(token) TOKEN_JWT=$(token "$JWT_RESOURCE") TOKEN_JWT2=$(token "$JWT_RESOURCE") "$@"
}
run_blocking timeout 300 "$OUT/test_blocking_asan" || fail "test_blocking under ASan+UBSan"
pass "test_blocking under ASan+UBSan"
run_blocking "${VALGRIND[@]}" "$OUT/test_blocking" || fail "test_blocking under valgrind"
pass "test_blocking under valgrind"

step "Go (cgo, static library, -race)"
export TOKEN=$(token "$RESOURCE") TOKEN_THREADS=$(token "$RESOURCE") TOKEN_NO_AUD=$(token)
# The package's #cgo directives point at include/ and target/debug/libmcp_oauth2.a.
export CGO_ENABLED=1 GOPROXY=off GOFLAGS=-mod=mod GOTOOLCHAIN=local
(cd ffi-tests/go && go vet ./...) || fail "go vet"
go_status=0
(cd ffi-tests/go && timeout 300 go test -race -count=1 -v ./...) > "$WORK/go.out" 2>&1 || go_status=$?
grep -E '^(=== RUN|--- |PASS|FAIL|ok )' "$WORK/go.out" || true
if [ "$go_status" -ne 0 ] || ! grep -q '^ok ' "$WORK/go.out"; then cat "$WORK/go.out" >&2; fail "Go tests"; fi
pass "Go tests under -race"

echo
echo "test-ffi: $PASSED passed, 0 failed"
