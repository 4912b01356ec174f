//! Which scopes an operation needs (`scopes_required`, plus the `method_scopes` of the
//! MCP JSON-RPC method(s) in a POST body) and whether a token's scopes cover them
//! (`scope_implies`, closed transitively; nothing is implied by name).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use serde_json::Value;

use crate::request::Request;
use crate::Config;

/// The scope rules of one configuration.
#[derive(Debug)]
pub(crate) struct ScopePolicy {
    required: Vec<String>,
    method_scopes: BTreeMap<String, Vec<String>>,
    implies: BTreeMap<String, Vec<String>>,
    /// `scopes_required` plus every `method_scopes` scope: what a POST whose body the host
    /// did not pass must have (fail closed).
    all_method_scopes: Vec<String>,
    /// The `scope` of a no-credentials challenge when the operation needs none in particular.
    advertised: Option<String>,
    max_body: u64,
}

/// Why the body cannot say which method scopes apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyProblem {
    /// Larger than `max_request_body_size` (413).
    TooLarge,
    /// Not a JSON-RPC message or batch (400).
    Unreadable,
}

/// One JSON-RPC message, as far as scopes care. A duplicated `method` member is an error.
#[derive(Deserialize)]
struct RpcMessage {
    /// `None` only when the member is absent (a response): `"method": null` is a present
    /// member that is not a string, refused like any other (`Option<String>` would read
    /// `null` as absent and skip the message's method scopes).
    #[serde(default, deserialize_with = "present")]
    method: Option<Value>,
    #[serde(default)]
    params: Option<Value>,
}

/// A JSON-RPC message read only from a JSON object: a derived `Deserialize` also takes a
/// struct from an array of its fields in order (`["tools/list"]`, or `[]` as a message
/// without a method), which is not a JSON-RPC message.
struct ObjectMessage(RpcMessage);

impl<'de> Deserialize<'de> for ObjectMessage {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Object;
        impl<'de> serde::de::Visitor<'de> for Object {
            type Value = ObjectMessage;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON-RPC message (a JSON object)")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<ObjectMessage, A::Error> {
                RpcMessage::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(ObjectMessage)
            }
        }
        d.deserialize_map(Object)
    }
}

/// A member that is present, whatever its value (`null` included).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

impl ScopePolicy {
    pub(crate) fn new(config: &Config) -> Self {
        let mut all_method_scopes = config.scopes_required.clone();
        for scopes in config.method_scopes.values() {
            push_unique(&mut all_method_scopes, scopes);
        }
        ScopePolicy {
            required: config.scopes_required.clone(),
            method_scopes: config.method_scopes.clone(),
            implies: config.scope_implies.clone(),
            all_method_scopes,
            advertised: config.scopes_supported.as_ref().map(|s| s.join(" ")).filter(|s| !s.is_empty()),
            max_body: config.max_request_body_size,
        }
    }

    /// True if deciding a POST needs its body (some `method_scopes` are configured).
    pub(crate) fn needs_body(&self) -> bool {
        !self.method_scopes.is_empty()
    }

    /// The `scope` parameter of a challenge to a request without credentials: the scopes
    /// this operation needs, else `scopes_supported`.
    pub(crate) fn challenge_scope(&self, required: Result<&[String], BodyProblem>) -> Option<String> {
        match required {
            Ok(r) if !r.is_empty() => Some(r.join(" ")),
            _ => self.advertised.clone(),
        }
    }

    /// The scopes this operation needs.
    pub(crate) fn required(&self, req: &Request<'_>) -> Result<Cow<'_, [String]>, BodyProblem> {
        if !self.needs_body() || !req.method.eq_ignore_ascii_case("POST") {
            return Ok(Cow::Borrowed(&self.required));
        }
        let Some(body) = req.body else {
            return Ok(Cow::Borrowed(&self.all_method_scopes));
        };
        if self.max_body > 0 && body.len() as u64 > self.max_body {
            return Err(BodyProblem::TooLarge);
        }
        // JSON text is UTF-8 (RFC 8259 §8.1). Checked on the whole body: serde_json skips the
        // members it ignores without validating them, so a non-UTF-8 byte there would pass.
        let body = std::str::from_utf8(body).map_err(|_| BodyProblem::Unreadable)?;
        let first = body.bytes().find(|b| !b.is_ascii_whitespace());
        let messages: Vec<ObjectMessage> = match first {
            Some(b'[') => serde_json::from_str(body).map_err(|_| BodyProblem::Unreadable)?,
            Some(b'{') => vec![serde_json::from_str(body).map_err(|_| BodyProblem::Unreadable)?],
            _ => return Err(BodyProblem::Unreadable),
        };
        let mut required = self.required.clone();
        for ObjectMessage(m) in &messages {
            let method = match &m.method {
                None => continue,
                Some(Value::String(method)) => method,
                Some(_) => return Err(BodyProblem::Unreadable),
            };
            if let Some(s) = self.method_scopes.get(method) {
                push_unique(&mut required, s);
            }
            if method == "tools/call" {
                if let Some(name) = m.params.as_ref().and_then(|p| p.get("name")).and_then(Value::as_str) {
                    if let Some(s) = self.method_scopes.get(&format!("tools/call:{name}")) {
                        push_unique(&mut required, s);
                    }
                }
            }
        }
        Ok(Cow::Owned(required))
    }

    /// True if the granted scopes (space-separated), expanded by `scope_implies`, cover
    /// every required scope.
    pub(crate) fn covers(&self, granted: Option<&str>, required: &[String]) -> bool {
        if required.is_empty() {
            return true;
        }
        let granted = granted.unwrap_or("");
        if self.implies.is_empty() {
            return required.iter().all(|r| granted.split(' ').any(|g| g == r));
        }
        let mut have: BTreeSet<&str> = BTreeSet::new();
        let mut todo: Vec<&str> = granted.split(' ').filter(|s| !s.is_empty()).collect();
        while let Some(s) = todo.pop() {
            if have.insert(s) {
                if let Some(more) = self.implies.get(s) {
                    todo.extend(more.iter().map(String::as_str));
                }
            }
        }
        required.iter().all(|r| have.contains(r.as_str()))
    }
}

fn push_unique(into: &mut Vec<String>, scopes: &[String]) {
    for s in scopes {
        if !into.contains(s) {
            into.push(s.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy(extra: Value) -> ScopePolicy {
        let base = json!({"resource": "https://mcp.example/mcp", "authorization_servers": ["https://as.example"]});
        ScopePolicy::new(&crate::config::test_config(base, extra))
    }

    fn strings(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| (*x).to_owned()).collect()
    }

    #[test]
    fn scopes_with_configured_hierarchy_only() {
        let r = policy(json!({}));
        assert!(r.covers(Some("a b"), &strings(&["b"])));
        assert!(!r.covers(Some("a b"), &strings(&["b", "c"])));
        assert!(!r.covers(None, &strings(&["a"])));
        assert!(r.covers(None, &[]));
        assert!(!r.covers(Some("mcp:admin"), &strings(&["mcp:read"])), "nothing implied by name");
        let r = policy(
            json!({"scope_implies": {"mcp:admin": ["mcp:write"], "mcp:write": ["mcp:read"], "mcp:read": ["mcp:admin"]}}),
        );
        assert!(r.covers(Some("mcp:admin"), &strings(&["mcp:read", "mcp:write"])));
        assert!(!r.covers(Some("other"), &strings(&["mcp:read"])));
    }

    #[test]
    fn json_rpc_methods_and_tools_select_scopes() {
        let p = policy(json!({"scopes_required": ["base"], "max_request_body_size": 64,
            "method_scopes": {"tools/list": ["read"], "tools/call": ["call"], "tools/call:rm": ["admin"]}}));
        let post = |body: &'static str| Request::new("POST", "/mcp").body(body.as_bytes());
        let req = post(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#);
        assert_eq!(p.required(&req).unwrap().as_ref(), strings(&["base", "read"]));
        let req = post(r#"[{"method":"tools/call","params":{"name":"rm"}},{"method":"x"}]"#);
        assert_eq!(p.required(&req).unwrap().as_ref(), strings(&["base", "call", "admin"]));
        assert_eq!(
            p.required(&Request::new("POST", "/mcp")).unwrap().as_ref(),
            strings(&["base", "call", "admin", "read"])
        );
        assert_eq!(p.required(&Request::new("GET", "/mcp")).unwrap().as_ref(), strings(&["base"]));
        assert_eq!(p.required(&post("not json")).unwrap_err(), BodyProblem::Unreadable);
        assert_eq!(p.required(&post(r#"{"method":"a","method":"b"}"#)).unwrap_err(), BodyProblem::Unreadable);
        let big = Box::leak(format!(r#"{{"method":"tools/list","x":"{}"}}"#, "a".repeat(64)).into_boxed_str());
        assert_eq!(p.required(&post(big)).unwrap_err(), BodyProblem::TooLarge);
    }
}
