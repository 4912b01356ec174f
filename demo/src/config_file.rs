//! Reading the plugin configuration from the files Kong users already have: the bare
//! `config` object (JSON or YAML), the plugin object sent to Kong's Admin API
//! (`{"name": "ai-mcp-oauth2", "config": {…}}`), a decK `kong.yaml` with
//! `${{ env "DECK_…" }}` references, or a `KongPlugin` / `KongClusterPlugin` manifest.
//!
//! Every file goes through one YAML 1.2 parser (yaml-rust2: pure Rust, no `unsafe`, still
//! maintained; JSON is valid YAML 1.2), then becomes a `serde_json::Value` for
//! [`mcp_oauth2::Config::from_value`]. Errors say where in the file the problem is.

use std::fmt;

use serde_json::{Map, Number, Value};
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};
use yaml_rust2::{Yaml, YamlLoader};

/// Plugin names whose `config` we accept: Kong's enterprise plugin and ours.
pub const PLUGIN_NAMES: [&str; 2] = ["ai-mcp-oauth2", "mcp-oauth2"];

/// A configuration found in a file.
#[derive(Debug)]
pub struct Found {
    /// The bare `config` object, template references already substituted.
    pub config: Value,
    /// Where it was found, as a field path prefix (`plugins[0].config`), empty for a bare
    /// config. Config errors are reported under this prefix.
    pub location: String,
    /// What kind of file it was, for the startup banner.
    pub kind: &'static str,
    /// Things worth telling the operator that do not stop the proxy.
    pub warnings: Vec<String>,
}

/// Why a file could not be read as a plugin configuration. Never carries a value from the
/// file (it may be a secret): only paths, names and the parser's position.
#[derive(Debug, PartialEq, Eq)]
pub struct LoadError(pub String);

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn err<T>(message: impl Into<String>) -> Result<T, LoadError> {
    Err(LoadError(message.into()))
}

/// Parses `text` and finds the plugin configuration in it. `env` looks up `DECK_*`
/// variables for `${{ env "DECK_X" }}` references (decK's rule: only `DECK_`-prefixed
/// names; an unset one is an error).
pub fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Found, LoadError> {
    // Editors on Windows may start the file with a byte order mark.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let documents = load_yaml(text, env)?;
    let documents: Vec<Value> = documents
        .into_iter()
        .filter(|d| !matches!(d, Yaml::BadValue | Yaml::Null)) // empty documents (`---` at the end)
        .map(|d| to_json(d, ""))
        .collect::<Result<_, _>>()?;
    match documents.len() {
        0 => err("the file is empty"),
        1 => find_in_document(documents.into_iter().next().expect("one document"), ""),
        _ => {
            // Kubernetes manifests come as multi-document streams: take the one KongPlugin.
            let mut found = Vec::new();
            for (i, doc) in documents.into_iter().enumerate() {
                if is_kong_plugin_manifest(&doc) && manifest_plugin_name(&doc).is_some_and(is_our_plugin) {
                    found.push(find_in_document(doc, &format!("document {}: ", i + 1)));
                }
            }
            match found.len() {
                1 => found.pop().expect("one"),
                0 => err(format!(
                    "none of the YAML documents is a KongPlugin or KongClusterPlugin with plugin: {}",
                    PLUGIN_NAMES.join(" or ")
                )),
                n => err(format!("{n} KongPlugin documents configure the plugin; keep exactly one in this file")),
            }
        }
    }
}

fn is_our_plugin(name: &str) -> bool {
    PLUGIN_NAMES.contains(&name)
}

fn is_kong_plugin_manifest(doc: &Value) -> bool {
    matches!(doc.get("kind").and_then(Value::as_str), Some("KongPlugin" | "KongClusterPlugin"))
}

fn manifest_plugin_name(doc: &Value) -> Option<&str> {
    doc.get("plugin").and_then(Value::as_str)
}

fn find_in_document(doc: Value, doc_prefix: &str) -> Result<Found, LoadError> {
    let Value::Object(map) = doc else {
        return err(format!("{doc_prefix}the file must contain a mapping (JSON object) at the top level"));
    };

    if map.contains_key("kind") {
        return from_manifest(map, doc_prefix);
    }
    if map.contains_key("_format_version")
        || ["plugins", "services", "routes"].iter().any(|k| map.get(*k).is_some_and(Value::is_array))
    {
        return from_deck(map);
    }
    if map.contains_key("config") && map.get("name").is_some_and(Value::is_string) {
        let mut found = from_plugin_object(map, "")?;
        found.kind = "Kong Admin API plugin object";
        return Ok(found);
    }
    Ok(Found { config: Value::Object(map), location: String::new(), kind: "plugin config object", warnings: vec![] })
}

fn from_manifest(mut map: Map<String, Value>, doc_prefix: &str) -> Result<Found, LoadError> {
    let kind = map.get("kind").and_then(Value::as_str).unwrap_or_default().to_owned();
    if kind != "KongPlugin" && kind != "KongClusterPlugin" {
        return err(format!("{doc_prefix}kind: expected KongPlugin or KongClusterPlugin, got {kind:?}"));
    }
    match map.get("plugin").and_then(Value::as_str) {
        Some(name) if is_our_plugin(name) => {}
        Some(name) => return err(format!("{doc_prefix}plugin: expected {}, got {name:?}", PLUGIN_NAMES.join(" or "))),
        None => return err(format!("{doc_prefix}plugin: required (the plugin name, {})", PLUGIN_NAMES[0])),
    }
    if map.contains_key("configFrom") || map.contains_key("configPatches") {
        return err(format!(
            "{doc_prefix}configFrom/configPatches: reading the config from a Kubernetes Secret is not \
             supported here; inline it under config"
        ));
    }
    let mut warnings = Vec::new();
    if map.get("disabled").and_then(Value::as_bool) == Some(true) {
        warnings.push("the KongPlugin has disabled: true; the proxy enforces it anyway".to_owned());
    }
    match map.remove("config") {
        Some(config @ Value::Object(_)) => {
            Ok(Found { config, location: "config".to_owned(), kind: "KongPlugin manifest", warnings })
        }
        Some(_) => err(format!("{doc_prefix}config: must be a mapping")),
        None => err(format!("{doc_prefix}config: required")),
    }
}

/// A plugin object `{name, config, enabled, …}` (decK entry or Admin API body).
fn from_plugin_object(mut map: Map<String, Value>, path: &str) -> Result<Found, LoadError> {
    let dot = if path.is_empty() { "" } else { "." };
    let name = map.get("name").and_then(Value::as_str).unwrap_or_default();
    if !is_our_plugin(name) {
        return err(format!("{path}{dot}name: expected {}, got {name:?}", PLUGIN_NAMES.join(" or ")));
    }
    let mut warnings = Vec::new();
    if map.get("enabled").and_then(Value::as_bool) == Some(false) {
        warnings.push(format!("{path}{dot}enabled is false; the proxy enforces the plugin anyway"));
    }
    let location = format!("{path}{dot}config");
    match map.remove("config") {
        Some(config @ Value::Object(_)) => Ok(Found { config, location, kind: "decK file", warnings }),
        Some(_) => err(format!("{location}: must be a mapping")),
        None => err(format!("{location}: required")),
    }
}

/// decK: plugins at the top level, under services, under services' routes, or under routes.
fn from_deck(map: Map<String, Value>) -> Result<Found, LoadError> {
    let mut candidates: Vec<(String, Map<String, Value>)> = Vec::new();
    let mut collect = |plugins: Option<&Value>, path: &str| {
        for (i, p) in plugins.and_then(Value::as_array).into_iter().flatten().enumerate() {
            if let Some(obj) = p.as_object() {
                if obj.get("name").and_then(Value::as_str).is_some_and(is_our_plugin) {
                    candidates.push((format!("{path}plugins[{i}]"), obj.clone()));
                }
            }
        }
    };
    collect(map.get("plugins"), "");
    for (s, service) in map.get("services").and_then(Value::as_array).into_iter().flatten().enumerate() {
        collect(service.get("plugins"), &format!("services[{s}]."));
        for (r, route) in service.get("routes").and_then(Value::as_array).into_iter().flatten().enumerate() {
            collect(route.get("plugins"), &format!("services[{s}].routes[{r}]."));
        }
    }
    for (r, route) in map.get("routes").and_then(Value::as_array).into_iter().flatten().enumerate() {
        collect(route.get("plugins"), &format!("routes[{r}]."));
    }
    match candidates.len() {
        1 => {
            let (path, obj) = candidates.pop().expect("one");
            from_plugin_object(obj, &path)
        }
        0 => err(format!(
            "decK file: no plugin named {} found (looked under plugins, services, routes)",
            PLUGIN_NAMES.join(" or ")
        )),
        _ => err(format!(
            "decK file: {} plugin entries found ({}); this proxy protects one MCP server, keep exactly one",
            candidates.len(),
            candidates.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>().join(", ")
        )),
    }
}

// ---- YAML with decK template substitution ----------------------------------------------

/// Parses every document. `${{ env "DECK_X" }}` is replaced inside scalars as the parser
/// reads them, before types are resolved, which is what decK's textual templating amounts
/// to: a plain scalar that becomes `true` or `8080` is a boolean or a number, a quoted one
/// stays a string. Unlike textual substitution, a value containing `#`, `: ` or a newline
/// cannot change the structure of the file (a secret with `#` is not cut short).
fn load_yaml(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Vec<Yaml>, LoadError> {
    // Pass 1: syntax and duplicate keys, with the loader's own error reporting.
    YamlLoader::load_from_str(text).map_err(|e| LoadError(format!("not valid YAML or JSON: {e}")))?;
    // Pass 2: the same events, with template references substituted.
    let mut receiver = Substituting { loader: YamlLoader::default(), env, error: None };
    Parser::new_from_str(text)
        .load(&mut receiver, true)
        .map_err(|e| LoadError(format!("not valid YAML or JSON: {e}")))?;
    if let Some(e) = receiver.error {
        return Err(e);
    }
    Ok(receiver.loader.documents().to_vec())
}

struct Substituting<'e> {
    loader: YamlLoader,
    env: &'e dyn Fn(&str) -> Option<String>,
    error: Option<LoadError>,
}

impl MarkedEventReceiver for Substituting<'_> {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let ev = match ev {
            Event::Scalar(value, style, anchor, tag) if value.contains("${{") => match substitute(&value, self.env) {
                Ok(v) => Event::Scalar(v, style, anchor, tag),
                Err(message) => {
                    if self.error.is_none() {
                        self.error =
                            Some(LoadError(format!("line {} column {}: {message}", mark.line(), mark.col() + 1)));
                    }
                    Event::Scalar(String::new(), TScalarStyle::SingleQuoted, anchor, tag)
                }
            },
            other => other,
        };
        self.loader.on_event(ev, mark);
    }
}

/// Replaces every `${{ env "NAME" }}` in `value`. Errors name the variable, never a value.
pub fn substitute(value: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("${{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 3..];
        let Some(end) = after.find("}}") else {
            return Err("unterminated template: `${{` without `}}`".to_owned());
        };
        let name = parse_env_expression(after[..end].trim())?;
        match env(name) {
            Some(v) => out.push_str(&v),
            None => {
                return Err(format!("environment variable {name} is not set (referenced as ${{{{ env \"{name}\" }}}})"))
            }
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// `env "DECK_NAME"` → `DECK_NAME`. Only the `env` function exists, as in decK.
fn parse_env_expression(expr: &str) -> Result<&str, String> {
    let unsupported = || {
        format!("unsupported template expression `${{{{ {expr} }}}}`: only ${{{{ env \"DECK_NAME\" }}}} is supported")
    };
    let Some(arg) = expr.strip_prefix("env") else { return Err(unsupported()) };
    if !arg.starts_with(char::is_whitespace) {
        return Err(unsupported());
    }
    let arg = arg.trim();
    let name = arg.strip_prefix('"').and_then(|a| a.strip_suffix('"')).ok_or_else(unsupported)?;
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(unsupported());
    }
    if !name.starts_with("DECK_") {
        return Err(format!(
            "environment variable {name} must be prefixed with DECK_ (decK reads only DECK_* variables)"
        ));
    }
    Ok(name)
}

fn to_json(y: Yaml, path: &str) -> Result<Value, LoadError> {
    Ok(match y {
        Yaml::Null | Yaml::BadValue => Value::Null,
        Yaml::Boolean(b) => Value::Bool(b),
        Yaml::Integer(i) => Value::Number(i.into()),
        Yaml::Real(r) => match r.parse::<f64>().ok().and_then(Number::from_f64) {
            Some(n) => Value::Number(n),
            None => return err(format!("{}: not a finite number", display_path(path))),
        },
        Yaml::String(s) => Value::String(s),
        Yaml::Array(items) => Value::Array(
            items
                .into_iter()
                .enumerate()
                .map(|(i, v)| to_json(v, &format!("{path}[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
        Yaml::Hash(hash) => {
            let mut map = Map::new();
            for (k, v) in hash {
                let key = match k {
                    Yaml::String(s) => s,
                    Yaml::Integer(i) => i.to_string(),
                    Yaml::Boolean(b) => b.to_string(),
                    _ => return err(format!("{}: mapping keys must be strings", display_path(path))),
                };
                let child = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                map.insert(key, to_json(v, &child)?);
            }
            Value::Object(map)
        }
        Yaml::Alias(_) => return err(format!("{}: unresolved YAML alias", display_path(path))),
    })
}

fn display_path(path: &str) -> &str {
    if path.is_empty() {
        "(top level)"
    } else {
        path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        move |k| map.get(k).cloned()
    }

    /// The Kong fixtures at the repository root (shared with the library's tests).
    fn testdata(name: &str) -> String {
        std::fs::read_to_string(format!("{}/../tests/testdata/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    #[test]
    fn bare_json_config() {
        let found = parse(&testdata("kong-config.json"), &env_of(&[])).unwrap();
        assert_eq!(found.location, "");
        assert_eq!(found.config["client_id"], "kong");
        mcp_oauth2::Config::from_value(found.config).unwrap();
    }

    #[test]
    fn admin_api_plugin_object() {
        let found = parse(&testdata("kong-admin-api-plugin.json"), &env_of(&[])).unwrap();
        assert_eq!(found.location, "config");
        assert_eq!(found.config["resource"], "http://127.0.0.1:8080/mcp");
        mcp_oauth2::Config::from_value(found.config).unwrap();
    }

    #[test]
    fn kongplugin_manifest() {
        let found = parse(&testdata("kongplugin.yaml"), &env_of(&[])).unwrap();
        assert_eq!(found.kind, "KongPlugin manifest");
        mcp_oauth2::Config::from_value(found.config).unwrap();
    }

    #[test]
    fn deck_with_env() {
        let env = env_of(&[
            ("DECK_MCP_AUTH_URL", "http://127.0.0.1:8080/mcp"),
            ("DECK_KEYCLOAK_AUTHZ_URL", "http://127.0.0.1:9400/realms/mcp"),
            (
                "DECK_KEYCLOAK_INTROSPECTION_URL",
                "http://127.0.0.1:9400/realms/mcp/protocol/openid-connect/token/introspect",
            ),
            ("DECK_CLIENT_ID", "kong"),
            ("DECK_CLIENT_SECRET", "s3cr#t: with {{ odd }} chars"),
        ]);
        let found = parse(&testdata("kong-deck.yaml"), &env).unwrap();
        assert_eq!(found.location, "plugins[0].config");
        // A `#` or `: ` in the value does not cut it short or change the structure.
        assert_eq!(found.config["client_secret"], "s3cr#t: with {{ odd }} chars");
        assert_eq!(found.config["authorization_servers"][0], "http://127.0.0.1:9400/realms/mcp");
        mcp_oauth2::Config::from_value(found.config).unwrap();
    }

    #[test]
    fn deck_route_scoped() {
        let found = parse(&testdata("kong-deck-route-scoped.yaml"), &env_of(&[("DECK_CLIENT_SECRET", "x")])).unwrap();
        assert_eq!(found.config["upstream_headers"][0]["path"][1], "roles");
        mcp_oauth2::Config::from_value(found.config).unwrap();
    }

    #[test]
    fn unset_variable_is_named() {
        let e = parse(&testdata("kong-deck-route-scoped.yaml"), &env_of(&[])).unwrap_err();
        assert!(e.0.contains("DECK_CLIENT_SECRET is not set"), "{e}");
        assert!(e.0.starts_with("line 20 column 22:"), "{e}");
    }

    #[test]
    fn only_deck_prefixed_variables() {
        let e = substitute(r#"${{ env "HOME" }}"#, &env_of(&[("HOME", "/root")])).unwrap_err();
        assert!(e.contains("HOME must be prefixed with DECK_"), "{e}");
        let e = substitute(r#"${{ envx "DECK_A" }}"#, &env_of(&[])).unwrap_err();
        assert!(e.contains("unsupported template expression"), "{e}");
        let e = substitute(r#"a ${{ env "DECK_A" "#, &env_of(&[])).unwrap_err();
        assert!(e.contains("unterminated"), "{e}");
        assert_eq!(
            substitute(r#"x-${{env "DECK_A"}}-${{ env "DECK_A" }}"#, &env_of(&[("DECK_A", "1")])).unwrap(),
            "x-1-1"
        );
    }

    #[test]
    fn plain_scalars_resolve_after_substitution_quoted_stay_strings() {
        let yaml = "plugins:\n- name: mcp-oauth2\n  config:\n    a: ${{ env \"DECK_B\" }}\n    b: '${{ env \"DECK_B\" }}'\n    n: ${{ env \"DECK_N\" }}\n";
        let found = parse(yaml, &env_of(&[("DECK_B", "true"), ("DECK_N", "8080")])).unwrap();
        assert_eq!(found.config["a"], true);
        assert_eq!(found.config["b"], "true");
        assert_eq!(found.config["n"], 8080);
    }

    #[test]
    fn shapes_and_errors() {
        let e = parse("name: rate-limiting\nconfig: {}\n", &env_of(&[])).unwrap_err();
        assert_eq!(e.0, r#"name: expected ai-mcp-oauth2 or mcp-oauth2, got "rate-limiting""#);
        let e = parse("_format_version: '3.0'\nplugins: []\n", &env_of(&[])).unwrap_err();
        assert!(e.0.contains("no plugin named"), "{e}");
        let two = "plugins:\n- name: mcp-oauth2\n  config: {}\nservices:\n- name: s\n  plugins:\n  - name: ai-mcp-oauth2\n    config: {}\n";
        let e = parse(two, &env_of(&[])).unwrap_err();
        assert!(e.0.contains("plugins[0], services[0].plugins[0]"), "{e}");
        let e = parse("[1, 2]", &env_of(&[])).unwrap_err();
        assert!(e.0.contains("mapping"), "{e}");
        let e = parse("a: 1\na: 2\n", &env_of(&[])).unwrap_err();
        assert!(e.0.contains("duplicated key"), "{e}");
        let e = parse("{\"resource\": ", &env_of(&[])).unwrap_err();
        assert!(e.0.starts_with("not valid YAML or JSON"), "{e}");
        let e = parse("kind: KongPlugin\nplugin: key-auth\nconfig: {}\n", &env_of(&[])).unwrap_err();
        assert!(e.0.starts_with("plugin: expected"), "{e}");
        let e = parse("", &env_of(&[])).unwrap_err();
        assert_eq!(e.0, "the file is empty");
    }

    #[test]
    fn byte_order_mark_is_ignored() {
        let found = parse(&format!("\u{feff}{}", testdata("kong-config.json")), &env_of(&[])).unwrap();
        assert_eq!(found.config["client_id"], "kong");
    }

    #[test]
    fn multi_document_manifest_stream() {
        let text =
            format!("apiVersion: v1\nkind: Service\nmetadata: {{name: x}}\n---\n{}", testdata("kongplugin.yaml"));
        let found = parse(&text, &env_of(&[])).unwrap();
        assert_eq!(found.config["client_id"], "kong");
    }
}
