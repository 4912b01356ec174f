//! The Kong schema (`lua/kong/plugins/mcp-oauth2/schema.lua`) against the core's `Config`:
//! the same field names at every level, and a configuration filled the way Kong fills one
//! (every schema default, `null` for the rest) parses to exactly the core's defaults. Fails
//! when either side changes a field or a default without the other.

use std::collections::BTreeSet;

use mcp_oauth2::config::TokenExchange;
use mcp_oauth2::Config;
use mlua::{Lua, Table, Value};
use serde_json::{json, Value as Json};

const RESOURCE: &str = "https://mcp.example.com/mcp";
const SERVER: &str = "https://as.example.com";

/// The `config` record of schema.lua, loaded with Kong's typedefs stubbed.
fn schema_config_fields(lua: &Lua) -> Table {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"));
    lua.load(format!(
        r#"
        package.path = "{dir}/?.lua;" .. package.path
        package.preload["kong.db.schema.typedefs"] = function()
          return {{
            no_consumer = {{ type = "foreign", reference = "consumers" }},
            protocols_http = {{ type = "set", elements = {{ type = "string" }} }},
            url = {{ type = "string" }},
          }}
        end
        "#
    ))
    .exec()
    .unwrap();
    let schema: Table = lua.load(r#"return require("kong.plugins.mcp-oauth2.schema")"#).eval().unwrap();
    for entry in schema.get::<Table>("fields").unwrap().sequence_values::<Table>() {
        if let Ok(Value::Table(config)) = entry.unwrap().get::<Value>("config") {
            return config.get("fields").unwrap();
        }
    }
    panic!("schema.lua has no config record");
}

/// (name, definition) of each field of a schema `fields` list.
fn fields(list: &Table) -> Vec<(String, Table)> {
    list.sequence_values::<Table>()
        .map(|f| {
            let (name, def) = f.unwrap().pairs::<String, Table>().next().unwrap().unwrap();
            (name, def)
        })
        .collect()
}

/// What Kong hands a plugin: every field, its default or null; records filled recursively.
fn kong_fill(list: &Table) -> Json {
    let mut out = serde_json::Map::new();
    for (name, def) in fields(list) {
        let value = if def.get::<String>("type").unwrap() == "record" {
            kong_fill(&def.get::<Table>("fields").unwrap())
        } else {
            match def.get::<Value>("default").unwrap() {
                Value::Nil => Json::Null,
                v => mcp_oauth2_lua::lua_to_json(&v).unwrap(),
            }
        };
        out.insert(name, value);
    }
    Json::Object(out)
}

/// The schema's field names equal the keys of the core's serialized default, at every
/// record level.
fn same_names(list: &Table, core: &Json, at: &str) {
    let schema: BTreeSet<String> = fields(list).into_iter().map(|(n, _)| n).collect();
    let keys: BTreeSet<String> = core.as_object().unwrap().keys().cloned().collect();
    let only_schema: Vec<_> = schema.difference(&keys).collect();
    let only_core: Vec<_> = keys.difference(&schema).collect();
    assert!(
        only_schema.is_empty() && only_core.is_empty(),
        "fields of {at}: only in schema.lua {only_schema:?}, only in mcp_oauth2::Config {only_core:?}"
    );
    for (name, def) in fields(list) {
        if def.get::<String>("type").unwrap() == "record" {
            same_names(&def.get::<Table>("fields").unwrap(), &core[&name], &format!("{at}.{name}"));
        }
    }
}

fn core_defaults() -> Json {
    let mut core = serde_json::to_value(Config::new(RESOURCE, vec![SERVER.to_owned()])).unwrap();
    // A record Kong always fills; unset in the core. Compare with the core's record defaults.
    core["token_exchange"] = serde_json::to_value(TokenExchange::default()).unwrap();
    core
}

#[test]
fn schema_fields_are_the_configs_fields() {
    let lua = Lua::new();
    same_names(&schema_config_fields(&lua), &core_defaults(), "config");
}

#[test]
fn schema_defaults_are_the_configs_defaults() {
    let lua = Lua::new();
    let list = schema_config_fields(&lua);
    let mut filled = kong_fill(&list);
    filled["resource"] = json!(RESOURCE);
    filled["authorization_servers"] = json!([SERVER]);
    let parsed = Config::from_value(filled).expect("a Kong-filled configuration parses");
    let core = core_defaults();
    let got = serde_json::to_value(parsed).unwrap();
    for (name, want) in core.as_object().unwrap() {
        assert_eq!(&got[name], want, "default of `{name}`: schema.lua vs mcp_oauth2::Config");
    }
    // Every field whose core default is not "nothing" (null, [], {}) has that default in the
    // schema itself, so the Admin API shows it (Kong's ai-mcp-oauth2 does).
    for (name, def) in fields(&list) {
        let want = &core[&name];
        if def.get::<Option<bool>>("required").unwrap() == Some(true)
            && matches!(def.get::<Value>("default").unwrap(), Value::Nil)
        {
            // Required without a default in the schema: the core must require it too.
            let mut without = kong_fill(&list);
            without["resource"] = json!(RESOURCE);
            without["authorization_servers"] = json!([SERVER]);
            without[&name] = Json::Null;
            assert!(Config::from_value(without).is_err(), "`{name}` is required in schema.lua but not in the core");
            continue;
        }
        let empty = want.is_null()
            || want.as_array().is_some_and(Vec::is_empty)
            || want.as_object().is_some_and(|o| o.is_empty())
            || def.get::<String>("type").unwrap() == "record";
        if !empty {
            assert!(
                !matches!(def.get::<Value>("default").unwrap(), Value::Nil),
                "`{name}` needs `default` in schema.lua (the core's is {want})"
            );
        }
    }
}
