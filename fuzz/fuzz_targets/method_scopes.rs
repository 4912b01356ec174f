//! JSON-RPC body → required scopes (`scopes_required` + `method_scopes`, docs/
//! configuration.md §5.6), checked against an independent reading of the rules:
//! - a body over `max_request_body_size` is a 413; one that is not a JSON object or an
//!   array of objects, whose `method` is not a string, or that repeats `method`, a 400;
//! - otherwise the request needs `scopes_required`, the scopes of every message's method
//!   and, for `tools/call`, those of `tools/call:<params.name>`: allowed exactly when the
//!   token's scopes cover them, else a 403 whose `scope` lists them all.
//!
//! Input: one byte choosing the token's scopes (a bit per scope), then the POST body.
#![no_main]

use std::collections::BTreeSet;
use std::fmt;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use mcp_oauth2::{Decision, HttpResponse, Request, Step, Validator};
use mcp_oauth2_fuzz::{now, validator, INTROSPECTION_URL, ISSUER, RESOURCE};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{json, Value};

const MAX_BODY: usize = 2048;
const SCOPES: [&str; 6] = ["mcp:base", "mcp:list", "mcp:call", "mcp:danger", "mcp:read", "mcp:other"];

static VALIDATOR: LazyLock<Validator> = LazyLock::new(|| {
    validator(&json!({
        "resource": RESOURCE,
        "authorization_servers": [ISSUER],
        "introspection_endpoint": INTROSPECTION_URL,
        "cache_introspection": false,
        "max_request_body_size": MAX_BODY,
        "scopes_required": ["mcp:base"],
        "method_scopes": {
            "tools/list": ["mcp:list"],
            "tools/call": ["mcp:call"],
            "tools/call:danger": ["mcp:danger"],
            "resources/read": ["mcp:read"],
        },
    }))
});

fn method_scopes(method: &str) -> &'static [&'static str] {
    match method {
        "tools/list" => &["mcp:list"],
        "tools/call" => &["mcp:call"],
        "tools/call:danger" => &["mcp:danger"],
        "resources/read" => &["mcp:read"],
        _ => &[],
    }
}

/// One message's members, duplicates kept (serde_json's `Value` would keep only the last).
struct Members(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members, A::Error> {
                let mut members = Vec::new();
                while let Some(entry) = map.next_entry::<String, Value>()? {
                    members.push(entry);
                }
                Ok(Members(members))
            }
        }
        d.deserialize_map(V)
    }
}

/// A JSON-RPC message or a batch of them.
enum Body {
    One(Members),
    Batch(Vec<Members>),
}

impl<'de> Deserialize<'de> for Body {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Body;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object or an array of objects")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Body, A::Error> {
                Members::deserialize(de::value::MapAccessDeserializer::new(map)).map(Body::One)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Body, A::Error> {
                let mut all = Vec::new();
                while let Some(m) = seq.next_element::<Members>()? {
                    all.push(m);
                }
                Ok(Body::Batch(all))
            }
        }
        d.deserialize_any(V)
    }
}

enum Expected {
    TooLarge,
    Invalid,
    /// Valid JSON this reference cannot read (a number past f64): no expectation.
    Skip,
    /// The scopes needed; `strictly_valid` is false when a message repeats a member other
    /// than `method` (the contract leaves that open: a 400 is acceptable then).
    Needs {
        scopes: BTreeSet<&'static str>,
        strictly_valid: bool,
    },
}

fn expected(body: &[u8]) -> Expected {
    if body.len() > MAX_BODY {
        return Expected::TooLarge;
    }
    let messages = match serde_json::from_slice::<Body>(body) {
        Ok(Body::One(m)) => vec![m],
        Ok(Body::Batch(all)) => all,
        Err(e)
            if e.to_string().starts_with("number out of range")
                && serde_json::from_slice::<de::IgnoredAny>(body).is_ok() =>
        {
            // Valid JSON (RFC 8259 §6 leaves number ranges to implementations) with a
            // number past f64 (`7E5333`): the library skips members it does not read
            // without converting their numbers, this reference's `Value` refuses them.
            // Both are sound; the library's `method`/`params.name` are strings either way.
            return Expected::Skip;
        }
        Err(_) => return Expected::Invalid,
    };
    let mut scopes: BTreeSet<&'static str> = BTreeSet::from(["mcp:base"]);
    let mut strictly_valid = true;
    for Members(members) in &messages {
        let names: Vec<&str> = members.iter().map(|(k, _)| k.as_str()).collect();
        if names.iter().enumerate().any(|(i, n)| names[..i].contains(n)) {
            strictly_valid = false;
        }
        let mut methods = members.iter().filter(|(k, _)| k == "method").map(|(_, v)| v);
        let method = match (methods.next(), methods.next()) {
            (None, _) => continue,
            (Some(Value::String(m)), None) => m.as_str(),
            _ => return Expected::Invalid, // not a string, or repeated
        };
        scopes.extend(method_scopes(method));
        if method == "tools/call" {
            // The last `params` (as a JSON parser that keeps the last duplicate reads it).
            let params = members.iter().rev().find(|(k, _)| k == "params").map(|(_, v)| v);
            if let Some(name) = params.and_then(|p| p.get("name")).and_then(Value::as_str) {
                scopes.extend(method_scopes(&format!("tools/call:{name}")));
            }
        }
    }
    Expected::Needs { scopes, strictly_valid }
}

/// The scopes a 403's challenge lists.
fn challenge_scopes(challenge: &str) -> BTreeSet<String> {
    let start = challenge.find("scope=\"").expect("a 403 challenge lists the scopes") + 7;
    let end = start + challenge[start..].find('"').expect("closing quote");
    challenge[start..end].split(' ').map(str::to_owned).collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((&bits, body)) = data.split_first() else { return };
    let granted: Vec<&str> = SCOPES.iter().enumerate().filter(|(i, _)| bits & (1 << i) != 0).map(|(_, s)| *s).collect();
    let req = Request::new("POST", "/mcp").header("Authorization", "Bearer fuzz-token-3").body(body);
    let decision = match VALIDATOR.begin(&req, now()) {
        Step::Done(d) => d,
        Step::Need(_, pending) => {
            let answer = json!({"active": true, "aud": RESOURCE, "scope": granted.join(" ")}).to_string();
            match pending.resume(Ok(HttpResponse::new(200, "application/json", answer)), now()) {
                Step::Done(d) => d,
                _ => panic!("one introspection settles the decision"),
            }
        }
        Step::Wait(_) => panic!("nothing is in flight"),
    };
    let status = match &decision {
        Decision::Forward(_) => 200,
        Decision::Respond(r) => r.status(),
    };
    match expected(body) {
        Expected::TooLarge => assert_eq!(status, 413),
        Expected::Skip => {}
        Expected::Invalid => assert_eq!(status, 400, "a body the rules refuse was not a 400"),
        Expected::Needs { scopes, strictly_valid } => {
            let covered = scopes.iter().all(|s| granted.contains(s));
            match (&decision, covered) {
                (Decision::Forward(_), true) => {}
                (Decision::Respond(r), false) if r.status() == 403 => {
                    let listed = challenge_scopes(r.header("WWW-Authenticate").unwrap_or_default());
                    let needed: BTreeSet<String> = scopes.iter().map(|s| (*s).to_owned()).collect();
                    assert_eq!(listed, needed, "the 403 does not list exactly the scopes needed");
                }
                (Decision::Respond(r), _) if r.status() == 400 && !strictly_valid => {}
                (Decision::Forward(_), false) => panic!("allowed without the scopes {scopes:?} (granted {granted:?})"),
                (_, _) => panic!("needs {scopes:?}, granted {granted:?}: got {status}"),
            }
        }
    }
});
