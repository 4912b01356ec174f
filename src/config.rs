//! The configuration: Kong `ai-mcp-oauth2` field names and defaults, plus our additive
//! extensions. Every field of [`Config`] documents its JSON type, default, effect and the
//! surfaces that honour it; `docs/configuration.md` in the repository is the reference for
//! users (fields, responses, caching).
//!
//! Parse it from JSON with [`Config::from_json`] (or a [`serde_json::Value`] with
//! [`Config::from_value`]), or build it in Rust with [`Config::new`] and struct update syntax.
//! Unknown fields are errors; `null` means "unset" for every field (as `deck dump` writes
//! them); every error names the field path.

use std::collections::BTreeMap;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::addresses::{parse_cidr, NoProxy};
use crate::client_keys;
use crate::token::Secret;
use crate::Error;

/// Client authentication at the authorization server (Kong's `client_auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// `Authorization: Basic` with the form-urlencoded id and secret (RFC 6749 §2.3.1).
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the form body.
    ClientSecretPost,
    /// RFC 7523 assertion signed with the client secret (HS*).
    ClientSecretJwt,
    /// RFC 7523 assertion signed with `client_jwk`.
    PrivateKeyJwt,
    /// RFC 8705 mutual TLS with a CA-issued certificate.
    TlsClientAuth,
    /// RFC 8705 mutual TLS with a self-signed certificate.
    SelfSignedTlsClientAuth,
    /// No client authentication (`client_id` is still sent when set).
    None,
}

impl ClientAuth {
    /// The configuration value, e.g. `client_secret_basic`.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientAuth::ClientSecretBasic => "client_secret_basic",
            ClientAuth::ClientSecretPost => "client_secret_post",
            ClientAuth::ClientSecretJwt => "client_secret_jwt",
            ClientAuth::PrivateKeyJwt => "private_key_jwt",
            ClientAuth::TlsClientAuth => "tls_client_auth",
            ClientAuth::SelfSignedTlsClientAuth => "self_signed_tls_client_auth",
            ClientAuth::None => "none",
        }
    }

    pub(crate) fn is_tls(self) -> bool {
        matches!(self, ClientAuth::TlsClientAuth | ClientAuth::SelfSignedTlsClientAuth)
    }
}

/// `introspection_format`: accepted for Kong compatibility.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IntrospectionFormat {
    /// The raw JSON text.
    String,
    /// Standard base64 of the JSON text.
    Base64,
    /// URL-safe base64 of the JSON text.
    Base64url,
}

/// `access_token_type` (extension): whether JWT access tokens must be typed `at+jwt`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum AccessTokenType {
    /// Any token type (ID tokens are still rejected).
    #[default]
    #[serde(rename = "any")]
    Any,
    /// RFC 9068: JOSE `typ` must be `at+jwt` or `application/at+jwt`.
    #[serde(rename = "at+jwt")]
    AtJwt,
}

/// `http_version` for calls to the authorization server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub enum HttpVersion {
    /// HTTP/1.0.
    #[serde(rename = "1.0")]
    Http10,
    /// HTTP/1.1 (the default).
    #[default]
    #[serde(rename = "1.1")]
    Http11,
}

impl<'de> Deserialize<'de> for HttpVersion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Kong stores it as a number (1.1); YAML and JSON users also write "1.1".
        match Value::deserialize(d)? {
            Value::Number(n) if n.as_f64() == Some(1.0) => Ok(HttpVersion::Http10),
            Value::Number(n) if n.as_f64() == Some(1.1) => Ok(HttpVersion::Http11),
            Value::String(s) if s == "1.0" => Ok(HttpVersion::Http10),
            Value::String(s) if s == "1.1" => Ok(HttpVersion::Http11),
            _ => Err(D::Error::custom("must be 1.0 or 1.1")),
        }
    }
}

/// Kong's `consumer_by` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsumerBy {
    /// The consumer's id.
    Id,
    /// The consumer's username.
    Username,
    /// The consumer's custom_id.
    CustomId,
}

/// A claim path: a claim name, or a list of names/array indices into nested claims.
/// Accepts a string (`"sub"`) or an array (`["realm_access", "roles"]`, `["groups", 0]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClaimPath(pub Vec<String>);

impl<'de> Deserialize<'de> for ClaimPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        fn element<E: serde::de::Error>(v: Value) -> Result<String, E> {
            match v {
                Value::String(s) => Ok(s),
                Value::Number(n) if n.is_u64() => Ok(n.to_string()),
                _ => Err(E::custom("path elements must be strings or array indices")),
            }
        }
        match Value::deserialize(d)? {
            Value::String(s) => Ok(ClaimPath(vec![s])),
            Value::Array(items) => Ok(ClaimPath(items.into_iter().map(element).collect::<Result<_, _>>()?)),
            _ => Err(D::Error::custom("must be a claim name or an array of path elements")),
        }
    }
}

impl ClaimPath {
    /// A path of one top-level claim.
    pub fn claim(name: impl Into<String>) -> Self {
        ClaimPath(vec![name.into()])
    }
}

/// One entry of `claim_to_header`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimToHeader {
    /// Top-level claim name.
    pub claim: String,
    /// Upstream header name.
    pub header: String,
}

/// One entry of `upstream_headers`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamHeader {
    /// Upstream header name.
    pub header: String,
    /// Path into the claims; numeric elements index arrays.
    pub path: ClaimPath,
}

/// `token_exchange.client_auth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExchangeClientAuth {
    /// Basic authentication.
    ClientSecretBasic,
    /// Credentials in the body.
    ClientSecretPost,
    /// Reuse the introspection client's credentials.
    Inherit,
    /// No client authentication.
    None,
}

/// `token_exchange.request.actor_token_source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActorTokenSource {
    /// No actor token.
    None,
    /// From a request header.
    Header,
    /// From the configuration.
    Config,
}

/// `token_exchange.request`: the parameters of the RFC 8693 exchange request.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenExchangeRequest {
    /// `subject_token_type`: string (an RFC 8693 token-type URI); default
    /// `urn:ietf:params:oauth:token-type:access_token`. Sent as the type of the client's
    /// token, which is the one exchanged.
    #[serde(default = "default_access_token_type_uri")]
    pub subject_token_type: String,
    /// `requested_token_type`: string (an RFC 8693 token-type URI); default
    /// `urn:ietf:params:oauth:token-type:access_token`. The type of token asked for; an answer
    /// whose `issued_token_type` differs is refused (503).
    #[serde(default = "default_access_token_type_uri")]
    pub requested_token_type: String,
    /// `actor_token_source`: `"none"`, `"header"` or `"config"`; default unset. Where an actor
    /// token comes from: nowhere, a client request header, or `actor_token` below.
    #[serde(default)]
    pub actor_token_source: Option<ActorTokenSource>,
    /// `actor_token_header`: string (header name); default unset. The client request header
    /// holding the actor token when `actor_token_source` is `header`.
    #[serde(default)]
    pub actor_token_header: Option<String>,
    /// `actor_token`: string (secret: redacted in `Debug`); default unset. The actor token when
    /// `actor_token_source` is `config`.
    #[serde(default)]
    pub actor_token: Option<Secret>,
    /// `actor_token_type`: string (an RFC 8693 token-type URI); default unset. The type of the
    /// actor token.
    #[serde(default)]
    pub actor_token_type: Option<String>,
    /// `audience`: array of strings; default `[]`. One `audience` parameter per value.
    #[serde(default)]
    pub audience: Vec<String>,
    /// `scopes`: array of strings; default `[]`. Sent space-joined as the `scope` parameter.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// `resource`: string (URI); default unset. Sent as the `resource` parameter.
    #[serde(default)]
    pub resource: Option<String>,
}

impl Default for TokenExchangeRequest {
    fn default() -> Self {
        TokenExchangeRequest {
            subject_token_type: default_access_token_type_uri(),
            requested_token_type: default_access_token_type_uri(),
            actor_token_source: None,
            actor_token_header: None,
            actor_token: None,
            actor_token_type: None,
            audience: Vec::new(),
            scopes: Vec::new(),
            resource: None,
        }
    }
}

/// `token_exchange.cache`: caching of exchanged tokens.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenExchangeCache {
    /// `enabled`: boolean; default `true`. Keep an exchanged token for reuse by later requests
    /// carrying the same client token.
    #[serde(default = "default_token_exchange_cache_enabled")]
    pub enabled: bool,
    /// `ttl`: integer seconds; default 3600. How long an exchanged token is kept when the
    /// token endpoint's answer has no `expires_in`.
    #[serde(default = "default_token_exchange_cache_ttl_secs")]
    pub ttl: u64,
}

impl Default for TokenExchangeCache {
    fn default() -> Self {
        TokenExchangeCache {
            enabled: default_token_exchange_cache_enabled(),
            ttl: default_token_exchange_cache_ttl_secs(),
        }
    }
}

/// `token_exchange` (RFC 8693): after the client's token is validated, exchange it at the
/// authorization server for one meant for the upstream, which then receives
/// `Authorization: Bearer <exchanged>` and never the client's token. Needs `token_endpoint`
/// and `passthrough_credentials: true` (Kong's rule). Every surface: the exchange is one more
/// step of the sans-I/O flow, performed by the host like the other calls.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenExchange {
    /// `enabled`: boolean; default `false`. Turns the exchange on.
    #[serde(default)]
    pub enabled: bool,
    /// `token_endpoint`: URL string; required when `enabled`. Where the exchange is requested.
    #[serde(default)]
    pub token_endpoint: Option<String>,
    /// `client_auth`: `"client_secret_basic"`, `"client_secret_post"`, `"inherit"` or
    /// `"none"`; default unset, meaning `client_secret_basic` when `client_secret` is set,
    /// else `none`. How the gateway authenticates at `token_endpoint`; `inherit` reuses the
    /// top-level `client_id`, `client_secret` and `client_auth`.
    #[serde(default)]
    pub client_auth: Option<ExchangeClientAuth>,
    /// `client_id`: string; default unset. The gateway's client id for the exchange.
    #[serde(default)]
    pub client_id: Option<String>,
    /// `client_secret`: string (secret: redacted in `Debug`); default unset. The gateway's
    /// client secret for the exchange.
    #[serde(default)]
    pub client_secret: Option<Secret>,
    /// `request`: object; default: every member unset. See [`TokenExchangeRequest`].
    #[serde(default)]
    pub request: TokenExchangeRequest,
    /// `cache`: object; default `{"enabled": true, "ttl": 3600}`. See [`TokenExchangeCache`].
    #[serde(default)]
    pub cache: TokenExchangeCache,
}

impl TokenExchange {
    /// `client_auth` in effect: as configured; unset means `client_secret_basic` when a
    /// `client_secret` is set, else `none` (the rule of the top-level `client_auth`).
    pub fn effective_client_auth(&self) -> ExchangeClientAuth {
        match (self.client_auth, &self.client_secret) {
            (Some(a), _) => a,
            (None, Some(_)) => ExchangeClientAuth::ClientSecretBasic,
            (None, None) => ExchangeClientAuth::None,
        }
    }
}

/// A JWK (or a JWK Set) given as a JSON object or as a JSON string; kept as JSON text,
/// redacted.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct ClientJwk(pub Secret);

impl std::fmt::Debug for ClientJwk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientJwk([redacted])")
    }
}

impl<'de> Deserialize<'de> for ClientJwk {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = match Value::deserialize(d)? {
            Value::String(s) => s,
            v @ Value::Object(_) => v.to_string(),
            _ => return Err(D::Error::custom("must be a JWK object or a JSON string")),
        };
        match serde_json::from_str::<Value>(&text) {
            Ok(Value::Object(m)) if m.get("kty").is_some_and(Value::is_string) || m.get("keys").is_some() => {
                Ok(ClientJwk(Secret::new(text)))
            }
            _ => Err(D::Error::custom("must be a JWK (a JSON object with \"kty\") or a JWK Set (\"keys\")")),
        }
    }
}

// Defaults, one function per meaning (two fields sharing a value still get their own), so a
// change to one default never silently moves another. `Config::new` and every parse read
// them through the serde attributes below.

fn default_max_request_body_size_bytes() -> u64 {
    1024 * 1024
}
fn default_cache_introspection() -> bool {
    true
}
fn default_jwks_cache_ttl_secs() -> u64 {
    3600
}
fn default_metadata_discovery_retry() -> u32 {
    3
}
fn default_metadata_cache_ttl_secs() -> u64 {
    3600
}
fn default_tls_client_auth_ssl_verify() -> bool {
    true
}
fn default_ssl_verify() -> bool {
    true
}
fn default_timeout_ms() -> u64 {
    10_000
}
fn default_keepalive() -> bool {
    true
}
fn default_consumer_by() -> Vec<ConsumerBy> {
    vec![ConsumerBy::CustomId, ConsumerBy::Username]
}
fn default_credential_claim() -> ClaimPath {
    ClaimPath::claim("sub")
}
fn default_access_token_type_uri() -> String {
    "urn:ietf:params:oauth:token-type:access_token".to_owned()
}
fn default_token_exchange_cache_enabled() -> bool {
    true
}
fn default_token_exchange_cache_ttl_secs() -> u64 {
    3600
}
fn default_audiences_denied() -> Vec<String> {
    vec!["account".to_owned()]
}
fn default_cache_max_entries() -> usize {
    10_000
}
fn default_cache_ttl_max_secs() -> u64 {
    3600
}
fn default_cache_ttl_negative_secs() -> u64 {
    5
}

/// The plugin configuration: Kong `ai-mcp-oauth2` field names, JSON types and defaults, plus
/// this library's additive extensions.
///
/// Each field's Rust name is its configuration (Kong) name. Every front end — Rust, the C
/// ABI, the Lua module and `resty.mcp_oauth2`, the Kong plugin and the demo proxy — hands
/// this same object to the core, so a field marked "all surfaces" behaves the same on each;
/// where a surface differs, the field says so. The user-facing reference, with the responses
/// each setting leads to, is `docs/configuration.md` in the repository.
///
/// A `Config` built in Rust is checked by [`Config::validate`], which
/// [`Validator::new`](crate::Validator::new) calls; [`Config::from_json`] and
/// [`Config::from_value`] check on parse.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `resource`: string, an absolute `http(s)` URL without fragment or credentials;
    /// required. The canonical URI of the protected MCP server: the `resource` of the
    /// metadata document and the audience every token must carry. Its origin is the default
    /// host of the `resource_metadata` URL in challenges. All surfaces.
    pub resource: String,
    /// `authorization_servers`: array of URL strings, at least one; required. The issuers
    /// advertised in the metadata document; for local JWT validation also where AS metadata
    /// is discovered and the default accepted `iss` values. All surfaces.
    pub authorization_servers: Vec<String>,
    /// `metadata_endpoint`: string, an absolute path without query or fragment; default: the
    /// path of `resource` followed by `/.well-known/oauth-protected-resource`
    /// ([`Config::effective_metadata_endpoint`]). The metadata document is served here and at
    /// the RFC 9728 path-insert form; challenges point here. All surfaces (nginx and Kong
    /// must route both paths to the handler).
    #[serde(default)]
    pub metadata_endpoint: Option<String>,
    /// `scopes_supported`: array of scope strings; default unset. Advertised in the metadata
    /// document, and the `scope` of a no-credentials challenge when the request needs no
    /// scope in particular. Not enforced (see `scopes_required`). All surfaces.
    #[serde(default)]
    pub scopes_supported: Option<Vec<String>>,
    /// `insecure_relaxed_audience_validation`: boolean; default `false`. `true` skips the
    /// audience check (for servers without RFC 8707 resource indicators), so a token issued
    /// for any other resource of the same server is accepted too. All surfaces.
    #[serde(default)]
    pub insecure_relaxed_audience_validation: bool,
    /// `max_request_body_size`: integer, bytes; default 1048576; 0 = no limit. Only with
    /// `method_scopes`: a POST body larger than this gets 413. Rust and C hosts pass the body
    /// themselves; the demo proxy and `resty.mcp_oauth2` read it; the Kong plugin passes only
    /// a body nginx kept in memory (otherwise every method scope is required).
    #[serde(default = "default_max_request_body_size_bytes")]
    pub max_request_body_size: u64,

    /// `introspection_endpoint`: URL string; default unset. The RFC 7662 endpoint. When set,
    /// every token is introspected (JWTs too, even with `jwks_endpoint`); when unset, tokens
    /// are validated locally as JWTs. All surfaces.
    #[serde(default)]
    pub introspection_endpoint: Option<String>,
    /// `mtls_introspection_endpoint`: URL string; default unset. With a mutual-TLS
    /// `client_auth` (`tls_client_auth`, `self_signed_tls_client_auth`) introspection goes
    /// here instead of `introspection_endpoint` (RFC 8705 §5 `mtls_endpoint_aliases`). Set
    /// with another `client_auth` it has no effect: a construction warning. All
    /// surfaces.
    #[serde(default)]
    pub mtls_introspection_endpoint: Option<String>,
    /// `cache_introspection`: boolean; default `true`. Cache each token's validation result
    /// (introspection and local JWT alike, see `cache_ttl_max`); `false` validates every
    /// request anew, while AS metadata and keys stay cached. All surfaces (nginx and Kong:
    /// the shared dict too).
    #[serde(default = "default_cache_introspection")]
    pub cache_introspection: bool,
    /// `introspection_format`: `"string"`, `"base64"` or `"base64url"`; default unset. When
    /// set, an allowed decision exposes the raw introspection result — the JSON object the
    /// authorization server answered, as text (for an RFC 9701 signed answer, the JSON text
    /// of its `token_introspection` claim) — in that encoding: as is, standard base64 with
    /// padding, or URL-safe base64 without padding
    /// ([`Forward::introspection`](crate::Forward::introspection)). Needs
    /// `introspection_endpoint` (a configuration error without: local JWT validation has no
    /// introspection result). Rust and C hosts read it from the decision.
    #[serde(default)]
    pub introspection_format: Option<IntrospectionFormat>,
    /// `args`: object, string to string; default `{}`. Extra form fields on every
    /// introspection request; `token`, `client_id`, `client_secret` and `client_assertion*`
    /// are refused. Values may be credentials (an API key): they are treated as secrets
    /// (redacted in `Debug`, never in errors). All surfaces.
    #[serde(default)]
    pub args: BTreeMap<String, Secret>,
    /// `headers`: object, string to string; default `{}`. Extra headers on every
    /// introspection request; the headers the library sets itself are refused
    /// (`Content-Type`, `Content-Length`, `Host`, `Transfer-Encoding`, `Connection`, and
    /// `Authorization` with `client_secret_basic`). Values are treated as secrets, as for
    /// `args`. All surfaces, except `resty.mcp_oauth2` with `ngx.location.capture`, which
    /// refuses them (set them in the internal location).
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,

    /// `jwks_endpoint`: URL string; default unset (keys come from the AS metadata's
    /// `jwks_uri`). The key set for local JWT validation; with `introspection_endpoint`, the
    /// keys that verify signed (RFC 9701) introspection answers. All surfaces.
    #[serde(default)]
    pub jwks_endpoint: Option<String>,
    /// `jwks_cache_ttl`: integer, seconds; default 3600. How long a fetched key set is used;
    /// an unknown `kid` refetches earlier, at most once per 60 s per URL. All surfaces.
    #[serde(default = "default_jwks_cache_ttl_secs")]
    pub jwks_cache_ttl: u64,
    /// `jwt_claims_leeway`: integer, seconds; default 0. Clock skew allowed when checking
    /// `exp` and `nbf` (both validation paths) and `iat` (local JWT). All surfaces.
    #[serde(default)]
    pub jwt_claims_leeway: u64,
    /// `metadata_discovery_endpoint`: URL string; default unset. An explicit AS metadata URL
    /// for local JWT validation, used instead of the URLs derived from
    /// `authorization_servers`; the issuer it names is accepted unless `issuers` is set. All
    /// surfaces.
    #[serde(default)]
    pub metadata_discovery_endpoint: Option<String>,
    /// `metadata_discovery_retry`: integer ≥ 1; default 3. Attempts per metadata URL when a
    /// fetch fails transiently (connection, timeout, 5xx, 408, 429). All surfaces.
    #[serde(default = "default_metadata_discovery_retry")]
    pub metadata_discovery_retry: u32,
    /// `metadata_cache_ttl`: integer, seconds; default 3600. How long discovered AS metadata
    /// (its `jwks_uri` and issuer) is kept. All surfaces.
    #[serde(default = "default_metadata_cache_ttl_secs")]
    pub metadata_cache_ttl: u64,

    /// `client_id`: string; default unset. The gateway's client id at the authorization
    /// server; required by every `client_auth` but `none` (which still sends it in the form
    /// when set, as do the mutual-TLS methods); the `iss` and `sub` of JWT client assertions
    /// and the `aud` a signed (RFC 9701) introspection answer must carry. All surfaces.
    #[serde(default)]
    pub client_id: Option<String>,
    /// `client_secret`: string, secret (redacted in `Debug` and errors); default unset.
    /// Required by `client_secret_basic`, `client_secret_post` and `client_secret_jwt` (the
    /// HMAC key of its assertions); setting it makes `client_secret_basic` the default
    /// `client_auth`. With `private_key_jwt`, the mutual-TLS methods or `none` it would have
    /// no effect: a construction warning. All surfaces.
    #[serde(default)]
    pub client_secret: Option<Secret>,
    /// `client_auth`: string, one of [`ClientAuth`]; default `client_secret_basic` when
    /// `client_secret` is set, else `none` ([`Config::effective_client_auth`]). How the
    /// gateway authenticates to the introspection endpoint: `client_secret_basic`,
    /// `client_secret_post`, an RFC 7523 JWT assertion (`client_secret_jwt`,
    /// `private_key_jwt`), RFC 8705 mutual TLS (`tls_client_auth`,
    /// `self_signed_tls_client_auth`) or `none` (docs/configuration.md shows each). All
    /// surfaces (for mutual TLS a host doing its own I/O presents the certificate the
    /// request names: [`HttpRequest::client_certificate`](crate::HttpRequest)).
    #[serde(default)]
    pub client_auth: Option<ClientAuth>,
    /// `client_alg`: string, a JWS algorithm; default: `HS256` for `client_secret_jwt`; for
    /// `private_key_jwt` the `alg` of `client_jwk`, else by its key type (RSA `RS256`, P-256
    /// `ES256`, P-384 `ES384`, P-521 `ES512`, Ed25519 `EdDSA`). Signs the JWT client
    /// assertion: `HS256`/`HS384`/`HS512` for `client_secret_jwt`; `RS256`/`RS384`/`RS512`,
    /// `PS256`/`PS384`/`PS512`, `ES256`/`ES384`/`ES512`, `EdDSA` for `private_key_jwt` (it
    /// must fit the key). With another `client_auth`, a configuration error. All surfaces.
    #[serde(default)]
    pub client_alg: Option<String>,
    /// `client_jwk`: a private JWK (RFC 7517) as a JSON object, a JSON string holding one
    /// (Kong's form), or a JWK Set holding exactly one private key; secret; default unset.
    /// The signing key of `private_key_jwt` (required there; with another `client_auth`, a
    /// configuration error): RSA (2048 bits or more, with its CRT parameters), EC P-256,
    /// P-384 or P-521, or Ed25519 (`OKP`). Its `kid`, if any, goes in the assertion's JOSE
    /// header. Parsed once, at construction. All surfaces.
    #[serde(default)]
    pub client_jwk: Option<ClientJwk>,
    /// `tls_client_auth_cert`: string, PEM certificate(s); default unset. The client
    /// certificate (then its chain, if any) of the mutual-TLS methods, required there; with
    /// another `client_auth`, a configuration error. Presented on the introspection call
    /// only. All surfaces (hosts doing their own TLS get it in
    /// [`HttpRequest::client_certificate`](crate::HttpRequest); nginx:
    /// `proxy_ssl_certificate`, see docs/configuration.md).
    #[serde(default)]
    pub tls_client_auth_cert: Option<String>,
    /// `tls_client_auth_key`: string, PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC),
    /// secret; default unset. The key of `tls_client_auth_cert`, which it must match
    /// (checked at construction); required with it.
    #[serde(default)]
    pub tls_client_auth_key: Option<Secret>,
    /// `tls_client_auth_ssl_verify`: boolean; default `true`. Verify the AS certificate on
    /// the mutual-TLS introspection call (`ssl_verify` governs every other call). `false`
    /// with another `client_auth` has no effect: a construction warning. Carried on the
    /// request as [`HttpRequest::verify_certificate`](crate::HttpRequest); all surfaces.
    #[serde(default = "default_tls_client_auth_ssl_verify")]
    pub tls_client_auth_ssl_verify: bool,
    /// `ssl_verify`: boolean; default `true`. Verify the AS certificate on https calls
    /// (all but the mutual-TLS introspection call, see `tls_client_auth_ssl_verify`).
    /// Carried on every request as [`HttpRequest::verify_certificate`](crate::HttpRequest):
    /// honoured by the built-in ureq transport (Rust `authorize`, the C ABI's blocking call),
    /// the demo proxy's client and `resty.http` (OpenResty, Kong); with `ngx.location.capture`
    /// nginx's `proxy_ssl_verify` decides (docs/configuration.md).
    #[serde(default = "default_ssl_verify")]
    pub ssl_verify: bool,
    /// `timeout`: integer, milliseconds ≥ 1; default 10000. Bound on each call to the AS,
    /// carried on every [`HttpRequest`](crate::HttpRequest); there is no "no timeout".
    /// Honoured by the ureq transport and `resty.http`; sans-I/O hosts apply it themselves;
    /// with `ngx.location.capture`, nginx's `proxy_*_timeout` directives apply instead.
    #[serde(default = "default_timeout_ms")]
    pub timeout: u64,
    /// `keepalive`: boolean; default `true`. Reuse connections to the AS; `false`: a fresh
    /// connection per call, closed after it. Carried on every request as
    /// [`HttpRequest::keepalive`](crate::HttpRequest): honoured by the ureq transport and
    /// `resty.http`; other hosts read it there.
    #[serde(default = "default_keepalive")]
    pub keepalive: bool,
    /// `http_version`: number or string, `1.0` or `1.1`; default `1.1`. HTTP version of AS
    /// calls, carried on every request as [`HttpRequest::http_version`](crate::HttpRequest);
    /// the ureq transport and `resty.http` speak it. All surfaces.
    #[serde(default)]
    pub http_version: HttpVersion,
    /// `http_proxy`: URL string, `http://host[:port]`; default unset. Forward proxy for
    /// `http://` AS calls (introspection, discovery, key sets). The route is decided by the
    /// core and carried on each request as [`HttpRequest::proxy`](crate::HttpRequest). All
    /// surfaces that perform the calls (ureq transport, `resty.http`).
    #[serde(default)]
    pub http_proxy: Option<String>,
    /// `http_proxy_authorization`: string, secret; default unset. The whole
    /// `Proxy-Authorization` value sent to `http_proxy` (e.g. `Basic dXNlcjpwYXNz`); without
    /// `http_proxy`, a configuration error.
    #[serde(default)]
    pub http_proxy_authorization: Option<Secret>,
    /// `https_proxy`: URL string, `http://host[:port]`; default unset. Forward proxy for
    /// `https://` AS calls, reached by a `CONNECT` tunnel (TLS stays end to end with the
    /// AS). As `http_proxy` otherwise.
    #[serde(default)]
    pub https_proxy: Option<String>,
    /// `https_proxy_authorization`: string, secret; default unset. The whole
    /// `Proxy-Authorization` value sent on the `CONNECT` to `https_proxy`; without
    /// `https_proxy`, a configuration error.
    #[serde(default)]
    pub https_proxy_authorization: Option<Secret>,
    /// `no_proxy`: string, comma-separated; default unset. Hosts reached directly although a
    /// proxy is set: `*` (every host), a host name (that host and its subdomains; a leading
    /// `.` is the same), an IP address, or a CIDR block (matches IP-literal hosts). Without
    /// `http_proxy` or `https_proxy`, a configuration error.
    #[serde(default)]
    pub no_proxy: Option<String>,

    /// `claim_to_header`: array of `{"claim": name, "header": name}`; default `[]`. Sets an
    /// upstream request header from a top-level claim (client-sent copies are removed first;
    /// value rules: docs/configuration.md, section 8). Exclusive with `upstream_headers`. All
    /// surfaces.
    #[serde(default)]
    pub claim_to_header: Vec<ClaimToHeader>,
    /// `upstream_headers`: array of `{"header": name, "path": [elements]}`; default `[]`. Like
    /// `claim_to_header`, from a path into nested claims (numeric elements index arrays).
    /// Exclusive with `claim_to_header`. All surfaces.
    #[serde(default)]
    pub upstream_headers: Vec<UpstreamHeader>,
    /// `passthrough_credentials`: boolean; default `false`. `true` keeps the client's
    /// `Authorization` header on the upstream request; by default it is removed. All surfaces.
    #[serde(default)]
    pub passthrough_credentials: bool,

    /// `consumer_claim`: claim name (string) or path (array); default unset. The claim naming
    /// the consumer, exposed as [`Identity::consumer`](crate::Identity::consumer); when set, not
    /// optional and absent, 403. Only the Kong plugin maps it to a Kong consumer (by
    /// `consumer_by`); other hosts read it from the decision's identity.
    #[serde(default)]
    pub consumer_claim: Option<ClaimPath>,
    /// `consumer_by`: array of `"id"`, `"username"`, `"custom_id"`; default
    /// `["custom_id", "username"]`. The Kong consumer fields `consumer_claim` is matched
    /// against, in order. Used by the Kong plugin only.
    #[serde(default = "default_consumer_by")]
    pub consumer_by: Vec<ConsumerBy>,
    /// `consumer_optional`: boolean; default `false`. `true` lets through a token without the
    /// consumer claim (all surfaces) and, in the Kong plugin, one that matches no consumer.
    #[serde(default)]
    pub consumer_optional: bool,
    /// `consumer_groups_claim`: claim name or path; default unset. The claim listing consumer
    /// groups (an array of strings, or one string), exposed as
    /// [`Identity::consumer_groups`](crate::Identity::consumer_groups); when set, not optional
    /// and absent or empty, 403. Only the Kong plugin maps the names to Kong consumer groups.
    #[serde(default)]
    pub consumer_groups_claim: Option<ClaimPath>,
    /// `consumer_groups_optional`: boolean; default `false`. `true` lets through a token
    /// without groups (all surfaces) and, in the Kong plugin, one naming no known group.
    #[serde(default)]
    pub consumer_groups_optional: bool,
    /// `credential_claim`: claim name or path; default `["sub"]`. Exposed as
    /// [`Identity::credential`](crate::Identity::credential); the Kong plugin authenticates it
    /// as the credential id, other hosts read it from the decision's identity.
    #[serde(default = "default_credential_claim")]
    pub credential_claim: ClaimPath,

    /// `token_exchange`: object, see [`TokenExchange`]; default unset. RFC 8693 exchange of
    /// the validated token.
    #[serde(default)]
    pub token_exchange: Option<TokenExchange>,

    // ---- extensions (additive; a Kong config never needs them) ----
    /// `scopes_required` (extension): array of scope strings; default `[]`. Every request
    /// needs all of them (403 `insufficient_scope` otherwise). All surfaces.
    #[serde(default)]
    pub scopes_required: Vec<String>,
    /// `method_scopes` (extension): object mapping a JSON-RPC method (`"tools/list"`) or
    /// `"tools/call:<tool>"` to scope strings; default `{}`. A POST also needs the scopes of
    /// the method(s) in its body; reading it is bounded by `max_request_body_size`
    /// (docs/configuration.md, section 5.6). All surfaces (the host must pass the body).
    #[serde(default)]
    pub method_scopes: BTreeMap<String, Vec<String>>,
    /// `audiences` (extension): array of strings; default `[]`. Further `aud` values accepted
    /// besides `resource` (e.g. a client id an IdP puts in `aud`). All surfaces.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// `audiences_denied` (extension): array of strings; default `["account"]` (Keycloak's
    /// default audience). Values that never count as a match, even when listed in
    /// `audiences`; may not contain `resource`. All surfaces.
    #[serde(default = "default_audiences_denied")]
    pub audiences_denied: Vec<String>,
    /// `access_token_type` (extension): `"any"` or `"at+jwt"`; default `"any"`. `at+jwt`
    /// requires a local JWT's JOSE `typ` to be `at+jwt` (RFC 9068); no effect on
    /// introspection. All surfaces.
    #[serde(default)]
    pub access_token_type: AccessTokenType,
    /// `algorithms` (extension): array of JWS algorithm names; default
    /// [`DEFAULT_ALGORITHMS`]. What local JWT validation accepts; a non-empty subset of the
    /// default (never `none`, never HS*). All surfaces.
    #[serde(default)]
    pub algorithms: Option<Vec<String>>,
    /// `cache_max_entries` (extension): integer ≥ 1; default 10000. Capacity of the
    /// validation cache (LRU). One cache per validator: per process for Rust, C and the demo
    /// proxy, per worker in nginx and Kong (which also share results in a shared dict).
    #[serde(default = "default_cache_max_entries")]
    pub cache_max_entries: usize,
    /// `cache_ttl_max` (extension): integer, seconds; default 3600. Longest life of a cached
    /// positive result (a token's `exp` shortens it) and the bound on a decision's
    /// `valid_until` (docs/configuration.md, section 6). All surfaces.
    #[serde(default = "default_cache_ttl_max_secs")]
    pub cache_ttl_max: u64,
    /// `cache_ttl_negative` (extension): integer, seconds; default 5; 0 = never. How long a
    /// token rejection is cached; AS failures are never cached. All surfaces.
    #[serde(default = "default_cache_ttl_negative_secs")]
    pub cache_ttl_negative: u64,
    /// `trusted_proxies` (extension): array of IP addresses or CIDR blocks; default `[]`.
    /// Peers whose `X-Forwarded-Proto`/`-Host`/`-Port`/`-Prefix` build the `resource_metadata`
    /// URL of challenges (docs/configuration.md, section 3). All surfaces (the host passes
    /// the peer address).
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// `issuers` (extension): array of strings; default unset, meaning
    /// `authorization_servers` plus the issuer named by discovered metadata. The `iss` values
    /// local JWT validation accepts; when set, it replaces that default. Every accepted issuer
    /// is bound to one authorization server's keys: with several `authorization_servers`, an
    /// entry that is not one of them must be bound in `issuer_aliases` (else a configuration
    /// error). All surfaces.
    #[serde(default)]
    pub issuers: Option<Vec<String>>,
    /// `issuer_aliases` (extension): object mapping an issuer to the authorization server
    /// (one of `authorization_servers`) whose keys verify its tokens; default `{}`. For an
    /// authorization server that signs tokens with another `iss` than its metadata names
    /// (Entra ID's v1 `https://sts.windows.net/<tenant>/` beside v2 metadata). Aliases are
    /// accepted issuers. All surfaces.
    #[serde(default)]
    pub issuer_aliases: BTreeMap<String, String>,
    /// `scope_implies` (extension): object mapping a scope to the scopes it covers; default
    /// `{}`. Applied transitively when checking required scopes; nothing is implied by name.
    /// All surfaces.
    #[serde(default)]
    pub scope_implies: BTreeMap<String, Vec<String>>,
    /// `allowed_origins` (extension): array of origins (`scheme://host[:port]`); default
    /// unset (no origin check). A request whose `Origin` is present and not listed gets 403;
    /// listed origins get CORS headers and preflight answers (docs/configuration.md,
    /// section 7.4). All surfaces.
    #[serde(default)]
    pub allowed_origins: Option<Vec<String>>,
    /// `client_assertion_audience` (extension): string; default: the URL of the endpoint
    /// the assertion is sent to (`introspection_endpoint`, as RFC 7523 §3 and Kong do). The
    /// `aud` of JWT client assertions (`client_secret_jwt`, `private_key_jwt`); set it to the
    /// authorization server's issuer identifier for servers that want that (Auth0, and the
    /// RFC 7523 update draft). One string, never an array. Without a JWT `client_auth`, a
    /// configuration error. All surfaces.
    #[serde(default)]
    pub client_assertion_audience: Option<String>,
    /// `introspection_jwt_response` (extension): boolean; default `false`. `true` asks the
    /// introspection endpoint for signed answers (RFC 9701: `Accept:
    /// application/token-introspection+jwt`) and refuses unsigned ones (503), so that nobody
    /// on the path can forge an answer. Whatever this says, a signed answer
    /// (`application/token-introspection+jwt`) is always verified with the authorization
    /// server's keys (`jwks_endpoint`, or discovered from `metadata_discovery_endpoint` /
    /// `authorization_servers`), its `iss` must be an accepted issuer and its `aud` the
    /// gateway's `client_id`; one that does not verify is a 503. Needs
    /// `introspection_endpoint` and `client_id`. All surfaces.
    #[serde(default)]
    pub introspection_jwt_response: bool,
    /// `cluster_cache_strategy` (extension, Kong openid-connect's name): `"off"` or
    /// `"redis"`; default `"off"`. `redis` shares the authorization server's answers
    /// (introspection, token exchange) between gateway nodes through `cluster_cache_redis`:
    /// one authorization-server call per token across the cluster, revocations reaching
    /// every node. A Redis failure never fails a request (docs/cluster-cache.md). Rust and C
    /// with the blocking flow, the demo proxy, nginx and Kong.
    #[serde(default)]
    pub cluster_cache_strategy: ClusterCacheStrategy,
    /// `cluster_cache_redis` (extension): object; see [`ClusterCacheRedis`].
    #[serde(default)]
    pub cluster_cache_redis: ClusterCacheRedis,
}

/// `cluster_cache_strategy`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClusterCacheStrategy {
    /// Every node keeps its own cache (the default).
    #[default]
    Off,
    /// Nodes share answers through Redis.
    Redis,
}

/// `cluster_cache_redis`: the Redis server of the cluster cache (Kong openid-connect's field
/// names and defaults). Read only when `cluster_cache_strategy` is `redis`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct ClusterCacheRedis {
    /// `host`: string; default `"127.0.0.1"`.
    #[serde(default = "default_redis_host")]
    pub host: String,
    /// `port`: integer; default 6379.
    #[serde(default = "default_redis_port")]
    pub port: u16,
    /// `database`: integer; default 0.
    #[serde(default)]
    pub database: i64,
    /// `username`: string (Redis 6 ACL); default unset.
    #[serde(default)]
    pub username: Option<String>,
    /// `password`: string (secret: redacted in `Debug`, never in errors); default unset.
    #[serde(default)]
    pub password: Option<Secret>,
    /// `ssl`: boolean; default `false`. TLS to Redis.
    #[serde(default)]
    pub ssl: bool,
    /// `ssl_verify`: boolean; default `false` (Kong's default; a warning at start-up when TLS
    /// is on without it). Verify Redis's certificate.
    #[serde(default)]
    pub ssl_verify: bool,
    /// `server_name`: string; default unset. The TLS server name when it is not `host`.
    #[serde(default)]
    pub server_name: Option<String>,
    /// `connect_timeout`: integer milliseconds; default 2000.
    #[serde(default = "default_redis_timeout_ms")]
    pub connect_timeout: u64,
    /// `read_timeout`: integer milliseconds; default 2000.
    #[serde(default = "default_redis_timeout_ms")]
    pub read_timeout: u64,
    /// `send_timeout`: integer milliseconds; default 2000.
    #[serde(default = "default_redis_timeout_ms")]
    pub send_timeout: u64,
    /// `keepalive_pool_size`: integer; default 256. Connections kept per node (per nginx
    /// worker).
    #[serde(default = "default_redis_keepalive_pool_size")]
    pub keepalive_pool_size: u32,
    /// `keepalive_backlog`: integer; default unset. nginx's cosocket pool backlog (Kong's
    /// field); other surfaces have no such queue.
    #[serde(default)]
    pub keepalive_backlog: Option<u32>,
    /// `prefix`: string; default `"mcp_oauth2"`. The first part of every key this library
    /// writes in Redis.
    #[serde(default = "default_redis_prefix")]
    pub prefix: String,
    /// `sentinel_master`, `sentinel_role`, `sentinel_nodes`, `sentinel_addresses`,
    /// `sentinel_username`, `sentinel_password`, `cluster_nodes`, `cluster_addresses`,
    /// `cluster_max_redirections`, `connection_is_proxied`, `cloud_authentication` (Kong's
    /// names): Redis Sentinel, Redis Cluster and cloud-provider authentication are not
    /// supported yet; a value that asks for them is refused (`ErrorKind::Unsupported`),
    /// Kong's defaults (`null`, `false`, `[]`, no `auth_provider`) are accepted. Kong's
    /// deprecated `timeout` is accepted and ignored (the three timeouts above count).
    #[serde(default, flatten)]
    pub not_supported_yet: BTreeMap<String, Value>,
}

impl Default for ClusterCacheRedis {
    fn default() -> Self {
        ClusterCacheRedis {
            host: default_redis_host(),
            port: default_redis_port(),
            database: 0,
            username: None,
            password: None,
            ssl: false,
            ssl_verify: false,
            server_name: None,
            connect_timeout: default_redis_timeout_ms(),
            read_timeout: default_redis_timeout_ms(),
            send_timeout: default_redis_timeout_ms(),
            keepalive_pool_size: default_redis_keepalive_pool_size(),
            keepalive_backlog: None,
            prefix: default_redis_prefix(),
            not_supported_yet: BTreeMap::new(),
        }
    }
}

fn default_redis_host() -> String {
    "127.0.0.1".to_owned()
}
fn default_redis_port() -> u16 {
    6379
}
fn default_redis_timeout_ms() -> u64 {
    2000
}
fn default_redis_keepalive_pool_size() -> u32 {
    256
}
fn default_redis_prefix() -> String {
    "mcp_oauth2".to_owned()
}

/// JWS algorithms accepted for access tokens by default.
pub const DEFAULT_ALGORITHMS: &[&str] =
    &["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"];

/// Upstream header names no claim may be mapped to: hop-by-hop and framing headers, and
/// `Authorization` (which the library owns).
const RESERVED_UPSTREAM_HEADERS: &[&str] = &[
    "authorization",
    "connection",
    "content-length",
    "content-type",
    "host",
    "keep-alive",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

impl Config {
    /// A configuration with the two required fields and every default.
    pub fn new(resource: impl Into<String>, authorization_servers: Vec<String>) -> Self {
        let mut v = serde_json::json!({
            "resource": resource.into(),
            "authorization_servers": authorization_servers,
        });
        // Defaults live in one place (the serde attributes); reuse them.
        strip_nulls(&mut v);
        serde_json::from_value(v).expect("defaults of the two required fields always parse")
    }

    /// Parses and validates a configuration from JSON text (the bare Kong `config` object).
    pub fn from_json(text: &str) -> Result<Self, Error> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| Error::config("", format!("invalid JSON: {}", json_error_position(&e))))?;
        Self::from_value(value)
    }

    /// Parses and validates a configuration from JSON bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, Error> {
        let text = std::str::from_utf8(bytes).map_err(|_| Error::config("", "configuration is not valid UTF-8"))?;
        Self::from_json(text)
    }

    /// Parses and validates a configuration from a JSON value. `null` members mean unset.
    pub fn from_value(mut value: Value) -> Result<Self, Error> {
        if !value.is_object() {
            return Err(Error::config("", "configuration must be a JSON object"));
        }
        strip_nulls(&mut value);
        let config: Config = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            Error::config(path, scrub_serde_message(&e.into_inner().to_string()))
        })?;
        config.validate()?;
        Ok(config)
    }

    /// The client authentication method in effect: `client_auth`, or
    /// `client_secret_basic` when a secret is set, else `none`.
    pub fn effective_client_auth(&self) -> ClientAuth {
        self.client_auth.unwrap_or(if self.client_secret.is_some() {
            ClientAuth::ClientSecretBasic
        } else {
            ClientAuth::None
        })
    }

    /// The path the PRM document is served on (`metadata_endpoint`, or the path of
    /// `resource` + `/.well-known/oauth-protected-resource`).
    pub fn effective_metadata_endpoint(&self) -> String {
        match &self.metadata_endpoint {
            Some(p) => p.clone(),
            None => {
                let path = url::Url::parse(&self.resource)
                    .map(|u| u.path().trim_end_matches('/').to_owned())
                    .unwrap_or_default();
                format!("{path}/.well-known/oauth-protected-resource")
            }
        }
    }

    /// The JWS algorithms accepted for access tokens.
    pub fn effective_algorithms(&self) -> Vec<String> {
        match &self.algorithms {
            Some(a) => a.clone(),
            None => DEFAULT_ALGORITHMS.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    /// Checks every field and every cross-field rule. Called by [`Config::from_value`] and
    /// by [`Validator::new`](crate::Validator::new).
    pub fn validate(&self) -> Result<(), Error> {
        // The order of the checks is part of the behaviour: with several mistakes, the
        // first one in this order is reported.
        self.validate_resource()?;
        self.validate_scopes()?;
        self.validate_outbound_urls()?;
        self.validate_proxies()?;
        self.validate_introspection_extras()?;
        self.validate_client_credentials()?;
        self.validate_client_auth_fields()?;
        self.validate_client_alg()?;
        self.validate_client_keys()?;
        self.validate_outbound_limits()?;
        self.validate_claim_headers()?;
        self.validate_identity_claims()?;
        self.validate_token_exchange()?;
        self.validate_audiences()?;
        self.validate_algorithms()?;
        self.validate_cache_limits()?;
        self.validate_trusted_proxies()?;
        self.validate_issuers()?;
        self.validate_allowed_origins()?;
        self.validate_cluster_cache()
    }

    /// `cluster_cache_redis`, when the cluster cache is on: a usable address, bounded
    /// timeouts, a prefix; Sentinel and Cluster fields refused as not supported yet.
    fn validate_cluster_cache(&self) -> Result<(), Error> {
        let redis = &self.cluster_cache_redis;
        const KNOWN_LATER: &[&str] = &[
            "sentinel_master",
            "sentinel_role",
            "sentinel_nodes",
            "sentinel_addresses",
            "sentinel_username",
            "sentinel_password",
            "cluster_nodes",
            "cluster_addresses",
            "cluster_max_redirections",
            "connection_is_proxied",
            "cloud_authentication",
        ];
        for (name, value) in &redis.not_supported_yet {
            let field = format!("cluster_cache_redis.{name}");
            // Kong's deprecated single timeout: its three successors are what count.
            if name == "timeout" {
                if !value.is_u64() {
                    return Err(Error::config(field, "must be an integer (milliseconds)"));
                }
                continue;
            }
            if !KNOWN_LATER.contains(&name.as_str()) {
                return Err(Error::config(
                    field,
                    "unknown field (not part of the ai-mcp-oauth2 schema; check the spelling)",
                ));
            }
            // Kong writes defaults (false, empty lists, a cloud_authentication without a
            // provider) for these: only a value that asks for the feature is refused.
            let asks = match value {
                Value::Null | Value::Bool(false) => false,
                Value::Array(a) => !a.is_empty(),
                Value::Object(o) => o.get("auth_provider").is_some_and(|p| !p.is_null()),
                _ => true,
            };
            if asks {
                let what = if name == "cloud_authentication" {
                    "cloud-provider authentication to Redis is not supported yet"
                } else {
                    "Redis Sentinel and Redis Cluster are not supported yet"
                };
                return Err(Error::unsupported(field, what));
            }
        }
        if self.cluster_cache_strategy == ClusterCacheStrategy::Off {
            return Ok(());
        }
        if redis.host.is_empty() || redis.host.chars().any(|c| c.is_whitespace() || c.is_control() || c == '/') {
            return Err(Error::config("cluster_cache_redis.host", "must be a host name or an IP address"));
        }
        if redis.port == 0 {
            return Err(Error::config("cluster_cache_redis.port", "must be a TCP port (1-65535)"));
        }
        if redis.database < 0 {
            return Err(Error::config("cluster_cache_redis.database", "must not be negative"));
        }
        for (field, ms) in [
            ("cluster_cache_redis.connect_timeout", redis.connect_timeout),
            ("cluster_cache_redis.read_timeout", redis.read_timeout),
            ("cluster_cache_redis.send_timeout", redis.send_timeout),
        ] {
            if ms == 0 {
                return Err(Error::config(field, "must be at least 1 ms (there is no \"no timeout\")"));
            }
        }
        if redis.keepalive_pool_size == 0 {
            return Err(Error::config("cluster_cache_redis.keepalive_pool_size", "must be at least 1"));
        }
        if redis.prefix.is_empty() || redis.prefix.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(Error::config("cluster_cache_redis.prefix", "must be non-empty, without spaces"));
        }
        if redis.server_name.as_ref().is_some_and(|n| *n != redis.host) {
            return Err(Error::unsupported(
                "cluster_cache_redis.server_name",
                "a TLS server name other than host is not supported yet: set host to the name in Redis's certificate",
            ));
        }
        Ok(())
    }

    /// `resource`, `authorization_servers` and `metadata_endpoint`: what PRM advertises.
    fn validate_resource(&self) -> Result<(), Error> {
        check_url("resource", &self.resource)?;
        if url::Url::parse(&self.resource).is_ok_and(|u| u.fragment().is_some()) {
            return Err(Error::config("resource", "must not contain a fragment"));
        }
        if self.authorization_servers.is_empty() {
            return Err(Error::config("authorization_servers", "at least one issuer URL is required"));
        }
        for (i, u) in self.authorization_servers.iter().enumerate() {
            check_url(&format!("authorization_servers[{i}]"), u)?;
        }
        if let Some(p) = &self.metadata_endpoint {
            if !p.starts_with('/') || p.contains(['?', '#']) || p.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(Error::config(
                    "metadata_endpoint",
                    "must be an absolute path starting with '/', without query or fragment",
                ));
            }
        }
        Ok(())
    }

    /// Every scope list and map: each scope is an RFC 6749 scope-token.
    fn validate_scopes(&self) -> Result<(), Error> {
        check_scopes("scopes_supported", self.scopes_supported.as_deref().unwrap_or(&[]))?;
        check_scopes("scopes_required", &self.scopes_required)?;
        for (method, scopes) in &self.method_scopes {
            if method.is_empty() {
                return Err(Error::config("method_scopes", "method names must not be empty"));
            }
            check_scopes(&format!("method_scopes.{method}"), scopes)?;
        }
        for (scope, implied) in &self.scope_implies {
            check_scopes("scope_implies", std::slice::from_ref(scope))?;
            check_scopes(&format!("scope_implies.{scope}"), implied)?;
        }
        Ok(())
    }

    /// The URLs of outbound calls: authorization-server endpoints and forward proxies.
    fn validate_outbound_urls(&self) -> Result<(), Error> {
        for (field, value) in [
            ("introspection_endpoint", &self.introspection_endpoint),
            ("mtls_introspection_endpoint", &self.mtls_introspection_endpoint),
            ("jwks_endpoint", &self.jwks_endpoint),
            ("metadata_discovery_endpoint", &self.metadata_discovery_endpoint),
        ] {
            if let Some(u) = value {
                check_url(field, u)?;
            }
        }
        Ok(())
    }

    /// The forward proxies: `http://host[:port]` URLs, credentials only with their proxy,
    /// and a `no_proxy` list that parses and has a proxy to bypass.
    fn validate_proxies(&self) -> Result<(), Error> {
        for (field, url, auth_field, auth) in [
            ("http_proxy", &self.http_proxy, "http_proxy_authorization", &self.http_proxy_authorization),
            ("https_proxy", &self.https_proxy, "https_proxy_authorization", &self.https_proxy_authorization),
        ] {
            if let Some(u) = url {
                check_url(field, u)?;
                let parsed = url::Url::parse(u).map_err(|_| Error::config(field, "must be a URL"))?;
                if parsed.scheme() != "http" || !matches!(parsed.path(), "" | "/") || parsed.query().is_some() {
                    return Err(Error::config(
                        field,
                        "must be the proxy's http://host[:port] (no path; TLS to the proxy itself is not supported)",
                    ));
                }
            }
            match auth {
                Some(a) if a.expose().is_empty() || a.expose().bytes().any(|b| b.is_ascii_control()) => {
                    return Err(Error::config(
                        auth_field,
                        "must be a non-empty Proxy-Authorization value without control characters",
                    ));
                }
                _ => {}
            }
        }
        if let Some(list) = &self.no_proxy {
            NoProxy::parse(list)?;
        }
        Ok(())
    }

    /// `args` and `headers`: extras on the introspection request may not override what the
    /// library itself sends. They, `introspection_format` and `introspection_jwt_response`
    /// need an introspection endpoint to have an effect.
    fn validate_introspection_extras(&self) -> Result<(), Error> {
        if self.introspection_jwt_response && self.client_id.as_deref().is_none_or(str::is_empty) {
            return Err(Error::config(
                "client_id",
                "is required by introspection_jwt_response (a signed answer's aud must name it)",
            ));
        }
        for key in self.args.keys() {
            if key.is_empty() {
                return Err(Error::config("args", "form field names must not be empty"));
            }
            if matches!(
                key.as_str(),
                "token" | "client_id" | "client_secret" | "client_assertion" | "client_assertion_type"
            ) {
                return Err(Error::config(format!("args.{key}"), "is set by the library and cannot be overridden"));
            }
        }
        let auth = self.effective_client_auth();
        for (name, value) in &self.headers {
            let path = format!("headers.{name}");
            if !is_header_name(name) {
                return Err(Error::config(path, "is not a valid HTTP header name"));
            }
            if matches!(
                name.to_ascii_lowercase().as_str(),
                "content-type" | "content-length" | "host" | "transfer-encoding" | "connection"
            ) {
                return Err(Error::config(path, "is set by the library and cannot be overridden"));
            }
            if name.eq_ignore_ascii_case("authorization") && auth == ClientAuth::ClientSecretBasic {
                return Err(Error::config(
                    path,
                    "conflicts with client_auth client_secret_basic, which sets Authorization",
                ));
            }
            if value.expose().bytes().any(|b| b.is_ascii_control() && b != b'\t') {
                return Err(Error::config(path, "value must not contain control characters"));
            }
        }
        Ok(())
    }

    /// The credentials each client authentication method needs.
    fn validate_client_credentials(&self) -> Result<(), Error> {
        let auth = self.effective_client_auth();
        let required = |field: &str| Error::config(field, format!("is required by client_auth {}", auth.as_str()));
        match auth {
            ClientAuth::ClientSecretBasic | ClientAuth::ClientSecretPost | ClientAuth::ClientSecretJwt => {
                if self.client_id.as_deref().is_none_or(str::is_empty) {
                    return Err(required("client_id"));
                }
                if self.client_secret.as_ref().is_none_or(|s| s.expose().is_empty()) {
                    return Err(required("client_secret"));
                }
            }
            ClientAuth::PrivateKeyJwt => {
                if self.client_id.as_deref().is_none_or(str::is_empty) {
                    return Err(required("client_id"));
                }
                if self.client_jwk.is_none() {
                    return Err(required("client_jwk"));
                }
            }
            ClientAuth::TlsClientAuth | ClientAuth::SelfSignedTlsClientAuth => {
                // RFC 8705 §2: the client is identified by `client_id` in the request.
                if self.client_id.as_deref().is_none_or(str::is_empty) {
                    return Err(required("client_id"));
                }
                if self.tls_client_auth_cert.is_none() {
                    return Err(required("tls_client_auth_cert"));
                }
                if self.tls_client_auth_key.is_none() {
                    return Err(required("tls_client_auth_key"));
                }
            }
            ClientAuth::None => {}
        }
        Ok(())
    }

    /// Fields that are set but have no effect with the rest of the configuration: Kong
    /// accepts them, so they load here too (a pasted configuration must keep working), and
    /// construction says so instead: one warning each (`Validator::warnings`), so that a stale
    /// `client_jwk` never looks like it signs anything.
    pub(crate) fn ineffective_fields(&self) -> Vec<String> {
        let auth = self.effective_client_auth();
        let jwt = matches!(auth, ClientAuth::ClientSecretJwt | ClientAuth::PrivateKeyJwt);
        let uses_secret =
            matches!(auth, ClientAuth::ClientSecretBasic | ClientAuth::ClientSecretPost | ClientAuth::ClientSecretJwt);
        let because_auth = format!("has no effect with client_auth {}", auth.as_str());
        let no_introspection = "has no effect without introspection_endpoint (tokens are validated locally as JWTs)";
        let no_proxy = self.http_proxy.is_none() && self.https_proxy.is_none();
        let mut out = Vec::new();
        for (field, set, used, why) in [
            ("client_secret", self.client_secret.is_some(), uses_secret, because_auth.as_str()),
            ("client_jwk", self.client_jwk.is_some(), auth == ClientAuth::PrivateKeyJwt, &because_auth),
            ("client_alg", self.client_alg.is_some(), jwt, &because_auth),
            ("client_assertion_audience", self.client_assertion_audience.is_some(), jwt, &because_auth),
            ("tls_client_auth_cert", self.tls_client_auth_cert.is_some(), auth.is_tls(), &because_auth),
            ("tls_client_auth_key", self.tls_client_auth_key.is_some(), auth.is_tls(), &because_auth),
            ("tls_client_auth_ssl_verify", !self.tls_client_auth_ssl_verify, auth.is_tls(), &because_auth),
            ("mtls_introspection_endpoint", self.mtls_introspection_endpoint.is_some(), auth.is_tls(), &because_auth),
            ("args", !self.args.is_empty(), self.introspection_endpoint.is_some(), no_introspection),
            ("headers", !self.headers.is_empty(), self.introspection_endpoint.is_some(), no_introspection),
            (
                "introspection_format",
                self.introspection_format.is_some(),
                self.introspection_endpoint.is_some(),
                no_introspection,
            ),
            (
                "introspection_jwt_response",
                self.introspection_jwt_response,
                self.introspection_endpoint.is_some(),
                no_introspection,
            ),
            (
                "http_proxy_authorization",
                self.http_proxy_authorization.is_some(),
                self.http_proxy.is_some(),
                "has no effect without http_proxy",
            ),
            (
                "https_proxy_authorization",
                self.https_proxy_authorization.is_some(),
                self.https_proxy.is_some(),
                "has no effect without https_proxy",
            ),
            ("no_proxy", self.no_proxy.is_some(), !no_proxy, "has no effect without http_proxy or https_proxy"),
        ] {
            if set && !used {
                out.push(format!("{field}: set, but {why}"));
            }
        }
        out
    }

    fn validate_client_auth_fields(&self) -> Result<(), Error> {
        if self.client_assertion_audience.as_deref().is_some_and(str::is_empty) {
            return Err(Error::config("client_assertion_audience", "must not be empty"));
        }
        Ok(())
    }

    /// The keys and certificates of the client authentication, parsed as they will be used
    /// (so that a key that does not fit `client_alg` is a configuration error, not a 503).
    fn validate_client_keys(&self) -> Result<(), Error> {
        let secret = || self.client_secret.as_ref().map_or("", |s| s.expose());
        match self.effective_client_auth() {
            ClientAuth::ClientSecretJwt => client_keys::hmac_signer(self.client_alg.as_deref(), secret()).map(drop),
            ClientAuth::PrivateKeyJwt => {
                let jwk = self.client_jwk.as_ref().map_or("", |j| j.0.expose());
                client_keys::private_key_signer(jwk, self.client_alg.as_deref()).map(drop)
            }
            ClientAuth::TlsClientAuth | ClientAuth::SelfSignedTlsClientAuth => client_keys::check_certificate_and_key(
                self.tls_client_auth_cert.as_deref().unwrap_or_default(),
                self.tls_client_auth_key.as_ref().map_or("", |k| k.expose()),
            ),
            ClientAuth::None | ClientAuth::ClientSecretBasic | ClientAuth::ClientSecretPost => Ok(()),
        }
    }

    /// `client_alg` must suit the client authentication method.
    fn validate_client_alg(&self) -> Result<(), Error> {
        let Some(alg) = &self.client_alg else { return Ok(()) };
        let auth = self.effective_client_auth();
        let ok = match auth {
            ClientAuth::ClientSecretJwt => matches!(alg.as_str(), "HS256" | "HS384" | "HS512"),
            ClientAuth::PrivateKeyJwt => matches!(
                alg.as_str(),
                "RS256" | "RS384" | "RS512" | "PS256" | "PS384" | "PS512" | "ES256" | "ES384" | "ES512" | "EdDSA"
            ),
            // No other method signs anything: the value has no effect (a warning, see
            // `ineffective_fields`), but it must still name a JWS algorithm Kong knows.
            _ => matches!(
                alg.as_str(),
                "HS256"
                    | "HS384"
                    | "HS512"
                    | "RS256"
                    | "RS384"
                    | "RS512"
                    | "PS256"
                    | "PS384"
                    | "PS512"
                    | "ES256"
                    | "ES384"
                    | "ES512"
                    | "EdDSA"
            ),
        };
        if !ok {
            return Err(Error::config(
                "client_alg",
                format!("is not a JWS algorithm usable with client_auth {}", auth.as_str()),
            ));
        }
        Ok(())
    }

    /// `timeout` and `metadata_discovery_retry`: every outbound call is bounded and tried.
    fn validate_outbound_limits(&self) -> Result<(), Error> {
        if self.timeout == 0 {
            return Err(Error::config("timeout", "must be at least 1 ms (there is no \"no timeout\")"));
        }
        if self.metadata_discovery_retry == 0 {
            return Err(Error::config("metadata_discovery_retry", "must be at least 1"));
        }
        Ok(())
    }

    /// `claim_to_header` / `upstream_headers`: one of them, valid and distinct header names
    /// that are not reserved, and non-empty claim paths.
    fn validate_claim_headers(&self) -> Result<(), Error> {
        if !self.claim_to_header.is_empty() && !self.upstream_headers.is_empty() {
            return Err(Error::config("upstream_headers", "cannot be combined with claim_to_header; use one of them"));
        }
        let mut seen: Vec<String> = Vec::new();
        let mut check_header = |path: String, header: &str| -> Result<(), Error> {
            if !is_header_name(header) {
                return Err(Error::config(path, "is not a valid HTTP header name"));
            }
            let lower = header.to_ascii_lowercase();
            if RESERVED_UPSTREAM_HEADERS.contains(&lower.as_str()) {
                return Err(Error::config(path, "is reserved and cannot carry a claim"));
            }
            if seen.contains(&lower) {
                return Err(Error::config(path, "is mapped twice"));
            }
            seen.push(lower);
            Ok(())
        };
        for (i, m) in self.claim_to_header.iter().enumerate() {
            if m.claim.is_empty() {
                return Err(Error::config(format!("claim_to_header[{i}].claim"), "must not be empty"));
            }
            check_header(format!("claim_to_header[{i}].header"), &m.header)?;
        }
        for (i, m) in self.upstream_headers.iter().enumerate() {
            check_header(format!("upstream_headers[{i}].header"), &m.header)?;
            check_path(&format!("upstream_headers[{i}].path"), &m.path)?;
        }
        Ok(())
    }

    /// The identity outputs: consumer, groups and credential claims, `consumer_by`.
    fn validate_identity_claims(&self) -> Result<(), Error> {
        if let Some(p) = &self.consumer_claim {
            check_path("consumer_claim", p)?;
        }
        if let Some(p) = &self.consumer_groups_claim {
            check_path("consumer_groups_claim", p)?;
        }
        check_path("credential_claim", &self.credential_claim)?;
        if self.consumer_by.is_empty() {
            return Err(Error::config("consumer_by", "must list at least one of id, username, custom_id"));
        }
        Ok(())
    }

    /// An enabled `token_exchange` needs its endpoint and `passthrough_credentials` (Kong's rule).
    fn validate_token_exchange(&self) -> Result<(), Error> {
        let Some(te) = self.token_exchange.as_ref().filter(|te| te.enabled) else { return Ok(()) };
        match &te.token_endpoint {
            Some(u) => check_url("token_exchange.token_endpoint", u)?,
            None => {
                return Err(Error::config(
                    "token_exchange.token_endpoint",
                    "is required when token exchange is enabled",
                ))
            }
        }
        if !self.passthrough_credentials {
            return Err(Error::config(
                "token_exchange.enabled",
                "requires passthrough_credentials: true (upstream receives the exchanged token)",
            ));
        }
        let (id, secret) = match te.effective_client_auth() {
            ExchangeClientAuth::Inherit | ExchangeClientAuth::None => (true, true),
            ExchangeClientAuth::ClientSecretBasic | ExchangeClientAuth::ClientSecretPost => {
                (te.client_id.is_some(), te.client_secret.is_some())
            }
        };
        if !id {
            return Err(Error::config("token_exchange.client_id", "is required by token_exchange.client_auth"));
        }
        if !secret {
            return Err(Error::config("token_exchange.client_secret", "is required by token_exchange.client_auth"));
        }
        let request = &te.request;
        for (field, uri) in [
            ("token_exchange.request.subject_token_type", Some(&request.subject_token_type)),
            ("token_exchange.request.requested_token_type", Some(&request.requested_token_type)),
            ("token_exchange.request.actor_token_type", request.actor_token_type.as_ref()),
            ("token_exchange.request.resource", request.resource.as_ref()),
        ] {
            if uri.is_some_and(|u| url::Url::parse(u).is_err()) {
                return Err(Error::config(field, "must be an absolute URI"));
            }
        }
        check_scopes("token_exchange.request.scopes", &request.scopes)?;
        if request.audience.iter().any(String::is_empty) {
            return Err(Error::config("token_exchange.request.audience", "values must not be empty"));
        }
        match request.actor_token_source.unwrap_or(ActorTokenSource::None) {
            ActorTokenSource::None => {}
            ActorTokenSource::Header => match &request.actor_token_header {
                Some(h) if is_header_name(h) && !h.eq_ignore_ascii_case("authorization") => {}
                Some(_) => {
                    return Err(Error::config(
                        "token_exchange.request.actor_token_header",
                        "is not a valid HTTP header name (and not Authorization)",
                    ))
                }
                None => {
                    return Err(Error::config(
                        "token_exchange.request.actor_token_header",
                        "is required by actor_token_source header",
                    ))
                }
            },
            ActorTokenSource::Config => {
                if request.actor_token.is_none() {
                    return Err(Error::config(
                        "token_exchange.request.actor_token",
                        "is required by actor_token_source config",
                    ));
                }
            }
        }
        Ok(())
    }

    /// `audiences` and `audiences_denied`: no empty values, and `resource` is never denied.
    fn validate_audiences(&self) -> Result<(), Error> {
        for (field, values) in [("audiences", &self.audiences), ("audiences_denied", &self.audiences_denied)] {
            if values.iter().any(String::is_empty) {
                return Err(Error::config(field, "values must not be empty"));
            }
        }
        if self.audiences_denied.contains(&self.resource) {
            return Err(Error::config("audiences_denied", "must not contain the resource itself"));
        }
        Ok(())
    }

    /// `algorithms`: a non-empty subset of [`DEFAULT_ALGORITHMS`] (never `none` or HS*).
    fn validate_algorithms(&self) -> Result<(), Error> {
        let Some(algs) = &self.algorithms else { return Ok(()) };
        if algs.is_empty() {
            return Err(Error::config("algorithms", "must list at least one algorithm"));
        }
        for (i, a) in algs.iter().enumerate() {
            if !DEFAULT_ALGORITHMS.contains(&a.as_str()) {
                return Err(Error::config(
                    format!("algorithms[{i}]"),
                    format!("{a:?} is not allowed (allowed: {}; never none or HS*)", DEFAULT_ALGORITHMS.join(", ")),
                ));
            }
        }
        Ok(())
    }

    /// `cache_max_entries`: the cache holds at least one entry.
    fn validate_cache_limits(&self) -> Result<(), Error> {
        if self.cache_max_entries == 0 {
            return Err(Error::config("cache_max_entries", "must be at least 1"));
        }
        Ok(())
    }

    /// `trusted_proxies`: IP addresses or CIDR blocks.
    fn validate_trusted_proxies(&self) -> Result<(), Error> {
        for (i, p) in self.trusted_proxies.iter().enumerate() {
            if parse_cidr(p).is_none() {
                return Err(Error::config(format!("trusted_proxies[{i}]"), "must be an IP address or CIDR"));
            }
        }
        Ok(())
    }

    /// `issuers` and `issuer_aliases`: every accepted issuer is bound to exactly one key
    /// source. With one authorization server (or `jwks_endpoint`) every issuer is bound to
    /// it; with several, an issuer is one of them or an alias naming one of them.
    fn validate_issuers(&self) -> Result<(), Error> {
        if let Some(issuers) = &self.issuers {
            if issuers.is_empty() || issuers.iter().any(String::is_empty) {
                return Err(Error::config("issuers", "must list non-empty issuer identifiers"));
            }
        }
        for (alias, server) in &self.issuer_aliases {
            if alias.is_empty() {
                return Err(Error::config("issuer_aliases", "issuer names must not be empty"));
            }
            if !self.authorization_servers.contains(server) {
                return Err(Error::config(format!("issuer_aliases.{alias}"), "must be one of authorization_servers"));
            }
            if self.authorization_servers.iter().any(|s| s == alias && s != server) {
                return Err(Error::config(
                    format!("issuer_aliases.{alias}"),
                    "is itself one of authorization_servers: it cannot be bound to another one",
                ));
            }
        }
        let several = self.authorization_servers.len() > 1 && self.jwks_endpoint.is_none();
        if several {
            if self.metadata_discovery_endpoint.is_some() {
                return Err(Error::config(
                    "metadata_discovery_endpoint",
                    "names one authorization server's metadata: with several authorization_servers leave it unset \
                     (each server's metadata is discovered)",
                ));
            }
            for (i, iss) in self.issuers.iter().flatten().enumerate() {
                if !self.authorization_servers.contains(iss) && !self.issuer_aliases.contains_key(iss) {
                    return Err(Error::config(
                        format!("issuers[{i}]"),
                        "is not one of authorization_servers: with several, bind it to the server whose keys \
                         verify it in issuer_aliases",
                    ));
                }
            }
        }
        Ok(())
    }

    /// `allowed_origins`, when set: bare origins (`scheme://host[:port]`).
    fn validate_allowed_origins(&self) -> Result<(), Error> {
        let Some(origins) = &self.allowed_origins else { return Ok(()) };
        for (i, o) in origins.iter().enumerate() {
            if !is_origin(o) {
                return Err(Error::config(
                    format!("allowed_origins[{i}]"),
                    "must be an origin: scheme://host[:port], without path",
                ));
            }
        }
        Ok(())
    }
}

/// Removes every `null` object member, recursively: `null` means "unset".
fn strip_nulls(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|_, v| !v.is_null());
            m.values_mut().for_each(strip_nulls);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

fn json_error_position(e: &serde_json::Error) -> String {
    format!("line {} column {}", e.line(), e.column())
}

/// serde's "unknown field" message lists every field name; say it shortly instead.
fn scrub_serde_message(msg: &str) -> String {
    // serde_path_to_error already puts the unknown name at the end of the path.
    if msg.starts_with("unknown field") {
        "unknown field (not part of the ai-mcp-oauth2 schema; check the spelling)".to_owned()
    } else {
        msg.to_owned()
    }
}

/// Absolute `http`/`https` URL with a host. The value is never echoed (it may hold userinfo).
fn check_url(field: &str, value: &str) -> Result<(), Error> {
    match url::Url::parse(value) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some_and(|h| !h.is_empty()) => {
            if !u.username().is_empty() || u.password().is_some() {
                return Err(Error::config(field, "must not contain credentials"));
            }
            Ok(())
        }
        _ => Err(Error::config(field, "must be an absolute http:// or https:// URL")),
    }
}

/// RFC 6749 scope-token: `1*( %x21 / %x23-5B / %x5D-7E )`.
fn check_scopes(field: &str, scopes: &[String]) -> Result<(), Error> {
    for (i, s) in scopes.iter().enumerate() {
        let ok =
            !s.is_empty() && s.bytes().all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b));
        if !ok {
            return Err(Error::config(
                format!("{field}[{i}]"),
                "is not a valid scope (printable ASCII without space, '\"' or '\\')",
            ));
        }
    }
    Ok(())
}

fn check_path(field: &str, path: &ClaimPath) -> Result<(), Error> {
    if path.0.is_empty() || path.0.iter().any(String::is_empty) {
        return Err(Error::config(field, "must be a non-empty claim path without empty elements"));
    }
    Ok(())
}

/// RFC 9110 `token`.
pub(crate) fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

fn is_origin(o: &str) -> bool {
    match url::Url::parse(o) {
        Ok(u) => {
            matches!(u.scheme(), "http" | "https")
                && u.host_str().is_some()
                && u.path() == "/"
                && u.query().is_none()
                && u.fragment().is_none()
                && !o.ends_with('/')
        }
        Err(_) => false,
    }
}

/// A validated configuration for unit tests: `base` with the members of `extra` set on top.
#[cfg(test)]
pub(crate) fn test_config(mut base: Value, extra: Value) -> Config {
    for (k, x) in extra.as_object().expect("extra is an object") {
        base[k] = x.clone();
    }
    Config::from_value(base).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(v: Value) -> String {
        Config::from_value(v).unwrap_err().to_string()
    }

    fn base() -> Value {
        json!({
            "resource": "http://127.0.0.1:8080/mcp",
            "authorization_servers": ["http://127.0.0.1:9400/realms/mcp"],
            "introspection_endpoint": "http://127.0.0.1:9400/introspect",
            "client_id": "kong",
            "client_secret": "kong-secret"
        })
    }

    fn with(extra: Value) -> Value {
        let mut v = base();
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        v
    }

    #[test]
    fn kong_documentation_example_loads_unchanged() {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/testdata/kong-config.json")).unwrap();
        let c = Config::from_json(&text).unwrap();
        assert!(c.insecure_relaxed_audience_validation);
        assert_eq!(c.claim_to_header[0].claim, "sub");
        assert_eq!(c.effective_client_auth(), ClientAuth::ClientSecretBasic);
        assert_eq!(c.effective_metadata_endpoint(), "/mcp/.well-known/oauth-protected-resource");
        assert_eq!(c.timeout, 10_000);
        assert!(c.cache_introspection && c.ssl_verify && c.keepalive);
        assert_eq!(c.audiences_denied, vec!["account"]);
        assert_eq!(c.consumer_by, vec![ConsumerBy::CustomId, ConsumerBy::Username]);
        assert_eq!(c.credential_claim, ClaimPath::claim("sub"));
    }

    #[test]
    fn nulls_mean_unset_like_deck_dump() {
        let c = Config::from_value(with(json!({
            "timeout": null, "scopes_supported": null, "claim_to_header": null,
            "token_exchange": null, "cache_introspection": null, "http_version": 1.1
        })))
        .unwrap();
        assert_eq!(c.timeout, 10_000);
        assert!(c.cache_introspection);
    }

    #[test]
    fn unknown_fields_are_errors_naming_the_field() {
        assert_eq!(
            err(with(json!({"clent_secret": "x"}))),
            "clent_secret: unknown field (not part of the ai-mcp-oauth2 schema; check the spelling)"
        );
        let e = err(with(json!({"claim_to_header": [{"claim": "sub", "header": "X", "hdr": 1}]})));
        assert!(e.starts_with("claim_to_header[0].hdr: unknown field"), "{e}");
        let e = err(with(json!({"token_exchange": {"request": {"audiences": []}}})));
        assert!(e.starts_with("token_exchange.request.audiences: unknown field"), "{e}");
    }

    #[test]
    fn errors_name_the_field_path() {
        assert_eq!(
            err(with(json!({"claim_to_header": [{"claim": "sub", "header": "X User"}]}))),
            "claim_to_header[0].header: is not a valid HTTP header name"
        );
        assert_eq!(err(with(json!({"timeout": "soon"}))).split(':').next().unwrap(), "timeout");
        assert_eq!(
            err(with(json!({"resource": "not a url"}))),
            "resource: must be an absolute http:// or https:// URL"
        );
        assert_eq!(
            err(with(json!({"authorization_servers": ["http://a", "ftp://b"]}))),
            "authorization_servers[1]: must be an absolute http:// or https:// URL"
        );
        assert!(err(json!({"authorization_servers": ["http://a"]})).contains("missing field `resource`"));
        assert!(err(with(json!({"upstream_headers": [{"header": "X-R", "path": []}]})))
            .starts_with("upstream_headers[0].path:"));
        assert!(err(with(json!({"client_auth": "magic"}))).starts_with("client_auth: unknown variant"));
        assert!(err(with(json!({"trusted_proxies": ["10.0.0.0/8", "nope"]}))).starts_with("trusted_proxies[1]:"));
        assert!(err(with(json!({"algorithms": ["RS256", "none"]}))).starts_with("algorithms[1]:"));
        assert!(err(with(json!({"algorithms": ["HS256"]}))).starts_with("algorithms[0]:"));
        assert!(err(with(json!({"scopes_required": ["a b"]}))).starts_with("scopes_required[0]:"));
        assert!(err(with(json!({"timeout": 0}))).starts_with("timeout:"));
        assert!(err(with(json!({"allowed_origins": ["https://a.example/path"]}))).starts_with("allowed_origins[0]:"));
    }

    #[test]
    fn claim_to_header_and_upstream_headers_are_exclusive() {
        let e = err(with(json!({
            "claim_to_header": [{"claim": "sub", "header": "X-User"}],
            "upstream_headers": [{"header": "X-Roles", "path": ["realm_access", "roles"]}]
        })));
        assert!(e.starts_with("upstream_headers:"), "{e}");
    }

    #[test]
    fn reserved_and_duplicate_headers_are_rejected() {
        assert!(
            err(with(json!({"claim_to_header": [{"claim": "sub", "header": "Authorization"}]}))).contains("reserved")
        );
        assert!(err(with(
            json!({"claim_to_header": [{"claim": "sub", "header": "X-A"}, {"claim": "aud", "header": "x-a"}]})
        ))
        .starts_with("claim_to_header[1].header: is mapped twice"));
    }

    #[test]
    fn client_auth_requirements() {
        let mut v = base();
        v.as_object_mut().unwrap().remove("client_secret");
        assert_eq!(Config::from_value(v.clone()).unwrap().effective_client_auth(), ClientAuth::None);
        v["client_auth"] = json!("client_secret_post");
        assert_eq!(err(v), "client_secret: is required by client_auth client_secret_post");
        assert!(err(with(json!({"client_auth": "private_key_jwt"}))).starts_with("client_jwk:"));
        assert!(err(with(json!({"client_auth": "tls_client_auth"}))).starts_with("tls_client_auth_cert:"));
        assert!(err(with(json!({"headers": {"Authorization": "x"}}))).starts_with("headers.Authorization:"));
        assert!(err(with(json!({"args": {"token": "x"}}))).starts_with("args.token:"));
    }

    #[test]
    fn secrets_never_appear_in_errors_or_debug() {
        let e = err(with(json!({"client_secret": 918273645})));
        assert!(!e.contains("918273645"), "{e}");
        assert!(e.starts_with("client_secret:"));
        let e = err(with(json!({"introspection_endpoint": "http://user:hunter2@as/introspect"})));
        assert!(!e.contains("hunter2"), "{e}");
        let c = Config::from_value(with(json!({
            "token_exchange": {"client_secret": "te-secret-value"}
        })))
        .unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("kong-secret") && !dbg.contains("te-secret-value"), "{dbg}");
        // A stale key of another method loads (Kong accepts it) and is warned about, without
        // echoing it.
        let c = Config::from_value(with(json!({"client_jwk": {"kty": "oct", "k": "c2VjcmV0LWp3ay12YWx1ZQ"}}))).unwrap();
        let w = c.ineffective_fields();
        assert_eq!(w, ["client_jwk: set, but has no effect with client_auth client_secret_basic"]);
        assert!(!format!("{w:?} {c:?}").contains("c2VjcmV0"));
    }

    #[test]
    fn token_exchange_parses_and_requires_passthrough() {
        let te = json!({"enabled": true, "token_endpoint": "http://as/token",
            "request": {"subject_token_type": "urn:ietf:params:oauth:token-type:access_token", "audience": ["x"]},
            "cache": {"ttl": 60}});
        assert_eq!(
            err(with(json!({"token_exchange": te.clone()}))).split(':').next().unwrap(),
            "token_exchange.enabled"
        );
        let c = Config::from_value(with(json!({"token_exchange": te, "passthrough_credentials": true}))).unwrap();
        assert_eq!(c.token_exchange.unwrap().cache.ttl, 60);
    }

    #[test]
    fn claim_paths_accept_strings_and_indices() {
        let c = Config::from_value(with(json!({
            "upstream_headers": [{"header": "X-First-Group", "path": ["groups", 0]}],
            "consumer_claim": "sub",
            "http_version": "1.0"
        })))
        .unwrap();
        assert_eq!(c.upstream_headers[0].path.0, vec!["groups", "0"]);
        assert_eq!(c.consumer_claim, Some(ClaimPath::claim("sub")));
        assert_eq!(c.http_version, HttpVersion::Http10);
    }

    #[test]
    fn config_new_has_every_documented_default() {
        let c = Config::new("https://mcp.example.com/mcp", vec!["https://as.example.com".into()]);
        assert_eq!(c.max_request_body_size, 1_048_576);
        assert!(c.cache_introspection && c.tls_client_auth_ssl_verify && c.ssl_verify && c.keepalive);
        assert_eq!((c.jwks_cache_ttl, c.metadata_cache_ttl, c.cache_ttl_max), (3600, 3600, 3600));
        assert_eq!((c.metadata_discovery_retry, c.timeout, c.jwt_claims_leeway), (3, 10_000, 0));
        assert_eq!(c.http_version, HttpVersion::Http11);
        assert_eq!(c.consumer_by, vec![ConsumerBy::CustomId, ConsumerBy::Username]);
        assert_eq!(c.credential_claim, ClaimPath::claim("sub"));
        assert_eq!(c.audiences_denied, vec!["account"]);
        assert_eq!(c.access_token_type, AccessTokenType::Any);
        assert_eq!((c.cache_max_entries, c.cache_ttl_negative), (10_000, 5));
        assert!(!c.insecure_relaxed_audience_validation && !c.passthrough_credentials);
        assert!(c.token_exchange.is_none() && c.allowed_origins.is_none() && c.issuers.is_none());
        // The record's Default and its serde defaults are the same values.
        let te: TokenExchange = serde_json::from_value(json!({})).unwrap();
        assert_eq!(te.cache, TokenExchangeCache::default());
        assert_eq!(te.cache, TokenExchangeCache { enabled: true, ttl: 3600 });
    }

    #[test]
    fn metadata_endpoint_default_follows_resource_path() {
        let c = Config::new("https://mcp.example.com", vec!["https://as.example.com".into()]);
        assert_eq!(c.effective_metadata_endpoint(), "/.well-known/oauth-protected-resource");
        let c = Config::new("https://mcp.example.com/a/b/", vec!["https://as.example.com".into()]);
        assert_eq!(c.effective_metadata_endpoint(), "/a/b/.well-known/oauth-protected-resource");
    }
}
