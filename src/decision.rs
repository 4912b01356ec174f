//! What the host does with a request: answer it ([`Response`]) or send it upstream
//! ([`Forward`]); every challenge and JSON body the library sends (docs/configuration.md,
//! "Decisions and responses").

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::clock::UnixMs;
use crate::headers::HeaderPlan;
use crate::token::Secret;

/// Why a decision was made. Stable names for logs and metrics via [`Reason::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// The token is valid and sufficient: forward upstream.
    Allowed,
    /// The Protected Resource Metadata document was served.
    Metadata,
    /// A CORS preflight was answered.
    Preflight,
    /// A method other than GET/HEAD on a metadata path (405).
    MethodNotAllowed,
    /// An `Origin` not in `allowed_origins` (403).
    OriginNotAllowed,
    /// No `Authorization: Bearer` credentials (401 without `error`).
    NoCredentials,
    /// Two `Authorization` headers, an empty or malformed bearer token, or an unreadable
    /// JSON-RPC body when `method_scopes` need it (400).
    InvalidRequest,
    /// The body is larger than `max_request_body_size` and needed for `method_scopes` (413).
    RequestBodyTooLarge,
    /// A token longer than 16 KiB (401 `invalid_token`, the AS is not contacted).
    TokenTooLong,
    /// The authorization server says the token is not active (401).
    TokenInactive,
    /// `exp` has passed (401).
    TokenExpired,
    /// `nbf` is in the future (401).
    TokenNotYetValid,
    /// The token's claims are malformed (401).
    TokenMalformed,
    /// `aud` does not name this resource (401).
    AudienceMismatch,
    /// A JWT's `alg` is not in `algorithms` (`none` and HS* never are) (401).
    TokenAlgorithmNotAllowed,
    /// No key of the JWKS matches the JWT's `kid` (after one refetch), or a kid-less JWT
    /// fits no single key (401).
    TokenKeyUnknown,
    /// A JWT's signature does not verify (401).
    TokenSignatureInvalid,
    /// A JWT's `iss` is not an accepted issuer (401).
    IssuerMismatch,
    /// A JWT that is not an access token: an ID token (`nonce`), or a JOSE `typ` other
    /// than `at+jwt` when `access_token_type` is `at+jwt` (401).
    TokenTypeInvalid,
    /// The token lacks a scope this operation needs (403 `insufficient_scope`).
    InsufficientScope,
    /// `consumer_claim` is configured, not optional, and absent from the token (403).
    ConsumerMissing,
    /// `consumer_groups_claim` is configured, not optional, and absent (403).
    ConsumerGroupsMissing,
    /// A mapped claim value cannot be sent as a header (CR/LF/NUL, over 8 KiB) (403).
    ClaimHeaderInvalid,
    /// The host found no consumer for the token's `consumer_claim` value and consumers
    /// are not optional (403; the Kong plugin).
    ConsumerNotFound,
    /// The host found none of the token's consumer groups and groups are not optional
    /// (403; the Kong plugin).
    ConsumerGroupsNotFound,
    /// The host's consumer look-up failed (503; the Kong plugin's database).
    ConsumerLookupFailed,
    /// The host could not get a decision (a bug caught at the boundary): 500.
    InternalError,
    /// The authorization server failed: unreachable, timeout, non-200, non-JSON,
    /// oversize (503).
    AuthorizationServerUnavailable,
}

impl Reason {
    /// Every reason, in declaration order (`Reason::X as usize` indexes it).
    pub(crate) const ALL: [Reason; 28] = [
        Reason::Allowed,
        Reason::Metadata,
        Reason::Preflight,
        Reason::MethodNotAllowed,
        Reason::OriginNotAllowed,
        Reason::NoCredentials,
        Reason::InvalidRequest,
        Reason::RequestBodyTooLarge,
        Reason::TokenTooLong,
        Reason::TokenInactive,
        Reason::TokenExpired,
        Reason::TokenNotYetValid,
        Reason::TokenMalformed,
        Reason::AudienceMismatch,
        Reason::TokenAlgorithmNotAllowed,
        Reason::TokenKeyUnknown,
        Reason::TokenSignatureInvalid,
        Reason::IssuerMismatch,
        Reason::TokenTypeInvalid,
        Reason::InsufficientScope,
        Reason::ConsumerMissing,
        Reason::ConsumerGroupsMissing,
        Reason::ClaimHeaderInvalid,
        Reason::ConsumerNotFound,
        Reason::ConsumerGroupsNotFound,
        Reason::ConsumerLookupFailed,
        Reason::InternalError,
        Reason::AuthorizationServerUnavailable,
    ];

    /// What kind of outcome a decision with this reason is, for metrics and logs:
    /// `allow` (forwarded, or the library answered a request that needs no token: the
    /// metadata document, a preflight), `deny` (refused), or `error` (the authorization
    /// server or the host failed: 503/500).
    pub fn outcome(self) -> &'static str {
        match self {
            Reason::Allowed | Reason::Metadata | Reason::Preflight => "allow",
            Reason::AuthorizationServerUnavailable | Reason::ConsumerLookupFailed | Reason::InternalError => "error",
            _ => "deny",
        }
    }

    /// A stable snake_case name, e.g. `token_inactive`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Allowed => "allowed",
            Reason::Metadata => "metadata",
            Reason::Preflight => "preflight",
            Reason::MethodNotAllowed => "method_not_allowed",
            Reason::OriginNotAllowed => "origin_not_allowed",
            Reason::NoCredentials => "no_credentials",
            Reason::InvalidRequest => "invalid_request",
            Reason::RequestBodyTooLarge => "request_body_too_large",
            Reason::TokenTooLong => "token_too_long",
            Reason::TokenInactive => "token_inactive",
            Reason::TokenExpired => "token_expired",
            Reason::TokenNotYetValid => "token_not_yet_valid",
            Reason::TokenMalformed => "token_malformed",
            Reason::AudienceMismatch => "audience_mismatch",
            Reason::TokenAlgorithmNotAllowed => "token_algorithm_not_allowed",
            Reason::TokenKeyUnknown => "token_key_unknown",
            Reason::TokenSignatureInvalid => "token_signature_invalid",
            Reason::IssuerMismatch => "issuer_mismatch",
            Reason::TokenTypeInvalid => "token_type_invalid",
            Reason::InsufficientScope => "insufficient_scope",
            Reason::ConsumerMissing => "consumer_missing",
            Reason::ConsumerGroupsMissing => "consumer_groups_missing",
            Reason::ClaimHeaderInvalid => "claim_header_invalid",
            Reason::ConsumerNotFound => "consumer_not_found",
            Reason::ConsumerGroupsNotFound => "consumer_groups_not_found",
            Reason::ConsumerLookupFailed => "consumer_lookup_failed",
            Reason::InternalError => "internal_error",
            Reason::AuthorizationServerUnavailable => "authorization_server_unavailable",
        }
    }

    /// The generic `error_description` for a rejected token.
    fn token_description(self) -> &'static str {
        match self {
            Reason::TokenTooLong => "The access token is too long",
            Reason::TokenExpired => "The access token has expired",
            Reason::TokenNotYetValid => "The access token is not yet valid",
            Reason::AudienceMismatch => "The access token was not issued for this resource",
            Reason::TokenMalformed => "The access token is malformed",
            Reason::TokenAlgorithmNotAllowed | Reason::TokenKeyUnknown | Reason::TokenSignatureInvalid => {
                "The access token signature cannot be verified"
            }
            Reason::IssuerMismatch => "The access token was not issued by a trusted authorization server",
            Reason::TokenTypeInvalid => "The token is not an access token",
            _ => "The access token is not active",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The validator's verdict on one request.
#[derive(Debug, Clone)]
pub enum Decision {
    /// Answer the client with this response; do not forward.
    Respond(Response),
    /// Forward upstream after applying the header changes.
    Forward(Forward),
}

impl Decision {
    /// True if the request goes upstream.
    pub fn is_forward(&self) -> bool {
        matches!(self, Decision::Forward(_))
    }

    /// Why this decision was made.
    pub fn reason(&self) -> Reason {
        match self {
            Decision::Respond(r) => r.reason,
            Decision::Forward(_) => Reason::Allowed,
        }
    }

    /// How long the answer about the token behind this decision may be kept by a cache
    /// shared with other processes (the nginx shared dict, Redis): the time left of the
    /// entry the validator itself keeps (`None` when it keeps none: no token, an
    /// authorization-server failure, caching off). Never longer than the first answer's
    /// expiry, however often it was replayed.
    pub fn cache_ttl(&self) -> Option<Duration> {
        match self {
            Decision::Respond(r) => r.cache_ttl,
            Decision::Forward(f) => f.cache_ttl,
        }
    }

    /// How loudly a host logs this decision (see [`Response::log_level`]).
    pub fn log_level(&self) -> LogLevel {
        match self {
            Decision::Respond(r) => r.log_level(),
            Decision::Forward(_) => LogLevel::Debug,
        }
    }

    /// The response, if this decision answers the client.
    pub fn as_response(&self) -> Option<&Response> {
        match self {
            Decision::Respond(r) => Some(r),
            Decision::Forward(_) => None,
        }
    }

    /// The forward instructions, if this decision sends the request upstream.
    pub fn as_forward(&self) -> Option<&Forward> {
        match self {
            Decision::Forward(f) => Some(f),
            Decision::Respond(_) => None,
        }
    }
}

/// How loudly a host logs a decision (see [`Response::log_level`]; an allowed request is
/// [`LogLevel::Debug`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Routine: allowed requests, metadata, preflights.
    Debug,
    /// A refused request (401, 403, 400, 413).
    Info,
    /// The gateway cannot work as configured: the authorization server failed or refused
    /// the gateway's credentials (503).
    Warn,
    /// A bug caught at a boundary (500).
    Error,
}

impl LogLevel {
    /// `debug`, `info`, `warn` or `error`.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

/// A response the host sends to the client instead of forwarding.
#[derive(Clone)]
pub struct Response {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(&'static str, String)>,
    pub(crate) body: Vec<u8>,
    pub(crate) reason: Reason,
    pub(crate) detail: Option<Cow<'static, str>>,
    pub(crate) cache_ttl: Option<Duration>,
}

impl Response {
    /// HTTP status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// Response headers, e.g. `WWW-Authenticate`, `Content-Type`.
    pub fn headers(&self) -> impl ExactSizeIterator<Item = (&str, &str)> + '_ {
        self.headers.iter().map(|(n, v)| (*n, v.as_str()))
    }

    /// The value of the first header with this name (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The body (JSON; empty for HEAD, 204 and 405 preflights).
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// Why this response.
    pub fn reason(&self) -> Reason {
        self.reason
    }

    /// A short, secret-free explanation for logs (e.g. which AS failure), if any.
    pub fn detail(&self) -> Option<&str> {
        self.detail.as_deref()
    }

    /// How loudly a host logs this response: [`LogLevel::Warn`] when the gateway cannot
    /// work as configured (the authorization server refused the gateway's own credentials,
    /// or failed), [`LogLevel::Error`] for an internal error, [`LogLevel::Info`] for a
    /// refused request, [`LogLevel::Debug`] for the metadata document and preflights. Every
    /// rejection and every 503 is meant to be logged once, with [`Response::reason`] and
    /// [`Response::detail`] (which never hold a token, a secret or the AS's text).
    pub fn log_level(&self) -> LogLevel {
        match self.reason {
            Reason::InternalError => LogLevel::Error,
            Reason::AuthorizationServerUnavailable | Reason::ConsumerLookupFailed => LogLevel::Warn,
            Reason::Metadata | Reason::Preflight => LogLevel::Debug,
            _ => LogLevel::Info,
        }
    }

    /// The 500 a host sends when it cannot get a decision at all (the validator panicked
    /// or could not be built): a JSON body in the library's format, never forwarded.
    pub fn internal_error() -> Response {
        Answer { resource_metadata: "", cors_origin: None }.json_error(
            500,
            Reason::InternalError,
            None,
            "server_error",
            "Internal error in the authorization module",
        )
    }
}

impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.status)
            .field("reason", &self.reason)
            .field("headers", &self.headers)
            .field("body", &String::from_utf8_lossy(&self.body))
            .field("detail", &self.detail)
            .finish()
    }
}

/// Identity facts about the validated token, for hosts (Kong maps them to consumers).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub(crate) subject: Option<Box<str>>,
    pub(crate) client_id: Option<Box<str>>,
    pub(crate) scope: Option<Box<str>>,
    pub(crate) consumer: Option<Box<str>>,
    pub(crate) consumer_groups: Option<Box<[Box<str>]>>,
    pub(crate) credential: Option<Box<str>>,
}

impl Identity {
    /// The `sub` claim.
    pub fn subject(&self) -> Option<&str> {
        self.subject.as_deref()
    }
    /// The `client_id` claim (or `azp`).
    pub fn client_id(&self) -> Option<&str> {
        self.client_id.as_deref()
    }
    /// The granted scopes, space-separated.
    pub fn scope(&self) -> Option<&str> {
        self.scope.as_deref()
    }
    /// The value of `consumer_claim`, if configured and present.
    pub fn consumer(&self) -> Option<&str> {
        self.consumer.as_deref()
    }
    /// The values of `consumer_groups_claim`, if configured and present.
    pub fn consumer_groups(&self) -> Option<&[Box<str>]> {
        self.consumer_groups.as_deref()
    }
    /// The value of `credential_claim` (default `sub`).
    pub fn credential(&self) -> Option<&str> {
        self.credential.as_deref()
    }
}

/// The result of validating one token, shared by every request that carries it (the
/// cache holds it), with everything decisions need precomputed: no claim is looked up or
/// rendered on a cache hit.
#[derive(Debug)]
pub(crate) struct Grant {
    /// `exp` and `nbf`, Unix seconds.
    pub(crate) exp: Option<i64>,
    pub(crate) nbf: Option<i64>,
    pub(crate) identity: Identity,
    /// One value per claim header of the plan, in its order; `None` = claim absent.
    pub(crate) header_values: Box<[Option<Box<str>>]>,
    /// Why every request with this token is refused although the token is valid
    /// (a consumer or groups claim missing, a claim that cannot be a header).
    pub(crate) refusal: Option<Reason>,
    /// The raw introspection answer in the `introspection_format` encoding (`None` when
    /// not configured, or for a local JWT).
    pub(crate) introspection: Option<Box<str>>,
    /// The validated claims, compact JSON.
    pub(crate) claims_json: Box<str>,
}

/// A token exchanged for the upstream (RFC 8693), shared by every request that carries
/// the same client (and actor) token while it is cached.
pub(crate) struct Exchanged {
    /// `Bearer <access_token>`: the upstream's `Authorization`.
    pub(crate) authorization: Secret,
    /// When the exchanged token is a JWT: its claims decide the claim headers and the
    /// identity (Kong 3.14.0.3), projected once.
    pub(crate) projection: Option<Arc<Grant>>,
    /// `expires_in` of the token endpoint's answer.
    pub(crate) expires_in: Option<Duration>,
}

impl fmt::Debug for Exchanged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Exchanged")
            .field("authorization", &self.authorization)
            .field("jwt", &self.projection.is_some())
            .field("expires_in", &self.expires_in)
            .finish()
    }
}

/// Instructions for forwarding an allowed request upstream. Holds only the header plan
/// and the token's grant: a decision never keeps the validator or its caches alive.
#[derive(Clone)]
pub struct Forward {
    pub(crate) plan: Arc<HeaderPlan>,
    pub(crate) grant: Arc<Grant>,
    pub(crate) cache_ttl: Option<Duration>,
    /// When the validator's cached answer for this token ages out (`None`: not cached).
    pub(crate) recheck_at: Option<UnixMs>,
    /// The request's allowed `Origin`, for the CORS headers of a refusal by the host.
    pub(crate) cors_origin: Option<Box<str>>,
    /// The token exchanged for the upstream, with `token_exchange`.
    pub(crate) exchanged: Option<Arc<Exchanged>>,
}

/// Why a host refuses a request the validator allowed (the Kong plugin's consumer mapping).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// No consumer matches the token's `consumer_claim` value (403).
    ConsumerNotFound,
    /// None of the token's consumer groups exists (403).
    ConsumerGroupsNotFound,
    /// The consumer look-up itself failed (503).
    ConsumerLookupFailed,
}

impl Forward {
    /// Header names to remove from the client request first: `Authorization` (unless
    /// `passthrough_credentials`) and every configured claim header. Hosts must also drop
    /// every other header for which [`Forward::must_remove`] is true.
    pub fn remove_headers(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        self.plan.remove_headers()
    }

    /// True for a client header that must not reach the upstream: one of
    /// [`Forward::remove_headers`] after ASCII case folding and `_`↔`-` folding, so that a
    /// client cannot send `X_User_Id` to an upstream (CGI, WSGI) that reads it as
    /// `X-User-Id`. Apply it to every request header.
    pub fn must_remove(&self, header_name: &str) -> bool {
        self.plan.must_remove(header_name.as_bytes())
    }

    /// Headers to set upstream, after the removals, each replacing any value the request
    /// had: `Authorization: Bearer <exchanged token>` with `token_exchange`, then the mapped
    /// claims present in the token.
    pub fn set_headers(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        let authorization = self.upstream_authorization().map(|v| ("Authorization", v));
        let claims = self
            .plan
            .claim_header_names()
            .zip(self.effective().header_values.iter())
            .filter_map(|(n, v)| v.as_deref().map(|v| (n, v)));
        authorization.into_iter().chain(claims)
    }

    /// The value of each claim header in configuration order (`None`: the claim is absent,
    /// so the header must not reach the upstream at all). With `token_exchange` and a JWT
    /// exchanged token, from its claims.
    pub fn claim_header_values(&self) -> impl ExactSizeIterator<Item = Option<&str>> + '_ {
        self.effective().header_values.iter().map(Option::as_deref)
    }

    /// `Bearer <exchanged token>`: the upstream's `Authorization` with `token_exchange`.
    pub fn upstream_authorization(&self) -> Option<&str> {
        self.exchanged.as_ref().map(|e| e.authorization.expose())
    }

    /// The exchanged token itself, with `token_exchange`: for hosts that hand it to what
    /// runs next. It is a credential: never log it.
    pub fn exchanged_token(&self) -> Option<&str> {
        self.upstream_authorization().map(|a| &a["Bearer ".len()..])
    }

    /// Identity facts for the host: of the validated token, or of the exchanged token when
    /// it is a JWT.
    pub fn identity(&self) -> &Identity {
        &self.effective().identity
    }

    /// The claims as compact JSON, for what runs next (later plugins, ACLs): of the
    /// validated token, or of the exchanged token when it is a JWT.
    pub fn claims_json(&self) -> &str {
        &self.effective().claims_json
    }

    /// The grant whose claims the upstream sees: the exchanged JWT's, else the token's.
    fn effective(&self) -> &Grant {
        self.exchanged.as_ref().and_then(|e| e.projection.as_deref()).unwrap_or(&self.grant)
    }

    /// The raw introspection result, encoded per `introspection_format`: the JSON object the
    /// authorization server answered, as text (for a signed RFC 9701 answer, the JSON text of
    /// its `token_introspection` claim), as is (`string`), in standard base64 with padding
    /// (`base64`) or in URL-safe base64 without padding (`base64url`). `None` when
    /// `introspection_format` is unset. The same for every request carrying the token while
    /// its answer is cached. It describes the token (subject, scopes, client): treat it as
    /// personal data, not for logs.
    pub fn introspection(&self) -> Option<&str> {
        self.grant.introspection.as_deref()
    }

    /// The token's expiry (its `exp`), if it has one. Long-lived responses (SSE streams)
    /// must end by then.
    pub fn valid_until(&self) -> Option<SystemTime> {
        self.grant.exp.map(|e| UnixMs::at_secs(e).to_system())
    }

    /// [`Forward::valid_until`] as Unix seconds.
    pub fn valid_until_unix(&self) -> Option<i64> {
        self.grant.exp
    }

    /// The response for a host that refuses this allowed request itself (consumer
    /// mapping): status, body and headers in the library's format, CORS included.
    pub fn refuse(&self, refusal: Refusal) -> Response {
        let reason = match refusal {
            Refusal::ConsumerNotFound => Reason::ConsumerNotFound,
            Refusal::ConsumerGroupsNotFound => Reason::ConsumerGroupsNotFound,
            Refusal::ConsumerLookupFailed => Reason::ConsumerLookupFailed,
        };
        // The challenge is not needed (these are 403/503 without one).
        Answer { resource_metadata: "", cors_origin: self.cors_origin.as_deref() }.refused(reason)
    }

    /// When the validator's cached answer for this token ages out, if it keeps one. A host
    /// keeping a long-lived response open (an SSE stream) re-validates the token then
    /// (the same request through `begin`: one authorization-server call for all of the
    /// token's streams) and ends the response only if the token is no longer allowed.
    pub fn recheck_at(&self) -> Option<SystemTime> {
        self.recheck_at.map(UnixMs::to_system)
    }
}

impl fmt::Debug for Forward {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Forward")
            .field("remove_headers", &self.remove_headers().collect::<Vec<_>>())
            .field("set_headers", &self.set_headers().collect::<Vec<_>>())
            .field("identity", self.identity())
            .field("exchanged", &self.exchanged)
            .field("valid_until", &self.grant.exp)
            .finish()
    }
}

/// Escapes a value for an RFC 9110 quoted-string.
pub(crate) fn quote(v: &str) -> String {
    let mut out = String::with_capacity(v.len() + 2);
    out.push('"');
    for c in v.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Request-scoped facts a response needs.
pub(crate) struct Answer<'c> {
    pub(crate) resource_metadata: &'c str,
    pub(crate) cors_origin: Option<&'c str>,
}

impl Answer<'_> {
    fn respond(
        &self,
        status: u16,
        reason: Reason,
        mut headers: Vec<(&'static str, String)>,
        body: Vec<u8>,
    ) -> Response {
        if let Some(origin) = self.cors_origin {
            headers.push(("Access-Control-Allow-Origin", origin.to_owned()));
            headers.push(("Access-Control-Expose-Headers", "WWW-Authenticate".to_owned()));
            headers.push(("Vary", "Origin".to_owned()));
        }
        Response { status, headers, body, reason, detail: None, cache_ttl: None }
    }

    fn json_error(
        &self,
        status: u16,
        reason: Reason,
        challenge: Option<String>,
        error: &str,
        description: &str,
    ) -> Response {
        let mut headers = Vec::with_capacity(6);
        if let Some(c) = challenge {
            headers.push(("WWW-Authenticate", c));
        }
        headers.push(("Content-Type", "application/json".to_owned()));
        headers.push(("Cache-Control", "no-store".to_owned()));
        let body = serde_json::to_vec(&serde_json::json!({"error": error, "error_description": description}))
            .expect("a JSON value serializes");
        self.respond(status, reason, headers, body)
    }

    /// 401 without `error`: the client sent no bearer token.
    pub(crate) fn no_credentials(&self, scope: Option<&str>) -> Response {
        let mut c = format!("Bearer resource_metadata={}", quote(self.resource_metadata));
        if let Some(s) = scope.filter(|s| !s.is_empty()) {
            c.push_str(", scope=");
            c.push_str(&quote(s));
        }
        self.json_error(401, Reason::NoCredentials, Some(c), "unauthorized", "A bearer token is required")
    }

    /// 400 `invalid_request`.
    pub(crate) fn invalid_request(&self, description: &str) -> Response {
        let c = format!("Bearer error=\"invalid_request\", resource_metadata={}", quote(self.resource_metadata));
        self.json_error(400, Reason::InvalidRequest, Some(c), "invalid_request", description)
    }

    /// 413 for a body too large to read the JSON-RPC method from.
    pub(crate) fn body_too_large(&self) -> Response {
        self.json_error(413, Reason::RequestBodyTooLarge, None, "invalid_request", "The request body is too large")
    }

    /// 401 `invalid_token` with a generic description (and a detail for logs only).
    pub(crate) fn invalid_token(&self, reason: Reason, detail: Option<Cow<'static, str>>) -> Response {
        let description = reason.token_description();
        let c = format!(
            "Bearer error=\"invalid_token\", error_description={}, resource_metadata={}",
            quote(description),
            quote(self.resource_metadata)
        );
        let mut r = self.json_error(401, reason, Some(c), "invalid_token", description);
        r.detail = detail;
        r
    }

    /// 403 `insufficient_scope` naming every scope the operation needs.
    pub(crate) fn insufficient_scope(&self, required: &[String]) -> Response {
        let scope = required.join(" ");
        let c = format!(
            "Bearer error=\"insufficient_scope\", scope={}, resource_metadata={}",
            quote(&scope),
            quote(self.resource_metadata)
        );
        self.json_error(
            403,
            Reason::InsufficientScope,
            Some(c),
            "insufficient_scope",
            "The access token lacks a required scope",
        )
    }

    /// 403 without a challenge for a refusal that is not about scopes (origin, consumer
    /// mapping, claim header); a failed consumer look-up is a 503.
    pub(crate) fn refused(&self, reason: Reason) -> Response {
        let description = match reason {
            Reason::OriginNotAllowed => "The request origin is not allowed",
            Reason::ConsumerMissing => "The access token does not identify a consumer",
            Reason::ConsumerGroupsMissing => "The access token does not name consumer groups",
            Reason::ConsumerNotFound => "The access token does not map to a consumer",
            Reason::ConsumerGroupsNotFound => "The access token does not map to a consumer group",
            Reason::ConsumerLookupFailed => {
                let mut r = self.json_error(503, reason, None, "temporarily_unavailable", "The consumer lookup failed");
                r.headers.push(("Retry-After", "5".to_owned()));
                return r;
            }
            _ => "A token claim cannot be sent upstream",
        };
        self.json_error(403, reason, None, "forbidden", description)
    }

    /// 503 without a challenge: never 401 for AS failures.
    pub(crate) fn unavailable(&self, detail: Cow<'static, str>) -> Response {
        let mut r = self.json_error(
            503,
            Reason::AuthorizationServerUnavailable,
            None,
            "temporarily_unavailable",
            "The authorization server is unavailable",
        );
        r.headers.push(("Retry-After", "5".to_owned()));
        r.detail = Some(detail);
        r
    }

    /// 200 with the PRM document (empty body for HEAD).
    pub(crate) fn metadata(&self, document: &[u8], head: bool) -> Response {
        let headers =
            vec![("Content-Type", "application/json".to_owned()), ("Cache-Control", "max-age=3600".to_owned())];
        self.respond(200, Reason::Metadata, headers, if head { Vec::new() } else { document.to_vec() })
    }

    /// 405 on a metadata path.
    pub(crate) fn method_not_allowed(&self) -> Response {
        let mut r = self.json_error(405, Reason::MethodNotAllowed, None, "method_not_allowed", "Use GET or HEAD");
        r.headers.insert(0, ("Allow", "GET, HEAD".to_owned()));
        r
    }

    /// 204 answer to a CORS preflight from an allowed origin.
    pub(crate) fn preflight(&self, metadata_path: bool) -> Response {
        let methods = if metadata_path { "GET, HEAD, OPTIONS" } else { "GET, POST, DELETE, OPTIONS" };
        let headers = vec![
            ("Access-Control-Allow-Methods", methods.to_owned()),
            (
                "Access-Control-Allow-Headers",
                "Authorization, Content-Type, Accept, Mcp-Session-Id, Mcp-Protocol-Version, Last-Event-ID".to_owned(),
            ),
            ("Access-Control-Max-Age", "600".to_owned()),
        ];
        self.respond(204, Reason::Preflight, headers, Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_is_listed_once_in_order() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{r}");
        }
        // The last variant closes the list: a new variant must be added to ALL.
        assert_eq!(Reason::AuthorizationServerUnavailable as usize, Reason::ALL.len() - 1);
        let names: std::collections::BTreeSet<_> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names.len(), Reason::ALL.len());
    }

    #[test]
    fn quoting_escapes_quotes_and_backslashes() {
        assert_eq!(quote(r#"a"b\c"#), r#""a\"b\\c""#);
    }

    #[test]
    fn challenge_syntax() {
        let a = Answer {
            resource_metadata: "https://m.example/.well-known/oauth-protected-resource/mcp",
            cors_origin: None,
        };
        let r = a.no_credentials(Some("mcp:read mcp:write"));
        assert_eq!(r.status(), 401);
        assert_eq!(
            r.header("www-authenticate").unwrap(),
            r#"Bearer resource_metadata="https://m.example/.well-known/oauth-protected-resource/mcp", scope="mcp:read mcp:write""#
        );
        let r = a.invalid_token(Reason::TokenExpired, None);
        assert_eq!(
            r.header("WWW-Authenticate").unwrap(),
            r#"Bearer error="invalid_token", error_description="The access token has expired", resource_metadata="https://m.example/.well-known/oauth-protected-resource/mcp""#
        );
        let body: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"error": "invalid_token", "error_description": "The access token has expired"})
        );
        let r = a.unavailable("x".into());
        assert_eq!((r.status(), r.header("WWW-Authenticate")), (503, None));
    }
}
