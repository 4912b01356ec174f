// nginx end-to-end test of the cluster cache (issue 14): three nginx nodes (2 workers each)
// running resty.mcp_oauth2 and the Kong handler with `cluster_cache_strategy: redis` on one
// real redis-server (Debian's, started here on a random 127.0.0.1 port, no persistence,
// password-protected, database 2), against an oidc-provider AS of its own. Started by
// scripts/test-lua.sh, which provides CLUSTER_DIR (an empty directory for the nodes'
// prefixes), LUA_DIR and TESTS_DIR (world-readable copies of lua/ and the Kong stand-in),
// UPSTREAM_URL and AS_SCRIPT (tests/node/as-server.mjs); everything started here
// is stopped here (and by test-lua.sh's cleanup, through the pid files, if this dies).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import { spawn, execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync, existsSync } from 'node:fs';

const { CLUSTER_DIR, LUA_DIR, TESTS_DIR, UPSTREAM_URL, AS_SCRIPT } = process.env;
// Optional: a demo-proxy binary built with the cluster cache (the library's own Redis
// client, src/cluster.rs): then one more test mixes it with the nginx nodes on one Redis.
const { DEMO_PROXY_BIN } = process.env;
for (const [k, v] of Object.entries({ CLUSTER_DIR, LUA_DIR, TESTS_DIR, UPSTREAM_URL, AS_SCRIPT })) {
  if (!v) throw new Error(`${k} is required`);
}
const UP_PORT = new URL(UPSTREAM_URL).port;
const REDIS_PASSWORD = `pw-${process.pid}-${Date.now()}`;
const RESOURCE = 'http://mcp.cluster.test/mcp';
const KONG_RESOURCE = 'http://mcp.cluster.test/kong/mcp';
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const freePort = () => new Promise((resolve) => {
  const s = net.createServer().listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => resolve(port)); });
});

let asProc; let asUrl; let redisProc; let redisPort; let tlsRedisProc; let tlsRedisPort;

// A TLS-only Redis with a certificate for 127.0.0.1 made for this run (the nodes trust it).
function startTlsRedis() {
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-keyout', `${CLUSTER_DIR}/redis-tls.key`, '-out', `${CLUSTER_DIR}/redis-tls.crt`, '-days', '2',
    '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1'], { stdio: 'ignore' });
  execFileSync('chmod', ['a+r', `${CLUSTER_DIR}/redis-tls.key`, `${CLUSTER_DIR}/redis-tls.crt`]);
  tlsRedisProc = spawn('redis-server', ['--port', '0', '--tls-port', String(tlsRedisPort), '--bind', '127.0.0.1',
    '--tls-cert-file', `${CLUSTER_DIR}/redis-tls.crt`, '--tls-key-file', `${CLUSTER_DIR}/redis-tls.key`,
    '--tls-auth-clients', 'no', '--save', '', '--appendonly', 'no', '--requirepass', REDIS_PASSWORD,
    '--dir', CLUSTER_DIR, '--pidfile', `${CLUSTER_DIR}/redis-tls.pid`], { stdio: ['ignore', 'ignore', 'inherit'] });
  return waitFor(async () => tlsCli('PING') === 'PONG', 5000, 'the TLS redis-server did not start');
}
function tlsCli(...args) {
  try {
    return execFileSync('redis-cli', ['--tls', '--cacert', `${CLUSTER_DIR}/redis-tls.crt`, '-h', '127.0.0.1',
      '-p', String(tlsRedisPort), '-a', REDIS_PASSWORD, '--no-auth-warning', ...args],
    { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch { return null; }
}

// The lua block of docs/cluster-cache.md's "Three nodes: nginx", with only the addresses
// changed: the AS, Redis's host and port (the password comes from the environment, as
// shown); the recheck URL's port per node.
function docBlock() {
  const md = readFileSync(new URL('../../docs/cluster-cache.md', import.meta.url), 'utf8');
  const section = md.slice(md.indexOf('## Three nodes: nginx'));
  const block = section.match(/```lua\n([\s\S]*?)```/)[1];
  const out = block
    .replaceAll('"https://as.example.com/introspect"', `"${asUrl}/token/introspection"`)
    .replaceAll('"https://as.example.com"', `"${asUrl}"`)
    .replace('host = "10.0.0.5",', `host = "127.0.0.1", port = ${redisPort},`);
  assert.notEqual(out, block);
  assert.ok(!out.includes('example.com"') || out.includes('"https://mcp.example.com/mcp"'));
  return out;
}
const nodes = []; // { name, port, prefix, url }

function startRedis() {
  redisProc = spawn('redis-server', ['--port', String(redisPort), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no',
    '--requirepass', REDIS_PASSWORD, '--dir', CLUSTER_DIR, '--pidfile', `${CLUSTER_DIR}/redis.pid`],
  { stdio: ['ignore', 'ignore', 'inherit'] });
  return waitFor(async () => redisCli('PING') === 'PONG', 5000, 'redis-server did not start');
}
function redisCli(...args) {
  try {
    return execFileSync('redis-cli', ['-p', String(redisPort), '-a', REDIS_PASSWORD, '--no-auth-warning', '-n', '2', ...args],
      { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch { return null; }
}
async function stopRedis() {
  if (!redisProc || redisProc.exitCode !== null) return;
  const done = new Promise((r) => redisProc.once('exit', r));
  redisProc.kill('SIGKILL');
  await done;
}

async function waitFor(fn, ms, what) {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    if (await fn()) return;
    await sleep(50);
  }
  throw new Error(what);
}

function request(base, path, { method = 'GET', headers = {}, body } = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request(`${base}${path}`, { method, headers, agent: false }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks).toString() }));
    });
    req.on('error', reject);
    if (body) req.write(body);
    req.end();
  });
}
const bearer = (t) => ({ authorization: `Bearer ${t}` });

async function token(resource = RESOURCE) {
  const res = await fetch(`${asUrl}/token`, {
    method: 'POST',
    headers: {
      authorization: `Basic ${Buffer.from('app:app-secret').toString('base64')}`,
      'content-type': 'application/x-www-form-urlencoded',
    },
    body: new URLSearchParams({ grant_type: 'client_credentials', resource, scope: 'mcp:read' }),
  });
  assert.equal(res.status, 200);
  return (await res.json()).access_token;
}
const introspections = async () => (await (await fetch(`${asUrl}/__test/stats`)).json()).introspections;
const asPost = (p) => fetch(`${asUrl}${p}`, { method: 'POST' });
const errorLog = (node) => readFileSync(`${node.prefix}/logs/error.log`, 'utf8');
// Every worker's view: enough requests on fresh connections reach both workers.
async function workerViews(node) {
  const views = new Map();
  for (let i = 0; i < 20 && views.size < 2; i++) {
    const v = JSON.parse((await request(node.url, '/__cluster')).body);
    views.set(v.pid, v);
  }
  return [...views.values()];
}
const allUp = async () => {
  for (const n of nodes) {
    const views = await workerViews(n);
    if (views.length < 2 || !views.every((v) => v.up)) return false;
  }
  return true;
};

before(async () => {
  redisPort = await freePort();
  await startRedis();
  tlsRedisPort = await freePort();
  await startTlsRedis();
  asProc = spawn('node', [AS_SCRIPT], { stdio: ['ignore', 'pipe', 'ignore'] });
  asUrl = await new Promise((resolve, reject) => {
    let out = '';
    asProc.stdout.on('data', (c) => {
      out += c;
      const m = out.match(/^LISTENING (\d+)/m);
      if (m) resolve(`http://127.0.0.1:${m[1]}`);
    });
    asProc.once('exit', () => reject(new Error('the AS did not start')));
  });
  const template = readFileSync(new URL('./cluster.conf.template', import.meta.url), 'utf8');
  const docInit = docBlock();
  for (const name of ['a', 'b', 'c']) {
    const port = await freePort();
    const prefix = `${CLUSTER_DIR}/${name}`;
    for (const d of ['conf', 'logs', 'tmp']) mkdirSync(`${prefix}/${d}`, { recursive: true });
    writeFileSync(`${prefix}/conf/nginx.conf`, template
      .replaceAll('@LUA@', LUA_DIR).replaceAll('@TESTS@', TESTS_DIR)
      .replaceAll('@AS@', asUrl).replaceAll('@PORT@', String(port)).replaceAll('@UP@', UP_PORT)
      .replaceAll('@REDIS_PORT@', String(redisPort)).replaceAll('@REDIS_PASSWORD@', REDIS_PASSWORD)
      .replaceAll('@TLS_REDIS_PORT@', String(tlsRedisPort)).replaceAll('@TLS_CA@', `${CLUSTER_DIR}/redis-tls.crt`)
      .replace('@DOC_INIT@', docInit.replaceAll('http://127.0.0.1:8080/', `http://127.0.0.1:${port}/`)));
    execFileSync('chmod', ['-R', 'a+rwX', prefix]);
    execFileSync('nginx', ['-p', prefix, '-c', 'conf/nginx.conf'],
      { env: { ...process.env, MCP_CLIENT_SECRET: 'gateway-secret', REDIS_PASSWORD } });
    nodes.push({ name, port, prefix, url: `http://127.0.0.1:${port}` });
  }
  for (const n of nodes) await waitFor(() => existsSync(`${n.prefix}/logs/nginx.pid`), 5000, `nginx ${n.name} did not start`);
  await waitFor(allUp, 5000, 'the nodes did not connect to Redis');
});

let demoProc;
after(async () => {
  demoProc?.kill('SIGTERM');
  for (const n of nodes) {
    try { process.kill(Number(readFileSync(`${n.prefix}/logs/nginx.pid`, 'utf8').trim()), 'SIGTERM'); } catch { /* gone */ }
  }
  asProc?.kill('SIGTERM');
  tlsRedisProc?.kill('SIGKILL');
  await stopRedis();
});

test('3 nodes × 50 concurrent clients with one new token: exactly 1 introspection, the answer in Redis without the token', async (ctx) => {
  const t = await token();
  await asPost('/__test/reset');
  await asPost('/__test/delay?ms=300'); // keep the first call in flight while the others arrive
  const rs = await Promise.all(nodes.flatMap((n) => Array.from({ length: 50 }, () => request(n.url, '/mcp', { headers: bearer(t) }))));
  await asPost('/__test/delay?ms=0');
  assert.deepEqual(rs.map((r) => r.status), Array(150).fill(200));
  assert.equal(await introspections(), 1, 'one introspection across three nodes');
  const pids = new Set(rs.map((r) => r.headers['x-worker-pid']));
  assert.equal(pids.size, 6, 'every worker of every node served requests');

  // The contract of docs/cluster-cache.md: <prefix>:answer:<64 hex>, "<fetched_at>\n<status>\n<ct>\n<body>".
  const keys = redisCli('--scan', '--pattern', 'mcp_oauth2:*').split('\n').filter(Boolean);
  const answers = keys.filter((k) => /^mcp_oauth2:answer:[0-9a-f]{64}$/.test(k));
  assert.equal(answers.length, 1, keys.join(' '));
  // Named by the token's cache key, the same on every node (the key a Rust node derives).
  const tokenKey = (await request(nodes[2].url, `/__key?token=${encodeURIComponent(t)}`)).body;
  assert.equal(answers[0], `mcp_oauth2:answer:${tokenKey}`);
  assert.ok(!keys.some((k) => k.includes(t)), 'no token in a key');
  assert.ok(!keys.some((k) => k.startsWith('mcp_oauth2:lock:')), 'the lock was released');
  const value = redisCli('GET', answers[0]);
  assert.match(value, /^\d{13}\n200\napplication\/json[^\n]*\n\{.*"active":true/s);
  assert.ok(!value.includes(t), 'no token in the value');
  const fetchedAt = Number(value.split('\n')[0]);
  assert.ok(Math.abs(fetchedAt - Date.now()) < 10_000, 'fetch time in Unix ms');
  const pttl = Number(redisCli('PTTL', answers[0]));
  assert.ok(pttl > 280_000 && pttl <= 300_000, `PTTL ${pttl}: the core's TTL, bounded by the token's exp (300 s)`);

  // Where the other nodes' answers came from: Redis hits and waits, in the metrics too.
  let hits = 0; let leads = 0;
  for (const n of nodes) for (const v of await workerViews(n)) { hits += v.counts.hits; leads += v.counts.leads; }
  ctx.diagnostic(`cluster hits (after waits or not) ${hits}, leads ${leads}`);
  assert.ok(hits >= 2, `other nodes replayed Redis's answer (${hits})`);
  const metric = (text, result) => Number(text.match(new RegExp(`^mcp_oauth2_cache_lookups_total\\{cache="cluster",result="${result}"\\} (\\d+)`, 'm'))[1]);
  const summed = async () => {
    let h = 0; let m = 0;
    for (const n of nodes) {
      const text = (await request(n.url, '/metrics')).body;
      h += metric(text, 'hit');
      m += metric(text, 'miss');
    }
    return [h, m];
  };
  // One Redis look-up per node (its other worker waited in the shared dict): the leader's
  // miss, the two others' hits. Each worker writes its metrics snapshot every second.
  let seen = await summed();
  for (let i = 0; i < 30 && (seen[0] !== 2 || seen[1] !== 1); i++) {
    await sleep(100);
    seen = await summed();
  }
  assert.deepEqual(seen, [2, 1], 'cache="cluster" look-ups summed over the nodes');
});

test("docs/cluster-cache.md's configuration on three nodes: 3 × 10 concurrent → 1 introspection", async () => {
  const t = await token('https://mcp.example.com/mcp');
  await asPost('/__test/reset');
  await asPost('/__test/delay?ms=300');
  const rs = await Promise.all(nodes.flatMap((n) => Array.from({ length: 10 }, () => request(n.url, '/doc/mcp', { headers: bearer(t) }))));
  await asPost('/__test/delay?ms=0');
  assert.deepEqual(rs.map((r) => r.status), Array(30).fill(200), rs.find((r) => r.status !== 200)?.body);
  assert.equal(await introspections(), 1);
});

test('figure: an answer in Redis but not in this node, against one GET round trip plus a local cache hit', async (ctx) => {
  const t = await token();
  assert.equal((await request(nodes[0].url, '/mcp', { headers: bearer(t) })).status, 200);
  const runs = [];
  for (let i = 0; i < 3; i++) {
    const r = JSON.parse((await request(nodes[1].url, `/__bench?n=1000&token=${encodeURIComponent(t)}`)).body);
    assert.equal(r.redis_hits, r.n, 'every round of (c) was answered from Redis');
    const ratio = r.redis_path_us / (r.get_us + r.hit_us);
    runs.push(ratio);
    ctx.diagnostic(`medians: GET ${r.get_us.toFixed(1)} µs, local hit ${r.hit_us.toFixed(1)} µs, Redis path ${r.redis_path_us.toFixed(1)} µs `
      + `(forgetting, not included: ${r.forget_us.toFixed(1)} µs): ${ratio.toFixed(2)}× (GET + hit)`);
  }
  // A loose bound (a shared, loaded machine); the figures are in the diagnostics.
  assert.ok(Math.min(...runs) < 5, runs.join(" "));
});

test('evict on node A: nodes B and C refuse the revoked token within 1 s', async (ctx) => {
  const t = await token();
  for (const n of nodes) {
    for (let i = 0; i < 4; i++) assert.equal((await request(n.url, '/mcp', { headers: bearer(t) })).status, 200);
  }
  const before = await introspections();
  // Revoked at the AS: every node still serves its cached answer…
  const rv = await fetch(`${asUrl}/token/revocation`, {
    method: 'POST',
    headers: { authorization: `Basic ${Buffer.from('gateway:gateway-secret').toString('base64')}`, 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ token: t }),
  });
  assert.equal(rv.status, 200);
  for (const n of nodes) assert.equal((await request(n.url, '/mcp', { headers: bearer(t) })).status, 200, 'cached');
  assert.equal(await introspections(), before);
  // …until one node evicts it.
  const started = Date.now();
  const ev = await request(nodes[0].url, '/_mcp_oauth2_evict', {
    method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: `token=${encodeURIComponent(t)}`,
  });
  assert.equal(ev.status, 200, ev.body);
  const refusedAt = {};
  while (Date.now() - started < 3000 && Object.keys(refusedAt).length < 2) {
    await Promise.all([nodes[1], nodes[2]].map(async (n) => {
      if (refusedAt[n.name]) return;
      // Both workers (each reads the log on its own timer): refused by every one of them.
      const rs = await Promise.all(Array.from({ length: 8 }, () => request(n.url, '/mcp', { headers: bearer(t) })));
      const refusing = new Set(rs.filter((r) => r.status === 401).map((r) => r.headers['x-worker-pid']));
      if (rs.every((r) => r.status === 401) && refusing.size === 2) refusedAt[n.name] = Date.now() - started;
    }));
    await sleep(50);
  }
  ctx.diagnostic(`refused after (ms): ${JSON.stringify(refusedAt)}`);
  for (const n of [nodes[1], nodes[2]]) {
    assert.ok(refusedAt[n.name] !== undefined && refusedAt[n.name] <= 1000, `${n.name}: ${refusedAt[n.name]} ms`);
    const rs = await Promise.all(Array.from({ length: 8 }, () => request(n.url, '/mcp', { headers: bearer(t) })));
    assert.deepEqual(rs.map((r) => r.status), Array(8).fill(401), `${n.name}: every worker refuses it`);
  }
  assert.equal((await request(nodes[0].url, '/mcp', { headers: bearer(t) })).status, 401);
  // The eviction log of the contract: sequence and sorted set, keys only.
  assert.ok(Number(redisCli('GET', 'mcp_oauth2:evictions:seq')) >= 1);
  const logged = redisCli('ZRANGE', 'mcp_oauth2:evictions:log', '0', '-1').split('\n');
  assert.ok(logged.every((k) => /^[0-9a-f]{64}$/.test(k)), logged.join(' '));
});

test('the Kong handler on three nodes shares answers through the same Redis (ACL user and password)', async () => {
  const t = await token(KONG_RESOURCE);
  await asPost('/__test/reset');
  await asPost('/__test/delay?ms=300');
  const rs = await Promise.all(nodes.flatMap((n) => Array.from({ length: 10 }, () => request(n.url, '/kong/mcp', { headers: bearer(t) }))));
  await asPost('/__test/delay?ms=0');
  assert.deepEqual(rs.map((r) => r.status), Array(30).fill(200), rs.find((r) => r.status !== 200)?.body);
  assert.equal(await introspections(), 1);
});

test('the Kong schema (stand-in Admin API) accepts the cluster fields (a vault reference for the password) and refuses what the core refuses', async () => {
  const post = (config) => request(nodes[0].url, '/kong-admin/plugins', {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ name: 'ai-mcp-oauth2', config: { resource: KONG_RESOURCE, authorization_servers: [asUrl],
      introspection_endpoint: `${asUrl}/token/introspection`, client_id: 'gateway', client_secret: 'gateway-secret', ...config } }),
  });
  const ok = await post({ cluster_cache_strategy: 'redis', cluster_cache_redis: { host: '10.0.0.5', password: '{vault://env/redis}' } });
  assert.equal(ok.status, 201, ok.body);
  const stored = JSON.parse(ok.body).config.cluster_cache_redis;
  assert.equal(stored.port, 6379);
  assert.equal(stored.keepalive_pool_size, 256);
  const bad = await post({ cluster_cache_strategy: 'redis', cluster_cache_redis: { connect_timeout: 0 } });
  assert.equal(bad.status, 400);
  assert.match(JSON.parse(bad.body).message, /cluster_cache_redis\.connect_timeout: must be at least 1 ms/);
});

test('Redis over TLS with ssl_verify (lua_ssl_trusted_certificate): 3 × 10 concurrent → 1 introspection', async () => {
  const t = await token();
  await asPost('/__test/reset');
  await asPost('/__test/delay?ms=300');
  const rs = await Promise.all(nodes.flatMap((n) => Array.from({ length: 10 }, () => request(n.url, '/tls/mcp', { headers: bearer(t) }))));
  await asPost('/__test/delay?ms=0');
  assert.deepEqual(rs.map((r) => r.status), Array(30).fill(200));
  assert.equal(await introspections(), 1);
  const keys = tlsCli('--scan', '--pattern', 'mcp_oauth2:answer:*').split('\n').filter(Boolean);
  assert.equal(keys.length, 1, 'the answer went through the TLS Redis');
});

test('a wrong Redis password: requests served, a warning naming cluster_cache_redis (never the password)', async () => {
  const t = await token();
  for (let i = 0; i < 6; i++) {
    assert.equal((await request(nodes[0].url, '/bad/mcp', { headers: bearer(t) })).status, 200);
  }
  const views = await workerViews(nodes[0]);
  assert.ok(views.every((v) => v.bad_up === false && v.bad_counts.errors > 0), JSON.stringify(views));
  const log = errorLog(nodes[0]);
  const warnings = log.split('\n').filter((l) => l.includes('[warn]') && l.includes('cluster cache (Redis at 127.0.0.1:'));
  assert.ok(warnings.some((l) => /cluster_cache_redis\) .* failed: authentication failed \(check cluster_cache_redis\.username and password\); serving from this node's own cache and the authorization server/.test(l)),
    warnings.join('\n'));
  // Once a minute per worker: at most one per worker so far (2 workers).
  assert.ok(warnings.filter((l) => l.includes('authentication failed')).length <= 2, warnings.join('\n'));
  for (const n of nodes) assert.ok(!errorLog(n).includes(REDIS_PASSWORD), 'the password never reaches the log');
});

test('a demo-proxy node (the library\'s Redis client) and the nginx nodes share one Redis', { skip: !DEMO_PROXY_BIN && 'DEMO_PROXY_BIN not set' }, async (ctx) => {
  // The same configuration as the nginx nodes' /mcp handler; Redis named its own way.
  const port = await freePort();
  const config = {
    resource: RESOURCE, authorization_servers: [asUrl], introspection_endpoint: `${asUrl}/token/introspection`,
    client_id: 'gateway', client_secret: 'gateway-secret', claim_to_header: [{ claim: 'client_id', header: 'X-Client-Id' }],
    cluster_cache_strategy: 'redis',
    cluster_cache_redis: { host: '127.0.0.1', port: redisPort, password: REDIS_PASSWORD, database: 2 },
  };
  writeFileSync(`${CLUSTER_DIR}/demo.json`, JSON.stringify(config));
  demoProc = spawn(DEMO_PROXY_BIN, ['--config', `${CLUSTER_DIR}/demo.json`, '--upstream', UPSTREAM_URL,
    '--listen', `127.0.0.1:${port}`, '--admin-evict'], { stdio: ['ignore', 'ignore', 'pipe'] });
  let demoLog = '';
  demoProc.stderr.on('data', (c) => { demoLog += c; });
  const demo = `http://127.0.0.1:${port}`;
  await waitFor(async () => { try { return (await request(demo, '/mcp')).status === 401; } catch { return false; } }, 10_000, 'demo proxy did not start');
  await sleep(500); // its watcher connects within 250 ms

  // nginx fetches, the demo proxy replays; and the other way round.
  for (const [first, second] of [[nodes[0].url, demo], [demo, nodes[1].url]]) {
    const t = await token();
    const before = await introspections();
    assert.equal((await request(first, '/mcp', { headers: bearer(t) })).status, 200);
    assert.equal((await request(second, '/mcp', { headers: bearer(t) })).status, 200);
    assert.equal(await introspections(), before + 1, `one introspection: ${first} then ${second}`);
  }
  // Evict on the demo proxy: the nginx nodes drop their copies of the revoked token.
  const t = await token();
  for (const n of [demo, ...nodes.map((x) => x.url)]) assert.equal((await request(n, '/mcp', { headers: bearer(t) })).status, 200);
  await fetch(`${asUrl}/token/revocation`, {
    method: 'POST',
    headers: { authorization: `Basic ${Buffer.from('gateway:gateway-secret').toString('base64')}`, 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ token: t }),
  });
  const started = Date.now();
  const ev = await fetch(`${demo}/_mcp_oauth2/evict`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ token: t }) });
  assert.equal(ev.status, 200, await ev.text());
  let refused;
  while (Date.now() - started < 3000 && refused === undefined) {
    const rs = await Promise.all(nodes.flatMap((n) => Array.from({ length: 4 }, () => request(n.url, '/mcp', { headers: bearer(t) }))));
    if (rs.every((r) => r.status === 401)) refused = Date.now() - started;
    else await sleep(50);
  }
  ctx.diagnostic(`nginx nodes refused the token evicted on the demo proxy after ${refused} ms`);
  assert.ok(refused !== undefined && refused <= 1000, String(refused));
  // And evict on nginx: the demo proxy drops its copy.
  const t2 = await token();
  for (const n of [demo, nodes[0].url]) assert.equal((await request(n, '/mcp', { headers: bearer(t2) })).status, 200);
  await fetch(`${asUrl}/token/revocation`, {
    method: 'POST',
    headers: { authorization: `Basic ${Buffer.from('gateway:gateway-secret').toString('base64')}`, 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ token: t2 }),
  });
  const ev2 = await request(nodes[0].url, '/_mcp_oauth2_evict', {
    method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: `token=${encodeURIComponent(t2)}`,
  });
  assert.equal(ev2.status, 200);
  await sleep(600);
  assert.equal((await request(demo, '/mcp', { headers: bearer(t2) })).status, 401, 'the demo proxy dropped its copy');
  assert.ok(!demoLog.includes(REDIS_PASSWORD));
  demoProc.kill('SIGTERM');
  demoProc = undefined;
});

test('redis-server killed mid-run: every valid request served, the cache used again once it is back', async (ctx) => {
  const tokens = await Promise.all(Array.from({ length: 6 }, () => token()));
  let stop = false;
  const statuses = [];
  const load = (async () => {
    let i = 0;
    while (!stop) {
      const n = nodes[i % 3];
      const t = tokens[i % tokens.length];
      statuses.push((await request(n.url, '/mcp', { headers: bearer(t) })).status);
      i++;
    }
  })();
  await sleep(400);
  await stopRedis(); // SIGKILL: pooled connections die with it
  await sleep(1500);
  // New tokens while Redis is down: each node introspects on its own, nothing fails.
  const fresh = await token();
  const rs = await Promise.all(nodes.flatMap((n) => [1, 2].map(() => request(n.url, '/mcp', { headers: bearer(fresh) }))));
  assert.deepEqual(rs.map((r) => r.status), Array(6).fill(200));
  await startRedis();
  await waitFor(allUp, 3000, 'the nodes did not reconnect within 3 s');
  await sleep(300);
  stop = true;
  await load;
  ctx.diagnostic(`${statuses.length} requests during the outage run`);
  assert.ok(statuses.length > 20);
  assert.deepEqual([...new Set(statuses)], [200], 'no request failed because of Redis');
  for (const n of nodes) assert.match(errorLog(n), /cluster cache \(Redis at 127\.0\.0\.1:\d+, cluster_cache_redis\) [a-z -]+ failed: (connection failed|timed out)/);
  for (const n of nodes) assert.match(errorLog(n), /cluster cache \(Redis at 127\.0\.0\.1:\d+\) answers again/);
  // Back: one introspection for a new token across the three nodes again.
  const t = await token();
  await asPost('/__test/reset');
  await asPost('/__test/delay?ms=300');
  const again = await Promise.all(nodes.flatMap((n) => Array.from({ length: 20 }, () => request(n.url, '/mcp', { headers: bearer(t) }))));
  await asPost('/__test/delay?ms=0');
  assert.deepEqual(again.map((r) => r.status), Array(60).fill(200));
  assert.equal(await introspections(), 1, 'the cluster cache is used again');
  // Nothing of the module's at error level: no Lua error, no internal error. (nginx's own
  // connect() lines are off, lua_socket_log_errors; a pooled connection that Redis's death
  // resets may still get nginx's own `recv() failed` line.)
  for (const n of nodes) {
    const bad = errorLog(n).split('\n').filter((l) => /\[(error|crit|alert|emerg)\]/.test(l) && !/ (recv|send|connect)\(\) failed \(\d+: /.test(l));
    assert.deepEqual(bad, [], n.name);
  }
});
