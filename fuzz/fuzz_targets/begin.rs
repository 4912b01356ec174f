//! The whole `Validator::begin` on arbitrary requests (method, path, headers, peer, body),
//! against validators whose caches hold nothing: nothing may be allowed (`Forward`) without
//! a validated token, and every HTTP step must go to a configured authorization-server URL
//! (never one derived from the request).
//!
//! Input: one byte choosing the configuration and the peer address, then a request in the
//! readable format (fuzz/src/lib.rs).
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use mcp_oauth2::{Decision, Purpose, Step, Validator};
use mcp_oauth2_fuzz::{
    discovery_config, introspection_config, jwks_config, now, rich_introspection_config, validator, RawRequest,
    INTROSPECTION_URL, JWKS_URL,
};

/// Built once, never given an answer: their caches stay empty.
static VALIDATORS: LazyLock<[Validator; 4]> = LazyLock::new(|| {
    [
        validator(&introspection_config()),
        validator(&rich_introspection_config()),
        validator(&jwks_config()),
        validator(&discovery_config()),
    ]
});

/// The URLs the fixed configurations may ask for.
fn allowed_url(url: &str, purpose: Purpose) -> bool {
    match purpose {
        Purpose::Introspection => url == INTROSPECTION_URL,
        Purpose::Jwks => url == JWKS_URL,
        Purpose::Discovery => url.starts_with("https://as.example.com/.well-known/"),
        _ => false,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    let validator = &VALIDATORS[usize::from(selector & 3)];
    let peer: Option<IpAddr> = match (selector >> 2) & 3 {
        0 => None,
        1 => Some(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3))),
        2 => Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))),
        _ => Some(IpAddr::V6(Ipv6Addr::LOCALHOST)),
    };
    let raw = RawRequest::parse(rest);
    let mut req = raw.request();
    req.peer_addr = peer;
    match validator.begin(&req, now()) {
        Step::Done(Decision::Forward(_)) => panic!("allowed without a validated token"),
        Step::Done(Decision::Respond(r)) => {
            assert!((200..600).contains(&r.status()));
            for (name, value) in r.headers() {
                assert!(!name.is_empty());
                assert!(mcp_oauth2_fuzz::header_value_is_clean(value), "response header {name} is not clean");
            }
        }
        Step::Need(http, _pending) => {
            assert!(allowed_url(&http.url, http.purpose), "asked for {:?} at an unexpected URL", http.purpose);
        }
        Step::Wait(_) => panic!("nothing is in flight: a request cannot wait"),
    }
});
