//! Cost of building and signing an RFC 7523 client assertion (issue 10 targets: HS256
//! ≤ 5 µs, ES256 ≤ 60 µs, RS256 with a 2048-bit key ≤ 1.5 ms).
//!
//! Measured through the public sans-I/O API, as a host pays it: `begin` for a token the
//! validator has not seen, up to the introspection `HttpRequest` (form, headers, the signed
//! assertion), then dropping the pending (nothing is cached, so every iteration builds a
//! fresh request and a fresh assertion). `client_secret_basic` is the same work without an
//! assertion: the difference is the assertion itself.
//!
//! `cargo bench --bench client_auth`

use std::hint::black_box;
use std::time::SystemTime;

use criterion::{criterion_group, criterion_main, Criterion};
use mcp_oauth2::{Request, Step, Validator};
use serde_json::{json, Value};

fn validator(auth: Value) -> Validator {
    let mut config = json!({
        "resource": "https://mcp.example.com/mcp",
        "authorization_servers": ["https://as.example.com"],
        "introspection_endpoint": "https://as.example.com/introspect",
        "client_id": "gateway"
    });
    for (k, v) in auth.as_object().unwrap() {
        config[k] = v.clone();
    }
    Validator::from_json(&config.to_string()).unwrap()
}

fn assertion_in_introspection_request(c: &mut Criterion) {
    let keys: Value = serde_json::from_str(include_str!("../tests/testdata/client-jwks.json")).unwrap();
    let cases = [
        ("client_secret_basic", json!({"client_secret": "gateway-secret"})),
        ("HS256", json!({"client_auth": "client_secret_jwt", "client_secret": "gateway-secret-0123456789abcdef"})),
        ("ES256", json!({"client_auth": "private_key_jwt", "client_jwk": keys["ec-p256"]})),
        ("EdDSA", json!({"client_auth": "private_key_jwt", "client_jwk": keys["ed25519"]})),
        ("RS256_2048", json!({"client_auth": "private_key_jwt", "client_jwk": keys["rsa-2048"]})),
        (
            "PS256_2048",
            json!({"client_auth": "private_key_jwt", "client_jwk": keys["rsa-2048"], "client_alg": "PS256"}),
        ),
    ];
    let mut g = c.benchmark_group("introspection_request");
    for (name, auth) in cases {
        let v = validator(auth);
        let request =
            Request::new("POST", "/mcp").header("Authorization", "Bearer 8xLOxBtZp8F3kLq0a1c2d3e4f5g6h7i8j9k0");
        g.bench_function(name, |b| {
            b.iter(|| match v.begin(black_box(&request), SystemTime::now()) {
                Step::Need(http, pending) => {
                    black_box(&http.body);
                    drop(pending);
                }
                _ => unreachable!("a token never seen needs introspection"),
            })
        });
    }
    g.finish();
}

criterion_group!(benches, assertion_in_introspection_request);
criterion_main!(benches);
