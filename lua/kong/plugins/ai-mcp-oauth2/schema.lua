-- Kong schema of `ai-mcp-oauth2`: the `mcp-oauth2` schema (fields, defaults, the core's
-- validation) under the name Kong configurations use.
local schema = require("kong.plugins.mcp-oauth2.schema")

local alias = {}
for k, v in pairs(schema) do
  alias[k] = v
end
alias.name = "ai-mcp-oauth2"
return alias
