//! Local JWT validation (issue 3, behaviour.md §4 "Local JWT"): algorithms, keys, claims,
//! discovery and failure handling. Tokens are signed here with the pre-generated keys in
//! `tests/testdata/jwt-keys.json` (`node scripts/gen-jwt-test-keys.mjs`). Keys and metadata
//! come from an in-memory authorization server (a `Transport` closure) or, where real HTTP
//! matters (discovery order, failures), from mockito servers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use mcp_oauth2::{
    Decision, HttpRequest, HttpResponse, Purpose, Request, Step, Transport, TransportError, TransportErrorKind,
    UreqTransport, Validator,
};
use serde_json::{json, Value};

const RESOURCE: &str = "https://mcp.example/mcp";
const ISSUER: &str = "https://as.example";
const JWKS_URL: &str = "https://as.example/jwks";

fn keys() -> &'static Value {
    static KEYS: OnceLock<Value> = OnceLock::new();
    KEYS.get_or_init(|| serde_json::from_str(include_str!("testdata/jwt-keys.json")).unwrap())
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// The public JWK of a test key, with a `kid`.
fn jwk(name: &str, kid: &str) -> Value {
    let mut k = keys()[name]["public_jwk"].clone();
    k["kid"] = json!(kid);
    k
}

fn encoding_key(name: &str) -> EncodingKey {
    let pem = keys()[name]["private_pem"].as_str().unwrap().as_bytes();
    match name {
        n if n.starts_with("rsa") => EncodingKey::from_rsa_pem(pem).unwrap(),
        n if n.starts_with("ec") => EncodingKey::from_ec_pem(pem).unwrap(),
        _ => EncodingKey::from_ed_pem(pem).unwrap(),
    }
}

/// A signed JWS; `typ` `None` leaves it out.
fn sign(key: &str, alg: Algorithm, kid: Option<&str>, typ: Option<&str>, claims: &Value) -> String {
    let header = Header { typ: typ.map(str::to_owned), kid: kid.map(str::to_owned), ..Header::new(alg) };
    encode(&header, claims, &encoding_key(key)).unwrap()
}

/// Good access-token claims for `RESOURCE` from `ISSUER`.
fn claims() -> Value {
    json!({"iss": ISSUER, "aud": RESOURCE, "sub": "alice", "client_id": "app", "scope": "mcp:read",
           "iat": now(), "exp": now() + 300, "jti": "j1"})
}

fn with(mut base: Value, extra: Value) -> Value {
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            base.as_object_mut().unwrap().remove(k);
        } else {
            base[k] = v.clone();
        }
    }
    base
}

/// The usual RS256 `at+jwt` token from key rsa-1 (kid `k1`).
fn token(claims: &Value) -> String {
    sign("rsa-1", Algorithm::RS256, Some("k1"), Some("at+jwt"), claims)
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// An in-memory authorization server: serves `jwks` at `JWKS_URL` and `metadata` at every
/// other URL, and records every call.
struct FakeAs {
    jwks: Mutex<Value>,
    metadata: Value,
    calls: Mutex<Vec<(Purpose, String)>>,
}

impl FakeAs {
    fn new(jwks: Value) -> Self {
        FakeAs {
            jwks: Mutex::new(jwks),
            metadata: json!({"issuer": ISSUER, "jwks_uri": JWKS_URL}),
            calls: Mutex::new(Vec::new()),
        }
    }

    fn standard() -> Self {
        FakeAs::new(json!({"keys": [
            jwk("rsa-1", "k1"), jwk("ec-p256", "e1"), jwk("ec-p384", "e2"), jwk("ed25519", "d1")
        ]}))
    }

    fn jwks_calls(&self) -> usize {
        self.calls.lock().unwrap().iter().filter(|(p, _)| *p == Purpose::Jwks).count()
    }

    fn calls(&self) -> Vec<(Purpose, String)> {
        self.calls.lock().unwrap().clone()
    }
}

impl Transport for FakeAs {
    fn send(&self, request: &HttpRequest) -> Result<HttpResponse, TransportError> {
        assert_eq!(request.method, "GET");
        self.calls.lock().unwrap().push((request.purpose, request.url.clone()));
        let body = if request.url == JWKS_URL { self.jwks.lock().unwrap().clone() } else { self.metadata.clone() };
        Ok(HttpResponse::new(200, "application/json", body.to_string()))
    }
}

fn validator(extra: Value) -> Validator {
    let config =
        with(json!({"resource": RESOURCE, "authorization_servers": [ISSUER], "jwks_endpoint": JWKS_URL}), extra);
    Validator::from_json(&config.to_string()).unwrap()
}

fn authorize(v: &Validator, transport: &impl Transport, token: &str) -> Decision {
    let auth = format!("Bearer {token}");
    v.authorize(&Request::new("POST", "/mcp").header("Authorization", &auth), transport)
}

/// The decision's reason name and status (200 for a forward).
fn verdict(v: &Validator, transport: &impl Transport, token: &str) -> (&'static str, u16) {
    let d = authorize(v, transport, token);
    let status = d.as_response().map_or(200, |r| r.status());
    (d.reason().as_str(), status)
}

fn challenge(d: &Decision) -> String {
    d.as_response().and_then(|r| r.header("WWW-Authenticate")).unwrap_or_default().to_owned()
}

#[test]
fn every_default_algorithm_verifies() {
    let v = validator(json!({"claim_to_header": [{"claim": "sub", "header": "X-User"}]}));
    let fake = FakeAs::standard();
    let cases = [
        ("rsa-1", Algorithm::RS256, "k1"),
        ("rsa-1", Algorithm::RS384, "k1"),
        ("rsa-1", Algorithm::RS512, "k1"),
        ("rsa-1", Algorithm::PS256, "k1"),
        ("rsa-1", Algorithm::PS384, "k1"),
        ("rsa-1", Algorithm::PS512, "k1"),
        ("ec-p256", Algorithm::ES256, "e1"),
        ("ec-p384", Algorithm::ES384, "e2"),
        ("ed25519", Algorithm::EdDSA, "d1"),
    ];
    for (key, alg, kid) in cases {
        let t = sign(key, alg, Some(kid), Some("at+jwt"), &claims());
        match authorize(&v, &fake, &t) {
            Decision::Forward(f) => {
                assert_eq!(f.set_headers().collect::<Vec<_>>(), [("X-User", "alice")], "{alg:?}");
                assert_eq!(f.identity().scope(), Some("mcp:read"));
                assert_eq!(f.identity().client_id(), Some("app"));
            }
            Decision::Respond(r) => panic!("{alg:?} denied: {} {}", r.status(), r.reason()),
        }
    }
    assert_eq!(fake.jwks_calls(), 1, "the key set is fetched once and cached");
    assert_eq!(fake.calls().len(), 1, "no discovery with jwks_endpoint");
}

#[test]
fn algorithm_allow_list_is_configurable() {
    let v = validator(json!({"algorithms": ["ES256"]}));
    let fake = FakeAs::standard();
    assert_eq!(verdict(&v, &fake, &token(&claims())), ("token_algorithm_not_allowed", 401));
    let es = sign("ec-p256", Algorithm::ES256, Some("e1"), None, &claims());
    assert_eq!(verdict(&v, &fake, &es), ("allowed", 200));
}

#[test]
fn tampering_is_detected() {
    let v = validator(json!({}));
    let fake = FakeAs::standard();
    let t = token(&claims());
    let parts: Vec<&str> = t.split('.').collect();

    let forged = b64(with(claims(), json!({"sub": "admin"})).to_string().as_bytes());
    let tampered_payload = format!("{}.{}.{}", parts[0], forged, parts[2]);
    let d = authorize(&v, &fake, &tampered_payload);
    assert_eq!(d.reason().as_str(), "token_signature_invalid");
    assert!(challenge(&d).starts_with("Bearer error=\"invalid_token\""), "{}", challenge(&d));

    let mut sig = parts[2].as_bytes().to_vec();
    sig[10] = if sig[10] == b'A' { b'B' } else { b'A' };
    let tampered_sig = format!("{}.{}.{}", parts[0], parts[1], String::from_utf8(sig).unwrap());
    assert_eq!(verdict(&v, &fake, &tampered_sig), ("token_signature_invalid", 401));

    // Another key, same kid.
    let wrong_key = sign("rsa-2", Algorithm::RS256, Some("k1"), Some("at+jwt"), &claims());
    assert_eq!(verdict(&v, &fake, &wrong_key), ("token_signature_invalid", 401));

    assert_eq!(verdict(&v, &fake, "not.a-jwt"), ("token_malformed", 401));
    assert_eq!(verdict(&v, &fake, &format!("{}.{}", parts[0], parts[1])), ("token_malformed", 401));
    assert_eq!(verdict(&v, &fake, &format!("{t}.x.y")), ("token_malformed", 401), "JWE-shaped");
}

#[test]
fn alg_none_and_hmac_confusion_are_rejected() {
    let v = validator(json!({}));
    let fake = FakeAs::standard();
    let payload = b64(claims().to_string().as_bytes());
    for header in [json!({"alg": "none"}), json!({"alg": "None", "kid": "k1"}), json!({"alg": "rs256", "kid": "k1"})] {
        let t = format!("{}.{}.", b64(header.to_string().as_bytes()), payload);
        assert_eq!(verdict(&v, &fake, &t), ("token_algorithm_not_allowed", 401), "{header}");
        let t = format!("{}.{}.c2ln", b64(header.to_string().as_bytes()), payload);
        assert_eq!(verdict(&v, &fake, &t), ("token_algorithm_not_allowed", 401), "{header}");
    }
    // HS256 "signed" with the RSA public key's bytes, the classic confusion attack.
    let public_pem = keys()["rsa-1"]["public_pem"].as_str().unwrap();
    for secret in [public_pem.as_bytes().to_vec(), keys()["rsa-1"]["public_jwk"]["n"].as_str().unwrap().into()] {
        let header = Header { kid: Some("k1".into()), ..Header::new(Algorithm::HS256) };
        let t = encode(&header, &claims(), &EncodingKey::from_secret(&secret)).unwrap();
        assert_eq!(verdict(&v, &fake, &t), ("token_algorithm_not_allowed", 401));
    }
    // A symmetric key published in the JWKS is never used, whatever the token says.
    let fake = FakeAs::new(json!({"keys": [{"kty": "oct", "kid": "k1", "k": b64(b"shared-secret")}]}));
    let header = Header { kid: Some("k1".into()), ..Header::new(Algorithm::HS256) };
    let t = encode(&header, &claims(), &EncodingKey::from_secret(b"shared-secret")).unwrap();
    assert_eq!(verdict(&v, &fake, &t), ("token_algorithm_not_allowed", 401));
}

#[test]
fn every_single_character_change_or_truncation_is_rejected() {
    let v = validator(json!({"cache_ttl_negative": 0}));
    let fake = FakeAs::standard();
    let t = sign("ed25519", Algorithm::EdDSA, Some("d1"), None, &claims());
    assert_eq!(verdict(&v, &fake, &t), ("allowed", 200));
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.";
    for i in 0..t.len() {
        let mut bytes = t.clone().into_bytes();
        let original = bytes[i];
        bytes[i] = alphabet[(alphabet.iter().position(|&c| c == original).unwrap() + 7) % alphabet.len()];
        let changed = String::from_utf8(bytes).unwrap();
        let (reason, status) = verdict(&v, &fake, &changed);
        assert_eq!(status, 401, "char {i}: {reason}");
        let (reason, status) = verdict(&v, &fake, &t[..i]);
        assert!(status == 401 || status == 400, "prefix {i}: {reason} {status}");
    }
}

#[test]
fn crit_header_is_rejected() {
    let v = validator(json!({}));
    let fake = FakeAs::standard();
    let header = json!({"alg": "RS256", "kid": "k1", "crit": ["exp"], "exp": 1});
    let t = token(&claims());
    let parts: Vec<&str> = t.split('.').collect();
    let t = format!("{}.{}.{}", b64(header.to_string().as_bytes()), parts[1], parts[2]);
    assert_eq!(verdict(&v, &fake, &t), ("token_malformed", 401));
}

#[test]
fn kid_selection_and_rotation_with_bounded_refetch() {
    let v = validator(json!({}));
    let fake = FakeAs::new(json!({"keys": [jwk("rsa-1", "k1")]}));
    assert_eq!(verdict(&v, &fake, &token(&claims())), ("allowed", 200));
    assert_eq!(fake.jwks_calls(), 1);

    // The AS rotates to rsa-2 (kid k2): the unknown kid triggers one refetch, which finds it.
    *fake.jwks.lock().unwrap() = json!({"keys": [jwk("rsa-1", "k1"), jwk("rsa-2", "k2")]});
    let rotated = sign("rsa-2", Algorithm::RS256, Some("k2"), Some("at+jwt"), &claims());
    assert_eq!(verdict(&v, &fake, &rotated), ("allowed", 200));
    assert_eq!(fake.jwks_calls(), 2);

    // Another unknown kid within 60 s: no second refetch, 401.
    let unknown = sign("rsa-2", Algorithm::RS256, Some("k3"), Some("at+jwt"), &claims());
    let d = authorize(&v, &fake, &unknown);
    assert_eq!(d.reason().as_str(), "token_key_unknown");
    assert_eq!(d.as_response().unwrap().status(), 401);
    assert_eq!(fake.jwks_calls(), 2, "at most one refetch per 60 s per JWKS URL");

    // Known keys keep working from the cache.
    let again = sign("rsa-2", Algorithm::RS256, Some("k2"), Some("at+jwt"), &with(claims(), json!({"jti": "j2"})));
    assert_eq!(verdict(&v, &fake, &again), ("allowed", 200));
    assert_eq!(fake.jwks_calls(), 2);
}

#[test]
fn kidless_tokens_need_exactly_one_fitting_key() {
    let v = validator(json!({}));
    let one_rsa = FakeAs::new(json!({"keys": [{"kty": "RSA", "n": keys()["rsa-1"]["public_jwk"]["n"], "e": "AQAB"},
                                               jwk("ec-p256", "e1")]}));
    let kidless = sign("rsa-1", Algorithm::RS256, None, Some("at+jwt"), &claims());
    assert_eq!(verdict(&v, &one_rsa, &kidless), ("allowed", 200));

    let v = validator(json!({}));
    let two_rsa = FakeAs::new(json!({"keys": [jwk("rsa-1", "k1"), jwk("rsa-2", "k2")]}));
    assert_eq!(verdict(&v, &two_rsa, &kidless), ("token_key_unknown", 401));
    assert_eq!(two_rsa.jwks_calls(), 1, "no refetch for a kid-less token");
}

#[test]
fn enc_keys_are_ignored_and_bad_keys_skipped() {
    let v = validator(json!({}));
    let mut enc = jwk("rsa-1", "k1");
    enc["use"] = json!("enc");
    let fake = FakeAs::new(json!({"keys": [
        enc, {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"}, {"kty": "weird"}, jwk("ec-p256", "e1")
    ]}));
    let d = authorize(&v, &fake, &token(&claims()));
    assert_eq!(d.reason().as_str(), "token_key_unknown", "use:enc key never verifies");
    let detail = d.as_response().unwrap().detail().unwrap();
    assert!(detail.contains("keys[1] (kid \"broken\"): key parameter is not base64url"), "{detail}");
    assert!(detail.contains("keys[2]: unsupported kty"), "{detail}");
    let es = sign("ec-p256", Algorithm::ES256, Some("e1"), None, &claims());
    assert_eq!(verdict(&v, &fake, &es), ("allowed", 200), "one malformed key does not fail the set");
}

#[test]
fn time_claims_with_leeway() {
    let v = validator(json!({}));
    let fake = FakeAs::standard();
    let t = now();
    let case = |extra: Value| verdict(&v, &fake, &token(&with(claims(), extra)));
    assert_eq!(case(json!({"exp": t - 10})), ("token_expired", 401));
    assert_eq!(case(json!({"exp": null})), ("token_malformed", 401), "exp is required");
    assert_eq!(case(json!({"exp": "soon"})), ("token_malformed", 401));
    assert_eq!(case(json!({"nbf": t + 120})), ("token_not_yet_valid", 401));
    assert_eq!(case(json!({"iat": t + 120})), ("token_not_yet_valid", 401));
    assert_eq!(case(json!({"iat": null, "nbf": t - 5})), ("allowed", 200));

    let v = validator(json!({"jwt_claims_leeway": 60}));
    let case = |extra: Value| verdict(&v, &fake, &token(&with(claims(), extra)));
    assert_eq!(case(json!({"exp": t - 30})), ("allowed", 200), "expired within leeway");
    assert_eq!(case(json!({"exp": t - 90})), ("token_expired", 401));
    assert_eq!(case(json!({"nbf": t + 30, "jti": "n"})), ("allowed", 200));
    assert_eq!(case(json!({"iat": t + 30, "jti": "i"})), ("allowed", 200));
    assert_eq!(case(json!({"iat": t + 120})), ("token_not_yet_valid", 401));
}

#[test]
fn issuer_must_be_accepted() {
    let fake = FakeAs::standard();
    let v = validator(json!({}));
    assert_eq!(
        verdict(&v, &fake, &token(&with(claims(), json!({"iss": "https://evil.example"})))),
        ("issuer_mismatch", 401)
    );
    assert_eq!(
        verdict(&v, &fake, &token(&with(claims(), json!({"iss": "https://as.example/"})))),
        ("issuer_mismatch", 401)
    );
    assert_eq!(verdict(&v, &fake, &token(&with(claims(), json!({"iss": null})))), ("issuer_mismatch", 401));
    let v = validator(json!({"issuers": ["https://other.example"]}));
    assert_eq!(verdict(&v, &fake, &token(&claims())), ("issuer_mismatch", 401), "issuers replaces the default");
    assert_eq!(verdict(&v, &fake, &token(&with(claims(), json!({"iss": "https://other.example"})))), ("allowed", 200));
}

#[test]
fn audience_policy_is_shared_with_introspection() {
    let fake = FakeAs::standard();
    let v = validator(json!({}));
    let case = |aud: Value| verdict(&v, &fake, &token(&with(claims(), json!({"aud": aud, "jti": aud.to_string()}))));
    assert_eq!(case(json!(RESOURCE)), ("allowed", 200));
    assert_eq!(case(json!(["https://other.example", RESOURCE])), ("allowed", 200));
    assert_eq!(case(json!("account")), ("audience_mismatch", 401));
    assert_eq!(case(json!(["account"])), ("audience_mismatch", 401));
    assert_eq!(case(json!("https://mcp.example/mcp/")), ("audience_mismatch", 401));
    assert_eq!(verdict(&v, &fake, &token(&with(claims(), json!({"aud": null})))), ("audience_mismatch", 401));
}

#[test]
fn typ_rules_and_id_tokens() {
    let fake = FakeAs::standard();
    let strict = validator(json!({"access_token_type": "at+jwt"}));
    let any = validator(json!({}));
    let typed = |typ: Option<&str>| sign("rsa-1", Algorithm::RS256, Some("k1"), typ, &claims());
    for ok in ["at+jwt", "application/at+jwt", "AT+JWT"] {
        assert_eq!(verdict(&strict, &fake, &typed(Some(ok))), ("allowed", 200), "{ok}");
    }
    for bad in [Some("JWT"), Some("at+jwt+x"), Some("id_token+jwt"), None] {
        assert_eq!(verdict(&strict, &fake, &typed(bad)), ("token_type_invalid", 401), "{bad:?}");
        if bad.is_some() {
            assert_eq!(verdict(&any, &fake, &typed(bad)).0, "allowed", "{bad:?} is fine with access_token_type any");
        }
    }
    let id_token = with(claims(), json!({"nonce": "n-0S6_WzA2Mj", "aud": RESOURCE}));
    let id_plain = sign("rsa-1", Algorithm::RS256, Some("k1"), Some("JWT"), &id_token);
    assert_eq!(verdict(&any, &fake, &id_plain), ("token_type_invalid", 401), "ID tokens rejected in every mode");
    let id_typed = sign("rsa-1", Algorithm::RS256, Some("k1"), Some("at+jwt"), &id_token);
    assert_eq!(verdict(&strict, &fake, &id_typed), ("token_type_invalid", 401));
}

#[test]
fn validated_jwt_is_cached_until_exp() {
    // jwks_cache_ttl 0: every verification needs a JWKS fetch, so a call-free second
    // decision can only come from the token cache.
    let v = validator(json!({"jwks_cache_ttl": 0}));
    let fake = FakeAs::standard();
    let exp = now() + 120;
    let t = token(&with(claims(), json!({"exp": exp})));
    let first = authorize(&v, &fake, &t);
    assert!(first.is_forward());
    assert_eq!(first.as_forward().unwrap().valid_until_unix(), Some(exp));
    assert_eq!(fake.jwks_calls(), 1);
    let second = authorize(&v, &fake, &t);
    assert!(second.is_forward());
    assert_eq!(fake.jwks_calls(), 1, "a repeated token is not verified again");
    assert_eq!(v.cached_entries(), 1);
    let other = token(&with(claims(), json!({"jti": "other"})));
    assert!(authorize(&v, &fake, &other).is_forward());
    assert_eq!(fake.jwks_calls(), 2);
    assert!(v.evict(&t));
}

#[test]
fn huge_cache_ttls_do_not_overflow() {
    let v = validator(json!({"jwks_cache_ttl": u64::MAX, "metadata_cache_ttl": u64::MAX, "cache_ttl_max": u64::MAX,
                             "jwt_claims_leeway": u64::MAX}));
    let fake = FakeAs::standard();
    assert_eq!(verdict(&v, &fake, &token(&claims())), ("allowed", 200));
    assert_eq!(verdict(&v, &fake, &token(&with(claims(), json!({"jti": "2"})))), ("allowed", 200));
    assert_eq!(fake.jwks_calls(), 1);
}

#[test]
fn concurrent_misses_for_one_token_share_one_discovery_and_fetch() {
    let config = json!({"resource": RESOURCE, "authorization_servers": [ISSUER]});
    let v = Validator::from_json(&config.to_string()).unwrap();
    let fake = FakeAs::standard();
    let slow = |req: &HttpRequest| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        fake.send(req)
    };
    let t = token(&claims());
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..8).map(|_| s.spawn(|| authorize(&v, &slow, &t).is_forward())).collect();
        assert!(handles.into_iter().all(|h| h.join().unwrap()));
    });
    assert_eq!(
        fake.calls(),
        [
            (Purpose::Discovery, "https://as.example/.well-known/oauth-authorization-server".to_owned()),
            (Purpose::Jwks, JWKS_URL.to_owned())
        ],
        "the leader loops through discovery and keys; followers wait for its outcome"
    );
}

#[test]
fn a_burst_of_different_tokens_shares_one_discovery_and_fetch() {
    let config = json!({"resource": RESOURCE, "authorization_servers": [ISSUER]});
    let v = Validator::from_json(&config.to_string()).unwrap();
    let fake = FakeAs::standard();
    let slow = |req: &HttpRequest| {
        std::thread::sleep(std::time::Duration::from_millis(200));
        fake.send(req)
    };
    let tokens: Vec<String> = (0..8).map(|i| token(&with(claims(), json!({"jti": i})))).collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = tokens.iter().map(|t| s.spawn(|| authorize(&v, &slow, t).is_forward())).collect();
        assert!(handles.into_iter().all(|h| h.join().unwrap()));
    });
    let calls = fake.calls();
    let count = |p: Purpose| calls.iter().filter(|(q, _)| *q == p).count();
    // A thread may start after the first fetch finished but before its keys were stored;
    // with 200 ms calls and 8 threads started together, all of them share the first ones.
    assert_eq!((count(Purpose::Discovery), count(Purpose::Jwks)), (1, 1), "{calls:?}");
}

#[test]
fn a_burst_of_tokens_with_a_rotated_kid_shares_one_refetch() {
    let v = validator(json!({}));
    let fake = FakeAs::new(json!({"keys": [jwk("rsa-1", "k1")]}));
    assert!(authorize(&v, &fake, &token(&claims())).is_forward());
    *fake.jwks.lock().unwrap() = json!({"keys": [jwk("rsa-1", "k1"), jwk("rsa-2", "k2")]});
    let slow = |req: &HttpRequest| {
        std::thread::sleep(std::time::Duration::from_millis(200));
        fake.send(req)
    };
    let tokens: Vec<String> =
        (0..8).map(|i| sign("rsa-2", Algorithm::RS256, Some("k2"), None, &with(claims(), json!({"jti": i})))).collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = tokens.iter().map(|t| s.spawn(|| verdict(&v, &slow, t))).collect();
        for h in handles {
            assert_eq!(h.join().unwrap(), ("allowed", 200));
        }
    });
    assert_eq!(fake.jwks_calls(), 2, "one initial fetch, one shared refetch");
    // Once the refetched set is stored, another unknown kid is a 401 without a call.
    let unknown = sign("rsa-2", Algorithm::RS256, Some("k3"), None, &claims());
    assert_eq!(verdict(&v, &fake, &unknown), ("token_key_unknown", 401));
    assert_eq!(fake.jwks_calls(), 2);
}

#[test]
fn each_authorization_server_verifies_only_its_own_tokens() {
    let (as1, as2) = ("https://as1.example", "https://as2.example/tenant");
    let config = json!({"resource": RESOURCE, "authorization_servers": [as1, as2]});
    let v = Validator::from_json(&config.to_string()).unwrap();
    let calls = Mutex::new(Vec::new());
    // Both servers publish a key with kid "k1", but different keys.
    let transport = |req: &HttpRequest| -> Result<HttpResponse, TransportError> {
        calls.lock().unwrap().push(req.url.clone());
        let body = match req.url.as_str() {
            "https://as1.example/.well-known/oauth-authorization-server" => {
                json!({"issuer": as1, "jwks_uri": "https://as1.example/jwks"})
            }
            "https://as2.example/.well-known/oauth-authorization-server/tenant" => {
                json!({"issuer": as2, "jwks_uri": "https://keys.as2.example/jwks"})
            }
            "https://as1.example/jwks" => json!({"keys": [jwk("rsa-1", "k1")]}),
            "https://keys.as2.example/jwks" => json!({"keys": [jwk("rsa-2", "k1")]}),
            _ => return Ok(HttpResponse::new(404, "text/plain", "not found")),
        };
        Ok(HttpResponse::new(200, "application/json", body.to_string()))
    };
    let from =
        |key: &str, iss: &str| sign(key, Algorithm::RS256, Some("k1"), None, &with(claims(), json!({"iss": iss})));
    assert_eq!(verdict(&v, &transport, &from("rsa-2", as2)), ("allowed", 200));
    assert_eq!(
        *calls.lock().unwrap(),
        ["https://as2.example/.well-known/oauth-authorization-server/tenant", "https://keys.as2.example/jwks"],
        "only the token's issuer is discovered"
    );
    assert_eq!(verdict(&v, &transport, &from("rsa-1", as1)), ("allowed", 200));
    // A token naming one server but signed with the other's key never verifies.
    assert_eq!(verdict(&v, &transport, &from("rsa-1", as2)), ("token_signature_invalid", 401));
    assert_eq!(verdict(&v, &transport, &from("rsa-2", as1)), ("token_signature_invalid", 401));
    assert_eq!(calls.lock().unwrap().len(), 4, "metadata and keys of both servers are cached");
}

#[test]
fn introspection_wins_over_jwks() {
    let v = validator(json!({"introspection_endpoint": "https://as.example/introspect"}));
    let purposes = Mutex::new(Vec::new());
    let transport = |req: &HttpRequest| -> Result<HttpResponse, TransportError> {
        purposes.lock().unwrap().push(req.purpose);
        Ok(HttpResponse::new(200, "application/json", json!({"active": true, "aud": RESOURCE}).to_string()))
    };
    assert!(authorize(&v, &transport, &token(&claims())).is_forward());
    assert_eq!(*purposes.lock().unwrap(), [Purpose::Introspection]);
}

#[test]
fn sans_io_steps_through_discovery_and_keys() {
    let config = json!({"resource": RESOURCE, "authorization_servers": [ISSUER]});
    let v = Validator::from_json(&config.to_string()).unwrap();
    let fake = FakeAs::standard();
    let t = token(&claims());
    let auth = format!("Bearer {t}");
    let req = Request::new("GET", "/mcp").header("Authorization", &auth);

    let Step::Need(http, pending) = v.begin(&req, SystemTime::now()) else { panic!("needs discovery") };
    assert_eq!(http.purpose, Purpose::Discovery);
    assert_eq!(http.url, "https://as.example/.well-known/oauth-authorization-server");
    let discovery_key = pending.cache_key();
    assert_eq!(discovery_key.len(), 64);
    let dbg = format!("{pending:?} {http:?}");
    assert!(!dbg.contains(&t) && !dbg.contains(t.split('.').nth(1).unwrap()), "{dbg}");

    let Step::Need(http, pending) = pending.resume(fake.send(&http), SystemTime::now()) else { panic!("needs keys") };
    assert_eq!((http.purpose, http.url.as_str()), (Purpose::Jwks, JWKS_URL));
    assert_ne!(pending.cache_key(), discovery_key);
    let Step::Done(d) = pending.resume(fake.send(&http), SystemTime::now()) else { panic!("done") };
    assert!(d.is_forward(), "{:?}", d.as_response().map(|r| r.reason()));

    // Metadata and keys are cached: a new token is pure CPU.
    let t2 = token(&with(claims(), json!({"jti": "t2"})));
    let auth2 = format!("Bearer {t2}");
    assert!(
        matches!(v.begin(&Request::new("GET", "/mcp").header("Authorization", &auth2), SystemTime::now()), Step::Done(d) if d.is_forward())
    );

    // JWKS cache keys are per URL, so every token shares them.
    let v2 = Validator::from_json(&config.to_string()).unwrap();
    let t3 = token(&with(claims(), json!({"jti": "t3"})));
    let auth3 = format!("Bearer {t3}");
    let req3 = Request::new("GET", "/mcp").header("Authorization", &auth3);
    let Step::Need(_, p3) = v2.begin(&req3, SystemTime::now()) else { panic!() };
    assert_eq!(p3.cache_key(), discovery_key, "same validator identity and URL → same key");
}

#[test]
fn issuer_from_discovery_is_accepted() {
    // authorization_servers has a trailing slash; the discovered issuer does not.
    let config = json!({"resource": RESOURCE, "authorization_servers": ["https://as.example/"],
                        "metadata_discovery_endpoint": "https://as.example/meta"});
    let v = Validator::from_json(&config.to_string()).unwrap();
    let fake = FakeAs::standard();
    assert_eq!(verdict(&v, &fake, &token(&claims())), ("allowed", 200));
    assert_eq!(fake.calls()[0], (Purpose::Discovery, "https://as.example/meta".to_owned()));
}

// ---- real HTTP against mockito servers: discovery order, mismatches, failures ----------

/// Records the URL of every request and performs it with ureq.
struct Recording {
    inner: UreqTransport,
    urls: Mutex<Vec<String>>,
}

impl Recording {
    fn new(v: &Validator) -> Self {
        Recording { inner: UreqTransport::new(v.config()), urls: Mutex::new(Vec::new()) }
    }
    fn paths(&self, base: &str) -> Vec<String> {
        self.urls.lock().unwrap().iter().map(|u| u.strip_prefix(base).unwrap_or(u).to_owned()).collect()
    }
}

impl Transport for Recording {
    fn send(&self, request: &HttpRequest) -> Result<HttpResponse, TransportError> {
        self.urls.lock().unwrap().push(request.url.clone());
        self.inner.send(request)
    }
}

fn jwks_body() -> String {
    json!({"keys": [jwk("rsa-1", "k1")]}).to_string()
}

#[test]
fn discovery_tries_rfc8414_then_openid_insert_then_append() {
    let mut server = mockito::Server::new();
    let base = server.url();
    let issuer = format!("{base}/realms/mcp");
    let meta = json!({"issuer": issuer, "jwks_uri": format!("{base}/certs")}).to_string();
    let m1 = server.mock("GET", "/.well-known/oauth-authorization-server/realms/mcp").with_status(404).create();
    let m2 = server.mock("GET", "/.well-known/openid-configuration/realms/mcp").with_status(404).create();
    let m3 = server
        .mock("GET", "/realms/mcp/.well-known/openid-configuration")
        .with_header("content-type", "application/json")
        .with_body(&meta)
        .expect(1)
        .create();
    let keys = server.mock("GET", "/certs").with_body(jwks_body()).expect(1).create();

    let config = json!({"resource": RESOURCE, "authorization_servers": [issuer]});
    let v = Validator::from_json(&config.to_string()).unwrap();
    let transport = Recording::new(&v);
    let t = token(&with(claims(), json!({"iss": issuer})));
    assert_eq!(verdict(&v, &transport, &t), ("allowed", 200));
    assert_eq!(
        transport.paths(&base),
        [
            "/.well-known/oauth-authorization-server/realms/mcp",
            "/.well-known/openid-configuration/realms/mcp",
            "/realms/mcp/.well-known/openid-configuration",
            "/certs"
        ]
    );
    // Cached: another token makes no call.
    let t2 = token(&with(claims(), json!({"iss": issuer, "jti": "2"})));
    assert_eq!(verdict(&v, &transport, &t2), ("allowed", 200));
    assert_eq!(transport.paths(&base).len(), 4);
    for m in [m1, m2, m3, keys] {
        m.assert();
    }
}

#[test]
fn metadata_for_another_issuer_is_skipped() {
    let mut server = mockito::Server::new();
    let base = server.url();
    let evil = json!({"issuer": "https://evil.example", "jwks_uri": format!("{base}/evil-keys")}).to_string();
    let good = json!({"issuer": base, "jwks_uri": format!("{base}/keys")}).to_string();
    server.mock("GET", "/.well-known/oauth-authorization-server").with_body(&evil).create();
    server.mock("GET", "/.well-known/openid-configuration").with_body(&good).create();
    let evil_keys = server.mock("GET", "/evil-keys").expect(0).create();
    server.mock("GET", "/keys").with_body(jwks_body()).create();

    let config = json!({"resource": RESOURCE, "authorization_servers": [base]});
    let v = Validator::from_json(&config.to_string()).unwrap();
    let transport = Recording::new(&v);
    assert_eq!(verdict(&v, &transport, &token(&with(claims(), json!({"iss": base})))), ("allowed", 200));
    // The mismatched document's issuer is not trusted either.
    let evil_iss = token(&with(claims(), json!({"iss": "https://evil.example"})));
    assert_eq!(verdict(&v, &transport, &evil_iss), ("issuer_mismatch", 401));
    evil_keys.assert();

    // Only mismatching documents: 503, never 401.
    let mut server = mockito::Server::new();
    let base = server.url();
    server.mock("GET", mockito::Matcher::Any).with_body(&evil).create();
    let config = json!({"resource": RESOURCE, "authorization_servers": [base]});
    let v = Validator::from_json(&config.to_string()).unwrap();
    let d = authorize(&v, &Recording::new(&v), &token(&with(claims(), json!({"iss": base}))));
    assert_eq!(d.as_response().unwrap().status(), 503);
    assert!(challenge(&d).is_empty(), "a 503 carries no challenge");
}

#[test]
fn discovery_retries_then_moves_on_or_fails_closed() {
    let mut server = mockito::Server::new();
    let base = server.url();
    let flaky = server.mock("GET", "/.well-known/oauth-authorization-server").with_status(502).expect(2).create();
    let good = json!({"issuer": base, "jwks_uri": format!("{base}/keys")}).to_string();
    server.mock("GET", "/.well-known/openid-configuration").with_body(&good).create();
    server.mock("GET", "/keys").with_body(jwks_body()).create();
    let config = json!({"resource": RESOURCE, "authorization_servers": [base], "metadata_discovery_retry": 2});
    let v = Validator::from_json(&config.to_string()).unwrap();
    assert_eq!(verdict(&v, &Recording::new(&v), &token(&with(claims(), json!({"iss": base})))), ("allowed", 200));
    flaky.assert();

    // Every URL of the server fails: 503 after retry attempts each, and the second
    // authorization server's keys are not used in its place.
    let mut down = mockito::Server::new();
    let down_base = down.url();
    let errors = down.mock("GET", mockito::Matcher::Any).with_status(500).expect(3 * 2).create();
    let mut other = mockito::Server::new();
    let other_hit = other.mock("GET", mockito::Matcher::Any).expect(0).create();
    let config =
        json!({"resource": RESOURCE, "authorization_servers": [down_base, other.url()], "metadata_discovery_retry": 3});
    let v = Validator::from_json(&config.to_string()).unwrap();
    let transport = Recording::new(&v);
    let d = authorize(&v, &transport, &token(&with(claims(), json!({"iss": down_base}))));
    assert_eq!(d.reason().as_str(), "authorization_server_unavailable");
    assert_eq!(d.as_response().unwrap().status(), 503);
    errors.assert();
    other_hit.assert();
    // Failures are not cached: the next request tries again.
    let again = authorize(&v, &transport, &token(&with(claims(), json!({"iss": down_base, "jti": "x"}))));
    assert_eq!(again.as_response().unwrap().status(), 503);
    assert_eq!(transport.paths(&down_base).len(), 12);
}

#[test]
fn jwks_down_is_503_never_401() {
    let mut server = mockito::Server::new();
    let base = server.url();
    let t = token(&claims());
    let statuses = [(500, "{}"), (503, "busy"), (200, "<html>not json</html>"), (200, "[1,2]"), (404, "{}")];
    for (status, body) in statuses {
        let m = server.mock("GET", "/jwks").with_status(status).with_body(body).create();
        let v = validator(json!({"jwks_endpoint": format!("{base}/jwks")}));
        let d = authorize(&v, &UreqTransport::new(v.config()), &t);
        assert_eq!(d.as_response().unwrap().status(), 503, "{status} {body}");
        assert_eq!(d.reason().as_str(), "authorization_server_unavailable");
        assert!(challenge(&d).is_empty());
        m.remove();
    }
    // Unreachable: a port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/jwks", closed.local_addr().unwrap());
    drop(closed);
    let v = validator(json!({"jwks_endpoint": url, "timeout": 2000}));
    let d = authorize(&v, &UreqTransport::new(v.config()), &t);
    assert_eq!(d.as_response().unwrap().status(), 503);
    // Metadata unreachable likewise.
    let v = Validator::from_json(
        &json!({"resource": RESOURCE, "authorization_servers": ["http://127.0.0.1:9"], "metadata_discovery_retry": 1})
            .to_string(),
    )
    .unwrap();
    let d = authorize(&v, &UreqTransport::new(v.config()), &t);
    assert_eq!(d.as_response().unwrap().status(), 503);
}

#[test]
fn transport_errors_are_503_and_not_cached() {
    let v = validator(json!({}));
    let fails = AtomicUsize::new(0);
    let broken = |_: &HttpRequest| -> Result<HttpResponse, TransportError> {
        fails.fetch_add(1, Ordering::SeqCst);
        Err(TransportError::new(TransportErrorKind::Timeout, "timeout"))
    };
    let t = token(&claims());
    assert_eq!(verdict(&v, &broken, &t), ("authorization_server_unavailable", 503));
    assert_eq!(verdict(&v, &FakeAs::standard(), &t), ("allowed", 200), "the failure was not cached");
    assert_eq!(fails.load(Ordering::SeqCst), 1);
}
