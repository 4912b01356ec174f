-- wrk script of scripts/soak.sh: the soak's traffic against one gateway, and what came back.
--
--   wrk -tN -cN -d60s -s traffic.lua http://127.0.0.1:PORT -- \
--       TOKENS_FILE PREFIX POOL TTL PRM_PCT MALFORMED_PCT VALID_PCT OUT_FILE
--
-- Threads must equal connections (-tN -cN): with one connection per thread and no
-- pipelining, every response answers the thread's last request, so each status is
-- attributed to the kind of request that got it, and a request that never got an answer
-- (connection error) is noticed when the next one is made.
--
-- Kinds (the request carries its kind in X-Soak-Kind; the soak upstream echoes it):
--   prm        GET of the protected resource metadata (both RFC 9728 URL forms)     -> 200
--   malformed  a broken Authorization header (no token, bad characters, two headers,
--              17 KiB token, other scheme, empty value)                             -> 400/401
--   valid      POST /mcp with a token of the pool (TOKENS_FILE, minted beforehand)  -> 200
--   invalid    POST /mcp with a token the AS never issued                           -> 401
-- Of the requests that are neither prm nor malformed, VALID_PCT % are valid.
-- Invalid tokens: PREFIX .. "w" .. window .. "k" .. k, window = floor(now / TTL) (TTL: the
-- gateways' negative-cache lifetime), k random in [0, POOL): at most POOL distinct invalid
-- tokens per TTL window, each unused after its window, so a gateway whose negative cache
-- works asks the AS about each at most once. POOL = 0: every invalid token is new (pure
-- flood; one AS call per invalid request is then the best a gateway can do).
--
-- done() writes OUT_FILE: "summary", "latency", "sent KIND N", "status KIND STATUS N",
-- "lost KIND N", "inflight KIND N", "not_upstream KIND N" (a 200 that did not come from the
-- upstream, or came from it as another kind) and "unique_invalid N". Each thread writes the
-- distinct tokens it sends to OUT_FILE.seen.<thread> as they come, one key a line
-- ("v:<pool index>", "i:<window>:<k>"; complete once wrk has exited): big tables do not
-- cross from a thread to done() intact (wrk 4.1's thread:get garbled some keys).

local threads = {}
local next_id = 0

function setup(thread)
  next_id = next_id + 1
  thread:set("tid", next_id)
  table.insert(threads, thread)
end

-- Per-thread state (each thread has its own Lua state).
local tokens = {}
local prefix, pool, ttl, prm_pct, mal_pct, valid_pct
local host
local body = '{"jsonrpc":"2.0","id":1,"method":"ping"}'
sent, status_counts, lost, not_upstream = {}, {}, {}, {}
local seen, seen_file = {}, nil
unique_invalid = 0
inflight_kind = false -- the kind of the request waiting for its answer, or false
local counter = 0

local prm_paths = { "/mcp/.well-known/oauth-protected-resource", "/.well-known/oauth-protected-resource/mcp" }
local malformed = {
  { "Bearer" },
  { "Bearer    " },
  { "Bearer a$b%c{d}" },
  { "Bearer \195\169t\195\169" },
  { "Bearer soakTwoHeadersOne", "Bearer soakTwoHeadersTwo" },
  { "Bearer " .. string.rep("A", 17 * 1024) },
  { "Basic dXNlcjpwYXNz" },
  { "" },
}

function init(args)
  local f = assert(io.open(args[1]), "tokens file")
  for line in f:lines() do
    if #line > 0 then tokens[#tokens + 1] = line end
  end
  f:close()
  assert(#tokens > 0, "no tokens in " .. args[1])
  prefix = args[2]
  pool = tonumber(args[3])
  ttl = tonumber(args[4])
  prm_pct = tonumber(args[5]) / 100
  mal_pct = tonumber(args[6]) / 100
  valid_pct = tonumber(args[7]) / 100
  outfile = args[8]
  seen_file = assert(io.open(outfile .. ".seen." .. tid, "w"))
  seen_file:setvbuf("full")
  host = wrk.host .. ":" .. tostring(wrk.port or 80)
  math.randomseed(os.time() * 1000 + tid)
  math.random(); math.random()
end

local function inc(t, k)
  t[k] = (t[k] or 0) + 1
end

local function see(key)
  if not seen[key] then
    seen[key] = true
    seen_file:write(key, "\n")
  end
end

local function build(method, path, kind, auth, with_body)
  local r = { method, " ", path, " HTTP/1.1\r\nHost: ", host, "\r\nX-Soak-Kind: ", kind, "\r\n" }
  if auth then
    for _, a in ipairs(auth) do r[#r + 1] = "Authorization: " .. a .. "\r\n" end
  end
  if with_body then
    r[#r + 1] = "Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: "
    r[#r + 1] = tostring(#body)
    r[#r + 1] = "\r\n\r\n"
    r[#r + 1] = body
  else
    r[#r + 1] = "\r\n"
  end
  return table.concat(r)
end

local calls = 0

function request()
  calls = calls + 1
  -- wrk calls request() once on the first thread's state before any connection exists, to
  -- count pipelined requests (script_verify_request): that request is never sent.
  if tid == 1 and calls == 1 then return build("GET", "/", "verify", nil, false) end
  if inflight_kind then inc(lost, inflight_kind) end
  local r = math.random()
  local kind, req
  if r < prm_pct then
    kind = "prm"
    req = build("GET", prm_paths[math.random(#prm_paths)], kind, nil, false)
  elseif r < prm_pct + mal_pct then
    kind = "malformed"
    req = build("POST", "/mcp", kind, malformed[math.random(#malformed)], true)
  elseif math.random() < valid_pct then
    kind = "valid"
    local i = math.random(#tokens)
    see("v:" .. i)
    req = build("POST", "/mcp", kind, { "Bearer " .. tokens[i] }, true)
  else
    kind = "invalid"
    local tok
    if pool > 0 then
      local w = math.floor(os.time() / ttl)
      local k = math.random(0, pool - 1)
      see("i:" .. w .. ":" .. k)
      tok = prefix .. "w" .. w .. "k" .. k
    else
      counter = counter + 1
      unique_invalid = unique_invalid + 1
      tok = prefix .. "t" .. tid .. "n" .. counter .. "r" .. math.random(1, 1e9)
    end
    req = build("POST", "/mcp", kind, { "Bearer " .. tok }, true)
  end
  inc(sent, kind)
  inflight_kind = kind
  return req
end

function response(status, headers, _)
  local kind = inflight_kind or "unknown"
  inflight_kind = false
  inc(status_counts, kind .. " " .. status)
  if status == 200 and kind ~= "prm" then
    local saw = headers["x-soak-saw"] or headers["X-Soak-Saw"]
    if saw ~= kind then inc(not_upstream, kind) end
  end
end

local function add(into, from)
  for k, v in pairs(from or {}) do into[k] = (into[k] or 0) + v end
end

function done(summary, latency, _)
  local agg = { sent = {}, status = {}, lost = {}, inflight = {}, not_upstream = {} }
  local uniq = 0
  for _, t in ipairs(threads) do
    add(agg.sent, t:get("sent"))
    add(agg.status, t:get("status_counts"))
    add(agg.lost, t:get("lost"))
    add(agg.not_upstream, t:get("not_upstream"))
    local k = t:get("inflight_kind")
    if k then inc(agg.inflight, k) end
    uniq = uniq + (t:get("unique_invalid") or 0)
  end
  local f = assert(io.open(threads[1]:get("outfile"), "w"))
  local e = summary.errors
  f:write(string.format("summary %d %d %d %d %d %d %d\n", summary.duration, summary.requests,
    e.connect, e.read, e.write, e.status, e.timeout))
  f:write(string.format("latency %d %d %d %d\n", math.floor(latency:percentile(50)),
    math.floor(latency:percentile(99)), math.floor(latency.max), math.floor(latency.mean)))
  for k, v in pairs(agg.sent) do f:write("sent ", k, " ", v, "\n") end
  for k, v in pairs(agg.status) do f:write("status ", k, " ", v, "\n") end
  for k, v in pairs(agg.lost) do f:write("lost ", k, " ", v, "\n") end
  for k, v in pairs(agg.inflight) do f:write("inflight ", k, " ", v, "\n") end
  for k, v in pairs(agg.not_upstream) do f:write("not_upstream ", k, " ", v, "\n") end
  f:write("unique_invalid ", uniq, "\n")
  f:close()
end
