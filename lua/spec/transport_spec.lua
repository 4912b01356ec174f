-- busted specs of how resty.mcp_oauth2 makes the calls to the authorization server with
-- what each request carries (issue 10): the capture transport refuses what nginx's
-- proxy_pass cannot do (forward proxies, HTTP/1.0, mutual TLS without its location), routes
-- the mutual-TLS call to opts.mtls_location and checks that a location sends what it must;
-- opts.http functions and resty.http (lua-resty-http's API, faked: it is not packaged
-- here) get the route the core chose; introspection_format reaches ngx.ctx, $variables and
-- decide(). Against a mock `ngx` (spec/ngx_mock.lua); the e2e test runs real nginx.
local mock = require("spec.ngx_mock")
mock.install()
local cjson = require("cjson")
local mcp = require("resty.mcp_oauth2")

local LIB = assert(package.searchpath("mcp_oauth2", package.cpath))
local RESOURCE = "https://mcp.example.com/mcp"
local MTLS_URL = "https://mtls.as.example.com/introspect"

local function run(cmd)
  local r = os.execute(cmd .. " >/dev/null 2>&1")
  assert(r == 0 or r == true, cmd)
end

-- A client certificate and its key, made for this run (the core checks that they parse and
-- belong together).
local CERT, KEY
do
  local dir = io.popen("mktemp -d /tmp/mcp-oauth2-spec.XXXXXX"):read("*l")
  run("cd " .. dir .. " && openssl ecparam -name prime256v1 -genkey -noout -out gw.key")
  run("cd " .. dir .. " && openssl req -x509 -new -key gw.key -out gw.crt -days 2 -subj /CN=gateway.test")
  local function read(name)
    local f = assert(io.open(dir .. "/" .. name))
    local s = f:read("*a")
    f:close()
    return s
  end
  CERT, KEY = read("gw.crt"), read("gw.key")
  run("rm -rf " .. dir)
end

local function conf(extra)
  local c = {
    resource = RESOURCE,
    authorization_servers = { "https://as.example.com" },
    introspection_endpoint = "https://as.example.com/introspect",
    client_id = "gateway",
    client_secret = "gateway-secret",
  }
  for k, v in pairs(extra or {}) do c[k] = v end
  return c
end

-- tls_client_auth at MTLS_URL.
local function mtls(extra)
  local c = {
    client_secret = cjson.null,
    client_auth = "tls_client_auth",
    mtls_introspection_endpoint = MTLS_URL,
    tls_client_auth_cert = CERT,
    tls_client_auth_key = KEY,
  }
  for k, v in pairs(extra or {}) do c[k] = v end
  return conf(c)
end

local function active(claims)
  local c = { active = true, aud = RESOURCE, exp = math.floor(mock.now()) + 3600, sub = "alice" }
  for k, v in pairs(claims or {}) do c[k] = v end
  return cjson.encode(c)
end

local function access(auth, authz)
  return mock.request(function() return auth:access() end, { http_authorization = authz })
end

local function logged(text)
  for _, l in ipairs(mock.logs) do
    if l.msg:find(text, 1, true) then
      return l
    end
  end
end

describe("the capture transport refuses what nginx's proxy_pass cannot do", function()
  local refused = {
    { conf({ http_proxy = "http://proxy.example.com:3128" }), "^http_proxy: the capture transport" },
    { conf({ https_proxy = "http://proxy.example.com:3128", https_proxy_authorization = "Basic eDp5" }),
      "^https_proxy: the capture transport" },
    { conf({ http_version = 1.0 }), "^http_version: 1.0 is not available with the capture transport" },
    { conf({ http_version = "1.0" }), "^http_version: 1.0" },
    { mtls(), "^client_auth: tls_client_auth with the capture transport needs opts.mtls_location" },
    { mtls({ client_auth = "self_signed_tls_client_auth" }), "^client_auth: self_signed_tls_client_auth with" },
    { conf({ headers = { ["X-Api-Key"] = "k" } }), "^headers: " },
  }

  it("at new(), naming the field, and check() (the Kong schema's validator) says the same", function()
    for i, case in ipairs(refused) do
      local auth, err = mcp.new(case[1], { http = "capture", shm = false, library = LIB })
      assert.is_nil(auth, i)
      assert.matches(case[2], err)
      local ok, cerr = mcp.check(case[1], { http = "capture", library = LIB })
      assert.is_nil(ok, i)
      assert.equal(err, cerr)
      -- "auto" without resty.http is the capture transport.
      assert.is_nil(mcp.new(case[1], { shm = false, library = LIB }), i)
    end
    -- What capture can do: HTTP/1.1 either way of keep-alive; mutual TLS with its location.
    assert.is_table(mcp.new(conf({ http_version = 1.1, keepalive = false }), { http = "capture", shm = false }))
    assert.is_table(mcp.new(mtls(), { http = "capture", shm = false, mtls_location = "/_mcp_oauth2_mtls" }))
    assert.is_true(mcp.check(mtls(), { http = "capture", mtls_location = "/_mcp_oauth2_mtls" }))
    local _, err = mcp.new(mtls(), { http = "capture", shm = false, mtls_location = 42 })
    assert.matches("^opts.mtls_location: ", err)
  end)

  it("an opts.http function can do all of it: accepted", function()
    for i, case in ipairs(refused) do
      assert.is_table(mcp.new(case[1], { http = function() end, shm = false }), i)
      assert.is_true(mcp.check(case[1], { http = function() end }), i)
    end
  end)

  it("the Kong schema refuses them where the plugin would use capture (no resty.http)", function()
    require("kong_standin")
    local handler = require("kong.plugins.mcp-oauth2.handler")
    local saved = handler.opts.mtls_location
    for _, name in ipairs({ "mcp-oauth2", "ai-mcp-oauth2" }) do
      local record
      for _, f in ipairs(require("kong.plugins." .. name .. ".schema").fields) do
        if f.config then record = f.config end
      end
      local ok, err = record.custom_validator(conf({ https_proxy = "http://proxy.example.com:3128" }))
      assert.is_nil(ok)
      assert.matches("^https_proxy: the capture transport", err)
      handler.opts.mtls_location = nil
      ok, err = record.custom_validator(mtls())
      assert.is_nil(ok)
      assert.matches("needs opts.mtls_location", err)
      handler.opts.mtls_location = "/_mcp_oauth2_mtls"
      assert.is_true(record.custom_validator(mtls()))
    end
    handler.opts.mtls_location = saved
  end)
end)

describe("the capture transport: where each call goes and what the location sends", function()
  -- What each test location reads through subrequest_var (set_by_lua_block): the documented
  -- ones read every field; /_bare is a location written before accept and connection.
  local LOCATIONS = {
    ["/_as"] = { "url", "authorization", "content_type", "accept", "connection" },
    ["/_mtls"] = { "url", "authorization", "content_type", "accept", "connection" },
    ["/_bare"] = { "url", "authorization", "content_type" },
  }
  local seen
  before_each(function()
    seen = {}
    mock.logs = {}
    ngx.location.capture = function(uri, o)
      local saved = ngx.ctx
      ngx.ctx = o.ctx
      local sent = {}
      for _, field in ipairs(LOCATIONS[uri]) do
        sent[field] = mcp.subrequest_var(field)
      end
      ngx.ctx = saved
      seen[#seen + 1] = { location = uri, sent = sent, body = o.body }
      return { status = 200, header = { ["Content-Type"] = "application/json" }, body = active() }
    end
  end)

  local function new(c, opts)
    local o = { http = "capture", location = "/_as", shm = false, library = LIB }
    for k, v in pairs(opts or {}) do o[k] = v end
    return assert(mcp.new(c, o))
  end

  it("keepalive: Connection empty (the pool's), or close; Accept is the core's", function()
    local r = mock.step(access(new(conf()), "Bearer t1"))
    assert.is_true(r.done)
    assert.is_nil(r.status, "forwarded")
    assert.same({ url = "https://as.example.com/introspect", authorization = "Basic Z2F0ZXdheTpnYXRld2F5LXNlY3JldA==",
      content_type = "application/x-www-form-urlencoded", accept = "application/json", connection = "" }, seen[1].sent)
    r = mock.step(access(new(conf({ keepalive = false })), "Bearer t2"))
    assert.is_nil(r.status)
    assert.equal("close", seen[2].sent.connection)
  end)

  it("a location that does not send what it must: its answer is not used (503), and the log says why", function()
    local r = mock.step(access(new(conf({ keepalive = false }), { location = "/_bare" }), "Bearer t3"))
    assert.equal(503, r.status)
    assert.is_table(logged("/_bare does not set Connection from $mcp_oauth2_connection (keepalive: false)"))
    -- A signed answer asked for: the core's Accept must reach the AS.
    local signed = conf({ introspection_jwt_response = true })
    r = mock.step(access(new(signed, { location = "/_bare" }), "Bearer t4"))
    assert.equal(503, r.status)
    assert.is_table(logged("/_bare does not set Accept from $mcp_oauth2_accept (application/token-introspection+jwt)"))
    mock.step(access(new(signed), "Bearer t5"))
    assert.equal("application/token-introspection+jwt", seen[#seen].sent.accept)
    -- The same bare location is fine when neither is needed.
    r = mock.step(access(new(conf(), { location = "/_bare" }), "Bearer t6"))
    assert.is_nil(r.status)
  end)

  it("mutual TLS: the introspection call goes to opts.mtls_location, at mtls_introspection_endpoint", function()
    local auth = new(mtls(), { mtls_location = "/_mtls" })
    local r = mock.step(access(auth, "Bearer t7"))
    assert.is_nil(r.status)
    assert.equal(1, #seen)
    assert.equal("/_mtls", seen[1].location)
    assert.equal(MTLS_URL, seen[1].sent.url)
    assert.equal("", seen[1].sent.authorization)
    assert.equal("token=t7&token_type_hint=access_token&client_id=gateway", seen[1].body)
  end)
end)

describe("opts.http functions get the route and the TLS facts of each call", function()
  local function calls_of(c)
    local calls = {}
    local auth = assert(mcp.new(c, {
      shm = false,
      http = function(req)
        calls[#calls + 1] = req
        return 200, "application/json", active()
      end,
    }))
    local r = mock.step(access(auth, "Bearer tok"))
    assert.is_nil(r.status)
    return calls
  end

  it("defaults: verify, HTTP/1.1, keep-alive, direct, no client certificate", function()
    local r = calls_of(conf())[1]
    assert.is_true(r.verify_certificate)
    assert.equal(1.1, r.http_version)
    assert.is_true(r.keepalive)
    assert.is_nil(r.proxy)
    assert.is_nil(r.client_certificate)
  end)

  it("the proxy of the URL's scheme with its authorization, unless no_proxy names the host", function()
    local r = calls_of(conf({ https_proxy = "http://proxy.example.com:3128", https_proxy_authorization = "Basic eDp5",
      http_version = "1.0", keepalive = false, ssl_verify = false }))[1]
    assert.same({ url = "http://proxy.example.com:3128", authorization = "Basic eDp5" }, r.proxy)
    assert.equal(1.0, r.http_version)
    assert.is_false(r.keepalive)
    assert.is_false(r.verify_certificate)
    r = calls_of(conf({ introspection_endpoint = "http://as.example.com/introspect", http_proxy = "http://proxy.example.com" }))[1]
    assert.same({ url = "http://proxy.example.com" }, r.proxy)
    r = calls_of(conf({ https_proxy = "http://proxy.example.com:3128", no_proxy = ".example.com" }))[1]
    assert.is_nil(r.proxy)
  end)

  it("mutual TLS: the certificate and key to present, tls_client_auth_ssl_verify", function()
    local r = calls_of(mtls({ tls_client_auth_ssl_verify = false }))[1]
    assert.equal(MTLS_URL, r.url)
    assert.same({ cert_pem = CERT, key_pem = KEY }, r.client_certificate)
    assert.is_false(r.verify_certificate)
  end)
end)

describe("resty.http gets everything a call carries (lua-resty-http 0.17's API, faked)", function()
  local clients, parsed, fail_key
  before_each(function()
    clients, parsed, fail_key = {}, { cert = 0, key = 0 }, false
    package.loaded["resty.http"] = {
      new = function()
        local c = {}
        function c.set_timeout(self, ms) self.timeout = ms end
        function c.set_proxy_options(self, o) self.proxy_opts = o end
        function c.request_uri(self, url, params)
          self.url, self.params = url, params
          return { status = 200, headers = { ["Content-Type"] = "application/json" }, body = active() }
        end
        clients[#clients + 1] = c
        return c
      end,
    }
    package.loaded["ngx.ssl"] = {
      parse_pem_cert = function(pem)
        parsed.cert = parsed.cert + 1
        return { pem = pem }
      end,
      parse_pem_priv_key = function()
        parsed.key = parsed.key + 1
        if fail_key then
          return nil, "PEM_read_bio_PrivateKey() failed: " .. KEY
        end
        return { key = true }
      end,
    }
  end)
  after_each(function()
    package.loaded["resty.http"] = nil
    package.loaded["ngx.ssl"] = nil
  end)

  it("mutual TLS through a proxy: the certificate parsed once, per-call verify, version, keep-alive", function()
    local auth = assert(mcp.new(mtls({
      tls_client_auth_ssl_verify = false, http_version = 1.0, keepalive = false, cache_introspection = false,
      https_proxy = "http://proxy.example.com:3128", https_proxy_authorization = "Basic eDp5",
      no_proxy = "other.example.com",
    }), { http = "resty.http", shm = false }))
    assert.equal("resty.http", auth.mode)
    for i = 1, 2 do
      local r = mock.step(access(auth, "Bearer tok"))
      assert.is_nil(r.status, i)
    end
    assert.same({ cert = 1, key = 1 }, parsed, "parsed once, at new()")
    assert.equal(2, #clients)
    for _, c in ipairs(clients) do
      assert.equal(MTLS_URL, c.url)
      assert.equal(10000, c.timeout)
      -- Only the route the core chose (it applied no_proxy already).
      assert.same({ https_proxy = "http://proxy.example.com:3128", https_proxy_authorization = "Basic eDp5" }, c.proxy_opts)
      local p = c.params
      assert.equal(auth.client_cert.cert, p.ssl_client_cert)
      assert.equal(auth.client_cert.key, p.ssl_client_priv_key)
      assert.equal(CERT, p.ssl_client_cert.pem)
      assert.is_false(p.ssl_verify)
      assert.equal(1.0, p.version)
      assert.is_false(p.keepalive)
      assert.equal("close", p.headers.Connection)
      assert.equal("POST", p.method)
    end
  end)

  it("a plain call: verify, HTTP/1.1, keep-alive, no proxy, no certificate", function()
    local auth = assert(mcp.new(conf(), { http = "resty.http", shm = false }))
    mock.step(access(auth, "Bearer tok"))
    local c = clients[1]
    assert.is_nil(c.proxy_opts)
    assert.is_true(c.params.ssl_verify)
    assert.equal(1.1, c.params.version)
    assert.is_true(c.params.keepalive)
    assert.is_nil(c.params.headers.Connection)
    assert.is_nil(c.params.ssl_client_cert)
    assert.same({ cert = 0, key = 0 }, parsed)
  end)

  it("a key ngx.ssl cannot read: new() fails naming the field, never echoing the key", function()
    fail_key = true
    local auth, err = mcp.new(mtls(), { http = "resty.http", shm = false })
    assert.is_nil(auth)
    assert.equal("tls_client_auth_key: ngx.ssl.parse_pem_priv_key cannot read it", err)
    package.loaded["ngx.ssl"] = nil
    package.preload["ngx.ssl"] = function() error("no ngx.ssl here") end
    auth, err = mcp.new(mtls(), { http = "resty.http", shm = false })
    package.preload["ngx.ssl"] = nil
    assert.is_nil(auth)
    assert.matches("^tls_client_auth_cert: resty.http presents it only with ngx.ssl", err)
  end)
end)

-- Standard base64 of `s`, with padding (url: the URL-safe alphabet, unpadded).
local function b64(s, url)
  local chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local quad = {}
    for j = 3, 0, -1 do
      local k = math.floor(n / 64 ^ j) % 64
      quad[#quad + 1] = chars:sub(k + 1, k + 1)
    end
    if not b then quad[3], quad[4] = "=", "=" elseif not c then quad[4] = "=" end
    out[#out + 1] = table.concat(quad)
  end
  local text = table.concat(out)
  if url then
    text = text:gsub("%+", "-"):gsub("/", "_"):gsub("=", "")
  end
  return text
end

describe("introspection_format: the raw answer for what runs next", function()
  local function with_format(format, opts)
    local body = active({ scope = "mcp:read", client_id = "app" })
    local o = { shm = false, http = function() return 200, "application/json", body end }
    for k, v in pairs(opts or {}) do o[k] = v end
    return assert(mcp.new(conf({ introspection_format = format }), o)), body
  end

  it("ngx.ctx.mcp_oauth2.introspection, $mcp_oauth2_introspection and decide()'s identity, as encoded", function()
    for format, encode in pairs({
      string = function(s) return s end,
      base64 = function(s) return b64(s) end,
      base64url = function(s) return b64(s, true) end,
    }) do
      local auth, body = with_format(format, { variables = { "subject", "introspection" } })
      local r = mock.step(access(auth, "Bearer tok-" .. format))
      assert.is_nil(r.status)
      assert.equal(encode(body), r.ctx.mcp_oauth2.introspection, format)
      assert.equal(encode(body), r.var.mcp_oauth2_introspection, format)
      assert.equal("alice", r.var.mcp_oauth2_subject)
      local d
      mock.step(mock.request(function()
        d = auth:decide({ method = "GET", path = "/mcp", headers = { authorization = "Bearer tok-" .. format } })
      end))
      assert.equal(encode(body), d.identity.introspection, format)
      auth:release(d)
    end
  end)

  it("unset: nothing; the variable is refused without it, and `variables = true` never sets it", function()
    local auth = assert(mcp.new(conf(), { shm = false, variables = true,
      http = function() return 200, "application/json", active() end }))
    local r = mock.step(access(auth, "Bearer tok"))
    assert.is_nil(r.ctx.mcp_oauth2.introspection)
    assert.equal("alice", r.var.mcp_oauth2_subject)
    assert.is_nil(r.var.mcp_oauth2_introspection)
    local _, err = mcp.new(conf(), { shm = false, variables = { "introspection" }, http = function() end })
    assert.equal("opts.variables: introspection needs introspection_format in the configuration", err)
  end)
end)
