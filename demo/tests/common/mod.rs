//! Helpers of the demo proxy's integration tests that run it with real parts: the
//! oidc-provider AS (tests/node/as-server.mjs), redis-server, the binary in real mode.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

/// The resource every node protects: the address clients use (a load balancer's).
pub const RESOURCE: &str = "http://127.0.0.1:8080/mcp";
pub const PING: &str = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;

pub fn repo_root() -> String {
    format!("{}/..", env!("CARGO_MANIFEST_DIR"))
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into()
}

/// A process killed when dropped; its stderr lines are collected.
pub struct Proc {
    child: Child,
    pub stdout: Vec<String>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    /// Starts `cmd` and waits (30 s at most) for a stdout line starting with `until`.
    pub fn start(mut cmd: Command, until: &str) -> Proc {
        let mut child =
            cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("the process starts");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (stdout, stderr) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut lines = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    let done = line.starts_with(until);
                    lines.push(line);
                    if done {
                        break;
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("no {until:?} on stdout: {lines:?}; stderr {:?}", log.lock().unwrap());
                }
            }
        }
        Proc { child, stdout: lines, log }
    }

    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// The first log line containing `text`, waiting for it (the proxy writes its log in
    /// batches) up to `limit`.
    pub fn wait_log(&self, text: &str, limit: Duration) -> Option<String> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(line) = self.log().into_iter().find(|l| l.contains(text)) {
                return Some(line);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The first `http://` word of the stdout line starting with `label` (trimmed).
    pub fn url_after(&self, label: &str) -> String {
        let line = self.stdout.iter().find(|l| l.trim_start().starts_with(label)).expect(label);
        line.split_whitespace().find(|w| w.starts_with("http://")).expect("a URL").to_owned()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The real oidc-provider (tests/node/as-server.mjs): clients `app` / `app-secret` get
/// opaque tokens, the proxies introspect as `gateway` / `gateway-secret`.
pub struct Oidc {
    _proc: Proc,
    pub url: String,
}

impl Oidc {
    pub fn start() -> Oidc {
        Oidc::start_with(&[])
    }

    /// Started with extra environment (`AS_EXTRA_CLIENTS`; `AS_TLS_*`: https).
    pub fn start_with(env: &[(&str, String)]) -> Oidc {
        let root = repo_root();
        assert!(
            std::path::Path::new(&format!("{root}/tests/node/node_modules/oidc-provider")).exists(),
            "tests/node/node_modules is missing: run scripts/install-demo.sh (npm ci --prefix tests/node)"
        );
        let mut cmd = Command::new("node");
        cmd.arg(format!("{root}/tests/node/as-server.mjs")).env("AS_PORT", "0");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let proc = Proc::start(cmd, "LISTENING ");
        let port = proc.stdout.last().unwrap().trim_start_matches("LISTENING ").trim().to_owned();
        let scheme = if env.iter().any(|(k, _)| *k == "AS_TLS_CERT") { "https" } else { "http" };
        Oidc { _proc: proc, url: format!("{scheme}://127.0.0.1:{port}") }
    }

    /// The tests' own client for the AS (its https certificate is self-signed).
    fn agent() -> ureq::Agent {
        let tls = ureq::tls::TlsConfig::builder().disable_verification(true).build();
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(20)))
            .tls_config(tls)
            .build()
            .into()
    }

    fn get(&self, path: &str) -> Value {
        let mut r = Oidc::agent().get(format!("{}{path}", self.url)).call().unwrap();
        serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap()
    }

    /// How each introspection request came (`/__test/introspection_requests`).
    pub fn introspection_requests(&self) -> Vec<Value> {
        self.get("/__test/introspection_requests").as_array().unwrap().clone()
    }

    /// Every JWT client assertion received (`/__test/assertions`).
    pub fn assertions(&self) -> Vec<Value> {
        self.get("/__test/assertions").as_array().unwrap().clone()
    }

    pub fn basic() -> String {
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("app:app-secret"))
    }

    pub fn token(&self) -> String {
        let form = [("grant_type", "client_credentials"), ("scope", "mcp:read mcp:write"), ("resource", RESOURCE)];
        let mut r = Oidc::agent()
            .post(format!("{}/token", self.url))
            .header("Authorization", Self::basic())
            .send_form(form)
            .expect("token request");
        assert_eq!(r.status(), 200);
        let v: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
        v["access_token"].as_str().unwrap().to_owned()
    }

    pub fn revoke(&self, token: &str) {
        let r = Oidc::agent()
            .post(format!("{}/token/revocation", self.url))
            .header("Authorization", Self::basic())
            .send_form([("token", token), ("token_type_hint", "access_token")])
            .expect("revocation");
        assert_eq!(r.status(), 200);
    }

    pub fn introspections(&self) -> u64 {
        self.get("/__test/stats")["introspections"].as_u64().unwrap()
    }

    /// Every later introspection waits `ms` first.
    pub fn delay(&self, ms: u64) {
        let r = Oidc::agent().post(format!("{}/__test/delay?ms={ms}", self.url)).send_empty().unwrap();
        assert_eq!(r.status(), 200);
    }
}

/// A `redis-server` (Debian package) on a free 127.0.0.1 port, no persistence; killed when
/// dropped.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    password: Option<String>,
}

impl Redis {
    pub fn start(password: Option<&str>) -> Redis {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut r = Redis { child: None, port, password: password.map(str::to_owned) };
        r.restart();
        r
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it (again) on the same port, empty.
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
            .expect("redis-server (Debian package redis-server; scripts/install-demo.sh installs it)");
        self.child = Some(child);
        for _ in 0..250 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not listen on {}", self.port);
    }

    /// Keys matching `pattern` (redis-cli).
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        let port = self.port.to_string();
        let mut args = vec!["-p", &port];
        if let Some(p) = &self.password {
            args.extend(["--no-auth-warning", "-a", p.as_str()]);
        }
        args.extend(["--scan", "--pattern", pattern]);
        let out = Command::new("redis-cli").args(&args).output().expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).filter(|l| !l.is_empty()).collect()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn temp_dir() -> PathBuf {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let dir = std::env::temp_dir().join(format!("demo-ops-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The upstream: the echo MCP server of an embedded-demo process (its own AS and proxy
/// are not used).
pub fn echo_upstream() -> (Proc, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_demo_proxy"));
    cmd.args(["--listen", "127.0.0.1:0", "--as-listen", "127.0.0.1:0", "--upstream-listen", "127.0.0.1:0"]);
    let demo = Proc::start(cmd, "Requests are logged on stderr");
    let url = demo.url_after("echo MCP server").trim_end_matches("/mcp").to_owned();
    (demo, url)
}

/// A proxy in real mode with `config` (written to a file), in front of `upstream`.
pub fn proxy(config: &Value, upstream: &str, extra: &[&str]) -> (Proc, String) {
    let dir = temp_dir();
    let path = dir.join("cluster.json");
    std::fs::write(&path, serde_json::to_vec_pretty(config).unwrap()).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_demo_proxy"));
    cmd.arg("--config").arg(&path).args(["--upstream", upstream, "--listen", "127.0.0.1:0"]).args(extra);
    let p = Proc::start(cmd, "Ctrl-C stops it.");
    let url = p.url_after("proxy listening on");
    let _ = std::fs::remove_dir_all(dir);
    (p, url)
}

/// Introspection at the oidc-provider as `gateway`, `client_id` mapped to `X-Client-Id`.
pub fn introspection_config(oidc: &Oidc) -> Value {
    json!({
        "resource": RESOURCE,
        "authorization_servers": [oidc.url],
        "introspection_endpoint": format!("{}/token/introspection", oidc.url),
        "client_id": "gateway",
        "client_secret": "gateway-secret",
        "claim_to_header": [{"claim": "client_id", "header": "X-Client-Id"}],
    })
}

/// The same configuration on every node: [`introspection_config`], answers shared through
/// Redis.
pub fn cluster_config(oidc: &Oidc, redis: &Redis, password: Option<&str>) -> Value {
    let mut r = json!({"host": "127.0.0.1", "port": redis.port, "prefix": "demo-test"});
    if let Some(p) = password {
        r["password"] = json!(p);
    }
    let mut config = introspection_config(oidc);
    config["cluster_cache_strategy"] = json!("redis");
    config["cluster_cache_redis"] = r;
    config
}

/// Three proxies on one Redis.
pub struct Cluster {
    pub oidc: Oidc,
    pub redis: Redis,
    _upstream: Proc,
    pub nodes: Vec<(Proc, String)>,
}

impl Cluster {
    pub fn start(extra: &[&str]) -> Cluster {
        let oidc = Oidc::start();
        let redis = Redis::start(None);
        let (upstream, up_url) = echo_upstream();
        let config = cluster_config(&oidc, &redis, None);
        let nodes = (0..3).map(|_| proxy(&config, &up_url, extra)).collect();
        Cluster { oidc, redis, _upstream: upstream, nodes }
    }

    pub fn url(&self, i: usize) -> &str {
        &self.nodes[i % 3].1
    }
}

/// POSTs an MCP ping to a proxy; the status.
pub fn ping(agent: &ureq::Agent, proxy: &str, token: &str) -> u16 {
    agent
        .post(format!("{proxy}/mcp"))
        .header("Content-Type", "application/json")
        .header("Accept", "application/json, text/event-stream")
        .header("Authorization", format!("Bearer {token}"))
        .send(PING)
        .map(|r| r.status().as_u16())
        .unwrap_or(599)
}

/// Every sample of a proxy's `/metrics` (parsed by an independent Prometheus text-format
/// parser), by `name{label=value,...}` with sorted labels.
pub fn metrics(proxy: &str) -> HashMap<String, f64> {
    let mut r = agent().get(format!("{proxy}/metrics")).call().expect("GET /metrics");
    assert_eq!(r.status(), 200);
    let content_type = r.headers().get("content-type").unwrap().to_str().unwrap().to_owned();
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    let text = r.body_mut().read_to_string().unwrap();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("the text parses");
    let mut out = HashMap::new();
    for s in scrape.samples {
        let mut labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        labels.sort();
        if let prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) = s.value
        {
            out.insert(format!("{}{{{}}}", s.metric, labels.join(",")), v);
        }
    }
    out
}

pub fn cluster_hits(proxy: &str) -> f64 {
    metrics(proxy)["mcp_oauth2_cache_lookups_total{cache=cluster,result=hit}"]
}

pub fn evict(proxy: &str, body: &Value) -> (u16, Value) {
    let mut r = agent()
        .post(format!("{proxy}/_mcp_oauth2/evict"))
        .header("Content-Type", "application/json")
        .send(body.to_string())
        .expect("POST evict");
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_string().unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// The forward proxy of tests/node/forward-proxy.mjs (`CONNECT` tunnels and absolute-form
/// requests), requiring exactly `authorization` as `Proxy-Authorization` when given.
pub struct ForwardProxy {
    _proc: Proc,
    pub url: String,
}

impl ForwardProxy {
    pub fn start(authorization: Option<&str>) -> ForwardProxy {
        let mut cmd = Command::new("node");
        cmd.arg(format!("{}/tests/node/forward-proxy.mjs", repo_root())).env("PROXY_PORT", "0");
        if let Some(a) = authorization {
            cmd.env("PROXY_AUTH", a);
        }
        let proc = Proc::start(cmd, "LISTENING ");
        let port = proc.stdout.last().unwrap().trim_start_matches("LISTENING ").trim().to_owned();
        ForwardProxy { _proc: proc, url: format!("http://127.0.0.1:{port}") }
    }

    /// What it was asked to forward: `[{"method","target","proxy_authorization","allowed"}]`.
    pub fn log(&self) -> Vec<Value> {
        let mut r = agent().get(format!("{}/__proxy/log", self.url)).call().unwrap();
        let v: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
        v.as_array().unwrap().clone()
    }
}
