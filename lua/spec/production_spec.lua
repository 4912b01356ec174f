-- busted specs of what resty.mcp_oauth2 adds for production (issue 12, issue 11): logs at
-- the core's level, revocation through the shared dict's eviction log, streams that end
-- with their token (exp, evict, re-validation when the cache entry ages out), metrics summed
-- over workers, the token-exchange step and its shared-dict entry, nginx's 400s and the
-- underscore twins of claim headers, and configuration checks for the Kong schema.
local mock = require("spec.ngx_mock")
mock.install()
local ffi = require("ffi")
local cjson = require("cjson")
local mcp = require("resty.mcp_oauth2")

local LIB = assert(package.searchpath("mcp_oauth2", package.cpath))
local RESOURCE = "https://mcp.example.com/mcp"

local function conf(extra)
  local c = {
    resource = RESOURCE,
    authorization_servers = { "https://as.example.com" },
    introspection_endpoint = "https://as.example.com/introspect",
    client_id = "gateway",
    client_secret = "gateway-secret",
    claim_to_header = { { claim = "sub", header = "X-User-Id" } },
  }
  for k, v in pairs(extra or {}) do c[k] = v end
  return c
end

local function active(claims)
  local c = { active = true, aud = RESOURCE, exp = math.floor(mock.now()) + 3600, sub = "alice" }
  for k, v in pairs(claims or {}) do c[k] = v end
  return cjson.encode(c)
end

local shm_n = 0
local function fresh_shm()
  shm_n = shm_n + 1
  local name = "prod" .. shm_n
  ngx.shared[name] = mock.new_dict()
  return name
end

local function handler(opts_extra, conf_extra)
  local calls = {}
  local opts = { library = LIB, http = mock.suspending_http(calls), shm = false }
  for k, v in pairs(opts_extra or {}) do opts[k] = v end
  local auth = assert(mcp.new(conf(conf_extra), opts))
  return auth, calls
end

local function access(auth, authz, extra_vars, headers)
  local vars = { http_authorization = authz }
  for k, v in pairs(extra_vars or {}) do vars[k] = v end
  return mock.request(function() return auth:access() end, vars, headers)
end

-- Runs the recorded timers as requests; returns them (they may wait for the AS).
local function run_timers()
  local list = {}
  for _, fn in ipairs(mock.timers) do
    list[#list + 1] = mock.step(mock.request(fn))
  end
  mock.timers = {}
  return list
end

-- A body chunk through the filter of a tracked response; returns what the filter did.
local function chunk(auth, st, data, eof)
  local r = mock.request(function() return auth:filter(st) end)
  r.arg[1], r.arg[2] = data, eof or false
  mock.step(r)
  return r.arg[1], r.arg[2], r.result[1]
end

describe("logs", function()
  it("logs each decision at the core's level with its reason and detail, never the token", function()
    local auth, calls = handler()
    mock.logs = {}
    local r = mock.step(access(auth, nil))
    assert.equal(401, r.status)
    local last = mock.logs[#mock.logs]
    assert.equal(ngx.INFO, last.level)
    assert.equal("mcp_oauth2: no_credentials 401", last.msg)
    r = mock.step(access(auth, "Bearer secret-token-1"))
    mock.step(r, nil, "connect", "refused")
    assert.equal(503, r.status)
    last = mock.logs[#mock.logs]
    assert.equal(ngx.WARN, last.level)
    assert.matches("^mcp_oauth2: authorization_server_unavailable 503: ", last.msg)
    r = mock.step(access(auth, "Bearer secret-token-2"))
    mock.step(r, 200, "application/json", active())
    last = mock.logs[#mock.logs]
    assert.equal(ngx.DEBUG, last.level)
    assert.equal("mcp_oauth2: allowed (forwarded)", last.msg)
    for _, l in ipairs(mock.logs) do
      assert.is_nil(l.msg:find("secret-token", 1, true), l.msg)
    end
    assert.equal(2, #calls)
  end)

  it("a decision below the error_log level is not logged", function()
    local auth = handler()
    mock.logs, mock.log_level = {}, ngx.NOTICE
    package.loaded["resty.mcp_oauth2"] = nil
    local fresh = require("resty.mcp_oauth2")
    local a = assert(fresh.new(conf(), { library = LIB, shm = false, http = function() end }))
    mock.step(access(a, nil))
    assert.same({}, mock.logs)
    mock.log_level = 8
    package.loaded["resty.mcp_oauth2"] = mcp
    assert.is_table(auth)
  end)

  it("logs each configuration warning once at new()", function()
    mock.logs = {}
    handler(nil, { ssl_verify = false })
    local n = 0
    for _, l in ipairs(mock.logs) do
      if l.msg:find("mcp_oauth2: configuration: ", 1, true) then
        n = n + 1
        assert.equal(ngx.WARN, l.level)
      end
    end
    assert.equal(1, n)
  end)
end)

describe("revocation across workers", function()
  it("evict in one worker reaches the other's in-process cache through the eviction log", function()
    local shm = fresh_shm()
    local w1 = handler({ shm = shm })
    local w2, calls2 = handler({ shm = shm })
    -- Both workers hold the token in their own cache.
    local r = mock.step(access(w2, "Bearer tok-r"))
    mock.step(r, 200, "application/json", active())
    local r1 = mock.step(access(w1, "Bearer tok-r"))
    assert.is_true(r1.done, "w1 replays the shared answer")
    assert.equal(1, #calls2)
    -- Without the log, w2 still answers from its cache after w1's evict; w2's worker's tick
    -- applies it (a worker skips the entries it wrote itself).
    w1:evict("tok-r")
    mock.worker = 1
    mcp._tick()
    mock.worker = 0
    r = mock.step(access(w2, "Bearer tok-r"))
    assert.is_not_nil(r.waiting and r.waiting.http, "w2 asks the AS again")
    mock.step(r, 200, "application/json", '{"active":false}')
    assert.equal(401, r.status)
  end)
end)

describe("streams", function()
  it("end at the token's exp: the chunk is dropped, the response closed, later chunks refused", function()
    local auth = handler()
    local exp = math.floor(mock.now()) + 10
    local st = auth:track("Bearer tok-s1", "/mcp", nil, exp, nil)
    local data, eof, later = chunk(auth, st, "data: 1\n\n")
    assert.equal("data: 1\n\n", data)
    assert.is_false(eof)
    assert.is_false(later)
    mock.advance(10)
    data, eof, later = chunk(auth, st, "data: 2\n\n")
    assert.equal("", data)
    assert.is_true(eof)
    assert.is_false(later)
    data, eof, later = chunk(auth, st, "data: 3\n\n")
    assert.is_nil(data)
    assert.is_true(later, "chunks after the end: the caller aborts the upstream")
  end)

  it("end when their token is evicted, in this worker and (through the log) in another", function()
    local shm = fresh_shm()
    local w1 = handler({ shm = shm })
    local w2 = handler({ shm = shm })
    local exp = math.floor(mock.now()) + 3600
    local s1 = w1:track("Bearer tok-s2", "/mcp", nil, exp, nil, mock.now())
    local s2 = w2:track("Bearer tok-s2", "/mcp", nil, exp, nil, mock.now())
    local other = w2:track("Bearer tok-s3", "/mcp", nil, exp, nil, mock.now())
    mock.advance(0.05)
    w1:evict("tok-s2")
    local _, eof = chunk(w1, s1, "x")
    assert.is_true(eof)
    -- In w1, a request decided after its own eviction (a fresh answer) streams on.
    mock.advance(0.01)
    local s1b = w1:track("Bearer tok-s2", "/mcp", nil, exp, nil, mock.now())
    _, eof = chunk(w2, s2, "x")
    assert.is_false(eof, "not before the tick")
    -- In w2 (which had no copy of the answer): what was decided before the eviction ends,
    -- what was decided after it goes on.
    mock.advance(0.05)
    local s2b = w2:track("Bearer tok-s2", "/mcp", nil, exp, nil, mock.now())
    mock.worker = 1
    mcp._tick()
    mock.worker = 0
    _, eof = chunk(w2, s2, "x")
    assert.is_true(eof)
    _, eof = chunk(w2, s2b, "x")
    assert.is_false(eof, "decided after the eviction, without a stale copy")
    _, eof = chunk(w1, s1b, "x")
    assert.is_false(eof, "decided after the eviction, in the worker that evicted")
    _, eof = chunk(w2, other, "x")
    assert.is_false(eof, "another token's stream goes on")
  end)

  it("a worker that still had the evicted token's answer ends all of its streams", function()
    local shm = fresh_shm()
    local w1 = handler({ shm = shm })
    local w2 = handler({ shm = shm })
    local r = mock.step(access(w2, "Bearer tok-s6"))
    mock.step(r, 200, "application/json", active())
    w1:evict("tok-s6")
    mock.advance(0.05)
    -- Decided after the eviction, but from w2's stale copy: it must end too.
    local late = mock.step(access(w2, "Bearer tok-s6"))
    assert.is_true(late.done, "answered from w2's own cache")
    local st = w2:track("Bearer tok-s6", "/mcp", nil, late.ctx.mcp_oauth2.valid_until, nil,
      late.ctx.mcp_oauth2.decided_at)
    mock.worker = 1
    mcp._tick()
    mock.worker = 0
    local _, eof = chunk(w2, st, "x")
    assert.is_true(eof)
  end)

  it("re-validate once per token when the cache entry ages out, and end only if refused", function()
    local auth, calls = handler(nil, { cache_ttl_max = 2 })
    local r = mock.step(access(auth, "Bearer tok-s4"))
    mock.step(r, 200, "application/json", active())
    local id = r.ctx.mcp_oauth2
    assert.equal(math.floor(mock.now()) + 3600, id.valid_until)
    local a = auth:track("Bearer tok-s4", "/mcp", nil, id.valid_until, id.recheck_at)
    local b = auth:track("Bearer tok-s4", "/mcp", nil, id.valid_until, id.recheck_at)
    assert.equal(a.entry, b.entry, "one entry per token")
    mcp._tick()
    assert.equal(0, #mock.timers, "nothing to do before the entry ages out")
    mock.advance(2)
    mcp._tick()
    mcp._tick()
    assert.equal(1, #mock.timers, "one re-validation for both streams")
    local t = run_timers()[1]
    assert.equal(2, #calls, "one AS call")
    mock.step(t, 200, "application/json", active())
    assert.is_true(t.done)
    local _, eof = chunk(auth, a, "x")
    assert.is_false(eof, "still active: the responses go on")
    _, eof = chunk(auth, b, "x")
    assert.is_false(eof)
    -- The AS is down at the next re-validation: undecided, so the streams go on.
    mock.advance(2)
    mcp._tick()
    t = run_timers()[1]
    mock.step(t, nil, "connect", "refused")
    _, eof = chunk(auth, a, "x")
    assert.is_false(eof, "an AS failure never ends a response")
    -- Then revoked: both end.
    mock.advance(1)
    mcp._tick()
    t = run_timers()[1]
    mock.step(t, 200, "application/json", '{"active":false}')
    _, eof = chunk(auth, a, "x")
    assert.is_true(eof)
    _, eof = chunk(auth, b, "x")
    assert.is_true(eof)
    assert.equal(4, #calls)
  end)

  it("body_filter() tracks the request's own identity from ngx.ctx", function()
    local auth = handler()
    local r = mock.step(access(auth, "Bearer tok-s5", { uri = "/mcp" }))
    mock.step(r, 200, "application/json", active({ exp = math.floor(mock.now()) + 1 }))
    r.arg[1], r.arg[2] = "x", false
    r.co = coroutine.create(function() return auth:body_filter() end)
    mock.step(r)
    assert.equal("x", r.arg[1])
    mock.advance(1)
    r.arg[1] = "y"
    r.co = coroutine.create(function() return auth:body_filter() end)
    mock.step(r)
    assert.equal("", r.arg[1])
    assert.is_true(r.arg[2])
    r.co = coroutine.create(function() return auth:body_filter() end)
    mock.step(r)
    assert.equal(ngx.ERROR, r.result[1])
  end)
end)

describe("metrics", function()
  it("sum every worker's counters through the shared dict, as Prometheus text", function()
    -- Two workers with the same configuration (so the same id) and one shared dict. Both
    -- live in this one process here: worker 0's handler is made after worker 1 wrote.
    local shm = fresh_shm()
    local w1 = handler({ shm = shm })
    mock.worker = 1
    mock.step(access(w1, nil))
    mock.step(access(w1, nil))
    mcp._tick(); mcp._tick(); mcp._tick(); mcp._tick(); mcp._tick() -- a second: snapshots written
    mock.worker = 0
    local w0 = handler({ shm = shm })
    local r = mock.step(access(w0, "Bearer tok-m"))
    mock.step(r, 200, "application/json", active())
    local text = w0:metrics()
    assert.matches('mcp_oauth2_decisions_total{decision="deny",reason="no_credentials"} 2\n', text, 1, true)
    assert.matches('mcp_oauth2_decisions_total{decision="allow",reason="allowed"} 1\n', text, 1, true)
    assert.matches('mcp_oauth2_cache_lookups_total{cache="shared",result="miss"} 1\n', text, 1, true)
    assert.matches('mcp_oauth2_authorization_server_requests_total{kind="introspection",result="ok"} 1\n', text, 1, true)
  end)
end)

describe("token exchange", function()
  local function exchange_conf()
    return {
      passthrough_credentials = true,
      token_exchange = {
        enabled = true,
        token_endpoint = "https://as.example.com/token",
        client_id = "exchanger",
        client_secret = "exchanger-secret",
        request = { actor_token_source = "header", actor_token_header = "X-Actor" },
      },
    }
  end
  local answer = cjson.encode({
    access_token = "exchanged-1", token_type = "Bearer", expires_in = 600,
    issued_token_type = "urn:ietf:params:oauth:token-type:access_token",
  })

  it("one more step: the upstream gets the exchanged token; the answer is shared with other workers", function()
    local shm = fresh_shm()
    local w1, calls1 = handler({ shm = shm }, exchange_conf())
    local w2, calls2 = handler({ shm = shm }, exchange_conf())
    local r = mock.step(access(w1, "Bearer tok-x", { http_x_actor = "actor-1" }, { ["X-Actor"] = "actor-1" }))
    assert.equal("introspection", calls1[1].purpose)
    mock.step(r, 200, "application/json", active())
    assert.equal("token_exchange", calls1[2].purpose)
    assert.matches("actor_token=actor%-1", calls1[2].body)
    mock.step(r, 200, "application/json", answer)
    assert.is_true(r.done)
    assert.equal("Bearer exchanged-1", r.headers.authorization)
    assert.is_nil(r.headers["x-actor"], "the actor-token header is removed")
    assert.equal("exchanged-1", r.ctx.mcp_oauth2.exchanged_token)
    -- Both answers are in the shared dict, for as long as the core keeps them.
    local entries = 0
    for k in pairs(ngx.shared[shm].data) do
      if not k:find(":", 1, true) then
        entries = entries + 1
        local ttl = ngx.shared[shm]:ttl(k)
        assert.is_true(ttl > 0 and ttl <= 3600, tostring(ttl))
      end
    end
    assert.equal(2, entries)
    -- Another worker replays both: no AS call.
    local r2 = mock.step(access(w2, "Bearer tok-x", { http_x_actor = "actor-1" }))
    assert.is_true(r2.done)
    assert.equal(0, #calls2)
    assert.equal("Bearer exchanged-1", r2.headers.authorization)
  end)

  it("without the actor-token header: 400 with the challenge, nothing exchanged", function()
    local auth, calls = handler(nil, exchange_conf())
    local r = mock.step(access(auth, "Bearer tok-y"))
    if not r.done then
      mock.step(r, 200, "application/json", active())
    end
    assert.equal(400, r.status)
    assert.matches('^Bearer error="invalid_request"', r.resp_headers["WWW-Authenticate"])
    for _, c in ipairs(calls) do
      assert.not_equal("token_exchange", c.purpose)
    end
  end)
end)

describe("requests nginx cannot hand over whole", function()
  it("bad_request_table: the core's 400 with the challenge", function()
    local auth = handler()
    local r = mock.step(mock.request(function() return auth:bad_request_table({ path = "/mcp" }) end))
    local t = r.result[1]
    assert.equal(400, t.status)
    assert.equal('Bearer error="invalid_request", resource_metadata="' .. RESOURCE .. '/.well-known/oauth-protected-resource"',
      t.headers["WWW-Authenticate"])
  end)

  it("underscores_in_headers: the `_` twins of claim headers are dropped", function()
    local auth = handler({ underscores_in_headers = true })
    local r = mock.step(access(auth, "Bearer tok-u", nil,
      { X_User_Id = "evil", X_Other = "kept", ["X-User-Id"] = "evil2" }))
    mock.step(r, 200, "application/json", active())
    assert.equal("alice", r.headers["x-user-id"])
    assert.is_nil(r.headers.x_user_id)
    assert.equal("kept", r.headers.x_other)
  end)
end)

describe("check (the Kong schema's validator)", function()
  it("is the core's verdict with its message", function()
    assert.is_true(mcp.check(conf(), { library = LIB }))
    local ok, err = mcp.check(conf({ timeout = 1.5 }), { library = LIB })
    assert.is_nil(ok)
    assert.equal("timeout: invalid type: floating point `1.5`, expected u64", err)
  end)

  it("the Kong schema (both names) refuses through it; vault references stand in", function()
    require("kong_standin")
    for _, name in ipairs({ "mcp-oauth2", "ai-mcp-oauth2" }) do
      local schema = require("kong.plugins." .. name .. ".schema")
      assert.equal(name, schema.name)
      local record
      for _, f in ipairs(schema.fields) do
        if f.config then record = f.config end
      end
      local ok, err = record.custom_validator(conf({ timeout = 1.5, __key__ = "x" }))
      assert.is_nil(ok)
      assert.equal("timeout: invalid type: floating point `1.5`, expected u64", err)
      assert.is_true(record.custom_validator(conf({ client_secret = "{vault://env/secret}" })))
    end
    assert.equal(require("kong.plugins.mcp-oauth2.handler").access, require("kong.plugins.ai-mcp-oauth2.handler").access)
  end)
end)
