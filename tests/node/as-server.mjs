// as-server.mjs — a real OAuth 2 authorization server (oidc-provider) for the
// mcp-oauth2 integration tests. Listens on 127.0.0.1 only; everything is in memory.
//
//   node tests/node/as-server.mjs
//     AS_PORT       port to listen on (default 0 = any free port)
//     AS_PORT_FILE  if set, the port is written to this file once listening
//     AS_TOKEN_TTL  access token lifetime in seconds (default 300)
//     AS_EXTRA_CLAIMS  optional JSON object merged into every access token
//                   (opaque: shows in introspection; JWT: in the payload) — for
//                   claim_to_header / upstream_headers tests with nested claims
//
// stdout carries exactly one line, `LISTENING <port>`; all logs go to stderr.
// The issuer is `http://127.0.0.1:<port>` (no path, no trailing slash).
//
// Endpoints (oidc-provider routes, fixed in `routes` below):
//   GET  /.well-known/openid-configuration      OIDC discovery
//   GET  /.well-known/oauth-authorization-server RFC 8414 (same document, served
//                                                 natively by oidc-provider 9)
//   GET  /jwks                 RSA (RS256) + EC P-256 (ES256) public keys
//   POST /token                client_credentials grant, `resource=` (RFC 8707)
//   POST /token/introspection  RFC 7662
//   POST /token/revocation     RFC 7009
//   GET  /__test/stats  {"introspections":N,"tokens":N,"jwks":N,"discovery":N}:
//                       requests that reached those endpoints (any outcome)
//   POST /__test/reset  zero the counters and the delay
//   POST /__test/delay?ms=N  every later introspection request waits N ms first
//
// Clients (all confidential, fixed test secrets; scope allow-list mcp:read mcp:write mcp:admin):
//   gateway / gateway-secret            client_secret_basic  introspection caller
//   gateway-post / gateway-post-secret  client_secret_post   introspection caller
//   app / app-secret                    client_secret_basic  client_credentials
//   mcp-client / mcp-client-secret      client_secret_basic  client_credentials
// `gateway*` may introspect/revoke tokens of any client; other clients only their
// own (someone else's token introspects as {"active":false}). Each client must use
// its REGISTERED auth method: stock oidc-provider accepts basic and post
// interchangeably, this server answers 401 invalid_client to the other one, so a
// test can prove which method the gateway used.
//
// Resource indicators (RFC 8707): any absolute http(s) `resource` is accepted and
// becomes the token's `aud` (a plain string). A resource whose path contains
// `/jwt` gets an RFC 9068 JWT access token (header typ "at+jwt", RS256, kid
// "test-rsa-1"; `/jwt-es256` → ES256, kid "test-ec-1"), anything else an opaque
// token. oidc-provider refuses to introspect JWTs (HTTP 400
// {"error":"unsupported_token_type",...}), so JWT resources are for local JWKS
// validation tests only. A `resource` with a fragment, relative, or non-http(s)
// → 400 invalid_target. Unknown scopes are silently dropped.
//
// Without `resource` the token is opaque with NO `aud` (requested mcp:* scopes are
// kept): a resource server that checks the audience must reject it — a handy
// "token without aud" case.
//
// Observed introspection response (oidc-provider 9.13.3) for an opaque
// client_credentials token requested by `app` with
// resource=http://127.0.0.1:8080/mcp and scope="mcp:read mcp:write", introspected
// by `gateway` (200, Content-Type: application/json; charset=utf-8,
// Cache-Control: no-store; key order as sent):
//   {"active":true,"client_id":"app","exp":1795673537,"iat":1795673237,
//    "iss":"http://127.0.0.1:32807","aud":"http://127.0.0.1:8080/mcp",
//    "scope":"mcp:read mcp:write","token_type":"Bearer"}
//   - `aud` is a string, not an array; `exp`/`iat` are integer seconds.
//   - NO `sub` (client_credentials tokens have no account), no `jti`, no `nbf`.
//   - `scope` is absent when the token has no scope (none requested).
//   - unknown / expired / revoked token, or one the caller may not see:
//     {"active":false}
//   - AS_EXTRA_CLAIMS keys appear too (right after `active`), e.g. a custom `sub`.
// The JWT form carries header {alg, typ:"at+jwt", kid} and payload
// {jti, sub:<client_id>, iat, exp, scope, client_id, iss, aud}; there `sub` is always
// the client id (it overrides an AS_EXTRA_CLAIMS `sub`).

import { createServer } from 'node:http';
import { generateKeyPairSync } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';

// oidc-provider prints NOTICEs with console.info, i.e. to stdout, which would
// break the "stdout is one LISTENING line" contract. Send them to stderr, and
// only then load the library (a static import would run before this line).
console.info = console.error;
console.log = console.error;
const { default: Provider, errors } = await import('oidc-provider');

const PORT = Number(process.env.AS_PORT ?? 0);
const TOKEN_TTL = Number(process.env.AS_TOKEN_TTL ?? 300);
const EXTRA_CLAIMS = process.env.AS_EXTRA_CLAIMS ? JSON.parse(process.env.AS_EXTRA_CLAIMS) : undefined;
const MCP_SCOPES = 'mcp:read mcp:write mcp:admin';
// Callers that may introspect/revoke tokens issued to any client.
const GATEWAYS = new Set(['gateway', 'gateway-post']);

// Fresh signing keys on every start: tests must fetch the JWKS, never pin keys.
function jwk(type, options, kid) {
  const { privateKey } = generateKeyPairSync(type, options);
  return { ...privateKey.export({ format: 'jwk' }), kid, use: 'sig' };
}
const keys = [
  jwk('rsa', { modulusLength: 2048 }, 'test-rsa-1'),
  jwk('ec', { namedCurve: 'P-256' }, 'test-ec-1'),
];

// Bind first, so the issuer can contain the real port when AS_PORT=0.
const server = createServer();
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(PORT, '127.0.0.1', resolve);
});
const port = server.address().port;
const issuer = `http://127.0.0.1:${port}`;

const client = (client_id, client_secret, token_endpoint_auth_method, grant_types) => ({
  client_id,
  client_secret,
  token_endpoint_auth_method,
  grant_types,
  response_types: [],
  redirect_uris: [],
  scope: MCP_SCOPES,
});

const provider = new Provider(issuer, {
  clients: [
    // The resource server's own credentials: they never obtain tokens.
    client('gateway', 'gateway-secret', 'client_secret_basic', []),
    client('gateway-post', 'gateway-post-secret', 'client_secret_post', []),
    client('app', 'app-secret', 'client_secret_basic', ['client_credentials']),
    client('mcp-client', 'mcp-client-secret', 'client_secret_basic', ['client_credentials']),
  ],
  // mcp:* must be known to the provider for the clients' `scope` metadata to be valid.
  scopes: ['openid', 'offline_access', ...MCP_SCOPES.split(' ')],
  jwks: { keys },
  // Fixed paths so the /__test counters below can match them.
  routes: {
    jwks: '/jwks',
    token: '/token',
    introspection: '/token/introspection',
    revocation: '/token/revocation',
  },
  ttl: { ClientCredentials: TOKEN_TTL },
  cookies: { keys: ['test-only-cookie-key'] }, // no browser flows; silences a warning
  extraTokenClaims: async () => EXTRA_CLAIMS,
  features: {
    devInteractions: { enabled: false }, // no browser flows in these tests
    clientCredentials: { enabled: true },
    introspection: {
      enabled: true,
      // Default policy would let only the token's own client see it; the gateway
      // introspects tokens issued to `app` / `mcp-client`.
      allowedPolicy: async (ctx, caller, token) =>
        GATEWAYS.has(caller.clientId) || caller.clientId === token.clientId,
    },
    revocation: {
      enabled: true,
      // The owner revokes its token (normal case); gateways may too, for tests.
      allowedPolicy: async (ctx, caller, token) =>
        GATEWAYS.has(caller.clientId) || caller.clientId === token.clientId,
    },
    resourceIndicators: {
      enabled: true,
      // No default: a request without `resource` gets a token without audience.
      defaultResource: async () => undefined,
      useGrantedResource: async () => false,
      getResourceServerInfo: async (ctx, resource) => {
        const url = new URL(resource); // already checked absolute by the provider
        if (url.protocol !== 'http:' && url.protocol !== 'https:') {
          throw new errors.InvalidTarget('resource must be an http(s) URL');
        }
        const jwt = url.pathname.includes('/jwt');
        const alg = url.pathname.includes('/jwt-es256') ? 'ES256' : 'RS256';
        return {
          scope: MCP_SCOPES,
          audience: resource,
          accessTokenTTL: TOKEN_TTL,
          accessTokenFormat: jwt ? 'jwt' : 'opaque',
          ...(jwt ? { jwt: { sign: { alg } } } : {}),
        };
      },
    },
  },
});

// ---- /__test/ control endpoints and request counters -------------------------
const stats = { introspections: 0, tokens: 0, jwks: 0, discovery: 0 };
let introspectionDelayMs = 0;
const DISCOVERY = new Set(['/.well-known/openid-configuration', '/.well-known/oauth-authorization-server']);
const CLIENT_AUTH_PATHS = new Set(['/token', '/token/introspection', '/token/revocation']);
const SECRET_METHODS = new Set(['client_secret_basic', 'client_secret_post']);

// provider.use() inserts this before the provider's own router.
provider.use(async (ctx, next) => {
  const { method, path } = ctx;
  if (path.startsWith('/__test/')) {
    if (method === 'GET' && path === '/__test/stats') {
      ctx.body = { ...stats };
    } else if (method === 'POST' && path === '/__test/reset') {
      for (const k of Object.keys(stats)) stats[k] = 0;
      introspectionDelayMs = 0;
      ctx.body = { ok: true };
    } else if (method === 'POST' && path === '/__test/delay') {
      const ms = Number(ctx.query.ms);
      if (!Number.isFinite(ms) || ms < 0) {
        ctx.status = 400;
        ctx.body = { error: 'ms must be a non-negative number' };
        return;
      }
      introspectionDelayMs = ms;
      ctx.body = { ok: true, delay_ms: ms };
    } else {
      ctx.status = 404;
      ctx.body = { error: 'unknown test endpoint' };
    }
    return;
  }

  // Count every request that reaches these endpoints, successful or not.
  if (path === '/token/introspection') {
    stats.introspections += 1;
    // Read the delay per request, so a later reset does not shorten a pending one.
    if (introspectionDelayMs > 0) await sleep(introspectionDelayMs);
  } else if (path === '/token') {
    stats.tokens += 1;
  } else if (path === '/jwks') {
    stats.jwks += 1;
  } else if (DISCOVERY.has(path)) {
    stats.discovery += 1;
  }
  await next();

  // oidc-provider treats client_secret_basic and client_secret_post as
  // interchangeable for a secret-based client. The tests want to prove the gateway
  // uses the method it is configured with, so enforce the registered one here,
  // after the provider ran (Koa has not sent the response yet, so it can still be
  // replaced). A request carrying both forms is already rejected by the provider.
  const caller = ctx.oidc?.client;
  if (CLIENT_AUTH_PATHS.has(path) && caller && ctx.status < 300) {
    const used = /^basic /i.test(ctx.get('authorization')) ? 'client_secret_basic' : 'client_secret_post';
    const registered = caller.clientAuthMethod;
    if (SECRET_METHODS.has(registered) && used !== registered) {
      console.error(`AS rejected ${caller.clientId}: used ${used}, registered ${registered}`);
      ctx.status = 401;
      ctx.body = {
        error: 'invalid_client',
        error_description: `client ${caller.clientId} must authenticate with ${registered}, not ${used}`,
      };
    }
  }
});

provider.on('server_error', (ctx, err) => console.error('AS server_error:', err));
provider.on('grant.error', (ctx, err) => console.error('AS token error:', err.message, err.error_description ?? ''));
provider.on('introspection.error', (ctx, err) => console.error('AS introspection error:', err.message, err.error_description ?? ''));

server.on('request', provider.callback());

// The single stdout line tests wait for.
process.stdout.write(`LISTENING ${port}\n`);
if (process.env.AS_PORT_FILE) writeFileSync(process.env.AS_PORT_FILE, `${port}\n`);
console.error(`AS issuer ${issuer}`);

// Stop cleanly: stop accepting, drop keep-alive sockets, exit.
function stop(signal) {
  console.error(`AS stopping on ${signal}`);
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', () => stop('SIGTERM'));
process.on('SIGINT', () => stop('SIGINT'));
