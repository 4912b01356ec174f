-- wrk script for scenario (d): every request carries a token never seen before, so each one
-- is introspected (no cache entry, and no concurrent request to share an AS call with).
local counter = 0
local prefix = "bench-" .. tostring(math.random(1, 1e9)) .. "-"

request = function()
  counter = counter + 1
  return wrk.format(nil, nil, { ["Authorization"] = "Bearer " .. prefix .. counter .. "-0123456789abcdefghij" })
end
