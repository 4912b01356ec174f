// forward-proxy.mjs — a small HTTP forward proxy for the mcp-oauth2 transport tests.
// Listens on 127.0.0.1 only and records every request it is asked to forward.
//
//   node tests/node/forward-proxy.mjs
//     PROXY_PORT   port to listen on (default 0 = any free port)
//     PROXY_AUTH   if set, the exact Proxy-Authorization value required; other values
//                  (or none) get 407 with `Proxy-Authenticate: Basic realm="test"`
//
// stdout carries exactly one line, `LISTENING <port>`; logs go to stderr.
//
// What it forwards:
//   CONNECT host:port            a TCP tunnel (answers 200, then pipes bytes both ways)
//   GET|POST http://host/path    absolute-form requests, forwarded to the origin
// Control (origin-form requests to the proxy itself):
//   GET  /__proxy/log    [{"method","target","proxy_authorization","allowed"}] in order
//                        (`proxy_authorization` is what the client sent, or null)
//   POST /__proxy/reset  clear the log

import { createServer, request as httpRequest } from 'node:http';
import { connect } from 'node:net';

const PORT = Number(process.env.PROXY_PORT ?? 0);
const REQUIRED = process.env.PROXY_AUTH;
const log = [];

function allowed(req) {
  return REQUIRED === undefined || req.headers['proxy-authorization'] === REQUIRED;
}

function record(req, target, ok) {
  log.push({ method: req.method, target, proxy_authorization: req.headers['proxy-authorization'] ?? null, allowed: ok });
}

const server = createServer((req, res) => {
  if (req.url.startsWith('/__proxy/')) {
    if (req.method === 'GET' && req.url === '/__proxy/log') {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(log));
    } else if (req.method === 'POST' && req.url === '/__proxy/reset') {
      log.length = 0;
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('{"ok":true}');
    } else {
      res.writeHead(404);
      res.end();
    }
    return;
  }
  let target;
  try {
    target = new URL(req.url);
  } catch {
    res.writeHead(400);
    res.end('absolute-form request target required');
    return;
  }
  const ok = allowed(req);
  record(req, req.url, ok);
  if (!ok) {
    res.writeHead(407, { 'proxy-authenticate': 'Basic realm="test"' });
    res.end();
    return;
  }
  const headers = { ...req.headers };
  delete headers['proxy-authorization'];
  delete headers['proxy-connection'];
  const upstream = httpRequest(
    { host: target.hostname, port: target.port || 80, method: req.method, path: target.pathname + target.search, headers },
    (up) => {
      res.writeHead(up.statusCode, up.headers);
      up.pipe(res);
    },
  );
  upstream.on('error', () => {
    res.writeHead(502);
    res.end();
  });
  req.pipe(upstream);
});

server.on('connect', (req, socket, head) => {
  const ok = allowed(req);
  record(req, req.url, ok);
  if (!ok) {
    socket.end('HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm="test"\r\nContent-Length: 0\r\n\r\n');
    return;
  }
  const [host, port] = [req.url.slice(0, req.url.lastIndexOf(':')), Number(req.url.slice(req.url.lastIndexOf(':') + 1))];
  const upstream = connect(port, host.replace(/^\[|\]$/g, ''), () => {
    socket.write('HTTP/1.1 200 Connection Established\r\n\r\n');
    if (head.length) upstream.write(head);
    upstream.pipe(socket);
    socket.pipe(upstream);
  });
  const close = () => {
    upstream.destroy();
    socket.destroy();
  };
  upstream.on('error', () => {
    socket.end('HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n');
  });
  socket.on('error', close);
});

server.listen(PORT, '127.0.0.1', () => {
  process.stdout.write(`LISTENING ${server.address().port}\n`);
});

function stop() {
  server.close(() => process.exit(0));
  server.closeAllConnections?.();
  setTimeout(() => process.exit(0), 1000).unref();
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
