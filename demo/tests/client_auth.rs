//! The demo proxy's own HTTP client with the client authentication methods that need more
//! than a header or form fields from it: RFC 8705 mutual TLS (`tls_client_auth`: it
//! presents the configured certificate) and RFC 7523 `private_key_jwt` (the library signs
//! the assertion; the proxy sends it), against the real oidc-provider serving https; and
//! `http_version: 1.0`; forward proxies (`http_proxy`, `https_proxy`: a `CONNECT` tunnel).
//!
//! Needs `openssl` (the test PKI) and `npm ci --prefix tests/node`.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// A CA, a server certificate for 127.0.0.1 (self-signed), and two client certificates the
/// CA issued: `client` (SAN DNS gateway.test, the one the AS expects) and `other`.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn generate() -> Pki {
        let dir = std::env::temp_dir().join(format!(
            "demo-pki-{}-{}",
            std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let run = |args: &[&str]| {
            let out = Command::new("openssl").args(args).current_dir(&dir).output().expect("openssl runs");
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        let key =
            |name: &str| run(&["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", &format!("{name}.key")]);
        for (name, subject, ext) in [
            ("ca", "/CN=demo test CA", "basicConstraints=critical,CA:TRUE"),
            ("as", "/CN=127.0.0.1", "subjectAltName=IP:127.0.0.1"),
        ] {
            key(name);
            let (k, c) = (format!("{name}.key"), format!("{name}.crt"));
            run(&["req", "-x509", "-new", "-key", &k, "-out", &c, "-days", "2", "-subj", subject, "-addext", ext]);
        }
        for (name, dns) in [("client", "gateway.test"), ("other", "other.test")] {
            key(name);
            let (k, csr, c, ext) =
                (format!("{name}.key"), format!("{name}.csr"), format!("{name}.crt"), format!("{name}.ext"));
            run(&["req", "-new", "-key", &k, "-out", &csr, "-subj", &format!("/CN={dns}")]);
            std::fs::write(dir.join(&ext), format!("subjectAltName=DNS:{dns}\n")).unwrap();
            run(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &c,
                "-days",
                "2",
                "-extfile",
                &ext,
            ]);
        }
        Pki { dir }
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).to_str().unwrap().to_owned()
    }

    fn pem(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.join(file)).unwrap()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A fresh P-256 private JWK from Node.
fn fresh_ec_jwk() -> Value {
    let script = "const {generateKeyPairSync} = require('node:crypto'); \
                  const {privateKey} = generateKeyPairSync('ec', {namedCurve: 'P-256'}); \
                  process.stdout.write(JSON.stringify({...privateKey.export({format: 'jwk'}), kid: 'demo-ec-1'}));";
    let out = Command::new("node").args(["-e", script]).output().expect("node runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn with(mut config: Value, extra: Value) -> Value {
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            config.as_object_mut().unwrap().remove(k);
        } else {
            config[k] = v.clone();
        }
    }
    config
}

#[test]
fn mutual_tls_and_private_key_jwt_through_the_proxys_own_client() {
    let pki = Pki::generate();
    let jwk = fresh_ec_jwk();
    let mut public = jwk.clone();
    public.as_object_mut().unwrap().remove("d");
    let clients = json!([
        {"client_id": "gw-tls", "token_endpoint_auth_method": "tls_client_auth", "tls_client_auth_san_dns": "gateway.test"},
        {"client_id": "gw-pkjwt", "token_endpoint_auth_method": "private_key_jwt",
         "token_endpoint_auth_signing_alg": "ES256", "jwks": {"keys": [public]}},
    ]);
    let oidc = Oidc::start_with(&[
        ("AS_EXTRA_CLIENTS", clients.to_string()),
        ("AS_TLS_CERT", pki.path("as.crt")),
        ("AS_TLS_KEY", pki.path("as.key")),
        ("AS_TLS_CA", pki.path("ca.crt")),
    ]);
    let (_upstream, up_url) = echo_upstream();
    let base = introspection_config(&oidc);
    let token = oidc.token();

    // tls_client_auth with the certificate the AS expects (its own certificate is
    // self-signed: tls_client_auth_ssl_verify false).
    let mtls = |cert: &str| {
        with(
            base.clone(),
            json!({"client_id": "gw-tls", "client_secret": null, "client_auth": "tls_client_auth",
                   "tls_client_auth_cert": pki.pem(&format!("{cert}.crt")),
                   "tls_client_auth_key": pki.pem(&format!("{cert}.key")),
                   "tls_client_auth_ssl_verify": false}),
        )
    };
    let (node, url) = proxy(&mtls("client"), &up_url, &[]);
    assert_eq!(ping(&agent(), &url, &token), 200, "{:?}", node.log());
    let last = oidc.introspection_requests().last().cloned().unwrap();
    assert_eq!(
        (last["client_id"].as_str(), last["client_certificate"].as_str()),
        (Some("gw-tls"), Some("gateway.test"))
    );
    assert_eq!(last["status"], 200);
    assert!(!node.log().join("\n").contains("PRIVATE KEY"));

    // The same through an https_proxy: TLS (with the client certificate) inside the tunnel.
    let fp = ForwardProxy::start(None);
    let (node, url) = proxy(&with(mtls("client"), json!({"https_proxy": fp.url})), &up_url, &[]);
    assert_eq!(ping(&agent(), &url, &oidc.token()), 200, "{:?}", node.log());
    let last = oidc.introspection_requests().last().cloned().unwrap();
    assert_eq!(last["client_certificate"].as_str(), Some("gateway.test"));
    let tunnels = fp.log();
    assert_eq!((tunnels.len(), tunnels[0]["method"].as_str()), (1, Some("CONNECT")), "{tunnels:?}");

    // Another certificate of the same CA: the AS refuses the client, so 503 (never 401).
    let (node, url) = proxy(&mtls("other"), &up_url, &[]);
    assert_eq!(ping(&agent(), &url, &token), 503);
    let last = oidc.introspection_requests().last().cloned().unwrap();
    assert_eq!(last["client_certificate"].as_str(), Some("other.test"));
    let line = node.wait_log(" POST /mcp 503 authorization_server_unavailable", Duration::from_secs(3));
    assert!(line.is_some(), "{:?}", node.log());

    // private_key_jwt: the assertion the library signs, sent by the proxy (ssl_verify false
    // for the self-signed AS, with its warning).
    let config = with(
        base.clone(),
        json!({"client_id": "gw-pkjwt", "client_secret": null, "client_auth": "private_key_jwt",
               "client_jwk": jwk, "ssl_verify": false}),
    );
    let (node, url) = proxy(&config, &up_url, &[]);
    assert_eq!(ping(&agent(), &url, &oidc.token()), 200, "{:?}", node.log());
    let assertion = oidc.assertions().last().cloned().unwrap();
    assert_eq!(
        (assertion["client_id"].as_str(), assertion["alg"].as_str(), assertion["accepted"].as_bool()),
        (Some("gw-pkjwt"), Some("ES256"), Some(true))
    );

    // http_version 1.0 and keepalive false, as the configuration says.
    let config = with(base.clone(), json!({"http_version": 1.0, "keepalive": false, "ssl_verify": false}));
    let (node, url) = proxy(&config, &up_url, &[]);
    assert_eq!(ping(&agent(), &url, &oidc.token()), 200, "{:?}", node.log());
    let last = oidc.introspection_requests().last().cloned().unwrap();
    assert_eq!((last["http_version"].as_str(), last["connection"].as_str()), (Some("1.0"), Some("close")));
}

/// `http_proxy` with its `Proxy-Authorization`: the AS calls go through the proxy's
/// `CONNECT` tunnel; a wrong authorization (407) is a 503; `no_proxy` goes direct.
#[test]
fn forward_proxy_tunnels_the_authorization_server_calls() {
    let oidc = Oidc::start();
    let (_upstream, up_url) = echo_upstream();
    let auth = "Basic cHJveHktdXNlcjpwcm94eS1wYXNz";
    let fp = ForwardProxy::start(Some(auth));
    let as_target = oidc.url.trim_start_matches("http://").to_owned();
    let base = introspection_config(&oidc);

    let (node, url) =
        proxy(&with(base.clone(), json!({"http_proxy": fp.url, "http_proxy_authorization": auth})), &up_url, &[]);
    assert_eq!(ping(&agent(), &url, &oidc.token()), 200, "{:?}", node.log());
    let log = fp.log();
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(
        (
            log[0]["method"].as_str(),
            log[0]["target"].as_str(),
            log[0]["proxy_authorization"].as_str(),
            log[0]["allowed"].as_bool()
        ),
        (Some("CONNECT"), Some(as_target.as_str()), Some(auth), Some(true))
    );
    assert!(!node.log().join("\n").contains(auth));

    let wrong = with(base.clone(), json!({"http_proxy": fp.url, "http_proxy_authorization": "Basic d3Jvbmc6d3Jvbmc="}));
    let (node, url) = proxy(&wrong, &up_url, &[]);
    assert_eq!(ping(&agent(), &url, &oidc.token()), 503);
    assert_eq!(fp.log().last().unwrap()["allowed"].as_bool(), Some(false));
    assert!(node.wait_log(" POST /mcp 503 authorization_server_unavailable", Duration::from_secs(3)).is_some());

    let direct = with(base, json!({"http_proxy": fp.url, "http_proxy_authorization": auth, "no_proxy": "127.0.0.1"}));
    let (_node, url) = proxy(&direct, &up_url, &[]);
    let before = fp.log().len();
    assert_eq!(ping(&agent(), &url, &oidc.token()), 200);
    assert_eq!(fp.log().len(), before, "no_proxy: straight to the AS");
}
