-- Kong plugin `mcp-oauth2`: the access phase of an MCP route, on top of resty.mcp_oauth2.
-- Same configuration as Kong's ai-mcp-oauth2 (schema.lua, which alone holds the defaults);
-- AS calls go through resty.http (Kong ships it) or the capture location, never blocking
-- the worker. Every response comes from the core, the consumer-mapping refusals included.

local mcp_oauth2 = require("resty.mcp_oauth2")

local kong = kong
local ngx = ngx
local pairs = pairs
local ipairs = ipairs
local type = type
local tostring = tostring
local setmetatable = setmetatable

-- Kong passes unset fields as ngx.null, which is truthy in Lua.
local function given(v)
  return v ~= nil and v ~= ngx.null
end

local MCPOAuth2Handler = {
  PRIORITY = 1015,
  VERSION = "0.2.0",
}

-- One resty.mcp_oauth2 object per plugin configuration. Kong hands the handler a new conf
-- table whenever the configuration changes, so a weak-keyed table rebuilds the validator
-- (and its caches) exactly then.
local validators = setmetatable({}, { __mode = "k" })

-- Kong adds bookkeeping keys (`__key__`, `__seq__`, `__plugin_id`) to the conf table; the
-- validator rejects unknown fields, so pass a copy without them.
local function plain_conf(conf)
  local copy = {}
  for k, v in pairs(conf) do
    if type(k) ~= "string" or k:sub(1, 2) ~= "__" then
      copy[k] = v
    end
  end
  return copy
end

local function get_auth(conf)
  local entry = validators[conf]
  if entry then
    return entry.auth, entry.err
  end
  -- The cross-worker cache needs `nginx_http_lua_shared_dict = mcp_oauth2 10m` in kong.conf;
  -- without it each worker introspects on its own.
  local shm = ngx.shared.mcp_oauth2 and "mcp_oauth2" or false
  local auth, err = mcp_oauth2.new(plain_conf(conf), { shm = shm })
  if not auth then
    -- The schema should have caught it; never let such a request through.
    kong.log.err("invalid configuration: ", err)
  end
  validators[conf] = { auth = auth, err = err }
  return auth, err
end

local function load_consumer(by, value)
  if by == "id" then
    return kong.client.load_consumer(value, false)
  end
  local dao = kong.db.consumers
  if by == "username" then
    return dao:select_by_username(value)
  end
  return dao:select_by_custom_id(value)
end

local function find_consumer(conf, value)
  for _, by in ipairs(conf.consumer_by) do
    local consumer, err = load_consumer(by, value)
    if err then
      return nil, err
    end
    if consumer then
      return consumer
    end
  end
  return nil
end

local function exit(r)
  return kong.response.exit(r.status, r.body, r.headers)
end

local function request_table(auth)
  local method = kong.request.get_method()
  local req = {
    method = method,
    path = kong.request.get_path(),
    headers = kong.request.get_headers(),
    peer_addr = kong.client.get_ip(),
  }
  if auth.reads_body and method == "POST" then
    req.body = kong.request.get_raw_body()
  end
  return req
end

function MCPOAuth2Handler:access(conf)
  local auth = get_auth(conf)
  if not auth then
    -- The core's 500; without a loadable library there is no core to ask.
    local r = mcp_oauth2.internal_error()
    return r and exit(r) or kong.response.exit(500)
  end
  local d = auth:decide(request_table(auth))
  if not d.allowed then
    return exit(d)
  end

  local identity = d.identity
  local consumer
  if given(conf.consumer_claim) and identity.consumer then
    local cerr
    consumer, cerr = find_consumer(conf, identity.consumer)
    if cerr then
      kong.log.err("consumer lookup failed: ", tostring(cerr))
      return exit(auth:refuse(d, "consumer_lookup_failed"))
    end
  end
  if given(conf.consumer_claim) and not consumer and not conf.consumer_optional then
    return exit(auth:refuse(d, "consumer_not_found"))
  end

  if given(conf.consumer_groups_claim) and identity.consumer_groups and kong.client.set_authenticated_consumer_groups then
    local groups = {}
    for _, name in ipairs(identity.consumer_groups) do
      local group = kong.db.consumer_groups and kong.db.consumer_groups:select_by_name(name)
      if group then
        groups[#groups + 1] = group
      end
    end
    if #groups == 0 and not conf.consumer_groups_optional then
      return exit(auth:refuse(d, "consumer_groups_not_found"))
    end
    kong.client.set_authenticated_consumer_groups(groups)
  end

  local credential = identity.credential and { id = identity.credential, consumer_id = consumer and consumer.id } or nil
  if consumer or credential then
    kong.client.authenticate(consumer, credential)
  end

  for _, name in ipairs(d.remove_headers) do
    kong.service.request.clear_header(name)
  end
  for name, value in pairs(d.set_headers) do
    kong.service.request.set_header(name, value)
  end
  auth:release(d)
end

return MCPOAuth2Handler
