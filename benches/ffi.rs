//! One cache-hit decision through the C ABI against the same through the Rust API, in the
//! same run (the ratio is the figure; target ≤ 1.2×).
//!
//! Both sides do the same work a host does per request: describe the request, `begin`
//! (a cache hit, so the decision is made at once), ask whether it is allowed, read the
//! headers to remove and to set, and drop the decision. The C side calls the exported
//! `extern "C"` functions through their symbols, as a C host does (no inlining across the
//! crate boundary without LTO).
//!
//! `cargo bench --bench ffi`

use std::hint::black_box;
use std::time::{Instant, SystemTime};

use criterion::{criterion_group, criterion_main, Criterion};
use mcp_oauth2::ffi::*;
use mcp_oauth2::{HttpResponse, Request, Step, Validator};

const CONFIG: &str = r#"{
    "resource": "https://mcp.example.com/mcp",
    "authorization_servers": ["https://as.example.com"],
    "introspection_endpoint": "https://as.example.com/introspect",
    "client_id": "gateway", "client_secret": "gateway-secret",
    "scopes_required": ["mcp:read"],
    "claim_to_header": [{"claim": "sub", "header": "X-User-Id"}, {"claim": "client_id", "header": "X-Client-Id"}]
}"#;

const AUTHORIZATION: &str = "Bearer 8xLOxBtZp8F3kLq0a1c2d3e4f5g6h7i8j9k0l1m2n3o4";

fn active() -> HttpResponse {
    HttpResponse::new(
        200,
        "application/json",
        r#"{"active": true, "sub": "alice", "client_id": "app", "scope": "mcp:read mcp:write",
            "aud": "https://mcp.example.com/mcp", "exp": 4102444800}"#,
    )
}

/// Puts the token into the validator's cache through the Rust API.
fn warm(validator: &Validator) {
    let request = Request::new("POST", "/mcp").header("Authorization", AUTHORIZATION);
    match validator.begin(&request, SystemTime::now()) {
        Step::Need(_, pending) => {
            assert!(matches!(pending.resume(Ok(active()), SystemTime::now()), Step::Done(d) if d.is_forward()))
        }
        _ => panic!("the cache should be cold"),
    }
}

fn rust_api(validator: &Validator) -> usize {
    let request = Request::new("POST", "/mcp")
        .header("Host", "mcp.example.com")
        .header("Authorization", AUTHORIZATION)
        .header("Content-Type", "application/json");
    let Step::Done(decision) = validator.begin(&request, SystemTime::now()) else { panic!("not a cache hit") };
    let forward = decision.as_forward().expect("allowed");
    let mut n = 0;
    for name in forward.remove_headers() {
        n += name.len();
    }
    for (name, value) in forward.set_headers() {
        n += name.len() + value.len();
    }
    n
}

/// The host's clock, as a C host reads it (Unix milliseconds).
fn now_ms() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn header(name: &'static str, value: &'static str) -> mcp_oauth2_header {
    mcp_oauth2_header { name: name.as_ptr(), name_len: name.len(), value: value.as_ptr(), value_len: value.len() }
}

fn c_abi(validator: *const mcp_oauth2_validator) -> usize {
    let headers = [
        header("Host", "mcp.example.com"),
        header("Authorization", AUTHORIZATION),
        header("Content-Type", "application/json"),
    ];
    let request = mcp_oauth2_request {
        method: b"POST".as_ptr(),
        method_len: 4,
        path: b"/mcp".as_ptr(),
        path_len: 4,
        headers: headers.as_ptr(),
        headers_len: headers.len(),
        peer_addr: std::ptr::null(),
        peer_addr_len: 0,
        body: std::ptr::null(),
        body_len: 0,
    };
    let mut decision: *mut mcp_oauth2_decision = std::ptr::null_mut();
    let mut pending: *mut mcp_oauth2_pending = std::ptr::null_mut();
    let mut n = 0;
    // SAFETY: every pointer is a live local or the live validator, as the header requires;
    // views are read before the decision is freed.
    unsafe {
        let r = mcp_oauth2_validator_begin(validator, &request, now_ms(), &mut decision, &mut pending);
        assert!(r == mcp_oauth2_result::Ok && pending.is_null(), "not a cache hit");
        let mut allowed = false;
        mcp_oauth2_decision_allowed(decision, &mut allowed);
        assert!(allowed);
        let mut count = 0;
        let mut name = mcp_oauth2_str { ptr: std::ptr::null(), len: 0 };
        let mut value = name;
        mcp_oauth2_decision_remove_header_count(decision, &mut count);
        for i in 0..count {
            mcp_oauth2_decision_remove_header(decision, i, &mut name);
            n += name.len;
        }
        mcp_oauth2_decision_set_header_count(decision, &mut count);
        for i in 0..count {
            mcp_oauth2_decision_set_header(decision, i, &mut name, &mut value);
            n += name.len + value.len;
        }
        mcp_oauth2_decision_free(&mut decision);
    }
    n
}

fn bench(c: &mut Criterion) {
    let validator = Validator::from_json(CONFIG).expect("config");
    warm(&validator);

    let mut handle: *mut mcp_oauth2_validator = std::ptr::null_mut();
    // SAFETY: CONFIG is a live string; `handle` is a local pointer variable.
    let r = unsafe { mcp_oauth2_validator_new(CONFIG.as_ptr(), CONFIG.len(), &mut handle, std::ptr::null_mut()) };
    assert_eq!(r, mcp_oauth2_result::Ok);
    // Warm the C validator's own cache through the C ABI's sans-I/O flow.
    let headers = [header("Authorization", AUTHORIZATION)];
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
    let body = active().body;
    let content_type = [header("Content-Type", "application/json")];
    // SAFETY: live locals and the live validator handle, as the header requires.
    unsafe {
        let mut decision = std::ptr::null_mut();
        let mut pending = std::ptr::null_mut();
        let r = mcp_oauth2_validator_begin(handle, &request, now_ms(), &mut decision, &mut pending);
        assert_eq!(r, mcp_oauth2_result::Ok);
        assert!(!pending.is_null());
        let (ct, n) = (content_type.as_ptr(), body.len());
        let r = mcp_oauth2_pending_resume(pending, now_ms(), 200, ct, 1, body.as_ptr(), n, &mut decision);
        assert_eq!(r, mcp_oauth2_result::Ok);
        mcp_oauth2_pending_free(&mut pending);
        mcp_oauth2_decision_free(&mut decision);
    }
    assert_eq!(rust_api(&validator), c_abi(handle));

    let mut group = c.benchmark_group("cache_hit_decision");
    group.bench_function("rust_api", |b| b.iter(|| rust_api(black_box(&validator))));
    group.bench_function("c_abi", |b| b.iter(|| c_abi(black_box(handle))));
    group.finish();

    paired_ratio(&validator, handle);

    // SAFETY: `handle` came from mcp_oauth2_validator_new and is freed once.
    unsafe { mcp_oauth2_validator_free(&mut handle) };
}

/// The ratio measured in alternating short batches, so that load from other processes
/// (the machine is shared) falls on both sides alike: the median of per-round ratios.
fn paired_ratio(validator: &Validator, handle: *const mcp_oauth2_validator) {
    const ROUNDS: usize = 201;
    const BATCH: u32 = 5_000;
    let mut ratios = Vec::with_capacity(ROUNDS);
    let (mut rust_total, mut c_total) = (0.0, 0.0);
    for _ in 0..ROUNDS {
        let start = Instant::now();
        for _ in 0..BATCH {
            black_box(rust_api(black_box(validator)));
        }
        let rust = start.elapsed().as_secs_f64();
        let start = Instant::now();
        for _ in 0..BATCH {
            black_box(c_abi(black_box(handle)));
        }
        let c = start.elapsed().as_secs_f64();
        ratios.push(c / rust);
        rust_total += rust;
        c_total += c;
    }
    ratios.sort_by(f64::total_cmp);
    let per_call = |total: f64| total / f64::from(BATCH) / ROUNDS as f64 * 1e9;
    println!(
        "paired: rust_api {:.0} ns, c_abi {:.0} ns per decision; C ABI / Rust API = {:.2}x (median of {ROUNDS} \
         alternating rounds; quartiles {:.2}x..{:.2}x)",
        per_call(rust_total),
        per_call(c_total),
        ratios[ROUNDS / 2],
        ratios[ROUNDS / 4],
        ratios[3 * ROUNDS / 4],
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
