-- busted specs (run under LuaJIT: `luajit /usr/bin/busted`) for the native module seam:
-- configuration errors, decisions, pending/resume, and the Kong schema.
local native = require("mcp_oauth2")
local cjson = require("cjson")

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

local function v_bad_peer_check()
  local v = assert(native.new(conf({ trusted_proxies = { "10.0.0.0/8" } })))
  return v:check("GET", "/mcp", nil, "not-an-ip")
end

local PRM = "https://mcp.example.com/mcp/.well-known/oauth-protected-resource"

local function active(claims)
  local c = { active = true, aud = "https://mcp.example.com/mcp", exp = os.time() + 300 }
  for k, v in pairs(claims or {}) do c[k] = v end
  return cjson.encode(c)
end

describe("mcp_oauth2.new", function()
  it("builds from a table or JSON text", function()
    assert.is_userdata(native.new(conf()))
    assert.is_userdata(native.new(cjson.encode(conf())))
  end)

  it("accepts empty tables for maps and lists", function()
    local v, err = native.new(conf({ args = {}, headers = {}, scopes_supported = {}, scopes_required = {},
      method_scopes = {}, claim_to_header = {}, trusted_proxies = {} }))
    assert.is_nil(err)
    assert.is_userdata(v)
  end)

  it("treats cjson.null / ngx.null as unset", function()
    local v, err = native.new(conf({ metadata_endpoint = cjson.null, client_alg = cjson.null }))
    assert.is_nil(err)
    assert.is_userdata(v)
  end)

  it("returns nil and an error naming the field path", function()
    local v, err = native.new(conf({ resource = 42 }))
    assert.is_nil(v)
    assert.matches("^resource: ", err)
    v, err = native.new(conf({ claim_to_header = { { claim = "sub", header = "Bad Header" } } }))
    assert.is_nil(v)
    assert.matches("^claim_to_header%[0%]%.header: ", err)
    v, err = native.new(conf({ timout = 5 }))
    assert.is_nil(v)
    assert.matches("timout", err)
    v, err = native.new(conf({ args = { "a", x = "b" } }))
    assert.is_nil(v)
    assert.matches("^args: ", err)
    v, err = native.new(conf({ claim_to_header = { { claim = print, header = "X" } } }))
    assert.is_nil(v)
    assert.equal("claim_to_header[0].claim: unsupported value of type function", err)
    v, err = native.new("{ not json")
    assert.is_nil(v)
    assert.matches("invalid JSON", err)
    v, err = native.new(42)
    assert.is_nil(v)
    assert.matches("table or a JSON string", err)
  end)

  it("never echoes a secret in errors", function()
    local _, err = native.new(conf({ client_secret = { "sup3r-secret" } }))
    assert.matches("^client_secret: ", err)
    assert.is_nil(err:find("sup3r", 1, true))
  end)
end)

describe("validator:begin", function()
  local v = assert(native.new(conf({ scopes_supported = { "mcp:read" } })))

  it("answers 401 with the challenge when there is no token", function()
    local d = v:begin({ method = "POST", path = "/mcp" })
    assert.is_false(d.forward)
    assert.equal(401, d.status)
    assert.equal('Bearer resource_metadata="' .. PRM .. '", scope="mcp:read"', d.headers["WWW-Authenticate"])
    assert.equal("no_credentials", d.reason)
    assert.same({ error = "unauthorized", error_description = "A bearer token is required" }, cjson.decode(d.body))
  end)

  it("serves PRM at both paths", function()
    for _, p in ipairs({ "/mcp/.well-known/oauth-protected-resource", "/.well-known/oauth-protected-resource/mcp" }) do
      local d = v:begin({ method = "GET", path = p })
      assert.equal(200, d.status)
      assert.equal("https://mcp.example.com/mcp", cjson.decode(d.body).resource)
    end
  end)

  it("rejects two Authorization values and over-long tokens without the AS", function()
    local d = v:begin({ path = "/mcp", headers = { authorization = { "Bearer a", "Bearer b" } } })
    assert.equal(400, d.status)
    d = v:begin({ path = "/mcp", headers = { Authorization = "Bearer " .. string.rep("a", 20 * 1024) } })
    assert.equal(401, d.status)
    assert.equal("token_too_long", d.reason)
  end)

  it("returns nil, err for a malformed request table", function()
    local d, err = v:begin({ method = "GET" })
    assert.is_nil(d)
    assert.equal("path: required", err)
    d, err = v:begin({ path = "/mcp", peer_addr = "not-an-ip" })
    assert.is_nil(d)
    assert.matches("peer_addr", err)
  end)
end)

describe("pending:resume", function()
  it("asks for introspection, then forwards with mapped headers", function()
    local v = assert(native.new(conf()))
    local p = v:begin({ method = "GET", path = "/mcp", headers = { authorization = "Bearer tok-1" } })
    assert.is_userdata(p)
    local key = p:cache_key()
    assert.matches("^%x+$", key)
    assert.equal(64, #key)
    local req = p:request()
    assert.equal("POST", req.method)
    assert.equal("https://as.example.com/introspect", req.url)
    assert.equal("token=tok-1&token_type_hint=access_token", req.body)
    assert.equal("application/x-www-form-urlencoded", req.headers["Content-Type"])
    assert.matches("^Basic ", req.headers.Authorization)
    assert.equal(10000, req.timeout)

    local d = p:resume(200, { ["Content-Type"] = "application/json" }, active({ sub = "alice", client_id = "app" }))
    assert.is_true(d.forward)
    assert.same({ "Authorization", "X-User-Id" }, d.remove_headers)
    assert.same({ ["X-User-Id"] = "alice" }, d.set_headers)
    assert.equal("alice", d.identity.subject)
    assert.equal("app", d.identity.client_id)
    assert.is_true(d.shared_ttl > 290 and d.shared_ttl <= 300)

    -- Now cached in this validator: the fast path forwards without a pending step.
    local ok, valid_until, value = v:check("GET", "/mcp", "Bearer tok-1")
    assert.is_true(ok)
    assert.is_true(valid_until > os.time())
    assert.same({ "X-User-Id" }, v:header_names())
    assert.equal("alice", value)

    local again, err = p:resume(200, {}, "{}")
    assert.is_nil(again)
    assert.equal("the request was already resumed", err)

    assert.is_true(v:evict("tok-1"))
    local nothing, pending = v:check("GET", "/mcp", "Bearer tok-1")
    assert.is_nil(nothing)
    assert.is_userdata(pending)
  end)

  it("check() returns one value per claim header in order, false for an absent claim", function()
    local v = assert(native.new(conf({ claim_to_header = {
      { claim = "sub", header = "X-User-Id" },
      { claim = "org", header = "X-Org" },
      { claim = "client_id", header = "X-Client-Id" },
    } })))
    assert.same({ "X-User-Id", "X-Org", "X-Client-Id" }, v:header_names())
    assert.same({ "Authorization", "X-User-Id", "X-Org", "X-Client-Id" }, v:remove_headers())
    local _, p = v:check("GET", "/mcp", "Bearer tok-2")
    p:resume(200, { ["Content-Type"] = "application/json" }, active({ sub = "bob", client_id = "app" }))
    local ok, _, a, b, c = v:check("GET", "/mcp", "Bearer tok-2")
    assert.is_true(ok)
    assert.equal("bob", a)
    assert.equal(false, b)
    assert.equal("app", c)
  end)

  it("maps inactive to 401 (cached negatively) and AS failures to 503 (never cached)", function()
    local v = assert(native.new(conf()))
    local d = v:begin({ path = "/mcp", headers = { authorization = "Bearer t" } })
      :resume(200, { ["Content-Type"] = "application/json" }, '{"active":false}')
    assert.equal(401, d.status)
    assert.equal("token_inactive", d.reason)
    assert.equal(5, d.shared_ttl)

    for _, args in ipairs({
      { 500, { ["Content-Type"] = "application/json" }, '{"active":true}' },
      { 200, { ["Content-Type"] = "text/html" }, "<html>" },
      { nil, "timeout", "slow" },
      { nil, "connect", "refused" },
    }) do
      local p = v:begin({ path = "/mcp", headers = { authorization = "Bearer other" } })
      local d2 = p:resume(args[1], args[2], args[3])
      assert.equal(503, d2.status)
      assert.is_nil(d2.headers["WWW-Authenticate"])
      assert.equal(0, d2.shared_ttl)
    end
  end)

  it("rejects the wrong audience", function()
    local v = assert(native.new(conf()))
    local d = v:begin({ path = "/mcp", headers = { authorization = "Bearer t" } })
      :resume(200, { ["Content-Type"] = "application/json" }, active({ aud = "https://other.example" }))
    assert.equal(401, d.status)
    assert.equal("audience_mismatch", d.reason)
  end)
end)

describe("validator:check (the hot path)", function()
  it("believes X-Forwarded-* only from trusted proxies", function()
    local v = assert(native.new(conf({ trusted_proxies = { "10.0.0.0/8" } })))
    local ok, d = v:check("GET", "/mcp", nil, "10.1.2.3", nil, nil, nil, "https", "public.example", "8443", "/api")
    assert.is_false(ok)
    assert.equal('Bearer resource_metadata="https://public.example:8443/api/mcp/.well-known/oauth-protected-resource"',
      d.headers["WWW-Authenticate"])
    ok, d = v:check("GET", "/mcp", nil, "192.0.2.1", nil, nil, nil, "https", "evil.example", nil, nil)
    assert.is_false(ok)
    assert.equal('Bearer resource_metadata="' .. PRM .. '"', d.headers["WWW-Authenticate"])
  end)

  it("enforces allowed_origins", function()
    local v = assert(native.new(conf({ allowed_origins = { "https://app.example" } })))
    local ok, d = v:check("POST", "/mcp", "Bearer t", nil, "https://evil.example")
    assert.is_false(ok)
    assert.equal(403, d.status)
    ok, d = v:check("OPTIONS", "/mcp", nil, nil, "https://app.example", "POST")
    assert.is_false(ok)
    assert.equal(204, d.status)
    assert.equal("https://app.example", d.headers["Access-Control-Allow-Origin"])
  end)

  it("validates requests whose path is not UTF-8 (never an error, never the metadata)", function()
    local v = assert(native.new(conf()))
    local ok, d = v:check("GET", "/mcp\255", nil)
    assert.is_false(ok)
    assert.equal(401, d.status)
    d = v:begin({ path = "/mcp/.well-known/oauth-protected-resource\255" })
    assert.equal(401, d.status)
  end)

  it("returns nil, nil, err for a bad peer address", function()
    local a, b, err = v_bad_peer_check()
    assert.is_nil(a)
    assert.is_nil(b)
    assert.matches("peer_addr", err)
  end)
end)

describe("the FFI fast path", function()
  local ffi = require("ffi")
  pcall(ffi.cdef, [[
typedef struct { const unsigned char *ptr; size_t len; } mcp_oauth2_lua_str;
typedef int (*mcp_oauth2_lua_check_fn)(const void *handle,
    const char *method, size_t method_len, const char *path, size_t path_len,
    const char *authz, size_t authz_len, mcp_oauth2_lua_str *values, size_t n_values,
    double *valid_until);
]])
  local check = ffi.cast("mcp_oauth2_lua_check_fn", native.ffi_check)

  it("forwards cache hits with values in header order, and defers everything else", function()
    local v = assert(native.new(conf({ claim_to_header = {
      { claim = "sub", header = "X-User-Id" }, { claim = "org", header = "X-Org" } } })))
    local h = ffi.cast("const void *", v:ffi_handle())
    local values = ffi.new("mcp_oauth2_lua_str[2]")
    local vu = ffi.new("double[1]")
    local authz = "Bearer ffi-token"
    -- Not cached yet: the general path must handle it.
    assert.equal(0, check(h, "GET", 3, "/mcp", 4, authz, #authz, values, 2, vu))
    v:begin({ path = "/mcp", headers = { authorization = authz } })
      :resume(200, { ["Content-Type"] = "application/json" }, active({ sub = "carol" }))
    assert.equal(1, check(h, "GET", 3, "/mcp", 4, authz, #authz, values, 2, vu))
    assert.equal("carol", ffi.string(values[0].ptr, values[0].len))
    assert.is_true(values[1].ptr == nil)
    assert.is_true(vu[0] > os.time())
    -- No token, the metadata path, too few value slots: not a forward here.
    assert.equal(0, check(h, "GET", 3, "/mcp", 4, nil, 0, values, 2, vu))
    local prm = "/mcp/.well-known/oauth-protected-resource"
    assert.equal(0, check(h, "GET", 3, prm, #prm, authz, #authz, values, 2, vu))
    assert.equal(0, check(h, "GET", 3, "/mcp", 4, authz, #authz, values, 1, vu))
    assert.equal(0, check(nil, "GET", 3, "/mcp", 4, authz, #authz, values, 2, vu))
  end)
end)

describe("Kong schema", function()
  -- Field names and defaults of behaviour.md §1 (Kong's ai-mcp-oauth2).
  local expected_defaults = {
    resource = "REQUIRED", authorization_servers = "REQUIRED", metadata_endpoint = false,
    scopes_supported = false, insecure_relaxed_audience_validation = "FALSE",
    max_request_body_size = 1048576, introspection_endpoint = false, mtls_introspection_endpoint = false,
    cache_introspection = true, introspection_format = false, args = false, headers = false,
    jwks_endpoint = false, jwks_cache_ttl = 3600, jwt_claims_leeway = 0,
    metadata_discovery_endpoint = false, metadata_discovery_retry = 3, metadata_cache_ttl = 3600,
    client_id = false, client_secret = false, client_auth = false, client_alg = false, client_jwk = false,
    tls_client_auth_cert = false, tls_client_auth_key = false, tls_client_auth_ssl_verify = true,
    ssl_verify = true, timeout = 10000, keepalive = true, http_version = 1.1,
    http_proxy = false, http_proxy_authorization = false, https_proxy = false,
    https_proxy_authorization = false, no_proxy = false,
    claim_to_header = false, upstream_headers = false, passthrough_credentials = "FALSE",
    consumer_claim = false, consumer_by = { "custom_id", "username" }, consumer_optional = "FALSE",
    consumer_groups_claim = false, consumer_groups_optional = "FALSE", credential_claim = { "sub" },
    token_exchange = false,
    scopes_required = false, method_scopes = false, audiences = false, audiences_denied = { "account" },
    access_token_type = "any", algorithms = false, cache_max_entries = 10000, cache_ttl_max = 3600,
    cache_ttl_negative = 5, trusted_proxies = false, issuers = false, scope_implies = false,
    allowed_origins = false,
  }
  _G.ngx = _G.ngx or { null = cjson.null }
  local standin = require("kong_standin")
  local schema = require("kong.plugins.mcp-oauth2.schema")
  local fields
  for _, f in ipairs(schema.fields) do
    if f.config then fields = f.config.fields end
  end

  it("has exactly behaviour.md §1's field names, with Kong's defaults", function()
    local seen = {}
    for _, f in ipairs(fields) do
      local name, def = next(f)
      seen[name] = true
      local want = expected_defaults[name]
      assert.is_not_nil(want, "unexpected field " .. name)
      if want == "REQUIRED" then
        assert.is_true(def.required, name)
      elseif want == "FALSE" or name == "insecure_relaxed_audience_validation" then
        assert.equal(false, def.default, name)
      elseif want == false then
        assert.is_nil(def.default, name .. " has no default")
      else
        assert.same(want, def.default, name)
      end
    end
    for name in pairs(expected_defaults) do
      assert.is_true(seen[name] == true, "missing field " .. name)
    end
    assert.equal("mcp-oauth2", schema.name)
  end)

  it("a Kong-processed config (defaults, nulls, __key__ stripped by the handler) builds", function()
    local c = standin.kong_config(conf({ args = {} }))
    assert.equal(cjson.null, c.metadata_endpoint)
    local copy = {}
    for k, v in pairs(c) do
      if k:sub(1, 2) ~= "__" then copy[k] = v end
    end
    local v, err = native.new(copy)
    assert.is_nil(err)
    assert.is_userdata(v)
    -- The bookkeeping keys themselves would be rejected: the handler must strip them.
    local _, err2 = native.new(c)
    assert.matches("__", err2)
  end)

  it("the handler has Kong's priority and an access phase", function()
    _G.kong = _G.kong
    package.loaded["resty.mcp_oauth2"] = package.loaded["resty.mcp_oauth2"] or { new = function() end }
    local h = require("kong.plugins.mcp-oauth2.handler")
    assert.equal(1015, h.PRIORITY)
    assert.is_function(h.access)
  end)
end)
