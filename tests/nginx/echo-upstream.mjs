// echo-upstream.mjs: the upstream behind nginx in the end-to-end tests. Answers every
// request with 200 and a JSON echo of what it received, and records the headers.
//   GET /__requests  -> JSON array of {method, url, headers} seen so far
//   DELETE /__requests -> forget them
//   GET /.../sse?interval=MS&count=N -> an SSE stream: `data: <i>` every MS ms, N events
//                       (then `data: done` and the end); records the request too
// Prints `LISTENING <port>` on stdout once listening on 127.0.0.1.
import { createServer } from 'node:http';

const seen = [];
const server = createServer((req, res) => {
  if (req.url === '/__requests') {
    if (req.method === 'DELETE') seen.length = 0;
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify(req.method === 'DELETE' ? [] : seen));
    return;
  }
  const url = new URL(req.url, 'http://upstream');
  if (url.pathname.endsWith('/sse')) {
    seen.push({ method: req.method, url: req.url, headers: req.headers, rawHeaders: req.rawHeaders });
    const interval = Number(url.searchParams.get('interval') ?? 100);
    const count = Number(url.searchParams.get('count') ?? 100);
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-store' });
    let i = 0;
    const timer = setInterval(() => {
      if (i >= count) {
        clearInterval(timer);
        res.end('data: done\n\n');
        return;
      }
      res.write(`data: ${i++}\n\n`);
    }, interval);
    res.on('close', () => clearInterval(timer));
    return;
  }
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    const entry = { method: req.method, url: req.url, headers: req.headers, rawHeaders: req.rawHeaders };
    seen.push(entry);
    if (seen.length > 10000) seen.shift();
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ ...entry, body: Buffer.concat(chunks).toString() }));
  });
});
server.keepAliveTimeout = 60000;
server.listen(Number(process.env.ECHO_PORT ?? 0), '127.0.0.1', () => {
  process.stdout.write(`LISTENING ${server.address().port}\n`);
});
for (const s of ['SIGTERM', 'SIGINT']) process.on(s, () => { server.close(); server.closeAllConnections(); process.exit(0); });
