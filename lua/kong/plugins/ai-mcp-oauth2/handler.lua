-- Kong plugin `ai-mcp-oauth2`: the `mcp-oauth2` plugin under the name Kong configurations
-- use, so decK files, KongPlugin manifests and Admin API bodies work unchanged. One
-- implementation: a table of its own (Kong keeps per-plugin state on handler tables) with
-- the same functions. Do not enable it on Kong Enterprise, whose bundled plugin has this
-- name: use `mcp-oauth2` there (docs/openresty-and-kong.md).
local handler = require("kong.plugins.mcp-oauth2.handler")

local alias = {}
for k, v in pairs(handler) do
  alias[k] = v
end
return setmetatable(alias, { __index = handler })
