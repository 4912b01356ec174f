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
--                 | nil, kind, message  (kind: connect/timeout/tls/body_too_large/other)
--   location      the internal location for "capture" (default "/_mcp_oauth2_as")
--   lock_wait     seconds a request waits for another worker's AS call
--                 (default: 2 * timeout + 1)
--   library       path of mcp_oauth2.so (default: package.searchpath("mcp_oauth2",
--                 package.cpath)), or an already loaded FFI library
--   native        the Lua module table with config_json (default: require("mcp_oauth2"))

local ffi = require("ffi")
require("resty.mcp_oauth2.cdef")

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
local io_open = io.open
local math_min = math.min
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
}
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
  -- What the config says about the transport (only an explicit `false` changes resty.http's
  -- behaviour); the internal capture location sends only Authorization, Content-Type and
  -- Accept, so extra introspection headers cannot go that way.
  local tls = {}
  if mode ~= "custom" then
    local decoded = require("cjson.safe").decode(json)
    if type(decoded) == "table" then
      if decoded.ssl_verify == false then
        tls.ssl_verify = false
      end
      if decoded.keepalive == false then
        tls.keepalive = false
      end
      if mode == "capture" and type(decoded.headers) == "table" and next(decoded.headers) then
        return nil, "headers: extra introspection headers need resty.http or opts.http; with "
          .. "ngx.location.capture add them with proxy_set_header in " .. location
      end
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

  local self = {
    C = C,
    vbox = vbox,
    v = v,
    shm = shm,
    http = http,
    mode = mode,
    tls = tls,
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
    -- How often a request waited for another one's AS call (tests, diagnostics).
    counts = { worker_waits = 0, shm_waits = 0 },
  }
  return setmetatable(self, mt)
end

-- ---------------------------------------------------------------------------------------
-- AS calls

local function capture_call(location, r)
  local res = ngx.location.capture(location, {
    method = r.method == "GET" and ngx.HTTP_GET or ngx.HTTP_POST,
    body = r.body,
    ctx = { mcp_oauth2_as = r },
  })
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

local function resty_http_call(http, r, tls)
  local httpc = http.new()
  httpc:set_timeout(r.timeout)
  local res, err = httpc:request_uri(r.url, {
    method = r.method,
    body = r.body,
    headers = r.headers,
    -- nil: resty.http's own default (verify, keep alive), which is the config's default too.
    ssl_verify = tls.ssl_verify,
    keepalive = tls.keepalive,
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
function _M._call(self, r)
  local mode = self.mode
  if mode == "capture" then
    return capture_call(self.http, r)
  elseif mode == "resty.http" then
    return resty_http_call(self.http, r, self.tls)
  end
  return self.http(r)
end

-- The HTTP request a pending describes, as a Lua table (copied: the views die at resume).
local function pending_request(C, p)
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
  return {
    method = method, url = url, headers = headers, body = body, timeout = timeout,
    purpose = PURPOSE_NAMES[tonumber(u32[0])] or "other",
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
  local r = pending_request(self.C, box[0])
  local status, ct, body = self:_call(r)
  if not status then
    ngx_log(ngx_WARN, "mcp_oauth2: ", r.purpose, " call failed: ", ct, ": ", body)
  end
  local fetched_at = ngx_now() * 1000
  resume(self, box, nil, status, ct, body)
  return encode(fetched_at, status, ct, body)
end

-- One HTTP step: the shared dict's answer (L2), or the one AS call for this key across all
-- workers (leader), or the leader's result (other workers' requests).
local function http_step(self, box)
  local shm = self.shm
  if not shm then
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
  local lock_wait = self.lock_wait or (2 * tonumber(u64[0]) / 1000 + 1)

  local stored = shm:get(key)
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
    local done, raw = pcall(perform, self, box)
    if not done then
      shm:delete(lock_key)
      error(raw, 0)
    end
    -- Followers of this flight read its result, whatever it was (AS failures included).
    shm:set(flight_key, raw, lock_wait)
    -- An introspection answer is kept for as long as the core keeps the decision it made
    -- (never for failures: they have no cache TTL).
    if purpose == PURPOSE_INTROSPECTION and dp[0] ~= nil
        and C.mcp_oauth2_decision_cache_ttl_ms(dp[0], u64) == OK then
      local ttl = tonumber(u64[0]) / 1000
      if ttl >= 0.001 then
        local set_ok, set_err = shm:set(key, raw, ttl)
        if not set_ok then
          ngx_log(ngx_WARN, "mcp_oauth2: shared cache: ", set_err)
        end
      end
    end
    shm:delete(lock_key)
    return
  elseif err ~= "exists" then
    ngx_log(ngx_WARN, "mcp_oauth2: shared lock: ", err)
    perform(self, box)
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

-- Applies the decision in `dp` to this request and frees it: sets or clears each claim
-- header (an absent claim's header is cleared, so a client can never supply it), clears the
-- rest of the remove list, and returns true, valid_until; or answers the client.
local function apply(self)
  local C = self.C
  local d = dp[0]
  local rc = C.mcp_oauth2_decision_allowed(d, flag)
  if rc ~= OK then
    C.mcp_oauth2_decision_free(dp)
    return fail_closed(self, "decision_allowed: " .. result_name(C, rc))
  end
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
    local valid_until
    if C.mcp_oauth2_decision_valid_until(d, i64) == OK then
      valid_until = tonumber(i64[0])
    end
    C.mcp_oauth2_decision_free(dp)
    return true, valid_until
  end
  local ok, status, headers, body = pcall(read_response, C, d)
  C.mcp_oauth2_decision_free(dp)
  if not ok then
    return fail_closed(self, status)
  end
  return send(status, headers, body)
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
  return self.C.mcp_oauth2_validator_begin(self.v, req, ngx_now() * 1000, dp, pp)
end

--- access_by_lua* handler: serves PRM, validates the bearer token (asking the AS through
--- nginx when needed), then either rewrites the upstream headers and returns true,
--- valid_until (Unix seconds, nil for a token without exp), or ends the request with the
--- decided response.
function _M.access(self)
  local var = ngx_var
  local method = var.request_method
  local uri = var.uri
  local body
  -- Reading the body may yield: before any scratch cdata is filled.
  if self.reads_body and method == "POST" then
    body = read_body(self.max_body)
  end
  local rc = begin_here(self, method, uri, body)
  if rc == INVALID_ARGUMENT then
    -- A path that is not UTF-8 (nginx decodes %FF), or a peer address that is not an IP
    -- (a unix socket): the core refused the request before deciding anything. Such a path
    -- never names the metadata document, and without a peer X-Forwarded-* is not believed;
    -- the token is still checked.
    rc = begin_here(self, method, (str_gsub(uri, "[\128-\255]", "?")), body, true)
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
  return apply(self)
end

-- ---------------------------------------------------------------------------------------
-- Decisions as tables, for hosts that apply them themselves (the Kong plugin)

local function decision_table(self)
  local C = self.C
  local d = dp[0]
  check(C, C.mcp_oauth2_decision_reason(d, s1), "decision_reason")
  local t = { reason = str1() }
  check(C, C.mcp_oauth2_decision_allowed(d, flag), "decision_allowed")
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
  local id = {}
  local fields = { "subject", "client_id", "scope", "consumer", "credential" }
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
---   credential } } (then call auth:refuse(d, why) or auth:release(d));
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

--- Frees the native decision behind an allowed decide() result (the GC would, later).
function _M.release(self, d)
  if d and d.native then
    self.C.mcp_oauth2_decision_free(d.native)
  end
end

--- Forgets a token (after revocation): this worker's cache and the shared dict. Other
--- workers' in-process caches keep it until their entry expires (at most cache_ttl_max).
function _M.evict(self, token)
  local C = self.C
  check(C, C.mcp_oauth2_validator_evict(self.v, token, #token, flag), "validator_evict")
  local had = flag[0]
  if self.shm then
    check(C, C.mcp_oauth2_validator_token_cache_key(self.v, token, #token, key64), "validator_token_cache_key")
    self.shm:delete(ffi_string(key64, 64))
  end
  return had
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

--- For the internal AS location: the value of one field of the subrequest's AS request
--- ("url", "authorization", "content_type", "accept"), for set_by_lua_block.
function _M.subrequest_var(field)
  local r = ngx.ctx.mcp_oauth2_as
  if not r then
    return ""
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
  end
  return ""
end

return _M
