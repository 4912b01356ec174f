-- The native part of a decision, outside nginx (LuaJIT, one core): the C ABI calls that
-- resty.mcp_oauth2 makes, through the same FFI declarations, with the request and output
-- cdata preallocated as the wrapper does. Run by bench.sh:
--   luajit benches/nginx/native.lua   (package.path / cpath finding lua/resty and lua/mcp_oauth2.so)
-- Prints µs per call (best of 5 runs).
local ffi = require("ffi")
require("resty.mcp_oauth2.cdef")
local C = ffi.load(assert(package.searchpath("mcp_oauth2", package.cpath)))
local native = require("mcp_oauth2")
local ffi_string = ffi.string

local OK = C.MCP_OAUTH2_RESULT_OK

local function validator(extra)
  local conf = {
    resource = "http://127.0.0.1:8080/mcp",
    authorization_servers = { "http://127.0.0.1:9" },
    introspection_endpoint = "http://127.0.0.1:9/introspect",
    client_id = "gateway", client_secret = "gateway-secret",
    claim_to_header = { { claim = "client_id", header = "X-Client-Id" } },
  }
  for k, v in pairs(extra or {}) do conf[k] = v end
  local json = assert(native.config_json(conf))
  local box = ffi.new("mcp_oauth2_validator*[1]")
  assert(C.mcp_oauth2_validator_new(json, #json, box, nil) == OK)
  return ffi.gc(box, C.mcp_oauth2_validator_free)
end

local cached = validator()
local uncached = validator({ cache_introspection = false })
-- Token exchange (RFC 8693) after validation: the exchanged token is cached too.
local exchanging = validator({
  passthrough_credentials = true,
  token_exchange = {
    enabled = true,
    token_endpoint = "http://127.0.0.1:9/token",
    client_id = "exchanger", client_secret = "exchanger-secret",
    request = { audience = { "upstream" } },
  },
})

local authz = "Bearer bench-token-0123456789abcdefghijklmnopqrstuvwxyz"
local answer = '{"active":true,"client_id":"bench","aud":"http://127.0.0.1:8080/mcp","exp":'
  .. (os.time() + 3600) .. '}'
local ct = "application/json"

local req = ffi.new("mcp_oauth2_request")
local hdr = ffi.new("mcp_oauth2_header[1]")
local rh = ffi.new("mcp_oauth2_header[1]")
local dp = ffi.new("mcp_oauth2_decision*[1]")
local pp = ffi.new("mcp_oauth2_pending*[1]")
local s1 = ffi.new("mcp_oauth2_str[1]")
local s2 = ffi.new("mcp_oauth2_str[1]")
local b1 = ffi.new("mcp_oauth2_bytes[1]")
local u64 = ffi.new("uint64_t[1]")
local i64 = ffi.new("int64_t[1]")
local u32 = ffi.new("uint32_t[1]")
local sz = ffi.new("size_t[1]")
local flag = ffi.new("bool[1]")
local method, path = "GET", "/mcp"
req.method, req.method_len = method, #method
req.path, req.path_len = path, #path
hdr[0].name, hdr[0].name_len = "authorization", 13
hdr[0].value, hdr[0].value_len = authz, #authz
req.headers, req.headers_len = hdr, 1
rh[0].name, rh[0].name_len = "Content-Type", 12
rh[0].value, rh[0].value_len = ct, #ct

local function now_ms()
  return os.time() * 1000
end

-- What the wrapper reads from an allowed decision: one claim value, valid_until, then free.
local function read_forward()
  local d = dp[0]
  assert(C.mcp_oauth2_decision_allowed(d, flag) == OK and flag[0])
  local value
  if C.mcp_oauth2_decision_claim_header_value(d, 0, s1) == OK then
    value = ffi_string(s1[0].ptr, s1[0].len)
  end
  C.mcp_oauth2_decision_valid_until(d, i64)
  C.mcp_oauth2_decision_free(dp)
  return value
end

local function begin(v)
  assert(C.mcp_oauth2_validator_begin(v[0], req, now_ms(), dp, pp) == OK)
end

-- One uncached decision as the wrapper makes it: begin, every HTTP getter (the request for
-- the subrequest), the cache key, resume with the AS answer, the decision read, frees.
local function uncached_decision()
  begin(uncached)
  local p = pp[0]
  C.mcp_oauth2_pending_get_state(p, u32)
  C.mcp_oauth2_pending_cache_key(p, s1)
  local key = ffi_string(s1[0].ptr, s1[0].len)
  C.mcp_oauth2_pending_purpose(p, u32)
  C.mcp_oauth2_pending_method(p, s1)
  local m = ffi_string(s1[0].ptr, s1[0].len)
  C.mcp_oauth2_pending_url(p, s1)
  local url = ffi_string(s1[0].ptr, s1[0].len)
  C.mcp_oauth2_pending_header_count(p, sz)
  local headers = {}
  for i = 0, tonumber(sz[0]) - 1 do
    C.mcp_oauth2_pending_header(p, i, s1, s2)
    headers[ffi_string(s1[0].ptr, s1[0].len)] = ffi_string(s2[0].ptr, s2[0].len)
  end
  C.mcp_oauth2_pending_body(p, b1)
  local body = ffi_string(b1[0].ptr, b1[0].len)
  C.mcp_oauth2_pending_timeout_ms(p, u64)
  assert(C.mcp_oauth2_pending_resume(p, now_ms(), 200, rh, 1, answer, #answer, dp) == OK)
  C.mcp_oauth2_pending_free(pp)
  C.mcp_oauth2_decision_cache_ttl_ms(dp[0], u64)
  if not read_forward() then error("no claim value") end
  return key, m, url, headers, body
end

local function run(label, n, f)
  f(2000) -- warm up the JIT
  local best = math.huge
  for _ = 1, 5 do
    local t = os.clock()
    f(n)
    best = math.min(best, (os.clock() - t) / n * 1e6)
  end
  print(string.format("%-66s %.3f µs/call (best of 5 x %d)", label, best, n))
  return best
end

-- Fill the cached validator's cache once.
begin(cached)
assert(C.mcp_oauth2_pending_resume(pp[0], now_ms(), 200, rh, 1, answer, #answer, dp) == OK)
C.mcp_oauth2_pending_free(pp)
C.mcp_oauth2_decision_free(dp)

local plain = run("cache hit: begin + claim value + valid_until + free", 200000, function(n)
  for _ = 1, n do
    begin(cached)
    if not read_forward() then error("not a cache hit") end
  end
end)

-- Fill the exchanging validator's caches: introspection, then the exchange.
begin(exchanging)
assert(C.mcp_oauth2_pending_resume(pp[0], now_ms(), 200, rh, 1, answer, #answer, dp) == OK)
assert(dp[0] == nil, "the exchange step follows")
C.mcp_oauth2_pending_purpose(pp[0], u32)
assert(u32[0] == C.MCP_OAUTH2_PURPOSE_TOKEN_EXCHANGE)
local exchanged = '{"access_token":"exchanged-0123456789abcdefghijklmnopqrstuvwxyz",'
  .. '"issued_token_type":"urn:ietf:params:oauth:token-type:access_token","token_type":"Bearer","expires_in":3600}'
assert(C.mcp_oauth2_pending_resume(pp[0], now_ms(), 200, rh, 1, exchanged, #exchanged, dp) == OK)
C.mcp_oauth2_pending_free(pp)
C.mcp_oauth2_decision_free(dp)

-- What the wrapper reads with an exchange: the upstream Authorization too.
local function read_exchanged()
  local d = dp[0]
  assert(C.mcp_oauth2_decision_allowed(d, flag) == OK and flag[0])
  local value
  if C.mcp_oauth2_decision_claim_header_value(d, 0, s1) == OK then
    value = ffi_string(s1[0].ptr, s1[0].len)
  end
  assert(C.mcp_oauth2_decision_upstream_authorization(d, s2) == OK)
  local authz = ffi_string(s2[0].ptr, s2[0].len)
  C.mcp_oauth2_decision_valid_until(d, i64)
  C.mcp_oauth2_decision_free(dp)
  return value, authz
end
local ex = run("cached exchanged token: begin + claim + upstream Authorization + free", 200000, function(n)
  for _ = 1, n do
    begin(exchanging)
    if dp[0] == nil then error("not a cache hit") end
    read_exchanged()
  end
end)
print(string.format("cached exchanged token over a plain cache hit: %.2fx (target <= 1.3)", ex / plain))
run("uncached: begin -> pending getters -> resume -> decision read", 50000, function(n)
  for _ = 1, n do uncached_decision() end
end)
local key = ffi.new("uint8_t[64]")
run("token_cache_key (call + SHA-256 floor)", 200000, function(n)
  for _ = 1, n do C.mcp_oauth2_validator_token_cache_key(cached[0], authz, #authz, key) end
end)
