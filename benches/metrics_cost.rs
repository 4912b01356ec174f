//! Cache-hit decisions in a loop, for scripts/bench-metrics.sh, which runs this program
//! built with and without counting (feature `_bench-metrics-off`) in alternation and
//! reports the difference per decision. Prints ns per decision and the build.

use std::hint::black_box;
use std::time::{Instant, SystemTime};

use mcp_oauth2::{HttpRequest, HttpResponse, Request, Step, TransportError, Validator};
use serde_json::json;

const RESOURCE: &str = "http://127.0.0.1:8080/mcp";

fn main() {
    let decisions: u64 = std::env::var("DECISIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(5_000_000);
    let validator = Validator::from_json(
        &json!({
            "resource": RESOURCE,
            "authorization_servers": ["http://127.0.0.1:9400"],
            "introspection_endpoint": "http://127.0.0.1:9/introspect",
            "client_id": "gateway", "client_secret": "gateway-secret",
            "claim_to_header": [{"claim": "sub", "header": "X-User-Id"}, {"claim": "client_id", "header": "X-Client-Id"}]
        })
        .to_string(),
    )
    .unwrap();
    let body = json!({"active": true, "sub": "3f2504e0-4f89-41d3-9a0c-0305e82c3301", "client_id": "mcp-inspector",
                      "aud": RESOURCE, "exp": 4_102_444_800u64, "scope": "mcp:read mcp:write"})
    .to_string();
    let as_server = move |_: &HttpRequest| -> Result<HttpResponse, TransportError> {
        Ok(HttpResponse::new(200, "application/json", body.clone()))
    };
    let auth = format!("Bearer {}", "x".repeat(1024));
    let req = Request::new("POST", "/mcp")
        .header("Host", "127.0.0.1:8080")
        .header("Content-Type", "application/json")
        .header("Authorization", &auth);
    assert!(validator.authorize(&req, &as_server).is_forward());
    let now = SystemTime::now();
    let start = Instant::now();
    for _ in 0..decisions {
        match validator.begin(black_box(&req), now) {
            Step::Done(d) => assert!(black_box(d).is_forward()),
            _ => unreachable!("a cache hit"),
        }
    }
    let ns = start.elapsed().as_nanos() as f64 / decisions as f64;
    let counted = validator
        .metrics()
        .prometheus_text()
        .lines()
        .any(|l| l.starts_with("mcp_oauth2_decisions_total{decision=\"allow\"") && !l.ends_with(" 0"));
    let build = if cfg!(feature = "_bench-metrics-off") { "without metrics" } else { "with metrics" };
    println!("{build}: {ns:.1} ns per cache-hit decision ({decisions} decisions; counted: {counted})");
}
