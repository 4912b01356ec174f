//! Cost of a decision whose answer another node left in Redis (not in this node's cache),
//! against its parts measured in the same run: one Redis `GET` round trip on loopback plus
//! a local cache-hit decision (issue target: ≤ 1.3×). Starts its own `redis-server`
//! (Debian package) on a free port, without persistence.

use std::hint::black_box;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mcp_oauth2::{HttpRequest, HttpResponse, Request, TransportError, Validator};
use serde_json::json;

const RESOURCE: &str = "http://127.0.0.1:8080/mcp";
const CALLS: usize = 16_000;

struct Redis(Child);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let _redis = Redis(
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (scripts/install.sh installs it)"),
    );
    let config = json!({
        "resource": RESOURCE,
        "authorization_servers": ["http://127.0.0.1:9400"],
        "introspection_endpoint": "http://127.0.0.1:9/introspect",
        "client_id": "gateway", "client_secret": "gateway-secret",
        "claim_to_header": [{"claim": "sub", "header": "X-User-Id"}, {"claim": "client_id", "header": "X-Client-Id"}],
        "cluster_cache_strategy": "redis",
        "cluster_cache_redis": {"port": port, "prefix": "bench"}
    })
    .to_string();
    let writer = Validator::from_json(&config).unwrap();
    let reader = Validator::from_json(&config).unwrap();
    let start = Instant::now();
    while !(writer.cluster_cache_up() && reader.cluster_cache_up()) {
        assert!(start.elapsed() < Duration::from_secs(10), "Redis did not come up");
        std::thread::sleep(Duration::from_millis(10));
    }

    let body = json!({"active": true, "sub": "3f2504e0-4f89-41d3-9a0c-0305e82c3301", "client_id": "mcp-inspector",
                      "aud": RESOURCE, "exp": 4_102_444_800u64, "scope": "mcp:read mcp:write"})
    .to_string();
    let calls = AtomicUsize::new(0);
    let as_server = |_: &HttpRequest| -> Result<HttpResponse, TransportError> {
        calls.fetch_add(1, Ordering::Relaxed);
        Ok(HttpResponse::new(200, "application/json", body.clone()))
    };
    let auths: Vec<String> = (0..=CALLS + CALLS / 4).map(|i| format!("Bearer {i:0>1024}")).collect();
    let decide = |v: &Validator, auth: &str| {
        let req = Request::new("POST", "/mcp")
            .header("Host", "127.0.0.1:8080")
            .header("Content-Type", "application/json")
            .header("Authorization", auth);
        v.authorize(&req, &as_server).is_forward()
    };
    // The writer node fetches every answer (its introspections go to Redis).
    for auth in &auths {
        assert!(decide(&writer, auth));
    }
    let fetched = calls.load(Ordering::Relaxed);
    assert_eq!(fetched, auths.len());

    // The baseline's parts: a token the reader has cached, and a raw GET of a stored answer.
    let cached = &auths[auths.len() - 1];
    assert!(decide(&reader, cached));
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
    let mut conn = client.get_connection().unwrap();
    let stored_key = format!("bench:answer:{}", reader.token_cache_key(cached.strip_prefix("Bearer ").unwrap()));
    let stored: Vec<u8> = redis::cmd("GET").arg(&stored_key).query(&mut conn).unwrap();
    assert!(!stored.is_empty());

    // Alternating single calls, each timed: on this shared machine a scheduling hiccup
    // then spoils one sample, not a batch, and the medians compare the typical call.
    let (mut a, mut b) = (Vec::with_capacity(CALLS), Vec::with_capacity(CALLS));
    for auth in &auths[..CALLS] {
        let t = Instant::now();
        assert!(decide(&reader, black_box(auth)));
        a.push(t.elapsed().as_secs_f64());
        // The GET of an entry like the one just replayed (another key each time, as there).
        let key = format!("bench:answer:{}", reader.token_cache_key(&auth["Bearer ".len()..]));
        let t = Instant::now();
        let v: Vec<u8> = redis::cmd("GET").arg(black_box(&key)).query(&mut conn).unwrap();
        black_box(v);
        assert!(decide(&reader, black_box(cached)));
        b.push(t.elapsed().as_secs_f64());
    }
    let mut ratios: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x / y).collect();
    for v in [&mut a, &mut b, &mut ratios] {
        v.sort_by(f64::total_cmp);
    }
    let q = |v: &[f64], f: f64| v[((v.len() - 1) as f64 * f) as usize];
    // Where the difference goes: the same decision with the stored answer handed over from
    // memory (begin → Need → resume_cached), no Redis: what the core does besides the GET.
    let offline = Validator::from_json(&config.replace("\"redis\"", "\"off\"")).unwrap();
    let (at, status, body) = {
        let text = String::from_utf8(stored.clone()).unwrap();
        let mut parts = text.splitn(4, '\n');
        let at: u64 = parts.next().unwrap().parse().unwrap();
        let status: u16 = parts.next().unwrap().parse().unwrap();
        let _ = parts.next();
        (at, status, parts.next().unwrap().to_owned())
    };
    let fetched_at = std::time::UNIX_EPOCH + Duration::from_millis(at);
    let mut c = Vec::with_capacity(CALLS);
    for auth in &auths[CALLS..CALLS + CALLS / 4] {
        let t = Instant::now();
        let req = Request::new("POST", "/mcp")
            .header("Host", "127.0.0.1:8080")
            .header("Content-Type", "application/json")
            .header("Authorization", black_box(auth));
        let now = std::time::SystemTime::now();
        let d = match offline.begin(&req, now) {
            mcp_oauth2::Step::Need(_, p) => {
                match p.resume_cached(Ok(HttpResponse::new(status, "application/json", body.clone())), fetched_at, now)
                {
                    mcp_oauth2::Step::Done(d) => d,
                    other => panic!("{other:?}"),
                }
            }
            other => panic!("{other:?}"),
        };
        assert!(d.is_forward());
        c.push(t.elapsed().as_secs_f64());
    }
    c.sort_by(f64::total_cmp);
    println!("  of which the core's part (the answer handed over from memory): median {:.1} µs", q(&c, 0.5) * 1e6);
    assert_eq!(calls.load(Ordering::Relaxed), fetched, "the reader never called the authorization server");
    println!(
        "paired: Redis hit, not in the local cache: median {:.1} µs (quartiles {:.1}..{:.1}); \
         Redis GET round trip + local cache hit: median {:.1} µs (quartiles {:.1}..{:.1}); \
         ratio of medians {:.2}x, median of pairwise ratios {:.2}x ({CALLS} alternating calls)",
        q(&a, 0.5) * 1e6,
        q(&a, 0.25) * 1e6,
        q(&a, 0.75) * 1e6,
        q(&b, 0.5) * 1e6,
        q(&b, 0.25) * 1e6,
        q(&b, 0.75) * 1e6,
        q(&a, 0.5) / q(&b, 0.5),
        q(&ratios, 0.5),
    );
}
