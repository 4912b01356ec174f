-- busted specs of the Kong plugin files: the schema loads (Kong's typedefs stubbed by the
-- PDK stand-in), a Kong-processed configuration builds, the handler's shape. Whether the
-- schema's fields and defaults match the core's Config is checked in Rust
-- (lua/tests/kong_schema.rs), against the core itself.
require("spec.ngx_mock").install()
local cjson = require("cjson")
local standin = require("kong_standin")
local mcp = require("resty.mcp_oauth2")

local function conf(extra)
  local c = {
    resource = "https://mcp.example.com/mcp",
    authorization_servers = { "https://as.example.com" },
    introspection_endpoint = "https://as.example.com/introspect",
    client_id = "gateway",
    client_secret = "gateway-secret",
  }
  for k, v in pairs(extra or {}) do c[k] = v end
  return c
end

describe("Kong plugin", function()
  it("a Kong-processed config (defaults, nulls, __key__ stripped by the handler) builds", function()
    local c = standin.kong_config(conf({ args = {} }))
    assert.equal(cjson.null, c.metadata_endpoint)
    local copy = {}
    for k, v in pairs(c) do
      if k:sub(1, 2) ~= "__" then copy[k] = v end
    end
    local auth, err = mcp.new(copy, { shm = false })
    assert.is_nil(err)
    assert.is_table(auth)
    -- The bookkeeping keys themselves would be rejected: the handler must strip them.
    local _, err2 = mcp.new(c, { shm = false })
    assert.matches("__", err2)
  end)

  it("the handler has Kong's priority and an access phase", function()
    local schema = require("kong.plugins.mcp-oauth2.schema")
    assert.equal("mcp-oauth2", schema.name)
    local h = require("kong.plugins.mcp-oauth2.handler")
    assert.equal(1015, h.PRIORITY)
    assert.is_function(h.access)
  end)
end)
