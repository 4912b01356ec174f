-- resty.mcp_oauth2.cluster: the cluster cache on Redis (`cluster_cache_strategy: redis`)
-- for nginx, through resty.redis and cosockets (never blocking a worker). It implements
-- the contract of docs/cluster-cache.md, the one the core's own client (src/cluster.rs)
-- implements for Rust, C and demo-proxy nodes, so every kind of node shares one Redis:
--
--   <prefix>:answer:<key>     "<fetched_at ms>\n<status>\n<content-type>\n<body>", SET PX <ttl>
--   <prefix>:lock:<key>       SET NX PX <timeout>: the node fetching that answer
--   <prefix>:evictions:seq    INCR: the number of the last eviction
--   <prefix>:evictions:log    ZADD <n> <key>: evicted keys by number, the newest 10,000
--
-- <key> is the pending's cache key (mcp_oauth2_pending_cache_key: a digest, never a token).
-- One object per validator and worker: its keepalive pool, whether Redis is down (then
-- requests skip it until the worker's watcher timer reconnects), the eviction log's last
-- number seen, evictions waiting for Redis, and the failure to warn about.

local ngx = ngx
local type = type
local pcall = pcall
local tostring = tostring
local tonumber = tonumber
local rawget = rawget
local setmetatable = setmetatable
local math_max = math.max
local ipairs = ipairs
local str_find = string.find
local str_match = string.match
local floor = math.floor
local ngx_now = ngx.now
local ngx_sleep = ngx.sleep
local null = ngx.null

local _M = {}
local mt = { __index = _M }
local pool_seq = 0

-- How often the watcher reads the eviction log, and tries to reconnect while Redis is down.
_M.WATCH_EVERY = 0.25
_M.RETRY_EVERY = 1
-- Evictions the log keeps; evictions waiting for Redis to come back, at most.
local EVICTIONS_KEPT = 10000
-- How often a node polls for an answer another node is fetching.
local WAIT_POLL = 0.01
-- One warning per this while Redis fails (per worker).
_M.WARN_EVERY = 60
-- Idle pooled connections are closed after this (ms).
local IDLE_MS = 60000

-- The look-up, atomically: the answer, else 1 when this node took the lock, else 0.
local LOOKUP = "local v = redis.call('GET', KEYS[1]) "
  .. "if v then return v end "
  .. "if redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[1]) then return 1 end "
  .. "return 0"
-- An eviction, atomically: delete the answer, number the eviction, log it, trim the log.
local EVICT = "redis.call('DEL', KEYS[3]) "
  .. "local n = redis.call('INCR', KEYS[2]) "
  .. "redis.call('ZADD', KEYS[1], n, ARGV[1]) "
  .. "redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -tonumber(ARGV[2]) - 1) "
  .. "return n"

--- The Redis client module: resty.redis (OpenResty, Kong), or the same library where
--- Debian's lua-nginx-redis installs it (nginx.redis). nil and a message when neither loads.
function _M.client()
  for _, name in ipairs({ "resty.redis", "nginx.redis" }) do
    local ok, m = pcall(require, name)
    if ok and type(m) == "table" and m.new then
      return m, name
    end
  end
  return nil, "cluster_cache_strategy: redis needs resty.redis (lua-resty-redis; Debian: "
    .. "lua-nginx-redis), and require(\"resty.redis\") finds none in lua_package_path"
end

local function given(v)
  if v == nil or v == null then
    return nil
  end
  return v
end

--- The cluster cache of a configuration (the core's JSON, decoded), or nil when
--- cluster_cache_strategy is not redis; nil, message when resty.redis is missing. The core
--- validated the fields already; the defaults here are the core's (docs/cluster-cache.md).
function _M.new(decoded)
  if type(decoded) ~= "table" or given(decoded.cluster_cache_strategy) ~= "redis" then
    return nil
  end
  local redis, err = _M.client()
  if not redis then
    return nil, err
  end
  local r = given(decoded.cluster_cache_redis)
  if type(r) ~= "table" then
    r = {}
  end
  local host = given(r.host) or "127.0.0.1"
  local port = tonumber(given(r.port)) or 6379
  local database = tonumber(given(r.database)) or 0
  local username, password = given(r.username), given(r.password)
  local ssl, ssl_verify = given(r.ssl) == true, given(r.ssl_verify) == true
  local pool_size = tonumber(given(r.keepalive_pool_size)) or 256
  local backlog = tonumber(given(r.keepalive_backlog))
  local timeout = tonumber(given(decoded.timeout)) or 10000
  local self = {
    redis = redis,
    host = host,
    port = port,
    database = database,
    username = username,
    password = password,
    ssl = ssl,
    ssl_verify = ssl_verify,
    -- The core accepts only host as the TLS name for now.
    server_name = given(r.server_name) or host,
    connect_timeout = tonumber(given(r.connect_timeout)) or 2000,
    send_timeout = tonumber(given(r.send_timeout)) or 2000,
    read_timeout = tonumber(given(r.read_timeout)) or 2000,
    pool_size = pool_size,
    backlog = backlog,
    prefix = given(r.prefix) or "mcp_oauth2",
    -- The lock's lifetime and how long a node waits for another's call: `timeout` (ms).
    lock_ms = math_max(1, floor(timeout)),
    -- Up until an exchange fails: a validator built in a request (the Kong plugin, after
    -- a configuration change) shares answers from its first request; one that fails marks
    -- Redis down, and requests skip it until the watcher reconnects.
    down = false,
    started = false,
    seen = 0,
    own = {},
    n_own = 0,
    unpublished = {},
    failure = nil,
    warned = nil,
    -- Diagnostics (tests): look-ups by outcome, failed exchanges.
    counts = { hits = 0, misses = 0, leads = 0, waits = 0, errors = 0, evictions_read = 0 },
  }
  -- Pooled connections are authenticated, SELECTed and maybe TLS: each cluster cache object
  -- has its own pool (nothing of the password in its name: nginx logs pool names at debug).
  pool_seq = pool_seq + 1
  self.pool = "mcp_oauth2:cluster:" .. pool_seq .. ":" .. host .. ":" .. port .. ":" .. database
  self.address = host .. ":" .. port
  -- The longest one Redis exchange may take (s).
  self.io_wait = (self.connect_timeout + self.send_timeout + self.read_timeout) / 1000
  return setmetatable(self, mt)
end

--- What a failure says, without anything Redis sent back but its error code (the rest
--- could echo a key) and never a secret.
local function describe(err)
  err = tostring(err)
  if err == "timeout" or str_find(err, "timed out", 1, true) then
    return "timed out"
  end
  if str_find(err, "handshake", 1, true) or str_find(err, "certificate", 1, true) then
    return "TLS failed: " .. (str_match(err, "^TLS handshake failed: (.*)$") or err)
  end
  local code = str_match(err, "^(%u+) ")
  if code == "WRONGPASS" or (code == "ERR" and str_find(err, "AUTH", 1, true)) then
    return "authentication failed (check cluster_cache_redis.username and password)"
  elseif code == "NOAUTH" then
    return "Redis requires a password (set cluster_cache_redis.password)"
  elseif code == "NOPERM" then
    return "permission denied (check the ACL of cluster_cache_redis.username)"
  elseif code then
    return "error " .. code
  end
  -- A socket error from nginx ("connection refused", "closed", "no resolver defined ...").
  return "connection failed: " .. err
end
_M.describe = describe

local function set_timeouts(redis, red, c, s, r)
  -- rawget: resty.redis makes any other name a Redis command (it would send SET_TIMEOUTS).
  if rawget(redis, "set_timeouts") then
    return red:set_timeouts(c, s, r)
  end
  -- resty.redis before 0.28 (Debian's lua-nginx-redis 0.27) has set_timeout only.
  local sock = rawget(red, "_sock")
  if sock and sock.settimeouts then
    return sock:settimeouts(c, s, r)
  end
  return red:set_timeout(r)
end

-- A connection from this worker's pool, or a new one (TLS, AUTH, SELECT done once per
-- connection). nil, err.
local function connect(self)
  local red, err = self.redis:new()
  if not red then
    return nil, err
  end
  set_timeouts(self.redis, red, self.connect_timeout, self.send_timeout, self.read_timeout)
  local ok
  ok, err = red:connect(self.host, self.port, { pool = self.pool, pool_size = self.pool_size, backlog = self.backlog })
  if not ok then
    return nil, err
  end
  local reused = red:get_reused_times()
  if reused and reused > 0 then
    return red
  end
  if self.ssl then
    local sock = rawget(red, "_sock")
    ok, err = sock:sslhandshake(nil, self.server_name, self.ssl_verify)
    if not ok then
      red:close()
      return nil, "TLS handshake failed: " .. tostring(err)
    end
  end
  if self.password then
    if self.username then
      ok, err = red:auth(self.username, self.password)
    else
      ok, err = red:auth(self.password)
    end
    if not ok then
      red:close()
      return nil, err
    end
  end
  if self.database ~= 0 then
    ok, err = red:select(self.database)
    if not ok then
      red:close()
      return nil, err
    end
  end
  return red
end

-- Marks Redis down and remembers why, for the next warning.
function _M.fail(self, what, err)
  self.down = true
  self.counts.errors = self.counts.errors + 1
  self.failure = "cluster cache (Redis at " .. self.address .. ", cluster_cache_redis) " .. what
    .. " failed: " .. describe(err)
  if self.on_error then
    self.on_error()
  end
end

-- Runs f(red) on a pooled connection: its results, or nil after a failure (counted,
-- Redis marked down). f returns nil/false, err on failure.
local function with(self, what, f, ...)
  local okc, red, err = pcall(connect, self)
  if not okc or not red then
    self:fail(what, okc and err or red)
    return nil
  end
  local ok, a, b = pcall(f, red, ...)
  if not ok then
    red:close()
    self:fail(what, a)
    return nil
  end
  if a == nil or a == false then
    red:close()
    self:fail(what, b)
    return nil
  end
  red:set_keepalive(IDLE_MS, self.pool_size)
  return a, b
end

function _M.key(self, kind, key)
  return self.prefix .. ":" .. kind .. ":" .. key
end

local function lookup_cmd(red, self, key)
  local answer = self:key("answer", key)
  -- A plain GET first: an answer already there costs one round trip and no script.
  local v, err = red:get(answer)
  if v == nil or v == false then
    return nil, err
  end
  if v ~= null then
    return { v }
  end
  v, err = red:eval(LOOKUP, 2, answer, self:key("lock", key), self.lock_ms)
  if v == nil or v == false then
    return nil, err
  end
  return { v }
end

--- The stored answer for `key`, or this node's part in fetching it:
--- "hit", stored | "lead" (this node holds the lock) | "wait" (another node fetches) |
--- "down" (Redis unreachable or failing: fetch alone).
function _M.lookup(self, key)
  if self.down then
    return "down"
  end
  local got = with(self, "look-up", lookup_cmd, self, key)
  if not got then
    return "down"
  end
  local v = got[1]
  if type(v) == "string" then
    return "hit", v
  elseif v == 1 then
    return "lead"
  end
  return "wait"
end

local function poll_cmd(red, self, lock, answer)
  red:init_pipeline(2)
  red:exists(lock)
  red:get(answer)
  local res, err = red:commit_pipeline()
  if not res then
    return nil, err
  end
  if type(res[1]) == "table" then
    return nil, res[1][2]
  end
  if type(res[2]) == "table" then
    return nil, res[2][2]
  end
  return { res[1], res[2] }
end

--- Waits (cosockets: the worker serves other requests) for the answer another node is
--- fetching, at most the lock's lifetime (`timeout`): reads EXISTS lock then GET answer
--- every 10 ms. The stored answer, or nil: that node finished without an answer to share,
--- died, is slower than `timeout`, or Redis failed; then this node calls the server.
function _M.wait(self, key)
  local lock, answer = self:key("lock", key), self:key("answer", key)
  local deadline = ngx_now() + self.lock_ms / 1000
  while ngx_now() < deadline do
    ngx_sleep(WAIT_POLL)
    if self.down then
      return nil
    end
    local got = with(self, "wait", poll_cmd, self, lock, answer)
    if not got then
      return nil
    end
    if type(got[2]) == "string" then
      return got[2]
    end
    if got[1] == 0 then
      return nil
    end
  end
  return nil
end

local function store_cmd(red, self, key, raw, ttl_ms)
  red:init_pipeline(raw and 4 or 3)
  red:multi()
  if raw then
    red:set(self:key("answer", key), raw, "PX", ttl_ms)
  end
  red:del(self:key("lock", key))
  red:exec()
  local res, err = red:commit_pipeline()
  if not res then
    return nil, err
  end
  local exec = res[#res]
  if type(exec) ~= "table" or exec[1] == false then
    return nil, type(exec) == "table" and exec[2] or "EXEC failed"
  end
  return true
end

--- Stores the answer this node fetched for `ttl_ms` (what is left of the core's own entry:
--- never longer) and releases the lock, in one MULTI; `raw` nil only releases the lock
--- (failures and answers not to be kept are never shared).
function _M.store(self, key, raw, ttl_ms)
  if self.down then
    return
  end
  if raw and not (ttl_ms and ttl_ms >= 1) then
    raw = nil
  end
  with(self, raw and "store" or "unlock", store_cmd, self, key, raw, ttl_ms and floor(ttl_ms))
end

local function publish_cmd(red, self, keys)
  local log, seq = self:key("evictions", "log"), self:key("evictions", "seq")
  local numbers = {}
  for i, key in ipairs(keys) do
    local n, err = red:eval(EVICT, 3, log, seq, self:key("answer", key), key, EVICTIONS_KEPT)
    if not n then
      return nil, err
    end
    numbers[i] = n
  end
  return numbers
end

-- Remembers keys for publication when Redis is back (the newest EVICTIONS_KEPT).
local function keep_unpublished(self, keys)
  local all = self.unpublished
  for _, k in ipairs(keys) do
    all[#all + 1] = k
  end
  local excess = #all - EVICTIONS_KEPT
  if excess > 0 then
    local kept = {}
    for i = excess + 1, #all do
      kept[#kept + 1] = all[i]
    end
    self.unpublished = kept
  end
end

--- Deletes the stored answers under `keys` and tells every node to drop its copies
--- (DEL answer, INCR seq, ZADD log, trim: one script per key). Needs cosockets: call it
--- in a phase that has them, or from a timer. While Redis is down the keys wait (up to the
--- log's size) and go out when the watcher reconnects.
function _M.evict(self, keys)
  if self.down then
    keep_unpublished(self, keys)
    return false
  end
  local all = self.unpublished
  self.unpublished = {}
  for _, k in ipairs(keys) do
    all[#all + 1] = k
  end
  local numbers = with(self, "evict", publish_cmd, self, all)
  if not numbers then
    keep_unpublished(self, all)
    return false
  end
  if self.n_own < EVICTIONS_KEPT then
    for _, n in ipairs(numbers) do
      self.own[n] = true
      self.n_own = self.n_own + 1
    end
  end
  return true
end

--- Queues keys for the next watcher round (phases without cosockets).
function _M.queue(self, keys)
  keep_unpublished(self, keys)
end

local function watch_cmd(red, self, started, seen)
  local log, seq = self:key("evictions", "log"), self:key("evictions", "seq")
  local current, err = red:get(seq)
  if current == nil or current == false then
    return nil, err
  end
  current = tonumber(current) or 0
  if not started then
    -- Older evictions concern answers this node never had.
    return { {}, current }
  end
  -- Fewer than seen: Redis restarted empty; read its log from the start.
  local from = current < seen and 0 or seen
  if current == from then
    return { {}, current }
  end
  local entries
  entries, err = red:zrangebyscore(log, "(" .. from, current, "WITHSCORES")
  if not entries then
    return nil, err
  end
  if entries == null then
    entries = {}
  end
  return { entries, current }
end

--- The watcher's round (every WATCH_EVERY s, from a timer): reconnects when Redis was
--- down, publishes evictions that waited, and returns the keys other nodes (or workers)
--- evicted since the last round, and true when Redis just came back.
function _M.watch(self)
  local was_down = self.down
  if was_down and self.retry_at and ngx_now() < self.retry_at then
    return {}, false
  end
  local got = with(self, "eviction log", watch_cmd, self, self.started, self.seen)
  if not got then
    -- nginx logs every failed cosocket connect itself (lua_socket_log_errors): while Redis
    -- is down, one attempt a second.
    self.retry_at = ngx_now() + _M.RETRY_EVERY
    return {}, false
  end
  local entries, current = got[1], got[2]
  self.down = false
  self.started = true
  if current < self.seen then
    self.own, self.n_own = {}, 0
  end
  self.seen = current
  local keys = {}
  local own = self.own
  for i = 1, #entries - 1, 2 do
    local n = tonumber(entries[i + 1])
    if n and own[n] then
      own[n] = nil
      self.n_own = self.n_own - 1
    else
      keys[#keys + 1] = entries[i]
    end
  end
  self.counts.evictions_read = self.counts.evictions_read + #keys
  if #self.unpublished > 0 then
    self:evict({})
  end
  return keys, was_down and self.warned ~= nil
end

--- The warning about Redis failing, at most once per WARN_EVERY while it fails; nil
--- otherwise. Never holds a secret.
function _M.warning(self, now)
  if self.warned and now < self.warned + _M.WARN_EVERY then
    return nil
  end
  local failure = self.failure
  if not failure then
    return nil
  end
  self.failure = nil
  self.warned = now
  return failure .. "; serving from this node's own cache and the authorization server"
end

-- The scripts, for the busted spec.
_M._LOOKUP = LOOKUP
_M._EVICT = EVICT

return _M
