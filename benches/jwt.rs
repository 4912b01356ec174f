//! Local JWT validation speed: a cold validation (token not cached, keys cached: parse,
//! key lookup, signature, claims) for RS256 and ES256, and a cached token. Baselines in
//! the same run: a bare `jsonwebtoken::decode` with the same key (the signature floor) and
//! a SHA-256 of the token (the floor of a cache lookup, whose key is that digest).
//!
//! `cargo bench --bench jwt`

use std::hint::black_box;
use std::time::{SystemTime, UNIX_EPOCH};

use criterion::{criterion_group, criterion_main, Criterion};
use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use mcp_oauth2::{HttpRequest, HttpResponse, Request, Step, TransportError, Validator};
use serde_json::{json, Map, Value};

const RESOURCE: &str = "https://mcp.example/mcp";
const ISSUER: &str = "https://as.example";

fn keys() -> Value {
    serde_json::from_str(include_str!("../tests/testdata/jwt-keys.json")).unwrap()
}

fn token(key: &str, alg: Algorithm, kid: &str) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let claims = json!({"iss": ISSUER, "aud": RESOURCE, "sub": "alice", "client_id": "app",
                        "scope": "mcp:read mcp:write", "iat": now, "exp": now + 3600, "jti": "bench"});
    let pem = keys()[key]["private_pem"].as_str().unwrap().to_owned();
    let encoding = if key.starts_with("rsa") {
        EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap()
    } else {
        EncodingKey::from_ec_pem(pem.as_bytes()).unwrap()
    };
    let header = Header { kid: Some(kid.into()), typ: Some("at+jwt".into()), ..Header::new(alg) };
    encode(&header, &claims, &encoding).unwrap()
}

/// A validator whose key set is already cached. `cache` off: every call verifies.
fn validator(cache: bool, warm_token: &str) -> Validator {
    let config = json!({"resource": RESOURCE, "authorization_servers": [ISSUER],
                        "jwks_endpoint": "https://as.example/jwks", "cache_introspection": cache,
                        "claim_to_header": [{"claim": "sub", "header": "X-User"}]});
    let v = Validator::from_json(&config.to_string()).unwrap();
    let mut rsa = keys()["rsa-1"]["public_jwk"].clone();
    rsa["kid"] = json!("k1");
    let mut ec = keys()["ec-p256"]["public_jwk"].clone();
    ec["kid"] = json!("e1");
    let jwks = json!({"keys": [rsa, ec]}).to_string();
    let transport = move |_: &HttpRequest| -> Result<HttpResponse, TransportError> {
        Ok(HttpResponse::new(200, "application/json", jwks.clone()))
    };
    let auth = format!("Bearer {warm_token}");
    assert!(v.authorize(&Request::new("POST", "/mcp").header("Authorization", &auth), &transport).is_forward());
    v
}

fn begin_forwards(v: &Validator, auth: &str) -> bool {
    match v.begin(&Request::new("POST", "/mcp").header("Authorization", auth), SystemTime::now()) {
        Step::Done(d) => d.is_forward(),
        _ => false,
    }
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("jwt");
    for (name, key, alg, kid) in
        [("rs256", "rsa-1", Algorithm::RS256, "k1"), ("es256", "ec-p256", Algorithm::ES256, "e1")]
    {
        let t = token(key, alg, kid);
        let auth = format!("Bearer {t}");

        let cold = validator(false, &t);
        assert!(begin_forwards(&cold, &auth), "a cold validation with cached keys needs no I/O");
        group.bench_function(format!("{name}_cold_validation"), |b| b.iter(|| begin_forwards(&cold, black_box(&auth))));

        let jwk = &keys()[key]["public_jwk"];
        let decoding = if key.starts_with("rsa") {
            DecodingKey::from_rsa_components(jwk["n"].as_str().unwrap(), jwk["e"].as_str().unwrap()).unwrap()
        } else {
            DecodingKey::from_ec_components(jwk["x"].as_str().unwrap(), jwk["y"].as_str().unwrap()).unwrap()
        };
        let mut validation = Validation::new(alg);
        validation.set_audience(&[RESOURCE]);
        group.bench_function(format!("{name}_baseline_jsonwebtoken_decode"), |b| {
            b.iter(|| decode::<Map<String, Value>>(black_box(&t), &decoding, &validation).is_ok())
        });

        // The floor of any cached lookup: the SHA-256 cache key over the token.
        group.bench_function(format!("{name}_baseline_sha256_of_token"), |b| {
            b.iter(|| <sha2::Sha256 as sha2::Digest>::digest(black_box(t.as_bytes())))
        });
        let cached = validator(true, &t);
        assert!(begin_forwards(&cached, &auth));
        group.bench_function(format!("{name}_cached_token"), |b| b.iter(|| begin_forwards(&cached, black_box(&auth))));
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
