-- Kong schema of `mcp-oauth2`: the field names and defaults of Kong's ai-mcp-oauth2
-- (behaviour.md §1), plus this library's additive extensions. The native validator checks
-- everything again (and names the field) when the handler builds it.

local typedefs = require("kong.db.schema.typedefs")

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
    { client_id = { type = "string" } },
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

          { client_id = { type = "string" } },
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
        },
        entity_checks = {
          { mutually_exclusive = { "claim_to_header", "upstream_headers" } },
        },
      } },
  },
}
