//! Regression tests for the defects a security review proved (issue 13). Each test fails
//! on the code before its fix.

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use mcp_oauth2::{Config, Decision, HttpRequest, HttpResponse, Purpose, Request, Step, TransportError, Validator};
use serde_json::{json, Value};

const RESOURCE: &str = "https://mcp.example/mcp";

fn keys() -> Value {
    serde_json::from_str(include_str!("testdata/jwt-keys.json")).unwrap()
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

fn jwk(name: &str, kid: &str) -> Value {
    let mut k = keys()[name]["public_jwk"].clone();
    k["kid"] = json!(kid);
    k
}

fn sign(key: &str, kid: &str, claims: &Value) -> String {
    let pem = keys()[key]["private_pem"].as_str().unwrap().to_owned();
    let header = Header { kid: Some(kid.into()), ..Header::new(Algorithm::RS256) };
    encode(&header, claims, &EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap()).unwrap()
}

fn claims(iss: &str) -> Value {
    json!({"iss": iss, "aud": RESOURCE, "sub": "alice", "iat": now(), "exp": now() + 300})
}

fn reason(v: &Validator, t: &dyn Fn(&HttpRequest) -> Result<HttpResponse, TransportError>, token: &str) -> String {
    let auth = format!("Bearer {token}");
    let d: Decision = v.authorize(&Request::new("GET", "/mcp").header("Authorization", &auth), &t);
    d.reason().as_str().to_owned()
}

fn json_ok(body: Value) -> Result<HttpResponse, TransportError> {
    Ok(HttpResponse::new(200, "application/json", body.to_string()))
}

fn config_error(config: Value) -> String {
    Config::from_value(config).unwrap_err().to_string()
}

/// Issue 13 item 3: with two servers and an alias (Entra v1 `sts.windows.net` beside v2
/// metadata), a token naming the alias is verified only with the keys of the server the
/// configuration binds it to, whatever metadata happens to be cached first.
#[test]
fn issuer_aliases_are_bound_to_their_servers_keys() {
    let (a, b, alias) = ("https://a.example", "https://b.example", "https://sts.a.example/tenant/");
    let config = json!({"resource": RESOURCE, "authorization_servers": [a, b], "issuer_aliases": {alias: a}});
    let v = Validator::from_json(&config.to_string()).unwrap();
    let calls = Mutex::new(Vec::new());
    let transport = |req: &HttpRequest| -> Result<HttpResponse, TransportError> {
        calls.lock().unwrap().push(req.url.clone());
        match req.url.as_str() {
            "https://a.example/.well-known/oauth-authorization-server" => {
                json_ok(json!({"issuer": a, "jwks_uri": "https://a.example/jwks"}))
            }
            "https://b.example/.well-known/oauth-authorization-server" => {
                json_ok(json!({"issuer": b, "jwks_uri": "https://b.example/jwks"}))
            }
            "https://a.example/jwks" => json_ok(json!({"keys": [jwk("rsa-1", "k1")]})),
            "https://b.example/jwks" => json_ok(json!({"keys": [jwk("rsa-2", "k1")]})),
            _ => Ok(HttpResponse::new(404, "text/plain", "")),
        }
    };
    // B's metadata and keys are cached first (the order that broke it).
    assert_eq!(reason(&v, &transport, &sign("rsa-2", "k1", &claims(b))), "allowed");
    // B cannot mint tokens for A's alias...
    assert_eq!(reason(&v, &transport, &sign("rsa-2", "k1", &claims(alias))), "token_signature_invalid");
    // ...and A's genuine alias tokens verify with A's keys.
    assert_eq!(reason(&v, &transport, &sign("rsa-1", "k1", &claims(alias))), "allowed");
    // An issuer bound to no server is refused without any call.
    let before = calls.lock().unwrap().len();
    assert_eq!(reason(&v, &transport, &sign("rsa-1", "k1", &claims("https://other.example"))), "issuer_mismatch");
    assert_eq!(calls.lock().unwrap().len(), before);
}

/// Issue 13 items 3 and 7: ambiguous issuer configurations are refused at construction.
#[test]
fn ambiguous_issuer_configurations_are_refused() {
    let two = json!(["https://a.example", "https://b.example"]);
    let e = config_error(json!({"resource": RESOURCE, "authorization_servers": two,
                                "issuers": ["https://a.example", "https://sts.example/t/"]}));
    assert!(e.starts_with("issuers[1]: is not one of authorization_servers"), "{e}");
    let e = config_error(json!({"resource": RESOURCE, "authorization_servers": two,
                                "metadata_discovery_endpoint": "https://a.example/meta"}));
    assert!(e.starts_with("metadata_discovery_endpoint:"), "{e}");
    let e = config_error(json!({"resource": RESOURCE, "authorization_servers": two,
                                "issuer_aliases": {"https://sts.example/t/": "https://c.example"}}));
    assert!(e.starts_with("issuer_aliases.https://sts.example/t/: must be one of authorization_servers"), "{e}");
    let e = config_error(json!({"resource": RESOURCE, "authorization_servers": two,
                                "issuer_aliases": {"https://a.example": "https://b.example"}}));
    assert!(e.contains("cannot be bound to another one"), "{e}");
    // One server, or one key set: every issuer is bound to it.
    for extra in [
        json!({"authorization_servers": ["https://a.example"], "issuers": ["https://sts.example/t/"]}),
        json!({"authorization_servers": two, "jwks_endpoint": "https://keys.example/jwks",
               "issuers": ["https://sts.example/t/"]}),
        json!({"authorization_servers": two, "issuers": ["https://sts.example/t/"],
               "issuer_aliases": {"https://sts.example/t/": "https://b.example"}}),
    ] {
        let mut c = json!({"resource": RESOURCE});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        assert!(Config::from_value(c.clone()).is_ok(), "{c}");
    }
}

/// Issue 13 item 4: a verified JWT that is not an access token is refused as introspection
/// refuses it, even with a relaxed audience.
#[test]
fn id_refresh_and_logout_tokens_are_not_access_tokens_in_jwt_mode() {
    let iss = "https://as.example";
    let config = json!({"resource": RESOURCE, "authorization_servers": [iss], "jwks_endpoint": "https://as.example/jwks",
                        "insecure_relaxed_audience_validation": true});
    let v = Validator::from_json(&config.to_string()).unwrap();
    let transport = |_: &HttpRequest| json_ok(json!({"keys": [jwk("rsa-1", "k1")]}));
    let base = claims(iss);
    let with = |extra: Value| {
        let mut c = base.clone();
        for (k, x) in extra.as_object().unwrap() {
            c[k] = x.clone();
        }
        sign("rsa-1", "k1", &c)
    };
    assert_eq!(reason(&v, &transport, &with(json!({}))), "allowed");
    for extra in [
        json!({"typ": "ID"}),
        json!({"typ": "Refresh"}),
        json!({"typ": "Offline"}),
        json!({"token_type": "id_token"}),
        json!({"nonce": "n"}),
        json!({"events": {"http://schemas.openid.net/event/backchannel-logout": {}}}),
    ] {
        assert_eq!(reason(&v, &transport, &with(extra.clone())), "token_type_invalid", "{extra}");
    }
    // Introspection applies the same rule to a `nonce`.
    let config = json!({"resource": RESOURCE, "authorization_servers": [iss],
                        "introspection_endpoint": "https://as.example/introspect"});
    let v = Validator::from_json(&config.to_string()).unwrap();
    let id_token = |_: &HttpRequest| json_ok(json!({"active": true, "aud": RESOURCE, "nonce": "n"}));
    assert_eq!(reason(&v, &id_token, "opaque"), "token_type_invalid");
}

/// Issue 13 item 6: metadata fetched over https naming a plain-http `jwks_uri` is not used
/// (no key is ever fetched over http), and construction warns about plain-http endpoints
/// and disabled certificate checks.
#[test]
fn https_metadata_never_leads_to_http_keys_and_plain_http_is_warned() {
    let iss = "https://as.example";
    let config = json!({"resource": RESOURCE, "authorization_servers": [iss]});
    let v = Validator::from_json(&config.to_string()).unwrap();
    let calls = Mutex::new(Vec::new());
    let transport = |req: &HttpRequest| {
        calls.lock().unwrap().push(req.purpose);
        json_ok(json!({"issuer": iss, "jwks_uri": "http://as.example/jwks"}))
    };
    let d = reason(&v, &transport, &sign("rsa-1", "k1", &claims(iss)));
    assert_eq!(d, "authorization_server_unavailable");
    assert!(!calls.lock().unwrap().contains(&Purpose::Jwks), "no key set fetched over http");
    assert!(v.warnings().is_empty(), "{:?}", v.warnings());

    let config = json!({"resource": RESOURCE, "authorization_servers": ["http://as.example"],
                        "introspection_endpoint": "http://as.example/introspect", "ssl_verify": false,
                        "token_exchange": null});
    let v = Validator::from_json(&config.to_string()).unwrap();
    let warnings = v.warnings().join("\n");
    assert!(warnings.contains("introspection_endpoint: plain http"), "{warnings}");
    assert!(warnings.contains("ssl_verify: false"), "{warnings}");
    let local = json!({"resource": RESOURCE, "authorization_servers": ["http://127.0.0.1:9000"],
                       "introspection_endpoint": "http://127.0.0.1:9000/introspect"});
    assert!(Validator::from_json(&local.to_string()).unwrap().warnings().is_empty(), "loopback is not warned");
}

/// Issue 13 item 9: `args` and `headers` values (API keys) never print; a serialized
/// secret is not even a digest of the value.
#[test]
fn extra_request_values_and_secrets_never_print() {
    let config = Config::from_value(json!({"resource": RESOURCE, "authorization_servers": ["https://as.example"],
        "introspection_endpoint": "https://as.example/introspect",
        "args": {"api_key": "arg-secret-1"}, "headers": {"X-Api-Key": "header-secret-2"},
        "client_id": "c", "client_secret": "client-secret-3"}))
    .unwrap();
    let shown = format!("{config:?} {}", serde_json::to_string(&config).unwrap());
    for secret in ["arg-secret-1", "header-secret-2", "client-secret-3"] {
        assert!(!shown.contains(secret), "{secret}: {shown}");
    }
    assert!(!shown.contains("sha256"), "no digest of a secret is published: {shown}");
}

/// Issue 13 item 9: a token that is not valid *yet* is not negative-cached past its `nbf`.
#[test]
fn not_yet_valid_tokens_are_asked_again_once_valid() {
    let config = json!({"resource": RESOURCE, "authorization_servers": ["https://as.example"],
                        "introspection_endpoint": "https://as.example/introspect", "cache_ttl_negative": 60});
    let v = Validator::from_json(&config.to_string()).unwrap();
    let t0 = UNIX_EPOCH + Duration::from_secs(2_000_000_000);
    let nbf = 2_000_000_002;
    let answer = || json_ok(json!({"active": true, "aud": RESOURCE, "nbf": nbf}));
    let req = Request::new("GET", "/mcp").header("Authorization", "Bearer early");
    let Step::Need(_, pending) = v.begin(&req, t0) else { panic!() };
    let Step::Done(d) = pending.resume(answer(), t0) else { panic!() };
    assert_eq!(d.reason().as_str(), "token_not_yet_valid");
    let later = t0 + Duration::from_secs(3);
    let Step::Need(_, pending) = v.begin(&req, later) else { panic!("asked again, not a cached refusal") };
    let Step::Done(d) = pending.resume(answer(), later) else { panic!() };
    assert!(d.is_forward());
}

/// Issue 13 item 9: concurrent tokens with a newly rotated `kid` on the sans-I/O path share
/// one key-set refetch: the second waits for the first.
#[test]
fn concurrent_unknown_kids_share_one_refetch_without_blocking() {
    let config = json!({"resource": RESOURCE, "authorization_servers": ["https://as.example"],
                        "jwks_endpoint": "https://as.example/jwks"});
    let v = Validator::from_json(&config.to_string()).unwrap();
    let t0 = SystemTime::now();
    let old = json_ok(json!({"keys": [jwk("rsa-1", "k1")]}));
    let rotated = || json_ok(json!({"keys": [jwk("rsa-1", "k1"), jwk("rsa-2", "k2")]}));
    // Warm the key set with k1.
    let auth1 = format!("Bearer {}", sign("rsa-1", "k1", &claims("https://as.example")));
    let Step::Need(_, p) = v.begin(&Request::new("GET", "/mcp").header("Authorization", &auth1), t0) else { panic!() };
    assert!(matches!(p.resume(old, t0), Step::Done(d) if d.is_forward()));
    // Two tokens signed with the new key k2, concurrently.
    let a = format!(
        "Bearer {}",
        sign(
            "rsa-2",
            "k2",
            &json!({"iss": "https://as.example", "aud": RESOURCE,
                     "exp": now() + 300, "jti": "a"})
        )
    );
    let b = format!(
        "Bearer {}",
        sign(
            "rsa-2",
            "k2",
            &json!({"iss": "https://as.example", "aud": RESOURCE,
                     "exp": now() + 300, "jti": "b"})
        )
    );
    let Step::Need(http, refetch) = v.begin(&Request::new("GET", "/mcp").header("Authorization", &a), t0) else {
        panic!("the first unknown kid refetches")
    };
    assert_eq!(http.purpose, Purpose::Jwks);
    let Step::Wait(ticket) = v.begin(&Request::new("GET", "/mcp").header("Authorization", &b), t0) else {
        panic!("the second waits for that refetch instead of fetching again")
    };
    assert!(matches!(refetch.resume(rotated(), t0), Step::Done(d) if d.is_forward()));
    assert!(ticket.is_ready());
    assert!(matches!(ticket.resume(t0), Step::Done(d) if d.is_forward()));
}
