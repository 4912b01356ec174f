//! Memory per cached entry: 100k distinct tokens validated against Keycloak-shaped
//! introspection responses (the Kong documentation config: `sub` → `X-User-Id`).
//! Counts live heap bytes with a counting allocator; prints bytes per entry against the
//! baseline measured just before filling (target ≤ 512 bytes).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use mcp_oauth2::{HttpRequest, HttpResponse, Request, TransportError, Validator};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator unchanged and only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const ENTRIES: usize = 100_000;

fn main() {
    let config = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/testdata/kong-config.json"))
        .unwrap()
        .replace(
            "\"insecure_relaxed_audience_validation\": true",
            "\"insecure_relaxed_audience_validation\": true, \"cache_max_entries\": 100000",
        );
    let validator = Validator::from_json(&config).unwrap();
    let keycloak: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/testdata/keycloak-introspection.json"))
            .unwrap(),
    )
    .unwrap();

    // Each response differs like real ones do (sub, jti, session ids).
    let transport = |req: &HttpRequest| -> Result<HttpResponse, TransportError> {
        let n = String::from_utf8_lossy(&req.body).len();
        let mut body = keycloak.clone();
        body["sub"] = format!("3f2504e0-4f89-41d3-9a0c-{n:012}").into();
        Ok(HttpResponse::new(200, "application/json", body.to_string()))
    };
    let tokens: Vec<String> = (0..ENTRIES).map(|i| format!("Bearer eyJhbGciOiJSUzI1NiJ9.token-{i:08}")).collect();

    let before = LIVE.load(Ordering::Relaxed);
    for auth in &tokens {
        let d = validator.authorize(&Request::new("POST", "/mcp").header("Authorization", auth), &transport);
        assert!(d.is_forward());
    }
    let after = LIVE.load(Ordering::Relaxed);
    // The cache is split into 16 LRU shards of capacity/16 each, so a few shards evict
    // before the whole reaches its capacity.
    let entries = validator.cached_entries();
    assert!(entries >= ENTRIES * 98 / 100, "{entries}");
    let per_entry = (after - before) as f64 / entries as f64;
    println!(
        "cache_memory: {entries} entries cached, {} bytes live growth, {per_entry:.0} bytes/entry (target <= 512)",
        after - before
    );
}
