//! The `mcp_oauth2` LuaJIT module: the sans-I/O validator of `mcp-oauth2` for OpenResty /
//! nginx workers and Kong.
//!
//! Nothing here performs I/O or blocks: when the validator needs the authorization server,
//! Lua gets a `pending` object with the HTTP request to perform (through nginx), and hands
//! the response back with `pending:resume(...)`. Rust never calls back into Lua, so nothing
//! ever tries to yield across a C boundary.
//!
//! ```lua
//! local native = require("mcp_oauth2")
//! local v, err = native.new({ resource = "...", authorization_servers = { "..." }, ... })
//! local d = v:begin({ method = "GET", path = "/mcp", headers = { authorization = "Bearer x" } })
//! -- d is a decision table, or a pending object:
//! --   local http = d:request()          -- { method, url, headers, body, timeout, purpose }
//! --   d = d:resume(status, headers, body)  or  d:resume(nil, "timeout", "message")
//! ```
//!
//! Runtime failures return `nil, err`; a Rust panic becomes a Lua error (mlua unwinds and
//! converts it), never an abort of the nginx worker.

mod config;
mod ffi;

use std::net::IpAddr;

use mcp_oauth2::{
    Decision, HttpResponse, Pending, Reason, Request, Step, TransportError, TransportErrorKind, Validator,
};
use mlua::prelude::*;
use mlua::{MultiValue, UserData, UserDataMethods, Value};

pub use crate::config::lua_to_json;

/// The module table: `new(conf)` and `version`.
///
/// # Errors
/// Only if Lua cannot allocate the table.
#[cfg_attr(feature = "module", mlua::lua_module(name = "mcp_oauth2"))]
pub fn mcp_oauth2_lua(lua: &Lua) -> LuaResult<LuaTable> {
    let exports = lua.create_table()?;
    exports.set("version", env!("CARGO_PKG_VERSION"))?;
    exports.set("new", lua.create_function(new_validator)?)?;
    // The address of the FFI fast path (see ffi.rs), for `ffi.cast` in resty.mcp_oauth2.
    exports.set("ffi_check", mlua::LightUserData(ffi::check_fn_address()))?;
    Ok(exports)
}

/// `mcp_oauth2.new(conf)`: `conf` is a Lua table with the JSON schema's shape, or JSON text.
/// Returns the validator, or `nil, "field.path: message"`.
fn new_validator(lua: &Lua, conf: Value) -> LuaResult<(Value, Option<String>)> {
    let built = match conf {
        Value::String(s) => match std::str::from_utf8(&s.as_bytes()) {
            Ok(text) => Validator::from_json(text).map_err(|e| e.to_string()),
            Err(_) => Err("configuration is not valid UTF-8".to_owned()),
        },
        Value::Table(_) => match lua_to_json(&conf) {
            Ok(json) => mcp_oauth2::Config::from_value(json).and_then(Validator::new).map_err(|e| e.to_string()),
            Err(e) => Err(e),
        },
        other => Err(format!("configuration must be a table or a JSON string, not {}", other.type_name())),
    };
    match built {
        Ok(validator) => {
            let names = validator_header_names(&validator);
            let ffi = Box::new(ffi::FfiHandle::new(validator.clone(), names.clone()));
            let ud = lua.create_userdata(LuaValidator { validator, names, ffi })?;
            Ok((Value::UserData(ud), None))
        }
        Err(e) => Ok((Value::Nil, Some(e))),
    }
}

/// The configured claim header names, in configuration order: the order of the values
/// `validator:check` returns for a forward.
fn validator_header_names(v: &Validator) -> Vec<String> {
    let c = v.config();
    c.claim_to_header
        .iter()
        .map(|m| m.header.clone())
        .chain(c.upstream_headers.iter().map(|m| m.header.clone()))
        .collect()
}

struct LuaValidator {
    validator: Validator,
    names: Vec<String>,
    /// Boxed so that its address, handed to Lua by `ffi_handle()`, never moves.
    ffi: Box<ffi::FfiHandle>,
}

/// The TTL (seconds) for which a shared, cross-worker cache may keep the AS response behind
/// `decision`: behaviour.md §5 for allowed tokens and token rejections, 0 (never) for AS
/// failures and for request-dependent refusals whose token expiry is not known here.
fn shared_cache_ttl(v: &Validator, decision: &Decision, now: i64) -> i64 {
    let c = v.config();
    if !c.cache_introspection {
        return 0;
    }
    let ttl_max = i64::try_from(c.cache_ttl_max).unwrap_or(i64::MAX);
    match decision {
        Decision::Forward(f) => f.valid_until_unix().saturating_sub(now).clamp(0, ttl_max),
        Decision::Respond(r) => match r.reason() {
            Reason::TokenInactive
            | Reason::TokenExpired
            | Reason::TokenNotYetValid
            | Reason::TokenMalformed
            | Reason::AudienceMismatch => i64::try_from(c.cache_ttl_negative).unwrap_or(i64::MAX),
            _ => 0,
        },
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A decision as a plain Lua table:
/// forward: `{ forward = true, reason, remove_headers = {..}, set_headers = {name = value},
/// valid_until, identity = {subject, client_id, scope, consumer, consumer_groups, credential},
/// shared_ttl }`;
/// respond: `{ forward = false, status, headers = {name = value}, body, reason, detail,
/// shared_ttl }`.
fn decision_table(lua: &Lua, v: &Validator, decision: &Decision) -> LuaResult<LuaTable> {
    let t = lua.create_table()?;
    t.set("reason", decision.reason().as_str())?;
    t.set("shared_ttl", shared_cache_ttl(v, decision, unix_now()))?;
    match decision {
        Decision::Forward(f) => {
            t.set("forward", true)?;
            let remove = lua.create_sequence_from(f.remove_headers())?;
            t.set("remove_headers", remove)?;
            let set = lua.create_table()?;
            for (n, val) in f.set_headers() {
                set.set(n, val)?;
            }
            t.set("set_headers", set)?;
            t.set("valid_until", f.valid_until_unix())?;
            let id = f.identity();
            let it = lua.create_table()?;
            it.set("subject", id.subject())?;
            it.set("client_id", id.client_id())?;
            it.set("scope", id.scope())?;
            it.set("consumer", id.consumer())?;
            if let Some(groups) = id.consumer_groups() {
                it.set("consumer_groups", lua.create_sequence_from(groups.iter().map(|g| &**g))?)?;
            }
            it.set("credential", id.credential())?;
            t.set("identity", it)?;
        }
        Decision::Respond(r) => {
            t.set("forward", false)?;
            t.set("status", r.status())?;
            let headers = lua.create_table()?;
            for (n, val) in r.headers() {
                headers.set(n, val)?;
            }
            t.set("headers", headers)?;
            t.set("body", lua.create_string(r.body())?)?;
            t.set("detail", r.detail())?;
        }
    }
    Ok(t)
}

fn step_value(lua: &Lua, v: &Validator, step: Step) -> LuaResult<Value> {
    match step {
        Step::Done(d) => Ok(Value::Table(decision_table(lua, v, &d)?)),
        Step::Need(http, pending) => {
            let ud =
                lua.create_userdata(LuaPending { validator: v.clone(), http: Some(http), pending: Some(pending) })?;
            Ok(Value::UserData(ud))
        }
    }
}

#[cfg(feature = "test-hooks")]
pub(crate) fn test_hook(path: &[u8]) {
    if path == b"/__mcp_oauth2_test_panic" {
        panic!("mcp_oauth2 test hook: deliberate panic");
    }
}

#[cfg(not(feature = "test-hooks"))]
#[inline(always)]
pub(crate) fn test_hook(_path: &[u8]) {}

fn parse_peer(peer: Option<&[u8]>) -> Result<Option<IpAddr>, String> {
    match peer {
        None => Ok(None),
        Some(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .map(Some)
            .ok_or_else(|| "peer_addr: not an IP address".to_owned()),
    }
}

/// The fast path's answer to Lua: `true, valid_until, value1, value2, ...` for a forward
/// (one value or `false` per configured claim header, in `validator:header_names()` order;
/// the headers to remove are fixed per validator), `false, decision` for a response,
/// `nil, pending` when the AS must be asked, `nil, nil, err` for a malformed argument.
/// No Lua table is created for a forward.
fn fast_result(lua: &Lua, validator: &Validator, names: &[String], step: Step) -> LuaResult<MultiValue> {
    match step {
        Step::Done(Decision::Forward(f)) => {
            let mut out = Vec::with_capacity(2 + names.len());
            out.push(Value::Boolean(true));
            out.push(Value::Number(f.valid_until_unix() as f64));
            // One value per configured header, in configuration order (`false`: the claim is
            // absent). set_headers() yields the present ones in that order.
            let mut set = f.set_headers().peekable();
            for name in names {
                match set.next_if(|(n, _)| n == name) {
                    Some((_, value)) => out.push(Value::String(lua.create_string(value)?)),
                    None => out.push(Value::Boolean(false)),
                }
            }
            Ok(MultiValue::from_vec(out))
        }
        Step::Done(d) => {
            Ok(MultiValue::from_vec(vec![Value::Boolean(false), Value::Table(decision_table(lua, validator, &d)?)]))
        }
        need @ Step::Need(..) => Ok(MultiValue::from_vec(vec![Value::Nil, step_value(lua, validator, need)?])),
    }
}

/// The hot path: see `validator:check` in the module docs.
fn check(lua: &Lua, validator: &Validator, names: &[String], args: CheckArgs) -> LuaResult<MultiValue> {
    let (method, path, authz, peer, origin, acrm, body, xf_proto, xf_host, xf_port, xf_prefix) = args;
    let path_b = path.as_bytes();
    test_hook(&path_b);
    let method_b = method.as_bytes();
    // A client can put any byte in the path (`%FF` decodes to one): the path only selects
    // the metadata document, which a lossy copy never matches, so the token is still checked.
    let method_s = String::from_utf8_lossy(&method_b);
    let path_s = String::from_utf8_lossy(&path_b);
    let (method_s, path_s) = (&*method_s, &*path_s);
    let peer_b = peer.as_ref().map(|p| p.as_bytes());
    let peer_addr = match parse_peer(peer_b.as_deref()) {
        Ok(p) => p,
        Err(e) => return Ok(MultiValue::from_vec(vec![Value::Nil, Value::Nil, e.into_lua(lua)?])),
    };
    let authz_b = authz.as_ref().map(|s| s.as_bytes());
    let origin_b = origin.as_ref().map(|s| s.as_bytes());
    let acrm_b = acrm.as_ref().map(|s| s.as_bytes());
    let body_b = body.as_ref().map(|s| s.as_bytes());
    let xfs = [
        ("x-forwarded-proto", xf_proto.as_ref().map(|s| s.as_bytes())),
        ("x-forwarded-host", xf_host.as_ref().map(|s| s.as_bytes())),
        ("x-forwarded-port", xf_port.as_ref().map(|s| s.as_bytes())),
        ("x-forwarded-prefix", xf_prefix.as_ref().map(|s| s.as_bytes())),
    ];
    let mut request = Request::new(method_s, path_s);
    request.peer_addr = peer_addr;
    request.body = body_b.as_deref();
    if let Some(a) = authz_b.as_deref() {
        request.headers.push(("authorization", a));
    }
    if let Some(o) = origin_b.as_deref() {
        request.headers.push(("origin", o));
    }
    if let Some(m) = acrm_b.as_deref() {
        request.headers.push(("access-control-request-method", m));
    }
    for (n, v) in &xfs {
        if let Some(v) = v.as_deref() {
            request.headers.push((n, v));
        }
    }
    let step = validator.begin(&request);
    fast_result(lua, validator, names, step)
}

type CheckArgs = (
    LuaString,
    LuaString,
    Option<LuaString>,
    Option<LuaString>,
    Option<LuaString>,
    Option<LuaString>,
    Option<LuaString>,
    Option<LuaString>,
    Option<LuaString>,
    Option<LuaString>,
    Option<LuaString>,
);

impl UserData for LuaValidator {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        // validator:begin(req) -> decision table | pending, or nil, err on a malformed req.
        methods.add_method("begin", |lua, this, req: LuaTable| {
            let method: Option<LuaString> = req.get("method")?;
            let path: Option<LuaString> = req.get("path")?;
            let body: Option<LuaString> = req.get("body")?;
            let peer: Option<LuaString> = req.get("peer_addr")?;
            let Some(path) = path else {
                return Ok((Value::Nil, Some("path: required".to_owned())));
            };
            let mut owned: Vec<(LuaString, LuaString)> = Vec::new();
            match req.get::<Value>("headers")? {
                Value::Nil => {}
                Value::Table(h) => {
                    for pair in h.pairs::<LuaString, Value>() {
                        let (name, value) = pair?;
                        match value {
                            Value::String(s) => owned.push((name, s)),
                            Value::Table(list) => {
                                for item in list.sequence_values::<LuaString>() {
                                    owned.push((name.clone(), item?));
                                }
                            }
                            _ => {
                                let n = name.to_string_lossy();
                                return Ok((Value::Nil, Some(format!("headers.{n}: must be a string or a list"))));
                            }
                        }
                    }
                }
                _ => return Ok((Value::Nil, Some("headers: must be a table".to_owned()))),
            }
            let path_b = path.as_bytes();
            test_hook(&path_b);
            let method_b = method.as_ref().map(|m| m.as_bytes());
            let body_b = body.as_ref().map(|b| b.as_bytes());
            let peer_b = peer.as_ref().map(|p| p.as_bytes());
            let borrowed: Vec<_> = owned.iter().map(|(n, v)| (n.to_str(), v.as_bytes())).collect();
            let method_s = String::from_utf8_lossy(method_b.as_deref().unwrap_or(b"GET"));
            let path_s = String::from_utf8_lossy(&path_b);
            let peer_addr = match parse_peer(peer_b.as_deref()) {
                Ok(p) => p,
                Err(e) => return Ok((Value::Nil, Some(e))),
            };
            let mut request = Request::new(&method_s, &path_s);
            request.peer_addr = peer_addr;
            request.body = body_b.as_deref();
            for (n, v) in &borrowed {
                match n {
                    Ok(n) => request.headers.push((n, v)),
                    Err(_) => return Ok((Value::Nil, Some("headers: a header name is not UTF-8".to_owned()))),
                }
            }
            let step = this.validator.begin(&request);
            Ok((step_value(lua, &this.validator, step)?, None))
        });

        // validator:check(method, path, authorization, peer_addr, origin,
        //   access_control_request_method, body, x_forwarded_proto, x_forwarded_host,
        //   x_forwarded_port, x_forwarded_prefix)
        // The hot path of resty.mcp_oauth2: plain string arguments and, for a forward, plain
        // return values (see `fast_result`), so a cache hit creates no Lua table.
        methods.add_method("check", |lua, this, args: CheckArgs| check(lua, &this.validator, &this.names, args));

        // validator:evict(token) -> true if this worker's cache had it.
        methods.add_method("evict", |_, this, token: LuaString| {
            let b = token.as_bytes();
            Ok(std::str::from_utf8(&b).is_ok_and(|t| this.validator.evict(t)))
        });

        // validator:ffi_handle() -> light userdata for `mcp_oauth2.ffi_check`; valid while
        // this validator is alive.
        methods.add_method("ffi_handle", |_, this, ()| {
            Ok(mlua::LightUserData(std::ptr::from_ref::<ffi::FfiHandle>(&this.ffi).cast_mut().cast()))
        });

        // validator:header_names() -> the claim header names, in the order check() returns
        // their values.
        methods.add_method("header_names", |lua, this, ()| {
            lua.create_sequence_from(this.names.iter().map(String::as_str))
        });

        // validator:remove_headers() -> the headers every forward removes (fixed per config).
        methods.add_method("remove_headers", |lua, this, ()| {
            let c = this.validator.config();
            let mut names: Vec<&str> = Vec::new();
            if !c.passthrough_credentials {
                names.push("Authorization");
            }
            names.extend(this.names.iter().map(String::as_str));
            lua.create_sequence_from(names)
        });

        // validator:settings() -> the host-relevant parts of the configuration.
        methods.add_method("settings", |lua, this, ()| {
            let c = this.validator.config();
            let t = lua.create_table()?;
            t.set("timeout", c.timeout)?;
            t.set("cache_introspection", c.cache_introspection)?;
            t.set("cache_ttl_negative", c.cache_ttl_negative)?;
            t.set("cache_ttl_max", c.cache_ttl_max)?;
            t.set("needs_body", !c.method_scopes.is_empty())?;
            t.set("max_request_body_size", c.max_request_body_size)?;
            t.set("trusted_proxies", !c.trusted_proxies.is_empty())?;
            t.set("allowed_origins", c.allowed_origins.is_some())?;
            t.set("extra_headers", !c.headers.is_empty())?;
            t.set("ssl_verify", c.ssl_verify)?;
            t.set("keepalive", c.keepalive)?;
            t.set("consumer_by", lua.create_sequence_from(c.consumer_by.iter().map(|b| consumer_by_name(*b)))?)?;
            t.set("consumer_optional", c.consumer_optional)?;
            t.set("consumer_groups_optional", c.consumer_groups_optional)?;
            t.set("consumer_claim", c.consumer_claim.is_some())?;
            t.set("consumer_groups_claim", c.consumer_groups_claim.is_some())?;
            Ok(t)
        });

        // validator:metadata() -> the PRM document (JSON text).
        methods.add_method("metadata", |lua, this, ()| lua.create_string(this.validator.metadata_document()));
    }
}

fn consumer_by_name(b: mcp_oauth2::config::ConsumerBy) -> &'static str {
    match b {
        mcp_oauth2::config::ConsumerBy::Id => "id",
        mcp_oauth2::config::ConsumerBy::Username => "username",
        mcp_oauth2::config::ConsumerBy::CustomId => "custom_id",
    }
}

struct LuaPending {
    validator: Validator,
    http: Option<mcp_oauth2::HttpRequest>,
    pending: Option<Pending>,
}

fn transport_kind(name: &str) -> TransportErrorKind {
    match name {
        "connect" => TransportErrorKind::Connect,
        "timeout" => TransportErrorKind::Timeout,
        "tls" => TransportErrorKind::Tls,
        "body_too_large" => TransportErrorKind::BodyTooLarge,
        _ => TransportErrorKind::Other,
    }
}

impl UserData for LuaPending {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        // pending:request() -> { method, url, headers = {name = value}, body, timeout (ms), purpose }
        methods.add_method("request", |lua, this, ()| {
            let Some(http) = &this.http else {
                return Ok((Value::Nil, Some("the request was already resumed".to_owned())));
            };
            let t = lua.create_table()?;
            t.set("method", http.method)?;
            t.set("url", http.url.as_str())?;
            let headers = lua.create_table()?;
            for (n, v) in &http.headers {
                headers.set(n.as_str(), v.as_str())?;
            }
            t.set("headers", headers)?;
            t.set("body", lua.create_string(&http.body)?)?;
            t.set("timeout", u64::try_from(http.timeout.as_millis()).unwrap_or(u64::MAX))?;
            t.set("purpose", http.purpose.as_str())?;
            Ok((Value::Table(t), None))
        });

        // pending:cache_key() -> 64 hex digits (never the token).
        methods.add_method("cache_key", |_, this, ()| Ok(this.pending.as_ref().map(Pending::cache_key)));

        // pending:resume(status, headers, body) or pending:resume(nil, kind, message)
        // -> decision table (or another pending), or nil, err when already resumed.
        methods.add_method_mut("resume", |lua, this, (status, second, third): (Option<u16>, Value, Value)| {
            let Some(pending) = this.pending.take() else {
                return Ok((Value::Nil, Some("the request was already resumed".to_owned())));
            };
            this.http = None;
            let result = match status {
                Some(status) => {
                    let mut headers = Vec::new();
                    if let Value::Table(h) = &second {
                        for pair in h.pairs::<Value, Value>() {
                            let (n, v) = pair?;
                            let (Value::String(n), Value::String(v)) = (n, v) else { continue };
                            headers.push((n.to_string_lossy(), v.to_string_lossy()));
                        }
                    }
                    let body = match &third {
                        Value::String(s) => s.as_bytes().to_vec(),
                        _ => Vec::new(),
                    };
                    Ok(HttpResponse { status, headers, body })
                }
                None => {
                    let kind = match &second {
                        Value::String(s) => transport_kind(&s.to_string_lossy()),
                        _ => TransportErrorKind::Other,
                    };
                    let message = match &third {
                        Value::String(s) => s.to_string_lossy(),
                        _ => String::new(),
                    };
                    Err(TransportError::new(kind, message))
                }
            };
            let step = pending.resume(result);
            Ok((step_value(lua, &this.validator, step)?, None))
        });
    }
}
