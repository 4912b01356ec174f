//! The demo proxy in operation: several proxies sharing answers through a real Redis
//! (`cluster_cache_strategy: redis`, issue 14) in front of the real oidc-provider AS
//! (tests/node/as-server.mjs), and the operations endpoints (`/metrics`, the admin evict
//! endpoint; issue 12).
//!
//! Needs `redis-server` (Debian) and `npm ci --prefix tests/node` (scripts/install-demo.sh);
//! without them these tests fail, never skip. Every process is started here on 127.0.0.1
//! (random ports; Redis without persistence) and killed when its handle drops.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

/// The resource every node protects: the address clients use (a load balancer's).
const RESOURCE: &str = "http://127.0.0.1:8080/mcp";
const PING: &str = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;

fn repo_root() -> String {
    format!("{}/..", env!("CARGO_MANIFEST_DIR"))
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into()
}

/// A process killed when dropped; its stderr lines are collected.
struct Proc {
    child: Child,
    stdout: Vec<String>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    /// Starts `cmd` and waits (30 s at most) for a stdout line starting with `until`.
    fn start(mut cmd: Command, until: &str) -> Proc {
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

    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// The first `http://` word of the stdout line starting with `label` (trimmed).
    fn url_after(&self, label: &str) -> String {
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
struct Oidc {
    _proc: Proc,
    url: String,
}

impl Oidc {
    fn start() -> Oidc {
        let root = repo_root();
        assert!(
            std::path::Path::new(&format!("{root}/tests/node/node_modules/oidc-provider")).exists(),
            "tests/node/node_modules is missing: run scripts/install-demo.sh (npm ci --prefix tests/node)"
        );
        let mut cmd = Command::new("node");
        cmd.arg(format!("{root}/tests/node/as-server.mjs")).env("AS_PORT", "0");
        let proc = Proc::start(cmd, "LISTENING ");
        let port = proc.stdout.last().unwrap().trim_start_matches("LISTENING ").trim().to_owned();
        Oidc { _proc: proc, url: format!("http://127.0.0.1:{port}") }
    }

    fn basic() -> String {
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("app:app-secret"))
    }

    fn token(&self) -> String {
        let form = [("grant_type", "client_credentials"), ("scope", "mcp:read mcp:write"), ("resource", RESOURCE)];
        let mut r = agent()
            .post(format!("{}/token", self.url))
            .header("Authorization", Self::basic())
            .send_form(form)
            .expect("token request");
        assert_eq!(r.status(), 200);
        let v: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
        v["access_token"].as_str().unwrap().to_owned()
    }

    fn revoke(&self, token: &str) {
        let r = agent()
            .post(format!("{}/token/revocation", self.url))
            .header("Authorization", Self::basic())
            .send_form([("token", token), ("token_type_hint", "access_token")])
            .expect("revocation");
        assert_eq!(r.status(), 200);
    }

    fn introspections(&self) -> u64 {
        let mut r = agent().get(format!("{}/__test/stats", self.url)).call().unwrap();
        let v: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
        v["introspections"].as_u64().unwrap()
    }

    /// Every later introspection waits `ms` first.
    fn delay(&self, ms: u64) {
        let r = agent().post(format!("{}/__test/delay?ms={ms}", self.url)).send_empty().unwrap();
        assert_eq!(r.status(), 200);
    }
}

/// A `redis-server` (Debian package) on a free 127.0.0.1 port, no persistence; killed when
/// dropped.
struct Redis {
    child: Option<Child>,
    port: u16,
    password: Option<String>,
}

impl Redis {
    fn start(password: Option<&str>) -> Redis {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut r = Redis { child: None, port, password: password.map(str::to_owned) };
        r.restart();
        r
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it (again) on the same port, empty.
    fn restart(&mut self) {
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
    fn keys(&self, pattern: &str) -> Vec<String> {
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

fn temp_dir() -> PathBuf {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let dir = std::env::temp_dir().join(format!("demo-ops-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The upstream: the echo MCP server of an embedded-demo process (its own AS and proxy
/// are not used).
fn echo_upstream() -> (Proc, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_demo_proxy"));
    cmd.args(["--listen", "127.0.0.1:0", "--as-listen", "127.0.0.1:0", "--upstream-listen", "127.0.0.1:0"]);
    let demo = Proc::start(cmd, "Requests are logged on stderr");
    let url = demo.url_after("echo MCP server").trim_end_matches("/mcp").to_owned();
    (demo, url)
}

/// A proxy in real mode with `config` (written to a file), in front of `upstream`.
fn proxy(config: &Value, upstream: &str, extra: &[&str]) -> (Proc, String) {
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

/// The same configuration on every node: introspection at the oidc-provider, answers
/// shared through Redis.
fn cluster_config(oidc: &Oidc, redis: &Redis, password: Option<&str>) -> Value {
    let mut r = json!({"host": "127.0.0.1", "port": redis.port, "prefix": "demo-test"});
    if let Some(p) = password {
        r["password"] = json!(p);
    }
    json!({
        "resource": RESOURCE,
        "authorization_servers": [oidc.url],
        "introspection_endpoint": format!("{}/token/introspection", oidc.url),
        "client_id": "gateway",
        "client_secret": "gateway-secret",
        "claim_to_header": [{"claim": "client_id", "header": "X-Client-Id"}],
        "cluster_cache_strategy": "redis",
        "cluster_cache_redis": r,
    })
}

/// Three proxies on one Redis.
struct Cluster {
    oidc: Oidc,
    redis: Redis,
    _upstream: Proc,
    nodes: Vec<(Proc, String)>,
}

impl Cluster {
    fn start(extra: &[&str]) -> Cluster {
        let oidc = Oidc::start();
        let redis = Redis::start(None);
        let (upstream, up_url) = echo_upstream();
        let config = cluster_config(&oidc, &redis, None);
        let nodes = (0..3).map(|_| proxy(&config, &up_url, extra)).collect();
        Cluster { oidc, redis, _upstream: upstream, nodes }
    }

    fn url(&self, i: usize) -> &str {
        &self.nodes[i % 3].1
    }
}

/// POSTs an MCP ping to a proxy; the status.
fn ping(agent: &ureq::Agent, proxy: &str, token: &str) -> u16 {
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
fn metrics(proxy: &str) -> HashMap<String, f64> {
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

fn cluster_hits(proxy: &str) -> f64 {
    metrics(proxy)["mcp_oauth2_cache_lookups_total{cache=cluster,result=hit}"]
}

fn evict(proxy: &str, body: &Value) -> (u16, Value) {
    let mut r = agent()
        .post(format!("{proxy}/_mcp_oauth2/evict"))
        .header("Content-Type", "application/json")
        .send(body.to_string())
        .expect("POST evict");
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_string().unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// 3 proxies × 50 concurrent clients × one new token (the AS answering after 300 ms) →
/// the AS sees exactly one introspection; the other two nodes replay it from Redis.
#[test]
fn three_proxies_fifty_clients_each_one_introspection() {
    let c = Cluster::start(&[]);
    // Connect every node to Redis with a token of its own first.
    for i in 0..3 {
        assert_eq!(ping(&agent(), c.url(i), &c.oidc.token()), 200);
    }
    let hits_before: f64 = (0..3).map(|i| cluster_hits(c.url(i))).sum();
    let token = c.oidc.token();
    c.oidc.delay(300);
    let before = c.oidc.introspections();

    let barrier = Arc::new(Barrier::new(150));
    let threads: Vec<_> = (0..150)
        .map(|i| {
            let (url, token, barrier) = (c.url(i).to_owned(), token.clone(), Arc::clone(&barrier));
            std::thread::spawn(move || {
                let agent = agent();
                barrier.wait();
                ping(&agent, &url, &token)
            })
        })
        .collect();
    let statuses: Vec<u16> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(c.oidc.introspections() - before, 1, "one introspection for 150 requests on 3 nodes");
    // The two nodes that did not call the AS replayed the answer from Redis.
    let hits: f64 = (0..3).map(|i| cluster_hits(c.url(i))).sum();
    assert_eq!(hits - hits_before, 2.0);
    // Redis holds digests, never the token.
    let keys = c.redis.keys("demo-test:*");
    assert!(keys.iter().any(|k| k.starts_with("demo-test:answer:")), "{keys:?}");
    assert!(keys.iter().all(|k| !k.contains(&token)));
    // Nothing from a node's log is a secret.
    for (node, _) in &c.nodes {
        let log = node.log().join("\n");
        assert!(!log.contains(&token) && !log.contains("gateway-secret"), "{log}");
    }
}

/// A token revoked at the AS is still allowed from the nodes' caches until it is evicted on
/// one node through the admin endpoint: then every node refuses it within a second.
#[test]
fn evict_on_one_proxy_reaches_the_others_within_a_second() {
    let c = Cluster::start(&["--admin-evict"]);
    let token = c.oidc.token();
    for i in 0..3 {
        assert_eq!(ping(&agent(), c.url(i), &token), 200);
    }
    c.oidc.revoke(&token);
    for i in 0..3 {
        assert_eq!(ping(&agent(), c.url(i), &token), 200, "node {i}: still cached");
    }

    let (status, body) = evict(c.url(0), &json!({ "token": token }));
    let evicted_at = Instant::now();
    assert_eq!((status, &body), (200, &json!({"evicted": true})));
    assert_eq!(ping(&agent(), c.url(0), &token), 401, "node A at once");
    for i in 1..3 {
        let agent = agent();
        while ping(&agent, c.url(i), &token) != 401 {
            assert!(evicted_at.elapsed() < Duration::from_secs(1), "node {i} still allows the evicted token");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let elapsed = evicted_at.elapsed();
    assert!(elapsed < Duration::from_secs(1), "{elapsed:?}");
    eprintln!("evicted on node A: nodes B and C refuse the token after {elapsed:?}");
    let log = c.nodes[0].0.log().join("\n");
    assert!(log.contains(" POST /_mcp_oauth2/evict 200 evicted"), "{log}");
    assert!(!log.contains(&token));
}

/// Redis killed while clients keep calling (known and new tokens): every request is still
/// served, the AS sees more calls, the nodes warn; once Redis is back they use it again.
#[test]
fn redis_killed_mid_run_never_fails_a_request() {
    let mut c = Cluster::start(&[]);
    let tokens: Vec<String> = (0..4).map(|_| c.oidc.token()).collect();
    // Tokens no node has seen, one every 100 ms, each asked on the three nodes.
    let fresh: Vec<String> = (0..45).map(|_| c.oidc.token()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let urls: Vec<String> = (0..3).map(|i| c.url(i).to_owned()).collect();
    let mut clients: Vec<_> = (0..3)
        .map(|t| {
            let (urls, tokens, stop) = (urls.clone(), tokens.clone(), Arc::clone(&stop));
            std::thread::spawn(move || {
                let agent = agent();
                let mut statuses = Vec::new();
                let mut n = t;
                while !stop.load(Ordering::Relaxed) {
                    statuses.push(ping(&agent, &urls[n % 3], &tokens[n % tokens.len()]));
                    n += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                statuses
            })
        })
        .collect();
    clients.push({
        let (urls, stop) = (urls.clone(), Arc::clone(&stop));
        std::thread::spawn(move || {
            let agent = agent();
            let mut statuses = Vec::new();
            for token in fresh {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                for url in &urls {
                    statuses.push(ping(&agent, url, &token));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            statuses
        })
    });

    std::thread::sleep(Duration::from_millis(800));
    let before_kill = c.oidc.introspections();
    c.redis.kill();
    std::thread::sleep(Duration::from_millis(2000));
    let while_down = c.oidc.introspections() - before_kill;
    c.redis.restart();
    std::thread::sleep(Duration::from_millis(800));
    stop.store(true, Ordering::Relaxed);
    let statuses: Vec<u16> = clients.into_iter().flat_map(|t| t.join().unwrap()).collect();
    let bad: Vec<&u16> = statuses.iter().filter(|s| **s != 200).collect();
    assert!(bad.is_empty(), "{} of {} requests not 200: {bad:?}", bad.len(), statuses.len());
    // New tokens were introspected at the AS while Redis was down: by every node.
    assert!(while_down > 3, "{while_down} introspections while Redis was down");
    eprintln!("{} requests, all 200; {while_down} introspections while Redis was down", statuses.len());

    // Each node said so, at warn, and counted it.
    for (i, (node, url)) in c.nodes.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(3);
        while !node.log().iter().any(|l| l.contains(" proxy warn: cluster cache (Redis at 127.0.0.1:")) {
            assert!(Instant::now() < deadline, "node {i}: no warning in {:?}", node.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(metrics(url)["mcp_oauth2_cluster_cache_errors_total{}"] >= 1.0, "node {i}");
    }

    // Redis is used again: a new token asked on the three nodes in turn costs one
    // introspection (once every node has reconnected: within 250 ms of Redis answering).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let token = c.oidc.token();
        let before = c.oidc.introspections();
        for i in 0..3 {
            assert_eq!(ping(&agent(), c.url(i), &token), 200);
        }
        if c.oidc.introspections() - before == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the nodes did not use Redis again");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!c.redis.keys("demo-test:answer:*").is_empty());
}

/// Redis refusing the configured password: a clear warning (naming the fields to check,
/// never the password), and every request served from the node's own cache and the AS.
#[test]
fn wrong_redis_password_warns_and_serves() {
    let oidc = Oidc::start();
    let redis = Redis::start(Some("the-right-password"));
    let (_upstream, up_url) = echo_upstream();
    let config = cluster_config(&oidc, &redis, Some("a-wrong-password"));
    let (node, url) = proxy(&config, &up_url, &[]);
    let token = oidc.token();
    for _ in 0..5 {
        assert_eq!(ping(&agent(), &url, &token), 200);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let warning = loop {
        if let Some(l) = node.log().into_iter().find(|l| l.contains(" proxy warn: ")) {
            break l;
        }
        assert!(Instant::now() < deadline, "no warning in {:?}", node.log());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        warning.contains("cluster cache (Redis at 127.0.0.1:")
            && warning.contains("authentication failed (check cluster_cache_redis.username and password)"),
        "{warning}"
    );
    let everything = format!("{}\n{}", node.stdout.join("\n"), node.log().join("\n"));
    assert!(!everything.contains("a-wrong-password") && !everything.contains("the-right-password"), "{everything}");
    assert!(metrics(&url)["mcp_oauth2_cluster_cache_errors_total{}"] >= 1.0);
    assert!(redis.keys("*").is_empty());
    eprintln!("warning logged: {warning}");
}

/// The operations endpoints of one proxy (no cluster): the metrics count a scripted
/// sequence; evict drops a revoked token's cached answer; both answer loopback clients
/// only, and evict exists only with `--admin-evict`.
#[test]
fn metrics_and_admin_evict_endpoints() {
    let oidc = Oidc::start();
    let (_upstream, up_url) = echo_upstream();
    let mut config = cluster_config(&oidc, &Redis { child: None, port: 1, password: None }, None);
    config.as_object_mut().unwrap().remove("cluster_cache_strategy");
    config.as_object_mut().unwrap().remove("cluster_cache_redis");
    let (_node, url) = proxy(&config, &up_url, &["--admin-evict"]);

    // A scripted sequence: no token, an unknown token, a valid token three times.
    let a = agent();
    assert_eq!(a.post(format!("{url}/mcp")).send(PING).unwrap().status(), 401);
    assert_eq!(ping(&a, &url, "not-a-token-the-as-knows"), 401);
    let token = oidc.token();
    for _ in 0..3 {
        assert_eq!(ping(&a, &url, &token), 200);
    }
    let m = metrics(&url);
    assert_eq!(m["mcp_oauth2_decisions_total{decision=deny,reason=no_credentials}"], 1.0);
    assert_eq!(m["mcp_oauth2_decisions_total{decision=deny,reason=token_inactive}"], 1.0);
    assert_eq!(m["mcp_oauth2_decisions_total{decision=allow,reason=allowed}"], 3.0);
    assert_eq!(m["mcp_oauth2_cache_lookups_total{cache=token,result=hit}"], 2.0);
    assert_eq!(m["mcp_oauth2_authorization_server_requests_total{kind=introspection,result=ok}"], 2.0);
    // HEAD works too; other methods do not.
    assert_eq!(a.head(format!("{url}/metrics")).call().unwrap().status(), 200);
    let r = a.post(format!("{url}/metrics")).send_empty().unwrap();
    assert_eq!((r.status().as_u16(), r.headers().get("allow").unwrap().to_str().unwrap()), (405, "GET, HEAD"));

    // Evict: the token revoked at the AS is allowed from the cache until evicted.
    oidc.revoke(&token);
    assert_eq!(ping(&a, &url, &token), 200);
    assert_eq!(evict(&url, &json!({ "token": token })), (200, json!({"evicted": true})));
    assert_eq!(ping(&a, &url, &token), 401);
    // `evicted`: whether this node had an answer about the token (allowing or not).
    assert_eq!(evict(&url, &json!({"token": "never-seen"})), (200, json!({"evicted": false})));
    // By cache key (`Validator::token_cache_key` for the same configuration): the
    // token itself need not be handed over.
    let token2 = oidc.token();
    assert_eq!(ping(&a, &url, &token2), 200);
    oidc.revoke(&token2);
    let key = mcp_oauth2::Validator::from_json(&config.to_string()).unwrap().token_cache_key(&token2);
    assert_eq!(evict(&url, &json!({ "cache_key": key })), (200, json!({"evicted": true})));
    assert_eq!(ping(&a, &url, &token2), 401);
    let m = metrics(&url);
    assert_eq!(m["mcp_oauth2_cache_evictions_total{cache=token,cause=revoked}"], 2.0);
    for body in [json!({}), json!({"token": ""}), json!({"cache_key": "abc"}), json!({"token": "a", "cache_key": "b"})]
    {
        let (status, answer) = evict(&url, &body);
        assert_eq!((status, answer["error"].as_str()), (400, Some("invalid_request")), "{body}");
    }
    let r = a.get(format!("{url}/_mcp_oauth2/evict")).call().unwrap();
    assert_eq!(r.status(), 405);

    // Without --admin-evict the path is an ordinary protected path.
    let (_plain, plain_url) = proxy(&config, &up_url, &["--metrics-path", "/_ops/metrics"]);
    assert_eq!(evict(&plain_url, &json!({ "token": token2 })).0, 401);
    assert_eq!(a.get(format!("{plain_url}/_ops/metrics")).call().unwrap().status(), 200);
    assert_eq!(a.get(format!("{plain_url}/metrics")).call().unwrap().status(), 401, "proxied like any path");
    let (_none, none_url) = proxy(&config, &up_url, &["--no-metrics"]);
    assert_eq!(a.get(format!("{none_url}/metrics")).call().unwrap().status(), 401);

    // Clients that are not on loopback get 403, unless --ops-allow-remote.
    let Some(ip) = non_loopback_address() else {
        panic!("this machine has no non-loopback address to test the loopback-only rule with");
    };
    for (allow_remote, expected) in [(false, 403), (true, 200)] {
        let mut args = vec!["--admin-evict"];
        if allow_remote {
            args.push("--ops-allow-remote");
        }
        let dir = temp_dir();
        let path = dir.join("c.json");
        std::fs::write(&path, config.to_string()).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_demo_proxy"));
        cmd.arg("--config").arg(&path).args(["--upstream", &up_url, "--listen", "0.0.0.0:0"]).args(&args);
        let remote = Proc::start(cmd, "Ctrl-C stops it.");
        let port = remote.url_after("proxy listening on").rsplit(':').next().unwrap().to_owned();
        let via = format!("http://{ip}:{port}");
        assert_eq!(a.get(format!("{via}/metrics")).call().unwrap().status(), expected, "remote={allow_remote}");
        assert_eq!(evict(&via, &json!({ "token": token2 })).0, expected);
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// An address of this machine that is not loopback (the interface of the default route).
fn non_loopback_address() -> Option<std::net::IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("198.51.100.1:9").ok()?; // no packet is sent
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}
