//! Lua configuration tables → JSON values with the schema of `mcp_oauth2::Config`.
//!
//! A Lua table is an array or a map only by its keys, and an empty table is both. The
//! configuration schema knows which fields are maps, so an empty table becomes `{}` there
//! and `[]` everywhere else (so `args = {}` and `scopes_supported = {}` are both accepted).
//! `nil`-like sentinels (`ngx.null`, `cjson.null`: a NULL light userdata) mean unset.

use mlua::{Table, Value};
use serde_json::{Map, Number, Value as Json};

/// Paths (dot-joined) whose value is a JSON object; the root is one too. The test
/// `map_paths_are_the_objects_of_config` derives this list from `mcp_oauth2::Config` and fails
/// when they differ. `client_jwk` is a string in `Config` but also accepts a JWK object.
pub(crate) const MAP_PATHS: &[&str] = &[
    "",
    "args",
    "headers",
    "issuer_aliases",
    "method_scopes",
    "scope_implies",
    "client_jwk",
    "token_exchange",
    "token_exchange.request",
    "token_exchange.cache",
    "cluster_cache_redis",
];

/// Nesting deeper than this is a configuration mistake (or a cycle).
const MAX_DEPTH: usize = 32;

/// Converts a Lua configuration value to JSON.
///
/// # Errors
/// `"path: message"` naming the offending field: a function or userdata value, a table
/// mixing array and map keys, a non-string map key, a non-finite number.
pub fn lua_to_json(value: &Value) -> Result<Json, String> {
    convert(value, &mut String::new(), 0)
}

fn shown(path: &str) -> &str {
    if path.is_empty() {
        "configuration"
    } else {
        path
    }
}

fn convert(value: &Value, path: &mut String, depth: usize) -> Result<Json, String> {
    if depth > MAX_DEPTH {
        return Err(format!("{}: nested too deeply", shown(path)));
    }
    match value {
        Value::Nil => Ok(Json::Null),
        Value::LightUserData(p) if p.0.is_null() => Ok(Json::Null),
        Value::Boolean(b) => Ok(Json::Bool(*b)),
        Value::Integer(i) => Ok(Json::Number(Number::from(*i))),
        Value::Number(n) => number(*n).ok_or_else(|| format!("{}: must be a finite number", shown(path))),
        Value::String(s) => match s.to_str() {
            Ok(s) => Ok(Json::String(s.to_owned())),
            Err(_) => Err(format!("{}: must be UTF-8 text", shown(path))),
        },
        Value::Table(t) => table(t, path, depth),
        other => Err(format!("{}: unsupported value of type {}", shown(path), other.type_name())),
    }
}

fn number(n: f64) -> Option<Json> {
    if !n.is_finite() {
        return None;
    }
    // Lua 5.1 numbers are doubles: integral values become JSON integers so that integer
    // fields (`timeout = 5000`) deserialize.
    if n.fract() == 0.0 && n.abs() < 9.007_199_254_740_992e15 {
        #[allow(clippy::cast_possible_truncation)]
        return Some(Json::Number(Number::from(n as i64)));
    }
    Number::from_f64(n).map(Json::Number)
}

fn table(t: &Table, path: &mut String, depth: usize) -> Result<Json, String> {
    let mut entries: Vec<(Value, Value)> = Vec::new();
    for pair in t.pairs::<Value, Value>() {
        entries.push(pair.map_err(|e| format!("{}: {e}", shown(path)))?);
    }
    if entries.is_empty() {
        return Ok(if MAP_PATHS.contains(&path.as_str()) { Json::Object(Map::new()) } else { Json::Array(Vec::new()) });
    }
    let all_string_keys = entries.iter().all(|(k, _)| matches!(k, Value::String(_)));
    if all_string_keys {
        let mut map = Map::new();
        for (k, v) in &entries {
            let Value::String(k) = k else { unreachable!("checked above") };
            let Ok(key) = k.to_str().map(|s| s.to_owned()) else {
                return Err(format!("{}: a key is not UTF-8 text", shown(path)));
            };
            let saved = path.len();
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(&key);
            let converted = convert(v, path, depth + 1)?;
            path.truncate(saved);
            map.insert(key, converted);
        }
        return Ok(Json::Object(map));
    }
    // An array: keys exactly 1..=n.
    let n = entries.len();
    let mut items: Vec<Option<Json>> = vec![None; n];
    for (k, v) in &entries {
        let index = match k {
            Value::Integer(i) => usize::try_from(*i).ok(),
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            Value::Number(f) if f.fract() == 0.0 && *f >= 1.0 => Some(*f as usize),
            _ => None,
        };
        let Some(i) = index.filter(|i| (1..=n).contains(i)) else {
            return Err(format!("{}: a table must be either a list or a map of string keys", shown(path)));
        };
        let saved = path.len();
        path.push_str(&format!("[{}]", i - 1));
        items[i - 1] = Some(convert(v, path, depth + 1)?);
        path.truncate(saved);
    }
    Ok(Json::Array(items.into_iter().map(|i| i.unwrap_or(Json::Null)).collect()))
}

#[cfg(all(test, not(feature = "module")))]
mod tests {
    use super::*;
    use mlua::Lua;

    fn conv(lua: &Lua, code: &str) -> Result<Json, String> {
        let v: Value = lua.load(code).eval().unwrap();
        lua_to_json(&v)
    }

    #[test]
    fn empty_tables_follow_the_schema() {
        let lua = Lua::new();
        let j = conv(&lua, "return { args = {}, headers = {}, scopes_supported = {}, claim_to_header = {} }").unwrap();
        assert_eq!(j, serde_json::json!({"args": {}, "headers": {}, "scopes_supported": [], "claim_to_header": []}));
        assert_eq!(conv(&lua, "return {}").unwrap(), serde_json::json!({}));
    }

    /// Every dot-joined path at which `value` has a JSON object (not descending into arrays:
    /// their elements are never empty tables, records there have required fields).
    fn object_paths(value: &Json, path: &str, out: &mut std::collections::BTreeSet<String>) {
        if let Json::Object(map) = value {
            out.insert(path.to_owned());
            for (k, v) in map {
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                object_paths(v, &p, out);
            }
        }
    }

    #[test]
    fn map_paths_are_the_objects_of_config() {
        // The core's configuration with every optional object present: maps serialize as
        // objects even when empty, records only when set.
        let mut config = mcp_oauth2::Config::new("https://mcp.example.com/mcp", vec!["https://as.example.com".into()]);
        config.token_exchange = Some(mcp_oauth2::config::TokenExchange::default());
        let json = serde_json::to_value(&config).unwrap();
        let mut derived = std::collections::BTreeSet::new();
        object_paths(&json, "", &mut derived);
        // Accepted as a JSON object on input, kept as text (it is a secret).
        derived.insert("client_jwk".to_owned());
        let listed: std::collections::BTreeSet<String> = MAP_PATHS.iter().map(|p| (*p).to_owned()).collect();
        assert_eq!(listed, derived, "MAP_PATHS must list exactly the object-valued fields of Config");
    }

    #[test]
    fn numbers_lists_and_errors_name_the_path() {
        let lua = Lua::new();
        let j = conv(
            &lua,
            "return { timeout = 5000, http_version = 1.1, upstream_headers = { { header = 'X', path = { 'a', 0 } } } }",
        )
        .unwrap();
        assert_eq!(j["timeout"], serde_json::json!(5000));
        assert_eq!(j["http_version"], serde_json::json!(1.1));
        assert_eq!(j["upstream_headers"][0]["path"], serde_json::json!(["a", 0]));
        let e = conv(&lua, "return { claim_to_header = { { claim = 'sub', header = print } } }").unwrap_err();
        assert_eq!(e, "claim_to_header[0].header: unsupported value of type function");
        let e = conv(&lua, "return { args = { 'a', x = 1 } }").unwrap_err();
        assert!(e.starts_with("args: a table must be"), "{e}");
        let e = conv(&lua, "return { timeout = 0/0 }").unwrap_err();
        assert_eq!(e, "timeout: must be a finite number");
    }
}
