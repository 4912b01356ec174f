//! The sans-I/O state machine: `begin` → (`Need` → host performs HTTP → `resume`)* → `Done`,
//! and the blocking driver `authorize` with single flight.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::cache::{Flights, Key, Role, TtlCache};
use crate::claims;
use crate::config::ClaimPath;
use crate::decision::{Answer, Decision, Forward, Grant, Identity, Reason};
use crate::introspect::{read_response, Introspected, Introspector};
use crate::jwt::{JwtStep, LocalJwt, Progress};
use crate::metadata::Metadata;
use crate::policy::{check_time, AudiencePolicy, ScopeRules, TimeFailure};
use crate::request::{HttpRequest, HttpResponse, Purpose, Request, TransportError, TransportErrorKind};
use crate::token::{extract_bearer, hex, AccessToken, Extracted, Secret};
use crate::transport::Transport;
use crate::{Config, Error};

/// The outcome of validating one token: what the cache and single flight share.
#[derive(Clone, Debug)]
pub(crate) enum Outcome {
    Valid(Arc<Grant>),
    Invalid(Reason),
    /// Invalid, with a detail for logs (never token or AS response text).
    Rejected(Reason, Cow<'static, str>),
    Unavailable(Cow<'static, str>),
}

/// Validates requests for one configuration. Cheap to clone (`Arc` inside), `Send + Sync`;
/// holds the caches, so two configurations never share entries.
#[derive(Clone)]
pub struct Validator {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    config: Config,
    metadata: Metadata,
    /// Set when `introspection_endpoint` is (introspection always wins, as in Kong).
    introspector: Option<Introspector>,
    /// Local JWT validation, when there is no introspector.
    jwt: Option<LocalJwt>,
    audience: AudiencePolicy,
    scopes: ScopeRules,
    /// Claim path per mapped header, parallel to `header_names`.
    header_paths: Vec<ClaimPath>,
    pub(crate) header_names: Vec<String>,
    pub(crate) remove_headers: Vec<String>,
    cache: Option<TtlCache<Outcome>>,
    flights: Flights<Outcome>,
    /// Single flight for metadata and JWKS fetches by URL (shared by different tokens).
    fetches: Flights<Result<HttpResponse, TransportError>>,
    /// SHA-256 state already fed with the validator's identity; cloned per token.
    key_seed: Sha256,
    leeway: i64,
    allowed_origins: Option<Vec<String>>,
    /// `scopes_required` plus every `method_scopes` scope: what a POST whose body the host
    /// did not pass must have (fail closed).
    all_method_scopes: Vec<String>,
    /// The `scope` of a no-credentials challenge when the operation needs none in particular.
    advertised_scope: Option<String>,
}

/// What the validator needs next.
#[derive(Debug)]
pub enum Step {
    /// The decision is made.
    Done(Decision),
    /// Perform this HTTP request, then call [`Pending::resume`] with its result.
    Need(HttpRequest, Pending),
}

/// A validation waiting for an HTTP response. Owns everything it needs (no borrow of the
/// request), so it can be kept across the host's I/O.
pub struct Pending {
    inner: Arc<Inner>,
    ctx: Ctx<'static>,
    key: Key,
    state: State,
}

/// What a [`Pending`] waits for.
enum State {
    Introspect,
    /// A metadata or JWKS fetch for local JWT validation (boxed: keeps `Step` small).
    Jwt(Box<JwtPending>),
}

struct JwtPending {
    /// Kept to finish the validation once the keys are in.
    token: Secret,
    step: JwtStep,
}

/// A local JWT step's result: decided, or the next request it needs.
enum JwtNext {
    Decided(Outcome),
    Need(HttpRequest, JwtStep),
}

/// The result of one step of a pending validation.
enum Advance {
    Done(Ctx<'static>, Outcome),
    Need(HttpRequest, Pending),
}

/// Request-scoped facts a decision needs.
#[derive(Debug)]
struct Ctx<'a> {
    resource_metadata: Cow<'a, str>,
    cors_origin: Option<Cow<'a, str>>,
    required: Cow<'a, [String]>,
}

impl Ctx<'_> {
    fn answer(&self) -> Answer<'_> {
        Answer { resource_metadata: &self.resource_metadata, cors_origin: self.cors_origin.as_deref() }
    }

    fn into_owned(self) -> Ctx<'static> {
        Ctx {
            resource_metadata: Cow::Owned(self.resource_metadata.into_owned()),
            cors_origin: self.cors_origin.map(|o| Cow::Owned(o.into_owned())),
            required: Cow::Owned(self.required.into_owned()),
        }
    }
}

impl Validator {
    /// Validates the configuration and builds the validator.
    ///
    /// # Errors
    /// A configuration error naming the field, or [`ErrorKind::Unsupported`](crate::ErrorKind)
    /// naming a configured feature this build does not implement yet.
    pub fn new(config: Config) -> Result<Self, Error> {
        config.validate()?;
        config.check_supported()?;

        let (header_names, header_paths): (Vec<String>, Vec<ClaimPath>) = if config.upstream_headers.is_empty() {
            config.claim_to_header.iter().map(|m| (m.header.clone(), ClaimPath::claim(&m.claim))).unzip()
        } else {
            config.upstream_headers.iter().map(|m| (m.header.clone(), m.path.clone())).unzip()
        };
        let mut remove_headers = Vec::with_capacity(header_names.len() + 1);
        if !config.passthrough_credentials {
            remove_headers.push("Authorization".to_owned());
        }
        remove_headers.extend(header_names.iter().cloned());

        let mut all_method_scopes = config.scopes_required.clone();
        for scopes in config.method_scopes.values() {
            push_unique(&mut all_method_scopes, scopes);
        }
        let advertised_scope = config.scopes_supported.as_ref().map(|s| s.join(" ")).filter(|s| !s.is_empty());

        // Identity of the validator for cache keys: its whole configuration, with secrets
        // reduced to digests by their Serialize impl.
        let identity = serde_json::to_vec(&config).expect("the configuration serializes");
        let mut key_seed = Sha256::new();
        key_seed.update(Sha256::digest(&identity));

        let cache = (config.cache_introspection).then(|| TtlCache::new(config.cache_max_entries));
        let inner = Inner {
            metadata: Metadata::new(&config),
            introspector: config.introspection_endpoint.as_deref().map(|url| Introspector::new(&config, url)),
            jwt: config.introspection_endpoint.is_none().then(|| LocalJwt::new(&config)),
            audience: AudiencePolicy::new(&config),
            scopes: ScopeRules::new(&config),
            header_paths,
            header_names,
            remove_headers,
            cache,
            flights: Flights::new(),
            fetches: Flights::new(),
            key_seed,
            leeway: i64::try_from(config.jwt_claims_leeway).unwrap_or(i64::MAX),
            allowed_origins: config.allowed_origins.clone(),
            all_method_scopes,
            advertised_scope,
            config,
        };
        Ok(Validator { inner: Arc::new(inner) })
    }

    /// Parses a JSON configuration (the Kong `config` object) and builds the validator.
    ///
    /// # Errors
    /// As [`Config::from_json`] and [`Validator::new`].
    pub fn from_json(json: &str) -> Result<Self, Error> {
        Validator::new(Config::from_json(json)?)
    }

    /// The configuration in effect.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The Protected Resource Metadata document (JSON).
    pub fn metadata_document(&self) -> &[u8] {
        &self.inner.metadata.document
    }

    /// Starts deciding one request. Never blocks and never performs I/O.
    pub fn begin(&self, req: &Request<'_>) -> Step {
        let inner = &self.inner;
        let cors_origin = match inner.check_origin(req) {
            Ok(o) => o,
            Err(decision) => return Step::Done(decision),
        };
        let mut ctx = Ctx {
            resource_metadata: inner.metadata.resource_metadata_url(req),
            cors_origin: cors_origin.map(Cow::Borrowed),
            required: Cow::Borrowed(&[]),
        };
        let path = req.path_only();
        let is_metadata = inner.metadata.is_metadata_path(path);
        if ctx.cors_origin.is_some()
            && req.method.eq_ignore_ascii_case("OPTIONS")
            && req.header_value("access-control-request-method").is_some()
        {
            return Step::Done(Decision::Respond(ctx.answer().preflight(is_metadata)));
        }
        if is_metadata {
            let answer = ctx.answer();
            let response = match req.method {
                "GET" => answer.metadata(&inner.metadata.document, false),
                "HEAD" => answer.metadata(&inner.metadata.document, true),
                _ => answer.method_not_allowed(),
            };
            return Step::Done(Decision::Respond(response));
        }

        let required = inner.required_scopes(req);
        let token = match extract(req) {
            Extracted::Bearer(t) => t,
            Extracted::NoCredentials => {
                let scope = match &required {
                    Ok(r) if !r.is_empty() => Some(r.join(" ")),
                    _ => inner.advertised_scope.clone(),
                };
                return Step::Done(Decision::Respond(ctx.answer().no_credentials(scope.as_deref())));
            }
            Extracted::Malformed => {
                return Step::Done(Decision::Respond(ctx.answer().invalid_request("Malformed Authorization header")))
            }
            Extracted::TooLong => {
                return Step::Done(Decision::Respond(ctx.answer().invalid_token(Reason::TokenTooLong)))
            }
        };
        ctx.required = match required {
            Ok(r) => r,
            Err(BodyProblem::TooLarge) => return Step::Done(Decision::Respond(ctx.answer().body_too_large())),
            Err(BodyProblem::Unreadable) => {
                return Step::Done(Decision::Respond(ctx.answer().invalid_request("Unreadable JSON-RPC request body")))
            }
        };

        let key = inner.cache_key(token);
        if let Some(outcome) = inner.cache.as_ref().and_then(|c| c.get(&key, Instant::now())) {
            return Step::Done(self.decide(&ctx, &outcome));
        }
        let (http, state) = match (&inner.introspector, &inner.jwt) {
            (Some(introspector), _) => (introspector.request(token.0), State::Introspect),
            (None, Some(jwt)) => {
                let now = unix_now();
                match inner.jwt_outcome(jwt.start(token.0, now), now) {
                    JwtNext::Decided(outcome) => {
                        inner.store(key, &outcome, now);
                        return Step::Done(self.decide(&ctx, &outcome));
                    }
                    JwtNext::Need(http, step) => {
                        (http, State::Jwt(Box::new(JwtPending { token: Secret::new(token.0), step })))
                    }
                }
            }
            (None, None) => {
                let outcome = Outcome::Unavailable(Cow::Borrowed("no validation method configured"));
                return Step::Done(self.decide(&ctx, &outcome));
            }
        };
        Step::Need(http, Pending { inner: Arc::clone(inner), ctx: ctx.into_owned(), key, state })
    }

    /// Decides one request, performing the authorization-server calls with `transport`.
    ///
    /// Concurrent misses for one token in this process share one call (single flight):
    /// the others wait for its result.
    pub fn authorize<T: Transport + ?Sized>(&self, req: &Request<'_>, transport: &T) -> Decision {
        let (mut http, mut pending) = match self.begin(req) {
            Step::Done(d) => return d,
            Step::Need(http, pending) => (http, pending),
        };
        let waiting = Cow::Borrowed("validation: gave up waiting for a concurrent call");
        match self.inner.flights.join(pending.key, Outcome::Unavailable(waiting)) {
            Role::Leader(leader) => {
                // A flight for this key may have finished between our miss and our join.
                if let Some(outcome) = self.inner.cache.as_ref().and_then(|c| c.get(&pending.key, Instant::now())) {
                    leader.complete(outcome.clone());
                    return self.decide(&pending.ctx, &outcome);
                }
                // Discovery, then keys: a validation may need several calls.
                loop {
                    let result = self.send_shared(transport, &http);
                    match pending.advance(result) {
                        Advance::Done(ctx, outcome) => {
                            leader.complete(outcome.clone());
                            return self.decide(&ctx, &outcome);
                        }
                        Advance::Need(next_http, next) => (http, pending) = (next_http, next),
                    }
                }
            }
            Role::Follower(flight) => {
                // Local JWT validation may chain discovery (three URLs per server, with
                // retries) and two JWKS calls.
                let config = &self.inner.config;
                let calls = if self.inner.jwt.is_some() {
                    let servers = config.authorization_servers.len() as u64;
                    3 * servers * u64::from(config.metadata_discovery_retry) + 2
                } else {
                    2
                };
                let wait = Duration::from_millis(config.timeout.saturating_mul(calls)) + Duration::from_secs(1);
                let outcome = flight.wait(wait).unwrap_or(Outcome::Unavailable(Cow::Borrowed(
                    "validation: timed out waiting for a concurrent call",
                )));
                self.decide(&pending.ctx, &outcome)
            }
        }
    }

    /// Performs `http`. Concurrent metadata or JWKS fetches of one URL (for different
    /// tokens, e.g. a burst at start-up) share one call; introspection is per token.
    fn send_shared<T: Transport + ?Sized>(
        &self,
        transport: &T,
        http: &HttpRequest,
    ) -> Result<HttpResponse, TransportError> {
        if http.purpose == Purpose::Introspection {
            return transport.send(http);
        }
        let mut h = Sha256::new();
        h.update(http.purpose.as_str().as_bytes());
        h.update(b"\0");
        h.update(http.url.as_bytes());
        let key: Key = h.finalize().into();
        let abandoned = Err(TransportError::new(TransportErrorKind::Other, "a concurrent fetch was abandoned"));
        match self.inner.fetches.join(key, abandoned) {
            Role::Leader(leader) => {
                let result = transport.send(http);
                leader.complete(result.clone());
                result
            }
            Role::Follower(flight) => flight.wait(http.timeout + Duration::from_secs(1)).unwrap_or_else(|| {
                Err(TransportError::new(TransportErrorKind::Timeout, "timed out waiting for a concurrent fetch"))
            }),
        }
    }

    /// Shifts the local JWT clock (metadata/JWKS expiry, refetch limit) forward.
    #[cfg(test)]
    pub(crate) fn advance_jwt_clock(&self, by: Duration) {
        if let Some(jwt) = &self.inner.jwt {
            *jwt.skew.lock() += by;
        }
    }

    /// Removes a token's cached result (after revocation). True if it was cached.
    pub fn evict(&self, token: &str) -> bool {
        let key = self.inner.cache_key(AccessToken(token));
        self.inner.cache.as_ref().is_some_and(|c| c.remove(&key))
    }

    /// Number of cached validation results (live or not yet purged).
    pub fn cached_entries(&self) -> usize {
        self.inner.cache.as_ref().map_or(0, TtlCache::len)
    }

    fn decide(&self, ctx: &Ctx<'_>, outcome: &Outcome) -> Decision {
        self.inner.decide(ctx, outcome)
    }
}

impl fmt::Debug for Validator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Validator")
            .field("resource", &self.inner.config.resource)
            .field("cached_entries", &self.cached_entries())
            .finish_non_exhaustive()
    }
}

impl Pending {
    /// Continues with the result of the HTTP request from [`Step::Need`].
    pub fn resume(self, result: Result<HttpResponse, TransportError>) -> Step {
        let inner = Arc::clone(&self.inner);
        match self.advance(result) {
            Advance::Done(ctx, outcome) => Step::Done(inner.decide(&ctx, &outcome)),
            Advance::Need(http, pending) => Step::Need(http, pending),
        }
    }

    /// A key for the response this step waits for, as 64 hex digits (a SHA-256 digest
    /// over the validator's identity and what identifies the response; never the token).
    /// Hosts with a shared cache across processes (nginx workers) use it to store and
    /// replay AS responses:
    /// - introspection: the token (one response per token);
    /// - discovery and JWKS ([`Purpose::Discovery`](crate::Purpose), [`Purpose::Jwks`](crate::Purpose)):
    ///   the URL, so every token shares one cached document;
    /// - a JWKS refetch after an unknown `kid`: the URL and the current minute, so a
    ///   replayed stale key set is never mistaken for the refetch.
    pub fn cache_key(&self) -> String {
        match &self.state {
            State::Introspect => hex(&self.key),
            State::Jwt(jwt) => {
                let mut h = self.inner.key_seed.clone();
                match &jwt.step {
                    JwtStep::Discover { candidate, .. } => {
                        h.update(b"discovery\0");
                        h.update(candidate.to_le_bytes());
                    }
                    JwtStep::FetchKeys { url, .. } => {
                        h.update(b"jwks\0");
                        h.update(url.as_bytes());
                    }
                    JwtStep::RefetchKeys { url, .. } => {
                        h.update(b"jwks-refetch\0");
                        h.update(url.as_bytes());
                        h.update(b"\0");
                        h.update((unix_now() / 60).to_le_bytes());
                    }
                }
                let digest: Key = h.finalize().into();
                hex(&digest)
            }
        }
    }

    fn advance(self, result: Result<HttpResponse, TransportError>) -> Advance {
        let Pending { inner, ctx, key, state } = self;
        let now = unix_now();
        let outcome = match state {
            State::Introspect => match read_response(result) {
                Introspected::Active(claims) => inner.outcome_from_claims(&claims, now),
                Introspected::Inactive => Outcome::Invalid(Reason::TokenInactive),
                Introspected::NotAccessToken => Outcome::Invalid(Reason::TokenTypeInvalid),
                Introspected::Failed(detail) => Outcome::Unavailable(detail),
            },
            State::Jwt(pending) => {
                let JwtPending { token, step } = *pending;
                let progress = match &inner.jwt {
                    Some(jwt) => jwt.resume(token.expose(), step, result, now),
                    None => Progress::Unavailable(Cow::Borrowed("jwt: not configured")),
                };
                match inner.jwt_outcome(progress, now) {
                    JwtNext::Decided(outcome) => outcome,
                    JwtNext::Need(http, step) => {
                        let state = State::Jwt(Box::new(JwtPending { token, step }));
                        return Advance::Need(http, Pending { inner, ctx, key, state });
                    }
                }
            }
        };
        inner.store(key, &outcome, now);
        Advance::Done(ctx, outcome)
    }
}

impl fmt::Debug for Pending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let waiting_for = match &self.state {
            State::Introspect => "introspection",
            State::Jwt(jwt) if matches!(jwt.step, JwtStep::Discover { .. }) => "discovery",
            State::Jwt(_) => "jwks",
        };
        f.debug_struct("Pending").field("ctx", &self.ctx).field("waiting_for", &waiting_for).finish_non_exhaustive()
    }
}

enum BodyProblem {
    TooLarge,
    Unreadable,
}

/// One JSON-RPC message, as far as scopes care. A duplicated `method` member is an error.
#[derive(Deserialize)]
struct RpcMessage {
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    params: Option<Value>,
}

fn extract<'a>(req: &Request<'a>) -> Extracted<'a> {
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
    extract_bearer(&values[..count.min(2)])
}

fn push_unique(into: &mut Vec<String>, scopes: &[String]) {
    for s in scopes {
        if !into.contains(s) {
            into.push(s.clone());
        }
    }
}

pub(crate) fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl Inner {
    /// A local JWT step's outcome, or the next request it needs.
    fn jwt_outcome(&self, progress: Progress, now: i64) -> JwtNext {
        JwtNext::Decided(match progress {
            Progress::Verified(claims) => self.outcome_from_claims(&claims, now),
            Progress::Invalid(reason) => Outcome::Invalid(reason),
            Progress::Rejected(reason, detail) => Outcome::Rejected(reason, detail),
            Progress::Unavailable(detail) => Outcome::Unavailable(detail),
            Progress::Need(http, step) => return JwtNext::Need(http, step),
        })
    }

    fn cache_key(&self, token: AccessToken<'_>) -> Key {
        let mut h = self.key_seed.clone();
        h.update(token.0.as_bytes());
        h.finalize().into()
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
                Err(Decision::Respond(answer.forbidden(Reason::OriginNotAllowed, "The request origin is not allowed")))
            }
        }
    }

    /// The scopes this operation needs: `scopes_required` plus the `method_scopes` of the
    /// JSON-RPC method(s) in a POST body.
    fn required_scopes(&self, req: &Request<'_>) -> Result<Cow<'_, [String]>, BodyProblem> {
        let config = &self.config;
        if config.method_scopes.is_empty() || !req.method.eq_ignore_ascii_case("POST") {
            return Ok(Cow::Borrowed(&config.scopes_required));
        }
        let Some(body) = req.body else {
            return Ok(Cow::Borrowed(&self.all_method_scopes));
        };
        if config.max_request_body_size > 0 && body.len() as u64 > config.max_request_body_size {
            return Err(BodyProblem::TooLarge);
        }
        let first = body.iter().find(|b| !b.is_ascii_whitespace());
        let messages: Vec<RpcMessage> = match first {
            Some(b'[') => serde_json::from_slice(body).map_err(|_| BodyProblem::Unreadable)?,
            Some(b'{') => vec![serde_json::from_slice(body).map_err(|_| BodyProblem::Unreadable)?],
            _ => return Err(BodyProblem::Unreadable),
        };
        let mut required = config.scopes_required.clone();
        for m in &messages {
            let Some(method) = &m.method else { continue };
            if let Some(s) = config.method_scopes.get(method) {
                push_unique(&mut required, s);
            }
            if method == "tools/call" {
                if let Some(name) = m.params.as_ref().and_then(|p| p.get("name")).and_then(Value::as_str) {
                    if let Some(s) = config.method_scopes.get(&format!("tools/call:{name}")) {
                        push_unique(&mut required, s);
                    }
                }
            }
        }
        Ok(Cow::Owned(required))
    }

    /// Applies the token-level policy (time, audience) to validated claims and extracts
    /// what later decisions need: nothing else of the response is kept.
    fn outcome_from_claims(&self, claims: &Map<String, Value>, now: i64) -> Outcome {
        let (Ok(exp), Ok(nbf)) = (claims::numeric_date(claims, "exp"), claims::numeric_date(claims, "nbf")) else {
            return Outcome::Invalid(Reason::TokenMalformed);
        };
        if let Err(t) = check_time(exp, nbf, now, self.leeway) {
            return Outcome::Invalid(time_reason(t));
        }
        if !self.audience.audience_matches(claims.get("aud")) {
            return Outcome::Invalid(Reason::AudienceMismatch);
        }

        let mut header_invalid = false;
        let header_values = self
            .header_paths
            .iter()
            .map(|path| {
                let v = claims::lookup(claims, &path.0).and_then(claims::render)?;
                if claims::is_safe_header_value(&v) {
                    Some(v.into_boxed_str())
                } else {
                    header_invalid = true;
                    None
                }
            })
            .collect();

        let config = &self.config;
        let text = |path: &ClaimPath| -> Option<Box<str>> {
            claims::lookup(claims, &path.0).and_then(claims::render).map(String::into_boxed_str)
        };
        let consumer = config.consumer_claim.as_ref().and_then(text);
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
            consumer,
            consumer_groups,
        };
        let ttl_max = i64::try_from(config.cache_ttl_max).unwrap_or(i64::MAX);
        Outcome::Valid(Arc::new(Grant {
            exp,
            nbf,
            valid_until: exp.unwrap_or(i64::MAX).min(now.saturating_add(ttl_max)),
            consumer_missing: config.consumer_claim.is_some()
                && !config.consumer_optional
                && identity.consumer.is_none(),
            groups_missing: config.consumer_groups_claim.is_some()
                && !config.consumer_groups_optional
                && identity.consumer_groups.as_ref().is_none_or(|g| g.is_empty()),
            identity,
            header_values,
            header_invalid,
        }))
    }

    /// Caches an outcome per behaviour.md §5; AS failures are never cached.
    fn store(&self, key: Key, outcome: &Outcome, now: i64) {
        let Some(cache) = &self.cache else { return };
        let ttl = match outcome {
            Outcome::Valid(g) => {
                let until_exp = g.exp.map_or(i64::MAX, |e| e.saturating_sub(now));
                let secs = until_exp.min(i64::try_from(self.config.cache_ttl_max).unwrap_or(i64::MAX));
                Duration::from_secs(u64::try_from(secs).unwrap_or(0))
            }
            Outcome::Invalid(_) | Outcome::Rejected(..) => Duration::from_secs(self.config.cache_ttl_negative),
            Outcome::Unavailable(_) => return,
        };
        cache.insert(key, outcome.clone(), ttl, Instant::now());
    }

    fn decide(self: &Arc<Self>, ctx: &Ctx<'_>, outcome: &Outcome) -> Decision {
        let answer = ctx.answer();
        let grant = match outcome {
            Outcome::Unavailable(detail) => return Decision::Respond(answer.unavailable(detail.clone())),
            Outcome::Invalid(reason) => return Decision::Respond(answer.invalid_token(*reason)),
            Outcome::Rejected(reason, detail) => {
                let mut response = answer.invalid_token(*reason);
                response.detail = Some(detail.clone());
                return Decision::Respond(response);
            }
            Outcome::Valid(g) => g,
        };
        // Time-dependent checks run on every use of a cached result.
        if let Err(t) = check_time(grant.exp, grant.nbf, unix_now(), self.leeway) {
            return Decision::Respond(answer.invalid_token(time_reason(t)));
        }
        if !self.scopes.covers(grant.identity.scope.as_deref(), &ctx.required) {
            return Decision::Respond(answer.insufficient_scope(&ctx.required));
        }
        if grant.consumer_missing {
            return Decision::Respond(
                answer.forbidden(Reason::ConsumerMissing, "The access token does not identify a consumer"),
            );
        }
        if grant.groups_missing {
            return Decision::Respond(
                answer.forbidden(Reason::ConsumerGroupsMissing, "The access token does not name consumer groups"),
            );
        }
        if grant.header_invalid {
            return Decision::Respond(
                answer.forbidden(Reason::ClaimHeaderInvalid, "A token claim cannot be sent upstream"),
            );
        }
        Decision::Forward(Forward { inner: Arc::clone(self), grant: Arc::clone(grant) })
    }
}

fn time_reason(t: TimeFailure) -> Reason {
    match t {
        TimeFailure::Expired => Reason::TokenExpired,
        TimeFailure::NotYetValid => Reason::TokenNotYetValid,
    }
}
