//! Against a real authorization server: oidc-provider (npm), started on 127.0.0.1 by the
//! test. Needs `npm ci --prefix tests/node` first; without it these tests fail (never skip).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use common::*;
use mcp_oauth2::{Config, Reason, Request, UreqTransport, Validator};
use serde_json::{json, Value};

/// The oidc-provider process; killed when dropped.
struct AuthServer {
    child: Child,
    url: String,
}

impl AuthServer {
    fn start() -> AuthServer {
        let root = env!("CARGO_MANIFEST_DIR");
        assert!(
            std::path::Path::new(&format!("{root}/tests/node/node_modules/oidc-provider")).exists(),
            "tests/node/node_modules is missing: run `npm ci --prefix tests/node` first"
        );
        // A node process has been seen (once, under heavy load) to hang before listening:
        // bound the wait and start a fresh process instead of hanging the suite.
        for _ in 0..3 {
            let mut child = Command::new("node")
                .arg(format!("{root}/tests/node/as-server.mjs"))
                .env("AS_PORT", "0")
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("node runs");
            let stdout = child.stdout.take().unwrap();
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let mut line = String::new();
                let _ = BufReader::new(stdout).read_line(&mut line);
                let _ = tx.send(line);
            });
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(line) if line.starts_with("LISTENING ") => {
                    let port = line.trim().trim_start_matches("LISTENING ").to_owned();
                    return AuthServer { child, url: format!("http://127.0.0.1:{port}") };
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
        panic!("the oidc-provider test server did not start (3 attempts)");
    }

    /// A client_credentials token for `app`, bound to `resource` when given.
    fn token(&self, resource: Option<&str>, scope: &str) -> String {
        let mut form = vec![("grant_type", "client_credentials"), ("scope", scope)];
        if let Some(r) = resource {
            form.push(("resource", r));
        }
        let basic = base64::engine::general_purpose::STANDARD.encode("app:app-secret");
        let mut resp = ureq::post(format!("{}/token", self.url))
            .header("Authorization", format!("Basic {basic}"))
            .send_form(form)
            .expect("token request");
        let body: Value = serde_json::from_slice(&resp.body_mut().read_to_vec().unwrap()).unwrap();
        body["access_token"].as_str().expect("access_token").to_owned()
    }

    fn revoke(&self, token: &str) {
        let basic = base64::engine::general_purpose::STANDARD.encode("app:app-secret");
        let resp = ureq::post(format!("{}/token/revocation", self.url))
            .header("Authorization", format!("Basic {basic}"))
            .send_form([("token", token), ("token_type_hint", "access_token")])
            .expect("revocation");
        assert_eq!(resp.status(), 200);
    }

    fn introspections(&self) -> u64 {
        let mut resp = ureq::get(format!("{}/__test/stats", self.url)).call().unwrap();
        let stats: Value = serde_json::from_slice(&resp.body_mut().read_to_vec().unwrap()).unwrap();
        stats["introspections"].as_u64().unwrap()
    }
}

impl Drop for AuthServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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
    assert!(f.valid_until_unix() > now());
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
