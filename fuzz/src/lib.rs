//! Shared pieces of the fuzz targets: the fixed configurations, the readable input formats
//! of the seed corpora, and the sans-I/O driving of a validator (begin → the one HTTP step
//! → resume) without any network.
//!
//! Input formats (so that the committed seeds are text one can read and edit):
//!
//! - a *request*: the first line is the method, the second the path, then `Name: value`
//!   header lines up to an empty line; whatever follows is the body (absent when there is
//!   no empty line). Values are raw bytes (anything but `\n`).
//! - *sections*: parts separated by a line `--` (`\n--\n`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mcp_oauth2::{Decision, HttpResponse, Request, Step, Validator};
use serde_json::{Map, Value};

/// The protected resource of every fixed configuration (the audience tokens must carry).
pub const RESOURCE: &str = "https://mcp.example.com/mcp";
/// The authorization server (and JWT issuer) of every fixed configuration.
pub const ISSUER: &str = "https://as.example.com";
/// Its introspection endpoint.
pub const INTROSPECTION_URL: &str = "https://as.example.com/introspect";
/// Its key set.
pub const JWKS_URL: &str = "https://as.example.com/jwks";

/// The fixed `now` of every target: decisions must not depend on the machine's clock.
pub const NOW_SECS: u64 = 1_800_000_000;

/// [`NOW_SECS`] as a `SystemTime`.
pub fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(NOW_SECS)
}

/// Introspection with client credentials: the plain configuration.
pub fn introspection_config() -> Value {
    serde_json::json!({
        "resource": RESOURCE,
        "authorization_servers": [ISSUER],
        "introspection_endpoint": INTROSPECTION_URL,
        "client_id": "gateway",
        "client_secret": "fuzz-gateway-secret",
        // Small caches: a fresh validator per input must be cheap to build.
        "cache_max_entries": 64,
    })
}

/// Introspection with every request-reading rule on: scopes, per-method scopes, origins,
/// trusted proxies, claim headers.
pub fn rich_introspection_config() -> Value {
    serde_json::json!({
        "resource": RESOURCE,
        "authorization_servers": [ISSUER],
        "introspection_endpoint": INTROSPECTION_URL,
        "client_id": "gateway",
        "client_secret": "fuzz-gateway-secret",
        "scopes_supported": ["mcp:read", "mcp:write"],
        "scopes_required": ["mcp:read"],
        "method_scopes": {"tools/call": ["mcp:write"], "tools/call:admin": ["mcp:admin"]},
        "max_request_body_size": 4096,
        "allowed_origins": ["https://app.example.com"],
        "trusted_proxies": ["10.0.0.0/8", "::1/128"],
        "claim_to_header": [{"claim": "sub", "header": "X-User-Id"}],
    })
}

/// Local JWT validation with a configured key set.
pub fn jwks_config() -> Value {
    serde_json::json!({
        "resource": RESOURCE,
        "authorization_servers": [ISSUER],
        "jwks_endpoint": JWKS_URL,
        "cache_max_entries": 64,
    })
}

/// Local JWT validation with the key set found by discovery.
pub fn discovery_config() -> Value {
    serde_json::json!({
        "resource": RESOURCE,
        "authorization_servers": [ISSUER],
        "access_token_type": "at+jwt",
        "cache_max_entries": 64,
    })
}

/// A validator for a fixed configuration (a bug here is a bug of the target, not a finding).
pub fn validator(config: &Value) -> Validator {
    Validator::from_json(&config.to_string()).expect("the fixed configuration is valid")
}

/// Splits `data` into at most `n` sections at `\n--\n`; the last takes the rest.
pub fn sections(data: &[u8], n: usize) -> Vec<&[u8]> {
    let mut out = Vec::with_capacity(n);
    let mut rest = data;
    while out.len() + 1 < n {
        match find(rest, b"\n--\n") {
            Some(i) => {
                out.push(&rest[..i]);
                rest = &rest[i + 4..];
            }
            None => break,
        }
    }
    out.push(rest);
    out
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A request in the readable format (see the module documentation), borrowing `data`.
/// Method, path and header names that are not UTF-8 are replaced by fixed text (the Rust
/// API takes `&str`); header values and the body stay raw bytes.
pub struct RawRequest<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub headers: Vec<(&'a str, &'a [u8])>,
    pub body: Option<&'a [u8]>,
}

impl<'a> RawRequest<'a> {
    pub fn parse(data: &'a [u8]) -> Self {
        let mut offset = 0;
        let mut next_line = || -> Option<&'a [u8]> {
            if offset > data.len() {
                return None;
            }
            let rest = &data[offset..];
            let end = rest.iter().position(|b| *b == b'\n').unwrap_or(rest.len());
            offset += end + 1;
            Some(&rest[..end])
        };
        let method = next_line().and_then(|l| std::str::from_utf8(l).ok()).unwrap_or("GET");
        let path = next_line().and_then(|l| std::str::from_utf8(l).ok()).unwrap_or("/mcp");
        let mut headers = Vec::new();
        let mut body = None;
        while let Some(line) = next_line() {
            if line.is_empty() {
                break;
            }
            let (name, value) = match line.iter().position(|b| *b == b':') {
                Some(i) => (&line[..i], &line[i + 1..]),
                None => (line, &line[line.len()..]),
            };
            let value = value.strip_prefix(b" ").unwrap_or(value);
            let name = std::str::from_utf8(name).unwrap_or("X-Not-Utf8");
            headers.push((name, value));
        }
        if offset <= data.len() {
            body = Some(&data[offset..]);
        }
        RawRequest { method, path, headers, body }
    }

    pub fn request(&self) -> Request<'a> {
        Request {
            method: self.method,
            path: self.path,
            headers: self.headers.clone(),
            peer_addr: None,
            body: self.body,
        }
    }
}

/// An HTTP response in a readable format: the first line is the status (default 200), the
/// second the `Content-Type` (default `application/json`), the rest the body.
pub fn raw_response(data: &[u8]) -> HttpResponse {
    let mut parts = data.splitn(3, |b| *b == b'\n');
    let status = parts.next().and_then(|l| std::str::from_utf8(l).ok()).and_then(|s| s.trim().parse().ok());
    let content_type = parts.next().and_then(|l| std::str::from_utf8(l).ok());
    match (status, content_type, parts.next()) {
        (Some(status), Some(ct), Some(body)) => HttpResponse::new(status, ct, body),
        // Anything else: the whole input is the body of a 200 JSON answer.
        _ => HttpResponse::new(200, "application/json", data),
    }
}

/// Begins `req` on `validator`, then answers every HTTP step with `answer` (called with the
/// step's URL), at most `max_steps` times; the decision, or `None` if it did not settle.
pub fn drive(
    validator: &Validator,
    req: &Request<'_>,
    max_steps: usize,
    mut answer: impl FnMut(&str) -> HttpResponse,
) -> Option<Decision> {
    let mut step = validator.begin(req, now());
    for _ in 0..=max_steps {
        match step {
            Step::Done(d) => return Some(d),
            Step::Need(http, pending) => step = pending.resume(Ok(answer(&http.url)), now()),
            Step::Wait(_) => panic!("a single-threaded run never waits for another request"),
        }
    }
    None
}

/// True when `aud` (a string or an array of strings) names exactly `resource`.
pub fn audience_names(aud: Option<&Value>, resource: &str) -> bool {
    match aud {
        Some(Value::String(a)) => a == resource,
        Some(Value::Array(items)) => items.iter().any(|a| a.as_str() == Some(resource)),
        _ => false,
    }
}

/// The time rules of the contract (behaviour.md §4), leeway 0, as an independent reading:
/// `exp`, when present, is a number after `now`; `nbf`, when present, a number not after it.
pub fn times_hold(claims: &Map<String, Value>, exp_required: bool) -> bool {
    let now = NOW_SECS as f64;
    let exp_ok = match claims.get("exp") {
        None => !exp_required,
        Some(v) => v.as_f64().is_some_and(|e| e > now),
    };
    let nbf_ok = match claims.get("nbf") {
        None => true,
        Some(v) => v.as_f64().is_some_and(|n| n <= now),
    };
    exp_ok && nbf_ok
}

/// Not an ID, refresh or logout token (behaviour.md §4: refused on both paths).
pub fn is_access_token(claims: &Map<String, Value>) -> bool {
    let named = |claim: &str, kinds: &[&str]| {
        claims.get(claim).and_then(Value::as_str).is_some_and(|v| kinds.iter().any(|k| k.eq_ignore_ascii_case(v)))
    };
    let logout = claims
        .get("events")
        .and_then(Value::as_object)
        .is_some_and(|e| e.contains_key("http://schemas.openid.net/event/backchannel-logout"));
    !claims.contains_key("nonce")
        && !logout
        && !named("typ", &["ID", "Refresh", "Offline", "Logout"])
        && !named("token_type", &["refresh_token", "Refresh", "id_token"])
}

/// A header value a host may send upstream: no CR, LF or NUL (the header-injection bytes).
pub fn header_value_is_clean(v: &str) -> bool {
    !v.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0))
}

/// Where the secrets of a configuration are (behaviour.md §1: never in `Debug`, logs or
/// error messages).
const SECRET_PATHS: [&[&str]; 6] = [
    &["client_secret"],
    &["client_jwk"],
    &["tls_client_auth_key"],
    &["token_exchange", "client_secret"],
    &["token_exchange", "request", "actor_token"],
    &["cluster_cache_redis", "password"],
];

fn at_path<'v>(config: &'v Value, path: &[&str]) -> Option<&'v Value> {
    path.iter().try_fold(config, |v, p| v.get(p))
}

/// The secrets of a configuration, as far as it has them as strings of 8 bytes or more.
pub fn secret_values(config: &Value) -> Vec<String> {
    SECRET_PATHS
        .iter()
        .filter_map(|path| at_path(config, path)?.as_str().filter(|s| s.len() >= 8).map(str::to_owned))
        .collect()
}

/// `config` with every secret replaced by another value.
fn with_probe_secrets(config: &Value) -> Value {
    fn set(v: &mut Value, path: &[&str]) {
        match path {
            [last] => {
                if let Some(slot) = v.get_mut(*last).filter(|s| s.is_string()) {
                    *slot = Value::String("probe-value-0123456789".to_owned());
                }
            }
            [first, rest @ ..] => {
                if let Some(next) = v.get_mut(*first) {
                    set(next, rest);
                }
            }
            [] => {}
        }
    }
    let mut probe = config.clone();
    for path in SECRET_PATHS {
        set(&mut probe, path);
    }
    probe
}

/// Checks that `text` (an error message, a `Debug` rendering) shows none of the secrets of
/// `config`. A secret found in `text` counts only if it is there *because of* the secret:
/// `rerun` produces the same text for `config` with other secret values, and that text
/// must not hold it too (a fuzzed secret may well equal a piece of an error message).
pub fn assert_no_secret(config: &Value, text: &str, what: &str, rerun: impl Fn(&Value) -> Option<String>) {
    let found: Vec<String> = secret_values(config).into_iter().filter(|s| text.contains(s.as_str())).collect();
    if found.is_empty() {
        return;
    }
    let again = rerun(&with_probe_secrets(config)).unwrap_or_default();
    for s in found {
        assert!(again.contains(&s), "{what} shows a secret value");
    }
}
