// mcp-upstream.mjs — the MCP server that sits BEHIND the mcp-oauth2 gateway in
// integration tests. Built with the official SDK (McpServer +
// StreamableHTTPServerTransport, stateless mode) on plain node:http, 127.0.0.1 only.
//
//   node tests/node/mcp-upstream.mjs
//     MCP_PORT  port to listen on (default 0 = any free port)
//     MCP_REQUIRE_AUDIENCE  optional: every /mcp request must carry
//               `Authorization: Bearer <JWT>` whose payload `aud` (a string or an
//               array) includes this value, else 401 — an upstream that accepts only
//               tokens meant for it (the exchanged token of RFC 8693 token exchange).
//               The JWT's signature is not checked (the exchange test AS does not
//               sign); without the variable, no auth at all (below).
//
// stdout carries exactly one line, `LISTENING <port>`; logs go to stderr.
//
//   POST /mcp          MCP Streamable HTTP (JSON-RPC). Tools:
//                        echo   { text: string } → the text
//                        whoami {}             → JSON text of the identity headers
//                                                this call arrived with (see below)
//   GET/DELETE /mcp    405: stateless server, no standalone SSE stream, no sessions
//   GET /__headers     JSON array of the header objects of every request received
//                      so far (except /__headers itself), oldest first, keys
//                      lower-case as Node gives them
//   DELETE /__headers  forget them (between test cases)
//
// Without MCP_REQUIRE_AUDIENCE the upstream does no auth at all: the point is to observe
// what the gateway forwards (no `Authorization` unless passthrough, claim headers set).

import { createServer } from 'node:http';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { z } from 'zod';

const PORT = Number(process.env.MCP_PORT ?? 0);
const REQUIRE_AUDIENCE = process.env.MCP_REQUIRE_AUDIENCE || undefined;

// MCP_REQUIRE_AUDIENCE: whether the request's bearer token is a JWT meant for this server.
function audienceAccepted(headers) {
  const token = /^Bearer (\S+)$/i.exec(headers.authorization ?? '')?.[1];
  const payload = token?.split('.')[1];
  if (!payload) return false;
  try {
    const { aud } = JSON.parse(Buffer.from(payload, 'base64url').toString('utf8'));
    return (Array.isArray(aud) ? aud : [aud]).includes(REQUIRE_AUDIENCE);
  } catch {
    return false;
  }
}
const received = []; // header objects, one per request

// What whoami reports: `authorization` plus every x-* header (x-user-id,
// x-client-id, x-scope, or any other name a test maps a claim to). Only headers
// actually present appear in the object.
function identityHeaders(headers) {
  const out = {};
  for (const [name, value] of Object.entries(headers)) {
    if (name === 'authorization' || name.startsWith('x-')) out[name] = value;
  }
  return out;
}

// Stateless mode: the SDK refuses to reuse a stateless transport, so every HTTP
// request gets its own server + transport. The tools close over that request's
// headers, so whoami sees exactly what this call carried.
function buildServer(headers) {
  const server = new McpServer({ name: 'mcp-oauth2-test-upstream', version: '1.0.0' });
  server.registerTool(
    'echo',
    { description: 'Returns the given text.', inputSchema: { text: z.string() } },
    async ({ text }) => ({ content: [{ type: 'text', text }] }),
  );
  server.registerTool(
    'whoami',
    { description: 'Returns the identity headers the upstream received for this call, as JSON.' },
    async () => ({ content: [{ type: 'text', text: JSON.stringify(identityHeaders(headers)) }] }),
  );
  return server;
}

function sendJson(res, status, body) {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
}

async function readJson(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  const text = Buffer.concat(chunks).toString('utf8');
  return text ? JSON.parse(text) : undefined;
}

const http = createServer(async (req, res) => {
  const path = new URL(req.url, 'http://upstream').pathname;
  try {
    if (path === '/__headers') {
      if (req.method === 'GET') return sendJson(res, 200, received);
      if (req.method === 'DELETE') {
        received.length = 0;
        return sendJson(res, 200, { ok: true });
      }
      return sendJson(res, 405, { error: 'method not allowed' });
    }

    received.push({ ...req.headers });

    if (path !== '/mcp') return sendJson(res, 404, { error: 'not found' });
    if (REQUIRE_AUDIENCE && !audienceAccepted(req.headers)) {
      res.setHeader('www-authenticate', 'Bearer error="invalid_token"');
      return sendJson(res, 401, { error: 'invalid_token', error_description: `not a token for ${REQUIRE_AUDIENCE}` });
    }
    if (req.method !== 'POST') {
      res.setHeader('allow', 'POST');
      return sendJson(res, 405, {
        jsonrpc: '2.0',
        error: { code: -32000, message: 'Method not allowed (stateless server).' },
        id: null,
      });
    }

    let body;
    try {
      body = await readJson(req);
    } catch {
      return sendJson(res, 400, { jsonrpc: '2.0', error: { code: -32700, message: 'Parse error' }, id: null });
    }
    const server = buildServer(req.headers);
    const transport = new StreamableHTTPServerTransport({ sessionIdGenerator: undefined });
    res.on('close', () => {
      transport.close();
      server.close();
    });
    await server.connect(transport);
    await transport.handleRequest(req, res, body);
  } catch (err) {
    console.error('upstream error:', err);
    if (!res.headersSent) sendJson(res, 500, { error: 'internal error' });
    else res.end();
  }
});

http.listen(PORT, '127.0.0.1', () => {
  const { port } = http.address();
  process.stdout.write(`LISTENING ${port}\n`);
  console.error(`upstream MCP at http://127.0.0.1:${port}/mcp`);
});

function stop(signal) {
  console.error(`upstream stopping on ${signal}`);
  http.close(() => process.exit(0));
  http.closeAllConnections();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', () => stop('SIGTERM'));
process.on('SIGINT', () => stop('SIGINT'));
