//! A decision that outlives its validator holds none of the validator's cache: it keeps
//! its header plan and grant, not the validator. Measured with a counting allocator that
//! counts only this test's thread, so the harness does not disturb the figure:
//!
//!     cargo test --test decision_memory -- --nocapture

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicIsize, Ordering};

use mcp_oauth2::{HttpRequest, HttpResponse, Request, TransportError, Validator};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

thread_local! {
    static COUNTED: Cell<bool> = const { Cell::new(false) };
}

fn counted() -> bool {
    // `try_with`: allocations during thread teardown are simply not counted.
    COUNTED.try_with(Cell::get).unwrap_or(false)
}

fn add(bytes: isize) {
    if counted() {
        LIVE.fetch_add(bytes, Ordering::Relaxed);
    }
}

// SAFETY: forwards to the system allocator unchanged and only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        add(layout.size() as isize);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        add(-(layout.size() as isize));
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        add(new_size as isize - layout.size() as isize);
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const ENTRIES: usize = 10_000;

#[test]
fn a_decision_outliving_its_validator_keeps_no_cache_memory() {
    // Everything below runs on this thread and is counted from zero, the validator too.
    COUNTED.with(|c| c.set(true));
    let validator = Validator::from_json(
        r#"{"resource": "https://mcp.example.com/mcp",
            "authorization_servers": ["https://as.example.com"],
            "introspection_endpoint": "https://as.example.com/introspect",
            "client_id": "gateway", "client_secret": "gateway-secret",
            "cache_max_entries": 20000,
            "claim_to_header": [{"claim": "sub", "header": "X-User-Id"}]}"#,
    )
    .unwrap();
    let transport = |req: &HttpRequest| -> Result<HttpResponse, TransportError> {
        let body = String::from_utf8_lossy(&req.body);
        let token = body.split('&').find_map(|kv| kv.strip_prefix("token=")).unwrap_or_default().to_owned();
        let answer = format!(
            r#"{{"active": true, "sub": "user-{token}", "scope": "mcp:read", "client_id": "app",
                 "aud": "https://mcp.example.com/mcp", "exp": 4102444800}}"#
        );
        Ok(HttpResponse::new(200, "application/json", answer))
    };
    let mut kept = None;
    for i in 0..ENTRIES {
        let auth = format!("Bearer token-{i:05}");
        let d = validator.authorize(&Request::new("POST", "/mcp").header("Authorization", &auth), &transport);
        assert!(d.is_forward(), "{:?}", d.reason());
        if i == ENTRIES / 2 {
            kept = Some(d);
        }
    }
    let kept = kept.unwrap();
    let cached = validator.cached_entries();
    let with_cache = LIVE.load(Ordering::Relaxed);
    drop(validator);
    let after_drop = LIVE.load(Ordering::Relaxed);
    // The kept decision still reads as it did.
    let forward = kept.as_forward().unwrap();
    assert_eq!(forward.identity().subject(), Some("user-token-05000"));
    assert!(forward.must_remove("X_User_Id"));
    assert_eq!(forward.set_headers().collect::<Vec<_>>(), [("X-User-Id", "user-token-05000")]);
    drop(kept);
    let at_end = LIVE.load(Ordering::Relaxed);
    COUNTED.with(|c| c.set(false));

    println!(
        "decision_memory: validator with {cached} cached entries: {with_cache} bytes live; \
         after dropping it with one decision kept: {after_drop} bytes; after dropping the decision: {at_end} bytes"
    );
    assert_eq!(cached, ENTRIES);
    assert!(with_cache > 1_000_000, "the cache was expected to take megabytes: {with_cache}");
    // Far below the cache's size: the decision alone (its grant and header plan).
    assert!(after_drop < with_cache / 1000, "{after_drop} bytes still live of {with_cache}");
    assert!(after_drop < 4096, "{after_drop} bytes still live after dropping the validator");
    assert!(at_end <= 0, "{at_end} bytes leaked");
}
