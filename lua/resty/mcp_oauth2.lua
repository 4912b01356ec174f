-- resty.mcp_oauth2: OAuth 2 resource server for MCP servers behind OpenResty / nginx.
--
--   local auth = require("resty.mcp_oauth2").new(conf, opts)   -- module level or init_worker
--   access_by_lua_block { auth:access() }
--
-- The native module `mcp_oauth2` (Rust) decides; this file performs every authorization
-- server call through nginx (ngx.location.capture to an internal location, or resty.http
-- when installed), so a worker never blocks. A lua_shared_dict holds the AS responses for
-- all workers (L2, replayed into the native validator) and a lock in the same dict makes
-- concurrent misses for one token across all workers share one AS call.
--
-- opts (all optional):
--   shm           name of the lua_shared_dict for L2 + locks (default "mcp_oauth2";
--                 false: no cross-worker cache and no cross-worker single flight)
--   http          "auto" (default: resty.http if require finds it, else capture),
--                 "capture", "resty.http", or function(req) -> status, headers, body
--                 | nil, kind, message  (kind: connect/timeout/tls/body_too_large/other)
--   location      the internal location for "capture" (default "/_mcp_oauth2_as")
--   lock_wait     seconds a request waits for another worker's AS call
--                 (default: 2 * timeout + 1)
--   native        the native module table (default: require("mcp_oauth2"))

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
local HTTP_OK = ngx.HTTP_OK
local type = type
local pcall = pcall
local pairs = pairs
local ipairs = ipairs
local select = select
local tonumber = tonumber
local tostring = tostring
local setmetatable = setmetatable
local str_find = string.find
local str_sub = string.sub
local io_open = io.open
local math_min = math.min

local ffi = require("ffi")
local ffi_string = ffi.string
local ffi_cast = ffi.cast
local ffi_new = ffi.new

-- The FFI fast path of the native module (lua/src/ffi.rs).
pcall(ffi.cdef, [[
typedef struct { const unsigned char *ptr; size_t len; } mcp_oauth2_lua_str;
typedef int (*mcp_oauth2_lua_check_fn)(const void *handle,
    const char *method, size_t method_len, const char *path, size_t path_len,
    const char *authz, size_t authz_len, mcp_oauth2_lua_str *values, size_t n_values,
    double *valid_until);
]])

local _M = { _VERSION = "0.1.0" }
local mt = { __index = _M }

local PANIC_BODY = '{"error":"server_error","error_description":"Internal error in the authorization module"}'

-- Responses the module makes itself, when the native validator cannot decide.
local function internal_error(detail)
  ngx_log(ngx_ERR, "mcp_oauth2: ", detail)
  return {
    forward = false,
    status = 500,
    headers = { ["Content-Type"] = "application/json", ["Cache-Control"] = "no-store" },
    body = PANIC_BODY,
    reason = "internal_error",
    shared_ttl = 0,
  }
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

--- Builds the handler. Returns the object, or nil and an error naming the field.
function _M.new(conf, opts)
  opts = opts or {}
  if type(opts) ~= "table" then
    return nil, "opts: must be a table"
  end
  local native = opts.native or require("mcp_oauth2")
  local v, err = native.new(conf)
  if not v then
    return nil, err
  end
  local s = v:settings()

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
  if mode == "capture" and s.extra_headers then
    return nil, "headers: extra introspection headers need resty.http or opts.http; with "
      .. "ngx.location.capture add them with proxy_set_header in " .. location
  end

  local timeout = s.timeout / 1000
  local remove = v:remove_headers()
  local names = v:header_names()
  -- The FFI fast path serves requests whose decision needs only method, path and
  -- Authorization; the native module reports anything else back to the general path.
  local fast = native.ffi_check and not (s.trusted_proxies or s.allowed_origins or s.needs_body)
  local self = {
    v = v,
    fast = fast,
    ffi_check = fast and ffi_cast("mcp_oauth2_lua_check_fn", native.ffi_check) or nil,
    ffi_handle = fast and ffi_cast("const void *", v:ffi_handle()) or nil,
    ffi_values = ffi_new("mcp_oauth2_lua_str[?]", math.max(#names, 1)),
    ffi_valid_until = ffi_new("double[1]"),
    settings = s,
    shm = shm,
    http = http,
    mode = mode,
    remove = remove,
    names = names,
    n_names = #names,
    clear_auth = remove[1] == "Authorization",
    lock_wait = opts.lock_wait or (2 * timeout + 1),
    timeout = timeout,
    needs_body = s.needs_body,
    proxies = s.trusted_proxies,
    origins = s.allowed_origins,
  }
  return setmetatable(self, mt)
end

-- ---------------------------------------------------------------------------------------
-- AS calls

local function capture_call(location, req)
  local res = ngx.location.capture(location, {
    method = req.method == "GET" and ngx.HTTP_GET or ngx.HTTP_POST,
    body = req.body,
    ctx = { mcp_oauth2_as = req },
  })
  if not res then
    return nil, "other", "subrequest failed"
  end
  if res.truncated then
    -- nginx's proxy failed mid-way (or could not connect: 502, timed out: 504).
    local st = res.status
    return nil, st == 504 and "timeout" or (st == 502 and "connect" or "other"), "AS response incomplete (" .. tostring(st) .. ")"
  end
  local ct = res.header["Content-Type"]
  if type(ct) == "table" then
    ct = ct[1]
  end
  return res.status, ct, res.body
end

local function resty_http_call(http, settings, req)
  local httpc = http.new()
  httpc:set_timeout(req.timeout)
  local res, err = httpc:request_uri(req.url, {
    method = req.method,
    body = req.body,
    headers = req.headers,
    ssl_verify = settings.ssl_verify,
    keepalive = settings.keepalive,
  })
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
function _M._call(self, req)
  local mode = self.mode
  if mode == "capture" then
    return capture_call(self.http, req)
  elseif mode == "resty.http" then
    return resty_http_call(self.http, self.settings, req)
  end
  return self.http(req)
end

-- Stored form of an AS exchange: "<status>\n<content-type>\n<body>" or "E\n<kind>\n<message>".
local function encode(status, ct, body)
  if status then
    return status .. "\n" .. (ct or "") .. "\n" .. (body or "")
  end
  return "E\n" .. (ct or "other") .. "\n" .. (body or "")
end

local function replay(pending, stored)
  local a = str_find(stored, "\n", 1, true)
  local b = a and str_find(stored, "\n", a + 1, true)
  if not b then
    return pending:resume(nil, "other", "corrupt shared cache entry")
  end
  local head = str_sub(stored, 1, a - 1)
  local mid = str_sub(stored, a + 1, b - 1)
  local body = str_sub(stored, b + 1)
  if head == "E" then
    return pending:resume(nil, mid, body)
  end
  return pending:resume(tonumber(head), { ["Content-Type"] = mid }, body)
end

local function perform(self, pending)
  local req = pending:request()
  local status, ct, body = self:_call(req)
  if status then
    return pending:resume(status, { ["Content-Type"] = ct }, body), encode(status, ct, body), req.purpose
  end
  ngx_log(ngx_WARN, "mcp_oauth2: ", req.purpose, " call failed: ", ct, ": ", body)
  return pending:resume(nil, ct, body), encode(nil, ct, body), req.purpose
end

-- One step of a pending validation: L2 hit, or the one AS call for this key across all
-- workers (leader), or the leader's result (followers). Returns a decision table, or the
-- next pending step when the validator needs another exchange.
local function resolve_step(self, pending)
  local shm = self.shm
  if not shm then
    return (perform(self, pending))
  end
  local key = pending:cache_key()
  local stored = shm:get(key)
  if stored then
    return replay(pending, stored)
  end

  local lock_key = "lock:" .. key
  local flight_key = "flight:" .. key
  local ok, err = shm:add(lock_key, true, self.lock_wait)
  if ok then
    stored = shm:get(key)
    if stored then
      shm:delete(lock_key)
      return replay(pending, stored)
    end
    local ok2, decision, raw, purpose = pcall(perform, self, pending)
    if not ok2 then
      shm:delete(lock_key)
      return internal_error("validation failed: " .. tostring(decision))
    end
    -- Followers of this flight read its result, whatever it was (AS failures included);
    -- only the L2 entry outlives the flight, and never for AS failures.
    shm:set(flight_key, raw, self.lock_wait)
    -- The decision's TTL describes the token, so it applies to an introspection response
    -- only (other exchanges, e.g. key sets, have their own lifetimes in the validator).
    local ttl = purpose == "introspection" and type(decision) == "table" and decision.shared_ttl or 0
    if ttl > 0 then
      local ok3, err3 = shm:set(key, raw, ttl)
      if not ok3 then
        ngx_log(ngx_WARN, "mcp_oauth2: shared cache: ", err3)
      end
    end
    shm:delete(lock_key)
    return decision
  elseif err ~= "exists" then
    ngx_log(ngx_WARN, "mcp_oauth2: shared lock: ", err)
    return (perform(self, pending))
  end

  -- Follower: another request (any worker) is asking the AS for this token.
  local deadline = ngx_now() + self.lock_wait
  local wait = 0.001
  while true do
    ngx_sleep(wait)
    wait = math_min(wait * 2, 0.01)
    stored = shm:get(key)
    if stored then
      return replay(pending, stored)
    end
    if not shm:get(lock_key) then
      stored = shm:get(flight_key)
      if stored then
        return replay(pending, stored)
      end
      -- The leader vanished without a result: ask ourselves.
      return (perform(self, pending))
    end
    if ngx_now() >= deadline then
      return pending:resume(nil, "timeout", "gave up waiting for a concurrent call")
    end
  end
end

-- At most this many AS exchanges for one request (discovery, keys, validation, exchange).
local MAX_STEPS = 8

function _M._resolve(self, pending)
  local step = pending
  for _ = 1, MAX_STEPS do
    step = resolve_step(self, step)
    if type(step) ~= "userdata" then
      return step
    end
  end
  return internal_error("validation needed more than " .. MAX_STEPS .. " AS exchanges")
end

-- ---------------------------------------------------------------------------------------
-- Applying decisions

local function respond(d)
  ngx.status = d.status
  for name, value in pairs(d.headers) do
    ngx_header[name] = value
  end
  local body = d.body
  if body and #body > 0 then
    ngx_header["Content-Length"] = #body
    ngx_print(body)
  else
    ngx.send_headers()
  end
  return ngx_exit(HTTP_OK)
end

local function forward_table(d)
  for _, name in ipairs(d.remove_headers) do
    clear_header(name)
  end
  for name, value in pairs(d.set_headers) do
    set_header(name, value)
  end
  return true, d.valid_until
end

-- Applies a forward from the fast path, given the values of the claim headers in
-- self.names order (false: claim absent). Setting a header replaces every client-sent copy;
-- an absent claim's header is cleared, so a client can never supply it.
local function forward_rest(self, i, value, ...)
  if i > self.n_names then
    return
  end
  local name = self.names[i]
  if value then
    set_header(name, value)
  else
    clear_header(name)
  end
  return forward_rest(self, i + 1, ...)
end

local function forward_fast(self, valid_until, v1, v2, ...)
  if self.clear_auth then
    clear_header("Authorization")
  end
  local n = self.n_names
  if n > 0 then
    if v1 then set_header(self.names[1], v1) else clear_header(self.names[1]) end
    if n > 1 then
      if v2 then set_header(self.names[2], v2) else clear_header(self.names[2]) end
      if n > 2 then
        forward_rest(self, 3, ...)
      end
    end
  end
  return true, valid_until
end

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
  -- One byte over the limit is enough for the validator to answer 413.
  local data = f:read(max > 0 and (max + 1) or "*a")
  f:close()
  return data
end

local function after_check(self, ok, res, x, ...)
  if res == true then
    return forward_fast(self, x, ...)
  end
  if not ok then
    return respond(internal_error("native validator raised: " .. tostring(res)))
  end
  if res == false then
    return respond(x)
  end
  if type(x) ~= "userdata" then
    return respond(internal_error("validator: " .. tostring((...))))
  end
  local ok2, d = pcall(self._resolve, self, x)
  if not ok2 then
    d = internal_error("validation failed: " .. tostring(d))
  end
  if d.forward then
    return forward_table(d)
  end
  return respond(d)
end

--- access_by_lua* handler: serves PRM, validates the bearer token (asking the AS through
--- nginx when needed), then either rewrites the upstream headers and returns true,
--- valid_until (unix seconds), or ends the request with the decided response.
function _M.access(self)
  local var = ngx_var
  local method = var.request_method
  if self.fast then
    local authz = var.http_authorization
    if authz then
      local uri = var.uri
      local values = self.ffi_values
      local rc = self.ffi_check(self.ffi_handle, method, #method, uri, #uri, authz, #authz,
        values, self.n_names, self.ffi_valid_until)
      if rc == 1 then
        if self.clear_auth then
          clear_header("Authorization")
        end
        local names = self.names
        for i = 1, self.n_names do
          local v = values[i - 1]
          if v.ptr ~= nil then
            set_header(names[i], ffi_string(v.ptr, v.len))
          else
            clear_header(names[i])
          end
        end
        return true, self.ffi_valid_until[0]
      elseif rc < 0 then
        return respond(internal_error("native validator panicked"))
      end
    end
  end
  local peer, origin, acrm, body, xproto, xhost, xport, xprefix
  if self.proxies then
    peer = var.remote_addr
    xproto = var.http_x_forwarded_proto
    xhost = var.http_x_forwarded_host
    xport = var.http_x_forwarded_port
    xprefix = var.http_x_forwarded_prefix
  end
  if self.origins then
    origin = var.http_origin
    if origin then
      acrm = var.http_access_control_request_method
    end
  end
  if self.needs_body and method == "POST" then
    body = read_body(self.settings.max_request_body_size)
  end
  return after_check(self, pcall(self.v.check, self.v, method, var.uri, var.http_authorization,
    peer, origin, acrm, body, xproto, xhost, xport, xprefix))
end

--- Decides one request described as a table (as the native `begin` takes it), performing
--- the AS calls. Returns a decision table (see docs/openresty-and-kong.md). For hosts that
--- apply decisions themselves (the Kong plugin).
function _M.decide(self, req)
  local ok, d, err = pcall(self.v.begin, self.v, req)
  if not ok then
    return internal_error("native validator raised: " .. tostring(d))
  end
  if d == nil then
    return internal_error("validator: " .. tostring(err))
  end
  if type(d) == "userdata" then
    local ok2, d2 = pcall(self._resolve, self, d)
    if not ok2 then
      return internal_error("validation failed: " .. tostring(d2))
    end
    return d2
  end
  return d
end

--- Forgets a token (after revocation): this worker's cache and the shared dict. Other
--- workers' in-process caches keep it until their entry expires (at most cache_ttl_max).
function _M.evict(self, token)
  local had = self.v:evict(token)
  if self.shm then
    local p = self.v:begin({ method = "GET", path = "/", headers = { authorization = "Bearer " .. token } })
    if type(p) == "userdata" then
      self.shm:delete(p:cache_key())
    end
  end
  return had
end

--- The Protected Resource Metadata document (JSON text).
function _M.metadata(self)
  return self.v:metadata()
end

--- For the internal AS location: the value of one field of the subrequest's AS request
--- ("url", "authorization", "content_type", "accept"), for set_by_lua_block.
function _M.subrequest_var(field)
  local req = ngx.ctx.mcp_oauth2_as
  if not req then
    return ""
  end
  if field == "url" then
    return req.url
  end
  local h = req.headers
  if field == "authorization" then
    return h.Authorization or h.authorization or ""
  elseif field == "content_type" then
    return h["Content-Type"] or h["content-type"] or ""
  elseif field == "accept" then
    return h.Accept or h.accept or "application/json"
  end
  return ""
end

return _M
