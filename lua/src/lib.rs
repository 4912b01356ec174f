//! `mcp_oauth2.so`: the LuaJIT / OpenResty library of `mcp-oauth2`.
//!
//! One shared library, two faces:
//! - the core's C ABI (`include/mcp_oauth2.h`): every `mcp_oauth2_*` function is exported,
//!   and `resty.mcp_oauth2` calls them through the LuaJIT FFI (`ffi.load` of this very file,
//!   declarations in `lua/resty/mcp_oauth2/cdef.lua`, generated from the header);
//! - a small Lua module (`require("mcp_oauth2")`) for the one thing the FFI cannot do well:
//!   walking a Lua configuration table. It has `version` and `config_json(conf)`.
//!
//! Deciding requests never goes through the Lua C API: an FFI call passes pointers and
//! numbers and can be JIT-compiled, where a Lua C function converts every argument.
//!
//! ```lua
//! local native = require("mcp_oauth2")
//! local json, err = native.config_json({ resource = "...", authorization_servers = { "..." } })
//! ```

mod config;

use mlua::prelude::*;
use mlua::Value;

pub use crate::config::lua_to_json;

/// The C ABI of the core, linked into this library and exported from it (the symbols in
/// `include/mcp_oauth2.h`). Without a use of the crate nothing of it is linked, and the
/// library would export no C function at all.
pub use mcp_oauth2::ffi as c_abi;

/// The module table: `version` and `config_json(conf)`.
///
/// # Errors
/// Only if Lua cannot allocate the table.
#[cfg_attr(feature = "module", mlua::lua_module(name = "mcp_oauth2"))]
pub fn mcp_oauth2_lua(lua: &Lua) -> LuaResult<LuaTable> {
    let exports = lua.create_table()?;
    exports.set("version", env!("CARGO_PKG_VERSION"))?;
    exports.set("config_json", lua.create_function(config_json)?)?;
    Ok(exports)
}

/// `mcp_oauth2.config_json(conf)`: a Lua configuration table as JSON text, with the schema's
/// rules (an empty table is `{}` where the configuration has a map, `[]` elsewhere;
/// `ngx.null` / `cjson.null` mean unset). JSON text is returned as given. Returns the text,
/// or `nil, "field.path: message"`.
fn config_json(lua: &Lua, conf: Value) -> LuaResult<(Option<LuaString>, Option<String>)> {
    let json = match &conf {
        Value::String(s) => return Ok((Some(s.clone()), None)),
        Value::Table(_) => lua_to_json(&conf),
        other => Err(format!("configuration must be a table or a JSON string, not {}", other.type_name())),
    };
    match json {
        Ok(json) => Ok((Some(lua.create_string(json.to_string())?), None)),
        Err(e) => Ok((None, Some(e))),
    }
}

#[cfg(all(test, not(feature = "module")))]
mod tests {
    use super::*;

    #[test]
    fn config_json_converts_tables_and_passes_text_through() {
        let lua = Lua::new();
        let m = mcp_oauth2_lua(&lua).unwrap();
        lua.globals().set("m", m).unwrap();
        let (json, err): (Option<String>, Option<String>) =
            lua.load("return m.config_json({ resource = 'r', args = {}, scopes_supported = {} })").eval().unwrap();
        assert_eq!(err, None);
        let v: serde_json::Value = serde_json::from_str(&json.unwrap()).unwrap();
        assert_eq!(v, serde_json::json!({"resource": "r", "args": {}, "scopes_supported": []}));
        let (json, _): (Option<String>, Option<String>) = lua.load("return m.config_json('{\"a\":1}')").eval().unwrap();
        assert_eq!(json.as_deref(), Some("{\"a\":1}"));
        let (json, err): (Option<String>, Option<String>) = lua.load("return m.config_json(true)").eval().unwrap();
        assert_eq!(json, None);
        assert_eq!(err.as_deref(), Some("configuration must be a table or a JSON string, not boolean"));
    }
}
