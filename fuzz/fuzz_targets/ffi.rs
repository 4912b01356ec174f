//! The C ABI (src/ffi, include/mcp_oauth2.h) with arbitrary bytes: configurations,
//! requests (method, path, peer address, headers, body), the authorization server's answers
//! (status, headers, body, or a transport failure) and metrics snapshots. Beyond "no panic"
//! (a panic aborts the fuzzer even inside the ABI's catch_unwind): every result is one the
//! header documents for that call, every view is non-NULL and UTF-8 where it says so,
//! header values hold no CR/LF/NUL, a spent pending says so, its cache-key view outlives
//! the resume, and the C ABI decides exactly as the Rust API does for the same inputs.
//!
//! Input: sections separated by `\n--\n`:
//! 1. the configuration: `0`..`3` (or empty) for a fixed one (fuzz/src/lib.rs), else JSON;
//! 2. the request: method, path, peer address (empty: none) lines, `Name: value` header
//!    lines, an empty line, the body (absent without the empty line);
//! 3. every HTTP answer: a status line, `Name: value` header lines, an empty line, the
//!    body; or `!fail <kind>` for a transport failure;
//! 4. bytes for `mcp_oauth2_metrics_from_bytes`.
#![no_main]

use std::ptr;

use libfuzzer_sys::fuzz_target;
use mcp_oauth2::ffi::*;
use mcp_oauth2::{Decision, HttpResponse, Request, Step, TransportError, TransportErrorKind, Validator};
use mcp_oauth2_fuzz::{
    discovery_config, introspection_config, jwks_config, rich_introspection_config, sections, NOW_SECS,
};

const NOW_MS: u64 = NOW_SECS * 1000;
type R = mcp_oauth2_result;

fn lines(data: &[u8]) -> (Vec<&[u8]>, Option<&[u8]>) {
    // Lines up to the first empty one; the rest after it.
    let mut out = Vec::new();
    let mut rest = data;
    loop {
        let end = rest.iter().position(|b| *b == b'\n');
        let line = &rest[..end.unwrap_or(rest.len())];
        if end.is_some() && line.is_empty() {
            return (out, Some(&rest[1..]));
        }
        out.push(line);
        match end {
            Some(e) => rest = &rest[e + 1..],
            None => return (out, None),
        }
    }
}

fn header(line: &[u8]) -> (&[u8], &[u8]) {
    match line.iter().position(|b| *b == b':') {
        Some(i) => (&line[..i], line[i + 1..].strip_prefix(b" ").unwrap_or(&line[i + 1..])),
        None => (line, &[]),
    }
}

fn c_header(name: &[u8], value: &[u8]) -> mcp_oauth2_header {
    mcp_oauth2_header { name: name.as_ptr(), name_len: name.len(), value: value.as_ptr(), value_len: value.len() }
}

fn empty_str() -> mcp_oauth2_str {
    mcp_oauth2_str { ptr: ptr::null(), len: 0 }
}

/// A view's text: non-NULL and UTF-8, as the header promises.
unsafe fn text<'a>(s: mcp_oauth2_str) -> &'a str {
    assert!(!s.ptr.is_null(), "a NULL view");
    std::str::from_utf8(std::slice::from_raw_parts(s.ptr.cast::<u8>(), s.len)).expect("a view that is not UTF-8")
}

unsafe fn bytes<'a>(b: mcp_oauth2_bytes) -> &'a [u8] {
    assert!(!b.ptr.is_null(), "a NULL view");
    std::slice::from_raw_parts(b.ptr, b.len)
}

/// An optional string getter: `Ok` with a view, or `Absent`.
unsafe fn optional(r: R, s: mcp_oauth2_str) {
    match r {
        R::Ok => {
            text(s);
        }
        R::Absent => {}
        other => panic!("a getter returned {other:?}"),
    }
}

/// Reads everything a decision offers; returns (allowed, status).
unsafe fn inspect_decision(d: *const mcp_oauth2_decision) -> (bool, u16) {
    let mut allowed = false;
    assert_eq!(mcp_oauth2_decision_allowed(d, &mut allowed), R::Ok);
    let mut s = empty_str();
    assert_eq!(mcp_oauth2_decision_reason(d, &mut s), R::Ok);
    text(s);
    optional(mcp_oauth2_decision_detail(d, &mut s), s);
    let mut level = 0u32;
    assert_eq!(mcp_oauth2_decision_log_level(d, &mut level), R::Ok);
    assert!(level <= 3);
    let mut status = 0u16;
    let status_result = mcp_oauth2_decision_status(d, &mut status);
    if allowed {
        assert_eq!(status_result, R::Absent, "an allowed decision has no response status");
        let mut count = 0usize;
        assert_eq!(mcp_oauth2_decision_set_header_count(d, &mut count), R::Ok);
        for i in 0..count {
            let (mut n, mut v) = (empty_str(), empty_str());
            assert_eq!(mcp_oauth2_decision_set_header(d, i, &mut n, &mut v), R::Ok);
            text(n);
            assert!(mcp_oauth2_fuzz::header_value_is_clean(text(v)), "CR, LF or NUL in an upstream header");
        }
        assert_eq!(mcp_oauth2_decision_set_header(d, count, &mut s, &mut s), R::OutOfRange);
        assert_eq!(mcp_oauth2_decision_remove_header_count(d, &mut count), R::Ok);
        for i in 0..count {
            assert_eq!(mcp_oauth2_decision_remove_header(d, i, &mut s), R::Ok);
            let name = text(s);
            let mut remove = false;
            assert_eq!(mcp_oauth2_decision_must_remove(d, name.as_ptr(), name.len(), &mut remove), R::Ok);
            assert!(remove, "a header to remove is not one that must be removed");
        }
        assert_eq!(mcp_oauth2_decision_claims_json(d, &mut s), R::Ok);
        serde_json::from_str::<serde_json::Value>(text(s)).expect("claims_json is JSON");
        optional(mcp_oauth2_decision_subject(d, &mut s), s);
        optional(mcp_oauth2_decision_client_id(d, &mut s), s);
        optional(mcp_oauth2_decision_scope(d, &mut s), s);
        optional(mcp_oauth2_decision_consumer(d, &mut s), s);
        optional(mcp_oauth2_decision_credential(d, &mut s), s);
        optional(mcp_oauth2_decision_introspection(d, &mut s), s);
        let mut refused = ptr::null_mut();
        assert_eq!(mcp_oauth2_decision_refuse(d, 1, &mut refused), R::Ok);
        let (refused_allowed, _) = inspect_decision(refused);
        assert!(!refused_allowed);
        mcp_oauth2_decision_free(&mut refused);
    } else {
        assert_eq!(status_result, R::Ok);
        assert!((100..600).contains(&status));
        let mut count = 0usize;
        assert_eq!(mcp_oauth2_decision_response_header_count(d, &mut count), R::Ok);
        for i in 0..count {
            let (mut n, mut v) = (empty_str(), empty_str());
            assert_eq!(mcp_oauth2_decision_response_header(d, i, &mut n, &mut v), R::Ok);
            text(n);
            assert!(mcp_oauth2_fuzz::header_value_is_clean(text(v)), "CR, LF or NUL in a response header");
        }
        let mut body = mcp_oauth2_bytes { ptr: ptr::null(), len: 0 };
        assert_eq!(mcp_oauth2_decision_body(d, &mut body), R::Ok);
        bytes(body);
        let mut count = 0usize;
        assert_eq!(mcp_oauth2_decision_set_header_count(d, &mut count), R::Absent);
    }
    (allowed, if allowed { 200 } else { status })
}

/// Reads everything an HTTP-state pending offers.
unsafe fn inspect_pending(p: *const mcp_oauth2_pending) {
    let mut s = empty_str();
    assert_eq!(mcp_oauth2_pending_method(p, &mut s), R::Ok);
    text(s);
    assert_eq!(mcp_oauth2_pending_url(p, &mut s), R::Ok);
    text(s);
    let mut count = 0usize;
    assert_eq!(mcp_oauth2_pending_header_count(p, &mut count), R::Ok);
    for i in 0..count {
        let (mut n, mut v) = (empty_str(), empty_str());
        assert_eq!(mcp_oauth2_pending_header(p, i, &mut n, &mut v), R::Ok);
        text(n);
        assert!(mcp_oauth2_fuzz::header_value_is_clean(text(v)), "CR, LF or NUL in an outbound header");
    }
    let mut body = mcp_oauth2_bytes { ptr: ptr::null(), len: 0 };
    assert_eq!(mcp_oauth2_pending_body(p, &mut body), R::Ok);
    bytes(body);
    let mut ms = 0u64;
    assert_eq!(mcp_oauth2_pending_timeout_ms(p, &mut ms), R::Ok);
    assert_eq!(mcp_oauth2_pending_cache_key(p, &mut s), R::Ok);
    assert_eq!(text(s).len(), 64);
}

/// One HTTP answer of section 3, for both APIs.
enum Answer<'a> {
    Response { status: u16, headers: Vec<(&'a [u8], &'a [u8])>, body: &'a [u8] },
    Fail(u32),
}

fn answer(data: &[u8]) -> Answer<'_> {
    if let Some(kind) = data.strip_prefix(b"!fail ") {
        let kind = std::str::from_utf8(kind).ok().and_then(|k| k.trim().parse().ok()).unwrap_or(0);
        return Answer::Fail(kind);
    }
    let (head, body) = lines(data);
    let status = head.first().and_then(|l| std::str::from_utf8(l).ok()).and_then(|s| s.trim().parse().ok());
    let headers = head.iter().skip(1).map(|l| header(l)).collect();
    Answer::Response { status: status.unwrap_or(200), headers, body: body.unwrap_or_default() }
}

fn utf8(b: &[u8]) -> Option<&str> {
    std::str::from_utf8(b).ok()
}

fn rust_answer(a: &Answer<'_>) -> Result<HttpResponse, TransportError> {
    match a {
        Answer::Fail(kind) => {
            let kind = match kind {
                1 => TransportErrorKind::Connect,
                2 => TransportErrorKind::Timeout,
                3 => TransportErrorKind::Tls,
                4 => TransportErrorKind::BodyTooLarge,
                _ => TransportErrorKind::Other,
            };
            Err(TransportError::new(kind, "fuzz"))
        }
        Answer::Response { status, headers, body } => Ok(HttpResponse {
            status: *status,
            headers: headers
                .iter()
                .filter_map(|(n, v)| {
                    Some((std::str::from_utf8(n).ok()?.to_owned(), std::str::from_utf8(v).ok()?.to_owned()))
                })
                .collect(),
            body: body.to_vec(),
        }),
    }
}

/// The Rust API's status for the same inputs (200 for an allow), `None` if it did not settle.
fn rust_status(validator: &Validator, req: &Request<'_>, a: &Answer<'_>) -> Option<u16> {
    let now = mcp_oauth2_fuzz::now();
    let mut step = validator.begin(req, now);
    for _ in 0..8 {
        match step {
            Step::Done(Decision::Forward(_)) => return Some(200),
            Step::Done(Decision::Respond(r)) => return Some(r.status()),
            Step::Need(_, pending) => step = pending.resume(rust_answer(a), now),
            Step::Wait(_) => return None,
        }
    }
    None
}

fuzz_target!(|data: &[u8]| unsafe {
    let parts = sections(data, 4);
    let config_section = parts[0];
    let fixed = match config_section {
        b"" | b"0" => Some(introspection_config()),
        b"1" => Some(rich_introspection_config()),
        b"2" => Some(jwks_config()),
        b"3" => Some(discovery_config()),
        _ => None,
    };
    let config_text = fixed.map(|c| c.to_string());
    let config: &[u8] = config_text.as_deref().map_or(config_section, str::as_bytes);

    // Metrics snapshots from arbitrary bytes.
    if let Some(snapshot) = parts.get(3) {
        let mut m = ptr::null_mut();
        match mcp_oauth2_metrics_from_bytes(snapshot.as_ptr(), snapshot.len(), &mut m) {
            R::Ok => {
                let mut s = empty_str();
                assert_eq!(mcp_oauth2_metrics_text(m, &mut s), R::Ok);
                text(s);
                mcp_oauth2_metrics_free(&mut m);
            }
            R::InvalidArgument => assert!(m.is_null()),
            other => panic!("metrics_from_bytes returned {other:?}"),
        }
    }
    let mut s = empty_str();
    let code = config.first().map_or(0, |b| u32::from(*b));
    match mcp_oauth2_result_name(code, &mut s) {
        R::Ok => {
            text(s);
        }
        R::OutOfRange => {}
        other => panic!("result_name returned {other:?}"),
    }

    let mut validator = ptr::null_mut();
    let mut error = ptr::null_mut();
    let created = mcp_oauth2_validator_new(config.as_ptr(), config.len(), &mut validator, &mut error);
    let rust_validator = utf8(config).and_then(|c| Validator::from_json(c).ok());
    let rust_ok = rust_validator.is_some();
    match created {
        R::Ok => assert!(rust_ok, "the C ABI accepted a configuration the Rust API refuses"),
        R::InvalidConfig | R::Unsupported => {
            assert!(!rust_ok, "the C ABI refused a configuration the Rust API accepts");
            assert!(!error.is_null());
            assert_eq!(mcp_oauth2_error_message(error, &mut s), R::Ok);
            text(s);
            optional(mcp_oauth2_error_field(error, &mut s), s);
            mcp_oauth2_error_free(&mut error);
            assert!(error.is_null());
            return;
        }
        other => panic!("validator_new returned {other:?}"),
    }
    let mut count = 0usize;
    assert_eq!(mcp_oauth2_validator_warning_count(validator, &mut count), R::Ok);
    for i in 0..count {
        assert_eq!(mcp_oauth2_validator_warning(validator, i, &mut s), R::Ok);
        text(s);
    }

    // The request.
    let (head, body) = lines(parts.get(1).copied().unwrap_or_default());
    let method = head.first().copied().unwrap_or(b"GET");
    let path = head.get(1).copied().unwrap_or(b"/mcp");
    let peer = head.get(2).copied().unwrap_or_default();
    let raw_headers: Vec<(&[u8], &[u8])> = head.iter().skip(3).map(|l| header(l)).collect();
    let c_headers: Vec<mcp_oauth2_header> = raw_headers.iter().map(|(n, v)| c_header(n, v)).collect();
    let request = mcp_oauth2_request {
        method: method.as_ptr(),
        method_len: method.len(),
        path: path.as_ptr(),
        path_len: path.len(),
        headers: if c_headers.is_empty() { ptr::null() } else { c_headers.as_ptr() },
        headers_len: c_headers.len(),
        peer_addr: if peer.is_empty() { ptr::null() } else { peer.as_ptr() },
        peer_addr_len: peer.len(),
        body: body.map_or(ptr::null(), <[u8]>::as_ptr),
        body_len: body.map_or(0, <[u8]>::len),
    };
    let a = answer(parts.get(2).copied().unwrap_or_default());
    let (c_headers_answer, status, body_answer, fail) = match &a {
        Answer::Response { status, headers, body } => {
            (headers.iter().map(|(n, v)| c_header(n, v)).collect::<Vec<_>>(), *status, *body, None)
        }
        Answer::Fail(kind) => (vec![], 0, &[][..], Some(*kind)),
    };

    let mut decision = ptr::null_mut();
    let mut pending = ptr::null_mut();
    let began = mcp_oauth2_validator_begin(validator, &request, NOW_MS, &mut decision, &mut pending);
    let names_ok = raw_headers.iter().all(|(n, _)| utf8(n).is_some());
    match began {
        R::Ok => assert!(decision.is_null() != pending.is_null(), "exactly one output"),
        R::InvalidArgument => {
            assert!(utf8(method).is_none() || utf8(path).is_none() || !names_ok || !peer.is_empty());
            mcp_oauth2_validator_free(&mut validator);
            return;
        }
        other => panic!("begin returned {other:?}"),
    }
    let mut kept_key: Option<mcp_oauth2_str> = None;
    let mut steps = 0;
    while decision.is_null() {
        steps += 1;
        assert!(steps <= 8, "the decision did not settle");
        let mut state = mcp_oauth2_pending_state::Done;
        assert_eq!(mcp_oauth2_pending_get_state(pending, &mut state), R::Ok);
        assert_eq!(state, mcp_oauth2_pending_state::Http, "a single-threaded run never waits");
        inspect_pending(pending);
        let mut key = empty_str();
        assert_eq!(mcp_oauth2_pending_cache_key(pending, &mut key), R::Ok);
        kept_key = Some(key);
        let r = match fail {
            Some(kind) => mcp_oauth2_pending_fail(pending, NOW_MS, kind, b"fuzz".as_ptr(), 4, &mut decision),
            None => mcp_oauth2_pending_resume(
                pending,
                NOW_MS,
                status,
                if c_headers_answer.is_empty() { ptr::null() } else { c_headers_answer.as_ptr() },
                c_headers_answer.len(),
                if body_answer.is_empty() { ptr::null() } else { body_answer.as_ptr() },
                body_answer.len(),
                &mut decision,
            ),
        };
        match r {
            R::Ok => {}
            R::InvalidArgument if fail.is_some_and(|k| !(1..=5).contains(&k)) => {
                mcp_oauth2_pending_free(&mut pending);
                mcp_oauth2_validator_free(&mut validator);
                return;
            }
            other => panic!("resume returned {other:?}"),
        }
    }
    let (allowed, c_status) = inspect_decision(decision);
    if !pending.is_null() {
        // Spent: says so, and the cache-key views handed out are still readable.
        let mut again = ptr::null_mut();
        let r = mcp_oauth2_pending_resume(pending, NOW_MS, 200, ptr::null(), 0, ptr::null(), 0, &mut again);
        assert_eq!(r, R::AlreadyResumed);
        assert!(again.is_null());
        if let Some(key) = kept_key {
            assert_eq!(text(key).len(), 64);
        }
        mcp_oauth2_pending_free(&mut pending);
        assert!(pending.is_null());
    }

    // The Rust API decides the same (when the request is expressible in it).
    if let (Some(m), Some(p), true, true, Some(rust_validator)) =
        (utf8(method), utf8(path), names_ok, peer.is_empty(), &rust_validator)
    {
        let mut req = Request::new(m, p);
        for (n, v) in &raw_headers {
            req = req.header(utf8(n).unwrap(), *v);
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        if let Some(rust) = rust_status(rust_validator, &req, &a) {
            assert_eq!(rust, c_status, "the C ABI and the Rust API decide differently (allowed: {allowed})");
        }
    }

    let mut metrics = ptr::null_mut();
    assert_eq!(mcp_oauth2_validator_metrics(validator, &mut metrics), R::Ok);
    let mut snapshot = mcp_oauth2_bytes { ptr: ptr::null(), len: 0 };
    assert_eq!(mcp_oauth2_metrics_bytes(metrics, &mut snapshot), R::Ok);
    let mut copy = ptr::null_mut();
    let snap = bytes(snapshot).to_vec();
    assert_eq!(mcp_oauth2_metrics_from_bytes(snap.as_ptr(), snap.len(), &mut copy), R::Ok);
    assert_eq!(mcp_oauth2_metrics_merge(copy, metrics), R::Ok);
    mcp_oauth2_metrics_free(&mut copy);
    mcp_oauth2_metrics_free(&mut metrics);
    mcp_oauth2_decision_free(&mut decision);
    mcp_oauth2_decision_free(&mut decision);
    mcp_oauth2_validator_free(&mut validator);
    assert!(validator.is_null());
});
