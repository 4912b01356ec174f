-- Kong schema of `mcp-oauth2` (also shipped as `ai-mcp-oauth2`): the field names and
-- defaults of Kong's ai-mcp-oauth2, plus this library's additive extensions. Its
-- custom_validator builds the configuration with the core itself, the way the handler
-- does, so the Admin API and decK refuse what the core refuses, with the core's message
-- naming the field.

local typedefs = require("kong.db.schema.typedefs")

-- Vault references (`{vault://...}`) are resolved by Kong when the handler gets the
-- configuration, not when the Admin API validates it: a reference stands in as a plain
-- value here.
local function is_reference(v)
  if type(v) ~= "string" then
    return false
  end
  local vault = rawget(_G, "kong") and kong.vault
  if vault and vault.is_reference then
    return vault.is_reference(v)
  end
  return v:sub(1, 9) == "{vault://"
end

local function copy(t)
  local c = {}
  for k, v in pairs(t) do
    c[k] = v
  end
  return c
end

local STRING_REFERENCES = {
  "client_id", "client_secret", "tls_client_auth_key", "http_proxy_authorization", "https_proxy_authorization",
}

--- The core's verdict on a plugin configuration (as Kong filled it): true, or nil and the
--- message (e.g. `timeout: ...`). The same constructor as the handler's.
local function validate_config(config)
  local conf = {}
  for k, v in pairs(config) do
    if type(k) ~= "string" or k:sub(1, 2) ~= "__" then
      conf[k] = v
    end
  end
  if is_reference(conf.client_jwk) then
    -- A key must parse: only the resolved value can be checked (by the handler).
    return true
  end
  for _, name in ipairs(STRING_REFERENCES) do
    if is_reference(conf[name]) then
      conf[name] = "vault-reference"
    end
  end
  if type(conf.token_exchange) == "table" then
    local te = copy(conf.token_exchange)
    for _, name in ipairs({ "client_id", "client_secret" }) do
      if is_reference(te[name]) then
        te[name] = "vault-reference"
      end
    end
    if type(te.request) == "table" and is_reference(te.request.actor_token) then
      te.request = copy(te.request)
      te.request.actor_token = "vault-reference"
    end
    conf.token_exchange = te
  end
  if type(conf.cluster_cache_redis) == "table" then
    local redis = copy(conf.cluster_cache_redis)
    for _, name in ipairs({ "username", "password" }) do
      if is_reference(redis[name]) then
        redis[name] = "vault-reference"
      end
    end
    conf.cluster_cache_redis = redis
  end
  -- With the handler's options: what its transport cannot do is refused here too (the
  -- capture transport, used where resty.http is missing, cannot reach a forward proxy).
  local loaded, handler = pcall(require, "kong.plugins.mcp-oauth2.handler")
  local opts = loaded and type(handler) == "table" and type(handler.opts) == "table" and handler.opts or nil
  local ok, err = require("resty.mcp_oauth2").check(conf, opts)
  if ok then
    return true
  end
  return nil, err
end

local string_array = { type = "array", elements = { type = "string" } }

local function array(default)
  return { type = "array", elements = { type = "string" }, default = default }
end

local string_map = {
  type = "map",
  keys = { type = "string" },
  values = { type = "string" },
}

local token_exchange = {
  type = "record",
  fields = {
    { enabled = { type = "boolean", default = false, required = true } },
    { token_endpoint = typedefs.url },
    { client_auth = { type = "string", one_of = { "client_secret_basic", "client_secret_post", "inherit", "none" } } },
    { client_id = { type = "string", referenceable = true } },
    { client_secret = { type = "string", encrypted = true, referenceable = true } },
    { request = {
        type = "record",
        fields = {
          { subject_token_type = { type = "string" } },
          { requested_token_type = { type = "string" } },
          { actor_token_source = { type = "string", one_of = { "none", "header", "config" } } },
          { actor_token_header = { type = "string" } },
          { actor_token = { type = "string", encrypted = true, referenceable = true } },
          { actor_token_type = { type = "string" } },
          { audience = string_array },
          { scopes = string_array },
          { resource = { type = "string" } },
        },
      } },
    { cache = {
        type = "record",
        fields = {
          { enabled = { type = "boolean", default = true, required = true } },
          { ttl = { type = "integer", default = 3600, required = true } },
        },
      } },
  },
}

local cluster_cache_redis = {
  type = "record",
  fields = {
    { host = { type = "string", default = "127.0.0.1", required = true } },
    { port = { type = "integer", default = 6379, required = true, between = { 1, 65535 } } },
    { database = { type = "integer", default = 0, required = true } },
    { username = { type = "string", referenceable = true } },
    { password = { type = "string", encrypted = true, referenceable = true } },
    { ssl = { type = "boolean", default = false, required = true } },
    { ssl_verify = { type = "boolean", default = false, required = true } },
    { server_name = { type = "string" } },
    { connect_timeout = { type = "integer", default = 2000, required = true } },
    { read_timeout = { type = "integer", default = 2000, required = true } },
    { send_timeout = { type = "integer", default = 2000, required = true } },
    { keepalive_pool_size = { type = "integer", default = 256, required = true } },
    { keepalive_backlog = { type = "integer" } },
    { prefix = { type = "string", default = "mcp_oauth2", required = true } },
  },
}

return {
  name = "mcp-oauth2",
  fields = {
    { consumer = typedefs.no_consumer },
    { protocols = typedefs.protocols_http },
    { config = {
        type = "record",
        fields = {
          { resource = { type = "string", required = true } },
          { authorization_servers = { type = "array", elements = { type = "string" }, required = true, len_min = 1 } },
          { metadata_endpoint = { type = "string" } },
          { scopes_supported = string_array },
          { insecure_relaxed_audience_validation = { type = "boolean", default = false, required = true } },
          { max_request_body_size = { type = "integer", default = 1048576, required = true, between = { 0, 2147483647 } } },

          { introspection_endpoint = { type = "string" } },
          { mtls_introspection_endpoint = { type = "string" } },
          { cache_introspection = { type = "boolean", default = true, required = true } },
          { introspection_format = { type = "string", one_of = { "string", "base64", "base64url" } } },
          { args = string_map },
          { headers = string_map },

          { jwks_endpoint = { type = "string" } },
          { jwks_cache_ttl = { type = "integer", default = 3600, required = true } },
          { jwt_claims_leeway = { type = "integer", default = 0, required = true } },
          { metadata_discovery_endpoint = { type = "string" } },
          { metadata_discovery_retry = { type = "integer", default = 3, required = true } },
          { metadata_cache_ttl = { type = "integer", default = 3600, required = true } },

          { client_id = { type = "string", referenceable = true } },
          { client_secret = { type = "string", encrypted = true, referenceable = true } },
          { client_auth = { type = "string", one_of = { "client_secret_basic", "client_secret_post",
              "client_secret_jwt", "private_key_jwt", "tls_client_auth", "self_signed_tls_client_auth", "none" } } },
          { client_alg = { type = "string" } },
          { client_jwk = { type = "string", encrypted = true, referenceable = true } },
          { tls_client_auth_cert = { type = "string" } },
          { tls_client_auth_key = { type = "string", encrypted = true, referenceable = true } },
          { tls_client_auth_ssl_verify = { type = "boolean", default = true, required = true } },
          { ssl_verify = { type = "boolean", default = true, required = true } },
          { timeout = { type = "number", default = 10000, required = true, gt = 0 } },
          { keepalive = { type = "boolean", default = true, required = true } },
          { http_version = { type = "number", default = 1.1, required = true, one_of = { 1.0, 1.1 } } },
          { http_proxy = { type = "string" } },
          { http_proxy_authorization = { type = "string", encrypted = true, referenceable = true } },
          { https_proxy = { type = "string" } },
          { https_proxy_authorization = { type = "string", encrypted = true, referenceable = true } },
          { no_proxy = { type = "string" } },

          { claim_to_header = { type = "array", elements = { type = "record", fields = {
              { claim = { type = "string", required = true } },
              { header = { type = "string", required = true } },
            } } } },
          { upstream_headers = { type = "array", elements = { type = "record", fields = {
              { header = { type = "string", required = true } },
              { path = { type = "array", elements = { type = "string" }, required = true, len_min = 1 } },
            } } } },
          { passthrough_credentials = { type = "boolean", default = false, required = true } },

          { consumer_claim = string_array },
          { consumer_by = { type = "array", elements = { type = "string", one_of = { "id", "username", "custom_id" } },
              default = { "custom_id", "username" }, required = true } },
          { consumer_optional = { type = "boolean", default = false, required = true } },
          { consumer_groups_claim = string_array },
          { consumer_groups_optional = { type = "boolean", default = false, required = true } },
          { credential_claim = array({ "sub" }) },

          { token_exchange = token_exchange },

          -- Extensions of this library (additive: a Kong config never needs them).
          { scopes_required = string_array },
          { method_scopes = { type = "map", keys = { type = "string" }, values = string_array } },
          { audiences = string_array },
          { audiences_denied = array({ "account" }) },
          { access_token_type = { type = "string", default = "any", one_of = { "any", "at+jwt" } } },
          { algorithms = string_array },
          { cache_max_entries = { type = "integer", default = 10000, gt = 0 } },
          { cache_ttl_max = { type = "integer", default = 3600 } },
          { cache_ttl_negative = { type = "integer", default = 5 } },
          { trusted_proxies = string_array },
          { issuers = string_array },
          { issuer_aliases = string_map },
          { client_assertion_audience = { type = "string" } },
          { introspection_jwt_response = { type = "boolean", default = false, required = true } },
          { scope_implies = { type = "map", keys = { type = "string" }, values = string_array } },
          { allowed_origins = string_array },
          { cluster_cache_strategy = { type = "string", default = "off", required = true, one_of = { "off", "redis" } } },
          { cluster_cache_redis = cluster_cache_redis },
        },
        entity_checks = {
          { mutually_exclusive = { "claim_to_header", "upstream_headers" } },
        },
        custom_validator = validate_config,
      } },
  },
}
