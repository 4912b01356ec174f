-- busted spec of the cluster cache (resty.mcp_oauth2.cluster) driven by resty.mcp_oauth2,
-- against a mock `ngx` and an in-memory stand-in of resty.redis that runs the contract's two
-- scripts by their text: two "nodes" (two handlers, each with its own shared dict) share
-- answers, evictions reach the other node, Redis failing never fails a request, the
-- warning comes once and names the field, never the password. The real redis-server and
-- nginx run in tests/nginx/cluster.test.mjs.
local mock = require("spec.ngx_mock")
local ngx = mock.install()
local cjson = require("cjson")

-- ---------------------------------------------------------------------------------------
-- A Redis server in memory, and a resty.redis-shaped client for it.
local server = { data = {}, exp = {}, down = false, password = "s3cret", seen_auth = {} }
local function live(k)
  local e = server.exp[k]
  if e and e <= mock.now() * 1000 then
    server.data[k], server.exp[k] = nil, nil
  end
  return server.data[k]
end
local client_mt = {}
client_mt.__index = client_mt
local sock = { sslhandshake = function() return true end }
local fake = { new = function() return setmetatable({ authed = false, _sock = sock }, client_mt) end }
-- resty.redis 0.28+ has set_timeouts (the module checks with rawget).
fake.set_timeouts = function() return true end
function client_mt:set_timeouts() return true end
function client_mt:connect(host, port, opts)
  if server.down then return nil, "connection refused" end
  self.pool = opts.pool
  return true
end
function client_mt:get_reused_times() return 0 end
function client_mt:auth(a, b)
  server.seen_auth[#server.seen_auth + 1] = { a, b }
  if (b or a) ~= server.password then return false, "WRONGPASS invalid username-password pair or user is disabled." end
  self.authed = true
  return "OK"
end
function client_mt:select() return "OK" end
function client_mt:set_keepalive() return true end
function client_mt:close() return true end
local function cmd(self, f)
  if server.down then return nil, "closed" end
  if not self.authed then return false, "NOAUTH Authentication required." end
  return f()
end
function client_mt:get(k) return cmd(self, function() return live(k) or ngx.null end) end
function client_mt:exists(k) return cmd(self, function() return live(k) and 1 or 0 end) end
function client_mt:set(k, v, px, ms)
  return cmd(self, function()
    server.data[k] = v
    server.exp[k] = px == "PX" and mock.now() * 1000 + ms or nil
    return "OK"
  end)
end
function client_mt:del(k) return cmd(self, function() server.data[k], server.exp[k] = nil, nil; return 1 end) end
function client_mt:eval(script, n, ...)
  local args = { ... }
  local cluster = require("resty.mcp_oauth2.cluster")
  return cmd(self, function()
    if script == cluster._LOOKUP then
      local v = live(args[1])
      if v then return v end
      if live(args[2]) then return 0 end
      server.data[args[2]], server.exp[args[2]] = "1", mock.now() * 1000 + args[3]
      return 1
    elseif script == cluster._EVICT then
      local log, seq, answer, key = args[1], args[2], args[3], args[4]
      server.data[answer] = nil
      local nseq = (tonumber(live(seq)) or 0) + 1
      server.data[seq] = tostring(nseq)
      server.data[log] = server.data[log] or {}
      table.insert(server.data[log], { nseq, key })
      return nseq
    end
    error("unknown script")
  end)
end
function client_mt:zrangebyscore(k, from, to)
  return cmd(self, function()
    local lo = tonumber((from:gsub("^%(", "")))
    local out = {}
    for _, e in ipairs(server.data[k] or {}) do
      if e[1] > lo and e[1] <= tonumber(to) then
        out[#out + 1] = e[2]
        out[#out + 1] = tostring(e[1])
      end
    end
    return out
  end)
end
-- Pipelines: commands queue their results.
function client_mt:init_pipeline() self.queue = {} end
function client_mt:multi() self.queue[#self.queue + 1] = "OK" end
function client_mt:exec() self.queue[#self.queue + 1] = { "OK" } end
function client_mt:commit_pipeline()
  if server.down then return nil, "closed" end
  local q = self.queue
  self.queue = nil
  return q
end
-- Inside a pipeline, exists/get/set/del queue instead of returning.
for _, name in ipairs({ "exists", "get", "set", "del" }) do
  local direct = client_mt[name]
  client_mt[name] = function(self, ...)
    local r, e = direct(self, ...)
    if self.queue then
      self.queue[#self.queue + 1] = r == nil and { false, e } or r
      return true
    end
    return r, e
  end
end
package.loaded["resty.redis"] = fake

local mcp = require("resty.mcp_oauth2")
local cluster_cache = require("resty.mcp_oauth2.cluster")
local RESOURCE = "https://mcp.example.com/mcp"

local function conf(password, host)
  return {
    resource = RESOURCE,
    authorization_servers = { "https://as.example.com" },
    introspection_endpoint = "https://as.example.com/introspect",
    client_id = "gateway",
    client_secret = "gateway-secret",
    cluster_cache_strategy = "redis",
    cluster_cache_redis = { host = host or "10.0.0.5", password = password or "s3cret", ssl = true, ssl_verify = true,
      username = ngx.null, keepalive_backlog = ngx.null },
  }
end

local calls = 0
local function as_http()
  calls = calls + 1
  return 200, "application/json", cjson.encode({ active = true, aud = RESOURCE, exp = math.floor(mock.now()) + 600, sub = "alice" })
end

local function node(name, password, host)
  ngx.shared[name] = mock.new_dict()
  local auth = assert(mcp.new(conf(password, host), { shm = name, http = as_http }))
  -- The watcher's first round connects (until then requests do not wait for Redis).
  mcp._cluster_tick()
  return auth
end

local function access(auth, token)
  local r = mock.request(function() return auth:access() end, { http_authorization = "Bearer " .. token })
  mock.step(r)
  mock.settle({ r })
  assert.is_true(r.done)
  return r
end
local function allowed(r)
  if r.result[1] ~= true then
    for _, l in ipairs(mock.logs) do print(l.level, l.msg) end
    print("status", r.status, r.resp_body)
  end
  return r.result[1] == true
end

describe("cluster cache (resty.redis stand-in)", function()
  before_each(function()
    server.data, server.exp, server.down = {}, {}, false
    calls = 0
  end)

  it("shares an answer between nodes under <prefix>:answer:<key>, for the core's TTL, with its fetch time", function()
    local a, b = node("node_a"), node("node_b")
    assert.is_true(a:cluster_cache_up())
    assert.is_true(allowed(access(a, "tok-1")))
    assert.equal(1, calls)
    local keys = {}
    for k in pairs(server.data) do keys[#keys + 1] = k end
    assert.same(1, #keys)
    assert.truthy(keys[1]:match("^mcp_oauth2:answer:%x+$"))
    assert.equal(64, #keys[1] - #"mcp_oauth2:answer:")
    local v = server.data[keys[1]]
    assert.truthy(v:match("^%d+\n200\napplication/json\n{"))
    assert.falsy(v:find("tok-1", 1, true))
    -- 600 s left of the token, minus nothing: the core's cache TTL, never longer.
    local ttl = server.exp[keys[1]] - mock.now() * 1000
    assert.is_true(ttl > 0 and ttl <= 600000)
    -- The other node replays it: no AS call.
    assert.is_true(allowed(access(b, "tok-1")))
    assert.equal(1, calls)
    assert.equal(1, b.cluster.counts.hits)
    -- The password went to AUTH, never into the pool name.
    assert.falsy(b.cluster.pool:find("s3cret", 1, true))
  end)

  it("evict deletes the Redis entry and the other node drops its copies at its next round", function()
    local a, b = node("node_a2"), node("node_b2")
    assert.is_true(allowed(access(a, "tok-2")))
    assert.is_true(allowed(access(b, "tok-2")))
    assert.equal(1, calls)
    local r = mock.request(function() return a:evict("tok-2") end)
    mock.step(r)
    assert.equal("1", server.data["mcp_oauth2:evictions:seq"])
    for k in pairs(server.data) do
      assert.falsy(k:match("^mcp_oauth2:answer:"))
    end
    mcp._cluster_tick()
    assert.is_true(allowed(access(b, "tok-2")))
    assert.equal(2, calls, "node B asked the AS again")
    -- A's own eviction is not applied twice (skipped by its number).
    assert.equal(0, a.cluster.counts.evictions_read)
    assert.is_true(b.cluster.counts.evictions_read >= 1)
  end)

  it("evict in a phase without cosockets (log, body filter) publishes from a timer", function()
    local a = node("node_a5")
    assert.is_true(allowed(access(a, "tok-5")))
    local before = tonumber(server.data["mcp_oauth2:evictions:seq"] or "0")
    ngx.get_phase = function() return "log" end
    local n = #mock.timers
    local r = mock.request(function() return a:evict("tok-5") end)
    mock.step(r)
    ngx.get_phase = nil
    assert.equal(before, tonumber(server.data["mcp_oauth2:evictions:seq"] or "0"), "not from the log phase")
    assert.equal(n + 1, #mock.timers)
    mock.timers[#mock.timers]()
    assert.equal(before + 1, tonumber(server.data["mcp_oauth2:evictions:seq"]))
  end)

  it("Redis down: requests served by the AS, counted, one warning naming cluster_cache_redis; back at the next round", function()
    local a = node("node_a3", nil, "10.0.0.7")
    server.down = true
    assert.is_true(allowed(access(a, "tok-3")))
    assert.is_false(a:cluster_cache_up())
    assert.equal(1, calls)
    for i = #mock.logs, 1, -1 do mock.logs[i] = nil end
    mcp._cluster_tick()
    mcp._cluster_tick()
    local warned = {}
    for _, l in ipairs(mock.logs) do
      local text = l.msg
      if text:find("cluster cache (Redis at 10.0.0.7:6379, cluster_cache_redis)", 1, true) then
        warned[#warned + 1] = text
      end
    end
    assert.equal(1, #warned, "once per interval")
    assert.truthy(warned[1]:find("failed: connection failed: ", 1, true))
    assert.truthy(warned[1]:find("serving from this node's own cache and the authorization server", 1, true))
    -- An eviction while down waits, and goes out when Redis is back.
    local r = mock.request(function() return a:evict("tok-3") end)
    mock.step(r)
    assert.is_nil(server.data["mcp_oauth2:evictions:seq"])
    server.down = false
    mcp._cluster_tick()
    assert.is_false(a:cluster_cache_up(), "while down, one attempt a second")
    mock.advance(1)
    mcp._cluster_tick()
    assert.is_true(a:cluster_cache_up())
    assert.equal("1", server.data["mcp_oauth2:evictions:seq"])
  end)

  it("a wrong password: served, and the warning says to check the password, without it", function()
    for i = #mock.logs, 1, -1 do mock.logs[i] = nil end
    local a = node("node_a4", "not-the-password", "10.0.0.8")
    assert.is_false(a:cluster_cache_up())
    assert.is_true(allowed(access(a, "tok-4")))
    local w
    for _, l in ipairs(mock.logs) do
      if l.msg:find("Redis at 10.0.0.8:6379", 1, true) then w = l.msg end
    end
    assert.truthy(w:find("authentication failed (check cluster_cache_redis.username and password)", 1, true))
    assert.falsy(w:find("not-the-password", 1, true))
    assert.is_true(a.cluster.counts.errors >= 1)
  end)

  it("describes Redis's errors by their code only", function()
    assert.equal("Redis requires a password (set cluster_cache_redis.password)", cluster_cache.describe("NOAUTH Authentication required."))
    assert.equal("error WRONGTYPE", cluster_cache.describe("WRONGTYPE Operation against a key holding the wrong kind of value tok"))
    assert.equal("timed out", cluster_cache.describe("timeout"))
    assert.equal("TLS failed: 18: self-signed certificate",
      cluster_cache.describe("TLS handshake failed: 18: self-signed certificate"))
    assert.equal("connection failed: connection refused", cluster_cache.describe("connection refused"))
  end)

  it("check() and new() refuse cluster_cache_strategy: redis when resty.redis cannot be loaded", function()
    package.loaded["resty.redis"] = nil
    package.loaded["nginx.redis"] = nil
    package.preload["resty.redis"] = function() error("not installed") end
    package.preload["nginx.redis"] = function() error("not installed") end
    local ok, err = mcp.check(conf())
    assert.is_nil(ok)
    assert.truthy(err:find("cluster_cache_strategy: redis needs resty.redis", 1, true))
    local auth, nerr = mcp.new(conf(), { shm = false, http = as_http })
    assert.is_nil(auth)
    assert.equal(err, nerr)
    -- The Kong schema's custom_validator runs check(): the Admin API refuses it too.
    require("kong_standin")
    local schema = require("kong.plugins.mcp-oauth2.schema")
    local record
    for _, f in ipairs(schema.fields) do
      if f.config then record = f.config end
    end
    local kong_conf = conf()
    kong_conf.cluster_cache_redis = { host = "10.0.0.5", password = "{vault://env/redis-password}" }
    local sok, serr = record.custom_validator(kong_conf)
    assert.is_nil(sok)
    assert.equal(err, serr)
    package.preload["resty.redis"], package.preload["nginx.redis"] = nil, nil
    package.loaded["resty.redis"] = fake
    assert.is_true(mcp.check(conf()))
    assert.is_true(record.custom_validator(kong_conf))
  end)
end)
