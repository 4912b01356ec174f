#!/usr/bin/env bash
# Installs everything the test suite needs (idempotent: fast when all is present).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

# openssl: the mutual-TLS tests generate their test CA and certificates with it at run time.
apt_install openssl
# redis-server: the cluster-cache tests start their own (random port, no persistence);
# lua-nginx-redis: resty.redis, the nginx module's Redis client (OpenResty and Kong ship it).
apt_install redis-server lua-nginx-redis

# Node harness: the oidc-provider authorization server and the MCP SDK (lockfile pinned).
if [ ! -f tests/node/node_modules/.package-lock.json ] || ! cmp -s tests/node/package-lock.json tests/node/node_modules/.package-lock.json.src 2>/dev/null; then
  npm ci --prefix tests/node --no-audit --no-fund --loglevel=error
  cp tests/node/package-lock.json tests/node/node_modules/.package-lock.json.src
fi

for s in scripts/install-*.sh; do
  [ -e "$s" ] || continue
  bash "$s"
done
