// mcp-client-exchange.test.mjs — token exchange (RFC 8693) end to end through a gateway,
// with the official MCP SDK client: the client is given only the protected MCP URL and
// its credentials; the gateway validates the client's token at the AS, exchanges it at
// the exchange AS (tests/nginx/exchange-as.mjs) for a token meant for the upstream, and
// forwards with that one. The upstream (mcp-upstream.mjs with MCP_REQUIRE_AUDIENCE)
// accepts only tokens whose `aud` names it, so every MCP call that succeeds proves the
// exchange; the upstream's header log proves it never saw the client's token.
//
//   PROXY_URL=… UPSTREAM_URL=… AS_URL=… EXCHANGE_URL=… EXPECT_AUDIENCE=urn:mcp-upstream \
//   node --test tests/node/mcp-client-exchange.test.mjs
//
// Env (all required):
//   PROXY_URL        the gateway-protected MCP endpoint
//   UPSTREAM_URL     base URL of mcp-upstream.mjs (its /__headers log)
//   AS_URL           issuer of as-server.mjs (the only AS the client sends its secret to)
//   EXCHANGE_URL     base URL of exchange-as.mjs (its /__requests log)
//   EXPECT_AUDIENCE  the audience the gateway asks for (token_exchange.request.audience)
//                    and the upstream requires
// The gateway's exchange credentials are expected to be exchanger / exchanger-secret
// (client_secret_basic).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { ClientCredentialsProvider } from '@modelcontextprotocol/sdk/client/auth-extensions.js';

const { PROXY_URL, UPSTREAM_URL, AS_URL, EXCHANGE_URL, EXPECT_AUDIENCE } = process.env;
const GRANT = 'urn:ietf:params:oauth:grant-type:token-exchange';

async function getJson(url) {
  const res = await fetch(url);
  assert.equal(res.status, 200, `GET ${url} → HTTP ${res.status}`);
  return res.json();
}

const jwtPayload = (token) => JSON.parse(Buffer.from(token.split('.')[1], 'base64url').toString('utf8'));

test('MCP SDK client through a token-exchanging gateway', async (t) => {
  const missing = ['PROXY_URL', 'UPSTREAM_URL', 'AS_URL', 'EXCHANGE_URL', 'EXPECT_AUDIENCE'].filter(
    (k) => !process.env[k],
  );
  assert.deepEqual(missing, [], `required env var(s) not set: ${missing.join(', ')}`);
  const upstreamBase = UPSTREAM_URL.replace(/\/+$/, '');
  const exchangeBase = EXCHANGE_URL.replace(/\/+$/, '');
  const seenBefore = (await getJson(`${upstreamBase}/__headers`)).length;
  const exchangesBefore = (await getJson(`${exchangeBase}/__requests`)).length;

  // The bearer tokens the SDK sent to the gateway.
  const sent = new Set();
  const fetchRecording = async (input, init = {}) => {
    const auth = new Headers(init.headers).get('authorization');
    if (auth?.startsWith('Bearer ')) sent.add(auth.slice('Bearer '.length));
    return fetch(input, init);
  };
  const transport = new StreamableHTTPClientTransport(new URL(PROXY_URL), {
    authProvider: new ClientCredentialsProvider({
      clientId: 'mcp-client',
      clientSecret: 'mcp-client-secret',
      scope: 'mcp:read mcp:write',
      expectedIssuer: AS_URL,
    }),
    fetch: fetchRecording,
  });
  const client = new Client({ name: 'mcp-oauth2-exchange-test', version: '1.0.0' });
  t.after(() => client.close());

  await t.test('initialize, tools/list, tools/call through the exchanging gateway', async () => {
    await client.connect(transport);
    assert.ok(client.getServerVersion()?.name, 'initialize returned serverInfo');
    const { tools } = await client.listTools();
    assert.ok(tools.some((x) => x.name === 'echo'), `tools: ${tools.map((x) => x.name)}`);
    const text = `exchanged ${Date.now()}`;
    const result = await client.callTool({ name: 'echo', arguments: { text } });
    assert.equal(result.content[0].text, text);
  });

  await t.test('the upstream got the exchanged token, for its audience, with its claims', async () => {
    assert.equal(sent.size, 1, 'the SDK used one token');
    const [clientToken] = sent;
    const result = await client.callTool({ name: 'whoami', arguments: {} });
    const seen = JSON.parse(result.content[0].text);
    assert.match(seen.authorization ?? '', /^Bearer /, `whoami saw ${JSON.stringify(seen)}`);
    const upstreamToken = seen.authorization.slice('Bearer '.length);
    assert.notEqual(upstreamToken, clientToken);
    const claims = jwtPayload(upstreamToken);
    assert.deepEqual(claims.aud, [EXPECT_AUDIENCE]);
    assert.equal(seen['x-sub'], 'exchanged-subject', 'claim headers come from the exchanged JWT');
  });

  await t.test("no request reached the upstream with the client's token", async () => {
    const [clientToken] = sent;
    const received = (await getJson(`${upstreamBase}/__headers`)).slice(seenBefore);
    assert.ok(received.length >= 4, `upstream saw this test's requests (${received.length})`);
    for (const h of received) {
      assert.ok(
        !Object.values(h).some((v) => String(v).includes(clientToken)),
        `the client's token reached the upstream: ${JSON.stringify(Object.keys(h))}`,
      );
      assert.match(h.authorization ?? '', /^Bearer /, 'every request carried the exchanged token');
    }
  });

  await t.test('one exchange for every call, with the configured parameters', async () => {
    const [clientToken] = sent;
    const exchanges = (await getJson(`${exchangeBase}/__requests`)).slice(exchangesBefore);
    assert.equal(exchanges.length, 1, 'the exchanged token is cached: one exchange for all calls');
    const [ex] = exchanges;
    assert.equal(ex.authorization, `Basic ${Buffer.from('exchanger:exchanger-secret').toString('base64')}`);
    assert.deepEqual(ex.params.grant_type, [GRANT]);
    assert.deepEqual(ex.params.subject_token, [clientToken]);
    assert.deepEqual(ex.params.subject_token_type, ['urn:ietf:params:oauth:token-type:access_token']);
    assert.deepEqual(ex.params.audience, [EXPECT_AUDIENCE]);
  });
});
