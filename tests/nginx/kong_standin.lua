-- A minimal stand-in for the parts of Kong's PDK that lua/kong/plugins/mcp-oauth2 uses,
-- so the real handler.lua and schema.lua run inside a real nginx. Kong itself cannot be
-- installed on this machine; this is NOT Kong, only the calls the plugin makes, shaped
-- like Kong 3.x:
--   kong.request.get_method/get_path/get_headers(max: default 100, at most 1000,
--   "truncated"), kong.client.get_ip/authenticate/set_authenticated_consumer_groups,
--   kong.cache:get(key, {ttl, neg_ttl}, loader, ...) (per-worker L1 over a shared dict L2,
--   like mlcache; loader calls counted), kong.db.consumers:select/select_by_username/
--   select_by_custom_id/cache_key (select raises on a non-UUID id, as a stand-in for
--   Kong's DAO refusing it), kong.db.consumer_groups:select_by_name,
--   kong.service.request.set_header/clear_header, kong.response.exit, kong.ctx.shared /
--   kong.ctx.plugin, kong.log.*
-- plus Kong's way of handing plugins their config (schema defaults filled in, unset
-- fields as ngx.null, bookkeeping keys __key__, __seq__, __plugin_id added), a "later
-- plugin" that reads kong.ctx.shared, and a tiny Admin API (POST /kong-admin/plugins) that
-- validates a plugin config with the plugin's schema, custom_validator included.

local cjson = require("cjson.safe")

local M = {}

-- schema.lua requires Kong's typedefs: the few it uses, as plain field definitions.
package.preload["kong.db.schema.typedefs"] = function()
  return {
    no_consumer = { type = "foreign", reference = "consumers", eq = ngx.null },
    protocols_http = { type = "set", elements = { type = "string" }, default = { "http", "https" } },
    url = { type = "string" },
  }
end

-- Kong fills defaults for every schema field and leaves the others null.
local function fill(fields, given)
  local out = {}
  for _, f in ipairs(fields) do
    local name, def = next(f)
    local v = given and given[name]
    if v == nil then
      if def.type == "record" then
        v = fill(def.fields, nil)
      elseif def.default ~= nil then
        v = def.default
      else
        v = ngx.null
      end
    elseif def.type == "record" and type(v) == "table" then
      v = fill(def.fields, v)
    end
    out[name] = v
  end
  return out
end

function M.kong_config(overrides)
  local schema = require("kong.plugins.mcp-oauth2.schema")
  for _, f in ipairs(schema.fields) do
    if f.config then
      local conf = fill(f.config.fields, overrides)
      conf.__key__ = "plugins:mcp-oauth2:test"
      conf.__seq__ = 1
      conf.__plugin_id = "00000000-0000-0000-0000-000000000001"
      return conf
    end
  end
end

local consumers = {
  { id = "3f4c1c8e-0000-0000-0000-00000000a001", username = "app-user", custom_id = "app" },
}

local groups = {
  { id = "9d1c0000-0000-0000-0000-00000000b001", name = "gold" },
}

local UUID = "^%x%x%x%x%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$"

-- Database look-ups, counted in the shared dict (all workers) by kind.
local function db_hit(kind)
  ngx.shared.kong_cache:incr("db:" .. kind, 1, 0)
end

local function find(field, value)
  db_hit(field)
  for _, c in ipairs(consumers) do
    if c[field] == value then
      return c
    end
  end
  return nil
end

-- kong.cache: mlcache's shape (L1 per worker, L2 shared dict, negative entries with
-- neg_ttl), values as JSON.
local l1 = {}
local NULL_MARK = "\0null"
local cache = {}
function cache.get(_, key, opts, cb, ...)
  opts = opts or {}
  local now = ngx.now()
  local e = l1[key]
  if e and e.exp > now then
    return e.value, nil, 1
  end
  local dict = ngx.shared.kong_cache
  local stored = dict:get("c:" .. key)
  local value
  if stored then
    if stored ~= NULL_MARK then value = cjson.decode(stored) end
    local ttl = dict:ttl("c:" .. key) or 1
    l1[key] = { value = value, exp = now + ttl }
    return value, nil, 2
  end
  local ok, v, err = pcall(cb, ...)
  if not ok then
    return nil, "callback threw an error: " .. tostring(v)
  end
  if err then
    return nil, err
  end
  local ttl = v == nil and (opts.neg_ttl or 300) or (opts.ttl or 300)
  dict:set("c:" .. key, v == nil and NULL_MARK or cjson.encode(v), ttl)
  l1[key] = { value = v, exp = now + ttl }
  return v, nil, 3
end

local function exit(status, body, headers)
  ngx.status = status
  for k, v in pairs(headers or {}) do
    ngx.header[k] = v
  end
  if type(body) == "table" then
    body = cjson.encode(body)
    ngx.header["Content-Type"] = "application/json"
  end
  if body and #body > 0 then
    ngx.print(body)
  else
    ngx.send_headers()
  end
  return ngx.exit(ngx.HTTP_OK)
end

local function ctx_table(name)
  local t = ngx.ctx[name]
  if not t then
    t = {}
    ngx.ctx[name] = t
  end
  return t
end

local kong = {
  request = {
    get_method = function() return ngx.req.get_method() end,
    get_path = function() return ngx.var.uri end,
    -- Kong 3.x: at most max_headers (default 100, between 1 and 1000), "truncated" past it.
    get_headers = function(max)
      if max == nil then
        max = 100
      elseif type(max) ~= "number" or max < 1 or max > 1000 then
        error("max_headers must be a number between 1 and 1000", 2)
      end
      return ngx.req.get_headers(max)
    end,
    get_raw_body = function()
      ngx.req.read_body()
      return ngx.req.get_body_data()
    end,
  },
  client = {
    get_ip = function() return ngx.var.remote_addr end,
    load_consumer = function(id)
      if not string.match(id, UUID) then error("consumer_id must be a valid uuid", 2) end
      return find("id", id)
    end,
    -- Kong records the consumer/credential for later plugins; the stand-in shows what it
    -- was given to the upstream, so the test can check it.
    set_authenticated_consumer_groups = function(list)
      local names = {}
      for _, g in ipairs(list) do names[#names + 1] = g.name end
      ngx.req.set_header("X-Standin-Groups", table.concat(names, ","))
    end,
    authenticate = function(consumer, credential)
      ngx.ctx.authenticated_consumer = consumer
      ngx.ctx.authenticated_credential = credential
      ngx.req.set_header("X-Standin-Consumer", consumer and consumer.username or "")
      ngx.req.set_header("X-Standin-Credential", credential and credential.id or "")
    end,
  },
  cache = cache,
  db = {
    consumers = {
      select = function(_, pk)
        if type(pk) ~= "table" or not string.match(tostring(pk.id), UUID) then
          error("schema violation (id: expected a valid UUID)", 2)
        end
        return find("id", pk.id)
      end,
      select_by_username = function(_, v) return find("username", v) end,
      select_by_custom_id = function(_, v) return find("custom_id", v) end,
      cache_key = function(_, id) return "consumers:" .. id .. "::::" end,
    },
    consumer_groups = {
      select_by_name = function(_, v)
        db_hit("group")
        for _, g in ipairs(groups) do
          if g.name == v then return g end
        end
        return nil
      end,
    },
  },
  service = {
    request = {
      set_header = function(n, v) ngx.req.set_header(n, v) end,
      clear_header = function(n) ngx.req.clear_header(n) end,
    },
  },
  response = { exit = exit },
  log = {
    err = function(...) ngx.log(ngx.ERR, ...) end,
    warn = function(...) ngx.log(ngx.WARN, ...) end,
    info = function(...) ngx.log(ngx.INFO, ...) end,
    debug = function(...) ngx.log(ngx.DEBUG, ...) end,
  },
  ctx = setmetatable({}, {
    __index = function(_, k)
      if k == "shared" then return ctx_table("kong_shared") end
      if k == "plugin" then return ctx_table("kong_plugin") end
    end,
  }),
  vault = {
    is_reference = function(v) return type(v) == "string" and v:sub(1, 9) == "{vault://" end,
  },
}
rawset(_G, "kong", kong)

-- Plugin configurations, chosen per request by `X-Test-Conf`: a new conf table proves the
-- handler rebuilds its validator; the others exercise consumer mapping, streams, token
-- exchange and origins.
local confs

local function get_confs()
  if confs then
    return confs
  end
  local port = package.loaded.test_port
  local as = package.loaded.test_as
  local common = {
    resource = "http://127.0.0.1:" .. port .. "/kong/mcp",
    authorization_servers = { as },
    introspection_endpoint = as .. "/token/introspection",
    client_id = "gateway",
    client_secret = "gateway-secret",
  }
  local function conf(extra)
    local c = {}
    for k, v in pairs(common) do c[k] = v end
    for k, v in pairs(extra) do c[k] = v end
    return M.kong_config(c)
  end
  -- The cluster-cache test's nodes (tests/nginx/cluster.conf.template): one conf on the
  -- shared Redis, with an ACL user name (Redis's `default`) and the password.
  local redis = package.loaded.test_redis
  if redis then
    confs = {
      kr = conf({
        resource = "http://mcp.cluster.test/kong/mcp",
        cluster_cache_strategy = "redis",
        cluster_cache_redis = { host = redis.host, port = redis.port, username = "default",
          password = redis.password, database = redis.database },
      }),
    }
    return confs
  end
  local as2 = package.loaded.test_as2
  confs = {
    a = conf({ claim_to_header = { { claim = "client_id", header = "X-Client-Id" } }, consumer_claim = { "client_id" } }),
    b = conf({ claim_to_header = { { claim = "client_id", header = "X-Kong-Client" } } }),
    -- c: consumer groups from the `groups` claim; d: from a claim naming no known group.
    c = conf({ claim_to_header = { { claim = "client_id", header = "X-Kong-Client" } }, consumer_groups_claim = { "groups" } }),
    d = conf({ claim_to_header = { { claim = "client_id", header = "X-Kong-Client" } }, consumer_groups_claim = { "sub" } }),
    -- Consumer by username, by id (a UUID claim), and by id with a value that is no UUID.
    u = conf({ consumer_claim = { "uname" }, consumer_by = { "username" } }),
    i = conf({ consumer_claim = { "consumer_uuid" }, consumer_by = { "id" } }),
    x = conf({ consumer_claim = { "client_id" }, consumer_by = { "id" } }),
    xo = conf({ consumer_claim = { "client_id" }, consumer_by = { "id" }, consumer_optional = true }),
    -- method_scopes (bodies), allowed_origins (all headers), claim headers' `_` twins.
    s = conf({ method_scopes = { ["tools/call"] = { "mcp:admin" } } }),
    o = conf({ allowed_origins = { "https://app.example.com" } }),
    h = conf({ claim_to_header = { { claim = "client_id", header = "X-Client-Id" } } }),
    -- Short-lived tokens from the second AS (streams end at exp).
    e = conf({
      authorization_servers = { as2 },
      introspection_endpoint = as2 .. "/token/introspection",
    }),
    -- Token exchange; later plugins read kong.ctx.shared.
    t = conf({
      passthrough_credentials = true,
      token_exchange = {
        enabled = true,
        token_endpoint = package.loaded.test_exchange_as .. "/token",
        client_auth = "client_secret_post",
        client_id = "exchanger",
        client_secret = "exchanger-secret",
        request = { audience = { "kong-upstream" } },
      },
    }),
    -- inherit (the gateway's own credentials), the actor token from the config, no cache.
    ti = conf({
      passthrough_credentials = true,
      token_exchange = {
        enabled = true,
        token_endpoint = package.loaded.test_exchange_as .. "/token",
        client_auth = "inherit",
        request = { actor_token_source = "config", actor_token = "cfg-actor" },
        cache = { enabled = false },
      },
    }),
    -- The token endpoint unreachable.
    td = conf({
      passthrough_credentials = true,
      token_exchange = { enabled = true, token_endpoint = "http://127.0.0.1:9/token", client_auth = "none" },
    }),
  }
  -- Issue 10: every client_auth value (the third AS has a gateway client per method; keys
  -- made by test-lua.sh), introspection_format for later plugins, a signed answer, and
  -- mutual TLS at the https AS through the capture transport's mutual-TLS locations.
  local as3, tls_as, keys = package.loaded.test_as3, package.loaded.test_tls_as, package.loaded.test_keys
  local function at_as3(extra)
    local c = { authorization_servers = { as3 }, introspection_endpoint = as3 .. "/token/introspection",
      client_id = ngx.null, client_secret = ngx.null }
    for k, v in pairs(extra) do c[k] = v end
    return conf(c)
  end
  local function read(path)
    local f = assert(io.open(path))
    local s = f:read("*a")
    f:close()
    return s
  end
  local pki = package.loaded.test_pki
  local function at_tls_as(extra)
    local c = { authorization_servers = { tls_as }, introspection_endpoint = "http://127.0.0.1:9/never-used",
      mtls_introspection_endpoint = tls_as .. "/token/introspection", client_secret = ngx.null }
    for k, v in pairs(extra) do c[k] = v end
    return conf(c)
  end
  confs.kbasic = at_as3({ client_id = "gateway", client_secret = "gateway-secret", client_auth = "client_secret_basic" })
  confs.kpost = at_as3({ client_id = "gateway-post", client_secret = "gateway-post-secret", client_auth = "client_secret_post" })
  confs.knone = at_as3({ client_id = "gw-none", client_auth = "none" })
  confs.khs256 = at_as3({ client_id = "gw-hs256", client_secret = keys.hs256, client_auth = "client_secret_jwt" })
  -- Kong's schema holds client_jwk as a string: the JWK's JSON text.
  confs.kes256 = at_as3({ client_id = "gw-es256", client_auth = "private_key_jwt", client_jwk = cjson.encode(keys.es256) })
  confs.kfmt = at_as3({ client_id = "gateway", client_secret = "gateway-secret", introspection_format = "base64" })
  confs.ksigned = at_as3({ client_id = "gw-signed", client_secret = keys.signed, introspection_jwt_response = true,
    introspection_format = "string" })
  confs.ktls = at_tls_as({ client_id = "gw-tls", client_auth = "tls_client_auth",
    tls_client_auth_cert = read(pki .. "client.crt"), tls_client_auth_key = read(pki .. "client.key") })
  confs.kself = at_tls_as({ client_id = "gw-self", client_auth = "self_signed_tls_client_auth",
    tls_client_auth_cert = read(pki .. "self.crt"), tls_client_auth_key = read(pki .. "self.key") })
  -- In capture mode the timers re-validate open responses through this loopback location.
  require("kong.plugins.mcp-oauth2.handler").opts.recheck_url =
    "http://127.0.0.1:" .. port .. "/_mcp_oauth2_recheck"
  return confs
end

local function current_conf()
  local which = ngx.var.http_x_test_conf
  if not get_confs()[which or ""] then
    which = package.loaded.test_redis and "kr" or "a"
  end
  return get_confs()[which], which
end

-- A plugin that runs after mcp-oauth2 (lower priority): what it reads from kong.ctx.shared
-- and from the authenticated consumer goes to the upstream for the test to check.
local function later_plugin()
  local shared = kong.ctx.shared.mcp_oauth2
  if shared then
    ngx.req.set_header("X-Later-Shared", cjson.encode(shared))
  end
  local consumer = ngx.ctx.authenticated_consumer
  if consumer then
    ngx.req.set_header("X-Later-Consumer-Id", consumer.id)
  end
end

-- The capture transport's mutual-TLS location per configuration: handler.opts is one table
-- for every configuration (on a real Kong, resty.http presents the certificate and none is
-- needed), so the stand-in names the location of the conf's certificate before the handler
-- builds its validator.
local MTLS_LOCATIONS = { kself = "/_mcp_oauth2_mtls_self" }
require("kong.plugins.mcp-oauth2.handler").opts.mtls_location = "/_mcp_oauth2_mtls"

function M.access()
  local name = ngx.var.http_x_plugin_name or "mcp-oauth2"
  local handler = require("kong.plugins." .. name .. ".handler")
  local conf, which = current_conf()
  handler.opts.mtls_location = MTLS_LOCATIONS[which] or "/_mcp_oauth2_mtls"
  ngx.req.clear_header("X-Test-Conf")
  ngx.ctx.standin_conf = conf
  ngx.ctx.standin_handler = handler
  -- This nginx refuses about 1000 header lines itself (its 494), so a test lowers the
  -- handler's limit to reach the handler's own "more than it reads" path.
  handler.MAX_HEADERS = tonumber(ngx.var.http_x_standin_max_headers) or 1000
  handler:access(conf)
  later_plugin()
end

function M.body_filter()
  local handler = ngx.ctx.standin_handler
  if handler then
    handler:body_filter(ngx.ctx.standin_conf)
  end
end

-- POST /kong-admin/plugins {name, config}: Kong's Admin API validating a plugin entity
-- (defaults filled, then the schema's checks; here only what schema.lua declares:
-- custom_validator and entity checks are Kong's, the rest the core's). 201 with the
-- stored config, or 400 shaped like Kong's schema-violation error.
function M.admin_plugins()
  ngx.req.read_body()
  local body = cjson.decode(ngx.req.get_body_data() or "")
  if type(body) ~= "table" or (body.name ~= "mcp-oauth2" and body.name ~= "ai-mcp-oauth2") then
    return exit(400, { message = "unknown plugin", name = "schema violation", code = 2 })
  end
  local schema = require("kong.plugins." .. body.name .. ".schema")
  local record
  for _, f in ipairs(schema.fields) do
    if f.config then record = f.config end
  end
  local filled = fill(record.fields, type(body.config) == "table" and body.config or {})
  local ok, err = record.custom_validator(filled)
  if not ok then
    return exit(400, {
      code = 2,
      name = "schema violation",
      message = "schema violation (config: " .. tostring(err) .. ")",
      fields = { config = err },
    })
  end
  return exit(201, { name = schema.name, config = filled })
end

-- GET /__kong_counts: database look-ups so far (all workers).
function M.counts()
  local dict = ngx.shared.kong_cache
  local out = {}
  for _, k in ipairs({ "id", "username", "custom_id", "group" }) do
    out[k] = dict:get("db:" .. k) or 0
  end
  ngx.header["Content-Type"] = "application/json"
  ngx.say(cjson.encode(out))
end

return M
