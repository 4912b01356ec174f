#!/usr/bin/env bash
# Installs what the Lua / OpenResty / Kong tests and benchmark need (idempotent):
# Debian's nginx with the lua module, OpenResty's LuaJIT (luajit2, which lua-resty-core
# needs; it conflicts with plain luajit), busted, wrk, the Prometheus project's Python client
# (its text-format parser checks auth:metrics()), and the Node test harness.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(nginx libnginx-mod-http-lua libnginx-mod-http-ndk lua-resty-core lua-resty-lrucache
  luajit2 libluajit2-5.1-dev lua-cjson lua-busted wrk pkg-config procps curl python3 python3-prometheus-client)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}"
fi

# Debian starts the packaged nginx service on install; the tests run their own nginx under
# their own prefix and never need the system one listening on port 80.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet nginx 2>/dev/null; then
  systemctl stop nginx || true
fi

[ -d tests/node/node_modules/oidc-provider ] || npm ci --prefix tests/node --no-audit --no-fund
echo "install-lua: ok"
