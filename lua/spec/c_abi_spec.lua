-- busted specs (under LuaJIT: `luajit /usr/bin/busted`) of mcp_oauth2.so itself: the Lua
-- module (config_json) and the core's C ABI through the generated FFI declarations, as
-- resty.mcp_oauth2 uses them.
local ffi = require("ffi")
require("resty.mcp_oauth2.cdef")
local native = require("mcp_oauth2")
local cjson = require("cjson")
local C = ffi.load(assert(package.searchpath("mcp_oauth2", package.cpath)))
local OK = C.MCP_OAUTH2_RESULT_OK

local function conf(extra)
  local c = {
    resource = "https://mcp.example.com/mcp",
    authorization_servers = { "https://as.example.com" },
    introspection_endpoint = "https://as.example.com/introspect",
    client_id = "gateway",
    client_secret = "gateway-secret",
    claim_to_header = { { claim = "sub", header = "X-User-Id" } },
  }
  for k, v in pairs(extra or {}) do c[k] = v end
  return c
end

local PRM = "https://mcp.example.com/mcp/.well-known/oauth-protected-resource"
local NOW = 1700000000000

local function active(claims)
  local c = { active = true, aud = "https://mcp.example.com/mcp", exp = NOW / 1000 + 300 }
  for k, v in pairs(claims or {}) do c[k] = v end
  return cjson.encode(c)
end

local s1 = ffi.new("mcp_oauth2_str[1]")
local s2 = ffi.new("mcp_oauth2_str[1]")
local b1 = ffi.new("mcp_oauth2_bytes[1]")
local u16 = ffi.new("uint16_t[1]")
local u32 = ffi.new("uint32_t[1]")
local u64 = ffi.new("uint64_t[1]")
local sz = ffi.new("size_t[1]")
local flag = ffi.new("bool[1]")
local function str(s) return ffi.string(s[0].ptr, s[0].len) end

local function new_validator(c)
  local json = assert(native.config_json(c))
  local v = ffi.new("mcp_oauth2_validator*[1]")
  local e = ffi.new("mcp_oauth2_error*[1]")
  local rc = C.mcp_oauth2_validator_new(json, #json, v, e)
  if rc ~= OK then
    assert(e[0] ~= nil, "an error object")
    C.mcp_oauth2_error_message(e[0], s1)
    local msg = str(s1)
    C.mcp_oauth2_error_free(e)
    return nil, msg, rc
  end
  return ffi.gc(v, C.mcp_oauth2_validator_free)
end

-- begin with an Authorization value (or none); returns the decision box or the pending box.
local function begin(v, authz, path, verb)
  local r = ffi.new("mcp_oauth2_request")
  local method, p = verb or "POST", path or "/mcp"
  r.method, r.method_len = method, #method
  r.path, r.path_len = p, #p
  local h = ffi.new("mcp_oauth2_header[1]")
  if authz then
    h[0].name, h[0].name_len = "authorization", 13
    h[0].value, h[0].value_len = authz, #authz
    r.headers, r.headers_len = h, 1
  end
  local d = ffi.gc(ffi.new("mcp_oauth2_decision*[1]"), C.mcp_oauth2_decision_free)
  local p_ = ffi.gc(ffi.new("mcp_oauth2_pending*[1]"), C.mcp_oauth2_pending_free)
  assert.equal(OK, C.mcp_oauth2_validator_begin(v[0], r, NOW, d, p_))
  return d[0] ~= nil and d or nil, p_[0] ~= nil and p_ or nil
end

local function resume(p, status, ct, body, now)
  local h = ffi.new("mcp_oauth2_header[1]")
  h[0].name, h[0].name_len = "Content-Type", 12
  h[0].value, h[0].value_len = ct, #ct
  local d = ffi.gc(ffi.new("mcp_oauth2_decision*[1]"), C.mcp_oauth2_decision_free)
  assert.equal(OK, C.mcp_oauth2_pending_resume(p[0], now or NOW, status, h, 1, body, #body, d))
  return d
end

local function response(d)
  assert.equal(OK, C.mcp_oauth2_decision_status(d[0], u16))
  local headers = {}
  assert.equal(OK, C.mcp_oauth2_decision_response_header_count(d[0], sz))
  for i = 0, tonumber(sz[0]) - 1 do
    assert.equal(OK, C.mcp_oauth2_decision_response_header(d[0], i, s1, s2))
    headers[str(s1)] = str(s2)
  end
  assert.equal(OK, C.mcp_oauth2_decision_body(d[0], b1))
  return u16[0], headers, ffi.string(b1[0].ptr, b1[0].len)
end

describe("mcp_oauth2 (the Lua module)", function()
  it("has only version and config_json", function()
    local keys = {}
    for k in pairs(native) do keys[#keys + 1] = k end
    table.sort(keys)
    assert.same({ "config_json", "version" }, keys)
  end)

  it("config_json: empty tables follow the schema, nulls are unset, text passes through", function()
    local json = assert(native.config_json(conf({ args = {}, headers = {}, scopes_supported = {},
      method_scopes = {}, metadata_endpoint = cjson.null })))
    assert.is_true(json:find('"scopes_supported":[]', 1, true) ~= nil)
    assert.is_true(json:find('"args":{}', 1, true) ~= nil)
    assert.is_true(json:find('"metadata_endpoint":null', 1, true) ~= nil)
    assert.equal('{"resource":1}', native.config_json('{"resource":1}'))
  end)

  it("config_json: errors name the field path", function()
    local j, err = native.config_json(conf({ claim_to_header = { { claim = print, header = "X" } } }))
    assert.is_nil(j)
    assert.equal("claim_to_header[0].claim: unsupported value of type function", err)
    j, err = native.config_json(conf({ args = { "a", x = "b" } }))
    assert.is_nil(j)
    assert.matches("^args: ", err)
    j, err = native.config_json(42)
    assert.is_nil(j)
    assert.matches("table or a JSON string", err)
  end)
end)

describe("the C ABI through resty.mcp_oauth2.cdef", function()
  it("mcp_oauth2_validator_new names the field of a bad configuration", function()
    local v, err, rc = new_validator(conf({ resource = 42 }))
    assert.is_nil(v)
    assert.equal(C.MCP_OAUTH2_RESULT_INVALID_CONFIG, rc)
    assert.matches("^resource: ", err)
    v, err = new_validator(conf({ claim_to_header = { { claim = "sub", header = "Bad Header" } } }))
    assert.is_nil(v)
    assert.matches("^claim_to_header%[0%]%.header: ", err)
    v, err = new_validator(conf({ timout = 5 }))
    assert.is_nil(v)
    assert.matches("timout", err)
    _, err = new_validator(conf({ client_secret = { "sup3r-secret" } }))
    assert.matches("^client_secret: ", err)
    assert.is_nil(err:find("sup3r", 1, true), "never echoes a secret")
  end)

  it("reports the compiled policy: reads, body limit, claim and remove headers", function()
    local v = assert(new_validator(conf({ method_scopes = { ["tools/call"] = { "admin" } },
      allowed_origins = { "https://app.example" } })))
    assert.equal(OK, C.mcp_oauth2_validator_reads(v[0], u32))
    assert.equal(C.MCP_OAUTH2_READS_BODY + C.MCP_OAUTH2_READS_ORIGIN, u32[0])
    assert.equal(OK, C.mcp_oauth2_validator_max_request_body_size(v[0], u64))
    assert.equal(1048576, tonumber(u64[0]))
    assert.equal(OK, C.mcp_oauth2_validator_claim_header_count(v[0], sz))
    assert.equal(1, tonumber(sz[0]))
    assert.equal(OK, C.mcp_oauth2_validator_claim_header(v[0], 0, s1))
    assert.equal("X-User-Id", str(s1))
    assert.equal(OK, C.mcp_oauth2_validator_remove_header_count(v[0], sz))
    assert.equal(2, tonumber(sz[0]))
    assert.equal(C.MCP_OAUTH2_RESULT_OUT_OF_RANGE, C.mcp_oauth2_validator_remove_header(v[0], 2, s1))
    local plain = assert(new_validator(conf()))
    assert.equal(OK, C.mcp_oauth2_validator_reads(plain[0], u32))
    assert.equal(0, u32[0])
  end)

  it("answers 401 with the challenge when there is no token, and serves PRM", function()
    local v = assert(new_validator(conf({ scopes_supported = { "mcp:read" } })))
    local d = assert(begin(v, nil))
    local status, headers, body = response(d)
    assert.equal(401, status)
    assert.equal('Bearer resource_metadata="' .. PRM .. '", scope="mcp:read"', headers["WWW-Authenticate"])
    assert.same({ error = "unauthorized", error_description = "A bearer token is required" }, cjson.decode(body))
    assert.equal(OK, C.mcp_oauth2_decision_reason(d[0], s1))
    assert.equal("no_credentials", str(s1))
    d = assert(begin(v, nil, "/mcp/.well-known/oauth-protected-resource", "GET"))
    status, _, body = response(d)
    assert.equal(200, status)
    assert.equal("https://mcp.example.com/mcp", cjson.decode(body).resource)
  end)

  it("a miss leads with an introspection request; resume decides; the next request hits", function()
    local v = assert(new_validator(conf()))
    local d, p = begin(v, "Bearer tok-1")
    assert.is_nil(d)
    assert.equal(OK, C.mcp_oauth2_pending_get_state(p[0], u32))
    assert.equal(C.MCP_OAUTH2_PENDING_STATE_HTTP, u32[0])
    assert.equal(OK, C.mcp_oauth2_pending_purpose(p[0], u32))
    assert.equal(C.MCP_OAUTH2_PURPOSE_INTROSPECTION, u32[0])
    assert.equal(OK, C.mcp_oauth2_pending_method(p[0], s1))
    assert.equal("POST", str(s1))
    assert.equal(OK, C.mcp_oauth2_pending_url(p[0], s1))
    assert.equal("https://as.example.com/introspect", str(s1))
    assert.equal(OK, C.mcp_oauth2_pending_body(p[0], b1))
    assert.equal("token=tok-1&token_type_hint=access_token", ffi.string(b1[0].ptr, b1[0].len))
    assert.equal(OK, C.mcp_oauth2_pending_timeout_ms(p[0], u64))
    assert.equal(10000, tonumber(u64[0]))
    assert.equal(OK, C.mcp_oauth2_pending_cache_key(p[0], s1))
    local key = str(s1)
    assert.matches("^%x+$", key)
    assert.equal(64, #key)
    local key64 = ffi.new("uint8_t[64]")
    assert.equal(OK, C.mcp_oauth2_validator_token_cache_key(v[0], "tok-1", 5, key64))
    assert.equal(key, ffi.string(key64, 64), "the shared dict key of a token, for evict")

    d = resume(p, 200, "application/json", active({ sub = "alice" }))
    assert.equal(OK, C.mcp_oauth2_decision_allowed(d[0], flag))
    assert.is_true(flag[0])
    assert.equal(OK, C.mcp_oauth2_decision_claim_header_value(d[0], 0, s1))
    assert.equal("alice", str(s1))
    assert.equal(OK, C.mcp_oauth2_decision_cache_ttl_ms(d[0], u64))
    assert.equal(300000, tonumber(u64[0]))
    assert.equal(C.MCP_OAUTH2_RESULT_ALREADY_RESUMED, C.mcp_oauth2_pending_url(p[0], s1))

    local hit = assert(begin(v, "Bearer tok-1"))
    assert.equal(OK, C.mcp_oauth2_decision_allowed(hit[0], flag))
    assert.is_true(flag[0])
    assert.equal(OK, C.mcp_oauth2_validator_evict(v[0], "tok-1", 5, flag))
    assert.is_true(flag[0])
    local _, again = begin(v, "Bearer tok-1")
    assert.is_not_nil(again, "evicted: a miss again")
  end)

  it("a concurrent request for the same token waits (state WAIT) and continues with the answer", function()
    local v = assert(new_validator(conf()))
    local _, leader = begin(v, "Bearer tok-w")
    local _, follower = begin(v, "Bearer tok-w")
    assert.equal(OK, C.mcp_oauth2_pending_get_state(follower[0], u32))
    assert.equal(C.MCP_OAUTH2_PENDING_STATE_WAIT, u32[0])
    assert.equal(C.MCP_OAUTH2_RESULT_WRONG_STATE, C.mcp_oauth2_pending_url(follower[0], s1))
    assert.equal(OK, C.mcp_oauth2_pending_is_ready(follower[0], flag))
    assert.is_false(flag[0])
    assert.equal(OK, C.mcp_oauth2_pending_max_wait_ms(follower[0], u64))
    assert.is_true(tonumber(u64[0]) >= 10000)
    resume(leader, 200, "application/json", active({ sub = "bob" }))
    assert.equal(OK, C.mcp_oauth2_pending_is_ready(follower[0], flag))
    assert.is_true(flag[0])
    local d = ffi.gc(ffi.new("mcp_oauth2_decision*[1]"), C.mcp_oauth2_decision_free)
    assert.equal(OK, C.mcp_oauth2_pending_continue(follower[0], NOW, d))
    assert.equal(OK, C.mcp_oauth2_decision_claim_header_value(d[0], 0, s1))
    assert.equal("bob", str(s1))
  end)

  it("an abandoned leader releases its followers with a 503", function()
    local v = assert(new_validator(conf()))
    local _, leader = begin(v, "Bearer tok-a")
    local _, follower = begin(v, "Bearer tok-a")
    C.mcp_oauth2_pending_free(leader)
    assert.equal(OK, C.mcp_oauth2_pending_is_ready(follower[0], flag))
    assert.is_true(flag[0])
    local d = ffi.gc(ffi.new("mcp_oauth2_decision*[1]"), C.mcp_oauth2_decision_free)
    assert.equal(OK, C.mcp_oauth2_pending_continue(follower[0], NOW, d))
    assert.equal(503, (response(d)))
  end)

  it("refusals and the internal error come from the core", function()
    local v = assert(new_validator(conf()))
    local _, p = begin(v, "Bearer tok-r")
    local d = resume(p, 200, "application/json", active({ sub = "carol" }))
    local r = ffi.gc(ffi.new("mcp_oauth2_decision*[1]"), C.mcp_oauth2_decision_free)
    assert.equal(OK, C.mcp_oauth2_decision_refuse(d[0], C.MCP_OAUTH2_REFUSAL_CONSUMER_NOT_FOUND, r))
    local status, headers, body = response(r)
    assert.equal(403, status)
    assert.equal("application/json", headers["Content-Type"])
    assert.equal("forbidden", cjson.decode(body).error)
    assert.equal(OK, C.mcp_oauth2_decision_refuse(d[0], C.MCP_OAUTH2_REFUSAL_CONSUMER_LOOKUP_FAILED, r))
    assert.equal(503, (response(r)))
    assert.equal(C.MCP_OAUTH2_RESULT_INVALID_ARGUMENT, C.mcp_oauth2_decision_refuse(d[0], 99, r))
    assert.equal(OK, C.mcp_oauth2_decision_internal_error(r))
    status, _, body = response(r)
    assert.equal(500, status)
    assert.equal("server_error", cjson.decode(body).error)
  end)

  it("a path that is not UTF-8 is an invalid argument, refused before deciding", function()
    local v = assert(new_validator(conf()))
    local r = ffi.new("mcp_oauth2_request")
    local method, path = "GET", "/mcp\255"
    r.method, r.method_len = method, #method
    r.path, r.path_len = path, #path
    local d = ffi.new("mcp_oauth2_decision*[1]")
    local p = ffi.new("mcp_oauth2_pending*[1]")
    assert.equal(C.MCP_OAUTH2_RESULT_INVALID_ARGUMENT, C.mcp_oauth2_validator_begin(v[0], r, NOW, d, p))
    assert.is_true(d[0] == nil and p[0] == nil)
  end)
end)
