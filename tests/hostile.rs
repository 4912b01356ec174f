//! Hostile inputs: random headers, bodies, AS responses and configurations never panic and
//! never allow a request that should not pass. Deterministic (seeded), so a failure replays.

mod common;

use common::*;
use mcp_oauth2::{Config, HttpResponse, Request, Step, TransportError, TransportErrorKind, Validator};
use serde_json::json;
use std::time::SystemTime;

/// xorshift64*: small, seeded, good enough to shake inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn bytes(&mut self, max: usize, alphabet: &[u8]) -> Vec<u8> {
        let len = self.below(max + 1);
        (0..len).map(|_| alphabet[self.below(alphabet.len())]).collect()
    }
}

fn validator(extra: serde_json::Value) -> Validator {
    Validator::new(Config::from_value(config_json("http://127.0.0.1:9/introspect", extra)).unwrap()).unwrap()
}

#[test]
fn random_authorization_headers_never_panic_or_allow_without_the_as() {
    let v = validator(json!({"method_scopes": {"tools/call": ["mcp:tools"]}, "allowed_origins": ["http://a.example"]}));
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let all: Vec<u8> = (0..=255).collect();
    let tokenish = b"Bearer bearer BEARER Basic  \t=+/-._~abcXYZ019,;\"\\\r\n\0";
    for i in 0..20_000 {
        let alphabet: &[u8] = if i % 2 == 0 { &all } else { tokenish };
        let value = rng.bytes(if i % 97 == 0 { 20_000 } else { 64 }, alphabet);
        let body = rng.bytes(128, b"{}[]\":,methodtoolscall/name 0123456789");
        let origin = rng.bytes(24, b"http:/a.example");
        let mut req = Request::new(["GET", "POST", "OPTIONS", "DELETE", "get"][rng.below(5)], "/mcp")
            .header("Authorization", &value)
            .body(&body);
        if rng.below(3) == 0 {
            req = req.header("Authorization", &value);
        }
        if rng.below(4) == 0 {
            req = req.header("Origin", &origin);
        }
        match v.begin(&req, SystemTime::now()) {
            Step::Done(d) => assert!(!d.is_forward(), "allowed without validation: {req:?}"),
            Step::Need(http, _) => assert_eq!(http.url, "http://127.0.0.1:9/introspect"),
            Step::Wait(_) => panic!("nothing else is in flight"),
        }
    }
}

#[test]
fn random_as_responses_never_panic_and_only_active_true_allows() {
    let v = validator(json!({"claim_to_header": [{"claim": "sub", "header": "X-User"}],
                             "upstream_headers": null, "scopes_required": []}));
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    let valid = json!({"active": true, "sub": "alice", "aud": RESOURCE, "exp": now() + 300}).to_string().into_bytes();
    for i in 0..5_000 {
        // Mutate a valid response: flip, insert or delete bytes.
        let mut body = valid.clone();
        for _ in 0..1 + rng.below(4) {
            let pos = rng.below(body.len().max(1));
            match rng.below(3) {
                0 if !body.is_empty() => body[pos] = (rng.next() & 0xff) as u8,
                1 => body.insert(pos.min(body.len()), b"\"{}[],:0aet\\"[rng.below(12)]),
                _ if !body.is_empty() => {
                    body.remove(pos);
                }
                _ => {}
            }
        }
        let token = format!("tok{i}");
        let auth = format!("Bearer {token}");
        let Step::Need(_, pending) =
            v.begin(&Request::new("GET", "/mcp").header("Authorization", &auth), SystemTime::now())
        else {
            panic!("a new token needs the AS");
        };
        let status = [200, 200, 200, 500, 204][rng.below(5)];
        let result = if rng.below(50) == 0 {
            Err(TransportError::new(TransportErrorKind::Timeout, "t"))
        } else {
            Ok(HttpResponse::new(status, "application/json", body.clone()))
        };
        let Step::Done(d) = pending.resume(result, SystemTime::now()) else { panic!("one call is enough") };
        if d.is_forward() {
            let parsed: serde_json::Value = serde_json::from_slice(&body).expect("allowed only on valid JSON");
            assert_eq!(parsed["active"], json!(true), "allowed without active: true");
            assert_eq!(status, 200);
            for (_, value) in d.as_forward().unwrap().set_headers() {
                assert!(!value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0));
            }
        }
    }
}

#[test]
fn random_configurations_are_errors_not_panics() {
    let mut rng = Rng(0x0123_4567_89AB_CDEF);
    let valid = config_json(
        "http://127.0.0.1:9/introspect",
        json!({"claim_to_header": [{"claim": "sub", "header": "X-User"}], "scopes_supported": ["a"]}),
    )
    .to_string()
    .into_bytes();
    for _ in 0..5_000 {
        let mut text = valid.clone();
        for _ in 0..1 + rng.below(3) {
            let pos = rng.below(text.len());
            text[pos] = b"\"{}[],:0aAz-_/ \\\xff"[rng.below(17)];
        }
        if let Err(e) = Config::from_slice(&text) {
            assert!(!e.to_string().contains("gateway-secret"), "{e}");
        }
    }
}
