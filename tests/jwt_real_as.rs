//! Local JWT validation against a real authorization server: oidc-provider
//! (`tests/node/as-server.mjs`) issues RFC 9068 `at+jwt` access tokens (RS256 for a resource
//! path containing `/jwt`, ES256 for `/jwt-es256`); the validator is given only the issuer
//! URL and finds the keys through metadata discovery (no `jwks_endpoint`).
//!
//! Needs `npm ci --prefix tests/node` first. Without `tests/node/node_modules` these tests
//! FAIL (they never skip).

mod common;

use base64::Engine as _;
use common::AuthServer;
use mcp_oauth2::{Decision, Request, UreqTransport, Validator};
use serde_json::{json, Value};

fn jose_header(token: &str) -> Value {
    let h = token.split('.').next().unwrap();
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(h).unwrap()).unwrap()
}

fn validator(issuer: &str, resource: &str) -> Validator {
    let config = json!({
        "resource": resource,
        "authorization_servers": [issuer],
        "access_token_type": "at+jwt",
        "scopes_required": ["mcp:read"],
        "claim_to_header": [{"claim": "client_id", "header": "X-Client-Id"}],
        "timeout": 5000
    });
    Validator::from_json(&config.to_string()).unwrap()
}

fn authorize(v: &Validator, token: &str) -> Decision {
    let auth = format!("Bearer {token}");
    let req = Request::new("POST", "/jwt/mcp").header("Authorization", &auth);
    v.authorize(&req, &UreqTransport::new(v.config()))
}

#[test]
fn rs256_and_es256_access_tokens_validate_through_discovery() {
    let server = AuthServer::start();
    for (resource, alg, kid) in [
        ("http://127.0.0.1:8080/jwt/mcp", "RS256", "test-rsa-1"),
        ("http://127.0.0.1:8080/jwt-es256/mcp", "ES256", "test-ec-1"),
    ] {
        let v = validator(&server.url, resource);
        let before = server.stats();
        let token = server.token(Some(resource), "mcp:read mcp:write");
        let header = jose_header(&token);
        assert_eq!((header["alg"].as_str(), header["kid"].as_str()), (Some(alg), Some(kid)));
        assert_eq!(header["typ"], "at+jwt");

        match authorize(&v, &token) {
            Decision::Forward(f) => {
                assert_eq!(f.set_headers().collect::<Vec<_>>(), [("X-Client-Id", "app")]);
                assert_eq!(f.identity().scope(), Some("mcp:read mcp:write"));
                assert!(f.valid_until_unix() > Some(0));
            }
            Decision::Respond(r) => panic!("{alg}: {} {} {:?}", r.status(), r.reason(), r.detail()),
        }
        let after = server.stats();
        let delta = |k: &str| after[k].as_u64().unwrap() - before[k].as_u64().unwrap();
        // The issuer has no path: RFC 8414 document first, found at once.
        assert_eq!(delta("discovery"), 1, "{alg}");
        assert_eq!(delta("jwks"), 1, "{alg}");
        assert_eq!(delta("introspections"), 0, "{alg}: validated locally");

        // A second token: keys and metadata are cached, no AS call at all.
        let second = server.token(Some(resource), "mcp:read");
        assert!(authorize(&v, &second).is_forward());
        let later = server.stats();
        assert_eq!(later["discovery"], after["discovery"]);
        assert_eq!(later["jwks"], after["jwks"]);
    }
}

#[test]
fn real_tokens_are_rejected_for_another_audience_or_scope() {
    let server = AuthServer::start();
    let v = validator(&server.url, "http://127.0.0.1:8080/jwt/mcp");
    let other = server.token(Some("http://127.0.0.1:8080/jwt/other"), "mcp:read");
    let d = authorize(&v, &other);
    assert_eq!((d.reason().as_str(), d.as_response().unwrap().status()), ("audience_mismatch", 401));
    let no_scope = server.token(Some("http://127.0.0.1:8080/jwt/mcp"), "mcp:write");
    let d = authorize(&v, &no_scope);
    assert_eq!(d.as_response().unwrap().status(), 403, "{:?}", d.reason());
    // An opaque token cannot be validated locally.
    let opaque = server.token(Some("http://127.0.0.1:8080/mcp"), "mcp:read");
    let d = authorize(&v, &opaque);
    assert_eq!((d.reason().as_str(), d.as_response().unwrap().status()), ("token_malformed", 401));

    // A validator for another issuer does not trust this AS's tokens.
    let mut config = v.config().clone();
    config.authorization_servers = vec!["http://127.0.0.1:1".into()];
    config.metadata_discovery_endpoint = Some(format!("{}/.well-known/openid-configuration", server.url));
    config.issuers = Some(vec!["https://someone-else.example".into()]);
    let strict = Validator::new(config).unwrap();
    let good = server.token(Some("http://127.0.0.1:8080/jwt/mcp"), "mcp:read");
    assert_eq!(authorize(&strict, &good).reason().as_str(), "issuer_mismatch");
}
