//! Local validation of JWT access tokens (behaviour.md §4 "Local JWT"; RFC 9068, RFC 8725):
//! the JOSE header rules, key lookup through the validator-level metadata and JWKS caches,
//! signature verification (by `jsonwebtoken`, never by hand) and the JWT-only claim rules.
//! Audience, `exp`/`nbf` and header mapping are shared with introspection (policy.rs).
//!
//! Fetching metadata and keys is sans-I/O like introspection: [`LocalJwt`] implements
//! [`TokenValidation`]; each step either finishes or returns the next HTTP request with a
//! [`JwtStep`]. Every time (cache expiry, the refetch limit) is the caller's `now`.
//!
//! The same machinery (header rules, issuer binding, metadata and key caches, signature)
//! verifies signed introspection answers (RFC 9701) for the introspector, with that
//! profile's claim rules ([`Profile::IntrospectionResponse`]).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind as JwtErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use parking_lot::Mutex;
use serde_json::{Map, Value};

use crate::claims;
use crate::clock::UnixMs;
use crate::config::AccessTokenType;
use crate::decision::Reason;
use crate::discovery::{self, AsMetadata, Candidate, Fetched};
use crate::jwks::{read_jwks, KeySet, Selected};
use crate::method::{HttpResult, JwtStep, MethodState, Progress, TokenValidation};
use crate::outbound::Outbound;
use crate::policy::Outcome;
use crate::request::{HttpRequest, Purpose};
use crate::Config;

/// An unknown `kid` refetches a JWKS at most this often per JWKS URL.
pub(crate) const REFETCH_INTERVAL: Duration = Duration::from_secs(60);

/// Where the verification keys come from.
#[derive(Debug)]
enum Source {
    /// `jwks_endpoint`.
    Jwks(String),
    /// The `jwks_uri` of the first authorization-server metadata found.
    Discovery(Vec<Candidate>),
}

struct CachedKeys {
    url: String,
    set: Arc<KeySet>,
    expires: UnixMs,
}

/// The JOSE header facts validation needs.
#[derive(Debug)]
pub(crate) struct JoseHeader {
    pub(crate) alg: Algorithm,
    pub(crate) kid: Option<String>,
}

/// What kind of JWT a [`LocalJwt`] verifies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Profile {
    /// An access token (RFC 9068): `exp` required, no ID/refresh/logout tokens, `typ` per
    /// `access_token_type`.
    AccessToken { require_at_jwt: bool },
    /// A signed introspection answer (RFC 9701 §5): JOSE `typ`
    /// `token-introspection+jwt`, `aud` the gateway's `client_id`, a `token_introspection`
    /// object.
    IntrospectionResponse { audience: String },
}

/// Local JWT validation for one validator: policy plus the metadata and key caches.
pub(crate) struct LocalJwt {
    /// One `jsonwebtoken` validation per allowed algorithm, built once.
    validations: Vec<(Algorithm, Validation)>,
    issuers: IssuerBinding,
    profile: Profile,
    leeway: i64,
    timeout: Duration,
    outbound: Outbound,
    source: Source,
    retry: u32,
    jwks_ttl: Duration,
    metadata_ttl: Duration,
    /// Per authorization server (index in `authorization_servers`; 0 for an explicit
    /// `metadata_discovery_endpoint`): its metadata and when it must be refreshed.
    metadata: Mutex<Vec<Option<(AsMetadata, UnixMs)>>>,
    /// Key sets by slot: 0 for `jwks_endpoint`, else the authorization server's index, so
    /// a token is verified only with the keys of the server it names as issuer.
    keys: Mutex<Vec<Option<CachedKeys>>>,
    /// When each JWKS URL was last refetched for an unknown `kid` (ordinary fetches on a
    /// cache miss do not count: a key rotated just after a fetch must still be found).
    last_refetch: Mutex<HashMap<String, Refetch>>,
}

/// The last refetch of a key set for an unknown `kid`.
#[derive(Debug, Clone, Copy)]
struct Refetch {
    started: UnixMs,
    answered: bool,
}

impl LocalJwt {
    /// Validation of access tokens.
    pub(crate) fn new(config: &Config) -> Self {
        let require_at_jwt = config.access_token_type == AccessTokenType::AtJwt;
        LocalJwt::with_profile(config, Profile::AccessToken { require_at_jwt })
    }

    /// Verification of signed introspection answers addressed to the gateway's `client_id`.
    pub(crate) fn for_introspection_responses(config: &Config) -> Self {
        let audience = config.client_id.clone().unwrap_or_default();
        LocalJwt::with_profile(config, Profile::IntrospectionResponse { audience })
    }

    fn with_profile(config: &Config, profile: Profile) -> Self {
        let validations = config
            .effective_algorithms()
            .iter()
            .filter_map(|name| name.parse::<Algorithm>().ok())
            .map(|alg| {
                // Only the signature is checked here: every claim rule is ours, so that
                // missing and malformed claims are told apart and leeway is applied once.
                let mut v = Validation::new(alg);
                v.required_spec_claims.clear();
                v.validate_exp = false;
                v.validate_nbf = false;
                v.validate_aud = false;
                v.leeway = 0;
                (alg, v)
            })
            .collect();
        let slots = config.authorization_servers.len().max(1);
        let source = match &config.jwks_endpoint {
            Some(url) => Source::Jwks(url.clone()),
            None => Source::Discovery(discovery::candidates(config)),
        };
        LocalJwt {
            validations,
            issuers: IssuerBinding::new(config),
            profile,
            leeway: i64::try_from(config.jwt_claims_leeway).unwrap_or(i64::MAX),
            timeout: Duration::from_millis(config.timeout),
            outbound: Outbound::new(config),
            source,
            retry: config.metadata_discovery_retry.max(1),
            jwks_ttl: Duration::from_secs(config.jwks_cache_ttl),
            metadata_ttl: Duration::from_secs(config.metadata_cache_ttl),
            metadata: Mutex::new(vec![None; slots]),
            keys: Mutex::new((0..slots).map(|_| None).collect()),
            last_refetch: Mutex::new(HashMap::new()),
        }
    }

    fn resume_step(&self, token: &str, step: JwtStep, result: HttpResult, now: UnixMs) -> Progress {
        let refetch = matches!(step, JwtStep::RefetchKeys { .. });
        let header = match self.parse_header(token) {
            Ok(h) => h,
            Err(reason) => return invalid(reason),
        };
        match step {
            JwtStep::Discover { candidate, attempt, transient } => {
                let Source::Discovery(candidates) = &self.source else {
                    return unavailable("jwt: unexpected discovery step");
                };
                let Some(current) = candidates.get(candidate) else {
                    return unavailable("jwt: unexpected discovery step");
                };
                match discovery::read_metadata(result, current) {
                    Fetched::Found(metadata) => {
                        let entry = Some((metadata, now.plus(self.metadata_ttl)));
                        if let Some(slot) = self.metadata.lock().get_mut(current.server) {
                            *slot = entry;
                        }
                        self.with_keys(token, &header, now)
                    }
                    Fetched::Failed(detail) if attempt < self.retry => need(
                        self.outbound.get_json(&current.url, Purpose::Discovery),
                        JwtStep::Discover { candidate, attempt: attempt + 1, transient: Some(detail) },
                    ),
                    Fetched::Failed(detail) => self.next_candidate(candidates, candidate, Some(detail.clone()), detail),
                    Fetched::Absent(detail) => self.next_candidate(candidates, candidate, transient, detail),
                }
            }
            JwtStep::FetchKeys { slot, url } | JwtStep::RefetchKeys { slot, url } => {
                if refetch {
                    if let Some(r) = self.last_refetch.lock().get_mut(&url) {
                        r.answered = true;
                    }
                }
                // A fresh set is authoritative: an unknown kid now is a 401, not another fetch.
                let set = match read_jwks(result) {
                    Ok(set) => Arc::new(set),
                    Err(detail) => return Progress::Done(Outcome::Unavailable(detail)),
                };
                if let Some(cached) = self.keys.lock().get_mut(slot) {
                    *cached = Some(CachedKeys { url, set: Arc::clone(&set), expires: now.plus(self.jwks_ttl) });
                }
                self.verify_with(token, &header, &set, slot, now)
            }
        }
    }

    /// After candidate `after`: the next candidate of the same authorization server. At
    /// the end of that server's candidates discovery fails (503): a token is verified only
    /// with the keys of the server its issuer is bound to, never another server's. `last`
    /// is why candidate `after` did not do; `transient` the last transient failure.
    fn next_candidate(
        &self,
        candidates: &[Candidate],
        after: usize,
        transient: Option<Cow<'static, str>>,
        last: Cow<'static, str>,
    ) -> Progress {
        let next = after + 1;
        match candidates.get(next).filter(|c| c.server == candidates[after].server) {
            Some(c) => need(
                self.outbound.get_json(&c.url, Purpose::Discovery),
                JwtStep::Discover { candidate: next, attempt: 1, transient },
            ),
            None => match transient {
                Some(detail) => Progress::Done(Outcome::Unavailable(detail)),
                None => unavailable(format!("{last}; no usable metadata for the token's issuer")),
            },
        }
    }

    /// The key slot and JWKS URL for `token`, or what to do to find them: the slot is the
    /// one authorization server its (unverified) issuer is bound to, so a token is never
    /// verified with another server's keys; a token whose issuer is bound to no server is
    /// rejected without any call.
    fn jwks_url(&self, token: &str, now: UnixMs) -> Result<(usize, String), Box<Progress>> {
        let Some(slot) = self.issuers.key_slot(unverified_issuer(token).as_deref()) else {
            return Err(Box::new(invalid(Reason::IssuerMismatch)));
        };
        let candidates = match &self.source {
            Source::Jwks(url) => return Ok((0, url.clone())),
            Source::Discovery(candidates) => candidates,
        };
        let known = {
            let metadata = self.metadata.lock();
            metadata
                .get(slot)
                .and_then(Option::as_ref)
                .filter(|(_, expires)| *expires > now)
                .map(|(m, _)| m.jwks_uri.clone())
        };
        if let Some(url) = known {
            return Ok((slot, url));
        }
        Err(Box::new(match candidates.iter().position(|c| c.server == slot) {
            Some(candidate) => need(
                self.outbound.get_json(&candidates[candidate].url, Purpose::Discovery),
                JwtStep::Discover { candidate, attempt: 1, transient: None },
            ),
            None => unavailable("discovery: no metadata URL can be derived"),
        }))
    }

    /// Verifies with the cached keys, or asks for the metadata or keys first.
    fn with_keys(&self, token: &str, header: &JoseHeader, now: UnixMs) -> Progress {
        let (slot, url) = match self.jwks_url(token, now) {
            Ok(found) => found,
            Err(progress) => return *progress,
        };
        let cached = {
            let keys = self.keys.lock();
            let cached = keys.get(slot).and_then(Option::as_ref);
            cached.filter(|k| k.url == url && k.expires > now).map(|k| Arc::clone(&k.set))
        };
        let Some(set) = cached else {
            return need(self.jwks_request(&url), JwtStep::FetchKeys { slot, url });
        };
        if let Selected::UnknownKid = set.select(header.kid.as_deref(), header.alg) {
            if self.may_refetch(&url, now) {
                return need(self.jwks_request(&url), JwtStep::RefetchKeys { slot, url });
            }
            return key_unknown(&set);
        }
        self.verify_with(token, header, &set, slot, now)
    }

    fn jwks_request(&self, url: &str) -> HttpRequest {
        self.outbound.get_json(url, Purpose::Jwks)
    }

    /// True (and the refetch is recorded) if `url` was not refetched in the last 60 s.
    /// Also true while that refetch is still in flight (not answered, and its timeout has
    /// not passed): a burst of tokens with a newly rotated `kid` then waits for it instead
    /// of getting 401s. The validator joins them to the in-flight call (single flight); it
    /// is not a second fetch.
    fn may_refetch(&self, url: &str, now: UnixMs) -> bool {
        let mut last = self.last_refetch.lock();
        match last.get(url) {
            Some(r) if now < r.started.plus(REFETCH_INTERVAL) => !r.answered && now < r.started.plus(self.timeout),
            _ => {
                last.insert(url.to_owned(), Refetch { started: now, answered: false });
                true
            }
        }
    }

    fn verify_with(&self, token: &str, header: &JoseHeader, set: &KeySet, slot: usize, now: UnixMs) -> Progress {
        let key = match set.select(header.kid.as_deref(), header.alg) {
            Selected::Key(k) => k,
            Selected::UnknownKid | Selected::NoFit => return key_unknown(set),
        };
        let claims = match self.verify_signature(token, header.alg, key) {
            Ok(c) => c,
            Err(reason) => return invalid(reason),
        };
        match self.check_claims(&claims, slot, now.secs()) {
            Ok(()) => Progress::Claims(claims, None),
            Err(reason) => invalid(reason),
        }
    }

    /// Compact JWS only; `alg` in the allow-list (so never `none` or HS*); no `crit`
    /// (no extension is understood); `typ` per `access_token_type`.
    pub(crate) fn parse_header(&self, token: &str) -> Result<JoseHeader, Reason> {
        let mut parts = token.split('.');
        let (Some(h), Some(_), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(Reason::TokenMalformed);
        };
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(h).map_err(|_| Reason::TokenMalformed)?;
        let Ok(Value::Object(header)) = serde_json::from_slice::<Value>(&bytes) else {
            return Err(Reason::TokenMalformed);
        };
        let Some(alg_name) = header.get("alg").and_then(Value::as_str) else {
            return Err(Reason::TokenMalformed);
        };
        let allowed = |a: &Algorithm| is_canonical(*a, alg_name) && self.validations.iter().any(|(v, _)| v == a);
        let Some(alg) = alg_name.parse::<Algorithm>().ok().filter(allowed) else {
            return Err(Reason::TokenAlgorithmNotAllowed);
        };
        if header.contains_key("crit") {
            return Err(Reason::TokenMalformed);
        }
        let kid = match header.get("kid") {
            None => None,
            Some(Value::String(k)) => Some(k.clone()),
            Some(_) => return Err(Reason::TokenMalformed),
        };
        let required_typ = match &self.profile {
            Profile::AccessToken { require_at_jwt: true } => Some("at+jwt"),
            Profile::AccessToken { require_at_jwt: false } => None,
            // RFC 9701 §5 (explicit typing, RFC 8725 §3.11): an access token or an ID token
            // signed by the same keys is never taken for an introspection answer.
            Profile::IntrospectionResponse { .. } => Some("token-introspection+jwt"),
        };
        if let Some(typ) = required_typ {
            let ok = header.get("typ").and_then(Value::as_str).is_some_and(|t| {
                t.eq_ignore_ascii_case(typ)
                    || t.get(..12).is_some_and(|p| p.eq_ignore_ascii_case("application/"))
                        && t[12..].eq_ignore_ascii_case(typ)
            });
            if !ok {
                return Err(Reason::TokenTypeInvalid);
            }
        }
        Ok(JoseHeader { alg, kid })
    }

    fn verify_signature(&self, token: &str, alg: Algorithm, key: &DecodingKey) -> Result<Map<String, Value>, Reason> {
        let Some((_, validation)) = self.validations.iter().find(|(a, _)| *a == alg) else {
            return Err(Reason::TokenAlgorithmNotAllowed);
        };
        match jsonwebtoken::decode::<Map<String, Value>>(token, key, validation) {
            Ok(data) => Ok(data.claims),
            Err(e) => Err(match e.kind() {
                JwtErrorKind::InvalidToken
                | JwtErrorKind::Base64(_)
                | JwtErrorKind::Json(_)
                | JwtErrorKind::Utf8(_)
                | JwtErrorKind::InvalidClaimFormat(_)
                | JwtErrorKind::MissingRequiredClaim(_) => Reason::TokenMalformed,
                _ => Reason::TokenSignatureInvalid,
            }),
        }
    }

    /// The JWT-only claim rules: an access token (not an ID, refresh or logout token),
    /// `exp` present, `iat` not in the future, `iss` accepted and bound to the key slot
    /// that verified the signature. (`exp`/`nbf` times and `aud` are checked by the policy.)
    fn check_claims(&self, claims: &Map<String, Value>, slot: usize, now: i64) -> Result<(), Reason> {
        match &self.profile {
            Profile::AccessToken { .. } => {
                if !claims::is_access_token(claims) {
                    return Err(Reason::TokenTypeInvalid);
                }
                match claims::numeric_date(claims, "exp") {
                    Ok(Some(_)) => {}
                    _ => return Err(Reason::TokenMalformed),
                }
            }
            Profile::IntrospectionResponse { audience } => {
                // RFC 9701 §5: addressed to this resource server; the answer itself is the
                // `token_introspection` object. An `exp`, if the server sets one, holds.
                let addressed = match claims.get("aud") {
                    Some(Value::String(a)) => a == audience,
                    Some(Value::Array(all)) => all.iter().any(|a| a.as_str() == Some(audience.as_str())),
                    _ => false,
                };
                if !addressed {
                    return Err(Reason::AudienceMismatch);
                }
                if !claims.get("token_introspection").is_some_and(Value::is_object) {
                    return Err(Reason::TokenMalformed);
                }
                match claims::numeric_date(claims, "exp") {
                    Ok(Some(exp)) if exp <= now.saturating_sub(self.leeway) => return Err(Reason::TokenExpired),
                    Ok(_) => {}
                    Err(()) => return Err(Reason::TokenMalformed),
                }
            }
        }
        match claims::numeric_date(claims, "iat") {
            Ok(Some(iat)) if iat > now.saturating_add(self.leeway) => return Err(Reason::TokenNotYetValid),
            Ok(_) => {}
            Err(()) => return Err(Reason::TokenMalformed),
        }
        let Some(iss) = claims::string_claim(claims, "iss") else {
            return Err(Reason::IssuerMismatch);
        };
        let discovered = || {
            let metadata = self.metadata.lock();
            metadata.get(slot).and_then(Option::as_ref).is_some_and(|(m, _)| m.issuer == iss)
        };
        if self.issuers.key_slot(Some(iss)) != Some(slot) || !self.issuers.accepts(iss, discovered) {
            return Err(Reason::IssuerMismatch);
        }
        Ok(())
    }
}

/// Which issuers are accepted, and the one key slot each is bound to (behaviour: every
/// accepted issuer belongs to exactly one authorization server).
#[derive(Debug)]
struct IssuerBinding {
    servers: Vec<String>,
    /// Alias → index of its authorization server.
    aliases: BTreeMap<String, usize>,
    /// `issuers` when configured.
    accepted: Option<Vec<String>>,
    /// One key source (`jwks_endpoint`, or a single authorization server): every issuer is
    /// bound to slot 0.
    single: bool,
}

impl IssuerBinding {
    fn new(config: &Config) -> Self {
        let servers = config.authorization_servers.clone();
        let aliases = config
            .issuer_aliases
            .iter()
            .filter_map(|(alias, server)| Some((alias.clone(), servers.iter().position(|s| s == server)?)))
            .collect();
        IssuerBinding {
            single: config.jwks_endpoint.is_some() || servers.len() <= 1,
            accepted: config.issuers.clone(),
            aliases,
            servers,
        }
    }

    /// The key slot of the server `iss` is bound to (`None`: bound to none).
    fn key_slot(&self, iss: Option<&str>) -> Option<usize> {
        if self.single {
            return Some(0);
        }
        let iss = iss?;
        self.servers.iter().position(|s| s == iss).or_else(|| self.aliases.get(iss).copied())
    }

    /// `issuers` plus the aliases if configured; else the authorization servers, the
    /// aliases and the issuer the slot's discovered metadata names.
    fn accepts(&self, iss: &str, discovered: impl FnOnce() -> bool) -> bool {
        if self.aliases.contains_key(iss) {
            return true;
        }
        match &self.accepted {
            Some(issuers) => issuers.iter().any(|i| i == iss),
            None => self.servers.iter().any(|s| s == iss) || discovered(),
        }
    }
}

/// The `iss` of a JWT's payload, before verification: only to choose which server's keys
/// to verify it with (a token naming another server simply finds no key of its signer).
fn unverified_issuer(token: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Iss {
        iss: Option<String>,
    }
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).ok()?;
    serde_json::from_slice::<Iss>(&bytes).ok()?.iss
}

/// 401 for a token no key fits; names the skipped keys of the set, if any, for logs (a
/// malformed key is skipped, not fatal, and this is where an operator learns about it).
fn key_unknown(set: &KeySet) -> Progress {
    if set.skipped.is_empty() {
        return invalid(Reason::TokenKeyUnknown);
    }
    let detail = format!("jwks: no usable key for the token; skipped {}", set.skipped.join("; "));
    Progress::Done(Outcome::Invalid(Reason::TokenKeyUnknown, Some(Cow::Owned(detail))))
}

fn invalid(reason: Reason) -> Progress {
    Progress::Done(Outcome::invalid(reason))
}

fn unavailable(detail: impl Into<Cow<'static, str>>) -> Progress {
    Progress::Done(Outcome::Unavailable(detail.into()))
}

fn need(http: HttpRequest, step: JwtStep) -> Progress {
    Progress::Need(http, MethodState::Jwt(step))
}

impl TokenValidation for LocalJwt {
    fn start(&self, token: &str, now: UnixMs) -> Progress {
        match self.parse_header(token) {
            Ok(header) => self.with_keys(token, &header, now),
            Err(reason) => invalid(reason),
        }
    }

    fn resume(&self, token: &str, state: MethodState, result: HttpResult, now: UnixMs) -> Progress {
        match state {
            MethodState::Jwt(step) => self.resume_step(token, step, result, now),
            MethodState::Introspect | MethodState::IntrospectKeys(_) => unavailable("jwt: unexpected step"),
        }
    }
}

/// `Algorithm::from_str` is exact today; this guards the allow-list against any future
/// lenient parsing (e.g. case folding) turning `rs256` into an accepted name.
fn is_canonical(alg: Algorithm, name: &str) -> bool {
    let canonical = match alg {
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::EdDSA => "EdDSA",
    };
    canonical == name
}

#[cfg(test)]
mod tests {
    //! The clock-dependent rules, on the caller's clock: the tests move time by passing it.
    use std::sync::Mutex as StdMutex;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    use super::*;
    use crate::{Decision, HttpResponse, Request, TransportError, Validator};

    /// A fixed start: every token below is valid for ten minutes from it.
    fn t0() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn keys() -> Value {
        serde_json::from_str(include_str!("../tests/testdata/jwt-keys.json")).unwrap()
    }

    fn jwk(name: &str, kid: &str) -> Value {
        let mut k = keys()[name]["public_jwk"].clone();
        k["kid"] = json!(kid);
        k
    }

    fn token(key: &str, kid: &str, jti: &str) -> String {
        let now = t0().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let claims = json!({"iss": "https://as.example", "aud": "https://mcp.example/mcp", "exp": now + 600,
                            "iat": now, "jti": jti});
        let pem = keys()[key]["private_pem"].as_str().unwrap().to_owned();
        let header = Header { kid: Some(kid.into()), ..Header::new(Algorithm::RS256) };
        encode(&header, &claims, &EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap()).unwrap()
    }

    /// An authorization server whose JWKS can change; counts calls per purpose.
    struct As {
        jwks: StdMutex<Value>,
        calls: StdMutex<Vec<Purpose>>,
    }

    impl As {
        fn new(keys: Value) -> Self {
            As { jwks: StdMutex::new(json!({ "keys": keys })), calls: StdMutex::new(Vec::new()) }
        }
        fn count(&self, p: Purpose) -> usize {
            self.calls.lock().unwrap().iter().filter(|c| **c == p).count()
        }
    }

    impl crate::Transport for As {
        fn send(&self, r: &HttpRequest) -> Result<HttpResponse, TransportError> {
            self.calls.lock().unwrap().push(r.purpose);
            let body = match r.purpose {
                Purpose::Jwks => self.jwks.lock().unwrap().clone(),
                _ => json!({"issuer": "https://as.example", "jwks_uri": "https://as.example/jwks"}),
            };
            Ok(HttpResponse::new(200, "application/json", body.to_string()))
        }
    }

    fn validator(extra: Value) -> Validator {
        let mut c = json!({"resource": "https://mcp.example/mcp", "authorization_servers": ["https://as.example"],
                           "cache_ttl_negative": 0});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        Validator::from_json(&c.to_string()).unwrap()
    }

    /// The reason of the decision at `secs` seconds after [`t0`].
    fn reason(v: &Validator, t: &As, token: &str, secs: u64) -> &'static str {
        let auth = format!("Bearer {token}");
        let now = t0() + Duration::from_secs(secs);
        let d: Decision = v.authorize_at(&Request::new("GET", "/mcp").header("Authorization", &auth), t, || now);
        d.reason().as_str()
    }

    #[test]
    fn unknown_kid_refetch_is_limited_per_60_seconds() {
        let v = validator(json!({"jwks_endpoint": "https://as.example/jwks"}));
        let t = As::new(json!([jwk("rsa-1", "k1")]));
        assert_eq!(reason(&v, &t, &token("rsa-1", "k1", "a"), 0), "allowed");
        assert_eq!(t.count(Purpose::Jwks), 1);
        // Unknown kid: one refetch, still unknown → 401.
        assert_eq!(reason(&v, &t, &token("rsa-2", "k2", "b"), 0), "token_key_unknown");
        assert_eq!(t.count(Purpose::Jwks), 2);
        // The AS publishes k2 now, but the last refetch was under 60 s ago: no call, 401.
        *t.jwks.lock().unwrap() = json!({"keys": [jwk("rsa-1", "k1"), jwk("rsa-2", "k2")]});
        assert_eq!(reason(&v, &t, &token("rsa-2", "k2", "c"), 59), "token_key_unknown");
        assert_eq!(t.count(Purpose::Jwks), 2);
        // Past 60 s: one more refetch is allowed and finds the key.
        assert_eq!(reason(&v, &t, &token("rsa-2", "k2", "d"), 61), "allowed");
        assert_eq!(t.count(Purpose::Jwks), 3);
        assert_eq!(reason(&v, &t, &token("rsa-2", "k9", "e"), 61), "token_key_unknown");
        assert_eq!(t.count(Purpose::Jwks), 3, "the window restarted with that refetch");
    }

    #[test]
    fn key_and_metadata_caches_expire_per_their_ttls() {
        let v = validator(json!({"jwks_cache_ttl": 100, "metadata_cache_ttl": 50}));
        let t = As::new(json!([jwk("rsa-1", "k1")]));
        assert_eq!(reason(&v, &t, &token("rsa-1", "k1", "a"), 0), "allowed");
        assert_eq!((t.count(Purpose::Discovery), t.count(Purpose::Jwks)), (1, 1));
        assert_eq!(reason(&v, &t, &token("rsa-1", "k1", "b"), 40), "allowed");
        assert_eq!((t.count(Purpose::Discovery), t.count(Purpose::Jwks)), (1, 1), "both cached");
        assert_eq!(reason(&v, &t, &token("rsa-1", "k1", "c"), 60), "allowed");
        assert_eq!((t.count(Purpose::Discovery), t.count(Purpose::Jwks)), (2, 1), "metadata expired, keys not");
        assert_eq!(reason(&v, &t, &token("rsa-1", "k1", "d"), 110), "allowed");
        assert_eq!((t.count(Purpose::Discovery), t.count(Purpose::Jwks)), (3, 2), "both expired");
    }
}
