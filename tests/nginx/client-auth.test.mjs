// nginx end-to-end test of issue 10 (resty.mcp_oauth2 and the Kong handler through the PDK
// stand-in): every client_auth value, mutual TLS through the capture transport's documented
// location, signed introspection answers (RFC 9701), introspection_format for what runs
// next, keep-alive, and the configurations the capture transport refuses. Against real
// nginx (2 workers) and two oidc-provider processes of their own: AS3 (one gateway client
// per method; keys made by scripts/test-lua.sh for this run) and TLSAS (https, asking for
// client certificates; a test PKI made with openssl for this run). Started by
// scripts/test-lua.sh, which provides NGINX_URL, AS3_URL, TLSAS_URL, PKI_DIR, NGINX_PREFIX,
// UPSTREAM_URL.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import https from 'node:https';
import { readFileSync } from 'node:fs';

const { NGINX_URL, AS3_URL, TLSAS_URL, PKI_DIR, NGINX_PREFIX, UPSTREAM_URL } = process.env;
for (const [k, v] of Object.entries({ NGINX_URL, AS3_URL, TLSAS_URL, PKI_DIR, NGINX_PREFIX, UPSTREAM_URL })) {
  if (!v) throw new Error(`${k} is required`);
}
// The harness trusts the https AS's self-signed certificate, nothing else.
const tlsAgent = new https.Agent({ ca: readFileSync(`${PKI_DIR}/as.crt`) });

// One request to `url` (http or https): { status, headers, body }.
function fetchRaw(url, { method = 'GET', headers = {}, body } = {}) {
  const u = new URL(url);
  const mod = u.protocol === 'https:' ? https : http;
  return new Promise((resolve, reject) => {
    const req = mod.request(u, { method, headers, agent: u.protocol === 'https:' ? tlsAgent : false }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks).toString() }));
    });
    req.on('error', reject);
    if (body) req.write(body);
    req.end();
  });
}
const json = async (url, opts) => JSON.parse((await fetchRaw(url, opts)).body);
const request = (path, headers = {}) => fetchRaw(`${NGINX_URL}${path}`, { headers });

// A client_credentials token of `app` at `as` for `resource`.
async function token(resource, as = AS3_URL) {
  const r = await fetchRaw(`${as}/token`, {
    method: 'POST',
    headers: {
      authorization: `Basic ${Buffer.from('app:app-secret').toString('base64')}`,
      'content-type': 'application/x-www-form-urlencoded',
    },
    body: new URLSearchParams({ grant_type: 'client_credentials', resource, scope: 'mcp:read' }).toString(),
  });
  assert.equal(r.status, 200, r.body);
  return JSON.parse(r.body).access_token;
}
const caseUrl = (name) => `${NGINX_URL}/ca/${name}/mcp`;
const bearer = (t) => ({ authorization: `Bearer ${t}` });
const assertions = (as = AS3_URL) => json(`${as}/__test/assertions`);
const introspections = (as = AS3_URL) => json(`${as}/__test/introspection_requests`);
const stats = (as = AS3_URL) => json(`${as}/__test/stats`);
const upstreamSeen = () => json(`${UPSTREAM_URL}/__requests`);
const clearUpstream = () => fetchRaw(`${UPSTREAM_URL}/__requests`, { method: 'DELETE' });
const errorLog = () => readFileSync(`${NGINX_PREFIX}/logs/error.log`, 'utf8');
const b64 = (s, enc) => Buffer.from(s, enc).toString();

test('client_secret_jwt and private_key_jwt through nginx: a fresh assertion per introspection, nothing from nginx', async () => {
  const cases = [
    ['hs256', 'gw-hs256', 'HS256', undefined],
    ['hs512', 'gw-hs512', 'HS512', undefined],
    ['es256', 'gw-es256', 'ES256', 'es-k1'],
    ['rs256', 'gw-rs256', 'RS256', 'rs-k1'], // client_jwk as a JSON string (Kong's form)
    ['eddsa', 'gw-eddsa', 'EdDSA', undefined], // a JWK Set holding the key
  ];
  for (const [name, client, alg, kid] of cases) {
    const t = await token(caseUrl(name));
    await clearUpstream();
    for (let i = 0; i < 3; i++) {
      const r = await request(`/ca/${name}/mcp`, bearer(t));
      assert.equal(r.status, 200, `${name}: ${r.body}`);
    }
    const seen = await upstreamSeen();
    assert.equal(seen.length, 3);
    assert.ok(seen.every((s) => s.headers.authorization === undefined), 'no Authorization upstream');
    const sent = (await assertions()).filter((a) => a.client_id === client);
    assert.equal(sent.length, 3, `${name}: cache_introspection false: one assertion per request`);
    for (const a of sent) {
      assert.equal(a.accepted, true, `${name}: ${JSON.stringify(a)}`);
      assert.equal(a.alg, alg);
      assert.equal(a.kid, kid);
      assert.equal(a.path, '/token/introspection');
      assert.equal(a.aud, `${AS3_URL}/token/introspection`, 'aud is the endpoint URL');
      assert.equal(a.exp - a.iat, 60);
    }
    const reqs = (await introspections()).filter((q) => q.client_id === client);
    assert.ok(reqs.length >= 3 && reqs.every((q) => !q.authorization), `${name}: no Authorization header`);
  }
  // A secret the AS does not know: it refuses the gateway → 503, never 401, nothing upstream.
  const t = await token(caseUrl('badjwt'));
  await clearUpstream();
  const bad = await request('/ca/badjwt/mcp', bearer(t));
  assert.equal(bad.status, 503, bad.body);
  assert.equal(JSON.parse(bad.body).error, 'temporarily_unavailable');
  assert.deepEqual(await upstreamSeen(), []);
  assert.match(errorLog(), /authorization_server_unavailable 503: introspection: HTTP 401 \(the authorization server refused the gateway itself: check client_id, client_secret, client_alg and client_auth\)/);
  // Every assertion the AS saw had its own jti.
  const all = await assertions();
  assert.equal(new Set(all.map((a) => a.jti)).size, all.length, 'never the same jti twice');
  assert.equal(all.filter((a) => a.accepted === false).length, 1);
});

test('client_secret_basic, client_secret_post and none through nginx, each as registered', async () => {
  for (const [name, client, authorization] of [['basic', 'gateway', true], ['post', 'gateway-post', false], ['none', 'gw-none', false]]) {
    const t = await token(caseUrl(name));
    const r = await request(`/ca/${name}/mcp`, bearer(t));
    assert.equal(r.status, 200, `${name}: ${r.body}`);
    const reqs = (await introspections()).filter((q) => q.client_id === client);
    assert.ok(reqs.length >= 1, name);
    assert.equal(reqs.at(-1).authorization, authorization, `${name}: Authorization header sent or not`);
    assert.equal(reqs.at(-1).status, 200);
  }
});

test('signed introspection answers (RFC 9701) through nginx: the core\'s Accept reaches the AS; keys found by discovery', async () => {
  const before = await stats();
  const t = await token(caseUrl('signed'));
  await clearUpstream();
  const r = await request('/ca/signed/mcp', bearer(t));
  assert.equal(r.status, 200, r.body);
  const q = (await introspections()).filter((x) => x.client_id === 'gw-signed').at(-1);
  assert.equal(q.accept, 'application/token-introspection+jwt');
  const after = await stats();
  assert.ok(after.discovery > before.discovery && after.jwks > before.jwks, 'discovery and keys through the plain location');
  // introspection_format base64url: the token_introspection object, for what runs next.
  const [seen] = await upstreamSeen();
  const answer = JSON.parse(b64(seen.headers['x-var-introspection'], 'base64url'));
  assert.equal(answer.active, true);
  assert.equal(answer.client_id, 'app');
  assert.equal(answer.aud, caseUrl('signed'));
  assert.equal(seen.headers['x-ctx-introspection'], seen.headers['x-var-introspection']);
  // A location that sends a fixed Accept: the signed answer is never asked for → 503, and
  // the error log names the location and the variable.
  const bare = await request('/ca/signedbare/mcp', bearer(await token(caseUrl('signedbare'))));
  assert.equal(bare.status, 503, bare.body);
  assert.match(errorLog(), /\/_mcp_oauth2_as_bare does not set Accept from \$mcp_oauth2_accept \(application\/token-introspection\+jwt\)/);
});

test('introspection_format: ngx.ctx.mcp_oauth2.introspection and $mcp_oauth2_introspection hold the AS\'s answer', async () => {
  for (const [name, decode] of [['string', (s) => s], ['base64', (s) => b64(s, 'base64')]]) {
    const t = await token(caseUrl(name));
    await clearUpstream();
    const r = await request(`/ca/${name}/mcp`, bearer(t));
    assert.equal(r.status, 200, r.body);
    const [seen] = await upstreamSeen();
    const text = decode(seen.headers['x-var-introspection']);
    const answer = JSON.parse(text);
    assert.deepEqual([answer.active, answer.client_id, answer.scope, answer.aud], [true, 'app', 'mcp:read', caseUrl(name)]);
    assert.equal(seen.headers['x-ctx-introspection'], seen.headers['x-var-introspection'], name);
    if (name === 'base64') assert.match(seen.headers['x-var-introspection'], /^[A-Za-z0-9+/]+=*$/);
  }
  // Without introspection_format: neither.
  await clearUpstream();
  const r = await request('/ca/basic/mcp', bearer(await token(caseUrl('basic'))));
  assert.equal(r.status, 200);
  const [seen] = await upstreamSeen();
  assert.equal(seen.headers['x-var-introspection'], undefined);
  assert.equal(seen.headers['x-ctx-introspection'], undefined);
});

test('keepalive through the capture location: Connection close when false, none when true; a location that cannot say it → 503', async () => {
  for (const [name, connection] of [['kaon', null], ['kaoff', 'close']]) {
    const r = await request(`/ca/${name}/mcp`, bearer(await token(caseUrl(name))));
    assert.equal(r.status, 200, r.body);
    const q = (await introspections()).at(-1);
    assert.equal(q.connection, connection, name);
    assert.equal(q.http_version, '1.1');
  }
  const bare = await request('/ca/kaoffbare/mcp', bearer(await token(caseUrl('kaoffbare'))));
  assert.equal(bare.status, 503, bare.body);
  assert.match(errorLog(), /\/_mcp_oauth2_as_bare does not set Connection from \$mcp_oauth2_connection \(keepalive: false\)/);
});

test('mutual TLS through the documented capture location: accepted with the configured certificate; 503 without it, with another, or when the AS certificate does not verify', async () => {
  const tlsStats = () => stats(TLSAS_URL);
  for (const [name, client, cn] of [['tls', 'gw-tls', 'gateway.test'], ['self', 'gw-self', 'self-signed gateway']]) {
    const t = await token(caseUrl(name), TLSAS_URL);
    await clearUpstream();
    const r = await request(`/ca/${name}/mcp`, bearer(t));
    assert.equal(r.status, 200, `${name}: ${r.body}`);
    const q = (await introspections(TLSAS_URL)).at(-1);
    // At mtls_introspection_endpoint (introspection_endpoint is a closed port), presenting
    // the configured certificate, with client_id in the form and nothing else.
    assert.deepEqual([q.client_id, q.client_certificate, q.authorization, q.status], [client, cn, false, 200], name);
    const [seen] = await upstreamSeen();
    assert.equal(seen.headers.authorization, undefined);
  }
  for (const [name, cn] of [['nocert', null], ['other', 'other.test']]) {
    const t = await token(caseUrl(name), TLSAS_URL);
    const r = await request(`/ca/${name}/mcp`, bearer(t));
    assert.equal(r.status, 503, `${name}: ${r.body}`);
    assert.equal(JSON.parse(r.body).error, 'temporarily_unavailable');
    const q = (await introspections(TLSAS_URL)).at(-1);
    assert.deepEqual([q.client_certificate, q.status], [cn, 401], name);
  }
  assert.match(errorLog(), /introspection: HTTP 401 \(the authorization server refused the gateway itself: check client_id, tls_client_auth_cert, tls_client_auth_key and client_auth\)/);
  // proxy_ssl_verify on, trusting a CA that did not issue the AS's certificate: no call.
  const before = (await tlsStats()).introspections;
  const strict = await request('/ca/strict/mcp', bearer(await token(caseUrl('strict'), TLSAS_URL)));
  assert.equal(strict.status, 503, strict.body);
  assert.equal((await tlsStats()).introspections, before, 'the handshake failed: nothing reached the AS');
  assert.match(errorLog(), /upstream SSL certificate verify error/);
});

test('Kong handler (PDK stand-in): every client_auth value; introspection_format in kong.ctx.shared', async () => {
  const resource = `${NGINX_URL}/kong/mcp`;
  const cases = [
    ['kbasic', AS3_URL, 'gateway'], ['kpost', AS3_URL, 'gateway-post'], ['knone', AS3_URL, 'gw-none'],
    ['khs256', AS3_URL, 'gw-hs256'], ['kes256', AS3_URL, 'gw-es256'], ['ksigned', AS3_URL, 'gw-signed'],
    ['ktls', TLSAS_URL, 'gw-tls'], ['kself', TLSAS_URL, 'gw-self'],
  ];
  for (const [conf, as, client] of cases) {
    const t = await token(resource, as);
    await clearUpstream();
    const r = await request('/kong/mcp', { ...bearer(t), 'x-test-conf': conf });
    assert.equal(r.status, 200, `${conf}: ${r.body}`);
    const q = (await introspections(as)).filter((x) => x.client_id === client).at(-1);
    assert.equal(q?.status, 200, conf);
    const [seen] = await upstreamSeen();
    assert.equal(seen.headers.authorization, undefined, conf);
    if (conf === 'ksigned') {
      assert.equal(q.accept, 'application/token-introspection+jwt');
      const shared = JSON.parse(seen.headers['x-later-shared']);
      assert.equal(JSON.parse(shared.introspection).active, true, 'introspection_format string: the JSON text');
    }
  }
  const jwts = (await assertions()).filter((a) => a.client_id === 'gw-hs256' || a.client_id === 'gw-es256');
  assert.ok(jwts.some((a) => a.alg === 'ES256' && a.kid === 'es-k1' && a.accepted), 'client_jwk as Kong stores it');
  // introspection_format base64 for later plugins: kong.ctx.shared.mcp_oauth2.introspection.
  await clearUpstream();
  const r = await request('/kong/mcp', { ...bearer(await token(resource)), 'x-test-conf': 'kfmt' });
  assert.equal(r.status, 200, r.body);
  const [seen] = await upstreamSeen();
  const shared = JSON.parse(seen.headers['x-later-shared']);
  const answer = JSON.parse(b64(shared.introspection, 'base64'));
  assert.deepEqual([answer.active, answer.client_id, answer.aud], [true, 'app', resource]);
});

test('Kong schema (the stand-in uses capture): forward proxies and HTTP/1.0 refused naming the field; mutual TLS accepted with its location', async () => {
  const config = {
    resource: 'http://127.0.0.1:8080/mcp',
    authorization_servers: ['https://as.example.com'],
    introspection_endpoint: 'https://as.example.com/introspect',
    client_id: 'kong',
    client_secret: 'kong-secret',
  };
  const post = (name, change) => fetchRaw(`${NGINX_URL}/kong-admin/plugins`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name, config: { ...config, ...change } }),
  });
  for (const name of ['ai-mcp-oauth2', 'mcp-oauth2']) {
    for (const [change, field] of [
      [{ https_proxy: 'http://proxy.example.com:3128', https_proxy_authorization: 'Basic eDp5' }, 'https_proxy'],
      [{ http_proxy: 'http://proxy.example.com:3128', no_proxy: 'localhost' }, 'http_proxy'],
    ]) {
      const r = await post(name, change);
      assert.equal(r.status, 400, r.body);
      assert.match(JSON.parse(r.body).fields.config, new RegExp(`^${field}: the capture transport \\(nginx's proxy_pass in /_mcp_oauth2_as\\) cannot go through a forward proxy`));
    }
    const v10 = await post(name, { http_version: 1.0 });
    assert.equal(v10.status, 400, v10.body);
    assert.match(JSON.parse(v10.body).fields.config, /^http_version: 1\.0 is not available with the capture transport/);
    const mtls = await post(name, {
      client_secret: null,
      client_auth: 'tls_client_auth',
      tls_client_auth_cert: readFileSync(`${PKI_DIR}/client.crt`, 'utf8'),
      tls_client_auth_key: readFileSync(`${PKI_DIR}/client.key`, 'utf8'),
    });
    assert.equal(mtls.status, 201, mtls.body);
  }
});
