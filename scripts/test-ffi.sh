#!/usr/bin/env bash
# The C ABI, checked the way C and Go hosts use it:
#   1. include/mcp_oauth2.h is what cbindgen 0.29.4 generates from src/ffi/ (no drift);
#   2. libmcp_oauth2.so and libmcp_oauth2.a build; the .so exports only mcp_oauth2_*;
#      the shipped build contains no test panic trigger;
#   3. scripts/install-c.sh installs library, header and pkg-config file into a temporary
#      prefix; everything below is built against that install, found through pkg-config;
#   4. C11 programs (-Wall -Wextra -Werror -pedantic) under ASan+UBSan and under valgrind:
#      the API test, the flow test (single flight, states, JWT steps), the panic test, the
#      blocking and sans-I/O flows against the real oidc-provider AS, and the C example of
#      docs/c-and-go.md exactly as printed there;
#   5. the Go package go/mcpoauth2 (cgo, pkg-config) under `go test -race`, and the Go
#      example of docs/c-and-go.md as a separate module importing it.
# Needs scripts/install-ffi.sh. Starts the AS on 127.0.0.1 and stops it by pid on exit.
# (The install uses the debug build the tests need anyway: a release build takes minutes on
# a small machine, and install-c.sh does the same for both profiles.)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
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

CFLAGS=(-std=c11 -Wall -Wextra -Werror -pedantic -g -Iffi-tests/c)
SAN=(-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer)
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

step "install into a temporary prefix (scripts/install-c.sh)"
PREFIX=$WORK/prefix
scripts/install-c.sh --prefix "$PREFIX" --debug > "$WORK/install.out" || { cat "$WORK/install.out" >&2; fail "install-c.sh"; }
for f in lib/libmcp_oauth2.so lib/libmcp_oauth2.a include/mcp_oauth2.h lib/pkgconfig/mcp_oauth2.pc; do
    [ -f "$PREFIX/$f" ] || fail "install-c.sh did not install $f"
done
cmp -s include/mcp_oauth2.h "$PREFIX/include/mcp_oauth2.h" || fail "the installed header differs from include/mcp_oauth2.h"
export PKG_CONFIG_PATH=$PREFIX/lib/pkgconfig
[ "$(pkg-config --modversion mcp_oauth2)" = "$(awk -F'"' '/^version *=/ {print $2; exit}' Cargo.toml)" ] ||
    fail "mcp_oauth2.pc has the wrong version"
LIBDIR=$(pkg-config --variable=libdir mcp_oauth2)
[ "$LIBDIR" = "$PREFIX/lib" ] || fail "mcp_oauth2.pc: libdir $LIBDIR"
read -ra PC_CFLAGS <<<"$(pkg-config --cflags mcp_oauth2)"
read -ra PC_SHARED <<<"$(pkg-config --libs mcp_oauth2)"
PC_SHARED+=("-Wl,-rpath,$LIBDIR")
# Static: the archive by path in place of -lmcp_oauth2 (with both installed, -l picks the
# .so), then Libs.private.
read -ra PC_STATIC <<<"$(pkg-config --libs --static mcp_oauth2)"
PC_STATIC=("${PC_STATIC[@]/#-lmcp_oauth2/$LIBDIR/libmcp_oauth2.a}")
[[ " ${PC_STATIC[*]} " == *" -lpthread -ldl -lm "* ]] || fail "mcp_oauth2.pc: Libs.private is not -lpthread -ldl -lm"
pass "installed $(pkg-config --modversion mcp_oauth2) into a prefix; pkg-config finds it (${PC_STATIC[*]})"

step "compile the C programs against the install (C11, -Wall -Wextra -Werror -pedantic)"
for t in test_api test_flow test_blocking test_panic; do
    gcc "${CFLAGS[@]}" "${PC_CFLAGS[@]}" "ffi-tests/c/$t.c" "${PC_STATIC[@]}" -o "$OUT/$t"
    gcc "${CFLAGS[@]}" "${PC_CFLAGS[@]}" "${SAN[@]}" "ffi-tests/c/$t.c" "${PC_STATIC[@]}" -o "$OUT/${t}_asan"
done
if ldd "$OUT/test_api" | grep -q 'libmcp_oauth2'; then fail "the static build links libmcp_oauth2.so"; fi
gcc "${CFLAGS[@]}" "${PC_CFLAGS[@]}" ffi-tests/c/test_panic.c "$OUT/libmcp_oauth2_test_panic.a" -lpthread -ldl -lm \
    -o "$OUT/test_panic_trigger"
gcc "${CFLAGS[@]}" "${PC_CFLAGS[@]}" "${SAN[@]}" ffi-tests/c/test_panic.c "$OUT/libmcp_oauth2_test_panic.a" \
    -lpthread -ldl -lm -o "$OUT/test_panic_trigger_asan"
# Dynamic linking against the installed .so (pkg-config --libs, the form a packager uses).
for t in test_api test_flow; do
    gcc "${CFLAGS[@]}" "${PC_CFLAGS[@]}" "ffi-tests/c/$t.c" "${PC_SHARED[@]}" -lpthread -o "$OUT/${t}_shared"
    grep -q "$LIBDIR/libmcp_oauth2.so" <<<"$(ldd "$OUT/${t}_shared")" || fail "${t}_shared is not linked to the installed .so"
done
# The example of docs/c-and-go.md, exactly as printed (the first ```c block).
awk '/^```c$/ {on = 1; next} /^```$/ && on {exit} on' docs/c-and-go.md > "$WORK/example.c"
[ -s "$WORK/example.c" ] || fail "no C example found in docs/c-and-go.md"
# The README shows lines of the same program: they must be lines of the one compiled here.
awk '/^## C and Go/{f=1} f&&/^```c$/ {on = 1; next} /^```$/ && on {exit} on' README.md > "$WORK/readme_example.c"
[ -s "$WORK/readme_example.c" ] || fail "no C example in README.md"
is_excerpt "$WORK/readme_example.c" "$WORK/example.c" || fail "the C example in README.md is not an excerpt of docs/c-and-go.md's program"
gcc "${CFLAGS[@]}" "${PC_CFLAGS[@]}" "$WORK/example.c" "${PC_STATIC[@]}" -o "$OUT/example"
gcc "${CFLAGS[@]}" "${PC_CFLAGS[@]}" "${SAN[@]}" "$WORK/example.c" "${PC_STATIC[@]}" -o "$OUT/example_asan"
g++ -std=c++17 -Wall -Wextra -Werror -pedantic "${PC_CFLAGS[@]}" ffi-tests/c/header_cpp.cpp "${PC_STATIC[@]}" \
    -o "$OUT/header_cpp"
"$OUT/header_cpp" || fail "the header from C++"
pass "C programs compile without warnings against the install (static and shared); the header works from C++17"

step "C API test (no network)"
timeout 300 "$OUT/test_api_asan" || fail "test_api under ASan+UBSan"
pass "test_api under ASan+UBSan"
"${VALGRIND[@]}" "$OUT/test_api" || fail "test_api under valgrind"
pass "test_api under valgrind"
timeout 300 "$OUT/test_api_shared" || fail "test_api against libmcp_oauth2.so"
pass "test_api against the installed libmcp_oauth2.so"

step "C flow test: single flight, pending states, JWT steps, policy accessors (no network)"
timeout 300 "$OUT/test_flow_asan" || fail "test_flow under ASan+UBSan"
pass "test_flow under ASan+UBSan"
"${VALGRIND[@]}" "$OUT/test_flow" || fail "test_flow under valgrind"
pass "test_flow under valgrind"
# Natively (glibc's allocator reports its heap): the measurement must have run.
timeout 300 "$OUT/test_flow_shared" > "$WORK/flow.out" || { cat "$WORK/flow.out"; fail "test_flow against libmcp_oauth2.so"; }
cat "$WORK/flow.out"
grep -q 'bytes remain above the baseline' "$WORK/flow.out" || fail "test_flow did not measure the heap a decision keeps"
pass "test_flow against the installed libmcp_oauth2.so, heap measured"

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
        TOKEN_SANS_IO=$(token "$RESOURCE") TOKEN_NO_AUD=$(token) TOKEN_JWT=$(token "$JWT_RESOURCE") \
        TOKEN_JWT2=$(token "$JWT_RESOURCE") "$@"
}
run_blocking timeout 300 "$OUT/test_blocking_asan" || fail "test_blocking under ASan+UBSan"
pass "test_blocking under ASan+UBSan"
run_blocking "${VALGRIND[@]}" "$OUT/test_blocking" || fail "test_blocking under valgrind"
pass "test_blocking under valgrind"

step "Go package go/mcpoauth2 (cgo, pkg-config, -race)"
export TOKEN=$(token "$RESOURCE") TOKEN_THREADS=$(token "$RESOURCE") TOKEN_GO=$(token "$RESOURCE") TOKEN_NO_AUD=$(token)
# cgo finds the library through PKG_CONFIG_PATH (the installed mcp_oauth2.pc); the rpath
# lets the binaries find the .so in the temporary prefix.
export CGO_ENABLED=1 GOPROXY=off GOFLAGS=-mod=mod GOTOOLCHAIN=local CGO_LDFLAGS="-Wl,-rpath,$LIBDIR"
[ -z "$(gofmt -l go/mcpoauth2)" ] || fail "gofmt: $(gofmt -l go/mcpoauth2)"
(cd go/mcpoauth2 && go vet ./...) || fail "go vet"
(cd go/mcpoauth2 && go test -race -c -o "$WORK/mcpoauth2.test" .) || fail "go test -c"
grep -q "$LIBDIR/libmcp_oauth2.so" <<<"$(ldd "$WORK/mcpoauth2.test")" || fail "the Go test binary is not linked to the installed .so"
go_status=0
(cd go/mcpoauth2 && timeout 300 "$WORK/mcpoauth2.test" -test.count=1 -test.v) > "$WORK/go.out" 2>&1 || go_status=$?
grep -E '^(=== RUN|--- |PASS|FAIL)' "$WORK/go.out" || true
if [ "$go_status" -ne 0 ] || ! grep -q '^PASS$' "$WORK/go.out"; then cat "$WORK/go.out" >&2; fail "Go tests"; fi
pass "Go tests under -race, linked to the installed library"

step "Go example of docs/c-and-go.md (a module importing mcp-oauth2/go/mcpoauth2)"
mkdir -p "$WORK/goexample"
awk '/^```go$/ {on = 1; next} /^```$/ && on {exit} on' docs/c-and-go.md > "$WORK/goexample/main.go"
[ -s "$WORK/goexample/main.go" ] || fail "no Go example found in docs/c-and-go.md"
cat > "$WORK/goexample/go.mod" <<EOF
module example.com/gateway

go 1.19

require mcp-oauth2/go/mcpoauth2 v0.0.0

replace mcp-oauth2/go/mcpoauth2 => $ROOT/go/mcpoauth2
EOF
(cd "$WORK/goexample" && timeout 300 go run .) > "$WORK/goexample.out" || fail "the Go example"
cat "$WORK/goexample.out"
# The page shows the output after the program, in the block following the line "It prints:".
awk '/^```go$/ {g = 1} g && /^It prints:$/ {f = 1; next} f && /^```$/ {if (on) exit; on = 1; next} on' \
    docs/c-and-go.md > "$WORK/goexample.want"
[ -s "$WORK/goexample.want" ] || fail "no output shown for the Go example in docs/c-and-go.md"
diff -u "$WORK/goexample.want" "$WORK/goexample.out" || fail "the Go example's output differs from docs/c-and-go.md"
pass "the documented Go example builds against the installed library and prints what the page says"

echo
echo "test-ffi: $PASSED passed, 0 failed"
