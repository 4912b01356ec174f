// mcp-client.test.mjs — end-to-end check of the mcp-oauth2 gateway with the
// official MCP SDK client, exactly as a real machine-to-machine MCP client would
// use it: it is given ONLY the protected MCP URL and client credentials, and must
// find everything else (PRM, AS metadata, token endpoint) by itself.
//
//   PROXY_URL=http://127.0.0.1:8080/mcp UPSTREAM_URL=http://127.0.0.1:9000 \
//   AS_URL=http://127.0.0.1:9001 node --test tests/node/mcp-client.test.mjs
//
// Env:
//   PROXY_URL     the gateway-protected MCP endpoint (required)
//   UPSTREAM_URL  base URL of mcp-upstream.mjs, to read /__headers (required)
//   AS_URL        issuer of as-server.mjs; also the only AS the client may send its
//                 credentials to (SDK `expectedIssuer`) (required)
//   EXPECT_HEADER claim header the gateway must add upstream (default x-client-id)
//   EXPECT_VALUE  its expected value (default: `mcp-client` when EXPECT_HEADER is
//                 x-client-id, otherwise only its presence is checked)
//   MCP_SCOPE     scope requested in the token request (default "mcp:read mcp:write")
//
// Flow the SDK performs (@modelcontextprotocol/sdk 1.32, client/streamableHttp.js
// + client/auth.js): POST initialize without a token → 401 with
// `WWW-Authenticate: Bearer resource_metadata="…"` → GET that PRM → AS metadata
// at <issuer>/.well-known/oauth-authorization-server (then openid-configuration)
// → POST token endpoint grant_type=client_credentials, resource=<PRM resource>
// (sent verbatim), scope=<provider scope>, Basic auth → retry with the bearer.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { ClientCredentialsProvider } from '@modelcontextprotocol/sdk/client/auth-extensions.js';

const { PROXY_URL, UPSTREAM_URL, AS_URL } = process.env;
const EXPECT_HEADER = (process.env.EXPECT_HEADER || 'x-client-id').toLowerCase();
const EXPECT_VALUE = process.env.EXPECT_VALUE || (EXPECT_HEADER === 'x-client-id' ? 'mcp-client' : undefined);
const MCP_SCOPE = process.env.MCP_SCOPE ?? 'mcp:read mcp:write';

async function getJson(url, init) {
  let res;
  try {
    res = await fetch(url, init);
  } catch (err) {
    // Node's bare "fetch failed" names neither the URL nor the cause.
    throw new Error(`${init?.method ?? 'GET'} ${url} failed: ${err.cause?.code ?? err.cause?.message ?? err.message}`);
  }
  assert.equal(res.status, 200, `${init?.method ?? 'GET'} ${url} → HTTP ${res.status}`);
  return res.json();
}

// Every HTTP exchange the SDK makes (MCP, PRM, AS metadata, token), so the test
// can check the discovery chain and the token request itself, not just the outcome.
function recordingFetch(log) {
  return async (input, init = {}) => {
    const url = String(input instanceof Request ? input.url : input);
    const method = (init.method ?? 'GET').toUpperCase();
    const headers = new Headers(init.headers);
    const body = typeof init.body === 'string' || init.body instanceof URLSearchParams ? String(init.body) : undefined;
    const res = await fetch(input, init);
    log.push({ url, method, headers, body, status: res.status, wwwAuthenticate: res.headers.get('www-authenticate') });
    return res;
  };
}

test('MCP SDK client (client_credentials) through the gateway', async (t) => {
  // Missing configuration is a failure, not a skip: CI must not go green on a
  // harness that silently tested nothing.
  const missing = ['PROXY_URL', 'UPSTREAM_URL', 'AS_URL'].filter((k) => !process.env[k]);
  assert.deepEqual(missing, [], `required env var(s) not set: ${missing.join(', ')} — see tests/node/README.md`);

  const upstreamBase = UPSTREAM_URL.replace(/\/+$/, '');
  const asBase = AS_URL.replace(/\/+$/, '');

  // Deltas, not absolute values: the AS and upstream may have served earlier tests.
  const statsBefore = await getJson(`${asBase}/__test/stats`);
  const seenBefore = (await getJson(`${upstreamBase}/__headers`)).length;

  const log = [];
  const transport = new StreamableHTTPClientTransport(new URL(PROXY_URL), {
    authProvider: new ClientCredentialsProvider({
      clientId: 'mcp-client',
      clientSecret: 'mcp-client-secret',
      scope: MCP_SCOPE,
      expectedIssuer: AS_URL, // the SDK refuses to send the secret to any other AS
    }),
    fetch: recordingFetch(log),
  });
  const client = new Client({ name: 'mcp-oauth2-node-test', version: '1.0.0' });
  t.after(() => client.close());

  await t.test('initialize (401 → discovery → token → retry)', async () => {
    await client.connect(transport);
    assert.ok(client.getServerVersion()?.name, 'initialize returned serverInfo');
  });

  await t.test('the gateway challenged, and the token request carried the PRM resource', async () => {
    const challenge = log.find((e) => e.status === 401);
    assert.ok(challenge, 'the first unauthenticated request got a 401');
    assert.match(challenge.wwwAuthenticate ?? '', /^Bearer /i, 'challenge uses the Bearer scheme');
    const prmUrl = /resource_metadata="([^"]+)"/.exec(challenge.wwwAuthenticate)?.[1];
    assert.ok(prmUrl, `WWW-Authenticate carries resource_metadata: ${challenge.wwwAuthenticate}`);

    const prm = await getJson(prmUrl);
    assert.ok(prm.resource, 'PRM has a resource');
    assert.ok(
      prm.authorization_servers?.some((s) => s.replace(/\/+$/, '') === asBase),
      `PRM authorization_servers ${JSON.stringify(prm.authorization_servers)} includes AS_URL`,
    );

    const tokenReqs = log.filter((e) => e.method === 'POST' && e.body?.includes('grant_type=client_credentials'));
    assert.equal(tokenReqs.length, 1, 'exactly one token request');
    const form = new URLSearchParams(tokenReqs[0].body);
    assert.equal(form.get('resource'), prm.resource, 'token request resource = PRM resource (RFC 8707)');
    assert.equal(form.get('scope'), MCP_SCOPE || null);
    assert.equal(
      tokenReqs[0].headers.get('authorization'),
      `Basic ${Buffer.from('mcp-client:mcp-client-secret').toString('base64')}`,
      'client_secret_basic',
    );
    assert.equal(tokenReqs[0].status, 200, 'the AS issued the token');
    assert.equal(new URL(tokenReqs[0].url).origin, new URL(asBase).origin, 'token endpoint is on the AS');
  });

  await t.test('tools/list', async () => {
    const { tools } = await client.listTools();
    const names = tools.map((x) => x.name).sort();
    assert.ok(names.includes('echo') && names.includes('whoami'), `tools: ${names}`);
  });

  await t.test('tools/call echo', async () => {
    const text = `hello ${Date.now()}`;
    const result = await client.callTool({ name: 'echo', arguments: { text } });
    assert.notEqual(result.isError, true);
    assert.equal(result.content[0].text, text);
  });

  await t.test('tools/call whoami: no Authorization upstream, claim header present', async () => {
    const result = await client.callTool({ name: 'whoami', arguments: {} });
    assert.notEqual(result.isError, true);
    const seen = JSON.parse(result.content[0].text);
    assert.equal(seen.authorization, undefined, 'upstream must not receive Authorization');
    assert.ok(seen[EXPECT_HEADER] !== undefined, `upstream got ${EXPECT_HEADER}; whoami saw ${JSON.stringify(seen)}`);
    if (EXPECT_VALUE !== undefined) assert.equal(seen[EXPECT_HEADER], EXPECT_VALUE);
  });

  await t.test('upstream header log: no Authorization on any request', async () => {
    const received = (await getJson(`${upstreamBase}/__headers`)).slice(seenBefore);
    assert.ok(received.length >= 3, `upstream saw this test's requests (${received.length})`);
    for (const h of received) assert.equal(h.authorization, undefined, `leaked Authorization: ${JSON.stringify(h)}`);
    assert.ok(received.some((h) => h[EXPECT_HEADER] !== undefined), `some request carried ${EXPECT_HEADER}`);
  });

  await t.test('AS counters: a token was issued and the gateway introspected', async () => {
    const after = await getJson(`${asBase}/__test/stats`);
    assert.ok(after.tokens - statsBefore.tokens >= 1, `token requests: ${JSON.stringify({ statsBefore, after })}`);
    assert.ok(
      after.introspections - statsBefore.introspections >= 1,
      `introspection requests: ${JSON.stringify({ statsBefore, after })}`,
    );
  });
});
