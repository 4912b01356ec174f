//! Token exchange (RFC 8693, issue 11) through the Rust API, against an in-memory
//! authorization server that records every call: the order (validate, then exchange), the
//! exact parameters, caching and its limits, single flight, failures (always 503), and the
//! identity handed to what runs next. The real-AS, nginx, C and demo-proxy runs live in
//! their own suites.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use mcp_oauth2::{Decision, HttpRequest, HttpResponse, Purpose, Request, Step, TransportError, Validator};
use serde_json::{json, Value};
use url::form_urlencoded;

const RESOURCE: &str = "https://mcp.example/mcp";
const AT: &str = "urn:ietf:params:oauth:token-type:access_token";

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

fn config(exchange: Value) -> Value {
    let mut te = json!({"enabled": true, "token_endpoint": "https://as.example/token",
                        "client_id": "gw-ex", "client_secret": "gw-ex-secret"});
    for (k, v) in exchange.as_object().unwrap() {
        te[k] = v.clone();
    }
    json!({"resource": RESOURCE, "authorization_servers": ["https://as.example"],
           "introspection_endpoint": "https://as.example/introspect", "client_id": "gw", "client_secret": "gw-secret",
           "passthrough_credentials": true,
           "claim_to_header": [{"claim": "sub", "header": "X-User"}],
           "token_exchange": te})
}

/// How the in-memory token endpoint answers exchange number `n` (from 1).
type Answer = Box<dyn Fn(usize) -> Result<HttpResponse, TransportError> + Send>;

/// An authorization server: introspects every token as active (or inactive for `bad`),
/// exchanges for `exchanged-<n>` (opaque) or a JWT, and records the exchange forms.
struct As {
    introspections: AtomicUsize,
    exchanges: Mutex<Vec<Vec<(String, String)>>>,
    exchange_headers: Mutex<Vec<Vec<(String, String)>>>,
    answer: Mutex<Answer>,
    delay: Duration,
}

impl As {
    fn new() -> Self {
        As {
            introspections: AtomicUsize::new(0),
            exchanges: Mutex::new(Vec::new()),
            exchange_headers: Mutex::new(Vec::new()),
            answer: Mutex::new(Box::new(|n| {
                ok(json!({"access_token": format!("exchanged-{n}"),
                "issued_token_type": AT, "token_type": "Bearer", "expires_in": 600}))
            })),
            delay: Duration::ZERO,
        }
    }

    fn exchanges(&self) -> usize {
        self.exchanges.lock().unwrap().len()
    }

    fn send(&self, r: &HttpRequest) -> Result<HttpResponse, TransportError> {
        std::thread::sleep(self.delay);
        match r.purpose {
            Purpose::Introspection => {
                self.introspections.fetch_add(1, Ordering::SeqCst);
                let form: HashMap<String, String> = form_urlencoded::parse(&r.body).into_owned().collect();
                let active = form["token"] != "bad";
                ok(json!({"active": active, "aud": RESOURCE, "sub": "client-user", "exp": now() + 3600,
                          "scope": "mcp:read"}))
            }
            Purpose::TokenExchange => {
                let form: Vec<(String, String)> = form_urlencoded::parse(&r.body).into_owned().collect();
                let n = {
                    let mut ex = self.exchanges.lock().unwrap();
                    ex.push(form);
                    ex.len()
                };
                self.exchange_headers.lock().unwrap().push(r.headers.clone());
                (self.answer.lock().unwrap())(n)
            }
            _ => panic!("unexpected call {:?}", r.purpose),
        }
    }
}

fn ok(body: Value) -> Result<HttpResponse, TransportError> {
    Ok(HttpResponse::new(200, "application/json", body.to_string()))
}

fn decide(v: &Validator, a: &As, token: &str, extra: &[(&str, &str)]) -> Decision {
    let auth = format!("Bearer {token}");
    let mut req = Request::new("POST", "/mcp").header("Authorization", &auth);
    for (n, val) in extra {
        req = req.header(n, val);
    }
    v.authorize(&req, &|r: &HttpRequest| a.send(r))
}

fn upstream(d: &Decision) -> Vec<(String, String)> {
    let f = d.as_forward().unwrap_or_else(|| panic!("denied: {:?}", d.as_response()));
    f.set_headers().map(|(n, v)| (n.to_owned(), v.to_owned())).collect()
}

#[test]
fn the_upstream_gets_the_exchanged_token_never_the_clients() {
    let v = Validator::from_json(&config(json!({})).to_string()).unwrap();
    let a = As::new();
    let d = decide(&v, &a, "client-token", &[]);
    let f = d.as_forward().unwrap();
    assert!(f.remove_headers().any(|h| h == "Authorization"), "the client's Authorization goes");
    assert_eq!(
        upstream(&d),
        [("Authorization".into(), "Bearer exchanged-1".into()), ("X-User".into(), "client-user".into())]
    );
    assert_eq!(f.exchanged_token(), Some("exchanged-1"));
    // Exactly the RFC 8693 parameters; client_secret_basic by default with a secret.
    let form = a.exchanges.lock().unwrap()[0].clone();
    assert_eq!(
        form,
        [
            ("grant_type".to_owned(), "urn:ietf:params:oauth:grant-type:token-exchange".to_owned()),
            ("subject_token".to_owned(), "client-token".to_owned()),
            ("subject_token_type".to_owned(), AT.to_owned()),
            ("requested_token_type".to_owned(), AT.to_owned()),
        ]
    );
    let headers = a.exchange_headers.lock().unwrap()[0].clone();
    let basic = base64::engine::general_purpose::STANDARD.encode("gw-ex:gw-ex-secret");
    assert!(headers.contains(&("Authorization".to_owned(), format!("Basic {basic}"))));
}

#[test]
fn a_rejected_token_is_never_exchanged() {
    let v = Validator::from_json(&config(json!({})).to_string()).unwrap();
    let a = As::new();
    let d = decide(&v, &a, "bad", &[]);
    assert_eq!(d.as_response().unwrap().status(), 401);
    assert_eq!(a.exchanges(), 0);
}

#[test]
fn every_parameter_inherit_actor_from_header_and_config() {
    let request = json!({"audience": ["up-1", "up-2"], "scopes": ["mcp:read", "mcp:tools"],
                         "resource": "https://upstream.example/mcp", "requested_token_type": "urn:x:custom",
                         "actor_token_source": "header", "actor_token_header": "X-Actor-Token",
                         "actor_token_type": "urn:ietf:params:oauth:token-type:jwt"});
    let v = Validator::from_json(&config(json!({"client_auth": "inherit", "request": request})).to_string()).unwrap();
    let a = As::new();
    *a.answer.lock().unwrap() =
        Box::new(|n| ok(json!({"access_token": format!("ex-{n}"), "issued_token_type": "urn:x:custom"})));
    // The actor header is required: 400 invalid_request with the challenge.
    let d = decide(&v, &a, "client-token", &[]);
    let r = d.as_response().unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.header("WWW-Authenticate").unwrap().starts_with("Bearer error=\"invalid_request\""));
    assert_eq!(a.introspections.load(Ordering::SeqCst), 0, "refused before any call");
    let d = decide(&v, &a, "client-token", &[("X-Actor-Token", "actor-abc")]);
    let f = d.as_forward().unwrap();
    assert!(f.remove_headers().any(|h| h == "X-Actor-Token"), "the actor header is for the AS only");
    assert!(f.must_remove("x_actor_token"));
    let form = a.exchanges.lock().unwrap()[0].clone();
    let get = |k: &str| form.iter().filter(|(n, _)| n == k).map(|(_, v)| v.as_str()).collect::<Vec<_>>();
    assert_eq!(get("audience"), ["up-1", "up-2"]);
    assert_eq!(get("scope"), ["mcp:read mcp:tools"]);
    assert_eq!(get("resource"), ["https://upstream.example/mcp"]);
    assert_eq!(get("requested_token_type"), ["urn:x:custom"]);
    assert_eq!(get("actor_token"), ["actor-abc"]);
    assert_eq!(get("actor_token_type"), ["urn:ietf:params:oauth:token-type:jwt"]);
    // inherit: the top-level client (basic), not token_exchange's.
    let basic = base64::engine::general_purpose::STANDARD.encode("gw:gw-secret");
    assert!(a.exchange_headers.lock().unwrap()[0].contains(&("Authorization".to_owned(), format!("Basic {basic}"))));
    // A different actor is a different exchange.
    let d2 = decide(&v, &a, "client-token", &[("X-Actor-Token", "actor-xyz")]);
    assert_eq!(d2.as_forward().unwrap().exchanged_token(), Some("ex-2"));
    assert_eq!(
        decide(&v, &a, "client-token", &[("X-Actor-Token", "actor-abc")]).as_forward().unwrap().exchanged_token(),
        Some("ex-1")
    );

    let config_actor = json!({"client_auth": "client_secret_post",
        "request": {"actor_token_source": "config", "actor_token": "configured-actor"}});
    let v = Validator::from_json(&config(config_actor).to_string()).unwrap();
    let a = As::new();
    assert!(decide(&v, &a, "t", &[]).is_forward());
    let form = a.exchanges.lock().unwrap()[0].clone();
    assert!(form.contains(&("actor_token".into(), "configured-actor".into())));
    assert!(
        form.contains(&("client_id".into(), "gw-ex".into()))
            && form.contains(&("client_secret".into(), "gw-ex-secret".into()))
    );
    assert!(!a.exchange_headers.lock().unwrap()[0].iter().any(|(n, _)| n == "Authorization"), "post: no Basic");
}

#[test]
fn exchanged_tokens_are_cached_unless_disabled_and_expire() {
    let v = Validator::from_json(&config(json!({})).to_string()).unwrap();
    let a = As::new();
    for _ in 0..5 {
        assert_eq!(decide(&v, &a, "client-token", &[]).as_forward().unwrap().exchanged_token(), Some("exchanged-1"));
    }
    assert_eq!(a.exchanges(), 1, "one exchange for N requests");

    let v = Validator::from_json(&config(json!({"cache": {"enabled": false}})).to_string()).unwrap();
    let a = As::new();
    for i in 1..=3 {
        let expected = format!("exchanged-{i}");
        assert_eq!(
            decide(&v, &a, "client-token", &[]).as_forward().unwrap().exchanged_token(),
            Some(expected.as_str())
        );
    }
    assert_eq!(a.exchanges(), 3, "cache.enabled false: one per request");

    // The cached exchange ends at the earliest of expires_in, the client token's exp and
    // cache_ttl_max; the caller's clock shows it.
    let v = Validator::from_json(&config(json!({})).to_string()).unwrap();
    let a = As::new();
    *a.answer.lock().unwrap() =
        Box::new(|n| ok(json!({"access_token": format!("short-{n}"), "issued_token_type": AT, "expires_in": 30})));
    let t0 = SystemTime::now();
    let req = Request::new("GET", "/mcp").header("Authorization", "Bearer c");
    let send = |r: &HttpRequest| a.send(r);
    assert!(v.authorize_at(&req, &send, || t0).is_forward());
    assert!(v.authorize_at(&req, &send, || t0 + Duration::from_secs(29)).is_forward());
    assert_eq!(a.exchanges(), 1);
    let d = v.authorize_at(&req, &send, || t0 + Duration::from_secs(31));
    assert_eq!(d.as_forward().unwrap().exchanged_token(), Some("short-2"), "exchanged again after expires_in");
}

#[test]
fn fifty_concurrent_first_requests_make_one_exchange() {
    let v = Validator::from_json(&config(json!({})).to_string()).unwrap();
    let a = Arc::new(As { delay: Duration::from_millis(50), ..As::new() });
    let barrier = Arc::new(Barrier::new(50));
    let threads: Vec<_> = (0..50)
        .map(|_| {
            let (v, a, barrier) = (v.clone(), Arc::clone(&a), Arc::clone(&barrier));
            std::thread::spawn(move || {
                barrier.wait();
                decide(&v, &a, "client-token", &[]).as_forward().map(|f| f.exchanged_token().map(str::to_owned))
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), Some(Some("exchanged-1".to_owned())));
    }
    assert_eq!(a.exchanges(), 1);
    assert_eq!(a.introspections.load(Ordering::SeqCst), 1);
}

#[test]
fn exchange_failures_are_503_never_401_and_never_forward_the_clients_token() {
    let at = AT.to_owned();
    let failures: Vec<Answer> = vec![
        Box::new(|_| Err(TransportError::new(mcp_oauth2::TransportErrorKind::Connect, "refused"))),
        Box::new(|_| Ok(HttpResponse::new(400, "application/json", r#"{"error":"invalid_grant"}"#))),
        Box::new(|_| Ok(HttpResponse::new(500, "text/html", "<html>"))),
        Box::new(|_| Ok(HttpResponse::new(200, "application/json", "not json"))),
        Box::new(|_| ok(json!({"issued_token_type": AT}))),
        Box::new(move |_| ok(json!({"access_token": "x", "issued_token_type": format!("{at}-other")}))),
    ];
    for (i, failure) in failures.into_iter().enumerate() {
        let v = Validator::from_json(&config(json!({})).to_string()).unwrap();
        let a = As::new();
        *a.answer.lock().unwrap() = failure;
        let d = decide(&v, &a, "client-token", &[]);
        let r = d.as_response().unwrap_or_else(|| panic!("case {i}: forwarded"));
        assert_eq!((r.status(), r.header("WWW-Authenticate")), (503, None), "case {i}");
        assert!(r.detail().unwrap().starts_with("token exchange:"), "case {i}: {:?}", r.detail());
        // Failures are not cached: the next request tries again.
        decide(&v, &a, "client-token", &[]);
        assert_eq!(a.exchanges(), 2, "case {i}");
    }
}

#[test]
fn claims_and_identity_come_from_a_jwt_exchanged_token() {
    let v = Validator::from_json(&config(json!({})).to_string()).unwrap();
    let a = As::new();
    let payload = json!({"sub": "upstream-identity", "aud": "upstream", "scope": "up:all", "client_id": "gw-ex"});
    let jwt = format!(
        "eyJhbGciOiJSUzI1NiJ9.{}.c2ln",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(payload.to_string())
    );
    *a.answer.lock().unwrap() = Box::new(move |_| ok(json!({"access_token": jwt, "issued_token_type": AT})));
    let d = decide(&v, &a, "client-token", &[]);
    let f = d.as_forward().unwrap();
    assert_eq!(f.identity().subject(), Some("upstream-identity"));
    assert!(upstream(&d).contains(&("X-User".into(), "upstream-identity".into())));
    let claims: Value = serde_json::from_str(f.claims_json()).unwrap();
    assert_eq!(claims["aud"], "upstream");

    // Opaque exchanged token: identity and claims stay the validated token's.
    let v = Validator::from_json(&config(json!({})).to_string()).unwrap();
    let a = As::new();
    let d = decide(&v, &a, "client-token", &[]);
    let f = d.as_forward().unwrap();
    assert_eq!(f.identity().subject(), Some("client-user"));
    let claims: Value = serde_json::from_str(f.claims_json()).unwrap();
    assert_eq!(claims["sub"], "client-user");
    assert_eq!(claims["scope"], "mcp:read");
}

#[test]
fn the_exchange_is_one_more_sans_io_step_and_waiters_follow_it() {
    let v = Validator::from_json(&config(json!({})).to_string()).unwrap();
    let a = As::new();
    let t0 = SystemTime::now();
    let req = Request::new("GET", "/mcp").header("Authorization", "Bearer c");
    let Step::Need(http, p) = v.begin(&req, t0) else { panic!() };
    assert_eq!(http.purpose, Purpose::Introspection);
    let Step::Need(http, p) = p.resume(a.send(&http), t0) else { panic!("then the exchange") };
    assert_eq!(http.purpose, Purpose::TokenExchange);
    assert!(p.is_token_response());
    let exchange_key = p.cache_key();
    let Step::Wait(ticket) = v.begin(&req, t0) else { panic!("a concurrent request waits for the exchange") };
    assert_eq!(ticket.cache_key(), exchange_key);
    let Step::Done(d) = p.resume(a.send(&http), t0) else { panic!() };
    assert_eq!(d.as_forward().unwrap().exchanged_token(), Some("exchanged-1"));
    let Step::Done(d) = ticket.resume(t0) else { panic!() };
    assert_eq!(d.as_forward().unwrap().exchanged_token(), Some("exchanged-1"));
    // A host's shared cache keeps the exchange answer for what is left of the entry.
    assert_eq!(v.cache_ttl(&exchange_key, t0), Some(Duration::from_secs(600)));
    assert!(v.cache_ttl(&exchange_key, t0 + Duration::from_secs(601)).is_none());
}
