// The MCP server behind both gateways during scripts/soak.sh: answers every request with
// 200 and a small JSON-RPC result, as cheaply as possible (no logging, nothing kept per
// request). It echoes the request's `X-Soak-Kind` header (set by the load generator:
// valid, invalid, malformed, prm) as `X-Soak-Saw`, and counts requests per kind, so a
// request that reached it without a valid token is seen twice: by the load generator and
// in `GET /__soak/stats` ({"valid":N,"invalid":N,...}).
// Prints `LISTENING <port>` on stdout once listening on 127.0.0.1 (SOAK_UPSTREAM_PORT, 0 = any).
import { createServer } from 'node:http';

const seen = Object.create(null);
const BODY = '{"jsonrpc":"2.0","id":1,"result":{}}';

const server = createServer((req, res) => {
  if (req.url === '/__soak/stats') {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify(seen));
    return;
  }
  const kind = String(req.headers['x-soak-kind'] ?? 'none').slice(0, 16);
  seen[kind] = (seen[kind] ?? 0) + 1;
  req.resume();
  req.on('end', () => {
    res.writeHead(200, {
      'content-type': 'application/json',
      'content-length': Buffer.byteLength(BODY),
      'x-soak-saw': kind,
    });
    res.end(BODY);
  });
});
server.keepAliveTimeout = 120000;
server.headersTimeout = 130000;
server.listen(Number(process.env.SOAK_UPSTREAM_PORT ?? 0), '127.0.0.1', () => {
  process.stdout.write(`LISTENING ${server.address().port}\n`);
});
for (const s of ['SIGTERM', 'SIGINT']) {
  process.on(s, () => {
    server.close();
    server.closeAllConnections();
    process.exit(0);
  });
}
