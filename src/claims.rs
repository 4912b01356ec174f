//! Claim paths, upstream header values and their safety rules (behaviour.md §6).

use serde_json::{Map, Value};

/// Longest claim value that may be sent upstream as a header.
pub const MAX_HEADER_VALUE_LEN: usize = 8 * 1024;

/// Follows a claim path: the first element names a top-level claim, later elements name
/// object members or (when numeric) array indices.
pub(crate) fn lookup<'v>(claims: &'v Map<String, Value>, path: &[String]) -> Option<&'v Value> {
    let (first, rest) = path.split_first()?;
    let mut current = claims.get(first)?;
    for element in rest {
        current = match current {
            Value::Object(m) => m.get(element)?,
            Value::Array(a) => a.get(element.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(current)
}

/// Renders a claim as a header value: strings as-is, numbers and booleans as JSON text,
/// arrays of scalars joined with `,`, anything else as compact JSON. `null` is absent.
pub(crate) fn render(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Bool(_) | Value::Number(_) => Some(value.to_string()),
        Value::Array(items) if items.iter().all(is_scalar) => {
            let mut out = String::new();
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                match item {
                    Value::String(s) => out.push_str(s),
                    other => out.push_str(&other.to_string()),
                }
            }
            Some(out)
        }
        Value::Array(_) | Value::Object(_) => Some(value.to_string()),
    }
}

fn is_scalar(v: &Value) -> bool {
    matches!(v, Value::String(_) | Value::Number(_) | Value::Bool(_))
}

/// A header value may be emitted only if it has no control characters other than HTAB
/// (CR, LF and NUL above all: header injection) and is at most [`MAX_HEADER_VALUE_LEN`].
pub(crate) fn is_safe_header_value(v: &str) -> bool {
    v.len() <= MAX_HEADER_VALUE_LEN && !v.bytes().any(|b| (b.is_ascii_control() && b != b'\t') || b == 0x7f)
}

/// False for a token that is not an access token although it may look valid: an ID token
/// (`nonce`), a logout token (a back-channel logout event), or one whose `typ` or
/// `token_type` claim names another kind (Keycloak's `ID`, `Refresh`, `Offline`, `Logout`;
/// `refresh_token`, `id_token`). Applied to introspection responses and verified JWTs alike.
pub(crate) fn is_access_token(claims: &Map<String, Value>) -> bool {
    let is = |name: &str, values: &[&str]| {
        claims.get(name).and_then(Value::as_str).is_some_and(|v| values.iter().any(|x| v.eq_ignore_ascii_case(x)))
    };
    let logout_event = claims
        .get("events")
        .and_then(Value::as_object)
        .is_some_and(|e| e.contains_key("http://schemas.openid.net/event/backchannel-logout"));
    !(claims.contains_key("nonce")
        || logout_event
        || is("typ", &["ID", "Refresh", "Offline", "Logout"])
        || is("token_type", &["refresh_token", "Refresh", "id_token"]))
}

/// A string claim (or nothing when absent or not a string).
pub(crate) fn string_claim<'v>(claims: &'v Map<String, Value>, name: &str) -> Option<&'v str> {
    claims.get(name).and_then(Value::as_str)
}

/// A numeric date claim. `Ok(None)` when absent; `Err` when present but not a number.
pub(crate) fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<i64>, ()> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(i) = n.as_i64() {
                Ok(Some(i))
            } else if let Some(u) = n.as_u64() {
                Ok(Some(i64::try_from(u).unwrap_or(i64::MAX)))
            } else {
                n.as_f64().filter(|f| f.is_finite()).map(|f| Some(f.floor() as i64)).ok_or(())
            }
        }
        Some(_) => Err(()),
    }
}

/// The token's scopes: `scope` (space-separated string, RFC 7662/9068), else `scp`
/// (string or array, as Entra and Okta JWTs carry it).
pub(crate) fn scope_string(claims: &Map<String, Value>) -> Option<String> {
    match claims.get("scope").or_else(|| claims.get("scp"))? {
        Value::String(s) => Some(s.split_ascii_whitespace().collect::<Vec<_>>().join(" ")),
        Value::Array(items) => Some(
            items
                .iter()
                .filter_map(Value::as_str)
                .filter(|s| !s.is_empty() && !s.contains(' '))
                .collect::<Vec<_>>()
                .join(" "),
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims() -> Map<String, Value> {
        json!({
            "sub": "alice", "n": 42, "f": 1.5, "b": true, "nil": null,
            "roles": ["a", "b", 3, false],
            "mixed": ["a", {"x": 1}],
            "obj": {"k": [1, {"deep": "v"}]},
            "realm_access": {"roles": ["offline_access", "uma_authorization"]}
        })
        .as_object()
        .unwrap()
        .clone()
    }

    fn p(path: &[&str]) -> Vec<String> {
        path.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn paths_walk_objects_and_arrays() {
        let c = claims();
        assert_eq!(lookup(&c, &p(&["sub"])), Some(&json!("alice")));
        assert_eq!(lookup(&c, &p(&["realm_access", "roles", "1"])), Some(&json!("uma_authorization")));
        assert_eq!(lookup(&c, &p(&["obj", "k", "1", "deep"])), Some(&json!("v")));
        assert_eq!(lookup(&c, &p(&["obj", "k", "9"])), None);
        assert_eq!(lookup(&c, &p(&["obj", "k", "x"])), None);
        assert_eq!(lookup(&c, &p(&["sub", "x"])), None);
        assert_eq!(lookup(&c, &p(&["missing"])), None);
    }

    #[test]
    fn rendering_rules() {
        let c = claims();
        let r = |k: &str| render(c.get(k).unwrap());
        assert_eq!(r("sub").as_deref(), Some("alice"));
        assert_eq!(r("n").as_deref(), Some("42"));
        assert_eq!(r("f").as_deref(), Some("1.5"));
        assert_eq!(r("b").as_deref(), Some("true"));
        assert_eq!(r("nil"), None);
        assert_eq!(r("roles").as_deref(), Some("a,b,3,false"));
        assert_eq!(r("mixed").as_deref(), Some(r#"["a",{"x":1}]"#));
        assert_eq!(r("obj").as_deref(), Some(r#"{"k":[1,{"deep":"v"}]}"#));
    }

    #[test]
    fn unsafe_values_are_detected() {
        assert!(is_safe_header_value("alice\tsmith"));
        assert!(is_safe_header_value("ünïcode"));
        assert!(!is_safe_header_value("a\r\nX-Admin: 1"));
        assert!(!is_safe_header_value("a\nb"));
        assert!(!is_safe_header_value("a\0b"));
        assert!(!is_safe_header_value("a\x7fb"));
        assert!(is_safe_header_value(&"x".repeat(MAX_HEADER_VALUE_LEN)));
        assert!(!is_safe_header_value(&"x".repeat(MAX_HEADER_VALUE_LEN + 1)));
    }

    #[test]
    fn dates_and_scopes() {
        let c = json!({"exp": 10, "nbf": 1.9, "iat": "x", "scope": " a  b ", "big": 18446744073709551615u64})
            .as_object()
            .unwrap()
            .clone();
        assert_eq!(numeric_date(&c, "exp"), Ok(Some(10)));
        assert_eq!(numeric_date(&c, "nbf"), Ok(Some(1)));
        assert_eq!(numeric_date(&c, "iat"), Err(()));
        assert_eq!(numeric_date(&c, "none"), Ok(None));
        assert_eq!(numeric_date(&c, "big"), Ok(Some(i64::MAX)));
        assert_eq!(scope_string(&c).as_deref(), Some("a b"));
        let c = json!({"scp": ["x", "y", 1]}).as_object().unwrap().clone();
        assert_eq!(scope_string(&c).as_deref(), Some("x y"));
    }
}
