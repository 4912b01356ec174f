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

/// Starts `node tests/node/<script>` with `env`, waits for its `LISTENING <port>` line
/// and returns the process and the port.
fn start_node(script: &str, env: &[(&str, String)]) -> (Child, u16) {
    let root = env!("CARGO_MANIFEST_DIR");
    assert!(
        std::path::Path::new(&format!("{root}/tests/node/node_modules/oidc-provider")).exists(),
        "tests/node/node_modules is missing: run `npm ci --prefix tests/node` first"
    );
    // A node process has been seen (once, under heavy load) to hang before listening:
    // bound the wait and start a fresh process instead of hanging the suite.
    for _ in 0..3 {
        let mut cmd = Command::new("node");
        cmd.arg(format!("{root}/tests/node/{script}")).stdout(Stdio::piped()).stderr(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("node runs");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) if line.starts_with("LISTENING ") => {
                let port = line.trim().trim_start_matches("LISTENING ").parse().expect("a port");
                return (child, port);
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
    panic!("node {script} did not start (3 attempts)");
}

/// The oidc-provider process; killed when dropped.
pub struct AuthServer {
    child: Child,
    /// The issuer URL, `http://127.0.0.1:<port>` (`https://` with TLS).
    pub url: String,
}

impl AuthServer {
    pub fn start() -> AuthServer {
        AuthServer::start_with(&[])
    }

    /// Started with extra environment (`AS_EXTRA_CLIENTS`, `AS_TLS_*`, ...).
    pub fn start_with(env: &[(&str, String)]) -> AuthServer {
        let mut all = vec![("AS_PORT", "0".to_owned())];
        all.extend(env.iter().cloned());
        let tls = env.iter().any(|(k, _)| *k == "AS_TLS_CERT");
        let (child, port) = start_node("as-server.mjs", &all);
        let scheme = if tls { "https" } else { "http" };
        AuthServer { child, url: format!("{scheme}://127.0.0.1:{port}") }
    }

    /// The harness's own client (never verifies the test AS's self-signed certificate).
    fn agent(&self) -> ureq::Agent {
        let tls = ureq::tls::TlsConfig::builder().disable_verification(true).build();
        ureq::Agent::config_builder().tls_config(tls).build().into()
    }

    /// A client_credentials token for `app`, bound to `resource` when given.
    pub fn token(&self, resource: Option<&str>, scope: &str) -> String {
        let mut form = vec![("grant_type", "client_credentials"), ("scope", scope)];
        if let Some(r) = resource {
            form.push(("resource", r));
        }
        let basic = base64::engine::general_purpose::STANDARD.encode("app:app-secret");
        let mut resp = self
            .agent()
            .post(format!("{}/token", self.url))
            .header("Authorization", format!("Basic {basic}"))
            .send_form(form)
            .expect("token request");
        let body: Value = serde_json::from_slice(&resp.body_mut().read_to_vec().unwrap()).unwrap();
        body["access_token"].as_str().expect("access_token").to_owned()
    }

    pub fn revoke(&self, token: &str) {
        let basic = base64::engine::general_purpose::STANDARD.encode("app:app-secret");
        let resp = self
            .agent()
            .post(format!("{}/token/revocation", self.url))
            .header("Authorization", format!("Basic {basic}"))
            .send_form([("token", token), ("token_type_hint", "access_token")])
            .expect("revocation");
        assert_eq!(resp.status(), 200);
    }

    fn get_json(&self, path: &str) -> Value {
        let mut resp = self.agent().get(format!("{}{path}", self.url)).call().unwrap();
        serde_json::from_slice(&resp.body_mut().read_to_vec().unwrap()).unwrap()
    }

    pub fn introspections(&self) -> u64 {
        self.stats()["introspections"].as_u64().unwrap()
    }

    /// The AS's request counters (`/__test/stats`).
    pub fn stats(&self) -> Value {
        self.get_json("/__test/stats")
    }

    /// Every JWT client assertion the AS received (`/__test/assertions`).
    pub fn assertions(&self) -> Vec<Value> {
        self.get_json("/__test/assertions").as_array().unwrap().clone()
    }
}

impl Drop for AuthServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The forward proxy of tests/node/forward-proxy.mjs; killed when dropped.
pub struct ForwardProxy {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
}

impl ForwardProxy {
    /// A proxy requiring exactly `authorization` as `Proxy-Authorization` (none: open).
    pub fn start(authorization: Option<&str>) -> ForwardProxy {
        let env: Vec<(&str, String)> = authorization.map(|a| ("PROXY_AUTH", a.to_owned())).into_iter().collect();
        let (child, port) = start_node("forward-proxy.mjs", &env);
        ForwardProxy { child, url: format!("http://127.0.0.1:{port}") }
    }

    /// What it was asked to forward: `[{"method","target","proxy_authorization","allowed"}]`.
    pub fn log(&self) -> Vec<Value> {
        let mut resp = ureq::get(format!("{}/__proxy/log", self.url)).call().unwrap();
        serde_json::from_slice::<Value>(&resp.body_mut().read_to_vec().unwrap()).unwrap().as_array().unwrap().clone()
    }
}

impl Drop for ForwardProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh private JWK generated by Node (`rsa`, `rsa-pss`... as `node:crypto` names them:
/// `rsa`, `ec-P-256`, `ec-P-384`, `ec-P-521`, `ed25519`): test keys live only for the run.
pub fn fresh_private_jwk(kind: &str) -> Value {
    let (kind, options) = match kind.split_once('-') {
        Some(("ec", curve)) => ("ec".to_owned(), format!("{{namedCurve: '{curve}'}}")),
        _ if kind == "rsa" => ("rsa".to_owned(), "{modulusLength: 2048}".to_owned()),
        _ => (kind.to_owned(), "{}".to_owned()),
    };
    let script = format!(
        "const {{generateKeyPairSync}} = require('node:crypto'); \
         const {{privateKey}} = generateKeyPairSync('{kind}', {options}); \
         process.stdout.write(JSON.stringify(privateKey.export({{format: 'jwk'}})));"
    );
    let out = Command::new("node").args(["-e", &script]).output().expect("node runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The public half of a private JWK.
pub fn public_jwk(private: &Value) -> Value {
    let mut public = private.clone();
    for member in ["d", "p", "q", "dp", "dq", "qi"] {
        public.as_object_mut().unwrap().remove(member);
    }
    public
}

/// Test PKI generated with the `openssl` CLI into a fresh temporary directory (removed when
/// dropped): a CA, two CA-issued client certificates (`client`: SAN DNS gateway.test,
/// `other`: SAN DNS other.test), two self-signed client certificates (`self`, `self2`) and a
/// self-signed server certificate `as` for 127.0.0.1. Nothing of it outlives the test.
pub struct TestPki {
    pub dir: std::path::PathBuf,
}

impl TestPki {
    pub fn generate() -> TestPki {
        let dir = std::env::temp_dir().join(format!("mcp-oauth2-pki-{}-{}", std::process::id(), now_nanos()));
        std::fs::create_dir_all(&dir).unwrap();
        let run = |args: &[&str]| {
            let out = Command::new("openssl").args(args).current_dir(&dir).output().expect("openssl runs");
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        let ec_key =
            |name: &str| run(&["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", &format!("{name}.key")]);
        let self_signed = |name: &str, subject: &str, san: &str| {
            ec_key(name);
            run(&[
                "req",
                "-x509",
                "-new",
                "-key",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.crt"),
                "-days",
                "2",
                "-subj",
                subject,
                "-addext",
                san,
            ]);
        };
        self_signed("ca", "/CN=mcp-oauth2 test CA", "basicConstraints=critical,CA:TRUE");
        self_signed("as", "/CN=127.0.0.1", "subjectAltName=IP:127.0.0.1");
        self_signed("self", "/CN=self-signed gateway", "subjectAltName=DNS:self.test");
        self_signed("self2", "/CN=another self-signed gateway", "subjectAltName=DNS:self2.test");
        for (name, dns) in [("client", "gateway.test"), ("other", "other.test")] {
            ec_key(name);
            run(&[
                "req",
                "-new",
                "-key",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={dns}"),
            ]);
            std::fs::write(dir.join(format!("{name}.ext")), format!("subjectAltName=DNS:{dns}\n")).unwrap();
            run(&[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{name}.crt"),
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
            ]);
        }
        TestPki { dir }
    }

    pub fn path(&self, file: &str) -> String {
        self.dir.join(file).to_str().unwrap().to_owned()
    }

    pub fn pem(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.join(file)).unwrap()
    }

    /// The env of an https AS serving `as.crt` and trusting `ca.crt` for client certificates.
    pub fn as_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AS_TLS_CERT", self.path("as.crt")),
            ("AS_TLS_KEY", self.path("as.key")),
            ("AS_TLS_CA", self.path("ca.crt")),
        ]
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn now_nanos() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos()
}

/// A `redis-server` (Debian package) on a free 127.0.0.1 port, without persistence; killed
/// when dropped. Fails the test when `redis-server` is missing (scripts/install.sh installs it).
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    password: Option<String>,
}

impl RedisServer {
    pub fn start(password: Option<&str>) -> RedisServer {
        let mut r = RedisServer { child: None, port: closed_port(), password: password.map(str::to_owned) };
        r.restart();
        r
    }

    /// Kills the server (its data goes with it).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        let port = self.port.to_string();
        let mut args = vec!["--port", &port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"];
        if let Some(p) = &self.password {
            args.extend(["--requirepass", p.as_str()]);
        }
        let child = Command::new("redis-server")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server; scripts/install.sh installs it)");
        self.child = Some(child);
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not listen on {}", self.port);
    }

    /// Runs one command through redis-cli; its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let port = self.port.to_string();
        let mut all = vec!["-p", &port];
        if let Some(p) = &self.password {
            all.extend(["--no-auth-warning", "-a", p.as_str()]);
        }
        all.extend(args);
        let out = Command::new("redis-cli").args(&all).output().expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
