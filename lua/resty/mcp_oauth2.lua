-- resty.mcp_oauth2: OAuth 2 resource server for MCP servers behind OpenResty / nginx.
--
--   local auth = require("resty.mcp_oauth2").new(conf, opts)   -- module level or init_worker
--   access_by_lua_block { auth:access() }
--
-- The core decides through its C ABI (include/mcp_oauth2.h), called with the LuaJIT FFI
-- (declarations: resty.mcp_oauth2.cdef, generated from the header). This file performs every
-- authorization-server (AS) call through nginx (ngx.location.capture to an internal
-- location, or resty.http when installed), so a worker never blocks.
--
-- Single flight: within a worker the core answers a second request for a token whose
-- validation is in flight with a pending in state WAIT; it waits on an ngx.semaphore that
-- the leading request posts once its AS call is resumed (or failed, or abandoned). Across
-- workers a lua_shared_dict holds the AS answers (L2, replayed into the core with their
-- first fetch time) and a lock in the same dict lets one worker call the AS per key.
--
-- opts (all optional):
--   shm           name of the lua_shared_dict for L2 + locks (default "mcp_oauth2";
--                 false: no cross-worker cache and no cross-worker single flight)
--   http          "auto" (default: resty.http if require finds it, else capture),
--                 "capture", "resty.http", or function(req) -> status, content_type, body
--                 | nil, kind, message  (kind: connect/timeout/tls/body_too_large/other);
--                 req: method, url, headers, body, timeout (ms), purpose,
--                 verify_certificate, http_version (1.0/1.1), keepalive, proxy ({ url,
--                 authorization } or nil), client_certificate ({ cert_pem, key_pem } or nil)
--   location      the internal location for "capture" (default "/_mcp_oauth2_as")
--   mtls_location the internal location for "capture" through which the one call that
--                 presents a TLS client certificate (client_auth tls_client_auth or
--                 self_signed_tls_client_auth: the introspection call) goes; its
--                 proxy_ssl_certificate / _key are the config's tls_client_auth_cert /
--                 _key. Required with those methods and "capture" (new() refuses without)
--   lock_wait     seconds a request waits for another worker's AS call
--                 (default: 2 * timeout + 1)
--   library       path of mcp_oauth2.so (default: package.searchpath("mcp_oauth2",
--                 package.cpath)), or an already loaded FFI library
--   native        the Lua module table with config_json (default: require("mcp_oauth2"))
--   recheck_url   http://127.0.0.1:PORT/_mcp_oauth2_recheck: the loopback location through
--                 which a timer re-validates the token of an open response when its cache
--                 entry ages out (needed with "capture"; other transports call the AS from
--                 the timer itself)
--   variables     true, or a list of names ("subject", "client_id", "scope", "consumer",
--                 "credential", "groups", "claims"; and "introspection", only by name and
--                 with introspection_format): access() sets $mcp_oauth2_<name>
--                 (declare each with `set $mcp_oauth2_<name> "";` where access() runs)
--   underscores_in_headers  true when nginx's `underscores_in_headers on`: access() then
--                 drops every request header the decision says must not reach the upstream
--                 (`X_User_Id` for `X-User-Id`), not only the exact names
--
-- Cluster cache (`cluster_cache_strategy: redis` in the configuration): introspection and
-- token-exchange answers are shared between nginx nodes (and Rust/C/demo nodes) through
-- Redis with resty.redis (resty.mcp_oauth2.cluster, docs/cluster-cache.md). A miss goes
-- worker cache -> shared dict -> Redis -> (lock; the leader calls the AS and stores the
-- answer for the core's cache TTL); evict publishes to every node; a timer per worker reads
-- the eviction log every 0.25 s. Redis failing never fails a request.

local ffi = require("ffi")
local cjson = require("cjson.safe")
require("resty.mcp_oauth2.cdef")
local cluster_cache = require("resty.mcp_oauth2.cluster")

local ngx = ngx
local ngx_var = ngx.var
local ngx_req = ngx.req
local set_header = ngx_req.set_header
local clear_header = ngx_req.clear_header
local ngx_header = ngx.header
local ngx_exit = ngx.exit
local ngx_print = ngx.print
local ngx_log = ngx.log
local ngx_sleep = ngx.sleep
local ngx_now = ngx.now
local ngx_ERR = ngx.ERR
local ngx_WARN = ngx.WARN
local ngx_INFO = ngx.INFO
local ngx_DEBUG = ngx.DEBUG
local HTTP_OK = ngx.HTTP_OK
local type = type
local pcall = pcall
local error = error
local next = next
local pairs = pairs
local ipairs = ipairs
local tonumber = tonumber
local tostring = tostring
local setmetatable = setmetatable
local str_find = string.find
local str_sub = string.sub
local str_gsub = string.gsub
local str_match = string.match
local str_byte = string.byte
local concat = table.concat
local io_open = io.open
local math_min = math.min
local floor = math.floor
local math_max = math.max
local ffi_new = ffi.new
local ffi_gc = ffi.gc
local ffi_string = ffi.string

-- ngx.semaphore (lua-resty-core) wakes in-worker followers; without it they poll.
local semaphore
do
  local ok, sema = pcall(require, "ngx.semaphore")
  if ok and type(sema) == "table" then
    semaphore = sema
  end
end

-- Constants of the C ABI (enum values and #defines, through the cdef).
local K = ffi.C
local OK = tonumber(K.MCP_OAUTH2_RESULT_OK)
local PANIC = tonumber(K.MCP_OAUTH2_RESULT_PANIC)
local ABSENT = tonumber(K.MCP_OAUTH2_RESULT_ABSENT)
local INVALID_ARGUMENT = tonumber(K.MCP_OAUTH2_RESULT_INVALID_ARGUMENT)
local STATE_HTTP = tonumber(K.MCP_OAUTH2_PENDING_STATE_HTTP)
local STATE_WAIT = tonumber(K.MCP_OAUTH2_PENDING_STATE_WAIT)
local PURPOSE_INTROSPECTION = tonumber(K.MCP_OAUTH2_PURPOSE_INTROSPECTION)
local PURPOSE_TOKEN_EXCHANGE = tonumber(K.MCP_OAUTH2_PURPOSE_TOKEN_EXCHANGE)
local HTTP10 = tonumber(K.MCP_OAUTH2_HTTP_VERSION_HTTP10)
local READS_BODY = tonumber(K.MCP_OAUTH2_READS_BODY)
local READS_FORWARDED = tonumber(K.MCP_OAUTH2_READS_FORWARDED)
local READS_ORIGIN = tonumber(K.MCP_OAUTH2_READS_ORIGIN)
local TRANSPORT = {
  connect = tonumber(K.MCP_OAUTH2_TRANSPORT_ERROR_CONNECT),
  timeout = tonumber(K.MCP_OAUTH2_TRANSPORT_ERROR_TIMEOUT),
  tls = tonumber(K.MCP_OAUTH2_TRANSPORT_ERROR_TLS),
  body_too_large = tonumber(K.MCP_OAUTH2_TRANSPORT_ERROR_BODY_TOO_LARGE),
  other = tonumber(K.MCP_OAUTH2_TRANSPORT_ERROR_OTHER),
}
local PURPOSE_NAMES = {
  [tonumber(K.MCP_OAUTH2_PURPOSE_INTROSPECTION)] = "introspection",
  [tonumber(K.MCP_OAUTH2_PURPOSE_DISCOVERY)] = "discovery",
  [tonumber(K.MCP_OAUTH2_PURPOSE_JWKS)] = "jwks",
  [tonumber(K.MCP_OAUTH2_PURPOSE_TOKEN_EXCHANGE)] = "token_exchange",
}
-- The core's log levels (mcp_oauth2_decision_log_level) as nginx's.
local LOG_LEVELS = { [0] = ngx_DEBUG, [1] = ngx_INFO, [2] = ngx_WARN, [3] = ngx_ERR }
local REFUSALS = {
  consumer_not_found = tonumber(K.MCP_OAUTH2_REFUSAL_CONSUMER_NOT_FOUND),
  consumer_groups_not_found = tonumber(K.MCP_OAUTH2_REFUSAL_CONSUMER_GROUPS_NOT_FOUND),
  consumer_lookup_failed = tonumber(K.MCP_OAUTH2_REFUSAL_CONSUMER_LOOKUP_FAILED),
}

-- Scratch cdata for inputs and outputs, one set per worker (Lua VM). Rule: they are filled,
-- passed and read without yielding in between, so requests never see each other's values.
-- `dp` holds a decision from the call that made it until it is freed (also without a yield);
-- it is NULL at rest.
local req = ffi_new("mcp_oauth2_request")
local MAX_REQ_HEADERS = 8
local req_headers = ffi_new("mcp_oauth2_header[?]", MAX_REQ_HEADERS)
local resp_header = ffi_new("mcp_oauth2_header[1]")
local dp = ffi_new("mcp_oauth2_decision*[1]")
local pp = ffi_new("mcp_oauth2_pending*[1]")
local s1 = ffi_new("mcp_oauth2_str[1]")
local s2 = ffi_new("mcp_oauth2_str[1]")
local b1 = ffi_new("mcp_oauth2_bytes[1]")
local u16 = ffi_new("uint16_t[1]")
local u32 = ffi_new("uint32_t[1]")
local u64 = ffi_new("uint64_t[1]")
local i64 = ffi_new("int64_t[1]")
local sz = ffi_new("size_t[1]")
local flag = ffi_new("bool[1]")
local key64 = ffi_new("uint8_t[64]")
-- Lua strings whose data a cdata field points to: the cdata does not keep them alive.
local anchor = {}

local _M = { _VERSION = "0.2.0" }
local mt = { __index = _M }

local function str1()
  return ffi_string(s1[0].ptr, s1[0].len)
end

local function result_name(C, rc)
  if C.mcp_oauth2_result_name(rc, s1) == OK then
    return str1()
  end
  return "result " .. tostring(rc)
end

-- Raises a Lua error naming the failed call (caught around every flow: a 500, never a pass).
local function check(C, rc, what)
  if rc ~= OK then
    error("mcp_oauth2: " .. what .. ": " .. result_name(C, rc), 0)
  end
end

-- The response a decision holds: status, headers (name -> value or list), body.
local function read_response(C, d)
  check(C, C.mcp_oauth2_decision_status(d, u16), "decision_status")
  local status = u16[0]
  check(C, C.mcp_oauth2_decision_response_header_count(d, sz), "decision_response_header_count")
  local headers = {}
  for i = 0, tonumber(sz[0]) - 1 do
    check(C, C.mcp_oauth2_decision_response_header(d, i, s1, s2), "decision_response_header")
    local name, value = str1(), ffi_string(s2[0].ptr, s2[0].len)
    local prev = headers[name]
    if prev == nil then
      headers[name] = value
    elseif type(prev) == "table" then
      prev[#prev + 1] = value
    else
      headers[name] = { prev, value }
    end
  end
  check(C, C.mcp_oauth2_decision_body(d, b1), "decision_body")
  return status, headers, ffi_string(b1[0].ptr, b1[0].len)
end

-- One FFI library object per file: every validator of the worker calls through the same
-- one, so the JIT's traces (specialised on it) serve them all.
local libraries = {}

local function load_library(lib)
  if lib ~= nil and type(lib) ~= "string" then
    return lib
  end
  local path = lib or package.searchpath("mcp_oauth2", package.cpath)
  if not path then
    return nil, "mcp_oauth2.so not found in package.cpath (lua_package_cpath)"
  end
  local loaded = libraries[path]
  if loaded then
    return loaded
  end
  local ok
  ok, loaded = pcall(ffi.load, path)
  if not ok then
    return nil, (lib and "opts.library: " or "") .. tostring(loaded)
  end
  libraries[path] = loaded
  return loaded
end

local function choose_http(mode, location)
  if type(mode) == "function" then
    return mode, "custom"
  end
  mode = mode or "auto"
  if mode == "auto" then
    local ok, http = pcall(require, "resty.http")
    if ok and http then
      return http, "resty.http"
    end
    return location, "capture"
  elseif mode == "resty.http" then
    local ok, http = pcall(require, "resty.http")
    if not ok then
      return nil, "opts.http: resty.http is not installed"
    end
    return http, "resty.http"
  elseif mode == "capture" then
    return location, "capture"
  end
  return nil, "opts.http: must be \"auto\", \"capture\", \"resty.http\" or a function"
end

-- A list of `count` names read with `get(v, i, s1)`.
local function read_names(C, v, count_fn, get_fn, what)
  check(C, count_fn(v, sz), what .. "_count")
  local names = {}
  for i = 0, tonumber(sz[0]) - 1 do
    check(C, get_fn(v, i, s1), what)
    names[#names + 1] = str1()
  end
  return names
end

-- The client authentication methods whose introspection call presents a TLS client
-- certificate (RFC 8705).
local TLS_METHODS = { tls_client_auth = true, self_signed_tls_client_auth = true }

-- What a transport cannot do that the configuration (the core's JSON, decoded) asks for,
-- as an error naming the field; nil when it can do everything. Only the capture transport
-- has limits: nginx makes the call, with the internal location's fixed directives.
local function transport_error(decoded, mode, opts)
  local mtls = opts.mtls_location
  if mtls ~= nil and (type(mtls) ~= "string" or str_byte(mtls) ~= 47) then
    return "opts.mtls_location: must be the path of an internal location (\"/_mcp_oauth2_mtls\")"
  end
  if mode ~= "capture" or type(decoded) ~= "table" then
    return nil
  end
  local location = opts.location or "/_mcp_oauth2_as"
  -- The internal location sends only the headers it sets from the request.
  if type(decoded.headers) == "table" and next(decoded.headers) then
    return "headers: extra introspection headers need resty.http or opts.http; with "
      .. "ngx.location.capture add them with proxy_set_header in " .. location
  end
  -- nginx's proxy_pass speaks to the origin only: no CONNECT, no absolute form.
  for _, field in ipairs({ "http_proxy", "https_proxy" }) do
    if type(decoded[field]) == "string" then
      return field .. ": the capture transport (nginx's proxy_pass in " .. location .. ") cannot go "
        .. "through a forward proxy; use resty.http or an opts.http function"
    end
  end
  -- proxy_http_version is fixed per location; every call would speak what it says.
  local version = decoded.http_version
  if version == "1.0" or tonumber(version) == 1 then
    return "http_version: 1.0 is not available with the capture transport (nginx's "
      .. "proxy_http_version in " .. location .. " decides, and speaks 1.1 as documented); use "
      .. "resty.http or an opts.http function"
  end
  if TLS_METHODS[decoded.client_auth] and mtls == nil then
    return "client_auth: " .. decoded.client_auth .. " with the capture transport needs "
      .. "opts.mtls_location: an internal location whose proxy_ssl_certificate and "
      .. "proxy_ssl_certificate_key are tls_client_auth_cert and tls_client_auth_key"
  end
  return nil
end

-- What the host adds to the core's verdict on a configuration, for check() and new() alike:
-- what the transport cannot do (capture: forward proxies, HTTP/1.0, mutual TLS without its
-- location, extra headers) and the cluster cache on Redis (refused when resty.redis cannot
-- be loaded), each naming the field, never ignored. Returns the cluster cache (or nil), or
-- nil and the error.
local function host_checks(decoded, mode, opts)
  local err = transport_error(decoded, mode, opts)
  if err then
    return nil, err
  end
  return cluster_cache.new(decoded)
end

--- Checks a configuration with the core exactly as new() builds it (config_json, then
--- mcp_oauth2_validator_new), and what the transport new() would choose with these `opts`
--- cannot do (the capture transport: forward proxies, http_version 1.0, a mutual-TLS
--- method without opts.mtls_location, extra headers), without keeping anything: true, or
--- nil and the message naming the field. For schema validation (the Kong plugin's
--- custom_validator, with the handler's opts).
function _M.check(conf, opts)
  opts = opts or {}
  local native = opts.native or require("mcp_oauth2")
  local json, err = native.config_json(conf)
  if not json then
    return nil, err
  end
  local C
  C, err = load_library(opts.library)
  if not C then
    return nil, err
  end
  local vbox = ffi_new("mcp_oauth2_validator*[1]")
  local ebox = ffi_new("mcp_oauth2_error*[1]")
  local rc = C.mcp_oauth2_validator_new(json, #json, vbox, ebox)
  C.mcp_oauth2_validator_free(vbox)
  if rc ~= OK then
    if ebox[0] ~= nil then
      C.mcp_oauth2_error_message(ebox[0], s1)
      err = str1()
      C.mcp_oauth2_error_free(ebox)
      return nil, err
    end
    return nil, "mcp_oauth2_validator_new: " .. result_name(C, rc)
  end
  local _, mode = choose_http(opts.http, opts.location or "/_mcp_oauth2_as")
  local _, cerr = host_checks(cjson.decode(json), mode, opts)
  if cerr then
    return nil, cerr
  end
  return true
end

-- Names access() can write into $mcp_oauth2_<name> (opts.variables).
local VARIABLES = {
  subject = true, client_id = true, scope = true, consumer = true, credential = true,
  groups = true, claims = true, introspection = true,
}

-- Every handler of this worker (weak): the timer's work list, and the recheck location's
-- registry by configuration id.
local handlers = setmetatable({}, { __mode = "k" })
local by_id = setmetatable({}, { __mode = "v" })
-- Per shared dict: the last sequence number of its eviction log this worker applied.
local evict_seen = setmetatable({}, { __mode = "k" })
-- The worker's timer: revocations from other workers, open responses to re-validate,
-- metrics snapshots. Every TICK seconds.
local TICK = 0.2
-- How long a flight's result stays in the shared dict for the requests that waited on it.
local FLIGHT_KEEP = 2
-- Expired shared-dict entries freed per tick and zone (nginx frees them lazily otherwise,
-- and a full zone then evicts live answers first: found by scripts/soak.sh).
local FLUSH_PER_TICK = 500
local ticker_started = false
-- The cluster cache's watcher: every handler with one, every WATCH_EVERY seconds.
local cluster_wanted, cluster_started = false, false
local cluster_tick

local function start_cluster_watch()
  if cluster_started then
    return
  end
  local ok, err = ngx.timer.every(cluster_cache.WATCH_EVERY, cluster_tick)
  if ok then
    cluster_started = true
    -- The first round now: the eviction log's current number.
    ngx.timer.at(0, cluster_tick)
  else
    ngx_log(ngx_ERR, "mcp_oauth2: cannot start the cluster cache timer: ", err)
  end
end

local function start_ticker()
  if (ticker_started and (cluster_started or not cluster_wanted)) or not (ngx.timer and ngx.timer.every) then
    return
  end
  if ngx.get_phase and ngx.get_phase() == "init" then
    return -- no timers in init_by_lua: started by the first request instead
  end
  if cluster_wanted then
    start_cluster_watch()
  end
  if ticker_started then
    return
  end
  local ok, err = ngx.timer.every(TICK, function(premature)
    if not premature then
      local done, terr = pcall(_M._tick)
      if not done then
        ngx_log(ngx_ERR, "mcp_oauth2: timer: ", terr)
      end
    end
  end)
  if ok then
    ticker_started = true
  else
    ngx_log(ngx_ERR, "mcp_oauth2: cannot start the worker timer: ", err)
  end
end

local function register(self)
  if self.cluster then
    cluster_wanted = true
  end
  handlers[self] = true
  by_id[self.id] = self
  local shm = self.shm
  if shm and evict_seen[shm] == nil then
    evict_seen[shm] = shm:get("evict:seq") or 0
  end
  start_ticker()
end

--- Builds the handler. Returns the object, or nil and an error naming the field.
function _M.new(conf, opts)
  opts = opts or {}
  if type(opts) ~= "table" then
    return nil, "opts: must be a table"
  end
  local native = opts.native or require("mcp_oauth2")
  local json, err = native.config_json(conf)
  if not json then
    return nil, err
  end
  local C
  C, err = load_library(opts.library)
  if not C then
    return nil, err
  end

  local vbox = ffi_new("mcp_oauth2_validator*[1]")
  local ebox = ffi_new("mcp_oauth2_error*[1]")
  local rc = C.mcp_oauth2_validator_new(json, #json, vbox, ebox)
  if rc ~= OK then
    if ebox[0] ~= nil then
      C.mcp_oauth2_error_message(ebox[0], s1)
      err = str1()
      C.mcp_oauth2_error_free(ebox)
      return nil, err
    end
    return nil, "mcp_oauth2_validator_new: " .. result_name(C, rc)
  end
  ffi_gc(vbox, C.mcp_oauth2_validator_free)
  local v = vbox[0]

  local shm
  local shm_name = opts.shm
  if shm_name == nil then
    shm_name = "mcp_oauth2"
  end
  if shm_name then
    shm = ngx.shared and ngx.shared[shm_name]
    if not shm then
      return nil, "opts.shm: no lua_shared_dict named \"" .. tostring(shm_name)
        .. "\" (declare it in the http block, or pass shm = false)"
    end
  end

  local location = opts.location or "/_mcp_oauth2_as"
  local http, mode = choose_http(opts.http, location)
  if not http then
    return nil, mode
  end
  local decoded = cjson.decode(json)
  local cluster, cerr = host_checks(decoded, mode, opts)
  if cerr then
    return nil, cerr
  end
  if cluster then
    cluster.on_error = function()
      C.mcp_oauth2_validator_record_cluster_cache_error(vbox[0])
    end
  end
  -- resty.http presents the mutual-TLS client certificate itself: parsed once, here.
  local client_cert
  if mode == "resty.http" and type(decoded) == "table" and TLS_METHODS[decoded.client_auth] then
    local ok, ssl = pcall(require, "ngx.ssl")
    if not ok or type(ssl) ~= "table" or not ssl.parse_pem_cert or not ssl.parse_pem_priv_key then
      return nil, "tls_client_auth_cert: resty.http presents it only with ngx.ssl (lua-resty-core)"
    end
    local cert, cerr = ssl.parse_pem_cert(decoded.tls_client_auth_cert)
    if not cert then
      return nil, "tls_client_auth_cert: ngx.ssl.parse_pem_cert: " .. tostring(cerr)
    end
    -- Never the parser's message for the key: nothing of a secret in an error.
    local key = ssl.parse_pem_priv_key(decoded.tls_client_auth_key)
    if not key then
      return nil, "tls_client_auth_key: ngx.ssl.parse_pem_priv_key cannot read it"
    end
    client_cert = { cert = cert, key = key }
  end
  -- Token exchange: the upstream gets the exchanged token; an actor token may come from a
  -- request header, which begin must then be given.
  local exchange, actor_header, actor_var = false, nil, nil
  local te = type(decoded) == "table" and decoded.token_exchange
  if type(te) == "table" and te.enabled == true then
    exchange = true
    local r = type(te.request) == "table" and te.request or {}
    if r.actor_token_source == "header" and type(r.actor_token_header) == "string" then
      actor_header = r.actor_token_header:lower()
      actor_var = "http_" .. str_gsub(actor_header, "-", "_")
    end
  end

  -- The compiled policy, as the core reports it.
  check(C, C.mcp_oauth2_validator_reads(v, u32), "validator_reads")
  local reads = tonumber(u32[0])
  check(C, C.mcp_oauth2_validator_max_request_body_size(v, u64), "validator_max_request_body_size")
  local max_body = tonumber(u64[0])
  local claim_names = read_names(C, v, C.mcp_oauth2_validator_claim_header_count,
    C.mcp_oauth2_validator_claim_header, "validator_claim_header")
  local remove = read_names(C, v, C.mcp_oauth2_validator_remove_header_count,
    C.mcp_oauth2_validator_remove_header, "validator_remove_header")
  -- Claim headers are set or cleared one by one; the rest of the remove list is cleared.
  local is_claim = {}
  for _, name in ipairs(claim_names) do
    is_claim[name:lower()] = true
  end
  local clear = {}
  for _, name in ipairs(remove) do
    if not is_claim[name:lower()] then
      clear[#clear + 1] = name
    end
  end

  -- The 500 for a failed call, from the core, read once.
  local internal
  internal, err = _M.internal_error(C)
  if not internal then
    return nil, err
  end

  -- The same configuration gets the same id in every worker (a digest over it, never a
  -- secret): the key of this handler's metrics in the shared dict and of the recheck
  -- location's registry.
  check(C, C.mcp_oauth2_validator_token_cache_key(v, "", 0, key64), "validator_token_cache_key")
  local id = ffi_string(key64, 16)

  -- Each configuration warning (plain-http endpoints, disabled certificate checks), once.
  check(C, C.mcp_oauth2_validator_warning_count(v, sz), "validator_warning_count")
  for i = 0, tonumber(sz[0]) - 1 do
    if C.mcp_oauth2_validator_warning(v, i, s1) == OK then
      ngx_log(ngx_WARN, "mcp_oauth2: configuration: ", str1())
    end
  end

  local variables
  if opts.variables == true then
    variables = { "subject", "client_id", "scope", "consumer", "credential", "groups", "claims" }
  elseif type(opts.variables) == "table" then
    variables = {}
    for _, name in ipairs(opts.variables) do
      if not VARIABLES[name] then
        return nil, "opts.variables: unknown name \"" .. tostring(name) .. "\""
      end
      variables[#variables + 1] = name
    end
  elseif opts.variables ~= nil and opts.variables ~= false then
    return nil, "opts.variables: must be true or a list of names"
  end
  if variables and type(decoded) == "table" and type(decoded.introspection_format) ~= "string" then
    for _, name in ipairs(variables) do
      if name == "introspection" then
        return nil, "opts.variables: introspection needs introspection_format in the configuration"
      end
    end
  end

  local recheck
  if opts.recheck_url ~= nil then
    local host, port, path = str_match(tostring(opts.recheck_url), "^http://([^/:]+):?(%d*)(/.*)$")
    if not host then
      return nil, "opts.recheck_url: must be http://HOST[:PORT]/PATH (a loopback address of this nginx)"
    end
    recheck = { host = host, port = tonumber(port) or 80, path = path }
  end

  local self = {
    id = id,
    C = C,
    vbox = vbox,
    v = v,
    shm = shm,
    http = http,
    mode = mode,
    mtls_location = opts.mtls_location,
    client_cert = client_cert,
    lock_wait = opts.lock_wait,
    reads_body = reads % (2 * READS_BODY) >= READS_BODY,
    reads_forwarded = reads % (2 * READS_FORWARDED) >= READS_FORWARDED,
    reads_origin = reads % (2 * READS_ORIGIN) >= READS_ORIGIN,
    max_body = max_body,
    claim_names = claim_names,
    n_claims = #claim_names,
    clear = clear,
    n_clear = #clear,
    remove = remove,
    internal = internal,
    -- In-worker followers: semaphore -> pending box.
    waiters = {},
    -- How often a request waited for another one's AS call, and re-validations of open
    -- responses (tests, diagnostics).
    counts = { worker_waits = 0, shm_waits = 0, rechecks = 0, streams_cut = 0 },
    -- The cluster cache on Redis (nil: off); it keeps the validator alive through `vbox`.
    cluster = cluster,
    variables = variables,
    n_variables = variables and #variables or 0,
    underscores = opts.underscores_in_headers == true,
    recheck = recheck,
    exchange = exchange,
    actor_header = actor_header,
    actor_var = actor_var,
    -- ngx.ctx.mcp_oauth2 after an allowed access() (opts.context = false: none).
    context = opts.context ~= false,
    -- Open responses by token cache key: { exp, recheck_at, authz, path, origin, cut,
    -- busy, set = weak-keyed set of per-response states }.
    streams = {},
    -- The same entries by the Authorization value that opened them.
    streams_by_authz = {},
  }
  setmetatable(self, mt)
  register(self)
  return self
end

-- ---------------------------------------------------------------------------------------
-- AS calls

-- Through nginx (ngx.location.capture): the internal location makes the call with its
-- proxy_* directives; the request's parts reach it through subrequest_var(). The call that
-- presents a TLS client certificate goes to opts.mtls_location, whose proxy_ssl_certificate
-- is that certificate; every other call to `location`.
local function capture_call(self, r)
  local location = self.http
  if r.client_certificate then
    location = self.mtls_location
    if not location then
      -- new() refuses a mutual-TLS method without it; never send the call without the
      -- certificate it needs.
      return nil, "tls", "a call presenting a client certificate, and no opts.mtls_location"
    end
  end
  local asked = {}
  r.asked = asked
  local res = ngx.location.capture(location, {
    method = r.method == "GET" and ngx.HTTP_GET or ngx.HTTP_POST,
    body = r.body,
    ctx = { mcp_oauth2_as = r },
  })
  -- What the location must send that nginx would not send the same way by itself: the
  -- location proves it by reading the value (subrequest_var). Without it the answer is
  -- not used (a 503), rather than a setting silently ignored.
  if r.keepalive == false and not asked.connection then
    return nil, "other", location .. " does not set Connection from $mcp_oauth2_connection (keepalive: false)"
  end
  local accept = r.headers.Accept
  if accept and accept ~= "application/json" and not asked.accept then
    return nil, "other", location .. " does not set Accept from $mcp_oauth2_accept (" .. accept .. ")"
  end
  if not res then
    return nil, "other", "subrequest failed"
  end
  if res.truncated then
    -- nginx's proxy failed mid-way (or could not connect: 502, timed out: 504).
    local st = res.status
    return nil, st == 504 and "timeout" or (st == 502 and "connect" or "other"),
      "AS response incomplete (" .. tostring(st) .. ")"
  end
  local ct = res.header["Content-Type"]
  if type(ct) == "table" then
    ct = ct[1]
  end
  return res.status, ct, res.body
end

-- Through lua-resty-http (cosockets): everything the request carries is applied here, per
-- call: certificate verification, the client certificate (parsed once by new()), the HTTP
-- version, keep-alive, and the forward proxy the core chose for this URL (only that route:
-- the core already applied no_proxy). Not run on the build machine: lua-resty-http is not
-- packaged there.
local function resty_http_call(self, r)
  local httpc = self.http.new()
  httpc:set_timeout(r.timeout)
  local headers = r.headers
  if r.keepalive == false then
    headers.Connection = "close"
  end
  local proxy = r.proxy
  if proxy then
    if str_sub(r.url, 1, 8) == "https://" then
      httpc:set_proxy_options({ https_proxy = proxy.url, https_proxy_authorization = proxy.authorization })
    else
      httpc:set_proxy_options({ http_proxy = proxy.url, http_proxy_authorization = proxy.authorization })
    end
  end
  local params = {
    method = r.method,
    body = r.body,
    headers = headers,
    ssl_verify = r.verify_certificate,
    version = r.http_version,
    keepalive = r.keepalive,
  }
  if r.client_certificate then
    local cc = self.client_cert
    if not cc then
      return nil, "tls", "a call presenting a client certificate, and none parsed"
    end
    params.ssl_client_cert, params.ssl_client_priv_key = cc.cert, cc.key
  end
  local res, err = httpc:request_uri(r.url, params)
  if not res then
    err = tostring(err)
    local kind = "connect"
    if str_find(err, "timeout", 1, true) then
      kind = "timeout"
    elseif str_find(err, "handshake", 1, true) or str_find(err, "certificate", 1, true) then
      kind = "tls"
    end
    return nil, kind, err
  end
  return res.status, res.headers["Content-Type"], res.body
end

-- One AS exchange: status, content_type, body; or nil, kind, message.
function _M._call(self, r)
  local mode = self.mode
  if mode == "capture" then
    return capture_call(self, r)
  elseif mode == "resty.http" then
    return resty_http_call(self, r)
  end
  return self.http(r)
end

-- The HTTP request a pending describes, as a Lua table (copied: the views die at resume),
-- with how to make it: verify_certificate, http_version (1.0 or 1.1), keepalive, proxy
-- ({ url, authorization } or nil: direct) and client_certificate (nil: none; for an
-- opts.http function { cert_pem, key_pem }, the key a secret; for the others `true`: they
-- use the configured certificate, so the key is not copied).
local function pending_request(C, p, mode)
  check(C, C.mcp_oauth2_pending_method(p, s1), "pending_method")
  local method = str1()
  check(C, C.mcp_oauth2_pending_url(p, s1), "pending_url")
  local url = str1()
  check(C, C.mcp_oauth2_pending_header_count(p, sz), "pending_header_count")
  local headers = {}
  for i = 0, tonumber(sz[0]) - 1 do
    check(C, C.mcp_oauth2_pending_header(p, i, s1, s2), "pending_header")
    headers[str1()] = ffi_string(s2[0].ptr, s2[0].len)
  end
  check(C, C.mcp_oauth2_pending_body(p, b1), "pending_body")
  local body = ffi_string(b1[0].ptr, b1[0].len)
  check(C, C.mcp_oauth2_pending_timeout_ms(p, u64), "pending_timeout_ms")
  local timeout = tonumber(u64[0])
  check(C, C.mcp_oauth2_pending_purpose(p, u32), "pending_purpose")
  local purpose = PURPOSE_NAMES[tonumber(u32[0])] or "other"
  check(C, C.mcp_oauth2_pending_verify_certificate(p, flag), "pending_verify_certificate")
  local verify = flag[0] == true
  check(C, C.mcp_oauth2_pending_keepalive(p, flag), "pending_keepalive")
  local keepalive = flag[0] == true
  check(C, C.mcp_oauth2_pending_http_version(p, u32), "pending_http_version")
  local version = tonumber(u32[0]) == HTTP10 and 1.0 or 1.1
  local proxy
  local rc = C.mcp_oauth2_pending_proxy_url(p, s1)
  if rc == OK then
    proxy = { url = str1() }
    rc = C.mcp_oauth2_pending_proxy_authorization(p, s1)
    if rc == OK then
      proxy.authorization = str1()
    elseif rc ~= ABSENT then
      check(C, rc, "pending_proxy_authorization")
    end
  elseif rc ~= ABSENT then
    check(C, rc, "pending_proxy_url")
  end
  local client_certificate
  rc = C.mcp_oauth2_pending_client_certificate(p, s1, s2)
  if rc == OK then
    if mode == "custom" then
      client_certificate = { cert_pem = str1(), key_pem = ffi_string(s2[0].ptr, s2[0].len) }
    else
      client_certificate = true
    end
  elseif rc ~= ABSENT then
    check(C, rc, "pending_client_certificate")
  end
  return {
    method = method, url = url, headers = headers, body = body, timeout = timeout,
    purpose = purpose, verify_certificate = verify, keepalive = keepalive,
    http_version = version, proxy = proxy, client_certificate = client_certificate,
  }
end

-- Wakes the in-worker followers whose awaited answer is in. Called after every resume, fail
-- and abandon of a leading pending; cheap when nobody waits.
local function wake(self)
  local waiters = self.waiters
  if next(waiters) == nil then
    return
  end
  local C = self.C
  for sema, box in pairs(waiters) do
    local rc = C.mcp_oauth2_pending_is_ready(box[0], flag)
    if rc ~= OK or flag[0] then
      waiters[sema] = nil
      sema:post(1)
    end
  end
end

-- Hands an AS answer (or a transport failure) to the pending; the outcome is in `dp`:
-- a decision, or NULL when the pending moved to its next step. `fetched_at` (Unix ms) for
-- an answer replayed from the shared dict.
local function resume(self, box, fetched_at, status, ct, body)
  local C = self.C
  local now = ngx_now() * 1000
  local rc
  if status then
    local nh = 0
    if ct then
      anchor[1] = ct
      local h = resp_header[0]
      h.name, h.name_len = "Content-Type", 12
      h.value, h.value_len = ct, #ct
      nh = 1
    end
    body = body or ""
    if fetched_at then
      rc = C.mcp_oauth2_pending_resume_cached(box[0], fetched_at, now, status, resp_header, nh, body, #body, dp)
    else
      rc = C.mcp_oauth2_pending_resume(box[0], now, status, resp_header, nh, body, #body, dp)
    end
  else
    local message = body or ""
    rc = C.mcp_oauth2_pending_fail(box[0], now, TRANSPORT[ct] or TRANSPORT.other, message, #message, dp)
  end
  wake(self)
  check(C, rc, status and "pending_resume" or "pending_fail")
end

-- Stored form of an AS exchange in the shared dict:
-- "<fetched_at ms>\n<status>\n<content-type>\n<body>" or "E\n<kind>\n<message>".
local function encode(fetched_at, status, ct, body)
  if status then
    return fetched_at .. "\n" .. status .. "\n" .. (ct or "") .. "\n" .. (body or "")
  end
  return "E\n" .. (ct or "other") .. "\n" .. (body or "")
end

local function replay(self, box, stored)
  local a = str_find(stored, "\n", 1, true)
  local b = a and str_find(stored, "\n", a + 1, true)
  if not b then
    return resume(self, box, nil, nil, "other", "corrupt shared cache entry")
  end
  local head = str_sub(stored, 1, a - 1)
  if head == "E" then
    return resume(self, box, nil, nil, str_sub(stored, a + 1, b - 1), str_sub(stored, b + 1))
  end
  local c = str_find(stored, "\n", b + 1, true)
  if not c then
    return resume(self, box, nil, nil, "other", "corrupt shared cache entry")
  end
  return resume(self, box, tonumber(head), tonumber(str_sub(stored, a + 1, b - 1)),
    str_sub(stored, b + 1, c - 1), str_sub(stored, c + 1))
end

-- Performs the pending's HTTP request and resumes with the outcome; returns its stored form.
local function perform(self, box)
  local r = pending_request(self.C, box[0], self.mode)
  local status, ct, body = self:_call(r)
  if not status then
    ngx_log(ngx_WARN, "mcp_oauth2: ", r.purpose, " call failed: ", ct, ": ", body)
  end
  local fetched_at = floor(ngx_now() * 1000)
  resume(self, box, nil, status, ct, body)
  return encode(fetched_at, status, ct, body), status
end

-- Phases with cosockets: the cluster cache talks to Redis only there (header and body
-- filters, log, set_by_lua and init phases have none).
local COSOCKET_PHASES = {
  rewrite = true, access = true, content = true, timer = true, ssl_cert = true,
  ssl_session_fetch = true, ssl_client_hello = true, preread = true,
}
local function cosockets()
  local get_phase = ngx.get_phase
  return not get_phase or COSOCKET_PHASES[get_phase()] == true
end

-- An answer stored in Redis ("<fetched_at ms>\n<status>\n<content-type>\n<body>"),
-- replayed with its first fetch time (never later than now: clocks differ between nodes).
-- False when it is unreadable (another build wrote it?): then this node fetches alone.
local function replay_cluster(self, box, stored)
  local at, status, ct, rest = str_match(stored, "^(%d+)\n(%d%d%d)\n([^\n]*)\n()")
  if not at then
    return false
  end
  local now = floor(ngx_now() * 1000)
  resume(self, box, math_min(tonumber(at), now), tonumber(status), ct ~= "" and ct or nil, str_sub(stored, rest))
  return true
end

-- How long a cache shared between processes may keep the answer under `key` (ms): what is
-- left of the core's own entry (Validator::cache_ttl); nil: not to be kept.
local function kept_ttl_ms(self, key)
  if self.C.mcp_oauth2_validator_cache_ttl_ms(self.v, key, #key, ngx_now() * 1000, u64) == OK then
    local ttl = tonumber(u64[0])
    if ttl >= 1 then
      return ttl
    end
  end
  return nil
end

-- The answer for a step about one token (`kept`), asking the cluster cache first when
-- there is one: another node's answer (replayed), or this node's AS call as the
-- cluster-wide leader (then shared for the core's TTL), or, while another node fetches
-- it, that node's answer (waiting at most `timeout`; then this node calls the AS itself).
-- Redis failing never fails the request: the node calls the AS. Returns the stored form.
local function fetch(self, box, key, kept)
  local cl = self.cluster
  if not (kept and cl and not cl.down and cosockets()) then
    return (perform(self, box))
  end
  local C, v = self.C, self.v
  local outcome, stored = cl:lookup(key)
  local counts = cl.counts
  if outcome == "hit" then
    if replay_cluster(self, box, stored) then
      counts.hits = counts.hits + 1
      C.mcp_oauth2_validator_record_cluster_cache(v, true)
      return stored
    end
    outcome = "down"
  elseif outcome == "wait" then
    counts.waits = counts.waits + 1
    stored = cl:wait(key)
    if stored and replay_cluster(self, box, stored) then
      counts.hits = counts.hits + 1
      C.mcp_oauth2_validator_record_cluster_cache(v, true)
      return stored
    end
  end
  counts.misses = counts.misses + 1
  C.mcp_oauth2_validator_record_cluster_cache(v, false)
  if outcome ~= "lead" then
    return (perform(self, box))
  end
  counts.leads = counts.leads + 1
  local done, raw, status = pcall(perform, self, box)
  if not done then
    cl:store(key, nil)
    error(raw, 0)
  end
  -- Shared for what is left of this node's own entry: never longer, and not at all when
  -- it was not kept (a failure, an answer not to be cached); the lock goes either way.
  local ttl = status and kept_ttl_ms(self, key)
  -- Storing yields (cosockets): the decision the resume left in `dp` waits in its own box,
  -- as other requests of this worker (the followers it woke) use `dp` meanwhile.
  local held = ffi_gc(ffi_new("mcp_oauth2_decision*[1]"), C.mcp_oauth2_decision_free)
  held[0] = dp[0]
  dp[0] = nil
  cl:store(key, ttl and raw or nil, ttl)
  dp[0] = held[0]
  held[0] = nil
  ffi_gc(held, nil)
  return raw
end

-- One HTTP step: the shared dict's answer (L2), or the one AS call for this key across all
-- workers (leader), or the leader's result (other workers' requests).
local function http_step(self, box)
  local shm = self.shm
  if not shm and not self.cluster then
    perform(self, box)
    return
  end
  local C = self.C
  local p = box[0]
  check(C, C.mcp_oauth2_pending_cache_key(p, s1), "pending_cache_key")
  local key = str1()
  check(C, C.mcp_oauth2_pending_purpose(p, u32), "pending_purpose")
  local purpose = tonumber(u32[0])
  check(C, C.mcp_oauth2_pending_timeout_ms(p, u64), "pending_timeout_ms")
  local timeout = tonumber(u64[0]) / 1000
  -- The leader may wait `timeout` for another node, then call the AS (`timeout`), after
  -- Redis's own timeouts.
  local lock_wait = self.lock_wait or (2 * timeout + 1 + (self.cluster and (timeout + self.cluster.io_wait) or 0))

  -- Introspection and exchange answers are kept in the dict (and counted as its hits and
  -- misses); metadata and key sets only go through the flight entry.
  local kept = purpose == PURPOSE_INTROSPECTION or purpose == PURPOSE_TOKEN_EXCHANGE
  if not shm then
    fetch(self, box, key, kept)
    return
  end
  local stored = shm:get(key)
  if kept then
    C.mcp_oauth2_validator_record_shared_cache(self.v, stored ~= nil)
  end
  if stored then
    return replay(self, box, stored)
  end
  local lock_key = "lock:" .. key
  local flight_key = "flight:" .. key
  local ok, err = shm:add(lock_key, true, lock_wait)
  if ok then
    stored = shm:get(key)
    if stored then
      shm:delete(lock_key)
      return replay(self, box, stored)
    end
    local done, raw = pcall(fetch, self, box, key, kept)
    if not done then
      shm:delete(lock_key)
      error(raw, 0)
    end
    -- Followers of this flight read its result, whatever it was (AS failures included).
    -- They poll at least every 10 ms, so it is kept briefly: a follower that missed it asks
    -- the AS itself, and a flood of new tokens does not fill the zone with results.
    shm:set(flight_key, raw, math_min(lock_wait, FLIGHT_KEEP))
    -- An introspection or exchange answer is kept for as long as the core keeps what it
    -- derived from it (never failures: they have no cache TTL). Asked by key: after an
    -- introspection that a token exchange follows there is no decision yet.
    local ttl = kept and kept_ttl_ms(self, key)
    if ttl then
      local set_ok, set_err = shm:set(key, raw, ttl / 1000)
      if not set_ok then
        ngx_log(ngx_WARN, "mcp_oauth2: shared cache: ", set_err)
      end
    end
    shm:delete(lock_key)
    return
  elseif err ~= "exists" then
    ngx_log(ngx_WARN, "mcp_oauth2: shared lock: ", err)
    fetch(self, box, key, kept)
    return
  end

  -- Another worker is asking the AS for this key.
  self.counts.shm_waits = self.counts.shm_waits + 1
  local deadline = ngx_now() + lock_wait
  local wait = 0.001
  while true do
    ngx_sleep(wait)
    wait = math_min(wait * 2, 0.01)
    stored = shm:get(key)
    if stored then
      return replay(self, box, stored)
    end
    if not shm:get(lock_key) then
      stored = shm:get(flight_key)
      if stored then
        return replay(self, box, stored)
      end
      -- The leader vanished without a result: ask ourselves.
      perform(self, box)
      return
    end
    if ngx_now() >= deadline then
      return resume(self, box, nil, nil, "timeout", "gave up waiting for a concurrent call")
    end
  end
end

-- One WAIT step: another request of this worker asks the AS; wait for it without blocking
-- the worker (bounded by the pending's max wait), then continue with its answer.
local function wait_step(self, box)
  local C = self.C
  check(C, C.mcp_oauth2_pending_is_ready(box[0], flag), "pending_is_ready")
  if not flag[0] then
    self.counts.worker_waits = self.counts.worker_waits + 1
    check(C, C.mcp_oauth2_pending_max_wait_ms(box[0], u64), "pending_max_wait_ms")
    local deadline = ngx_now() + tonumber(u64[0]) / 1000
    if semaphore then
      local sema = semaphore.new()
      local waiters = self.waiters
      waiters[sema] = box
      -- Slices: a leader that vanished without a word (its pending collected) still
      -- releases this one within a second of it.
      while true do
        local remaining = deadline - ngx_now()
        if remaining <= 0 or sema:wait(math_min(remaining, 1)) then
          break
        end
        if C.mcp_oauth2_pending_is_ready(box[0], flag) ~= OK or flag[0] then
          break
        end
      end
      waiters[sema] = nil
    else
      local pause = 0.001
      while ngx_now() < deadline do
        ngx_sleep(pause)
        pause = math_min(pause * 2, 0.01)
        if C.mcp_oauth2_pending_is_ready(box[0], flag) ~= OK or flag[0] then
          break
        end
      end
    end
  end
  check(C, C.mcp_oauth2_pending_continue(box[0], ngx_now() * 1000, dp), "pending_continue")
end

-- At most this many steps for one request (discovery over several servers with retries,
-- keys, a key refetch, waits).
local MAX_STEPS = 32

-- Drives a pending to its decision, left in `dp`.
local function resolve(self, box)
  local C = self.C
  for _ = 1, MAX_STEPS do
    check(C, C.mcp_oauth2_pending_get_state(box[0], u32), "pending_get_state")
    local state = tonumber(u32[0])
    if state == STATE_HTTP then
      http_step(self, box)
    elseif state == STATE_WAIT then
      wait_step(self, box)
    else
      error("mcp_oauth2: pending in state " .. state .. " without a decision", 0)
    end
    if dp[0] ~= nil then
      return
    end
  end
  error("mcp_oauth2: validation needed more than " .. MAX_STEPS .. " steps", 0)
end

-- Takes the pending `begin` left in `pp` and drives it to a decision in `dp`. Returns true,
-- or nil and the error (the pending is freed either way; followers are woken).
local function run_pending(self)
  local C = self.C
  -- The box outlives yields; if this request's coroutine dies mid-flight, the GC frees the
  -- pending, which releases its followers.
  local box = ffi_gc(ffi_new("mcp_oauth2_pending*[1]"), C.mcp_oauth2_pending_free)
  box[0] = pp[0]
  pp[0] = nil
  local ok, err = pcall(resolve, self, box)
  C.mcp_oauth2_pending_free(box)
  ffi_gc(box, nil)
  wake(self)
  if not ok then
    C.mcp_oauth2_decision_free(dp)
    return nil, err
  end
  return true
end

-- ---------------------------------------------------------------------------------------
-- Applying decisions

local function send(status, headers, body)
  ngx.status = status
  for name, value in pairs(headers) do
    ngx_header[name] = value
  end
  if #body > 0 then
    ngx_header["Content-Length"] = #body
    ngx_print(body)
  else
    ngx.send_headers()
  end
  return ngx_exit(HTTP_OK)
end

local function fail_closed(self, detail)
  ngx_log(ngx_ERR, "mcp_oauth2: ", detail)
  local r = self.internal
  return send(r.status, r.headers, r.body)
end

-- The error_log level of this worker (ngx.errlog), read once: a decision whose level is
-- filtered out costs one FFI call and no string.
local sys_level
local function read_sys_level()
  local ok, errlog = pcall(require, "ngx.errlog")
  if ok and type(errlog) == "table" and errlog.get_sys_filter_level then
    local got, level = pcall(errlog.get_sys_filter_level)
    if got and tonumber(level) then
      return tonumber(level)
    end
  end
  return ngx.NOTICE or 6
end
local function log_filter()
  local level = sys_level
  if not level then
    level = read_sys_level()
    sys_level = level
  end
  return level
end

-- Logs a decision at the core's level (debug: allowed, metadata; info: refused; warn: a 503
-- from the AS side; error: internal), with its reason, status and detail. The core's
-- reason and detail never hold a token, a secret or the AS's text.
local function log_decision(C, d)
  if C.mcp_oauth2_decision_log_level(d, u32) ~= OK then
    return
  end
  local level = LOG_LEVELS[tonumber(u32[0])] or ngx_ERR
  if level > log_filter() then
    return
  end
  local reason = C.mcp_oauth2_decision_reason(d, s1) == OK and str1() or "?"
  local status = C.mcp_oauth2_decision_status(d, u16) == OK and tonumber(u16[0]) or nil
  local detail = C.mcp_oauth2_decision_detail(d, s1) == OK and str1() or nil
  ngx_log(level, "mcp_oauth2: ", reason, status and (" " .. status) or " (forwarded)",
    detail and (": " .. detail) or "")
end

-- The validated identity handed to what runs after access() (ngx.ctx.mcp_oauth2): fields
-- are read from the allowed decision, which the table keeps, when first asked for.
local function opt_str(fn)
  return function(C, d)
    if C[fn](d, s1) == OK then
      return str1()
    end
  end
end
local IDENTITY = {
  subject = opt_str("mcp_oauth2_decision_subject"),
  client_id = opt_str("mcp_oauth2_decision_client_id"),
  scope = opt_str("mcp_oauth2_decision_scope"),
  consumer = opt_str("mcp_oauth2_decision_consumer"),
  credential = opt_str("mcp_oauth2_decision_credential"),
  claims_json = opt_str("mcp_oauth2_decision_claims_json"),
  -- The raw introspection result in the configured introspection_format (nil without it).
  introspection = opt_str("mcp_oauth2_decision_introspection"),
  groups = function(C, d)
    if C.mcp_oauth2_decision_consumer_group_count(d, sz) ~= OK then
      return nil
    end
    local groups = {}
    for i = 0, tonumber(sz[0]) - 1 do
      if C.mcp_oauth2_decision_consumer_group(d, i, s1) == OK then
        groups[#groups + 1] = str1()
      end
    end
    return groups
  end,
  claims = function(C, d)
    if C.mcp_oauth2_decision_claims_json(d, s1) == OK then
      return cjson.decode(str1())
    end
  end,
  exchanged_token = function(C, d)
    if C.mcp_oauth2_decision_upstream_authorization(d, s1) == OK then
      return (str_match(str1(), "^[Bb]earer +(.*)$"))
    end
  end,
  valid_until = function(C, d)
    if C.mcp_oauth2_decision_valid_until(d, i64) == OK then
      return tonumber(i64[0])
    end
  end,
  recheck_at = function(C, d)
    if C.mcp_oauth2_decision_recheck_at(d, u64) == OK then
      return tonumber(u64[0])
    end
  end,
}
local identity_mt = {
  __index = function(t, k)
    local get = IDENTITY[k]
    local box = rawget(t, "_d")
    if not get or not box or box[0] == nil then
      return nil
    end
    local v = get(rawget(t, "_C"), box[0])
    rawset(t, k, v)
    return v
  end,
}

local function set_variables(self, id)
  local var = ngx_var
  local names = self.variables
  for i = 1, self.n_variables do
    local name = names[i]
    local v
    if name == "groups" then
      v = id.groups
      v = v and concat(v, ",")
    elseif name == "claims" then
      v = id.claims_json
    else
      v = id[name]
    end
    var["mcp_oauth2_" .. name] = v or ""
  end
end

-- With `underscores_in_headers on`, nginx passes `X_User_Id` beside `X-User-Id`; CGI/WSGI
-- upstreams read both as one. Drops every request header the decision flags (the exact
-- names are already cleared).
local function drop_twins(C, d)
  local headers = ngx_req.get_headers(0, true)
  for name in pairs(headers) do
    if str_find(name, "_", 1, true)
        and C.mcp_oauth2_decision_must_remove(d, name, #name, flag) == OK and flag[0] then
      clear_header(name)
    end
  end
end

local dbox_t = ffi.typeof("mcp_oauth2_decision*[1]")

-- Applies the decision in `dp` to this request and frees it (or hands it to ngx.ctx): sets
-- or clears each claim header (an absent claim's header is cleared, so a client can never
-- supply it), clears the rest of the remove list, sets the exchanged token's Authorization,
-- and returns true, valid_until; or answers the client.
local function apply(self, authz)
  local C = self.C
  local d = dp[0]
  local rc = C.mcp_oauth2_decision_allowed(d, flag)
  if rc ~= OK then
    C.mcp_oauth2_decision_free(dp)
    return fail_closed(self, "decision_allowed: " .. result_name(C, rc))
  end
  log_decision(C, d)
  if flag[0] then
    local names = self.claim_names
    for i = 1, self.n_claims do
      rc = C.mcp_oauth2_decision_claim_header_value(d, i - 1, s1)
      if rc == OK then
        set_header(names[i], str1())
      elseif rc == ABSENT then
        clear_header(names[i])
      else
        C.mcp_oauth2_decision_free(dp)
        return fail_closed(self, "decision_claim_header_value: " .. result_name(C, rc))
      end
    end
    local clear = self.clear
    for i = 1, self.n_clear do
      clear_header(clear[i])
    end
    if self.underscores then
      drop_twins(C, d)
    end
    -- Token exchange: the upstream's Authorization (the client's is in the remove list).
    if self.exchange and C.mcp_oauth2_decision_upstream_authorization(d, s1) == OK then
      set_header("Authorization", str1())
    end
    local valid_until
    if C.mcp_oauth2_decision_valid_until(d, i64) == OK then
      valid_until = tonumber(i64[0])
    end
    if self.context then
      -- The decision lives on in the request's identity table (freed with it).
      local box = ffi_gc(ffi_new(dbox_t), C.mcp_oauth2_decision_free)
      box[0] = d
      dp[0] = nil
      local id = setmetatable({
        _d = box, _C = C, _authz = authz, valid_until = valid_until, decided_at = ngx_now(),
      }, identity_mt)
      ngx.ctx.mcp_oauth2 = id
      if self.n_variables > 0 then
        set_variables(self, id)
      end
    else
      C.mcp_oauth2_decision_free(dp)
    end
    return true, valid_until
  end
  local ok, status, headers, body = pcall(read_response, C, d)
  C.mcp_oauth2_decision_free(dp)
  if not ok then
    return fail_closed(self, status)
  end
  return send(status, headers, body)
end

-- The request body as nginx buffered it, in memory or in its temporary file; from a file
-- at most `max` + 1 bytes (one more than the limit lets the core answer 413).
local function read_body(max)
  ngx_req.read_body()
  local body = ngx_req.get_body_data()
  if body then
    return body
  end
  local file = ngx_req.get_body_file()
  if not file then
    return nil
  end
  local f = io_open(file, "rb")
  if not f then
    return nil
  end
  local data = f:read(max > 0 and (max + 1) or "*a")
  f:close()
  return data or ""
end

--- The request body for the core (method_scopes), read from memory or nginx's temporary
--- file, at most max_request_body_size + 1 bytes. For hosts that build requests themselves.
function _M.request_body(self)
  return read_body(self.max_body)
end

local function put_header(n, name, value)
  local h = req_headers[n]
  h.name, h.name_len = name, #name
  h.value, h.value_len = value, #value
  return n + 1
end

-- Fills `req` from this nginx request (only what the policy reads) and calls begin.
local function begin_here(self, method, uri, body, no_peer)
  local var = ngx_var
  local authz = var.http_authorization
  anchor[1], anchor[2], anchor[3], anchor[4] = method, uri, authz, body
  req.method, req.method_len = method, #method
  req.path, req.path_len = uri, #uri
  local n = 0
  if authz then
    n = put_header(n, "authorization", authz)
  end
  if self.reads_origin then
    local origin = var.http_origin
    if origin then
      anchor[5] = origin
      n = put_header(n, "origin", origin)
      local acrm = var.http_access_control_request_method
      if acrm then
        anchor[6] = acrm
        n = put_header(n, "access-control-request-method", acrm)
      end
    end
  end
  if self.actor_var then
    -- Token exchange with the actor token from a request header (the core reads it).
    local actor = var[self.actor_var]
    if actor then
      anchor[12] = actor
      n = put_header(n, self.actor_header, actor)
    end
  end
  if self.reads_forwarded then
    if no_peer then
      req.peer_addr, req.peer_addr_len = nil, 0
    else
      local peer = var.remote_addr
      anchor[7] = peer
      req.peer_addr, req.peer_addr_len = peer, #peer
    end
    local v = var.http_x_forwarded_proto
    if v then anchor[8] = v; n = put_header(n, "x-forwarded-proto", v) end
    v = var.http_x_forwarded_host
    if v then anchor[9] = v; n = put_header(n, "x-forwarded-host", v) end
    v = var.http_x_forwarded_port
    if v then anchor[10] = v; n = put_header(n, "x-forwarded-port", v) end
    v = var.http_x_forwarded_prefix
    if v then anchor[11] = v; n = put_header(n, "x-forwarded-prefix", v) end
  else
    req.peer_addr, req.peer_addr_len = nil, 0
  end
  req.headers, req.headers_len = req_headers, n
  if body then
    req.body, req.body_len = body, #body
  else
    req.body, req.body_len = nil, 0
  end
  return self.C.mcp_oauth2_validator_begin(self.v, req, ngx_now() * 1000, dp, pp), authz
end

--- access_by_lua* handler: serves PRM, validates the bearer token (asking the AS through
--- nginx when needed), then either rewrites the upstream headers, sets ngx.ctx.mcp_oauth2
--- (the validated identity) and returns true, valid_until (Unix seconds, nil for a token
--- without exp), or ends the request with the decided response.
function _M.access(self)
  if not ticker_started or (cluster_wanted and not cluster_started) then
    start_ticker()
  end
  local var = ngx_var
  local method = var.request_method
  local uri = var.uri
  local body
  -- Reading the body may yield: before any scratch cdata is filled.
  if self.reads_body and method == "POST" then
    body = read_body(self.max_body)
  end
  local rc, authz = begin_here(self, method, uri, body)
  if rc == INVALID_ARGUMENT then
    -- A path that is not UTF-8 (nginx decodes %FF), or a peer address that is not an IP
    -- (a unix socket): the core refused the request before deciding anything. Such a path
    -- never names the metadata document, and without a peer X-Forwarded-* is not believed;
    -- the token is still checked.
    rc, authz = begin_here(self, method, (str_gsub(uri, "[\128-\255]", "?")), body, true)
  end
  if rc ~= OK then
    return fail_closed(self, "validator_begin: " .. result_name(self.C, rc))
  end
  if dp[0] == nil then
    local ok, err = run_pending(self)
    if not ok then
      return fail_closed(self, "validation failed: " .. tostring(err))
    end
  end
  return apply(self, authz)
end

-- ---------------------------------------------------------------------------------------
-- Decisions as tables, for hosts that apply them themselves (the Kong plugin)

local function decision_table(self)
  local C = self.C
  local d = dp[0]
  check(C, C.mcp_oauth2_decision_reason(d, s1), "decision_reason")
  local t = { reason = str1() }
  check(C, C.mcp_oauth2_decision_allowed(d, flag), "decision_allowed")
  log_decision(C, d)
  if not flag[0] then
    t.allowed = false
    t.status, t.headers, t.body = read_response(C, d)
    if C.mcp_oauth2_decision_detail(d, s1) == OK then
      t.detail = str1()
    end
    C.mcp_oauth2_decision_free(dp)
    return t
  end
  t.allowed = true
  t.remove_headers = self.remove
  local set = {}
  for i = 1, self.n_claims do
    local rc = C.mcp_oauth2_decision_claim_header_value(d, i - 1, s1)
    if rc == OK then
      set[self.claim_names[i]] = str1()
    elseif rc ~= ABSENT then
      check(C, rc, "decision_claim_header_value")
    end
  end
  t.set_headers = set
  if C.mcp_oauth2_decision_valid_until(d, i64) == OK then
    t.valid_until = tonumber(i64[0])
  end
  if C.mcp_oauth2_decision_recheck_at(d, u64) == OK then
    t.recheck_at = tonumber(u64[0])
  end
  if C.mcp_oauth2_decision_upstream_authorization(d, s1) == OK then
    t.upstream_authorization = str1()
  end
  local id = {}
  local fields = { "subject", "client_id", "scope", "consumer", "credential", "claims_json", "introspection" }
  for _, f in ipairs(fields) do
    if C["mcp_oauth2_decision_" .. f](d, s1) == OK then
      id[f] = str1()
    end
  end
  if C.mcp_oauth2_decision_consumer_group_count(d, sz) == OK then
    local groups = {}
    for i = 0, tonumber(sz[0]) - 1 do
      check(C, C.mcp_oauth2_decision_consumer_group(d, i, s1), "decision_consumer_group")
      groups[#groups + 1] = str1()
    end
    id.consumer_groups = groups
  end
  t.identity = id
  -- Kept (not freed) until refuse() or release(): the host may refuse the request.
  local box = ffi_gc(ffi_new("mcp_oauth2_decision*[1]"), C.mcp_oauth2_decision_free)
  box[0] = d
  dp[0] = nil
  t.native = box
  return t
end

local function internal_table(self, detail)
  ngx_log(ngx_ERR, "mcp_oauth2: ", detail)
  local r = self.internal
  return { allowed = false, status = r.status, headers = r.headers, body = r.body, reason = "internal_error" }
end

--- Decides one request described as a table, performing the AS calls: `r` = { method,
--- path, headers = { name = value | { values } }, peer_addr, body }. Returns a table:
--- allowed: { allowed = true, reason, remove_headers, set_headers = { name = value },
---   valid_until, identity = { subject, client_id, scope, consumer, consumer_groups,
---   credential, claims_json, introspection } } (then call auth:refuse(d, why) or
---   auth:release(d));
--- denied: { allowed = false, status, headers, body, reason, detail }.
function _M.decide(self, r)
  local C = self.C
  local method = r.method or "GET"
  local path = r.path or "/"
  -- The header array and the strings it points to live in this call's own tables.
  local names, values = {}, {}
  for name, value in pairs(r.headers or {}) do
    if type(value) == "table" then
      for _, item in ipairs(value) do
        names[#names + 1], values[#values + 1] = name, tostring(item)
      end
    else
      names[#names + 1], values[#values + 1] = name, tostring(value)
    end
  end
  local n = #names
  local hs = ffi_new("mcp_oauth2_header[?]", math_max(n, 1))
  for i = 1, n do
    local h = hs[i - 1]
    h.name, h.name_len = names[i], #names[i]
    h.value, h.value_len = values[i], #values[i]
  end
  local peer, body = r.peer_addr, r.body
  anchor[12] = { method, path, peer, body, names, values, hs }
  local q = ffi_new("mcp_oauth2_request")
  q.method, q.method_len = method, #method
  q.path, q.path_len = path, #path
  q.headers, q.headers_len = hs, n
  if peer then
    q.peer_addr, q.peer_addr_len = peer, #peer
  end
  if body then
    q.body, q.body_len = body, #body
  end
  local rc = C.mcp_oauth2_validator_begin(self.v, q, ngx_now() * 1000, dp, pp)
  if rc == INVALID_ARGUMENT then
    local lossy = str_gsub(path, "[\128-\255]", "?")
    anchor[13] = lossy
    q.path, q.path_len = lossy, #lossy
    q.peer_addr, q.peer_addr_len = nil, 0
    rc = C.mcp_oauth2_validator_begin(self.v, q, ngx_now() * 1000, dp, pp)
  end
  if rc ~= OK then
    return internal_table(self, "validator_begin: " .. result_name(C, rc))
  end
  if dp[0] == nil then
    local ok, err = run_pending(self)
    if not ok then
      return internal_table(self, "validation failed: " .. tostring(err))
    end
  end
  local ok, t = pcall(decision_table, self)
  if not ok then
    C.mcp_oauth2_decision_free(dp)
    return internal_table(self, t)
  end
  return t
end

--- The response for refusing an allowed decision of decide() (consumer mapping): `why` is
--- "consumer_not_found" (403), "consumer_groups_not_found" (403) or
--- "consumer_lookup_failed" (503). Returns { status, headers, body, reason } and releases
--- the decision.
function _M.refuse(self, d, why)
  local C = self.C
  local box = d.native
  local refusal = REFUSALS[why]
  if not box or box[0] == nil or not refusal then
    return internal_table(self, "refuse: " .. tostring(why))
  end
  local rc = C.mcp_oauth2_decision_refuse(box[0], refusal, dp)
  C.mcp_oauth2_decision_free(box)
  if rc ~= OK then
    return internal_table(self, "decision_refuse: " .. result_name(C, rc))
  end
  local ok, t = pcall(decision_table, self)
  if not ok then
    C.mcp_oauth2_decision_free(dp)
    return internal_table(self, t)
  end
  return t
end

--- Whether a request header must not reach the upstream, for an allowed decide() result:
--- one of its remove_headers after case and `_`/`-` folding (`X_User_Id` for `X-User-Id`).
function _M.must_remove(self, d, name)
  local box = d.native
  if not box or box[0] == nil then
    return false
  end
  return self.C.mcp_oauth2_decision_must_remove(box[0], name, #name, flag) == OK and flag[0]
end

--- The core's 400 invalid_request (with its challenge) for a request the host cannot hand
--- over whole: nginx's own 400s (a second Authorization header, headers too large) and
--- more request headers than the host reads. Made by the core from a request with two
--- Authorization headers, the one malformed request that never depends on the token.
--- `r` = { path, headers } like decide() (its Authorization headers are replaced).
function _M.bad_request_table(self, r)
  r = r or {}
  local headers = {}
  for name, value in pairs(r.headers or {}) do
    if name:lower() ~= "authorization" then
      headers[name] = value
    end
  end
  headers.authorization = { "Bearer -", "Bearer -" }
  return self:decide({ method = "GET", path = r.path or "/", headers = headers, peer_addr = r.peer_addr })
end

--- content_by_lua* handler of an `error_page 400 = @location`: answers nginx's own 400
--- (e.g. two Authorization headers) with the core's 400 and its challenge.
function _M.bad_request(self)
  local var = ngx_var
  local path = var.uri or "/"
  if path == "" or str_byte(path) ~= 47 then
    path = "/"
  end
  local t = self:bad_request_table({
    path = (str_gsub(path, "[\128-\255]", "?")),
    headers = { origin = var.http_origin, ["access-control-request-method"] = nil },
  })
  if t.allowed then
    self:release(t)
    t = self.internal
  end
  return send(t.status, t.headers, t.body)
end

--- Frees the native decision behind an allowed decide() result (the GC would, later).
function _M.release(self, d)
  if d and d.native then
    self.C.mcp_oauth2_decision_free(d.native)
  end
end

-- ---------------------------------------------------------------------------------------
-- Revocation, open responses, metrics

-- Eviction log entries live this long (a worker applies them within a tick).
local EVICT_TTL = 60
-- Entries applied at most per tick and dict (a flood of evictions is applied in part; the
-- shared dict entries themselves are deleted at once by the evicting worker).
local EVICT_BATCH = 10000
-- A re-validation that could not decide (AS unavailable, recheck location unreachable) is
-- tried again this much later; the response stays open meanwhile.
local RECHECK_RETRY_MS = 1000

local function worker_pid()
  local w = ngx.worker
  return w and w.pid and w.pid() or 0
end

-- Ends every open response of this worker whose token has this cache key, or (with
-- `before`, Unix s) those whose request was decided before then.
local function cut_streams(self, key, why, before)
  local e = self.streams[key]
  if not e or e.cut then
    return
  end
  if not before then
    e.cut = why
    return
  end
  for st in pairs(e.set) do
    if not st.decided_at or st.decided_at <= before then
      st.cut = why
    end
  end
end

-- Forgets a cache key in this worker: a revocation another worker published at
-- `evicted_at` (Unix s). If this worker still had the token's answer, every open response
-- of the token may rest on it: they end. Otherwise those decided after the eviction rest
-- on a fresh answer (the shared dict's copy went with the eviction) and go on.
local function evict_key_here(self, key, evicted_at)
  local had = self.C.mcp_oauth2_validator_evict_key(self.v, key, #key, flag) == OK and flag[0]
  cut_streams(self, key, "token_evicted", not had and evicted_at or nil)
end

-- Publishes evictions that waited for a phase with cosockets (a timer's).
local function publish_queued(premature, cl)
  if not premature and not cl.down then
    cl:evict({})
  end
end

--- Forgets a token (after revocation) in every worker within a tick (0.2 s): this worker's
--- cache and the shared dict at once, then the other workers' in-process caches through an
--- eviction log in the shared dict (cache keys, never tokens). Responses still streaming
--- for this token end too. With the cluster cache, also on every node: the Redis entry is
--- deleted and the key appended to the cluster's eviction log (at once where cosockets
--- work, else from a timer; while Redis is down, when it is back). Returns whether this
--- worker had it cached.
function _M.evict(self, token)
  local C = self.C
  check(C, C.mcp_oauth2_validator_evict(self.v, token, #token, flag), "validator_evict")
  local had = flag[0]
  check(C, C.mcp_oauth2_validator_token_cache_key(self.v, token, #token, key64), "validator_token_cache_key")
  local key = ffi_string(key64, 64)
  local shm = self.shm
  if shm then
    shm:delete(key)
    local seq, err = shm:incr("evict:seq", 1, 0)
    if seq then
      -- "<key> <when, Unix ms> <worker pid>": this worker applied it already.
      local ok, serr = shm:set("evict:" .. seq, key .. " " .. floor(ngx_now() * 1000) .. " " .. worker_pid(),
        EVICT_TTL)
      if not ok then
        ngx_log(ngx_ERR, "mcp_oauth2: eviction log: ", serr)
      end
    else
      ngx_log(ngx_ERR, "mcp_oauth2: eviction log: ", err)
    end
  end
  cut_streams(self, key, "token_evicted")
  local cl = self.cluster
  if cl then
    if cosockets() then
      cl:evict({ key })
    else
      cl:queue({ key })
      ngx.timer.at(0, publish_queued, cl)
    end
  end
  return had
end

-- Applies the eviction logs of the shared dicts: what other workers evicted since the
-- last tick.
local function apply_evictions()
  for shm, seen in pairs(evict_seen) do
    local last = shm:get("evict:seq") or 0
    if last < seen then
      seen = last -- the dict was flushed
    end
    if last > seen then
      if last - seen > EVICT_BATCH then
        seen = last - EVICT_BATCH
      end
      local me = worker_pid()
      for seq = seen + 1, last do
        local entry = shm:get("evict:" .. seq)
        local key, at, pid
        if entry then
          key, at, pid = str_match(entry, "^(%x+) (%d+) (%d+)$")
        end
        if key and tonumber(pid) ~= me then
          for h in pairs(handlers) do
            if h.shm == shm then
              evict_key_here(h, key, tonumber(at) / 1000)
            end
          end
        end
      end
    end
    evict_seen[shm] = last
  end
end

-- The cluster cache's round in each worker (every WATCH_EVERY s, a timer: cosockets):
-- reconnects when Redis was down, publishes evictions that waited, drops what other nodes
-- evicted from this worker's cache and the shared dict (ending the token's streams as a
-- local eviction does), and logs the warning about Redis failing, once a minute at most.
local cluster_busy = setmetatable({}, { __mode = "k" })
cluster_tick = function(premature)
  if premature then
    return
  end
  for h in pairs(handlers) do
    local cl = h.cluster
    if cl and not cluster_busy[cl] then
      cluster_busy[cl] = true
      local ok, keys, back = pcall(cl.watch, cl)
      cluster_busy[cl] = nil
      if not ok then
        ngx_log(ngx_ERR, "mcp_oauth2: cluster cache timer: ", keys)
      else
        local now = ngx_now()
        local shm = h.shm
        for _, key in ipairs(keys) do
          if shm then
            shm:delete(key)
          end
          evict_key_here(h, key, now)
        end
        if back then
          ngx_log(ngx.NOTICE, "mcp_oauth2: cluster cache (Redis at ", cl.address,
            ") answers again; sharing answers with the other nodes")
        end
        local warning = cl:warning(now)
        if warning then
          ngx_log(ngx_WARN, "mcp_oauth2: ", warning)
        end
      end
    end
  end
end

-- One round of the cluster cache's watcher now (busted specs: the mock has no timers).
function _M._cluster_tick()
  return cluster_tick(false)
end

--- True when the cluster cache (cluster_cache_strategy: redis) is in use and Redis
--- answered this worker's last exchange with it; false while it fails (requests then skip
--- it) or without a cluster cache. For health checks.
function _M.cluster_cache_up(self)
  local cl = self.cluster
  return cl ~= nil and not cl.down
end

local weak_keys = { __mode = "k" }


-- The token of an Authorization value the core accepted (`Bearer <token>`).
local function bearer_token(authz)
  return authz and str_match(authz, "^[ \t]*[Bb][Ee][Aa][Rr][Ee][Rr] +([^ \t]+)")
end

--- Starts watching one allowed response (a stream) for the end of its token: `authz` the
--- request's Authorization value, `path` its path, `origin` its Origin (or nil),
--- `valid_until` (Unix s) and `recheck_at` (Unix ms) from the decision, `decided_at` (Unix
--- s) when the request was decided (an eviction another worker made after that, while
--- this worker had no copy of the token's answer, leaves it open). Returns the state
--- to hand to auth:filter() for every body chunk, or nil when there is nothing to watch.
--- Open responses of one token share one entry, so they are re-validated together.
function _M.track(self, authz, path, origin, valid_until, recheck_at, decided_at)
  if not authz then
    return nil
  end
  -- By the header value first: the token's cache key (a SHA-256) is computed once per
  -- token and worker while it has open responses, not per response.
  local e = self.streams_by_authz[authz]
  if e and not e.cut then
    local st = { entry = e, decided_at = decided_at }
    e.set[st] = true
    return st
  end
  local token = bearer_token(authz)
  if not token then
    return nil
  end
  local C = self.C
  if C.mcp_oauth2_validator_token_cache_key(self.v, token, #token, key64) ~= OK then
    return nil
  end
  local key = ffi_string(key64, 64)
  e = self.streams[key]
  if not e or e.cut then
    if recheck_at and self.mode == "capture" and not self.recheck then
      if not self.warned_recheck then
        self.warned_recheck = true
        ngx_log(ngx_WARN, "mcp_oauth2: open responses are not re-validated when their cache ",
          "entry ages out (set opts.recheck_url with the capture transport); they still end ",
          "at the token's exp and on evict")
      end
      recheck_at = nil
    end
    e = {
      exp = valid_until, recheck_at = recheck_at,
      authz = authz, origin = origin,
      -- Only the path is sent to the recheck location: nothing that could split a header.
      path = str_gsub(path or "/", "[^%w%-%._~/%%]", "_"),
      set = setmetatable({}, weak_keys),
      key = key,
    }
    self.streams[key] = e
  end
  self.streams_by_authz[authz] = e
  local st = { entry = e, decided_at = decided_at }
  e.set[st] = true
  return st
end

--- For every body chunk of a tracked response (body_filter_by_lua*): ends the response at
--- the first chunk at or after its token's exp, or once its token was evicted or found no
--- longer valid (the chunk is dropped and the response closed with its last, empty chunk).
--- Returns true for the chunks that still arrive after that (the caller may then abort the
--- upstream connection: `return ngx.ERROR`).
function _M.filter(self, st)
  local arg = ngx.arg
  if st.ended then
    arg[1] = nil
    return true
  end
  local e = st.entry
  local why = e.cut or st.cut
  if not why and e.exp and ngx_now() >= e.exp then
    why = "token_expired"
  end
  if why then
    st.ended = true
    e.set[st] = nil
    arg[1] = ""
    arg[2] = true
    self.counts.streams_cut = self.counts.streams_cut + 1
    ngx_log(ngx_INFO, "mcp_oauth2: response ended: ", why)
    return false
  end
  if arg[2] then
    e.set[st] = nil
  end
  return false
end

--- body_filter_by_lua* handler: `body_filter_by_lua_block { return auth:body_filter() }`
--- in every location whose responses stream (SSE). Ends them when their token ends (see
--- auth:filter()); returns ngx.ERROR for chunks after that, which closes the upstream.
function _M.body_filter(self)
  local id = ngx.ctx.mcp_oauth2
  if not id then
    return
  end
  local st = rawget(id, "_stream")
  if st == nil then
    if ngx.arg[2] then
      -- The whole response in one call (the usual JSON answer): nothing to watch, only
      -- its token's exp to check.
      local exp = rawget(id, "valid_until")
      if exp and ngx_now() >= exp then
        ngx.arg[1] = ""
        ngx_log(ngx_INFO, "mcp_oauth2: response ended: token_expired")
      end
      return
    end
    st = self:track(rawget(id, "_authz"), ngx_var.uri, ngx_var.http_origin, id.valid_until, id.recheck_at,
      rawget(id, "decided_at")) or false
    rawset(id, "_stream", st)
  end
  if st and self:filter(st) then
    return ngx.ERROR
  end
end

-- Re-validates the token of an entry: through the recheck location (capture transport: no
-- subrequest from a timer), else by deciding here (cosockets work in timers). Returns
-- { allowed, reason, valid_until, recheck_at }, or nil when nothing could be decided.
local function recheck_decide(self, e)
  local r = self.recheck
  if self.mode == "capture" then
    local sock = ngx.socket.tcp()
    sock:settimeouts(1000, 5000, 60000)
    local ok, err = sock:connect(r.host, r.port)
    if not ok then
      return nil, "recheck location: " .. tostring(err)
    end
    local lines = {
      -- HTTP/1.0: the answer is never chunked (read whole up to the close).
      "GET ", r.path, " HTTP/1.0\r\nHost: ", r.host, "\r\nConnection: close\r\n",
      "Authorization: ", e.authz, "\r\nX-MCP-OAuth2-Id: ", self.id,
      "\r\nX-MCP-OAuth2-Path: ", e.path, "\r\n",
    }
    if e.origin then
      lines[#lines + 1] = "Origin: " .. e.origin .. "\r\n"
    end
    lines[#lines + 1] = "\r\n"
    ok, err = sock:send(concat(lines))
    local data
    if ok then
      data, err = sock:receive("*a")
    end
    sock:close()
    if not data then
      return nil, "recheck location: " .. tostring(err)
    end
    local status = str_match(data, "^HTTP/1%.%d (%d%d%d)")
    local body = str_match(data, "\r\n\r\n(.*)$")
    local t = status == "200" and body and cjson.decode(body)
    if type(t) ~= "table" then
      return nil, "recheck location answered " .. tostring(status)
    end
    return t
  end
  local d = self:decide({ method = "GET", path = e.path, headers = { authorization = e.authz, origin = e.origin } })
  local t = { allowed = d.allowed == true, reason = d.reason, valid_until = d.valid_until, recheck_at = d.recheck_at }
  self:release(d)
  return t
end

local UNDECIDED = { authorization_server_unavailable = true, internal_error = true }

local function recheck_timer(premature, self, e)
  if premature then
    e.busy = false
    return
  end
  self.counts.rechecks = self.counts.rechecks + 1
  local ok, t, err = pcall(recheck_decide, self, e)
  e.busy = false
  if not ok or not t or (not t.allowed and UNDECIDED[t.reason]) then
    ngx_log(ngx_WARN, "mcp_oauth2: re-validation of an open response undecided, retrying: ",
      tostring(not ok and t or err or t.reason))
    e.recheck_at = ngx_now() * 1000 + RECHECK_RETRY_MS
    return
  end
  if t.allowed then
    e.exp = tonumber(t.valid_until)
    e.recheck_at = tonumber(t.recheck_at)
  elseif not e.cut then
    e.cut = tostring(t.reason)
  end
end

-- Open responses whose token's cache entry aged out: one re-validation per token (the
-- shared dict's single flight makes it one AS call across workers too).
local function check_streams(self, now_ms)
  local by_authz = self.streams_by_authz
  for key, e in pairs(self.streams) do
    if next(e.set) == nil then
      self.streams[key] = nil
      if by_authz[e.authz] == e then
        by_authz[e.authz] = nil
      end
    elseif not e.cut and not e.busy and e.recheck_at and now_ms >= e.recheck_at then
      e.busy = true
      local ok, err = ngx.timer.at(0, recheck_timer, self, e)
      if not ok then
        e.busy = false
        ngx_log(ngx_WARN, "mcp_oauth2: re-validation timer: ", err)
      end
    end
  end
end

local mp = ffi_new("mcp_oauth2_metrics*[1]")
local mq = ffi_new("mcp_oauth2_metrics*[1]")

local function worker_id()
  local w = ngx.worker
  return w and w.id and w.id()
end

local function metrics_key(self, wid)
  return "metrics:" .. self.id .. ":" .. wid
end

-- Writes this worker's snapshot into the shared dict (every second, and when scraped).
local function publish_metrics(self)
  local shm, wid = self.shm, worker_id()
  if not shm or not wid then
    return
  end
  local C = self.C
  check(C, C.mcp_oauth2_validator_metrics(self.v, mp), "validator_metrics")
  local rc = C.mcp_oauth2_metrics_bytes(mp[0], b1)
  if rc == OK then
    shm:set(metrics_key(self, wid), ffi_string(b1[0].ptr, b1[0].len))
  end
  C.mcp_oauth2_metrics_free(mp)
end

local function merged_text(self)
  local C = self.C
  local shm, wid = self.shm, worker_id()
  check(C, C.mcp_oauth2_validator_metrics(self.v, mp), "validator_metrics")
  if shm and wid then
    if C.mcp_oauth2_metrics_bytes(mp[0], b1) == OK then
      shm:set(metrics_key(self, wid), ffi_string(b1[0].ptr, b1[0].len))
    end
    for w = 0, ngx.worker.count() - 1 do
      if w ~= wid then
        local bytes = shm:get(metrics_key(self, w))
        if bytes and C.mcp_oauth2_metrics_from_bytes(bytes, #bytes, mq) == OK then
          C.mcp_oauth2_metrics_merge(mp[0], mq[0])
          C.mcp_oauth2_metrics_free(mq)
        end
      end
    end
  end
  check(C, C.mcp_oauth2_metrics_text(mp[0], s1), "metrics_text")
  return str1()
end

--- The validator's metrics in the Prometheus text exposition format 0.0.4, summed over
--- every worker: this worker's counters now, the others' as they wrote them into the shared
--- dict (each does every second). Without a shared dict: this worker's only.
function _M.metrics(self)
  local ok, text = pcall(merged_text, self)
  self.C.mcp_oauth2_metrics_free(mp)
  self.C.mcp_oauth2_metrics_free(mq)
  if not ok then
    error(text, 0)
  end
  return text
end

--- content_by_lua* handler of a metrics location (keep it off the public listener).
function _M.metrics_endpoint(self)
  local text = self:metrics()
  ngx.status = 200
  ngx_header["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8"
  ngx_header["Cache-Control"] = "no-store"
  ngx_print(text)
  return ngx_exit(HTTP_OK)
end

local function say_json(status, t)
  local body = cjson.encode(t)
  ngx.status = status
  ngx_header["Content-Type"] = "application/json"
  ngx_header["Cache-Control"] = "no-store"
  ngx_header["Content-Length"] = #body
  ngx_print(body)
  return ngx_exit(HTTP_OK)
end

--- content_by_lua* handler of an admin location: `POST` with a form body `token=<token>`
--- evicts it in every worker (auth:evict). Off unless you add the location; keep it on
--- loopback (allow 127.0.0.1; deny all;).
function _M.evict_endpoint(self)
  if ngx_var.request_method ~= "POST" then
    ngx_header["Allow"] = "POST"
    return say_json(405, { error = "method_not_allowed" })
  end
  ngx_req.read_body()
  local args = ngx_req.get_post_args(8)
  local token = args and args.token
  if type(token) ~= "string" or token == "" then
    return say_json(400, { error = "invalid_request", error_description = "token is required" })
  end
  local ok, had = pcall(self.evict, self, token)
  if not ok then
    ngx_log(ngx_ERR, "mcp_oauth2: evict: ", had)
    return say_json(500, { error = "server_error" })
  end
  return say_json(200, { evicted = had })
end

--- content_by_lua* handler of the recheck location (opts.recheck_url; loopback only): the
--- worker timers' way to re-validate the token of an open response through this nginx's
--- own transport. Answers { allowed, reason, valid_until, recheck_at } as JSON.
function _M.recheck_endpoint()
  local var = ngx_var
  local self = by_id[var.http_x_mcp_oauth2_id or ""]
  if not self then
    return say_json(404, { error = "unknown validator" })
  end
  local d = self:decide({
    method = "GET",
    path = var.http_x_mcp_oauth2_path or "/",
    headers = { authorization = var.http_authorization, origin = var.http_origin },
  })
  local t = { allowed = d.allowed == true, reason = d.reason, valid_until = d.valid_until, recheck_at = d.recheck_at }
  self:release(d)
  return say_json(200, t)
end

-- Every TICK seconds in each worker: revocations from other workers, open responses whose
-- token needs re-validating, and (every second) this worker's metrics snapshot.
local tick_count = 0
function _M._tick()
  tick_count = tick_count + 1
  apply_evictions()
  local now_ms = ngx_now() * 1000
  local publish = tick_count % 5 == 0
  local flushed = {}
  for h in pairs(handlers) do
    check_streams(h, now_ms)
    if publish then
      publish_metrics(h)
    end
    local shm = h.shm
    if shm and not flushed[shm] and shm.flush_expired then
      flushed[shm] = true
      shm:flush_expired(FLUSH_PER_TICK)
    end
  end
end

--- The Protected Resource Metadata document (JSON text).
function _M.metadata(self)
  check(self.C, self.C.mcp_oauth2_validator_metadata_document(self.v, b1), "validator_metadata_document")
  return ffi_string(b1[0].ptr, b1[0].len)
end

--- The core's 500 response (status, headers, body) for a host that has no validator to ask
--- (e.g. the Kong plugin with a configuration the core refused). `library` as opts.library.
function _M.internal_error(library)
  local C, err = load_library(library)
  if not C then
    return nil, err
  end
  check(C, C.mcp_oauth2_decision_internal_error(dp), "decision_internal_error")
  local ok, status, headers, body = pcall(read_response, C, dp[0])
  C.mcp_oauth2_decision_free(dp)
  if not ok then
    return nil, status
  end
  return { status = status, headers = headers, body = body, reason = "internal_error" }
end

--- For the internal AS locations: the value of one field of the subrequest's AS request,
--- for set_by_lua_block: "url", "authorization", "content_type", "accept" (the core's
--- Accept: application/json, or application/token-introspection+jwt with
--- introspection_jwt_response), "connection" ("" to keep the connection, "close" with
--- keepalive: false). Reading "accept" and "connection" is how the location shows the
--- caller that it sends them.
function _M.subrequest_var(field)
  local r = ngx.ctx.mcp_oauth2_as
  if not r then
    return ""
  end
  local asked = r.asked
  if asked then
    asked[field] = true
  end
  if field == "url" then
    return r.url
  end
  local h = r.headers
  if field == "authorization" then
    return h.Authorization or h.authorization or ""
  elseif field == "content_type" then
    return h["Content-Type"] or h["content-type"] or ""
  elseif field == "accept" then
    return h.Accept or h.accept or "application/json"
  elseif field == "connection" then
    return r.keepalive == false and "close" or ""
  end
  return ""
end

return _M
