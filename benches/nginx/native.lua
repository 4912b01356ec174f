-- Per-call cost of the native module's hot path outside nginx (LuaJIT, one core):
-- validator:check on a cache hit with one claim header. Run by bench.sh:
--   luajit benches/nginx/native.lua   (with package.cpath finding lua/mcp_oauth2.so)
local native = require("mcp_oauth2")
local v = assert(native.new({
  resource = "http://127.0.0.1:8080/mcp",
  authorization_servers = { "http://127.0.0.1:9" },
  introspection_endpoint = "http://127.0.0.1:9/introspect",
  client_id = "gateway", client_secret = "gateway-secret",
  claim_to_header = { { claim = "client_id", header = "X-Client-Id" } },
}))
local authz = "Bearer bench-token-0123456789abcdefghijklmnopqrstuvwxyz"
local p = v:begin({ path = "/mcp", headers = { authorization = authz } })
local d = p:resume(200, { ["Content-Type"] = "application/json" },
  '{"active":true,"client_id":"bench","aud":"http://127.0.0.1:8080/mcp","exp":' .. (os.time() + 3600) .. '}')
assert(d.forward)

local function run(label, n, f)
  f(1000) -- warm up the JIT
  local best = math.huge
  for _ = 1, 5 do
    local t = os.clock()
    f(n)
    best = math.min(best, (os.clock() - t) / n * 1e6)
  end
  print(string.format("%-52s %.3f µs/call (best of 5 x %d)", label, best, n))
end

run("native check(), cache hit, 1 claim header", 200000, function(n)
  for _ = 1, n do
    local ok, _, value = v:check("GET", "/mcp", authz)
    if not ok or not value then error("not a cache hit") end
  end
end)
run("native evict() of an absent token (call + SHA-256 floor)", 200000, function(n)
  for _ = 1, n do v:evict("absent") end
end)

local ffi = require("ffi")
ffi.cdef([[
typedef struct { const unsigned char *ptr; size_t len; } mcp_oauth2_lua_str;
typedef int (*mcp_oauth2_lua_check_fn)(const void *handle,
    const char *method, size_t method_len, const char *path, size_t path_len,
    const char *authz, size_t authz_len, mcp_oauth2_lua_str *values, size_t n_values,
    double *valid_until);
]])
local fcheck = ffi.cast("mcp_oauth2_lua_check_fn", native.ffi_check)
local h = ffi.cast("const void *", v:ffi_handle())
local values = ffi.new("mcp_oauth2_lua_str[1]")
local vu = ffi.new("double[1]")
run("FFI fast path, cache hit, 1 claim header (+ ffi.string)", 200000, function(n)
  for _ = 1, n do
    if fcheck(h, "GET", 3, "/mcp", 4, authz, #authz, values, 1, vu) ~= 1 then error("not a cache hit") end
    local _ = ffi.string(values[0].ptr, values[0].len)
  end
end)
