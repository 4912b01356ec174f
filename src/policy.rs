//! The compiled policy: one configuration turned, once, into everything a decision reads.
//! It admits a request (CORS, the metadata document, the bearer token, the scopes the
//! operation needs), turns validated claims into a [`Grant`] (time, audience, claim
//! headers, identity), says how long an answer may be cached, and picks the response.
//!
//! Every front end reads these rules from here: hosts see them through [`Policy`]'s
//! accessors and the decisions it makes, and re-derive nothing.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::cache::Key;
use crate::claims;
use crate::clock::UnixMs;
use crate::config::ClaimPath;
use crate::decision::{Answer, Decision, Exchanged, Forward, Grant, Identity, Reason, Response};
use crate::headers::HeaderPlan;
use crate::metadata::Metadata;
use crate::request::Request;
use crate::scopes::{BodyProblem, ScopePolicy};
use crate::token::{bearer_candidate, AccessToken, Extracted, Secret};
use crate::Config;

/// The outcome of validating one token: what the cache and single flight share.
#[derive(Clone, Debug)]
pub(crate) enum Outcome {
    Valid(Arc<Grant>),
    /// Not usable, with a detail for logs (never token or authorization-server text).
    Invalid(Reason, Option<Cow<'static, str>>),
    Unavailable(Cow<'static, str>),
}

impl Outcome {
    pub(crate) fn invalid(reason: Reason) -> Self {
        Outcome::Invalid(reason, None)
    }
}

/// The compiled policy of one configuration. Read it through
/// [`Validator::policy`](crate::Validator::policy).
pub struct Policy {
    config: Config,
    metadata: Metadata,
    headers: Arc<HeaderPlan>,
    scopes: ScopePolicy,
    audience: AudiencePolicy,
    /// SHA-256 state already fed with the configuration's identity; cloned per token.
    key_seed: Sha256,
    leeway: i64,
    allowed_origins: Option<Vec<String>>,
    warnings: Vec<String>,
}

/// Request-scoped facts a decision needs.
#[derive(Debug)]
pub(crate) struct Ctx<'a> {
    resource_metadata: Cow<'a, str>,
    cors_origin: Option<Cow<'a, str>>,
    required: Cow<'a, [String]>,
}

impl Ctx<'_> {
    fn answer(&self) -> Answer<'_> {
        Answer { resource_metadata: &self.resource_metadata, cors_origin: self.cors_origin.as_deref() }
    }

    pub(crate) fn into_owned(self) -> Ctx<'static> {
        Ctx {
            resource_metadata: Cow::Owned(self.resource_metadata.into_owned()),
            cors_origin: self.cors_origin.map(|o| Cow::Owned(o.into_owned())),
            required: Cow::Owned(self.required.into_owned()),
        }
    }
}

/// What [`Policy::admit`] makes of a request.
pub(crate) enum Admission<'r> {
    /// Decided without looking at a token (metadata, CORS, no or malformed credentials).
    Decided(Decision),
    /// A bearer token to validate. Its characters are not checked yet (see
    /// [`crate::token::is_well_formed`]).
    Token(Ctx<'r>, AccessToken<'r>),
}

impl Policy {
    pub(crate) fn new(config: Config) -> Self {
        Policy {
            metadata: Metadata::new(&config),
            headers: Arc::new(HeaderPlan::new(&config)),
            scopes: ScopePolicy::new(&config),
            audience: AudiencePolicy::new(&config),
            key_seed: identity_seed(&config),
            leeway: i64::try_from(config.jwt_claims_leeway).unwrap_or(i64::MAX),
            allowed_origins: config.allowed_origins.clone(),
            warnings: construction_warnings(&config),
            config,
        }
    }

    /// What an operator should know about this configuration although it is valid: every
    /// plain-http endpoint off loopback (tokens and credentials cross the network in the
    /// clear) and every disabled certificate check. Hosts log them once, at start-up.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The configuration it was compiled from.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The Protected Resource Metadata document (JSON).
    pub fn metadata_document(&self) -> &[u8] {
        &self.metadata.document
    }

    /// Header names every allowed request removes (`Authorization` unless
    /// `passthrough_credentials`, then the claim headers).
    pub fn remove_headers(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        self.headers.remove_headers()
    }

    /// The claim header names, in the order of [`Forward::claim_header_values`].
    pub fn claim_headers(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        self.headers.claim_header_names()
    }

    /// True for a client header that must never reach the upstream of an allowed request
    /// (see [`Forward::must_remove`]).
    pub fn must_remove(&self, header_name: &str) -> bool {
        self.headers.must_remove(header_name.as_bytes())
    }

    /// True if deciding a POST needs its body ([`Request::body`]): `method_scopes` are
    /// configured. Hosts then buffer up to [`Policy::max_request_body_size`] bytes.
    pub fn reads_body(&self) -> bool {
        self.scopes.needs_body()
    }

    /// `max_request_body_size` (0 = unlimited).
    pub fn max_request_body_size(&self) -> u64 {
        self.config.max_request_body_size
    }

    /// True if decisions read the peer address and `X-Forwarded-*` headers
    /// (`trusted_proxies` is set).
    pub fn reads_forwarded_headers(&self) -> bool {
        !self.config.trusted_proxies.is_empty()
    }

    /// True if decisions read `Origin` and `Access-Control-Request-Method`
    /// (`allowed_origins` is set).
    pub fn reads_origin(&self) -> bool {
        self.allowed_origins.is_some()
    }

    /// True if every request is decided from its method, path and `Authorization` header
    /// alone: hosts may skip collecting anything else.
    pub fn fast_path(&self) -> bool {
        !(self.reads_body() || self.reads_forwarded_headers() || self.reads_origin())
    }

    /// The time every authorization-server call may take (`timeout`).
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.config.timeout)
    }

    /// CORS, the metadata document, the credentials and the scopes this operation needs.
    pub(crate) fn admit<'r>(&'r self, req: &Request<'r>) -> Admission<'r> {
        let cors_origin = match self.check_origin(req) {
            Ok(o) => o,
            Err(decision) => return Admission::Decided(decision),
        };
        let mut ctx = Ctx {
            resource_metadata: self.metadata.resource_metadata_url(req),
            cors_origin: cors_origin.map(Cow::Borrowed),
            required: Cow::Borrowed(&[]),
        };
        let path = req.path_only();
        let is_metadata = self.metadata.is_metadata_path(path);
        if ctx.cors_origin.is_some()
            && req.method.eq_ignore_ascii_case("OPTIONS")
            && req.header_value("access-control-request-method").is_some()
        {
            return Admission::Decided(Decision::Respond(ctx.answer().preflight(is_metadata)));
        }
        if is_metadata {
            let answer = ctx.answer();
            let response = match req.method {
                "GET" => answer.metadata(&self.metadata.document, false),
                "HEAD" => answer.metadata(&self.metadata.document, true),
                _ => answer.method_not_allowed(),
            };
            return Admission::Decided(Decision::Respond(response));
        }

        let required = self.scopes.required(req);
        let (values, count) = authorization_values(req);
        let token = match bearer_candidate(&values[..count]) {
            Extracted::Bearer(t) => t,
            Extracted::NoCredentials => {
                let scope = self.scopes.challenge_scope(required.as_deref().map_err(|e| *e));
                return Admission::Decided(Decision::Respond(ctx.answer().no_credentials(scope.as_deref())));
            }
            Extracted::Malformed => return Admission::Decided(Decision::Respond(malformed(&ctx))),
            Extracted::TooLong => {
                return Admission::Decided(Decision::Respond(ctx.answer().invalid_token(Reason::TokenTooLong, None)))
            }
        };
        ctx.required = match required {
            Ok(r) => r,
            Err(BodyProblem::TooLarge) => return Admission::Decided(Decision::Respond(ctx.answer().body_too_large())),
            Err(BodyProblem::Unreadable) => {
                let answer = ctx.answer();
                return Admission::Decided(Decision::Respond(
                    answer.invalid_request("Unreadable JSON-RPC request body"),
                ));
            }
        };
        Admission::Token(ctx, token)
    }

    /// The answer to a token that is not an RFC 6750 b64token.
    pub(crate) fn malformed_token(&self, ctx: &Ctx<'_>) -> Decision {
        Decision::Respond(malformed(ctx))
    }

    /// The cache key of a token: SHA-256 over the configuration's identity and the token.
    pub(crate) fn cache_key(&self, token: AccessToken<'_>) -> Key {
        let mut h = self.key_seed.clone();
        h.update(token.0);
        h.finalize().into()
    }

    /// A key for a shared document (metadata, key set) or another step, in the
    /// configuration's key space.
    pub(crate) fn derived_key(&self, parts: &[&[u8]]) -> Key {
        let mut h = self.key_seed.clone();
        for p in parts {
            h.update((p.len() as u64).to_le_bytes());
            h.update(p);
        }
        h.finalize().into()
    }

    /// Applies the token-level rules (time, audience) to validated claims and keeps what
    /// decisions need ([`Policy::project`]), with the raw introspection answer already
    /// encoded per `introspection_format`, when configured.
    pub(crate) fn grant(&self, claims: &Map<String, Value>, introspection: Option<Box<str>>, now: UnixMs) -> Outcome {
        let (Ok(exp), Ok(nbf)) = (claims::numeric_date(claims, "exp"), claims::numeric_date(claims, "nbf")) else {
            return Outcome::invalid(Reason::TokenMalformed);
        };
        if let Err(reason) = check_time(exp, nbf, now.secs(), self.leeway) {
            return Outcome::invalid(reason);
        }
        if !self.audience.audience_matches(claims.get("aud")) {
            return Outcome::invalid(Reason::AudienceMismatch);
        }
        Outcome::Valid(self.project_with(claims, exp, nbf, introspection))
    }

    /// What a request forwarded with these claims carries: the claim header values, the
    /// identity, a refusal (consumer or groups claim missing, a claim that cannot be a
    /// header) and the claims as compact JSON, rendered once.
    pub(crate) fn project(&self, claims: &Map<String, Value>, exp: Option<i64>, nbf: Option<i64>) -> Arc<Grant> {
        self.project_with(claims, exp, nbf, None)
    }

    /// [`Policy::project`], keeping the raw introspection answer (`introspection_format`).
    fn project_with(
        &self,
        claims: &Map<String, Value>,
        exp: Option<i64>,
        nbf: Option<i64>,
        introspection: Option<Box<str>>,
    ) -> Arc<Grant> {
        let (header_values, header_invalid) = match self.headers.render(claims) {
            Ok(values) => (values, false),
            Err(_) => (Box::default(), true),
        };

        let config = &self.config;
        let text = |path: &ClaimPath| -> Option<Box<str>> {
            claims::lookup(claims, &path.0).and_then(claims::render).map(String::into_boxed_str)
        };
        let consumer_groups: Option<Box<[Box<str>]>> =
            config.consumer_groups_claim.as_ref().and_then(|p| match claims::lookup(claims, &p.0)? {
                Value::Array(items) => Some(items.iter().filter_map(Value::as_str).map(Box::from).collect()),
                Value::String(s) => Some(vec![Box::from(s.as_str())].into_boxed_slice()),
                _ => None,
            });
        let identity = Identity {
            subject: claims::string_claim(claims, "sub").map(Box::from),
            client_id: claims::string_claim(claims, "client_id")
                .or_else(|| claims::string_claim(claims, "azp"))
                .map(Box::from),
            scope: claims::scope_string(claims).map(String::into_boxed_str),
            credential: text(&config.credential_claim),
            consumer: config.consumer_claim.as_ref().and_then(text),
            consumer_groups,
        };
        let refusal = if config.consumer_claim.is_some() && !config.consumer_optional && identity.consumer.is_none() {
            Some(Reason::ConsumerMissing)
        } else if config.consumer_groups_claim.is_some()
            && !config.consumer_groups_optional
            && identity.consumer_groups.as_ref().is_none_or(|g| g.is_empty())
        {
            Some(Reason::ConsumerGroupsMissing)
        } else if header_invalid {
            Some(Reason::ClaimHeaderInvalid)
        } else {
            None
        };
        let claims_json = serde_json::to_string(claims).expect("a JSON map serializes").into_boxed_str();
        Arc::new(Grant { exp, nbf, identity, header_values, refusal, claims_json, introspection })
    }

    /// An allowed request once its token is exchanged: the upstream gets the exchanged
    /// token; claim headers and identity come from it when it is a JWT (which may still
    /// refuse the request: a consumer claim missing from it).
    pub(crate) fn with_exchange(&self, ctx: &Ctx<'_>, mut forward: Forward, exchanged: Arc<Exchanged>) -> Decision {
        if let Some(reason) = exchanged.projection.as_ref().and_then(|g| g.refusal) {
            return Decision::Respond(ctx.answer().refused(reason));
        }
        forward.exchanged = Some(exchanged);
        Decision::Forward(forward)
    }

    /// A 503 for an authorization-server failure after the token was validated (the
    /// exchange): never a 401, never the client's token forwarded.
    pub(crate) fn unavailable(&self, ctx: &Ctx<'_>, detail: Cow<'static, str>) -> Decision {
        Decision::Respond(ctx.answer().unavailable(detail))
    }

    /// A 400 for a request the exchange cannot be made for (the actor-token header).
    pub(crate) fn invalid_request(&self, ctx: &Ctx<'_>, description: &str) -> Decision {
        Decision::Respond(ctx.answer().invalid_request(description))
    }

    /// The cache rule: until when an outcome first fetched at `fetched_at` may be kept
    /// (`None`: not at all). Allowed tokens: until `exp`, at most `cache_ttl_max` after
    /// the fetch; rejected tokens: `cache_ttl_negative` after the fetch (a token not valid
    /// *yet* is not kept: it may become valid); authorization-server failures: never. A
    /// copy replayed later (another worker, another node) keeps the first fetch time, so
    /// no copy ever outlives the first answer's expiry.
    pub(crate) fn expiry(&self, outcome: &Outcome, fetched_at: UnixMs, now: UnixMs) -> Option<UnixMs> {
        if !self.config.cache_introspection {
            return None;
        }
        let fetched_at = fetched_at.min(now);
        let until = match outcome {
            Outcome::Valid(g) => {
                let by_age = fetched_at.plus(Duration::from_secs(self.config.cache_ttl_max));
                g.exp.map_or(by_age, |exp| by_age.min(UnixMs::at_secs(exp)))
            }
            Outcome::Invalid(Reason::TokenNotYetValid, _) => return None,
            Outcome::Invalid(..) => fetched_at.plus(Duration::from_secs(self.config.cache_ttl_negative)),
            Outcome::Unavailable(_) => return None,
        };
        (until > now).then_some(until)
    }

    /// The decision for a request whose token has this outcome, kept until `expires`.
    pub(crate) fn decide(&self, ctx: &Ctx<'_>, outcome: &Outcome, expires: Option<UnixMs>, now: UnixMs) -> Decision {
        let answer = ctx.answer();
        let cache_ttl = expires.map(|e| e.after(now)).filter(|d| !d.is_zero());
        let grant = match outcome {
            Outcome::Unavailable(detail) => return Decision::Respond(answer.unavailable(detail.clone())),
            Outcome::Invalid(reason, detail) => {
                let mut response = answer.invalid_token(*reason, detail.clone());
                response.cache_ttl = cache_ttl;
                return Decision::Respond(response);
            }
            Outcome::Valid(g) => g,
        };
        // Time-dependent checks run on every use of a cached result.
        if let Err(reason) = check_time(grant.exp, grant.nbf, now.secs(), self.leeway) {
            return Decision::Respond(answer.invalid_token(reason, None));
        }
        let refused = |mut response: Response| {
            response.cache_ttl = cache_ttl;
            Decision::Respond(response)
        };
        if !self.scopes.covers(grant.identity.scope.as_deref(), &ctx.required) {
            return refused(answer.insufficient_scope(&ctx.required));
        }
        if let Some(reason) = grant.refusal {
            return refused(answer.refused(reason));
        }
        Decision::Forward(Forward {
            plan: Arc::clone(&self.headers),
            grant: Arc::clone(grant),
            cache_ttl,
            recheck_at: expires,
            cors_origin: ctx.cors_origin.as_deref().map(Box::from),
            exchanged: None,
        })
    }

    /// `Ok(Some(origin))` when the request's `Origin` is allowed (CORS applies),
    /// `Ok(None)` when there is no origin rule or no `Origin`, `Err(403)` otherwise.
    fn check_origin<'r>(&self, req: &Request<'r>) -> Result<Option<&'r str>, Decision> {
        let Some(allowed) = &self.allowed_origins else { return Ok(None) };
        let Some(origin) = req.header_value("origin") else { return Ok(None) };
        match std::str::from_utf8(origin) {
            Ok(o) if allowed.iter().any(|a| a.eq_ignore_ascii_case(o)) => Ok(Some(o)),
            _ => {
                let rm = self.metadata.resource_metadata_url(req);
                let answer = Answer { resource_metadata: &rm, cors_origin: None };
                Err(Decision::Respond(answer.refused(Reason::OriginNotAllowed)))
            }
        }
    }
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field("resource", &self.config.resource)
            .field("remove_headers", &self.remove_headers().collect::<Vec<_>>())
            .field("fast_path", &self.fast_path())
            .finish_non_exhaustive()
    }
}

fn malformed(ctx: &Ctx<'_>) -> Response {
    ctx.answer().invalid_request("Malformed Authorization header")
}

/// The values of the first two `Authorization` headers (two are enough to know the
/// request is malformed), without allocating.
fn authorization_values<'a>(req: &Request<'a>) -> ([&'a [u8]; 2], usize) {
    let mut values: [&[u8]; 2] = [&[], &[]];
    let mut count = 0;
    for (name, value) in &req.headers {
        if name.eq_ignore_ascii_case("authorization") {
            if count < 2 {
                values[count] = value;
            }
            count += 1;
        }
    }
    (values, count.min(2))
}

fn construction_warnings(config: &Config) -> Vec<String> {
    let mut warnings = config.ineffective_fields();
    let jwt_discovery = config.introspection_endpoint.is_none()
        && config.jwks_endpoint.is_none()
        && config.metadata_discovery_endpoint.is_none();
    let mut urls: Vec<(String, &str)> = vec![];
    for (field, url) in [
        ("introspection_endpoint", &config.introspection_endpoint),
        ("mtls_introspection_endpoint", &config.mtls_introspection_endpoint),
        ("jwks_endpoint", &config.jwks_endpoint),
        ("metadata_discovery_endpoint", &config.metadata_discovery_endpoint),
    ] {
        if let Some(u) = url {
            urls.push((field.to_owned(), u));
        }
    }
    if let Some(te) = config.token_exchange.as_ref().filter(|t| t.enabled) {
        if let Some(u) = &te.token_endpoint {
            urls.push(("token_exchange.token_endpoint".to_owned(), u));
        }
    }
    if jwt_discovery {
        for (i, u) in config.authorization_servers.iter().enumerate() {
            urls.push((format!("authorization_servers[{i}]"), u));
        }
    }
    for (field, url) in urls {
        let plain_remote = url::Url::parse(url).is_ok_and(|u| u.scheme() == "http" && !is_loopback(&u));
        if plain_remote {
            warnings.push(format!(
                "{field}: plain http: tokens and the gateway's credentials cross the network unencrypted"
            ));
        }
    }
    if !config.ssl_verify {
        warnings.push(
            "ssl_verify: false: the authorization server's certificate is not verified; anyone on the path can \
             answer for it"
                .to_owned(),
        );
    }
    if !config.tls_client_auth_ssl_verify && config.effective_client_auth().is_tls() {
        warnings.push(
            "tls_client_auth_ssl_verify: false: the certificate of the mutual-TLS endpoint is not verified".to_owned(),
        );
    }
    let redis = &config.cluster_cache_redis;
    if config.cluster_cache_strategy == crate::config::ClusterCacheStrategy::Redis {
        if redis.ssl && !redis.ssl_verify {
            warnings.push(
                "cluster_cache_redis.ssl_verify: false: Redis's certificate is not verified; whoever answers for it \
                 can hand this gateway token answers"
                    .to_owned(),
            );
        }
        let remote = !matches!(redis.host.as_str(), "127.0.0.1" | "::1" | "localhost");
        if remote && !redis.ssl {
            warnings.push(format!(
                "cluster_cache_redis: plain TCP to {}: the authorization server's answers about tokens cross the \
                 network unencrypted, and whoever can write to Redis can hand this gateway token answers",
                redis.host
            ));
        }
    }
    warnings
}

fn is_loopback(u: &url::Url) -> bool {
    match u.host() {
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// The identity of a configuration for cache keys: its whole JSON form (secrets print
/// redacted there) plus every secret's value, so two configurations that differ in
/// anything, a credential included, never share a key. Only how a node reaches the
/// cluster cache is left out: nodes that name Redis differently still share its answers.
fn identity_seed(config: &Config) -> Sha256 {
    let mut h = Sha256::new();
    let mut json = serde_json::to_value(config).expect("the configuration serializes");
    if let Some(fields) = json.as_object_mut() {
        fields.remove("cluster_cache_strategy");
        fields.remove("cluster_cache_redis");
    }
    h.update(json.to_string());
    let exchange = config.token_exchange.as_ref();
    let secrets: [Option<&Secret>; 7] = [
        config.client_secret.as_ref(),
        config.client_jwk.as_ref().map(|j| &j.0),
        config.tls_client_auth_key.as_ref(),
        config.http_proxy_authorization.as_ref(),
        config.https_proxy_authorization.as_ref(),
        exchange.and_then(|t| t.client_secret.as_ref()),
        exchange.and_then(|t| t.request.actor_token.as_ref()),
    ];
    let extras = config.args.values().chain(config.headers.values()).map(Some);
    for s in secrets.into_iter().chain(extras) {
        let v = s.map_or(&[][..], |s| s.expose().as_bytes());
        h.update((v.len() as u64).to_le_bytes());
        h.update(v);
    }
    let mut seed = Sha256::new();
    seed.update(h.finalize());
    seed
}

/// The audience rule (RFC 8707): `aud` must name the resource or one of `audiences`;
/// `audiences_denied` values never match.
#[derive(Debug)]
pub(crate) struct AudiencePolicy {
    relaxed: bool,
    accepted: Vec<String>,
    denied: Vec<String>,
}

impl AudiencePolicy {
    pub(crate) fn new(config: &Config) -> Self {
        let mut accepted = vec![config.resource.clone()];
        accepted.extend(config.audiences.iter().cloned());
        AudiencePolicy {
            relaxed: config.insecure_relaxed_audience_validation,
            accepted,
            denied: config.audiences_denied.clone(),
        }
    }

    /// True if the `aud` claim (string or array; absent fails) is acceptable.
    pub(crate) fn audience_matches(&self, aud: Option<&Value>) -> bool {
        if self.relaxed {
            return true;
        }
        let matches = |a: &str| !self.denied.iter().any(|d| d == a) && self.accepted.iter().any(|x| x == a);
        match aud {
            Some(Value::String(a)) => matches(a),
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).any(matches),
            _ => false,
        }
    }
}

/// `exp` must be later than now − leeway; `nbf` no later than now + leeway (Unix seconds).
pub(crate) fn check_time(exp: Option<i64>, nbf: Option<i64>, now: i64, leeway: i64) -> Result<(), Reason> {
    if let Some(exp) = exp {
        if exp.saturating_add(leeway) <= now {
            return Err(Reason::TokenExpired);
        }
    }
    if let Some(nbf) = nbf {
        if nbf > now.saturating_add(leeway) {
            return Err(Reason::TokenNotYetValid);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(extra: Value) -> Config {
        crate::config::test_config(
            json!({"resource": "https://mcp.example/mcp", "authorization_servers": ["https://as.example"]}),
            extra,
        )
    }

    #[test]
    fn audience_is_strict_and_exact() {
        let p = AudiencePolicy::new(&config(json!({})));
        assert!(p.audience_matches(Some(&json!("https://mcp.example/mcp"))));
        assert!(p.audience_matches(Some(&json!(["x", "https://mcp.example/mcp"]))));
        assert!(!p.audience_matches(Some(&json!("https://mcp.example/mcp/"))));
        assert!(!p.audience_matches(Some(&json!("HTTPS://mcp.example/mcp"))));
        assert!(!p.audience_matches(Some(&json!("account"))));
        assert!(!p.audience_matches(Some(&json!([]))));
        assert!(!p.audience_matches(Some(&json!(1))));
        assert!(!p.audience_matches(None));
    }

    #[test]
    fn extra_and_denied_audiences() {
        let p = AudiencePolicy::new(&config(json!({"audiences": ["mcp-client", "account"]})));
        assert!(p.audience_matches(Some(&json!("mcp-client"))));
        assert!(!p.audience_matches(Some(&json!("account"))), "denied audiences never match");
        let relaxed = AudiencePolicy::new(&config(json!({"insecure_relaxed_audience_validation": true})));
        assert!(relaxed.audience_matches(None));
        assert!(relaxed.audience_matches(Some(&json!("account"))));
    }

    #[test]
    fn time_with_leeway() {
        assert_eq!(check_time(Some(100), None, 100, 0), Err(Reason::TokenExpired));
        assert_eq!(check_time(Some(101), None, 100, 0), Ok(()));
        assert_eq!(check_time(Some(95), None, 100, 10), Ok(()));
        assert_eq!(check_time(None, Some(101), 100, 0), Err(Reason::TokenNotYetValid));
        assert_eq!(check_time(None, Some(105), 100, 5), Ok(()));
        assert_eq!(check_time(Some(i64::MAX), Some(i64::MIN), 100, i64::MAX), Ok(()));
    }

    fn grant(p: &Policy, claims: Value, now: UnixMs) -> Outcome {
        p.grant(claims.as_object().unwrap(), None, now)
    }

    #[test]
    fn cache_rule_never_outlives_the_first_answer() {
        let p = Policy::new(config(json!({"cache_ttl_max": 100, "cache_ttl_negative": 5})));
        let t0 = UnixMs::at_secs(1_000);
        let valid = grant(&p, json!({"aud": "https://mcp.example/mcp", "exp": 1_050}), t0);
        assert_eq!(p.expiry(&valid, t0, t0), Some(UnixMs::at_secs(1_050)), "exp first");
        let long = grant(&p, json!({"aud": "https://mcp.example/mcp", "exp": 9_999}), t0);
        assert_eq!(p.expiry(&long, t0, t0), Some(UnixMs::at_secs(1_100)), "then cache_ttl_max");
        // Replayed 90 s after the first fetch: 10 s left, not a fresh 100.
        let later = UnixMs::at_secs(1_090);
        assert_eq!(p.expiry(&long, t0, later), Some(UnixMs::at_secs(1_100)));
        assert_eq!(p.expiry(&long, t0, UnixMs::at_secs(1_100)), None, "nothing left");
        // A fetch time in the future (clock skew between workers) counts as now.
        assert_eq!(p.expiry(&long, UnixMs::at_secs(5_000), t0), Some(UnixMs::at_secs(1_100)));
        let inactive = Outcome::invalid(Reason::TokenInactive);
        assert_eq!(p.expiry(&inactive, t0, t0), Some(UnixMs::at_secs(1_005)));
        assert_eq!(p.expiry(&Outcome::invalid(Reason::TokenNotYetValid), t0, t0), None);
        assert_eq!(p.expiry(&Outcome::Unavailable("x".into()), t0, t0), None);
        let off = Policy::new(config(json!({"cache_introspection": false})));
        assert_eq!(off.expiry(&valid, t0, t0), None);
    }

    #[test]
    fn identity_covers_secrets_without_printing_them() {
        let a = Policy::new(config(json!({"client_id": "c", "client_secret": "one"})));
        let b = Policy::new(config(json!({"client_id": "c", "client_secret": "two"})));
        let c = Policy::new(config(json!({"client_id": "c", "client_secret": "one"})));
        let t = AccessToken(b"tok");
        assert_ne!(a.cache_key(t), b.cache_key(t));
        assert_eq!(a.cache_key(t), c.cache_key(t));
        assert!(!format!("{a:?}").contains("one"));
    }
}
