//! Claim rendering into upstream headers: the fuzzed claims (a JSON object, made active
//! and addressed to the resource) go through introspection into an allowed decision, whose
//! header values must never hold CR, LF or NUL (nor exceed MAX_HEADER_VALUE_LEN), whatever
//! the claim values (strings, numbers, arrays, objects, nested paths).
//!
//! Input: one byte choosing `claim_to_header` or `upstream_headers` (nested paths), then
//! the claims as JSON.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use mcp_oauth2::{Decision, HttpResponse, Reason, Request, Step, Validator, MAX_HEADER_VALUE_LEN};
use mcp_oauth2_fuzz::{header_value_is_clean, now, validator, INTROSPECTION_URL, ISSUER, RESOURCE};
use serde_json::{json, Value};

/// No cache (`cache_introspection: false`): every input asks "the AS" again.
static VALIDATORS: LazyLock<[Validator; 2]> = LazyLock::new(|| {
    let base = |mapping: (&str, Value)| {
        let mut c = json!({
            "resource": RESOURCE,
            "authorization_servers": [ISSUER],
            "introspection_endpoint": INTROSPECTION_URL,
            "cache_introspection": false,
            "consumer_claim": ["preferred_username"],
            "consumer_optional": true,
        });
        c[mapping.0] = mapping.1;
        validator(&c)
    };
    [
        base((
            "claim_to_header",
            json!([
                {"claim": "sub", "header": "X-User-Id"},
                {"claim": "email", "header": "X-User-Email"},
                {"claim": "groups", "header": "X-Groups"},
                {"claim": "scope", "header": "X-Scope"},
                {"claim": "n", "header": "X-Number"},
            ]),
        )),
        base((
            "upstream_headers",
            json!([
                {"header": "X-A-B", "path": ["a", "b"]},
                {"header": "X-Arr-0", "path": ["arr", "0"]},
                {"header": "X-Obj", "path": ["obj"]},
                {"header": "X-Deep", "path": ["a", "b", "c", "1"]},
            ]),
        )),
    ]
});

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    let Ok(Value::Object(mut claims)) = serde_json::from_slice::<Value>(rest) else { return };
    for name in ["exp", "nbf", "iat", "nonce", "typ", "token_type", "events"] {
        claims.remove(name);
    }
    claims.insert("active".into(), Value::Bool(true));
    claims.insert("aud".into(), Value::String(RESOURCE.into()));
    let body = Value::Object(claims).to_string();

    let validator = &VALIDATORS[usize::from(selector & 1)];
    let req = Request::new("GET", "/mcp").header("Authorization", "Bearer fuzz-token-2");
    let Step::Need(_, pending) = validator.begin(&req, now()) else { panic!("no cache: introspection expected") };
    let Step::Done(decision) = pending.resume(Ok(HttpResponse::new(200, "application/json", body)), now()) else {
        panic!("one introspection settles the decision")
    };
    match decision {
        Decision::Forward(f) => {
            for (name, value) in f.set_headers() {
                assert!(header_value_is_clean(value), "{name}: CR, LF or NUL in an upstream header value");
                assert!(value.len() <= MAX_HEADER_VALUE_LEN, "{name}: value over the limit");
            }
            for value in f.claim_header_values().flatten() {
                assert!(header_value_is_clean(value));
            }
        }
        Decision::Respond(r) => {
            assert_eq!(r.reason(), Reason::ClaimHeaderInvalid, "refused for another reason: {:?}", r.reason());
        }
    }
});
