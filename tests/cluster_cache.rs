//! The cluster cache on Redis (`cluster_cache_strategy: redis`) with a real `redis-server`
//! (started here on a free port, no persistence) and, where a real server's answers matter,
//! the real oidc-provider. Three validators stand for three gateway nodes: they share
//! nothing but Redis. Without `redis-server` installed these tests fail (never skip).

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant, SystemTime};

use common::*;
use mcp_oauth2::{
    Config, Decision, ErrorKind, HttpRequest, HttpResponse, Purpose, Reason, Request, TransportError, UreqTransport,
    Validator,
};
use serde_json::{json, Value};

fn cluster_config(server_url: &str, redis: &RedisServer, extra: Value) -> Config {
    let mut v = config_json(&format!("{server_url}/token/introspection"), extra);
    v["authorization_servers"] = json!([server_url]);
    v["cluster_cache_strategy"] = json!("redis");
    let mut r = json!({"port": redis.port, "prefix": "test"});
    if let Some(extra) = v.get("cluster_cache_redis").and_then(Value::as_object) {
        for (k, x) in extra {
            r[k] = x.clone();
        }
    }
    v["cluster_cache_redis"] = r;
    Config::from_value(v).unwrap()
}

/// Three nodes on one Redis, connected.
fn nodes(config: &Config) -> Vec<Validator> {
    let nodes: Vec<Validator> = (0..3).map(|_| Validator::new(config.clone()).unwrap()).collect();
    for n in &nodes {
        wait_until("the node connects to Redis", Duration::from_secs(5), || n.cluster_cache_up());
    }
    nodes
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    start.elapsed()
}

fn call(v: &Validator, t: &UreqTransport, token: &str) -> Decision {
    let auth = format!("Bearer {token}");
    v.authorize(&Request::new("POST", "/mcp").header("Authorization", &auth), t)
}

fn metric(v: &Validator, line: &str) -> f64 {
    let text = v.metrics().prometheus_text();
    text.lines()
        .find_map(|l| l.strip_prefix(line).and_then(|rest| rest.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {line} in\n{text}"))
}

/// 3 nodes × 50 concurrent clients × one new token: the AS sees one introspection.
#[test]
fn three_nodes_fifty_clients_each_one_introspection() {
    let server = AuthServer::start();
    let redis = RedisServer::start(None);
    let config = cluster_config(&server.url, &redis, json!({}));
    let transport = Arc::new(UreqTransport::new(&config));
    let nodes = nodes(&config);
    let token = server.token(Some(RESOURCE), "mcp:read");
    let before = server.introspections();

    let barrier = Arc::new(Barrier::new(150));
    let handles: Vec<_> = (0..150)
        .map(|i| {
            let (node, t, b, token) =
                (nodes[i % 3].clone(), Arc::clone(&transport), Arc::clone(&barrier), token.clone());
            std::thread::spawn(move || {
                b.wait();
                call(&node, &t, &token)
            })
        })
        .collect();
    for h in handles {
        let d = h.join().unwrap();
        assert!(d.is_forward(), "{:?}", d.as_response());
    }
    assert_eq!(server.introspections() - before, 1, "one introspection across the three nodes");
    let hits: f64 =
        nodes.iter().map(|n| metric(n, "mcp_oauth2_cache_lookups_total{cache=\"cluster\",result=\"hit\"}")).sum();
    assert_eq!(hits, 2.0, "the two other nodes replayed the answer from Redis");

    // What Redis holds: the answer under the token's cache key, never the token; no longer
    // than the node's own entry.
    let key = nodes[0].token_cache_key(&token);
    let keys = redis.cli(&["--scan", "--pattern", "*"]);
    assert!(keys.lines().any(|k| k == format!("test:answer:{key}")), "{keys}");
    for k in keys.lines() {
        assert!(!k.contains(&token));
        assert!(!redis.cli(&["GET", k]).contains(&token), "{k} holds the token");
    }
    let pttl: u64 = redis.cli(&["PTTL", &format!("test:answer:{key}")]).parse().unwrap();
    let local = nodes[0].cache_ttl(&key, SystemTime::now()).unwrap();
    assert!(pttl > 0 && Duration::from_millis(pttl) <= local + Duration::from_millis(50), "{pttl} ms vs {local:?}");
    // A node that replayed the answer keeps it no longer than the node that fetched it.
    for n in &nodes[1..] {
        assert!(n.cache_ttl(&key, SystemTime::now()).unwrap() <= local + Duration::from_millis(50));
    }
}

/// Evict on node A: B and C refuse the revoked token within a second.
#[test]
fn an_eviction_on_one_node_reaches_the_others_within_a_second() {
    let server = AuthServer::start();
    let redis = RedisServer::start(None);
    let config = cluster_config(&server.url, &redis, json!({}));
    let t = UreqTransport::new(&config);
    let nodes = nodes(&config);
    let token = server.token(Some(RESOURCE), "mcp:read");
    for n in &nodes {
        assert!(call(n, &t, &token).is_forward());
    }
    server.revoke(&token);
    for n in &nodes {
        assert!(call(n, &t, &token).is_forward(), "cached until evicted");
    }
    assert!(nodes[0].evict(&token));
    assert_eq!(respond(&call(&nodes[0], &t, &token)).reason(), Reason::TokenInactive);
    let start = Instant::now();
    for n in &nodes[1..] {
        wait_until("the eviction reaches the node", Duration::from_secs(1).saturating_sub(start.elapsed()), || {
            call(n, &t, &token).as_response().map(|r| r.reason()) == Some(Reason::TokenInactive)
        });
    }
    let revoked: f64 =
        nodes.iter().map(|n| metric(n, "mcp_oauth2_cache_evictions_total{cache=\"token\",cause=\"revoked\"}")).sum();
    assert_eq!(revoked, 3.0);
}

/// Redis killed mid-run: every valid request still served (the AS sees more calls), then
/// the cluster cache is used again once Redis is back.
#[test]
fn redis_down_never_fails_a_request_and_comes_back() {
    let server = AuthServer::start();
    let mut redis = RedisServer::start(None);
    let config = cluster_config(&server.url, &redis, json!({"cluster_cache_redis": {"connect_timeout": 200}}));
    let t = Arc::new(UreqTransport::new(&config));
    let nodes = nodes(&config);

    let burst = |token: &str| {
        let handles: Vec<_> = (0..30)
            .map(|i| {
                let (node, t, token) = (nodes[i % 3].clone(), Arc::clone(&t), token.to_owned());
                std::thread::spawn(move || call(&node, &t, &token))
            })
            .collect();
        for h in handles {
            let d = h.join().unwrap();
            assert!(d.is_forward(), "{:?}", d.as_response());
        }
    };

    let first = server.token(Some(RESOURCE), "mcp:read");
    let before = server.introspections();
    burst(&first);
    assert_eq!(server.introspections() - before, 1);

    redis.kill();
    let second = server.token(Some(RESOURCE), "mcp:read");
    let before = server.introspections();
    burst(&second);
    let calls = server.introspections() - before;
    assert!((1..=3).contains(&calls), "each node at most once on its own: {calls}");
    let errors: f64 = nodes.iter().map(|n| metric(n, "mcp_oauth2_cluster_cache_errors_total")).sum();
    assert!(errors >= 1.0);
    wait_until("every node notices", Duration::from_secs(3), || nodes.iter().all(|n| !n.cluster_cache_up()));
    let warning = nodes[0].cluster_warning(SystemTime::now()).expect("a warning while Redis is down");
    assert!(warning.contains("Redis at 127.0.0.1") && warning.contains("serving from this node"), "{warning}");
    assert!(nodes[0].cluster_warning(SystemTime::now()).is_none(), "once per minute");

    redis.restart();
    for n in &nodes {
        wait_until("the node reconnects", Duration::from_secs(5), || n.cluster_cache_up());
    }
    let third = server.token(Some(RESOURCE), "mcp:read");
    let before = server.introspections();
    burst(&third);
    assert_eq!(server.introspections() - before, 1, "shared again");
}

/// A password-protected Redis with a wrong password (or none): a clear warning, requests
/// served, the password nowhere in it.
#[test]
fn a_wrong_redis_password_warns_and_serves() {
    let server = AuthServer::start();
    let redis = RedisServer::start(Some("right-password"));
    for (password, expect) in [(json!("wrong-password"), "authentication failed"), (Value::Null, "requires a password")]
    {
        let config = cluster_config(&server.url, &redis, json!({"cluster_cache_redis": {"password": password}}));
        assert!(!format!("{config:?}").contains("wrong-password"));
        let t = UreqTransport::new(&config);
        let node = Validator::new(config).unwrap();
        let token = server.token(Some(RESOURCE), "mcp:read");
        assert!(call(&node, &t, &token).is_forward());
        let mut warning = None;
        wait_until("a warning", Duration::from_secs(3), || {
            warning = node.cluster_warning(SystemTime::now());
            warning.is_some()
        });
        let warning = warning.unwrap();
        assert!(warning.contains(expect), "{warning}");
        assert!(!warning.contains("wrong-password") && !warning.contains("right-password"));
        assert!(!node.cluster_cache_up());
    }
}

/// An in-memory authorization server counting introspections and exchanges.
#[derive(Default)]
struct CountingAs {
    introspections: AtomicUsize,
    exchanges: AtomicUsize,
}

impl CountingAs {
    fn send(&self, r: &HttpRequest) -> Result<HttpResponse, TransportError> {
        std::thread::sleep(Duration::from_millis(20));
        let body = match r.purpose {
            Purpose::Introspection => {
                self.introspections.fetch_add(1, Ordering::SeqCst);
                json!({"active": true, "aud": RESOURCE, "sub": "user", "exp": now() + 3600, "scope": "mcp:read"})
            }
            Purpose::TokenExchange => {
                let n = self.exchanges.fetch_add(1, Ordering::SeqCst) + 1;
                json!({"access_token": format!("exchanged-{n}"), "token_type": "Bearer", "expires_in": 600,
                       "issued_token_type": "urn:ietf:params:oauth:token-type:access_token"})
            }
            other => panic!("unexpected {other:?}"),
        };
        Ok(HttpResponse::new(200, "application/json", body.to_string()))
    }
}

/// Token exchange answers are shared too: three nodes, one introspection and one exchange,
/// and every node forwards the same exchanged token.
#[test]
fn exchanged_tokens_are_shared_across_nodes() {
    let redis = RedisServer::start(None);
    let config = cluster_config(
        "https://as.example",
        &redis,
        json!({"passthrough_credentials": true, "token_exchange": {"enabled": true, "token_endpoint": "https://as.example/token",
                                  "client_id": "gw-ex", "client_secret": "gw-ex-secret"}}),
    );
    let nodes = nodes(&config);
    let auth_server = Arc::new(CountingAs::default());
    let barrier = Arc::new(Barrier::new(30));
    let handles: Vec<_> = (0..30)
        .map(|i| {
            let (node, a, b) = (nodes[i % 3].clone(), Arc::clone(&auth_server), Arc::clone(&barrier));
            std::thread::spawn(move || {
                b.wait();
                let req = Request::new("POST", "/mcp").header("Authorization", "Bearer client-token");
                let d = node.authorize(&req, &|r: &HttpRequest| a.send(r));
                let f = d.as_forward().unwrap_or_else(|| panic!("{:?}", d.as_response()));
                f.upstream_authorization().map(str::to_owned)
            })
        })
        .collect();
    let upstream: HashMap<Option<String>, usize> = handles.into_iter().fold(HashMap::new(), |mut m, h| {
        *m.entry(h.join().unwrap()).or_default() += 1;
        m
    });
    let report: Vec<String> = nodes.iter().map(|n| n.metrics().prometheus_text()).collect();
    let report: Vec<&str> =
        report.iter().flat_map(|t| t.lines().filter(|l| l.contains("cluster") && !l.starts_with('#'))).collect();
    assert_eq!(upstream.len(), 1, "{upstream:?} {report:#?}");
    assert_eq!(upstream.keys().next().unwrap().as_deref(), Some("Bearer exchanged-1"));
    assert_eq!(auth_server.introspections.load(Ordering::SeqCst), 1, "{report:#?}");
    assert_eq!(auth_server.exchanges.load(Ordering::SeqCst), 1, "{report:#?}");
}

/// Kong's Sentinel / Cluster / cloud fields: its defaults pass, asking for them is refused
/// by name; a misspelt field is named; the deprecated `timeout` passes.
#[test]
fn redis_fields_kong_writes_are_read_and_the_rest_refused_by_name() {
    let base = |redis: Value| {
        let mut v = config_json("http://127.0.0.1:9400/introspect", json!({"cluster_cache_strategy": "redis"}));
        v["cluster_cache_redis"] = redis;
        Config::from_value(v)
    };
    let kong_defaults = json!({"host": "127.0.0.1", "port": 6379, "timeout": 2000, "connect_timeout": 2000,
        "send_timeout": 2000, "read_timeout": 2000, "username": null, "password": null, "database": 0,
        "keepalive_pool_size": 256, "keepalive_backlog": null, "sentinel_master": null, "sentinel_role": null,
        "sentinel_nodes": null, "sentinel_addresses": null, "sentinel_username": null, "sentinel_password": null,
        "cluster_nodes": null, "cluster_addresses": null, "cluster_max_redirections": 5,
        "connection_is_proxied": false, "ssl": false, "ssl_verify": false, "server_name": null,
        "cloud_authentication": {"auth_provider": null, "aws_is_serverless": true}});
    // `cluster_max_redirections: 5` is Kong's default too: only used with cluster_nodes.
    let mut accepted = kong_defaults.clone();
    accepted.as_object_mut().unwrap().remove("cluster_max_redirections");
    base(accepted).unwrap();
    for (field, value, kind) in [
        ("sentinel_nodes", json!([{"host": "s1", "port": 26379}]), ErrorKind::Unsupported),
        ("sentinel_master", json!("mymaster"), ErrorKind::Unsupported),
        ("cluster_nodes", json!([{"ip": "10.0.0.1", "port": 6379}]), ErrorKind::Unsupported),
        ("cloud_authentication", json!({"auth_provider": "aws"}), ErrorKind::Unsupported),
        ("hots", json!("redis.internal"), ErrorKind::Config),
        ("port", json!(0), ErrorKind::Config),
        ("connect_timeout", json!(0), ErrorKind::Config),
        ("server_name", json!("other.example"), ErrorKind::Unsupported),
    ] {
        let err = base(json!({field: value})).unwrap_err();
        assert_eq!(err.kind(), kind, "{field}: {err}");
        assert_eq!(err.field(), Some(format!("cluster_cache_redis.{field}").as_str()), "{err}");
    }
    let err = base(json!({"host": "redis.internal", "password": "p4ss", "port": "6379"})).unwrap_err();
    assert!(!err.to_string().contains("p4ss"), "{err}");
    // Without the strategy, nothing is connected (and nothing but the names is checked).
    let mut off = config_json("http://127.0.0.1:9400/introspect", json!({}));
    off["cluster_cache_redis"] = json!({"port": 0});
    let v = Validator::new(Config::from_value(off).unwrap()).unwrap();
    assert!(!v.cluster_cache_up());
    assert!(v.cluster_warning(SystemTime::now()).is_none());
}

/// Nodes that reach Redis under different names still share its answers (the cluster
/// fields are not part of the configuration's identity).
#[test]
fn the_cache_key_ignores_how_a_node_reaches_redis() {
    let mut a = config_json("http://127.0.0.1:9400/introspect", json!({"cluster_cache_strategy": "redis"}));
    a["cluster_cache_redis"] = json!({"host": "127.0.0.1"});
    let mut b = a.clone();
    b["cluster_cache_redis"] = json!({"host": "localhost", "connect_timeout": 500});
    let mut c = a.clone();
    c["client_secret"] = json!("another-secret");
    let key = |v: Value| Validator::new(Config::from_value(v).unwrap()).unwrap().token_cache_key("t");
    assert_eq!(key(a.clone()), key(b));
    assert_ne!(key(a), key(c));
}
