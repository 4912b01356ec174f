-- A minimal stand-in for the parts of Kong's PDK that lua/kong/plugins/mcp-oauth2 uses,
-- so the real handler.lua runs inside a real nginx. Kong itself cannot be installed on
-- this machine; this is NOT Kong, only the calls the handler makes:
--   kong.request.get_method/get_path/get_headers/get_raw_body, kong.client.get_ip,
--   kong.client.load_consumer/authenticate, kong.db.consumers:select_by_username/
--   select_by_custom_id, kong.service.request.set_header/clear_header,
--   kong.response.exit, kong.log.*
-- plus Kong's way of handing plugins their config: schema defaults filled in, unset
-- fields as ngx.null, bookkeeping keys (__key__, __seq__, __plugin_id) added.

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

local function find(field, value)
  for _, c in ipairs(consumers) do
    if c[field] == value then
      return c
    end
  end
  return nil
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

local kong = {
  request = {
    get_method = function() return ngx.req.get_method() end,
    get_path = function() return ngx.var.uri end,
    get_headers = function() return ngx.req.get_headers() end,
    get_raw_body = function()
      ngx.req.read_body()
      return ngx.req.get_body_data()
    end,
  },
  client = {
    get_ip = function() return ngx.var.remote_addr end,
    load_consumer = function(id) return find("id", id) end,
    -- Kong records the consumer/credential for later plugins; the stand-in shows what it
    -- was given to the upstream, so the test can check it.
    set_authenticated_consumer_groups = function(list)
      local names = {}
      for _, g in ipairs(list) do names[#names + 1] = g.name end
      ngx.req.set_header("X-Standin-Groups", table.concat(names, ","))
    end,
    authenticate = function(consumer, credential)
      ngx.req.set_header("X-Standin-Consumer", consumer and consumer.username or "")
      ngx.req.set_header("X-Standin-Credential", credential and credential.id or "")
    end,
  },
  db = {
    consumers = {
      select_by_username = function(_, v) return find("username", v) end,
      select_by_custom_id = function(_, v) return find("custom_id", v) end,
    },
    consumer_groups = {
      select_by_name = function(_, v)
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
}
rawset(_G, "kong", kong)

-- Two plugin configurations, chosen per request by `X-Test-Conf`, to prove the handler
-- rebuilds its validator when Kong hands it a different conf table.
local confs

local function get_confs()
  if confs then
    return confs
  end
  local port = ngx.var.server_port
  local as = package.loaded.test_as
  local common = {
    resource = "http://127.0.0.1:" .. port .. "/kong/mcp",
    authorization_servers = { as },
    introspection_endpoint = as .. "/token/introspection",
    client_id = "gateway",
    client_secret = "gateway-secret",
  }
  local a = {}
  for k, v in pairs(common) do a[k] = v end
  a.claim_to_header = { { claim = "client_id", header = "X-Client-Id" } }
  a.consumer_claim = { "client_id" }
  local b = {}
  for k, v in pairs(common) do b[k] = v end
  b.claim_to_header = { { claim = "client_id", header = "X-Kong-Client" } }
  -- c: consumer groups from the `groups` claim; d: from a claim naming no known group.
  local c = {}
  for k, v in pairs(b) do c[k] = v end
  c.consumer_groups_claim = { "groups" }
  local d = {}
  for k, v in pairs(b) do d[k] = v end
  d.consumer_groups_claim = { "sub" }
  confs = { a = M.kong_config(a), b = M.kong_config(b), c = M.kong_config(c), d = M.kong_config(d) }
  return confs
end

function M.access()
  local handler = require("kong.plugins.mcp-oauth2.handler")
  local which = ngx.var.http_x_test_conf
  if not get_confs()[which or ""] then
    which = "a"
  end
  ngx.req.clear_header("X-Test-Conf")
  return handler:access(get_confs()[which])
end

return M
