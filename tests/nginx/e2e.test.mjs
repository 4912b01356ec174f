// nginx end-to-end test of resty.mcp_oauth2 and the Kong handler (through the PDK
// stand-in), against the real oidc-provider AS and an echo upstream. Started by
// scripts/test-lua.sh, which provides NGINX_URL (2 workers), ONE_URL (the same configuration
// with 1 worker), AS_URL, AS_PID, UPSTREAM_URL, NGINX_PREFIX, ONE_PREFIX, DOC_URL.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { readFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';

const { NGINX_URL, ONE_URL, AS_URL, AS_PID, UPSTREAM_URL, NGINX_PREFIX, ONE_PREFIX, DOC_URL } = process.env;
for (const [k, v] of Object.entries({ NGINX_URL, ONE_URL, AS_URL, AS_PID, UPSTREAM_URL, NGINX_PREFIX, ONE_PREFIX, DOC_URL })) {
  if (!v) throw new Error(`${k} is required`);
}
const RESOURCE = `${NGINX_URL}/mcp`;
const PRM_URL = `${NGINX_URL}/mcp/.well-known/oauth-protected-resource`;

// One request on a fresh connection (so requests spread over both workers: reuseport).
function request(path, { method = 'GET', headers = {}, body, base = NGINX_URL } = {}) {
  return new Promise((resolve, reject) => {
    const started = process.hrtime.bigint();
    const req = http.request(`${base}${path}`, { method, headers, agent: false }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({
        status: res.statusCode,
        headers: res.headers,
        body: Buffer.concat(chunks).toString(),
        ms: Number(process.hrtime.bigint() - started) / 1e6,
      }));
    });
    req.on('error', reject);
    if (body) req.write(body);
    req.end();
  });
}

async function token(resource = RESOURCE, client = 'app', scope = 'mcp:read mcp:write') {
  const res = await fetch(`${AS_URL}/token`, {
    method: 'POST',
    headers: {
      authorization: `Basic ${Buffer.from(`${client}:${client}-secret`).toString('base64')}`,
      'content-type': 'application/x-www-form-urlencoded',
    },
    body: new URLSearchParams({ grant_type: 'client_credentials', resource, scope }),
  });
  assert.equal(res.status, 200, await res.clone().text());
  return (await res.json()).access_token;
}

const stats = async () => (await fetch(`${AS_URL}/__test/stats`)).json();
const asPost = (p) => fetch(`${AS_URL}${p}`, { method: 'POST' });
const upstreamSeen = async () => (await fetch(`${UPSTREAM_URL}/__requests`)).json();
const clearUpstream = () => fetch(`${UPSTREAM_URL}/__requests`, { method: 'DELETE' });
const workers = (prefix = NGINX_PREFIX) => execFileSync('pgrep', ['-P', readFileSync(`${prefix}/logs/nginx.pid`, 'utf8').trim()])
  .toString().trim().split('\n').sort();
const counts = async (base) => JSON.parse((await request('/__counts', { base })).body);

test('the nginx.conf of docs/openresty-and-kong.md works as shown', async () => {
  const base = DOC_URL;
  const prmUrl = 'https://mcp.example.com/mcp/.well-known/oauth-protected-resource';
  for (const path of ['/mcp/.well-known/oauth-protected-resource', '/.well-known/oauth-protected-resource/mcp']) {
    const r = await request(path, { base });
    assert.equal(r.status, 200, path);
    assert.equal(JSON.parse(r.body).resource, 'https://mcp.example.com/mcp');
  }
  const none = await request('/mcp', { base, method: 'POST', body: '{}' });
  assert.equal(none.status, 401);
  assert.equal(none.headers['www-authenticate'], `Bearer resource_metadata="${prmUrl}", scope="mcp:read mcp:write"`);

  await clearUpstream();
  const t = await token('https://mcp.example.com/mcp');
  const ok = await request('/mcp', { base, headers: { authorization: `Bearer ${t}`, 'x-user-id': 'spoofed' } });
  assert.equal(ok.status, 200, ok.body);
  const [seen] = await upstreamSeen();
  assert.equal(seen.headers['x-user-id'], 'user-42');
  assert.equal(seen.headers.authorization, undefined);

  const other = await token('https://other.example.com/mcp');
  const wrong = await request('/mcp', { base, headers: { authorization: `Bearer ${other}` } });
  assert.equal(wrong.status, 401);
  const long = await request('/mcp', { base, headers: { authorization: `Bearer ${'a'.repeat(20 * 1024)}` } });
  assert.equal(long.status, 401, 'large_client_header_buffers lets a 20 KB token reach the module');
  assert.match(long.headers['www-authenticate'], /error="invalid_token"/);
});

test('PRM is served at the Kong path and at the RFC 9728 path-insert path', async () => {
  for (const path of ['/mcp/.well-known/oauth-protected-resource', '/.well-known/oauth-protected-resource/mcp']) {
    const r = await request(path);
    assert.equal(r.status, 200, path);
    assert.match(r.headers['content-type'], /^application\/json/);
    assert.equal(r.headers['cache-control'], 'max-age=3600');
    assert.deepEqual(JSON.parse(r.body), {
      resource: RESOURCE,
      authorization_servers: [AS_URL],
      bearer_methods_supported: ['header'],
      scopes_supported: ['mcp:read', 'mcp:write'],
    });
  }
  const r = await request('/mcp/.well-known/oauth-protected-resource', { method: 'POST', body: 'x' });
  assert.equal(r.status, 405);
  assert.equal(r.headers.allow, 'GET, HEAD');
  const seen = await upstreamSeen();
  assert.ok(!seen.some((s) => s.url.includes('oauth-protected-resource')), 'PRM never reaches upstream');
});

test('the internal AS location cannot be reached by clients', async () => {
  const r = await request('/_mcp_oauth2_as', { method: 'POST', body: 'token=x' });
  assert.equal(r.status, 404);
});

test('no token: 401 with the exact challenge bytes, nothing upstream', async () => {
  await clearUpstream();
  const r = await request('/mcp', { method: 'POST', body: '{}' });
  assert.equal(r.status, 401);
  assert.equal(r.headers['www-authenticate'], `Bearer resource_metadata="${PRM_URL}", scope="mcp:read mcp:write"`);
  assert.deepEqual(JSON.parse(r.body), { error: 'unauthorized', error_description: 'A bearer token is required' });
  const b = await request('/mcp', { headers: { authorization: 'Bearer a b' } });
  assert.equal(b.status, 400);
  assert.equal(b.headers['www-authenticate'], `Bearer error="invalid_request", resource_metadata="${PRM_URL}"`);
  assert.deepEqual(await upstreamSeen(), []);
});

test('valid token: forwarded with mapped claim headers; no Authorization, no spoofed claims upstream', async () => {
  await clearUpstream();
  const t = await token();
  const r = await request('/mcp', {
    method: 'POST',
    headers: { authorization: `Bearer ${t}`, 'x-client-id': ['evil', 'evil2'], 'x-scope': 'mcp:admin', 'x-other': 'kept' },
    body: '{"jsonrpc":"2.0","id":1,"method":"ping"}',
  });
  assert.equal(r.status, 200, r.body);
  const seen = await upstreamSeen();
  assert.equal(seen.length, 1);
  const h = seen[0].headers;
  assert.equal(h.authorization, undefined);
  assert.equal(h['x-client-id'], 'app');
  assert.equal(h['x-scope'], 'mcp:read mcp:write');
  assert.equal(h['x-other'], 'kept');
  const raw = seen[0].rawHeaders.filter((_, i) => i % 2 === 0).map((n) => n.toLowerCase());
  assert.equal(raw.filter((n) => n === 'x-client-id').length, 1, 'exactly one X-Client-Id upstream');
  assert.equal(raw.filter((n) => n === 'authorization').length, 0);
});

test('token without mapped claim: the client-sent copy is removed, not forwarded', async () => {
  await clearUpstream();
  const t = await token(RESOURCE, 'app', ''); // no scope claim in the token
  const r = await request('/mcp', { headers: { authorization: `Bearer ${t}`, 'x-scope': 'mcp:admin' } });
  assert.equal(r.status, 200, r.body);
  const [seen] = await upstreamSeen();
  assert.equal(seen.headers['x-scope'], undefined);
  assert.equal(seen.headers['x-client-id'], 'app');
});

test('a path that is not UTF-8 is still validated (401 without a token, 200 with one)', async () => {
  const none = await request('/mcp/%FF');
  assert.equal(none.status, 401);
  const t = await token();
  const ok = await request('/mcp/%FF', { headers: { authorization: `Bearer ${t}` } });
  assert.equal(ok.status, 200, ok.body);
});

test('local JWT validation through nginx: discovery and keys fetched by Lua, no introspection', async () => {
  await clearUpstream();
  const resource = `${NGINX_URL}/jwt/mcp`;
  const before = await stats();
  const t = await token(resource);
  assert.equal(t.split('.').length, 3, 'the AS issues a JWT for this resource');
  const r = await request('/jwt/mcp', { headers: { authorization: `Bearer ${t}`, 'x-client-id': 'evil' } });
  assert.equal(r.status, 200, r.body);
  const [seen] = await upstreamSeen();
  assert.equal(seen.headers.authorization, undefined);
  assert.equal(seen.headers['x-client-id'], 'app');
  const after = await stats();
  assert.equal(after.introspections, before.introspections, 'no introspection in JWT mode');
  assert.ok(after.jwks > before.jwks && after.discovery > before.discovery, JSON.stringify(after));
  // A tampered signature: 401 invalid_token, never 503.
  const [h, p, sig] = t.split('.');
  const bad = `${h}.${p}.${sig.slice(0, -4)}${sig.slice(-4) === 'AAAA' ? 'BBBB' : 'AAAA'}`;
  const r2 = await request('/jwt/mcp', { headers: { authorization: `Bearer ${bad}` } });
  assert.equal(r2.status, 401);
  assert.match(r2.headers['www-authenticate'], /^Bearer error="invalid_token"/);
  // A JWT for another resource: audience mismatch.
  const other = await token(`${NGINX_URL}/jwt/other`);
  const r3 = await request('/jwt/mcp', { headers: { authorization: `Bearer ${other}` } });
  assert.equal(r3.status, 401);
  assert.match(r3.headers['www-authenticate'], /not issued for this resource/);
});

test('wrong-audience token: 401 invalid_token', async () => {
  const t = await token(`${NGINX_URL}/other`);
  const r = await request('/mcp', { headers: { authorization: `Bearer ${t}` } });
  assert.equal(r.status, 401);
  assert.equal(r.headers['www-authenticate'],
    `Bearer error="invalid_token", error_description="The access token was not issued for this resource", resource_metadata="${PRM_URL}"`);
  const unknown = await request('/mcp', { headers: { authorization: 'Bearer not-a-real-token' } });
  assert.equal(unknown.status, 401);
  assert.match(unknown.headers['www-authenticate'], /error="invalid_token"/);
});

test('a 20 KB token: 401 invalid_token without an AS call', async () => {
  const before = (await stats()).introspections;
  const r = await request('/mcp', { headers: { authorization: `Bearer ${'a'.repeat(20 * 1024)}` } });
  assert.equal(r.status, 401);
  assert.match(r.headers['www-authenticate'], /^Bearer error="invalid_token", error_description="The access token is too long"/);
  assert.equal((await stats()).introspections, before);
});

test('the shared dict serves other workers: one introspection per token, allowed or rejected', async () => {
  const t = await token();
  await asPost('/__test/reset');
  const first = await request('/mcp', { headers: { authorization: `Bearer ${t}` } });
  assert.equal(first.status, 200);
  const rs = [];
  for (let i = 0; i < 12; i++) rs.push(await request('/mcp', { headers: { authorization: `Bearer ${t}` } }));
  assert.deepEqual(rs.map((r) => r.status), Array(12).fill(200));
  assert.equal(new Set([first, ...rs].map((r) => r.headers['x-worker-pid'])).size, 2, 'both workers served it');
  assert.equal((await stats()).introspections, 1);

  // An inactive token is cached too (cache_ttl_negative, 5 s), across workers.
  const bad = `not-a-token-${Date.now()}`;
  for (let i = 0; i < 8; i++) {
    const r = await request('/mcp', { headers: { authorization: `Bearer ${bad}` } });
    assert.equal(r.status, 401);
  }
  assert.equal((await stats()).introspections, 2);
});

test('50 concurrent requests with one new token across both workers: exactly 1 introspection', async () => {
  const t = await token();
  await asPost('/__test/reset');
  await asPost('/__test/delay?ms=300'); // keep the first call in flight while the others arrive
  const rs = await Promise.all(Array.from({ length: 50 }, () =>
    request('/mcp', { headers: { authorization: `Bearer ${t}` } })));
  await asPost('/__test/delay?ms=0');
  assert.deepEqual(rs.map((r) => r.status), Array(50).fill(200));
  const pids = new Set(rs.map((r) => r.headers['x-worker-pid']));
  assert.equal(pids.size, 2, 'both workers served requests');
  assert.equal((await stats()).introspections, 1);
});

test('50 concurrent requests with one new token within ONE worker: 1 introspection, the others wait in the worker', async (ctx) => {
  assert.equal(workers(ONE_PREFIX).length, 1);
  const resource = `${ONE_URL}/mcp`;
  const t = await token(resource);
  const before = await counts(ONE_URL);
  await asPost('/__test/reset');
  await asPost('/__test/delay?ms=300');
  const rs = await Promise.all(Array.from({ length: 50 }, () =>
    request('/mcp', { base: ONE_URL, headers: { authorization: `Bearer ${t}` } })));
  await asPost('/__test/delay?ms=0');
  assert.deepEqual(rs.map((r) => r.status), Array(50).fill(200));
  assert.equal((await stats()).introspections, 1);
  const after = await counts(ONE_URL);
  const waited = after.worker_waits - before.worker_waits;
  ctx.diagnostic(`requests that waited on the in-worker leader: ${waited} of 49`);
  assert.ok(waited >= 40, `requests that waited on the in-worker leader: ${waited}`);
  assert.equal(after.shm_waits, before.shm_waits, 'no request polled the shared dict');
  const [seen] = (await upstreamSeen()).slice(-1);
  assert.equal(seen.headers['x-client-id'], 'app');
});

test('the worker is not blocked while an introspection is in flight', async () => {
  const t = await token();
  await asPost('/__test/delay?ms=1500');
  const slow = request('/mcp', { headers: { authorization: `Bearer ${t}` } });
  await new Promise((r) => setTimeout(r, 100));
  const pings = [];
  for (let i = 0; i < 20; i++) pings.push(await request('/ping'));
  const s = await slow;
  await asPost('/__test/delay?ms=0');
  assert.equal(s.status, 200);
  assert.ok(s.ms >= 1400, `the slow request took ${s.ms} ms`);
  const busy = s.headers['x-worker-pid'];
  const sameWorker = pings.filter((p) => p.headers['x-worker-pid'] === busy);
  assert.ok(sameWorker.length > 0, 'some pings reached the worker waiting on the AS');
  for (const p of pings) {
    assert.equal(p.body, 'pong\n');
    assert.ok(p.ms < 50, `ping took ${p.ms} ms`);
  }
});

test('method_scopes: the JSON-RPC body is read; a missing scope is 403 insufficient_scope', async () => {
  const resource = `${NGINX_URL}/scoped/mcp`;
  const t = await token(resource);
  const call = await request('/scoped/mcp', {
    method: 'POST',
    headers: { authorization: `Bearer ${t}`, 'content-type': 'application/json' },
    body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'tools/call', params: { name: 'echo', arguments: {} } }),
  });
  assert.equal(call.status, 403, call.body);
  assert.equal(call.headers['www-authenticate'],
    `Bearer error="insufficient_scope", scope="mcp:admin", resource_metadata="${resource}/.well-known/oauth-protected-resource"`);
  const ping = await request('/scoped/mcp', {
    method: 'POST',
    headers: { authorization: `Bearer ${t}`, 'content-type': 'application/json' },
    body: JSON.stringify({ jsonrpc: '2.0', id: 2, method: 'ping' }),
  });
  assert.equal(ping.status, 200, ping.body);
  const last = (await upstreamSeen()).at(-1);
  assert.equal(last.headers['x-client-id'], 'app', 'claim header set when the body is read too');
  assert.equal(last.headers.authorization, undefined);
  const big = await request('/scoped/mcp', {
    method: 'POST',
    headers: { authorization: `Bearer ${t}`, 'content-type': 'application/json' },
    body: JSON.stringify({ jsonrpc: '2.0', id: 3, method: 'ping', params: { pad: 'x'.repeat(64 * 1024) } }),
  });
  assert.equal(big.status, 200, 'a body nginx buffered to a file is read too');
});

test('a Rust panic becomes a 500, and the worker lives on', async () => {
  const before = workers();
  // The test build's begin panics on this path; the C ABI returns MCP_OAUTH2_RESULT_PANIC
  // and the handler answers with the core's internal-error response.
  for (let i = 0; i < 6; i++) {
    const headers = i % 2 ? {} : { authorization: 'Bearer x' };
    const r = await request('/__mcp_oauth2_test_panic', { headers });
    assert.equal(r.status, 500);
    assert.deepEqual(JSON.parse(r.body).error, 'server_error');
  }
  assert.deepEqual(workers(), before, 'no worker died or was replaced');
  const log = readFileSync(`${NGINX_PREFIX}/logs/error.log`, 'utf8');
  assert.match(log, /mcp-oauth2 test panic/);
  assert.match(log, /mcp_oauth2: validator_begin: panic/);
  assert.doesNotMatch(log, /worker process \d+ exited on signal/);
  const r = await request('/ping');
  assert.equal(r.status, 200);
});

test('Kong handler (PDK stand-in): consumer mapping, credential, headers, rebuild on config change', async () => {
  const resource = `${NGINX_URL}/kong/mcp`;
  await clearUpstream();
  const none = await request('/kong/mcp');
  assert.equal(none.status, 401);
  assert.equal(none.headers['www-authenticate'],
    `Bearer resource_metadata="${NGINX_URL}/kong/mcp/.well-known/oauth-protected-resource"`);
  const prm = await request('/kong/mcp/.well-known/oauth-protected-resource');
  assert.equal(prm.status, 200);
  assert.equal(JSON.parse(prm.body).resource, resource);

  const t = await token(resource, 'app');
  const ok = await request('/kong/mcp', { headers: { authorization: `Bearer ${t}`, 'x-client-id': 'spoof' } });
  assert.equal(ok.status, 200, ok.body);
  let [seen] = await upstreamSeen();
  assert.equal(seen.headers.authorization, undefined);
  assert.equal(seen.headers['x-client-id'], 'app');
  assert.equal(seen.headers['x-standin-consumer'], 'app-user', 'consumer found by custom_id');
  assert.equal(seen.headers['x-standin-credential'], 'user-42', 'credential from credential_claim (sub)');

  // mcp-client has no consumer: consumer_claim is set and not optional -> 403.
  const t2 = await token(resource, 'mcp-client');
  const denied = await request('/kong/mcp', { headers: { authorization: `Bearer ${t2}` } });
  assert.equal(denied.status, 403, denied.body);
  // The refusal is the core's response (mcp_oauth2_decision_refuse), not a hand-built one.
  assert.match(denied.headers['content-type'], /^application\/json/);
  assert.deepEqual(JSON.parse(denied.body).error, 'forbidden');
  assert.match(JSON.parse(denied.body).error_description, /consumer/i);

  // A different conf table: the handler builds a new validator (other header, no consumer).
  await clearUpstream();
  const b = await request('/kong/mcp', { headers: { authorization: `Bearer ${t2}`, 'x-test-conf': 'b' } });
  assert.equal(b.status, 200, b.body);
  [seen] = await upstreamSeen();
  assert.equal(seen.headers['x-kong-client'], 'mcp-client');
  assert.equal(seen.headers['x-client-id'], undefined);

  // Consumer groups: the known group of the `groups` claim is set; a claim naming no
  // known group is 403 (consumer_groups_optional is false).
  await clearUpstream();
  const c = await request('/kong/mcp', { headers: { authorization: `Bearer ${t2}`, 'x-test-conf': 'c' } });
  assert.equal(c.status, 200, c.body);
  [seen] = await upstreamSeen();
  assert.equal(seen.headers['x-standin-groups'], 'gold');
  const d = await request('/kong/mcp', { headers: { authorization: `Bearer ${t2}`, 'x-test-conf': 'd' } });
  assert.equal(d.status, 403, d.body);
  assert.equal(JSON.parse(d.body).error, 'forbidden');
  assert.notEqual(JSON.parse(d.body).error_description, JSON.parse(denied.body).error_description,
    'a missing group and a missing consumer are told apart');
});

test('AS stopped: 503 without a challenge, never 401', async () => {
  const t = await token();
  process.kill(Number(AS_PID), 'SIGTERM');
  for (let i = 0; i < 50; i++) {
    try { await fetch(`${AS_URL}/__test/stats`); } catch { break; }
    await new Promise((r) => setTimeout(r, 100));
  }
  const r = await request('/mcp', { headers: { authorization: `Bearer ${t}` } });
  assert.equal(r.status, 503, r.body);
  assert.equal(r.headers['www-authenticate'], undefined);
  assert.equal(JSON.parse(r.body).error, 'temporarily_unavailable');
  // Failures are not cached: the same token fails again (the AS is still down), not 401.
  const again = await request('/mcp', { headers: { authorization: `Bearer ${t}` } });
  assert.equal(again.status, 503);
});
