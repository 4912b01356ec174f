-- A small stand-in for the parts of OpenResty's `ngx` API that resty.mcp_oauth2 uses, for
-- busted specs under plain LuaJIT: a clock the spec moves, shared dicts with expiry, and
-- requests run as coroutines that the spec schedules (an AS call, a sleep or a semaphore
-- wait suspends the request; the spec decides when it continues). Not nginx: the e2e test
-- runs the real thing.
local M = {}

local clock = { t = 1700000000.000 }
local current -- the request whose coroutine runs

function M.now() return clock.t end
function M.advance(seconds) clock.t = clock.t + seconds end

-- Shared dicts: get / set / add / delete with expiry on the mock clock.
local function new_dict()
  local data = {}
  local d = {}
  local function live(key)
    local e = data[key]
    if e and e.exp and e.exp <= clock.t then
      data[key] = nil
      return nil
    end
    return e
  end
  function d.get(_, key)
    local e = live(key)
    return e and e.value
  end
  function d.set(_, key, value, ttl)
    data[key] = { value = value, exp = (ttl and ttl > 0) and clock.t + ttl or nil }
    return true
  end
  function d.add(self, key, value, ttl)
    if live(key) then
      return false, "exists"
    end
    return self:set(key, value, ttl)
  end
  function d.delete(_, key) data[key] = nil end
  function d.incr(self, key, value, init)
    local e = live(key)
    if not e then
      if init == nil then
        return nil, "not found"
      end
      self:set(key, init + value)
      return init + value
    end
    e.value = e.value + value
    return e.value
  end
  function d.ttl(_, key)
    local e = live(key)
    return e and e.exp and (e.exp - clock.t)
  end
  d.data = data
  return d
end

M.logs = {}

local function cur()
  assert(current, "ngx API used outside a request")
  return current
end

local ngx = {
  null = require("cjson").null,
  HTTP_OK = 200, HTTP_GET = 2, HTTP_POST = 8,
  ERR = 4, WARN = 5, NOTICE = 6, INFO = 7, DEBUG = 8,
  shared = { mcp_oauth2 = new_dict() },
  location = {},
}
ngx.var = setmetatable({}, {
  __index = function(_, k) return cur().var[k] end,
  __newindex = function(_, k, v) cur().var[k] = v end,
})
ngx.header = setmetatable({}, {
  __index = function(_, k) return cur().resp_headers[k] end,
  __newindex = function(_, k, v) cur().resp_headers[k] = v end,
})
ngx.req = {
  get_headers = function()
    local h = {}
    for k, v in pairs(cur().headers) do h[k] = v end
    return h
  end,
  get_method = function() return cur().var.request_method end,
  set_header = function(name, value) cur().headers[name:lower()] = value end,
  clear_header = function(name) cur().headers[name:lower()] = nil end,
  read_body = function() end,
  get_body_data = function() return cur().body end,
  get_body_file = function() return nil end,
}
ngx.now = M.now
ngx.log = function(level, ...) M.logs[#M.logs + 1] = { level = level, msg = table.concat({ ... }) } end
ngx.print = function(body) cur().resp_body = (cur().resp_body or "") .. body end
ngx.send_headers = function() end
ngx.exit = function(code) cur().exited = code end
-- A sleep suspends the request; the scheduler advances the clock by its length.
ngx.sleep = function(seconds) coroutine.yield({ sleep = seconds }) end
-- ngx.status, ngx.ctx and ngx.arg (a body filter's chunk and eof) are the request's own.
setmetatable(ngx, {
  __index = function(_, k)
    if k == "status" then return cur().status end
    if k == "ctx" then return cur().ctx end
    if k == "arg" then return cur().arg end
  end,
  __newindex = function(t, k, v)
    if k == "status" then cur().status = v
    elseif k == "ctx" then cur().ctx = v
    else rawset(t, k, v) end
  end,
})

-- The error_log level the specs log at (ngx.errlog's filter): everything.
M.log_level = 8

-- Timers: ngx.timer.at records the callback; the spec runs it as a request
-- (M.request(M.timers[i])) so it may wait for AS answers. ngx.timer.every is not started.
M.timers = {}
ngx.timer = {
  at = function(_, fn, ...)
    local args = { ... }
    M.timers[#M.timers + 1] = function() return fn(false, unpack(args)) end
    return true
  end,
}
-- Workers: the spec says which one runs (metrics are per worker).
M.worker = 0
ngx.worker = {
  id = function() return M.worker end,
  count = function() return 2 end,
  pid = function() return 1000 + M.worker end,
}

-- ngx.semaphore: a wait suspends the request until a post makes count > 0.
local semaphore = {}
semaphore.__index = semaphore
function semaphore.new() return setmetatable({ count = 0 }, semaphore) end
function semaphore:post(n) self.count = self.count + (n or 1) end
function semaphore:wait(timeout)
  if self.count > 0 then
    self.count = self.count - 1
    return true
  end
  return coroutine.yield({ sema = self, timeout = timeout })
end

--- Installs the mocks (before resty.mcp_oauth2 is required).
function M.install()
  rawset(_G, "ngx", ngx)
  package.loaded["ngx.semaphore"] = semaphore
  package.loaded["ngx.errlog"] = { get_sys_filter_level = function() return M.log_level end }
  return ngx
end

M.new_dict = new_dict

--- A request: `vars` (method, uri, authorization, ...) and `headers` (what upstream would
--- get). `fn(r)` runs in its coroutine. Returns the request; run it with M.step.
function M.request(fn, vars, headers)
  local r = {
    var = {},
    headers = {},
    resp_headers = {},
    ctx = {},
    arg = {},
  }
  for k, v in pairs(vars or {}) do r.var[k] = v end
  r.var.request_method = r.var.request_method or "GET"
  r.var.uri = r.var.uri or "/mcp"
  for k, v in pairs(headers or {}) do r.headers[k:lower()] = v end
  r.co = coroutine.create(function() return fn(r) end)
  return r
end

--- Runs `r` until it finishes or suspends; `...` is what the suspension point returns.
--- Sets r.waiting (the suspension: { http = req } / { sleep = s } / { sema = s }) or
--- r.done and r.result (the return values).
function M.step(r, ...)
  local prev = current
  current = r
  local res = { coroutine.resume(r.co, ...) }
  current = prev
  if not res[1] then
    error(res[2], 0)
  end
  if coroutine.status(r.co) == "dead" then
    r.done, r.waiting = true, nil
    r.result = { unpack(res, 2) }
  else
    r.waiting = res[2]
  end
  return r
end

--- Runs every suspended request whose wait is over (posted semaphores, sleeps; a sleep
--- moves the clock) until none can move. Requests waiting for an AS answer stay.
function M.settle(list)
  local moved = true
  while moved do
    moved = false
    for _, r in ipairs(list) do
      local w = r.waiting
      if not r.done and w then
        if w.sema and w.sema.count > 0 then
          w.sema.count = w.sema.count - 1
          M.step(r, true)
          moved = true
        elseif w.sleep then
          M.advance(w.sleep)
          M.step(r)
          moved = true
        end
      end
    end
  end
end

--- An opts.http function that suspends the request until the spec answers it with
--- M.step(r, status, content_type, body) (or nil, kind, message).
function M.suspending_http(calls)
  return function(req)
    calls[#calls + 1] = req
    return coroutine.yield({ http = req })
  end
end

return M
