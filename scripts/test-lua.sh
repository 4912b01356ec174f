#!/usr/bin/env bash
# Lua / OpenResty / Kong tests: builds mcp_oauth2.so (normal build, and a test-hook build
# for the panic test), checks what it exports and that the LuaJIT declarations are current,
# runs the Rust and busted specs under LuaJIT, then the nginx end-to-end test: real Debian
# nginx + lua module (2 workers, and 1 worker for in-worker single flight), the
# oidc-provider AS (also over https with client certificates, with keys and a PKI made for
# this run) and an echo upstream, all on 127.0.0.1, all stopped by pid on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ROOT=$PWD

RUN=$(mktemp -d /tmp/mcp-oauth2-lua.XXXXXX)
PIDS=()
cleanup() {
  local rc=$?
  if [ -f "$RUN/logs/nginx.pid" ]; then kill "$(cat "$RUN/logs/nginx.pid")" 2>/dev/null || true; fi
  if [ -f "$RUN/doc/logs/nginx.pid" ]; then kill "$(cat "$RUN/doc/logs/nginx.pid")" 2>/dev/null || true; fi
  if [ -f "$RUN/one/logs/nginx.pid" ]; then kill "$(cat "$RUN/one/logs/nginx.pid")" 2>/dev/null || true; fi
  # The cluster-cache test's nodes and Redis (it stops them itself unless it died).
  for f in "$RUN"/cluster/*/logs/nginx.pid "$RUN/cluster/redis.pid" "$RUN/cluster/redis-tls.pid"; do
    if [ -f "$f" ]; then kill "$(cat "$f")" 2>/dev/null || true; fi
  done
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "$rc" -ne 0 ] && [ -f "$RUN/logs/error.log" ]; then
    echo "---- nginx error.log (tail) ----"; tail -n 40 "$RUN/logs/error.log"
    [ -f "$RUN/doc/logs/error.log" ] && { echo "---- documented nginx.conf: error.log (tail) ----"; tail -n 20 "$RUN/doc/logs/error.log"; }
    [ -f "$RUN/one/logs/error.log" ] && { echo "---- 1-worker nginx: error.log (tail) ----"; tail -n 20 "$RUN/one/logs/error.log"; }
    for f in "$RUN"/cluster/*/logs/error.log; do
      [ -f "$f" ] && { echo "---- cluster node $f (tail) ----"; tail -n 20 "$f"; }
    done
  fi
  [ -n "${KEEP_RUN:-}" ] || rm -rf "$RUN"
  exit "$rc"
}
trap cleanup EXIT

# 1. Build: the documented command, then the test-hook variant (only this crate rebuilds).
cargo build --release -p mcp-oauth2-lua --features module
cp target/release/libmcp_oauth2_lua.so lua/mcp_oauth2.so
mkdir -p "$RUN/testhook"
cargo build --release -p mcp-oauth2-lua --features module,test-hooks
cp target/release/libmcp_oauth2_lua.so "$RUN/testhook/mcp_oauth2.so"
# Restore the normal build as the target's latest artifact too.
cargo build --release -p mcp-oauth2-lua --features module

# mcp_oauth2.so exports the module entry and every function of the C ABI header; the panic
# hook exists only in the test build.
nm -D --defined-only lua/mcp_oauth2.so | awk '{print $3}' | sort >"$RUN/exported.txt"
grep -oE '\bmcp_oauth2_[a-z0-9_]+\(' include/mcp_oauth2.h | tr -d '(' | sort -u >"$RUN/header-fns.txt"
missing=$(comm -23 "$RUN/header-fns.txt" "$RUN/exported.txt")
[ -z "$missing" ] || { echo "mcp_oauth2.so does not export: $missing"; exit 1; }
grep -qx luaopen_mcp_oauth2 "$RUN/exported.txt" || { echo "mcp_oauth2.so: no luaopen_mcp_oauth2"; exit 1; }
if grep -q -a '__mcp_oauth2_test_panic' lua/mcp_oauth2.so; then echo "the normal build has the test panic hook"; exit 1; fi
grep -q -a '__mcp_oauth2_test_panic' "$RUN/testhook/mcp_oauth2.so" || { echo "the test build lacks the panic hook"; exit 1; }
# The LuaJIT declarations are generated from the header: they must be current.
bash scripts/gen-lua-cdef.sh --check

# nginx workers run as nobody when started as root: everything they read lives in a
# world-readable run dir under /tmp, not in the (possibly private) checkout.
mkdir -p "$RUN/lua" "$RUN/tests" "$RUN/conf" "$RUN/logs" "$RUN/tmp"
cp -r lua/resty lua/kong lua/mcp_oauth2.so "$RUN/lua/"
cp tests/nginx/kong_standin.lua "$RUN/tests/"
chmod -R a+rX "$RUN"

# 2. Rust tests of the crate (linked against the system LuaJIT, without `module`: the config
#    converter, the Kong schema against the core's Config), then the busted specs (the C ABI
#    through the cdef, resty.mcp_oauth2 against a mock ngx, the Kong files), under LuaJIT.
cargo test -p mcp-oauth2-lua
(cd lua && timeout 120 luajit /usr/bin/busted --cpath="$ROOT/lua/?.so" --lpath="$ROOT/lua/?.lua;$ROOT/tests/nginx/?.lua" spec)

# 3. Issue 10's material, made for this run (nothing of it is committed): the gateway's
#    client secrets and keys (tests/nginx/make-client-keys.mjs) and a test PKI made with
#    openssl: a CA, CA-issued client certificates (client: SAN DNS gateway.test, other:
#    other.test), a self-signed client certificate (self) and the https AS's (as: 127.0.0.1).
make_pki() ( # dir
  cd "$1"
  ossl() { openssl "$@" >/dev/null 2>&1 || { echo "openssl $* failed" >&2; exit 1; }; }
  key() { ossl ecparam -name prime256v1 -genkey -noout -out "$1.key"; }
  self_signed() { key "$1"; ossl req -x509 -new -key "$1.key" -out "$1.crt" -days 2 -subj "$2" -addext "$3"; }
  self_signed ca "/CN=mcp-oauth2 test CA" "basicConstraints=critical,CA:TRUE"
  self_signed as "/CN=127.0.0.1" "subjectAltName=IP:127.0.0.1"
  self_signed self "/CN=self-signed gateway" "subjectAltName=DNS:self.test"
  for name in client other; do
    dns=gateway.test; [ "$name" = other ] && dns=other.test
    key "$name"
    ossl req -new -key "$name.key" -out "$name.csr" -subj "/CN=$dns"
    echo "subjectAltName=DNS:$dns" >"$name.ext"
    ossl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -out "$name.crt" -days 2 -extfile "$name.ext"
  done
)
mkdir -p "$RUN/pki" "$RUN/keys"
make_pki "$RUN/pki"
node tests/nginx/make-client-keys.mjs "$RUN/keys" "$RUN/pki"
# The mutual-TLS location of docs/openresty-and-kong.md as shown (file names substituted),
# and variants for the refusals: another certificate, none, a CA that did not issue the AS's.
awk '/^### Mutual TLS through the capture transport/{f=1} f&&/^```nginx/{p=1;next} p&&/^```/{exit} p' \
  docs/openresty-and-kong.md >"$RUN/conf/mtls-doc.conf"
grep -q 'location = /_mcp_oauth2_mtls {' "$RUN/conf/mtls-doc.conf" \
  || { echo "no mutual-TLS location in docs/openresty-and-kong.md"; exit 1; }
mtls_variant() { # suffix extra-sed
  sed -e "s#location = /_mcp_oauth2_mtls {#location = /_mcp_oauth2_mtls$1 {#" \
    -e "s#/etc/nginx/mcp/gateway\.crt#$RUN/pki/client.crt#" -e "s#/etc/nginx/mcp/gateway\.key#$RUN/pki/client.key#" \
    -e "s#/etc/ssl/certs/ca-certificates\.crt#$RUN/pki/as.crt#" -e "$2" "$RUN/conf/mtls-doc.conf"
}
{
  mtls_variant "" ""
  mtls_variant _self "s#pki/client\.#pki/self.#"
  mtls_variant _other "s#pki/client\.#pki/other.#"
  mtls_variant _nocert "/^ *proxy_ssl_certificate/d"
  mtls_variant _strict "s#pki/as\.crt#pki/ca.crt#"
} >"$RUN/conf/mtls-locations.conf"

# 4. Services.
wait_port() { # file -> port
  local i
  for i in $(seq 1 100); do
    if grep -q '^LISTENING' "$1" 2>/dev/null; then awk '/^LISTENING/{print $2; exit}' "$1"; return 0; fi
    sleep 0.1
  done
  echo "service did not start: $1" >&2; return 1
}
# `sub` for the documented config's claim_to_header (client_credentials tokens have none),
# `groups` for the Kong consumer-group mapping.
# `uname` and `consumer_uuid` for the Kong consumer mapping by username and by id.
CLAIMS='{"sub":"user-42","groups":["gold","unknown"],"uname":"app-user","consumer_uuid":"3f4c1c8e-0000-0000-0000-00000000a001"}'
AS_EXTRA_CLAIMS=$CLAIMS node tests/node/as-server.mjs >"$RUN/as.out" 2>"$RUN/as.log" & PIDS+=($!); AS_PID=$!
# A second AS whose tokens live 5 s: streams end at their exp.
AS_TOKEN_TTL=5 AS_EXTRA_CLAIMS=$CLAIMS node tests/node/as-server.mjs >"$RUN/as2.out" 2>"$RUN/as2.log" & PIDS+=($!)
# The RFC 8693 token endpoint (records every exchange).
node tests/nginx/exchange-as.mjs >"$RUN/ex.out" 2>"$RUN/ex.log" & PIDS+=($!)
node tests/nginx/echo-upstream.mjs >"$RUN/up.out" 2>"$RUN/up.log" & PIDS+=($!)
# Issue 10: an AS with one gateway client per client_auth method, and one over https that
# asks for client certificates (RFC 8705: tls_client_auth, self_signed_tls_client_auth).
AS_EXTRA_CLIENTS="$(cat "$RUN/keys/as-clients.json")" node tests/node/as-server.mjs >"$RUN/as3.out" 2>"$RUN/as3.log" & PIDS+=($!)
AS_TLS_CERT="$RUN/pki/as.crt" AS_TLS_KEY="$RUN/pki/as.key" AS_TLS_CA="$RUN/pki/ca.crt" \
  AS_EXTRA_CLIENTS="$(cat "$RUN/keys/tls-as-clients.json")" node tests/node/as-server.mjs >"$RUN/tlsas.out" 2>"$RUN/tlsas.log" & PIDS+=($!)
AS_PORT=$(wait_port "$RUN/as.out")
AS3_PORT=$(wait_port "$RUN/as3.out")
TLSAS_PORT=$(wait_port "$RUN/tlsas.out")
AS2_PORT=$(wait_port "$RUN/as2.out")
EX_PORT=$(wait_port "$RUN/ex.out")
UP_PORT=$(wait_port "$RUN/up.out")
free_port() { node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'; }
PORT=$(free_port)
AS="http://127.0.0.1:$AS_PORT"
render() { # workers port underscores-port -> the test nginx.conf
  sed -e "s#@RUN@#$RUN#g" -e "s#@PORT@#$2#g" -e "s#@UPORT@#$3#g" -e "s#@AS@#$AS#g" -e "s#@AS2@#http://127.0.0.1:$AS2_PORT#g" \
    -e "s#@EX@#http://127.0.0.1:$EX_PORT#g" -e "s#@UP@#$UP_PORT#g" -e "s#@WORKERS@#$1#g" \
    -e "s#@AS3@#http://127.0.0.1:$AS3_PORT#g" -e "s#@TLSAS@#https://127.0.0.1:$TLSAS_PORT#g" \
    tests/nginx/nginx.conf.template
}
UPORT=$(free_port)
render 2 "$PORT" "$UPORT" >"$RUN/conf/nginx.conf"
# The same configuration with one worker: single flight inside a worker.
ONE_PORT=$(free_port)
mkdir -p "$RUN/one/conf" "$RUN/one/logs" "$RUN/one/tmp"
render 1 "$ONE_PORT" "$(free_port)" >"$RUN/one/conf/nginx.conf"
chmod -R a+rX "$RUN"
nginx -p "$RUN" -c conf/nginx.conf
nginx -p "$RUN/one" -c conf/nginx.conf
for _ in $(seq 1 50); do [ -s "$RUN/logs/nginx.pid" ] && [ -s "$RUN/one/logs/nginx.pid" ] && break; sleep 0.1; done

# The documented nginx.conf, as shown in docs/openresty-and-kong.md, in a second nginx:
# only addresses, the secret and file locations change.
DOC="$RUN/doc"
mkdir -p "$DOC/conf" "$DOC/logs" "$DOC/tmp"
DOC_PORT=$(free_port)
DOC_ADMIN_PORT=$(free_port)
awk '/^## A complete nginx.conf/{f=1} f&&/^```nginx/{p=1;next} p&&/^```/{exit} p' docs/openresty-and-kong.md >"$DOC/conf/doc.conf"
[ -s "$DOC/conf/doc.conf" ] || { echo "no nginx.conf block found in docs/openresty-and-kong.md"; exit 1; }
# The README shows lines of the same nginx.conf: they must be lines of the one run here.
awk '/^## OpenResty and Kong/{f=1} f&&/^```nginx/{p=1;next} p&&/^```/{exit} p' README.md >"$DOC/readme.conf"
[ -s "$DOC/readme.conf" ] && is_excerpt "$DOC/readme.conf" "$DOC/conf/doc.conf" \
  || { echo "the nginx.conf lines in README.md are not an excerpt of docs/openresty-and-kong.md's"; exit 1; }
{
  echo "pid logs/nginx.pid;"
  echo "error_log logs/error.log notice;"
  sed -e "s#/opt/mcp-oauth2/lua#$RUN/lua#g" \
      -e "s#https://auth.example.com#http://auth.example.com#g" \
      -e "s#server auth.example.com:443;#server 127.0.0.1:$AS_PORT;#" \
      -e "s#server 127.0.0.1:9000;#server 127.0.0.1:$UP_PORT;#" \
      -e "s#listen 8080;#listen 127.0.0.1:$DOC_PORT;#" \
      -e "s#listen 127.0.0.1:8081;#listen 127.0.0.1:$DOC_ADMIN_PORT;#" \
      -e "s#http://127.0.0.1:8080/_mcp_oauth2_recheck#http://127.0.0.1:$DOC_PORT/_mcp_oauth2_recheck#" \
      -e "s#\"change-me\"#\"gateway-secret\"#" \
      -e "s#^http {#http {\n    client_body_temp_path tmp/body; proxy_temp_path tmp/proxy; fastcgi_temp_path tmp/fastcgi; uwsgi_temp_path tmp/uwsgi; scgi_temp_path tmp/scgi;#" \
      "$DOC/conf/doc.conf"
} >"$DOC/conf/nginx.conf"
chmod -R a+rX "$RUN"
nginx -p "$DOC" -c conf/nginx.conf
for _ in $(seq 1 50); do [ -s "$DOC/logs/nginx.pid" ] && break; sleep 0.1; done

# 5. nginx end-to-end (issue 10's tests in their own file, with their own AS processes).
ONE_URL="http://127.0.0.1:$ONE_PORT" ONE_PREFIX="$RUN/one" DOC_URL="http://127.0.0.1:$DOC_PORT" DOC_ADMIN_URL="http://127.0.0.1:$DOC_ADMIN_PORT" NGINX_URL="http://127.0.0.1:$PORT" AS_URL="$AS" AS_PID="$AS_PID" UPSTREAM_URL="http://127.0.0.1:$UP_PORT" \
  AS2_URL="http://127.0.0.1:$AS2_PORT" EXCHANGE_URL="http://127.0.0.1:$EX_PORT" UNDERSCORE_URL="http://127.0.0.1:$UPORT" \
  AS3_URL="http://127.0.0.1:$AS3_PORT" TLSAS_URL="https://127.0.0.1:$TLSAS_PORT" PKI_DIR="$RUN/pki" \
  NGINX_PREFIX="$RUN" timeout 500 node --test --test-concurrency=1 tests/nginx/e2e.test.mjs tests/nginx/client-auth.test.mjs

# 6. The cluster cache (issue 14): three nginx nodes on one real redis-server, all started
#    (and stopped) by the test itself, with an AS of its own. With DEMO_PROXY_BIN set to a
#    demo_proxy built with the cluster cache, a demo-proxy node joins them (one more test).
command -v redis-server >/dev/null || { echo "redis-server is not installed (scripts/install.sh)"; exit 1; }
# The mixed cluster's demo-proxy node is part of the suite (built by `cargo test` already:
# this build takes seconds); DEMO_PROXY_BIN from the environment wins.
if [ -z "${DEMO_PROXY_BIN:-}" ]; then
  cargo build -q -p mcp-oauth2-demo
  export DEMO_PROXY_BIN="$ROOT/target/debug/demo_proxy"
fi
mkdir -p "$RUN/cluster"
chmod a+rwx "$RUN/cluster"
CLUSTER_DIR="$RUN/cluster" LUA_DIR="$RUN/lua" TESTS_DIR="$RUN/tests" UPSTREAM_URL="http://127.0.0.1:$UP_PORT" \
  AS_SCRIPT="$ROOT/tests/node/as-server.mjs" timeout 300 node --test --test-concurrency=1 tests/nginx/cluster.test.mjs
