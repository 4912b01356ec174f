//! Regression tests for what coverage-guided fuzzing found (fuzz/, docs/fuzzing.md). Each
//! test is the crashing input of one finding, minimised and made readable, and failed
//! before its fix. Public API only, no network: the validator's one HTTP step is answered
//! in place.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mcp_oauth2::{Decision, HttpResponse, Request, Step, Validator};
use serde_json::json;

const RESOURCE: &str = "https://mcp.example.com/mcp";

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

/// The `method_scopes` target's configuration: `tools/list` needs `mcp:list`.
fn scoped_validator() -> Validator {
    Validator::from_json(
        &json!({
            "resource": RESOURCE,
            "authorization_servers": ["https://as.example.com"],
            "introspection_endpoint": "https://as.example.com/introspect",
            "scopes_required": ["mcp:base"],
            "method_scopes": {"tools/list": ["mcp:list"], "tools/call": ["mcp:call"]},
        })
        .to_string(),
    )
    .unwrap()
}

/// The status a POST with `body` gets from `scoped_validator`, its token granting only
/// `mcp:base` (the introspection step, if any, is answered in place).
fn status_for_body(body: &[u8]) -> u16 {
    let validator = scoped_validator();
    let req = Request::new("POST", "/mcp").header("Authorization", "Bearer fuzz-regression").body(body);
    let decision = match validator.begin(&req, now()) {
        Step::Done(d) => d,
        Step::Need(_, pending) => {
            let answer = json!({"active": true, "aud": RESOURCE, "scope": "mcp:base"}).to_string();
            match pending.resume(Ok(HttpResponse::new(200, "application/json", answer)), now()) {
                Step::Done(d) => d,
                other => panic!("one introspection settles the decision: {other:?}"),
            }
        }
        Step::Wait(_) => panic!("nothing is in flight"),
    };
    match decision {
        Decision::Forward(_) => 200,
        Decision::Respond(r) => r.status(),
    }
}

/// Finding 1 (`method_scopes` target): a JSON-RPC body that is not UTF-8 only inside a
/// member the scope rules do not read (`"x":"\xff"`) was read as valid, because serde_json
/// skips ignored members without validating them; the contract says a body that is not a
/// JSON text is a 400, before any authorization-server call.
#[test]
fn non_utf8_body_in_an_ignored_member_is_a_400() {
    assert_eq!(status_for_body(b"{\"method\":\"tools/list\",\"x\":\"\xff\"}"), 400);
    assert_eq!(status_for_body(b"[{\"method\":\"tools/list\"},{\"id\":1,\"result\":\"\xc3\x28\"}]"), 400);
    // UTF-8 everywhere: read, and the missing scope is a 403 as before.
    assert_eq!(status_for_body("{\"method\":\"tools/list\",\"x\":\"é\"}".as_bytes()), 403);
}

/// Finding 2 (`method_scopes` target): `"method": null` was read as a message without a
/// method (a response), so it needed no method scopes and was allowed; the contract says a
/// `method` that is not a string is a 400.
#[test]
fn null_method_is_a_400_not_a_response() {
    assert_eq!(status_for_body(br#"{"jsonrpc":"2.0","id":1,"method":null}"#), 400);
    assert_eq!(status_for_body(br#"[{"method":"tools/call"},{"method":null}]"#), 400);
    // A message without `method` (a response) still needs only `scopes_required`.
    assert_eq!(status_for_body(br#"{"jsonrpc":"2.0","id":1,"result":{}}"#), 200);
}

/// Finding 3 (`method_scopes` target): a batch whose element is an array (`[[]]`,
/// `[["tools/list"]]`) was read as a message, because a derived `Deserialize` takes a
/// struct from the array of its fields: `[[]]` passed as a response needing no method
/// scopes. The contract says a body that is not an object or an array of objects is a 400.
#[test]
fn array_inside_a_batch_is_a_400() {
    assert_eq!(status_for_body(b"[[]]"), 400);
    assert_eq!(status_for_body(br#"[["tools/list"]]"#), 400);
    assert_eq!(status_for_body(br#"[{"method":"tools/list"},[null]]"#), 400);
    // Objects, as before.
    assert_eq!(status_for_body(br#"[{"id":1,"result":{}},{"id":2,"error":{}}]"#), 200);
}
