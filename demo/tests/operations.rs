//! The demo proxy in operation: several proxies sharing answers through a real Redis
//! (`cluster_cache_strategy: redis`, issue 14) in front of the real oidc-provider AS
//! (tests/node/as-server.mjs), and the operations endpoints (`/metrics`, the admin evict
//! endpoint; issue 12).
//!
//! Needs `redis-server` (Debian) and `npm ci --prefix tests/node` (scripts/install-demo.sh);
//! without them these tests fail, never skip. Every process is started here on 127.0.0.1
//! (random ports; Redis without persistence) and killed when its handle drops.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

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
    let node = &c.nodes[0].0;
    assert!(node.wait_log(" POST /_mcp_oauth2/evict 200 evicted", Duration::from_secs(3)).is_some());
    assert!(!node.log().join("\n").contains(&token));
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
    let config = introspection_config(&oidc);
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
