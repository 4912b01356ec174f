//! JWT + JWKS parsing and verification with fixed keys (tests/testdata/jwt-keys.json: the
//! Ed25519 key signs, a P-256 key sits beside it in the set). Whatever the validator
//! allows, the reference verifier — the `jsonwebtoken` crate called directly with the
//! contract's rules (behaviour.md §4: alg allow-list, signature, `exp` required, `nbf`,
//! `iat`, `iss`, `aud`, access tokens only), leeway 0, the same fixed `now` — must accept.
//!
//! The first byte chooses what is fuzzed:
//! - 0: the token itself (the rest of the input, as `Bearer <rest>`), fixed key set;
//! - 1: a JOSE header and a claims set (two sections, `\n--\n` between), signed with the
//!   fixed Ed25519 key, fixed key set;
//! - 2: the key set (the rest of the input as the JWKS body), with a fixed valid token:
//!   allowed only if that set holds the signing key;
//! - 3: the authorization-server metadata found by discovery (the rest of the input),
//!   then the fixed key set: allowed only if the metadata names our issuer.
#![no_main]

use std::sync::LazyLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Validation};
use libfuzzer_sys::fuzz_target;
use mcp_oauth2::{Decision, HttpResponse, Purpose, Request, Step, Validator};
use mcp_oauth2_fuzz::{
    audience_names, discovery_config, is_access_token, jwks_config, now, sections, validator, ISSUER, JWKS_URL,
    NOW_SECS, RESOURCE,
};
use serde_json::{json, Map, Value};

struct Keys {
    signing: EncodingKey,
    ed_x: String,
    ec_x: String,
    ec_y: String,
    jwks: String,
    /// A token every rule accepts (at+jwt typed, for the discovery configuration too).
    valid_token: String,
}

static KEYS: LazyLock<Keys> = LazyLock::new(|| {
    let all: Value = serde_json::from_str(include_str!("../../tests/testdata/jwt-keys.json")).unwrap();
    let ed = &all["ed25519"];
    let ec = &all["ec-p256"]["public_jwk"];
    let signing = EncodingKey::from_ed_pem(ed["private_pem"].as_str().unwrap().as_bytes()).unwrap();
    let text = |v: &Value| v.as_str().unwrap().to_owned();
    let (ed_x, ec_x, ec_y) = (text(&ed["public_jwk"]["x"]), text(&ec["x"]), text(&ec["y"]));
    let jwks = json!({"keys": [
        {"kty": "OKP", "crv": "Ed25519", "x": ed_x, "kid": "k1", "use": "sig", "alg": "EdDSA"},
        {"kty": "EC", "crv": "P-256", "x": ec_x, "y": ec_y, "kid": "k2", "use": "sig"},
    ]})
    .to_string();
    let header = json!({"alg": "EdDSA", "kid": "k1", "typ": "at+jwt"});
    let claims = json!({"iss": ISSUER, "aud": RESOURCE, "sub": "alice", "exp": NOW_SECS + 600, "iat": NOW_SECS - 5});
    let valid_token = sign(&signing, header.to_string().as_bytes(), claims.to_string().as_bytes());
    Keys { signing, ed_x, ec_x, ec_y, jwks, valid_token }
});

/// A compact JWS over exactly these header and payload bytes.
fn sign(key: &EncodingKey, header: &[u8], payload: &[u8]) -> String {
    let input = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(payload));
    let signature = jsonwebtoken::crypto::sign(input.as_bytes(), key, Algorithm::EdDSA).unwrap();
    format!("{input}.{signature}")
}

/// The reference verifier: true if some fixed key verifies `token` under the contract's
/// rules (kid ignored: a more lenient reading, never a stricter one).
fn reference_accepts(token: &str, require_at_jwt: bool) -> bool {
    let Ok(header) = jsonwebtoken::decode_header(token) else { return false };
    let Some(raw_header) = token.split('.').next().and_then(|h| URL_SAFE_NO_PAD.decode(h).ok()) else {
        return false;
    };
    let Ok(Value::Object(raw_header)) = serde_json::from_slice::<Value>(&raw_header) else { return false };
    if raw_header.contains_key("crit") {
        return false;
    }
    if require_at_jwt {
        let typ = raw_header.get("typ").and_then(Value::as_str).unwrap_or_default().to_ascii_lowercase();
        if typ != "at+jwt" && typ != "application/at+jwt" {
            return false;
        }
    }
    let keys = &*KEYS;
    let key = match header.alg {
        Algorithm::EdDSA => DecodingKey::from_ed_components(&keys.ed_x),
        Algorithm::ES256 => DecodingKey::from_ec_components(&keys.ec_x, &keys.ec_y),
        _ => return false,
    };
    let Ok(key) = key else { return false };
    let mut validation = Validation::new(header.alg);
    validation.validate_exp = false; // times: checked below against the fixed `now`
    validation.validate_nbf = false;
    validation.set_audience(&[RESOURCE]);
    validation.set_issuer(&[ISSUER]);
    validation.set_required_spec_claims(&["exp", "iss", "aud"]);
    let Ok(data) = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation) else { return false };
    let claims = data.claims;
    let now = NOW_SECS as f64;
    let number = |name: &str| claims.get(name).map(Value::as_f64);
    let exp_ok = matches!(number("exp"), Some(Some(e)) if e > now);
    let nbf_ok = matches!(number("nbf"), None | Some(Some(_))) && number("nbf").flatten().is_none_or(|n| n <= now);
    let iat_ok = matches!(number("iat"), None | Some(Some(_))) && number("iat").flatten().is_none_or(|i| i <= now);
    exp_ok
        && nbf_ok
        && iat_ok
        && claims.get("iss").and_then(Value::as_str) == Some(ISSUER)
        && audience_names(claims.get("aud"), RESOURCE)
        && is_access_token(&claims)
}

fn json_response(body: impl Into<Vec<u8>>) -> HttpResponse {
    HttpResponse::new(200, "application/json", body)
}

/// For the fixed key set: built once, without a token cache (`cache_introspection: false`),
/// so only the fixed key set is kept from one input to the next.
static FIXED_KEYS: LazyLock<Validator> = LazyLock::new(|| {
    let mut config = jwks_config();
    config["cache_introspection"] = Value::Bool(false);
    validator(&config)
});

/// Runs `token` through `validator`, answering the discovery step with `metadata` and the
/// key-set steps with `jwks`.
fn decide(validator: &Validator, token: &str, metadata: &[u8], jwks: &[u8]) -> Option<Decision> {
    let authorization = format!("Bearer {token}");
    let req = Request::new("GET", "/mcp").header("Authorization", &authorization);
    let mut step = validator.begin(&req, now());
    for _ in 0..8 {
        match step {
            Step::Done(d) => return Some(d),
            Step::Need(http, pending) => {
                let answer = match http.purpose {
                    Purpose::Discovery => json_response(metadata),
                    Purpose::Jwks => json_response(jwks),
                    other => panic!("unexpected call: {other:?}"),
                };
                step = pending.resume(Ok(answer), now());
            }
            Step::Wait(_) => panic!("a single-threaded run never waits"),
        }
    }
    None
}

fn metadata_doc() -> Vec<u8> {
    json!({"issuer": ISSUER, "jwks_uri": JWKS_URL}).to_string().into_bytes()
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let keys = &*KEYS;
    match mode % 4 {
        0 | 1 => {
            let token = if mode % 4 == 0 {
                let Ok(token) = std::str::from_utf8(rest) else { return };
                token.to_owned()
            } else {
                let parts = sections(rest, 2);
                let (header, claims) = (parts[0], parts.get(1).copied().unwrap_or_default());
                sign(&keys.signing, header, claims)
            };
            let Some(decision) = decide(&FIXED_KEYS, &token, &metadata_doc(), keys.jwks.as_bytes()) else {
                panic!("the decision did not settle")
            };
            if decision.is_forward() {
                assert!(reference_accepts(&token, false), "allowed a token the reference verifier refuses");
            }
        }
        2 => {
            let decision =
                decide(&validator(&jwks_config()), &keys.valid_token, &metadata_doc(), rest).expect("settles");
            if decision.is_forward() {
                let has_key =
                    serde_json::from_slice::<Value>(rest).is_ok_and(|v| v.to_string().contains(&keys.ed_x[..32]));
                assert!(has_key, "allowed with a key set that does not hold the signing key");
            }
        }
        _ => {
            let fresh = validator(&discovery_config());
            let decision = decide(&fresh, &keys.valid_token, rest, keys.jwks.as_bytes()).expect("settles");
            if decision.is_forward() {
                let issuer = serde_json::from_slice::<Value>(rest).ok().and_then(|v| v.get("issuer").cloned());
                assert_eq!(issuer, Some(Value::String(ISSUER.to_owned())), "allowed on metadata of another issuer");
                assert!(reference_accepts(&keys.valid_token, true));
            }
        }
    }
});
