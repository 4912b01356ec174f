//! The metrics (issue 12): a scripted request sequence, then the Prometheus text format
//! read back by an independent parser, every value checked.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use mcp_oauth2::{
    HttpRequest, HttpResponse, MetricsSnapshot, Request, Step, TransportError, TransportErrorKind, Validator,
};
use serde_json::json;

fn validator() -> Validator {
    Validator::from_json(
        &json!({"resource": "https://mcp.example/mcp", "authorization_servers": ["https://as.example"],
                "introspection_endpoint": "https://as.example/introspect", "client_id": "c", "client_secret": "s",
                "scopes_required": ["mcp:read"]})
        .to_string(),
    )
    .unwrap()
}

/// Every sample of the text, by metric name and sorted labels.
fn parse(text: &str) -> HashMap<String, f64> {
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("the text parses");
    let mut out = HashMap::new();
    for s in scrape.samples {
        let mut labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        labels.sort();
        let value = match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Untyped(v)
            | prometheus_parse::Value::Gauge(v) => v,
            prometheus_parse::Value::Histogram(buckets) => {
                for b in buckets {
                    let mut l = labels.clone();
                    l.push(format!("le={}", b.less_than));
                    l.sort();
                    out.insert(format!("{}_bucket{{{}}}", s.metric, l.join(",")), b.count);
                }
                continue;
            }
            _ => continue,
        };
        out.insert(format!("{}{{{}}}", s.metric, labels.join(",")), value);
    }
    out
}

#[test]
fn a_scripted_sequence_is_counted_and_rendered() {
    let v = validator();
    let t0 = SystemTime::now();
    let active = |scope: &str| -> Result<HttpResponse, TransportError> {
        Ok(HttpResponse::new(
            200,
            "application/json",
            json!({"active": true, "aud": "https://mcp.example/mcp", "scope": scope}).to_string(),
        ))
    };
    let req = |token: &str| format!("Bearer {token}");
    let (a, b, c) = (req("tok-a"), req("tok-b"), req("tok-c"));
    // 1. No token: 401 no_credentials.
    assert!(matches!(v.begin(&Request::new("GET", "/mcp"), t0), Step::Done(_)));
    // 2. tok-a: miss, introspected in 30 ms, allowed; a concurrent request waits.
    let Step::Need(_, p) = v.begin(&Request::new("GET", "/mcp").header("Authorization", &a), t0) else { panic!() };
    let Step::Wait(t) = v.begin(&Request::new("GET", "/mcp").header("Authorization", &a), t0) else { panic!() };
    let at = t0 + Duration::from_millis(30);
    assert!(matches!(p.resume(active("mcp:read"), at), Step::Done(d) if d.is_forward()));
    assert!(matches!(t.resume(at), Step::Done(d) if d.is_forward()));
    // 3. tok-a again: a cache hit.
    assert!(
        matches!(v.begin(&Request::new("GET", "/mcp").header("Authorization", &a), at), Step::Done(d) if d.is_forward())
    );
    // 4. tok-b lacks the scope: 403; tok-c: the AS times out after 2 s: 503.
    let Step::Need(_, p) = v.begin(&Request::new("GET", "/mcp").header("Authorization", &b), t0) else { panic!() };
    assert!(matches!(p.resume(active("other"), t0), Step::Done(d) if d.reason().as_str() == "insufficient_scope"));
    let Step::Need(_, p) = v.begin(&Request::new("GET", "/mcp").header("Authorization", &c), t0) else { panic!() };
    let late = t0 + Duration::from_secs(2);
    let timeout = Err(TransportError::new(TransportErrorKind::Timeout, "slow"));
    assert!(
        matches!(p.resume(timeout, late), Step::Done(d) if d.reason().as_str() == "authorization_server_unavailable")
    );
    // 5. Revocation, and the host's shared cache.
    assert!(v.evict("tok-a"));
    v.record_shared_cache(true);
    v.record_shared_cache(false);
    v.record_shared_cache(false);

    let m = parse(&v.metrics().prometheus_text());
    let get = |k: &str| *m.get(k).unwrap_or_else(|| panic!("no sample {k}: {m:#?}"));
    assert_eq!(get("mcp_oauth2_decisions_total{decision=allow,reason=allowed}"), 3.0);
    assert_eq!(get("mcp_oauth2_decisions_total{decision=deny,reason=no_credentials}"), 1.0);
    assert_eq!(get("mcp_oauth2_decisions_total{decision=deny,reason=insufficient_scope}"), 1.0);
    assert_eq!(get("mcp_oauth2_decisions_total{decision=error,reason=authorization_server_unavailable}"), 1.0);
    assert_eq!(get("mcp_oauth2_cache_lookups_total{cache=token,result=hit}"), 1.0);
    assert_eq!(get("mcp_oauth2_cache_lookups_total{cache=token,result=miss}"), 4.0);
    assert_eq!(get("mcp_oauth2_cache_lookups_total{cache=shared,result=hit}"), 1.0);
    assert_eq!(get("mcp_oauth2_cache_lookups_total{cache=shared,result=miss}"), 2.0);
    assert_eq!(get("mcp_oauth2_cache_evictions_total{cache=token,cause=revoked}"), 1.0);
    assert_eq!(get("mcp_oauth2_authorization_server_requests_total{kind=introspection,result=ok}"), 2.0);
    assert_eq!(get("mcp_oauth2_authorization_server_requests_total{kind=introspection,result=timeout}"), 1.0);
    assert_eq!(get("mcp_oauth2_single_flight_waits_total{waits_for=validation}"), 1.0);
    // Latency on the host's clock: 0 ms, 30 ms and 2 s.
    assert_eq!(
        get("mcp_oauth2_authorization_server_request_duration_seconds_bucket{kind=introspection,le=0.005}"),
        1.0
    );
    assert_eq!(get("mcp_oauth2_authorization_server_request_duration_seconds_bucket{kind=introspection,le=0.05}"), 2.0);
    assert_eq!(get("mcp_oauth2_authorization_server_request_duration_seconds_bucket{kind=introspection,le=2.5}"), 3.0);
    assert_eq!(get("mcp_oauth2_authorization_server_request_duration_seconds_sum{kind=introspection}"), 2.03);
    assert_eq!(get("mcp_oauth2_authorization_server_request_duration_seconds_count{kind=introspection}"), 3.0);

    // Snapshots of several processes merge.
    let one = v.metrics();
    let mut both = MetricsSnapshot::from_bytes(&one.to_bytes()).unwrap();
    both.merge(&one);
    let m = parse(&both.prometheus_text());
    assert_eq!(m["mcp_oauth2_decisions_total{decision=allow,reason=allowed}"], 6.0);
}

#[test]
fn metrics_never_carry_tokens_or_secrets() {
    let v = validator();
    let as_server = |_: &HttpRequest| -> Result<HttpResponse, TransportError> {
        Ok(HttpResponse::new(500, "text/plain", "secret-as-text"))
    };
    v.authorize(&Request::new("GET", "/mcp").header("Authorization", "Bearer tok-secret-123"), &as_server);
    let text = v.metrics().prometheus_text();
    for s in ["tok-secret-123", "secret-as-text", "\"s\""] {
        assert!(!text.contains(s), "{s} in metrics");
    }
}
