-- Kong plugin `mcp-oauth2` (also shipped as `ai-mcp-oauth2`): an MCP route's access phase
-- on top of resty.mcp_oauth2, and its body_filter phase, which ends streaming responses
-- when their token ends. Same configuration as Kong's ai-mcp-oauth2 (schema.lua, which
-- alone holds the defaults and checks every configuration with the core itself); AS calls
-- go through resty.http (Kong ships it) or the capture location, never blocking the
-- worker. Every response comes from the core, the consumer-mapping refusals included.
-- With `cluster_cache_strategy: redis` the validator shares answers and evictions with the
-- other nodes through Redis (resty.mcp_oauth2.cluster, with the resty.redis Kong ships).

local mcp_oauth2 = require("resty.mcp_oauth2")
local cjson = require("cjson.safe")

local ngx = ngx
local pairs = pairs
local ipairs = ipairs
local type = type
local pcall = pcall
local tostring = tostring
local setmetatable = setmetatable
local str_match = string.match

-- Kong passes unset fields as ngx.null, which is truthy in Lua.
local function given(v)
  return v ~= nil and v ~= ngx.null
end

local MCPOAuth2Handler = {
  PRIORITY = 1015,
  VERSION = "0.3.0",
}

-- Extra options for resty.mcp_oauth2.new (e.g. `recheck_url` where Kong has no resty.http,
-- `mtls_location` for the mutual-TLS methods with the capture transport); `shm` is chosen
-- below. The schema checks configurations with the same options.
MCPOAuth2Handler.opts = {}

-- How long kong.cache keeps a consumer (or consumer group) found by username / custom_id
-- (their keys are this plugin's own, which Kong does not invalidate on change), and how
-- long it remembers that none exists.
MCPOAuth2Handler.CONSUMER_TTL = 300
MCPOAuth2Handler.CONSUMER_NEG_TTL = 30

-- kong.request.get_headers reads at most this many headers (Kong's maximum); a request
-- with more is answered 400 by the core rather than decided on a truncated list.
MCPOAuth2Handler.MAX_HEADERS = 1000

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
MCPOAuth2Handler.plain_conf = plain_conf

local function get_auth(conf)
  local entry = validators[conf]
  if entry then
    return entry.auth, entry.err
  end
  -- The cross-worker cache needs `nginx_http_lua_shared_dict = mcp_oauth2 10m` in kong.conf;
  -- without it each worker introspects on its own.
  local opts = { shm = ngx.shared.mcp_oauth2 and "mcp_oauth2" or false }
  for k, v in pairs(MCPOAuth2Handler.opts) do
    opts[k] = v
  end
  local auth, err = mcp_oauth2.new(plain_conf(conf), opts)
  if not auth then
    -- The schema refuses such a configuration; never let a request through with one.
    kong.log.err("invalid configuration: ", err)
  end
  validators[conf] = { auth = auth, err = err }
  return auth, err
end

local UUID = "^%x%x%x%x%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$"

local function load_consumer(by, value)
  local consumers = kong.db.consumers
  if by == "id" then
    return consumers:select({ id = value })
  elseif by == "username" then
    return consumers:select_by_username(value)
  end
  return consumers:select_by_custom_id(value)
end

-- The consumer for a claim value, per consumer_by in order, through kong.cache (one
-- database look-up per value and TTL, found or not). `id` is tried only for a UUID: any
-- other value cannot be a consumer id, and Kong's DAO raises on it. Returns the consumer,
-- nil (none), or nil and an error (the look-up failed).
local function find_consumer(conf, value)
  for _, by in ipairs(conf.consumer_by) do
    if by ~= "id" or str_match(value, UUID) then
      local key, opts
      if by == "id" then
        -- Kong's own key for the consumer entity: Kong invalidates it when the consumer
        -- changes, so only the negative answer needs a TTL.
        key = kong.db.consumers:cache_key(value)
        opts = { neg_ttl = MCPOAuth2Handler.CONSUMER_NEG_TTL }
      else
        key = "mcp-oauth2:consumer:" .. by .. ":" .. value
        opts = { ttl = MCPOAuth2Handler.CONSUMER_TTL, neg_ttl = MCPOAuth2Handler.CONSUMER_NEG_TTL }
      end
      local ok, consumer, err = pcall(kong.cache.get, kong.cache, key, opts, load_consumer, by, value)
      if not ok then
        return nil, consumer
      end
      if err then
        return nil, err
      end
      if consumer then
        return consumer
      end
    end
  end
  return nil
end

local function load_group(name)
  return kong.db.consumer_groups:select_by_name(name)
end

-- The consumer groups of Kong named by the token (those that exist), through kong.cache.
-- Returns the list, or nil and an error.
local function find_groups(names)
  local groups = {}
  for _, name in ipairs(names) do
    local ok, group, err = pcall(kong.cache.get, kong.cache, "mcp-oauth2:consumer_group:" .. name,
      { ttl = MCPOAuth2Handler.CONSUMER_TTL, neg_ttl = MCPOAuth2Handler.CONSUMER_NEG_TTL }, load_group, name)
    if not ok then
      return nil, group
    end
    if err then
      return nil, err
    end
    if group then
      groups[#groups + 1] = group
    end
  end
  return groups
end

local function exit(r)
  return kong.response.exit(r.status, r.body, r.headers)
end

-- The request as the core sees it. Returns nil (with the headers read) when it has more
-- headers than can be read: then the core answers 400.
local function request_table(auth)
  local method = kong.request.get_method()
  local headers, err = kong.request.get_headers(MCPOAuth2Handler.MAX_HEADERS)
  local req = {
    method = method,
    path = kong.request.get_path(),
    headers = headers,
    peer_addr = kong.client.get_ip(),
  }
  if err == "truncated" then
    return nil, req
  end
  if auth.reads_body and method == "POST" then
    -- From memory or nginx's temporary file (kong.request.get_raw_body reads memory only).
    req.body = auth:request_body()
  end
  return req
end

-- Later plugins read the validated identity here (names in docs/openresty-and-kong.md).
local function share_identity(d)
  local id = d.identity
  local shared = {
    subject = id.subject,
    client_id = id.client_id,
    scope = id.scope,
    consumer = id.consumer,
    groups = id.consumer_groups,
    credential = id.credential,
    claims = id.claims_json and cjson.decode(id.claims_json) or nil,
    -- The raw introspection result, in introspection_format (only when it is set).
    introspection = id.introspection,
  }
  if d.upstream_authorization then
    shared.exchanged_token = str_match(d.upstream_authorization, "^[Bb]earer +(.*)$")
  end
  kong.ctx.shared.mcp_oauth2 = shared
end

function MCPOAuth2Handler:access(conf)
  local auth = get_auth(conf)
  if not auth then
    -- The core's 500; without a loadable library there is no core to ask.
    local r = mcp_oauth2.internal_error()
    return r and exit(r) or kong.response.exit(500)
  end
  local req, partial = request_table(auth)
  if not req then
    return exit(auth:bad_request_table(partial))
  end
  local d = auth:decide(req)
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
    if not consumer and not conf.consumer_optional then
      return exit(auth:refuse(d, "consumer_not_found"))
    end
  end

  if given(conf.consumer_groups_claim) and identity.consumer_groups
      and kong.client.set_authenticated_consumer_groups and kong.db.consumer_groups then
    local groups, gerr = find_groups(identity.consumer_groups)
    if not groups then
      kong.log.err("consumer group lookup failed: ", tostring(gerr))
      return exit(auth:refuse(d, "consumer_lookup_failed"))
    end
    if #groups == 0 and not conf.consumer_groups_optional then
      return exit(auth:refuse(d, "consumer_groups_not_found"))
    end
    if #groups > 0 then
      kong.client.set_authenticated_consumer_groups(groups)
    end
  end

  -- ACL, rate-limiting and logging plugins see the consumer and the credential.
  local credential = identity.credential and { id = identity.credential, consumer_id = consumer and consumer.id } or nil
  if consumer or credential then
    kong.client.authenticate(consumer, credential)
  end

  -- Kong's nginx passes header names with underscores (underscores_in_headers on): drop
  -- every header the decision flags, not only the exact names.
  for name in pairs(req.headers) do
    if auth:must_remove(d, name) then
      kong.service.request.clear_header(name)
    end
  end
  for _, name in ipairs(d.remove_headers) do
    kong.service.request.clear_header(name)
  end
  for name, value in pairs(d.set_headers) do
    kong.service.request.set_header(name, value)
  end
  if d.upstream_authorization then
    kong.service.request.set_header("Authorization", d.upstream_authorization)
  end
  share_identity(d)

  -- Watched by body_filter: the response ends when its token does.
  local authz = req.headers.authorization
  kong.ctx.plugin.mcp_oauth2_stream = auth:track(type(authz) == "string" and authz or nil, req.path,
    type(req.headers.origin) == "string" and req.headers.origin or nil, d.valid_until, d.recheck_at, ngx.now())
  auth:release(d)
end

-- Ends a streaming response (SSE) at the first chunk at or after its token's exp, or once
-- the token was evicted or found no longer valid when its cache entry aged out; later
-- chunks are dropped.
function MCPOAuth2Handler:body_filter(conf)
  local st = kong.ctx.plugin.mcp_oauth2_stream
  if st then
    local auth = get_auth(conf)
    if auth then
      auth:filter(st)
    end
  end
end

return MCPOAuth2Handler
