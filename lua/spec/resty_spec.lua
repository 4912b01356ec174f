-- busted specs of resty.mcp_oauth2 against a mock `ngx` (spec/ngx_mock.lua): how it drives
-- the C ABI (begin once per request, single flight within a worker, the shared dict across
-- workers, replays that never outlive the first answer), and what it does to the request.
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
    claim_to_header = { { claim = "sub", header = "X-User-Id" }, { claim = "scope", header = "X-Scope" } },
  }
  for k, v in pairs(extra or {}) do c[k] = v end
  return c
end

local function active(claims)
  local c = { active = true, aud = RESOURCE, exp = math.floor(mock.now()) + 3600, sub = "alice" }
  for k, v in pairs(claims or {}) do c[k] = v end
  return cjson.encode(c)
end

-- The loaded library behind a proxy that counts calls per function.
local function counting_library()
  local lib = ffi.load(LIB)
  local counts = setmetatable({}, { __index = function() return 0 end })
  local proxy = setmetatable({}, {
    __index = function(t, name)
      local f = lib[name]
      if type(f) ~= "cdata" then
        return f
      end
      local wrapped = function(...)
        counts[name] = counts[name] + 1
        return f(...)
      end
      rawset(t, name, wrapped)
      return wrapped
    end,
  })
  return proxy, counts
end

-- A handler with a counting library, an AS function and (by default) a fresh shared dict.
local function handler(opts_extra, conf_extra)
  local lib, counts = counting_library()
  local calls = {}
  local opts = { library = lib, http = mock.suspending_http(calls), shm = false }
  for k, v in pairs(opts_extra or {}) do opts[k] = v end
  local auth = assert(mcp.new(conf(conf_extra), opts))
  return auth, counts, calls
end

local function access(auth, authz, extra_headers)
  return mock.request(function() return auth:access() end,
    { http_authorization = authz }, extra_headers)
end

local function fresh_shm(name)
  ngx.shared[name] = mock.new_dict()
  return name
end

describe("resty.mcp_oauth2.new", function()
  it("returns nil and the core's message naming the field", function()
    local auth, err = mcp.new(conf({ resource = 42 }), { shm = false, library = LIB })
    assert.is_nil(auth)
    assert.matches("^resource: ", err)
    auth, err = mcp.new(conf({ claim_to_header = { { claim = print, header = "X" } } }), { shm = false })
    assert.is_nil(auth)
    assert.equal("claim_to_header[0].claim: unsupported value of type function", err)
  end)

  it("refuses extra introspection headers with ngx.location.capture, and a missing shared dict", function()
    local auth, err = mcp.new(conf({ headers = { ["X-Api-Key"] = "k" } }), { http = "capture", shm = false })
    assert.is_nil(auth)
    assert.matches("^headers: ", err)
    auth, err = mcp.new(conf(), { shm = "nope" })
    assert.is_nil(auth)
    assert.matches("^opts.shm: ", err)
  end)

  it("reads the policy from the core", function()
    local auth = assert(mcp.new(conf({ method_scopes = { ["tools/call"] = { "admin" } } }), { shm = false }))
    assert.is_true(auth.reads_body)
    assert.is_false(auth.reads_origin)
    assert.same({ "X-User-Id", "X-Scope" }, auth.claim_names)
    assert.same({ "Authorization" }, auth.clear)
    assert.equal(500, auth.internal.status)
  end)
end)

describe("auth:access()", function()
  it("answers without a token with the core's 401, calling begin once", function()
    local auth, counts = handler()
    local r = mock.step(access(auth, nil))
    assert.is_true(r.done)
    assert.equal(401, r.status)
    assert.equal('Bearer resource_metadata="' .. RESOURCE .. '/.well-known/oauth-protected-resource"',
      r.resp_headers["WWW-Authenticate"])
    assert.equal("unauthorized", cjson.decode(r.resp_body).error)
    assert.equal(1, counts.mcp_oauth2_validator_begin)
  end)

  it("a miss: one AS call, claim headers set, an absent claim's header cleared; then a hit", function()
    local auth, counts, calls = handler()
    local r = mock.step(access(auth, "Bearer tok-1", { ["X-Scope"] = "spoofed", ["X-Other"] = "kept" }))
    assert.same({ http = calls[1] }, r.waiting)
    assert.equal("introspection", calls[1].purpose)
    assert.equal("token=tok-1&token_type_hint=access_token", calls[1].body)
    assert.matches("^Basic ", calls[1].headers.Authorization)
    mock.step(r, 200, "application/json", active())
    assert.is_true(r.done)
    assert.is_true(r.result[1])
    assert.equal(math.floor(mock.now()) + 3600, r.result[2], "valid_until")
    assert.equal("alice", r.headers["x-user-id"])
    assert.is_nil(r.headers["x-scope"], "the token has no scope claim: the client's copy is gone")
    assert.is_nil(r.headers.authorization)
    assert.equal("kept", r.headers["x-other"])

    local hit = mock.step(access(auth, "Bearer tok-1"))
    assert.is_true(hit.done)
    assert.is_true(hit.result[1])
    assert.equal("alice", hit.headers["x-user-id"])
    assert.equal(1, #calls)
    assert.equal(2, counts.mcp_oauth2_validator_begin, "begin once per request")
    -- An allowed decision lives on as the request's identity (ngx.ctx.mcp_oauth2).
    assert.equal("alice", r.ctx.mcp_oauth2.subject)
    assert.equal("alice", hit.ctx.mcp_oauth2.subject)
    assert.equal(1, counts.mcp_oauth2_decision_free, "the decision read at new()")
    r.ctx, hit.ctx = nil, nil
    collectgarbage()
    collectgarbage()
    assert.equal(3, counts.mcp_oauth2_decision_free, "every decision freed with its request")
    assert.equal(counts.mcp_oauth2_pending_free, 1)
  end)

  it("AS failures are 503 and are not kept in the shared dict", function()
    local shm = fresh_shm("fail")
    local auth, _, calls = handler({ shm = shm })
    local r = mock.step(access(auth, "Bearer tok-f"))
    mock.step(r, nil, "connect", "refused")
    assert.equal(503, r.status)
    assert.is_nil(r.resp_headers["WWW-Authenticate"])
    for k in pairs(ngx.shared[shm].data) do
      assert.matches("^flight:", k, "only the flight result, never an L2 entry")
    end
    r = mock.step(access(auth, "Bearer tok-f"))
    assert.equal(2, #calls, "not cached in the worker either")
  end)

  it("within a worker, a second request for the token waits for the first (one AS call)", function()
    local auth, counts, calls = handler()
    local a = mock.step(access(auth, "Bearer tok-2"))
    local b = mock.step(access(auth, "Bearer tok-2"))
    assert.equal(1, #calls, "the follower does not call the AS")
    assert.is_not_nil(b.waiting.sema, "the follower waits on a semaphore")
    mock.step(a, 200, "application/json", active({ sub = "bob" }))
    assert.is_true(a.done)
    mock.settle({ b })
    assert.is_true(b.done)
    assert.is_true(b.result[1])
    assert.equal("bob", b.headers["x-user-id"])
    assert.equal(1, #calls)
    assert.equal(1, auth.counts.worker_waits)
    assert.equal(2, counts.mcp_oauth2_validator_begin, "begin once per request, also when waiting")
    assert.equal(1, counts.mcp_oauth2_pending_continue)
  end)

  it("a leader that fails with an error releases its followers at once (500 and 503)", function()
    local lib = counting_library()
    local n = 0
    local auth = assert(mcp.new(conf(), { library = lib, shm = false, http = function()
      n = n + 1
      coroutine.yield({ http = true })
      error("transport exploded")
    end }))
    local a = mock.step(access(auth, "Bearer tok-3"))
    local b = mock.step(access(auth, "Bearer tok-3"))
    mock.step(a)
    assert.equal(500, a.status)
    mock.settle({ b })
    assert.is_true(b.done)
    assert.equal(503, b.status)
    assert.equal(1, n)
  end)

  it("across workers: one AS call, the other worker replays the shared answer", function()
    local shm = fresh_shm("cross")
    local w1, c1, calls1 = handler({ shm = shm })
    local w2, c2, calls2 = handler({ shm = shm })
    local a = mock.step(access(w1, "Bearer tok-4"))
    local b = mock.step(access(w2, "Bearer tok-4"))
    assert.is_not_nil(b.waiting.sleep, "the other worker polls the shared dict")
    mock.step(a, 200, "application/json", active())
    mock.settle({ b })
    assert.is_true(b.done)
    assert.equal("alice", b.headers["x-user-id"])
    assert.equal(1, #calls1)
    assert.equal(0, #calls2)
    assert.equal(1, w2.counts.shm_waits)
    -- A third request in worker 2 replays from the shared dict without waiting.
    local c = mock.step(access(w2, "Bearer tok-4"))
    assert.is_true(c.done)
    assert.equal(1, c1.mcp_oauth2_validator_begin)
    assert.equal(2, c2.mcp_oauth2_validator_begin)
  end)

  it("a replay never outlives the first answer (issue 13, item 5)", function()
    -- cache_ttl_max 10 s, a token valid for an hour. Worker 1 introspects at t0 and stores
    -- the answer for 10 s; worker 2 replays it at t0 + 9.5 s. At t0 + 10.5 s worker 2 must
    -- ask again: its copy expires with the first answer, not 10 s after the replay.
    local shm = fresh_shm("replay")
    local w1, _, calls1 = handler({ shm = shm }, { cache_ttl_max = 10 })
    local w2, _, calls2 = handler({ shm = shm }, { cache_ttl_max = 10 })
    local a = mock.step(access(w1, "Bearer tok-5"))
    mock.step(a, 200, "application/json", active())
    assert.is_true(a.done)
    local key = next(ngx.shared[shm].data, nil)
    while key and key:find(":", 1, true) do key = next(ngx.shared[shm].data, key) end
    assert.is_not_nil(key, "an L2 entry")
    assert.near(10, ngx.shared[shm]:ttl(key), 0.01)

    mock.advance(9.5)
    local b = mock.step(access(w2, "Bearer tok-5"))
    assert.is_true(b.done)
    assert.is_true(b.result[1])
    assert.equal(0, #calls2, "replayed from the shared dict")

    mock.advance(1)
    local c = mock.step(access(w2, "Bearer tok-5"))
    assert.is_not_nil(c.waiting and c.waiting.http, "worker 2 asks the AS again")
    assert.equal(1, #calls2)
    mock.step(c, 200, "application/json", active())
    assert.is_true(c.done)
    assert.equal(1, #calls1)
  end)

  it("reads the JSON-RPC body only when the policy does (method_scopes)", function()
    local auth, _, calls = handler(nil, { method_scopes = { ["tools/call"] = { "mcp:admin" } } })
    local r = mock.request(function() return auth:access() end,
      { request_method = "POST", http_authorization = "Bearer tok-6" })
    r.body = '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}}'
    mock.step(r)
    mock.step(r, 200, "application/json", active({ scope = "mcp:read" }))
    assert.equal(403, r.status)
    assert.matches('error="insufficient_scope"', r.resp_headers["WWW-Authenticate"])
    assert.equal(1, #calls)
  end)

  it("a path that is not UTF-8 is still decided (401 without a token)", function()
    local auth, counts = handler()
    local r = mock.step(mock.request(function() return auth:access() end, { uri = "/mcp/\255" }))
    assert.equal(401, r.status)
    assert.equal(2, counts.mcp_oauth2_validator_begin, "refused as an argument, then decided")
  end)
end)

describe("auth:decide() / refuse() / evict()", function()
  it("returns an allowed decision with the identity, and refusals from the core", function()
    local auth = handler(nil, { consumer_claim = { "sub" } })
    local r = mock.step(mock.request(function()
      return auth:decide({ method = "GET", path = "/mcp", headers = { authorization = "Bearer tok-7" } })
    end))
    mock.step(r, 200, "application/json", active({ client_id = "app", scope = "a b" }))
    local d = r.result[1]
    assert.is_true(d.allowed)
    assert.equal("alice", d.identity.subject)
    assert.equal("alice", d.identity.consumer)
    assert.equal("app", d.identity.client_id)
    assert.same({ ["X-User-Id"] = "alice", ["X-Scope"] = "a b" }, d.set_headers)
    assert.same({ "Authorization", "X-User-Id", "X-Scope" }, d.remove_headers)
    local refused = auth:refuse(d, "consumer_not_found")
    assert.is_false(refused.allowed)
    assert.equal(403, refused.status)
    assert.equal("consumer_not_found", refused.reason)
    assert.equal("forbidden", cjson.decode(refused.body).error)
    assert.is_true(d.native[0] == nil, "refuse released the decision")
  end)

  it("evict forgets the token in this worker and in the shared dict", function()
    local shm = fresh_shm("evict")
    local auth, _, calls = handler({ shm = shm })
    local r = mock.step(access(auth, "Bearer tok-8"))
    mock.step(r, 200, "application/json", active())
    assert.is_true(auth:evict("tok-8"))
    local n = 0
    for k in pairs(ngx.shared[shm].data) do
      if not k:find(":", 1, true) then n = n + 1 end
    end
    assert.equal(0, n, "no L2 entry left")
    r = mock.step(access(auth, "Bearer tok-8"))
    assert.is_not_nil(r.waiting.http)
    assert.equal(2, #calls)
  end)
end)
