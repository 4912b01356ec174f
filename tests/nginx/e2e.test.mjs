// nginx end-to-end test of resty.mcp_oauth2 and the Kong handler (through the PDK
// stand-in), against the real oidc-provider AS and an echo upstream. Started by
// scripts/test-lua.sh, which provides NGINX_URL (2 workers), ONE_URL (the same configuration
// with 1 worker), AS_URL, AS_PID, AS2_URL (tokens live 5 s), EXCHANGE_URL (RFC 8693 token
// endpoint), UPSTREAM_URL, UNDERSCORE_URL (underscores_in_headers on), NGINX_PREFIX,
// ONE_PREFIX, DOC_URL.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import { readFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';

const { NGINX_URL, ONE_URL, AS_URL, AS_PID, UPSTREAM_URL, NGINX_PREFIX, ONE_PREFIX, DOC_URL } = process.env;
const { AS2_URL, EXCHANGE_URL, UNDERSCORE_URL, DOC_ADMIN_URL } = process.env;
for (const [k, v] of Object.entries({ NGINX_URL, ONE_URL, AS_URL, AS_PID, UPSTREAM_URL, NGINX_PREFIX, ONE_PREFIX, DOC_URL, AS2_URL, EXCHANGE_URL, UNDERSCORE_URL, DOC_ADMIN_URL })) {
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

async function token(resource = RESOURCE, client = 'app', scope = 'mcp:read mcp:write', as = AS_URL) {
  const res = await fetch(`${as}/token`, {
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

  // nginx's own 400 (two Authorization headers) through the error_page location.
  const dup = await rawRequest(base, ['GET /mcp HTTP/1.1', 'Host: x', 'Authorization: Bearer a', 'Authorization: Bearer b']);
  assert.equal(dup.status, 400);
  assert.equal(dup.headers['www-authenticate'], `Bearer error="invalid_request", resource_metadata="${prmUrl}"`);
  // The loopback listener: metrics (every worker writes its counters each second) and evict.
  await sleep(1100);
  const m = await request('/metrics', { base: DOC_ADMIN_URL });
  assert.equal(m.status, 200);
  assert.match(m.body, /^mcp_oauth2_decisions_total\{decision="allow",reason="allowed"\} [1-9]/m);
  const ev = await request('/_mcp_oauth2_evict', {
    base: DOC_ADMIN_URL, method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: `token=${t}`,
  });
  assert.equal(ev.status, 200, ev.body);
  assert.match(ev.body, /^\{"evicted":(true|false)\}$/);
  // Not on the public listener.
  assert.equal((await request('/metrics', { base })).status, 404);
  await sleep(300); // every worker has applied the eviction: the next stream is decided anew
  // The body filter ends a stream at the token's exp; here it just passes a stream through.
  const s = await sse('/mcp/sse?interval=20&count=5', { authorization: `Bearer ${t}` }, base);
  assert.equal(s.status, 200);
  assert.deepEqual(s.events, ['0', '1', '2', '3', '4', 'done']);
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

// ---- issue 12 (nginx and Kong in production), issue 11 (token exchange), issue 13 (underscores)

// A raw HTTP/1.1 request (headers nginx or Node would not send as given): `lines` are the
// request line and header lines; answers { status, headers, body }.
function rawRequest(base, lines, body = '') {
  const { hostname, port } = new URL(base);
  return new Promise((resolve, reject) => {
    const sock = net.connect(Number(port), hostname, () => {
      sock.write(`${lines.join('\r\n')}\r\nConnection: close\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
    });
    const chunks = [];
    sock.on('data', (c) => chunks.push(c));
    sock.on('error', reject);
    sock.on('end', () => {
      const text = Buffer.concat(chunks).toString();
      const [head, ...rest] = text.split('\r\n\r\n');
      const [statusLine, ...headerLines] = head.split('\r\n');
      const headers = {};
      for (const l of headerLines) {
        const i = l.indexOf(':');
        headers[l.slice(0, i).toLowerCase()] = l.slice(i + 1).trim();
      }
      let payload = rest.join('\r\n\r\n');
      if (/chunked/i.test(headers['transfer-encoding'] ?? '')) {
        let out = '';
        for (;;) {
          const nl = payload.indexOf('\r\n');
          const n = parseInt(payload.slice(0, nl), 16);
          if (!n) break;
          out += payload.slice(nl + 2, nl + 2 + n);
          payload = payload.slice(nl + 2 + n + 2);
        }
        payload = out;
      }
      resolve({ status: Number(statusLine.split(' ')[1]), headers, body: payload });
    });
  });
}

// An SSE response: resolves when it ends, with its events and when it ended (Date.now()).
function sse(path, headers, base = NGINX_URL) {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const req = http.request(`${base}${path}`, { headers, agent: false }, (res) => {
      const events = [];
      let buf = '';
      res.on('data', (c) => {
        buf += c;
        let i;
        while ((i = buf.indexOf('\n\n')) >= 0) {
          events.push(buf.slice(0, i).replace(/^data: /, ''));
          buf = buf.slice(i + 2);
        }
      });
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, events, started, ended: Date.now(), complete: res.complete }));
      res.on('error', (e) => resolve({ status: res.statusCode, events, started, ended: Date.now(), error: e.message }));
    });
    req.on('error', reject);
    req.end();
  });
}

// Configurations the Kong schema lets through by type but the core refuses, and its words.
const KONG_REFUSALS = [
  [{ timeout: 1.5 }, 'timeout: invalid type: floating point `1.5`, expected u64'],
  [{ client_auth: 'private_key_jwt' }, 'client_jwk: is required by client_auth private_key_jwt'],
  [{ introspection_endpoint: 'not a url' }, 'introspection_endpoint: must be an absolute http:// or https:// URL'],
];
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const bearer = (t) => ({ authorization: `Bearer ${t}` });
const exchanges = async () => (await fetch(`${EXCHANGE_URL}/__requests`)).json();
const kongCounts = async () => JSON.parse((await request('/__kong_counts')).body);
async function introspect(t, as = AS_URL) {
  const res = await fetch(`${as}/token/introspection`, {
    method: 'POST',
    headers: {
      authorization: `Basic ${Buffer.from('gateway:gateway-secret').toString('base64')}`,
      'content-type': 'application/x-www-form-urlencoded',
    },
    body: new URLSearchParams({ token: t }),
  });
  return res.json();
}

test('Kong schema: the Admin API refuses what the core refuses, with the core\'s message (both plugin names)', async () => {
  // shared/fixtures/kong/config.json: the bare config object Kong users hold.
  const fixture = {
    resource: 'http://127.0.0.1:8080/mcp',
    authorization_servers: ['http://127.0.0.1:9400/realms/mcp'],
    introspection_endpoint: 'http://127.0.0.1:9400/realms/mcp/protocol/openid-connect/token/introspect',
    client_id: 'kong',
    client_secret: 'kong-secret',
    claim_to_header: [{ claim: 'sub', header: 'X-User-Id' }],
    insecure_relaxed_audience_validation: true,
  };
  const post = (body) => request('/kong-admin/plugins', {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body),
  });
  for (const name of ['ai-mcp-oauth2', 'mcp-oauth2']) {
    const ok = await post({ name, config: fixture });
    assert.equal(ok.status, 201, ok.body);
    assert.equal(JSON.parse(ok.body).name, name);
    for (const [change, message] of KONG_REFUSALS) {
      const r = await post({ name, config: { ...fixture, ...change } });
      assert.equal(r.status, 400, `${JSON.stringify(change)}: ${r.body}`);
      const b = JSON.parse(r.body);
      assert.equal(b.name, 'schema violation');
      assert.equal(b.fields.config, message, JSON.stringify(change));
      assert.equal(b.message, `schema violation (config: ${message})`);
    }
  }
  // A vault reference stands for a value Kong resolves later: accepted.
  const vault = await post({ name: 'ai-mcp-oauth2', config: { ...fixture, client_id: '{vault://env/mcp-client-id}', client_secret: '{vault://env/mcp-secret}' } });
  assert.equal(vault.status, 201, vault.body);
});

test('Kong consumer mapping per consumer_by through kong.cache: one look-up for N requests; never a 500', async () => {
  const resource = `${NGINX_URL}/kong/mcp`;
  const t = await token(resource, 'app');
  const kong = (conf, extra = {}) => request('/kong/mcp', { headers: { ...bearer(t), 'x-test-conf': conf, ...extra } });
  for (const [conf, kind] of [['u', 'username'], ['i', 'id'], ['a', 'custom_id']]) {
    const before = await kongCounts();
    await clearUpstream();
    const rs = [];
    for (let i = 0; i < 10; i++) rs.push(await kong(conf));
    assert.deepEqual(rs.map((r) => r.status), Array(10).fill(200), `${conf}: ${rs[0].body}`);
    assert.equal(new Set(rs.map((r) => r.headers['x-worker-pid'])).size, 2, 'both workers');
    for (const seen of await upstreamSeen()) {
      assert.equal(seen.headers['x-standin-consumer'], 'app-user', `consumer found by ${kind}`);
      assert.equal(seen.headers['x-later-consumer-id'], '3f4c1c8e-0000-0000-0000-00000000a001');
    }
    const after = await kongCounts();
    assert.ok(after[kind] - before[kind] <= 1, `${kind}: ${after[kind] - before[kind]} database look-ups for 10 requests`);
    if (conf !== 'a') assert.equal(after[kind] - before[kind], 1, `${kind}: one look-up`);
  }
  // consumer_by id with a value that is no UUID: never looked up by id (the stand-in's DAO
  // raises on it, like Kong's), so 403 consumer_not_found, not 500; optional: forwarded.
  const before = await kongCounts();
  const x = await kong('x');
  assert.equal(x.status, 403, x.body);
  assert.equal(JSON.parse(x.body).error, 'forbidden');
  const xo = await kong('xo');
  assert.equal(xo.status, 200, xo.body);
  assert.equal((await kongCounts()).id, before.id);
  // The same plugin under Kong's name.
  const alias = await kong('u', { 'x-plugin-name': 'ai-mcp-oauth2' });
  assert.equal(alias.status, 200, alias.body);
});

test('method_scopes: a 100 KB body (a temp file) is read whole, in resty and the Kong handler; over the limit → the core\'s 413', async () => {
  const pad = 'x'.repeat(100 * 1024);
  const rpc = (method) => JSON.stringify({ jsonrpc: '2.0', id: 1, method, params: { pad } });
  const scoped = await token(`${NGINX_URL}/scoped/mcp`);
  const kongT = await token(`${NGINX_URL}/kong/mcp`);
  const cases = [
    ['/scoped/mcp', bearer(scoped)],
    ['/kong/mcp', { ...bearer(kongT), 'x-test-conf': 's' }],
  ];
  for (const [path, headers] of cases) {
    const h = { ...headers, 'content-type': 'application/json' };
    const call = await request(path, { method: 'POST', headers: h, body: rpc('tools/call') });
    assert.equal(call.status, 403, `${path}: ${call.body}`);
    assert.match(call.headers['www-authenticate'], /error="insufficient_scope", scope="mcp:admin"/);
    const ping = await request(path, { method: 'POST', headers: h, body: rpc('ping') });
    assert.equal(ping.status, 200, `${path}: ${ping.body}`);
    const big = await request(path, { method: 'POST', headers: h, body: 'x'.repeat(1024 * 1024 + 10) });
    assert.equal(big.status, 413, `${path}: ${big.body}`);
    assert.equal(JSON.parse(big.body).error_description, 'The request body is too large');
  }
});

test('every request header counts: an Origin after 100 headers; more headers than Kong reads → 400 with the challenge', async () => {
  const pad = Array.from({ length: 120 }, (_, i) => `X-Pad-${i}: ${i}`);
  const evil = await rawRequest(NGINX_URL, ['GET /o/mcp HTTP/1.1', 'Host: x', ...pad, 'Origin: https://evil.example.com']);
  assert.equal(evil.status, 403, evil.body);
  assert.equal(JSON.parse(evil.body).error_description, 'The request origin is not allowed');
  const good = await rawRequest(NGINX_URL, ['GET /o/mcp HTTP/1.1', 'Host: x', ...pad, 'Origin: https://app.example.com']);
  assert.equal(good.status, 401, 'an allowed origin reaches the token check');
  const kongEvil = await rawRequest(NGINX_URL, ['GET /kong/mcp HTTP/1.1', 'Host: x', 'X-Test-Conf: o', ...pad, 'Origin: https://evil.example.com']);
  assert.equal(kongEvil.status, 403, kongEvil.body);
  // More headers than the Kong handler reads (Kong's get_headers maximum is 1000; this
  // nginx refuses about 1000 header lines itself, so the stand-in lowers it to 300): the
  // core's 400 with the challenge, never a decision on a truncated list.
  const many = Array.from({ length: 400 }, (_, i) => `X-P${i}: ${i}`);
  const t = await token(`${NGINX_URL}/kong/mcp`);
  const kongReq = ['GET /kong/mcp HTTP/1.1', 'Host: x', 'X-Test-Conf: b', 'X-Standin-Max-Headers: 300', `Authorization: Bearer ${t}`];
  const tooMany = await rawRequest(NGINX_URL, [...kongReq, ...many]);
  assert.equal(tooMany.status, 400, tooMany.body);
  assert.equal(tooMany.headers['www-authenticate'],
    `Bearer error="invalid_request", resource_metadata="${NGINX_URL}/kong/mcp/.well-known/oauth-protected-resource"`);
  const fine = await rawRequest(NGINX_URL, [...kongReq, ...many.slice(0, 250)]);
  assert.equal(fine.status, 200, '255 headers are all read');
  const kongDefault = await rawRequest(NGINX_URL, ['GET /kong/mcp HTTP/1.1', 'Host: x', 'X-Test-Conf: b', `Authorization: Bearer ${t}`, ...many]);
  assert.equal(kongDefault.status, 200, 'past 100 headers with Kong\'s default get_headers limit raised');
  // nginx's own refusal of too many header lines (494) gets the challenge too (error_page).
  const huge = Array.from({ length: 1100 }, (_, i) => `X-P${i}: ${i}`);
  const nginx494 = await rawRequest(NGINX_URL, ['GET /mcp HTTP/1.1', 'Host: x', ...huge]);
  assert.equal(nginx494.status, 400);
  assert.equal(nginx494.headers['www-authenticate'], `Bearer error="invalid_request", resource_metadata="${PRM_URL}"`);
});

test('nginx\'s own 400 for a duplicate Authorization is the core\'s 400 with the challenge', async () => {
  const r = await rawRequest(NGINX_URL, ['GET /mcp HTTP/1.1', 'Host: x', 'Authorization: Bearer a', 'Authorization: Bearer b']);
  assert.equal(r.status, 400);
  assert.equal(r.headers['www-authenticate'], `Bearer error="invalid_request", resource_metadata="${PRM_URL}"`);
  assert.deepEqual(JSON.parse(r.body), { error: 'invalid_request', error_description: 'Malformed Authorization header' });
});

test('streams end within 1 s of their token\'s exp (nginx body filter, and the Kong handler\'s body_filter)', async () => {
  const te = await token(`${NGINX_URL}/exp/mcp`, 'app', 'mcp:read', AS2_URL);
  const tk = await token(`${NGINX_URL}/kong/mcp`, 'app', 'mcp:read', AS2_URL);
  const { exp } = await introspect(te, AS2_URL);
  const { exp: expK } = await introspect(tk, AS2_URL);
  assert.ok(exp > Date.now() / 1000, 'a live token');
  const [a, b] = await Promise.all([
    sse('/exp/mcp/sse?interval=100&count=300', bearer(te)),
    sse('/kong/sse?interval=100&count=300', { ...bearer(tk), 'x-test-conf': 'e' }),
  ]);
  for (const [r, e] of [[a, exp], [b, expK]]) {
    assert.equal(r.status, 200);
    assert.ok(r.events.length > 10 && r.events.length < 300 && !r.events.includes('done'), `${r.events.length} events`);
    assert.ok(r.ended >= e * 1000 - 20, `ended ${r.ended - e * 1000} ms after exp`);
    assert.ok(r.ended <= e * 1000 + 1000, `ended ${r.ended - e * 1000} ms after exp`);
    assert.equal(r.error, undefined, 'ended cleanly (the last chunk), not reset');
  }
});

test('streams of an evicted token end within 1 s (admin evict location, any worker)', async () => {
  const t = await token(`${NGINX_URL}/sse/mcp`);
  const streams = Promise.all([0, 1, 2, 3].map(() => sse('/sse/mcp/sse?interval=100&count=100', bearer(t))));
  await sleep(1000);
  const ev = await request('/_mcp_oauth2_evict', {
    method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: `token=${encodeURIComponent(t)}`,
  });
  assert.equal(ev.status, 200, ev.body);
  const evictedAt = Date.now();
  for (const r of await streams) {
    assert.ok(!r.events.includes('done'), 'cut');
    assert.ok(r.ended - evictedAt <= 1000, `ended ${r.ended - evictedAt} ms after the evict`);
  }
  const off = await request('/_mcp_oauth2_evict', { method: 'GET' });
  assert.equal(off.status, 405);
});

test('cache_ttl_max 2: a 10 s stream of a valid token is not cut; one re-validation per token for all its streams', async () => {
  const t = await token(`${NGINX_URL}/short/mcp`);
  await asPost('/__test/reset');
  const allCounts = async () => {
    const byPid = {};
    for (let i = 0; i < 30 && Object.keys(byPid).length < 2; i++) {
      const c = await counts();
      byPid[c.pid] = c.rechecks;
    }
    return byPid;
  };
  const before = await allCounts();
  const rs = await Promise.all([0, 1, 2].map(() => sse('/short/mcp/sse?interval=200&count=50', bearer(t))));
  for (const r of rs) {
    assert.equal(r.status, 200);
    assert.equal(r.events.length, 51, 'every event and the end');
    assert.equal(r.events.at(-1), 'done');
  }
  const { introspections } = await stats();
  // 1 at the start, then about one per 2 s for the three streams together.
  assert.ok(introspections >= 3 && introspections <= 8, `${introspections} introspections in 10 s`);
  const after = await allCounts();
  const sum = (o) => Object.values(o).reduce((x, y) => x + y, 0);
  assert.ok(sum(after) > sum(before), 'the timers re-validated the token');
});

test('capture transport: a stream whose token the AS revoked ends when the timer re-validates it (cache_ttl_max 2)', async () => {
  const t = await token(`${NGINX_URL}/short/mcp`);
  const stream = sse('/short/mcp/sse?interval=200&count=50', bearer(t));
  await sleep(500);
  const res = await fetch(`${AS_URL}/token/revocation`, {
    method: 'POST',
    headers: {
      authorization: `Basic ${Buffer.from('app:app-secret').toString('base64')}`,
      'content-type': 'application/x-www-form-urlencoded',
    },
    body: new URLSearchParams({ token: t, token_type_hint: 'access_token' }),
  });
  assert.equal(res.status, 200);
  const revokedAt = Date.now();
  const r = await stream;
  assert.equal(r.status, 200);
  assert.ok(r.events.length < 50, `${r.events.length} events: the stream was cut`);
  // The cache entry ages out within 2 s of the first answer; the timer (0.2 s) then asks the
  // recheck location, which introspects: inactive.
  assert.ok(r.ended - revokedAt < 3500, `ended ${r.ended - revokedAt} ms after the revocation`);
});

test('a revoked and evicted token is refused by every worker within 1 s', async () => {
  const t = await token();
  const seen = new Set();
  for (let i = 0; i < 40 && seen.size < 2; i++) {
    const r = await request('/mcp', { headers: bearer(t) });
    assert.equal(r.status, 200);
    seen.add(r.headers['x-worker-pid']);
  }
  assert.equal(seen.size, 2, 'both workers cached it');
  const rev = await fetch(`${AS_URL}/token/revocation`, {
    method: 'POST',
    headers: {
      authorization: `Basic ${Buffer.from('gateway:gateway-secret').toString('base64')}`,
      'content-type': 'application/x-www-form-urlencoded',
    },
    body: new URLSearchParams({ token: t }),
  });
  assert.equal(rev.status, 200);
  const ev = await request('/_mcp_oauth2_evict?auth=test_auth', {
    method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: `token=${encodeURIComponent(t)}`,
  });
  assert.equal(ev.status, 200, ev.body);
  await sleep(1000);
  const pids = new Set();
  for (let i = 0; i < 16; i++) {
    const r = await request('/mcp', { headers: bearer(t) });
    assert.equal(r.status, 401, `worker ${r.headers['x-worker-pid']}: ${r.status}`);
    pids.add(r.headers['x-worker-pid']);
  }
  assert.equal(pids.size, 2, 'both workers refused it');
});

test('metrics: auth:metrics() over both workers, parsed by the Prometheus text parser, after a scripted sequence', async () => {
  const t = await token(`${NGINX_URL}/m/mcp`);
  await asPost('/__test/reset');
  assert.equal((await request('/m/mcp')).status, 401);
  const pids = new Set();
  for (let i = 0; i < 6; i++) {
    const r = await request('/m/mcp', { headers: bearer(t) });
    assert.equal(r.status, 200);
    pids.add(r.headers['x-worker-pid']);
  }
  assert.equal(pids.size, 2, 'both workers decided');
  for (let i = 0; i < 3; i++) assert.equal((await request('/m/mcp', { headers: bearer(`bad-${t.slice(0, 8)}`) })).status, 401);
  assert.equal((await stats()).introspections, 2);
  await sleep(1300); // every worker writes its snapshot each second
  const m = await request('/metrics');
  assert.equal(m.status, 200);
  assert.equal(m.headers['content-type'], 'text/plain; version=0.0.4; charset=utf-8');
  const families = JSON.parse(execFileSync('/usr/bin/python3', [new URL('./parse-metrics.py', import.meta.url).pathname], { input: m.body }).toString());
  const sample = (name, labels) => {
    const all = families.flatMap((f) => f.samples).filter((s) => s.name === name
      && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
    assert.equal(all.length, 1, `${name} ${JSON.stringify(labels)}`);
    return all[0].value;
  };
  assert.equal(families.find((f) => f.name === 'mcp_oauth2_decisions').type, 'counter');
  assert.equal(sample('mcp_oauth2_decisions_total', { decision: 'allow', reason: 'allowed' }), 6);
  assert.equal(sample('mcp_oauth2_decisions_total', { decision: 'deny', reason: 'no_credentials' }), 1);
  assert.equal(sample('mcp_oauth2_decisions_total', { decision: 'deny', reason: 'token_inactive' }), 3);
  assert.equal(sample('mcp_oauth2_authorization_server_requests_total', { kind: 'introspection', result: 'ok' }), 2);
  assert.equal(sample('mcp_oauth2_authorization_server_request_duration_seconds_count', { kind: 'introspection' }), 2);
  const shared = sample('mcp_oauth2_cache_lookups_total', { cache: 'shared', result: 'hit' })
    + sample('mcp_oauth2_cache_lookups_total', { cache: 'shared', result: 'miss' });
  assert.equal(sample('mcp_oauth2_cache_lookups_total', { cache: 'shared', result: 'miss' }), 2, 'each token missed the shared dict once');
  assert.ok(shared >= 2, `${shared} shared-dict look-ups`);
});

test('token exchange through nginx: the upstream gets only the exchanged token; identity in ngx.ctx and $variables', async () => {
  const resource = `${NGINX_URL}/x/mcp`;
  const t = await token(resource);
  await fetch(`${EXCHANGE_URL}/__requests`, { method: 'DELETE' });
  const noActor = await request('/x/mcp', { headers: bearer(t) });
  assert.equal(noActor.status, 400, noActor.body);
  assert.match(noActor.headers['www-authenticate'], /^Bearer error="invalid_request"/);
  assert.deepEqual(await exchanges(), [], 'a request without its actor token is never exchanged');
  await clearUpstream();
  const headers = { ...bearer(t), 'x-actor-token': 'actor-123', 'x-sub': 'spoofed' };
  const rs = [];
  for (let i = 0; i < 8; i++) rs.push(await request('/x/mcp', { headers }));
  assert.deepEqual(rs.map((r) => r.status), Array(8).fill(200), rs[0].body);
  assert.equal(new Set(rs.map((r) => r.headers['x-worker-pid'])).size, 2, 'both workers');
  const ex = await exchanges();
  assert.equal(ex.length, 1, 'one exchange for 8 requests over 2 workers (shared dict)');
  assert.equal(ex[0].authorization, `Basic ${Buffer.from('exchanger:exchanger-secret').toString('base64')}`);
  assert.deepEqual(ex[0].params, {
    grant_type: ['urn:ietf:params:oauth:grant-type:token-exchange'],
    subject_token: [t],
    subject_token_type: ['urn:ietf:params:oauth:token-type:access_token'],
    requested_token_type: ['urn:ietf:params:oauth:token-type:access_token'],
    audience: ['https://upstream.example.com', 'urn:upstream'],
    scope: ['upstream:read upstream:write'],
    actor_token: ['actor-123'],
    actor_token_type: ['urn:ietf:params:oauth:token-type:access_token'],
  });
  for (const seen of await upstreamSeen()) {
    const h = seen.headers;
    assert.match(h.authorization, /^Bearer [\w-]+\.[\w-]+\.x$/);
    assert.ok(!JSON.stringify(seen.rawHeaders).includes(t), 'the client token never reaches the upstream');
    assert.equal(h['x-actor-token'], undefined, 'the actor-token header is removed');
    assert.equal(h['x-sub'], 'exchanged-subject', 'claim headers from the exchanged JWT');
    assert.equal(h['x-aud'], 'https://upstream.example.com,urn:upstream');
    assert.equal(h['x-var-subject'], 'exchanged-subject');
    assert.equal(h['x-var-client-id'], 'exchanged-client');
    assert.equal(h['x-var-scope'], 'upstream:read upstream:write');
    const ctx = JSON.parse(h['x-ctx']);
    assert.equal(ctx.subject, 'exchanged-subject');
    assert.equal(ctx.claims.sub, 'exchanged-subject');
    assert.equal(`Bearer ${ctx.exchanged_token}`, h.authorization);
  }
  // 20 concurrent first requests with a new token: one exchange.
  const t2 = await token(resource);
  await fetch(`${EXCHANGE_URL}/__requests`, { method: 'DELETE' });
  await fetch(`${EXCHANGE_URL}/__delay?ms=300`, { method: 'POST' });
  const many = await Promise.all(Array.from({ length: 20 }, () => request('/x/mcp', { headers: { ...bearer(t2), 'x-actor-token': 'actor-123' } })));
  await fetch(`${EXCHANGE_URL}/__delay?ms=0`, { method: 'POST' });
  assert.deepEqual(many.map((r) => r.status), Array(20).fill(200));
  assert.equal((await exchanges()).length, 1);
});

test('token exchange through the Kong handler: later plugins read kong.ctx.shared.mcp_oauth2', async () => {
  const t = await token(`${NGINX_URL}/kong/mcp`);
  await fetch(`${EXCHANGE_URL}/__requests`, { method: 'DELETE' });
  await clearUpstream();
  const r = await request('/kong/mcp', { headers: { ...bearer(t), 'x-test-conf': 't' } });
  assert.equal(r.status, 200, r.body);
  const [seen] = await upstreamSeen();
  assert.match(seen.headers.authorization, /^Bearer [\w-]+\.[\w-]+\.x$/);
  assert.ok(!JSON.stringify(seen.rawHeaders).includes(t));
  const shared = JSON.parse(seen.headers['x-later-shared']);
  assert.equal(shared.subject, 'exchanged-subject');
  assert.equal(shared.client_id, 'exchanged-client');
  assert.equal(shared.claims.sub, 'exchanged-subject');
  assert.deepEqual(shared.claims.aud, ['kong-upstream']);
  assert.equal(`Bearer ${shared.exchanged_token}`, seen.headers.authorization);
  const [ex] = await exchanges();
  assert.equal(ex.authorization, null, 'client_secret_post: credentials in the body');
  assert.deepEqual(ex.params.client_id, ['exchanger']);
  assert.deepEqual(ex.params.client_secret, ['exchanger-secret']);
  assert.deepEqual(ex.params.audience, ['kong-upstream']);

  // inherit + actor from the config + cache.enabled false: one exchange per request, with
  // the gateway's own credentials and the configured actor token.
  await fetch(`${EXCHANGE_URL}/__requests`, { method: 'DELETE' });
  for (let i = 0; i < 2; i++) {
    const ri = await request('/kong/mcp', { headers: { ...bearer(t), 'x-test-conf': 'ti' } });
    assert.equal(ri.status, 200, ri.body);
  }
  const exs = await exchanges();
  assert.equal(exs.length, 2, 'cache.enabled false: one exchange per request');
  for (const e of exs) {
    assert.equal(e.authorization, `Basic ${Buffer.from('gateway:gateway-secret').toString('base64')}`);
    assert.deepEqual(e.params.actor_token, ['cfg-actor']);
  }
  // The token endpoint unreachable: 503, never the client's token upstream.
  await clearUpstream();
  const down = await request('/kong/mcp', { headers: { ...bearer(t), 'x-test-conf': 'td' } });
  assert.equal(down.status, 503, down.body);
  assert.equal(JSON.parse(down.body).error, 'temporarily_unavailable');
  assert.deepEqual(await upstreamSeen(), []);
});

test('underscores_in_headers on: the `_` twins of claim headers never reach the upstream (resty and Kong)', async () => {
  const t = await token(`${UNDERSCORE_URL}/mcp`);
  await clearUpstream();
  const spoof = { 'x_client_id': 'evil', 'X_Scope': 'mcp:admin', 'x_other_thing': 'kept' };
  const r = await request('/mcp', { base: UNDERSCORE_URL, headers: { ...bearer(t), ...spoof } });
  assert.equal(r.status, 200, r.body);
  let [seen] = await upstreamSeen();
  assert.equal(seen.headers['x-client-id'], 'app');
  assert.equal(seen.headers.x_client_id, undefined);
  assert.equal(seen.headers.x_scope, undefined);
  assert.equal(seen.headers.x_other_thing, 'kept');
  // Without the option the twin passes: why it exists (and why nginx's default drops them).
  await clearUpstream();
  const t2 = await token(`${UNDERSCORE_URL}/off/mcp`);
  await request('/off/mcp', { base: UNDERSCORE_URL, headers: { ...bearer(t2), ...spoof } });
  [seen] = await upstreamSeen();
  assert.equal(seen.headers.x_client_id, 'evil');
  // The Kong handler applies the predicate to every header (Kong turns underscores on).
  await clearUpstream();
  const tk = await token(`${NGINX_URL}/kong/mcp`);
  const k = await request('/kong/mcp', { base: UNDERSCORE_URL, headers: { ...bearer(tk), 'x-test-conf': 'h', ...spoof } });
  assert.equal(k.status, 200, k.body);
  [seen] = await upstreamSeen();
  assert.equal(seen.headers['x-client-id'], 'app');
  assert.equal(seen.headers.x_client_id, undefined);
  assert.equal(seen.headers.x_other_thing, 'kept');
});

test('logs: configuration warnings once per worker at new(); no token in the error log', async () => {
  const log = readFileSync(`${NGINX_PREFIX}/logs/error.log`, 'utf8');
  const warnings = log.split('\n').filter((l) => l.includes('mcp_oauth2: configuration: ') && l.includes('ssl_verify'));
  assert.equal(warnings.length, 2, warnings.join('\n'));
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
  // Logged at warn with the reason and a detail naming the failed call, never the token.
  const log = readFileSync(`${NGINX_PREFIX}/logs/error.log`, 'utf8');
  assert.match(log, /\[warn\].*mcp_oauth2: authorization_server_unavailable 503: introspection: /);
  assert.ok(!log.includes(t), 'no token in the error log');
});
