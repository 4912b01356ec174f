//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::net::TcpListener;
use std::time::{SystemTime, UNIX_EPOCH};

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
