//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;

use mcp_oauth2::{Decision, Forward, Response};
use serde_json::Value;

pub const RESOURCE: &str = "http://127.0.0.1:8080/mcp";

pub fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// A JSON config for `resource` with introspection at `introspection_url`, merged with `extra`
/// (a `null` member in `extra` removes the field).
pub fn config_json(introspection_url: &str, extra: Value) -> Value {
    let mut v = serde_json::json!({
        "resource": RESOURCE,
        "authorization_servers": ["http://127.0.0.1:9400"],
        "introspection_endpoint": introspection_url,
        "client_id": "gateway",
        "client_secret": "gateway-secret",
    });
    for (k, x) in extra.as_object().expect("extra is an object") {
        if x.is_null() {
            v.as_object_mut().unwrap().remove(k);
        } else {
            v[k] = x.clone();
        }
    }
    v
}

/// A port on 127.0.0.1 that nothing listens on (bound, then released).
pub fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

pub fn respond(d: &Decision) -> &Response {
    d.as_response().unwrap_or_else(|| panic!("expected a response, got {d:?}"))
}

pub fn forward(d: &Decision) -> &Forward {
    d.as_forward().unwrap_or_else(|| panic!("expected a forward, got {d:?}"))
}

pub fn body_json(r: &Response) -> Value {
    serde_json::from_slice(r.body()).expect("response body is JSON")
}

pub fn set_headers(f: &Forward) -> Vec<(String, String)> {
    f.set_headers().map(|(n, v)| (n.to_owned(), v.to_owned())).collect()
}

/// The oidc-provider process; killed when dropped.
pub struct AuthServer {
    child: Child,
    /// The issuer URL, `http://127.0.0.1:<port>`.
    pub url: String,
}

impl AuthServer {
    pub fn start() -> AuthServer {
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
    pub fn token(&self, resource: Option<&str>, scope: &str) -> String {
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

    pub fn revoke(&self, token: &str) {
        let basic = base64::engine::general_purpose::STANDARD.encode("app:app-secret");
        let resp = ureq::post(format!("{}/token/revocation", self.url))
            .header("Authorization", format!("Basic {basic}"))
            .send_form([("token", token), ("token_type_hint", "access_token")])
            .expect("revocation");
        assert_eq!(resp.status(), 200);
    }

    pub fn introspections(&self) -> u64 {
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

impl AuthServer {
    /// The AS's request counters (`/__test/stats`).
    pub fn stats(&self) -> Value {
        let mut resp = ureq::get(format!("{}/__test/stats", self.url)).call().unwrap();
        serde_json::from_slice(&resp.body_mut().read_to_vec().unwrap()).unwrap()
    }
}
