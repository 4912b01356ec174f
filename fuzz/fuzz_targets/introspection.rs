//! Introspection response → decision, sans-I/O: begin a request with a fixed token, answer
//! its introspection step with the fuzzed response (status line, `Content-Type` line, body;
//! or the whole input as a 200 JSON body), and check the decision: never an allow unless
//! the answer is a 200 JSON object whose `active` is the boolean `true`, whose `aud` names
//! the resource, whose `exp`/`nbf` hold and which is an access token.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use mcp_oauth2::{Decision, HttpResponse, Request, Validator};
use mcp_oauth2_fuzz::{
    audience_names, drive, introspection_config, is_access_token, raw_response, times_hold, validator, RESOURCE,
};
use serde_json::Value;

/// Built once, with `cache_introspection: false`: no input's answer is kept for the next
/// (a fresh validator per input would cost most of the time).
static VALIDATOR: LazyLock<Validator> = LazyLock::new(|| {
    let mut config = introspection_config();
    config["cache_introspection"] = Value::Bool(false);
    validator(&config)
});

fuzz_target!(|data: &[u8]| {
    let validator = &*VALIDATOR;
    let response = raw_response(data);
    let req = Request::new("POST", "/mcp").header("Authorization", "Bearer fuzz-token-1");
    let mut steps = 0;
    let decision = drive(validator, &req, 8, |url| {
        steps += 1;
        if steps == 1 {
            assert_eq!(url, mcp_oauth2_fuzz::INTROSPECTION_URL);
            response.clone()
        } else {
            // The keys of a signed (RFC 9701) answer: there are none to be had.
            HttpResponse::new(404, "text/plain", "")
        }
    })
    .expect("an introspection answer settles the decision");
    let Decision::Forward(_) = decision else { return };

    // An allow: the answer must satisfy every rule, read independently.
    assert_eq!(response.status, 200, "allowed on HTTP {}", response.status);
    let content_type = response.headers[0].1.to_ascii_lowercase();
    assert!(
        content_type.split(';').next().is_some_and(|t| t.trim() == "application/json"),
        "allowed on a non-JSON answer"
    );
    let Ok(Value::Object(claims)) = serde_json::from_slice::<Value>(&response.body) else {
        panic!("allowed on an answer that is not a JSON object")
    };
    assert_eq!(claims.get("active"), Some(&Value::Bool(true)), "allowed without active: true");
    assert!(audience_names(claims.get("aud"), RESOURCE), "allowed without the resource in aud");
    assert!(times_hold(&claims, false), "allowed outside exp/nbf");
    assert!(is_access_token(&claims), "allowed an ID, refresh or logout token");
});
