// exchange-as.mjs: a token endpoint implementing the RFC 8693 token-exchange grant for the
// nginx end-to-end tests, recording every request it gets. The subject token is not
// checked here (the gateway validated it at the real AS first); the issued token is a JWT
// (unsigned signature part: the gateway decodes it, never verifies it) whose claims name
// the exchange, so tests can see them in the upstream's headers and in later plugins.
//   POST /token           grant_type=urn:ietf:params:oauth:grant-type:token-exchange
//   GET  /__requests      every token request so far: {authorization, params (name -> [values])}
//   DELETE /__requests    forget them
//   POST /__delay?ms=N    every later token request waits N ms first
// Prints `LISTENING <port>` on stdout once listening on 127.0.0.1.
import { createServer } from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';

const GRANT = 'urn:ietf:params:oauth:grant-type:token-exchange';
const ACCESS = 'urn:ietf:params:oauth:token-type:access_token';
const seen = [];
let delayMs = 0;
let issued = 0;

const b64u = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
const json = (res, status, body) => {
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' });
  res.end(JSON.stringify(body));
};

const server = createServer((req, res) => {
  const url = new URL(req.url, 'http://as');
  if (url.pathname === '/__requests') {
    if (req.method === 'DELETE') seen.length = 0;
    return json(res, 200, req.method === 'DELETE' ? [] : seen);
  }
  if (url.pathname === '/__delay') {
    delayMs = Number(url.searchParams.get('ms') ?? 0);
    return json(res, 200, { delay_ms: delayMs });
  }
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', async () => {
    const form = new URLSearchParams(Buffer.concat(chunks).toString());
    const params = {};
    for (const [k, v] of form) (params[k] ??= []).push(v);
    seen.push({ method: req.method, path: url.pathname, authorization: req.headers.authorization ?? null, params });
    if (delayMs > 0) await sleep(delayMs);
    if (req.method !== 'POST' || url.pathname !== '/token') return json(res, 404, { error: 'not_found' });
    if (form.get('grant_type') !== GRANT) return json(res, 400, { error: 'unsupported_grant_type' });
    if (!form.get('subject_token')) return json(res, 400, { error: 'invalid_request' });
    issued += 1;
    const now = Math.floor(Date.now() / 1000);
    const claims = {
      iss: `http://127.0.0.1:${server.address().port}`,
      sub: 'exchanged-subject',
      aud: form.getAll('audience').length ? form.getAll('audience') : 'upstream',
      scope: form.get('scope') ?? 'upstream:read',
      client_id: 'exchanged-client',
      act: form.get('actor_token') ? { sub: 'actor' } : undefined,
      n: issued,
      iat: now,
      exp: now + 300,
    };
    const token = `${b64u({ alg: 'none', typ: 'at+jwt' })}.${b64u(claims)}.x`;
    return json(res, 200, {
      access_token: token,
      issued_token_type: form.get('requested_token_type') ?? ACCESS,
      token_type: 'Bearer',
      expires_in: 300,
    });
  });
});
server.listen(0, '127.0.0.1', () => process.stdout.write(`LISTENING ${server.address().port}\n`));
for (const s of ['SIGTERM', 'SIGINT']) process.on(s, () => { server.close(); server.closeAllConnections(); process.exit(0); });
