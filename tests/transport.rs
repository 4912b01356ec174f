//! How outbound calls are made, with real parts: a forward proxy on 127.0.0.1
//! (tests/node/forward-proxy.mjs, recording every CONNECT and what credentials it carried)
//! in front of oidc-provider, and a raw TCP authorization server that records request lines
//! and connections (HTTP version, keep-alive).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::*;
use mcp_oauth2::ffi::*;
use mcp_oauth2::{Config, Decision, Reason, Request, Step, UreqTransport, Validator};
use serde_json::{json, Value};

const PROXY_AUTHORIZATION: &str = "Basic dXNlcjpwYXNz";

fn validator(config: Value) -> (Validator, UreqTransport) {
    let cfg = Config::from_value(config).unwrap();
    let t = UreqTransport::new(&cfg);
    (Validator::new(cfg).unwrap(), t)
}

fn call(v: &Validator, t: &UreqTransport, token: &str) -> Decision {
    let auth = format!("Bearer {token}");
    v.authorize(&Request::new("POST", "/mcp").header("Authorization", &auth), t)
}

/// Introspection at `server` with `extra` on top.
fn introspecting(server: &AuthServer, extra: Value) -> Value {
    let mut v = config_json(&format!("{}/token/introspection", server.url), json!({}));
    v["authorization_servers"] = json!([server.url]);
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    v
}

fn connects(proxy: &ForwardProxy) -> Vec<Value> {
    proxy.log().into_iter().filter(|e| e["method"] == "CONNECT").collect()
}

fn authority(url: &str) -> String {
    url.split("://").nth(1).unwrap().trim_end_matches('/').to_owned()
}

#[test]
fn introspection_discovery_and_jwks_go_through_the_proxy_unless_no_proxy() {
    let server = AuthServer::start();
    let proxy = ForwardProxy::start(Some(PROXY_AUTHORIZATION));
    let via_proxy = json!({"http_proxy": proxy.url, "http_proxy_authorization": PROXY_AUTHORIZATION,
                           "keepalive": false, "cache_introspection": false});

    // Introspection.
    let token = server.token(Some(RESOURCE), "mcp:read");
    let (v, t) = validator(introspecting(&server, via_proxy.clone()));
    assert!(call(&v, &t, &token).is_forward());
    let log = connects(&proxy);
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0]["target"], authority(&server.url));
    assert_eq!(
        (log[0]["allowed"].clone(), log[0]["proxy_authorization"].clone()),
        (json!(true), json!(PROXY_AUTHORIZATION))
    );

    // Local JWT validation: discovery, then the key set, each its own tunnel (keepalive off).
    let resource = "http://127.0.0.1:8080/jwt/mcp";
    let mut jwt = introspecting(&server, via_proxy.clone());
    for field in ["introspection_endpoint", "client_id", "client_secret", "cache_introspection"] {
        jwt.as_object_mut().unwrap().remove(field);
    }
    jwt["resource"] = json!(resource);
    let (v, t) = validator(jwt);
    let token = server.token(Some(resource), "mcp:read");
    let auth = format!("Bearer {token}");
    assert!(v.authorize(&Request::new("POST", "/jwt/mcp").header("Authorization", &auth), &t).is_forward());
    let stats = server.stats();
    assert_eq!((stats["discovery"].as_u64(), stats["jwks"].as_u64()), (Some(1), Some(1)));
    assert_eq!(connects(&proxy).len(), 3, "introspection, discovery, key set: all through the proxy");

    // no_proxy: the AS host is reached directly.
    let mut direct = introspecting(&server, via_proxy.clone());
    direct["no_proxy"] = json!("localhost, 127.0.0.0/8");
    let (v, t) = validator(direct);
    assert!(call(&v, &t, &server.token(Some(RESOURCE), "mcp:read")).is_forward());
    assert_eq!(connects(&proxy).len(), 3, "no_proxy bypassed the proxy");

    // Wrong or missing proxy credentials: the proxy answers 407 → 503.
    let token = server.token(Some(RESOURCE), "mcp:read");
    for credentials in [Some("Basic d3Jvbmc6d3Jvbmc="), None] {
        let mut wrong = introspecting(&server, via_proxy.clone());
        match credentials {
            Some(c) => wrong["http_proxy_authorization"] = json!(c),
            None => drop(wrong.as_object_mut().unwrap().remove("http_proxy_authorization")),
        }
        let (v, t) = validator(wrong);
        let d = call(&v, &t, &token);
        let r = respond(&d);
        assert_eq!((r.status(), r.reason()), (503, Reason::AuthorizationServerUnavailable));
        assert_eq!(r.detail(), Some("introspection: connection failed"));
        let last = connects(&proxy).pop().unwrap();
        assert_eq!((last["allowed"].clone(), last["proxy_authorization"].clone()), (json!(false), json!(credentials)));
    }
}

#[test]
fn https_goes_through_a_connect_tunnel_with_mutual_tls_end_to_end() {
    let pki = TestPki::generate();
    let clients = json!([{"client_id": "gw-tls", "token_endpoint_auth_method": "tls_client_auth",
                          "tls_client_auth_san_dns": "gateway.test"}]);
    let mut env = pki.as_env();
    env.push(("AS_EXTRA_CLIENTS", clients.to_string()));
    let server = AuthServer::start_with(&env);
    let proxy = ForwardProxy::start(None);
    let config = introspecting(
        &server,
        json!({"client_secret": null, "client_id": "gw-tls", "client_auth": "tls_client_auth",
               "tls_client_auth_cert": pki.pem("client.crt"), "tls_client_auth_key": pki.pem("client.key"),
               "tls_client_auth_ssl_verify": false, "https_proxy": proxy.url,
               // http_proxy is not used for an https URL.
               "http_proxy": format!("http://127.0.0.1:{}", closed_port())}),
    );
    let (v, t) = validator(config.clone());
    assert!(call(&v, &t, &server.token(Some(RESOURCE), "mcp:read")).is_forward());
    let log = connects(&proxy);
    assert_eq!(log.len(), 1);
    assert_eq!(
        (log[0]["target"].clone(), log[0]["proxy_authorization"].clone()),
        (json!(authority(&server.url)), Value::Null)
    );

    // What a host doing its own I/O is told, through the C ABI.
    let mut with_auth = config;
    with_auth["https_proxy_authorization"] = json!(PROXY_AUTHORIZATION);
    let json = with_auth.to_string();
    let mut validator = std::ptr::null_mut();
    let authorization = "Bearer some-token";
    let headers = [mcp_oauth2_header {
        name: b"Authorization".as_ptr(),
        name_len: 13,
        value: authorization.as_ptr(),
        value_len: authorization.len(),
    }];
    let request = mcp_oauth2_request {
        method: b"POST".as_ptr(),
        method_len: 4,
        path: b"/mcp".as_ptr(),
        path_len: 4,
        headers: headers.as_ptr(),
        headers_len: 1,
        peer_addr: std::ptr::null(),
        peer_addr_len: 0,
        body: std::ptr::null(),
        body_len: 0,
    };
    let text = |s: &mcp_oauth2_str| {
        // SAFETY: a view handed out by the library, read while its pending lives.
        String::from_utf8(unsafe { std::slice::from_raw_parts(s.ptr.cast::<u8>(), s.len) }.to_vec()).unwrap()
    };
    // SAFETY: valid buffers and outputs; the views are read while the pending lives; each
    // handle is freed once.
    unsafe {
        assert_eq!(
            mcp_oauth2_validator_new(json.as_ptr(), json.len(), &mut validator, std::ptr::null_mut()),
            mcp_oauth2_result::Ok
        );
        let (mut decision, mut pending) = (std::ptr::null_mut(), std::ptr::null_mut());
        assert_eq!(
            mcp_oauth2_validator_begin(validator, &request, 0, &mut decision, &mut pending),
            mcp_oauth2_result::Ok
        );
        let (mut url, mut value) =
            (mcp_oauth2_str { ptr: std::ptr::null(), len: 0 }, mcp_oauth2_str { ptr: std::ptr::null(), len: 0 });
        assert_eq!(mcp_oauth2_pending_proxy_url(pending, &mut url), mcp_oauth2_result::Ok);
        assert_eq!(text(&url), proxy.url);
        assert_eq!(mcp_oauth2_pending_proxy_authorization(pending, &mut value), mcp_oauth2_result::Ok);
        assert_eq!(text(&value), PROXY_AUTHORIZATION);
        mcp_oauth2_pending_free(&mut pending);
        mcp_oauth2_validator_free(&mut validator);
    }
}

/// A raw HTTP server: answers every request with an active introspection response, records
/// each request head, and counts connections. HTTP/1.0 requests, and HTTP/1.1 ones with
/// `Connection: close`, get the connection closed after the response.
struct RawAs {
    url: String,
    heads: Arc<Mutex<Vec<String>>>,
    connections: Arc<AtomicUsize>,
}

impl RawAs {
    fn start() -> RawAs {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/introspect", listener.local_addr().unwrap());
        let heads = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (h, c) = (Arc::clone(&heads), Arc::clone(&connections));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                c.fetch_add(1, Ordering::SeqCst);
                let h = Arc::clone(&h);
                std::thread::spawn(move || serve(stream, &h));
            }
        });
        RawAs { url, heads, connections }
    }
}

fn serve(stream: std::net::TcpStream, heads: &Mutex<Vec<String>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    loop {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        let lower = head.to_ascii_lowercase();
        let length = lower
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse::<usize>().unwrap());
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let http10 = head.lines().next().unwrap().ends_with("HTTP/1.0");
        let close = http10 || lower.contains("connection: close");
        heads.lock().unwrap().push(head);
        let answer = json!({"active": true, "aud": RESOURCE}).to_string();
        let version = if http10 { "HTTP/1.0" } else { "HTTP/1.1" };
        let response = format!(
            "{version} 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{answer}",
            answer.len()
        );
        if out.write_all(response.as_bytes()).is_err() || close {
            return;
        }
    }
}

#[test]
fn http_version_and_keepalive_are_honoured() {
    for (extra, version, connections) in [
        (json!({}), "HTTP/1.1", 1),
        (json!({"keepalive": false}), "HTTP/1.1", 3),
        (json!({"http_version": 1.0}), "HTTP/1.0", 3),
        (json!({"http_version": "1.0", "keepalive": false}), "HTTP/1.0", 3),
    ] {
        let raw = RawAs::start();
        let mut config = config_json(&raw.url, json!({"cache_introspection": false}));
        for (k, x) in extra.as_object().unwrap() {
            config[k] = x.clone();
        }
        let (v, t) = validator(config.clone());
        for _ in 0..3 {
            assert!(call(&v, &t, "opaque-token").is_forward(), "{extra}");
        }
        let heads = raw.heads.lock().unwrap().clone();
        assert_eq!(heads.len(), 3);
        for head in &heads {
            let line = head.lines().next().unwrap();
            assert_eq!(line, format!("POST /introspect {version}"), "{extra}");
        }
        assert_eq!(raw.connections.load(Ordering::SeqCst), connections, "{extra}: connections");
        // The request a host doing its own I/O is handed says the same.
        let auth = "Bearer fresh-token";
        let Step::Need(http, _p) =
            v.begin(&Request::new("POST", "/mcp").header("Authorization", auth), std::time::SystemTime::now())
        else {
            panic!()
        };
        assert_eq!(http.keepalive, config.get("keepalive").is_none(), "{extra}");
        assert_eq!(format!("{:?}", http.http_version).contains("10"), version == "HTTP/1.0");
    }
}
