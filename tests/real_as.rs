//! Against a real authorization server: oidc-provider (npm), started on 127.0.0.1 by the
//! test. Needs `npm ci --prefix tests/node` first; without it these tests fail (never skip).

mod common;

use std::time::Duration;

use common::*;
use mcp_oauth2::{Config, Reason, Request, UreqTransport, Validator};
use serde_json::{json, Value};

fn validator(server: &AuthServer, extra: Value) -> (Validator, UreqTransport) {
    let mut v = config_json(&format!("{}/token/introspection", server.url), extra);
    v["authorization_servers"] = json!([server.url]);
    let cfg = Config::from_value(v).unwrap();
    let t = UreqTransport::new(&cfg);
    (Validator::new(cfg).unwrap(), t)
}

fn call(v: &Validator, t: &UreqTransport, token: &str) -> mcp_oauth2::Decision {
    let auth = format!("Bearer {token}");
    v.authorize(&Request::new("POST", "/mcp").header("Authorization", &auth), t)
}

#[test]
fn real_authorization_server_end_to_end() {
    let server = AuthServer::start();
    let (v, t) = validator(
        &server,
        json!({"scopes_required": ["mcp:read"],
               "claim_to_header": [{"claim": "client_id", "header": "X-Client-Id"}, {"claim": "scope", "header": "X-Scope"}]}),
    );

    // A token issued for our resource is allowed, with mapped claims.
    let good = server.token(Some(RESOURCE), "mcp:read mcp:write");
    let d = call(&v, &t, &good);
    let f = forward(&d);
    assert_eq!(set_headers(f), [("X-Client-Id".into(), "app".into()), ("X-Scope".into(), "mcp:read mcp:write".into())]);
    assert!(f.valid_until_unix() > Some(now()));
    let before = server.introspections();
    assert!(call(&v, &t, &good).is_forward());
    assert_eq!(server.introspections(), before, "the second request is a cache hit");

    // Issued for another resource, or for none: 401 invalid_token.
    let other = server.token(Some("http://127.0.0.1:8080/other"), "mcp:read");
    assert_eq!(respond(&call(&v, &t, &other)).reason(), Reason::AudienceMismatch);
    let no_aud = server.token(None, "mcp:read");
    assert_eq!(respond(&call(&v, &t, &no_aud)).reason(), Reason::AudienceMismatch);

    // Lacking the required scope: 403 insufficient_scope.
    let narrow = server.token(Some(RESOURCE), "mcp:write");
    let d = call(&v, &t, &narrow);
    assert_eq!((respond(&d).status(), respond(&d).reason()), (403, Reason::InsufficientScope));

    // Revoked: still cached until evicted, then 401.
    server.revoke(&good);
    assert!(call(&v, &t, &good).is_forward(), "cached until evicted or expired");
    assert!(v.evict(&good));
    assert_eq!(respond(&call(&v, &t, &good)).reason(), Reason::TokenInactive);

    // A garbage token is inactive at the AS.
    assert_eq!(respond(&call(&v, &t, "not-a-real-token")).reason(), Reason::TokenInactive);
}

#[test]
fn revoked_token_is_rejected_after_cache_expiry() {
    let server = AuthServer::start();
    let (v, t) = validator(&server, json!({"cache_ttl_max": 1}));
    let token = server.token(Some(RESOURCE), "mcp:read");
    assert!(call(&v, &t, &token).is_forward());
    server.revoke(&token);
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(respond(&call(&v, &t, &token)).reason(), Reason::TokenInactive);
}

#[test]
fn client_secret_post_against_the_real_server() {
    let server = AuthServer::start();
    let (v, t) = validator(
        &server,
        json!({"client_id": "gateway-post", "client_secret": "gateway-post-secret", "client_auth": "client_secret_post"}),
    );
    let token = server.token(Some(RESOURCE), "mcp:read");
    assert!(call(&v, &t, &token).is_forward());
    // The AS enforces the registered method: basic for this client is refused → 503, not 401.
    let (v, t) = validator(&server, json!({"client_id": "gateway-post", "client_secret": "gateway-post-secret"}));
    assert_eq!(respond(&call(&v, &t, &token)).status(), 503);
    // Wrong credentials: the AS answers 401 to us; the client gets 503 (never a re-auth loop).
    let (v, t) = validator(&server, json!({"client_secret": "wrong"}));
    assert_eq!(respond(&call(&v, &t, &token)).status(), 503);
}

#[test]
fn stopped_authorization_server_is_503() {
    let server = AuthServer::start();
    let (v, t) = validator(&server, json!({}));
    let token = server.token(Some(RESOURCE), "mcp:read");
    assert!(call(&v, &t, &token).is_forward());
    assert!(v.evict(&token));
    drop(server);
    let d = call(&v, &t, &token);
    let r = respond(&d);
    assert_eq!(
        (r.status(), r.reason(), r.header("WWW-Authenticate")),
        (503, Reason::AuthorizationServerUnavailable, None)
    );
}
