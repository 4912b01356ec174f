//! The validator handle, the request the host describes, `begin`, `authorize` and `evict`.

use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;

use super::pending::first_step;
use super::{
    borrow, boundary, boundary_void, bytes, free_handle, into_handle, mcp_oauth2_bytes, mcp_oauth2_decision,
    mcp_oauth2_error, mcp_oauth2_header, mcp_oauth2_pending, mcp_oauth2_result, mcp_oauth2_str, out, slice,
    system_time, test_panic_hook, text, write_out, Result,
};
use crate::{Config, Policy, Request, UreqTransport, Validator};

/// A validator for one configuration, with its caches. Created by
/// `mcp_oauth2_validator_new`, owned by the host, freed with `mcp_oauth2_validator_free`.
///
/// Thread safety: every function taking a `const mcp_oauth2_validator *` is safe to call
/// concurrently from any number of threads on the same validator (it is shared state behind
/// an `Arc` with internal locking). Decisions and pending validations keep what they need
/// alive: they stay valid after the validator is freed.
pub struct mcp_oauth2_validator {
    pub(super) validator: Validator,
    /// Built at the first blocking call, so sans-I/O hosts never pay for a TLS setup.
    transport: OnceLock<UreqTransport>,
}

/// One client request, described by the host. Every `(ptr, len)` pair is borrowed only for
/// the duration of the call it is passed to; the library copies what it keeps.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct mcp_oauth2_request {
    /// The HTTP method, e.g. `POST` (UTF-8).
    pub method: *const u8,
    /// The length of `method` in bytes.
    pub method_len: usize,
    /// The request target, e.g. `/mcp` (UTF-8); a query string is ignored.
    pub path: *const u8,
    /// The length of `path` in bytes.
    pub path_len: usize,
    /// The request headers in the order received (a name may repeat); names must be UTF-8,
    /// values are raw bytes. NULL only when `headers_len` is 0.
    pub headers: *const mcp_oauth2_header,
    /// The number of entries in `headers`.
    pub headers_len: usize,
    /// Optional: the TCP peer address as text, `192.0.2.1`, `2001:db8::1`, or with a port
    /// (`192.0.2.1:5000`, `[2001:db8::1]:5000`). NULL means unknown (then `X-Forwarded-*`
    /// headers are never believed).
    pub peer_addr: *const u8,
    /// The length of `peer_addr` in bytes.
    pub peer_addr_len: usize,
    /// Optional: the buffered request body, needed only for `method_scopes`. NULL means
    /// the host did not buffer it (then a POST must carry every method scope); a non-NULL
    /// `body` with `body_len` 0 is an empty body.
    pub body: *const u8,
    /// The length of `body` in bytes.
    pub body_len: usize,
}

impl mcp_oauth2_request {
    /// The core's view of this request, borrowing the host's memory.
    ///
    /// # Safety
    /// Every pointer in `self` follows the field docs and stays valid for `'a`.
    unsafe fn as_core<'a>(&self) -> Result<Request<'a>> {
        // SAFETY: forwarded caller contract for each field.
        let (method, path, headers) = unsafe {
            (
                text(self.method, self.method_len)?,
                text(self.path, self.path_len)?,
                slice(self.headers, self.headers_len)?,
            )
        };
        test_panic_hook(method.as_bytes());
        test_panic_hook(path.as_bytes());
        let mut request = Request::new(method, path);
        request.headers.reserve_exact(headers.len());
        for h in headers {
            // SAFETY: forwarded caller contract for the header array's entries.
            let (name, value) = unsafe { (text(h.name, h.name_len)?, bytes(h.value, h.value_len)?) };
            request.headers.push((name, value));
        }
        if !self.peer_addr.is_null() {
            // SAFETY: forwarded caller contract.
            let addr = unsafe { text(self.peer_addr, self.peer_addr_len) }?;
            request.peer_addr = Some(parse_peer(addr)?);
        }
        if !self.body.is_null() {
            // SAFETY: forwarded caller contract.
            request.body = Some(unsafe { bytes(self.body, self.body_len) }?);
        }
        Ok(request)
    }
}

fn parse_peer(addr: &str) -> Result<IpAddr> {
    addr.parse::<IpAddr>()
        .or_else(|_| addr.parse::<SocketAddr>().map(|s| s.ip()))
        .map_err(|_| mcp_oauth2_result::InvalidArgument)
}

/// Builds a validator from a JSON configuration (the Kong `config` object; behaviour.md
/// §1).
///
/// - `config_json`, `config_len`: UTF-8 JSON, borrowed for the call only.
/// - `validator_out`: on success, receives a new validator that the host owns and frees with
///   `mcp_oauth2_validator_free`.
/// - `error_out`: optional (may be NULL). When the result is
///   `MCP_OAUTH2_RESULT_INVALID_CONFIG` or `MCP_OAUTH2_RESULT_UNSUPPORTED`, receives a new
///   error object naming the field (free it with `mcp_oauth2_error_free`); untouched on every
///   other result.
///
/// # Errors
/// `MCP_OAUTH2_RESULT_INVALID_CONFIG` (malformed JSON, unknown field, bad value: the error
/// names the field), `MCP_OAUTH2_RESULT_UNSUPPORTED` (a feature this build lacks),
/// `MCP_OAUTH2_RESULT_NULL_PARAMETER` (`validator_out` NULL, or `config_json` NULL with a
/// non-zero length).
///
/// # Safety
/// `config_json` points to `config_len` readable bytes (or is NULL with length 0);
/// `validator_out` and a non-NULL `error_out` point to writable pointer variables.
/// Thread safety: safe to call from any thread.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_validator_new(
    config_json: *const u8,
    config_len: usize,
    validator_out: *mut *mut mcp_oauth2_validator,
    error_out: *mut *mut mcp_oauth2_error,
) -> mcp_oauth2_result {
    boundary(|| {
        let validator_out = out(validator_out)?;
        // SAFETY: caller contract for the configuration bytes.
        let json = unsafe { bytes(config_json, config_len) }?;
        match Config::from_slice(json).and_then(Validator::new) {
            Ok(validator) => {
                let handle = into_handle(mcp_oauth2_validator { validator, transport: OnceLock::new() });
                // SAFETY: checked by `out`; writable per the caller contract.
                unsafe { write_out(validator_out, handle) };
                Ok(())
            }
            Err(e) => {
                let error = mcp_oauth2_error::new(&e);
                let result = error.result();
                if !error_out.is_null() {
                    // SAFETY: non-NULL and writable per the caller contract.
                    unsafe { write_out(error_out, into_handle(error)) };
                }
                Err(result)
            }
        }
    })
}

/// Frees a validator and sets `*validator` to NULL. `validator` NULL or `*validator` NULL:
/// no-op, so calling it twice on the same variable is safe. Decisions and pending
/// validations made by it stay valid; the caches are released with the last of them.
///
/// # Safety
/// `validator` is NULL or points to a variable holding NULL or a validator from
/// `mcp_oauth2_validator_new` that has not been freed through another variable.
/// Thread safety: no other thread may use the validator during or after this call.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_validator_free(validator: *mut *mut mcp_oauth2_validator) {
    // SAFETY: forwarded caller contract.
    boundary_void(|| unsafe { free_handle(validator) });
}

/// Starts deciding one request at `now_unix_ms` (the host's clock, Unix milliseconds), without
/// I/O (the sans-I/O flow). On success exactly one of the two outputs is non-NULL:
///
/// - `*decision_out`: the decision is made (metadata document, no token, malformed
///   request, cache hit, ...). The host owns it; free it with `mcp_oauth2_decision_free`.
/// - `*pending_out`: read `mcp_oauth2_pending_get_state`. `MCP_OAUTH2_PENDING_STATE_HTTP`: the
///   host performs the HTTP request it describes (`mcp_oauth2_pending_method`, `_url`,
///   `_header`, `_body`, `_timeout_ms`) and calls `mcp_oauth2_pending_resume` or
///   `mcp_oauth2_pending_fail`. `MCP_OAUTH2_PENDING_STATE_WAIT`: another request is already
///   asking the authorization server about this token; the host waits for it
///   (`mcp_oauth2_pending_wait`, `_is_ready` or `_on_ready`) and calls
///   `mcp_oauth2_pending_continue`. The host owns the pending; free it with
///   `mcp_oauth2_pending_free` (also after resuming).
///
/// `request` and everything it points to are borrowed for this call only.
///
/// # Errors
/// `MCP_OAUTH2_RESULT_NULL_PARAMETER` (a NULL `validator`, `request`, output, or a NULL
/// `(ptr, len)` with a non-zero length), `MCP_OAUTH2_RESULT_INVALID_ARGUMENT` (method, path
/// or a header name not UTF-8, unparsable `peer_addr`). Outcomes about the token are
/// decisions, never errors.
///
/// # Safety
/// `validator` is NULL or live; `request` is NULL or points to a request whose pointers
/// follow its field docs; the outputs are NULL or writable pointer variables.
/// Thread safety: safe to call concurrently on the same validator.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_validator_begin(
    validator: *const mcp_oauth2_validator,
    request: *const mcp_oauth2_request,
    now_unix_ms: u64,
    decision_out: *mut *mut mcp_oauth2_decision,
    pending_out: *mut *mut mcp_oauth2_pending,
) -> mcp_oauth2_result {
    boundary(|| {
        // SAFETY: caller contract: NULL or live objects.
        let (validator, request) = unsafe { (borrow(validator)?, borrow(request)?) };
        let (decision_out, pending_out) = (out(decision_out)?, out(pending_out)?);
        // SAFETY: caller contract for the request's pointers.
        let request = unsafe { request.as_core() }?;
        let (decision, pending) = first_step(validator.validator.begin(&request, system_time(now_unix_ms)));
        // SAFETY: both checked by `out`; writable per the caller contract.
        unsafe {
            write_out(decision_out, decision);
            write_out(pending_out, pending);
        }
        Ok(())
    })
}

/// Decides one request, performing the authorization-server calls itself with the built-in
/// blocking HTTP client (ureq + rustls), as the configuration says: `timeout`, `ssl_verify`
/// / `tls_client_auth_ssl_verify`, the mutual-TLS client certificate, `http_proxy` /
/// `https_proxy` (a `CONNECT` tunnel, with the configured `Proxy-Authorization`) and
/// `no_proxy`, `http_version`, `keepalive`. Blocks the calling thread for at most the
/// configured `timeout` per call it chains (one for introspection; metadata and key-set
/// fetches for local JWTs or a signed introspection answer). Concurrent misses for one token share one call (single flight).
///
/// On success `*decision_out` receives a new decision that the host owns and frees with
/// `mcp_oauth2_decision_free`. An unreachable or failing authorization server is a decision
/// (503), not an error.
///
/// # Errors
/// As `mcp_oauth2_validator_begin`.
///
/// # Safety
/// As `mcp_oauth2_validator_begin`.
/// Thread safety: safe to call concurrently on the same validator (that is what it is for).
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_validator_authorize(
    validator: *const mcp_oauth2_validator,
    request: *const mcp_oauth2_request,
    decision_out: *mut *mut mcp_oauth2_decision,
) -> mcp_oauth2_result {
    boundary(|| {
        // SAFETY: caller contract: NULL or live objects.
        let (validator, request) = unsafe { (borrow(validator)?, borrow(request)?) };
        let decision_out = out(decision_out)?;
        // SAFETY: caller contract for the request's pointers.
        let request = unsafe { request.as_core() }?;
        let transport = validator.transport.get_or_init(|| UreqTransport::new(validator.validator.config()));
        let decision = validator.validator.authorize(&request, transport);
        // SAFETY: checked by `out`; writable per the caller contract.
        unsafe { write_out(decision_out, into_handle(mcp_oauth2_decision::new(decision))) };
        Ok(())
    })
}

/// Removes one token's cached validation result (after the host learns it was revoked).
///
/// `token`, `token_len`: the bare token (without `Bearer `), UTF-8, borrowed for the call.
/// `evicted_out`: optional (may be NULL); on success receives whether a result was cached.
///
/// # Errors
/// `MCP_OAUTH2_RESULT_NULL_PARAMETER` (`validator` NULL, or `token` NULL with a non-zero
/// length), `MCP_OAUTH2_RESULT_INVALID_ARGUMENT` (token not UTF-8).
///
/// # Safety
/// `validator` is NULL or live; `token` points to `token_len` readable bytes or is NULL
/// with length 0; `evicted_out` is NULL or writable.
/// Thread safety: safe to call concurrently on the same validator.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_validator_evict(
    validator: *const mcp_oauth2_validator,
    token: *const u8,
    token_len: usize,
    evicted_out: *mut bool,
) -> mcp_oauth2_result {
    boundary(|| {
        // SAFETY: caller contract: NULL or a live validator; token bytes readable.
        let (validator, token) = unsafe { (borrow(validator)?, text(token, token_len)?) };
        test_panic_hook(token.as_bytes());
        let evicted = validator.validator.evict(token);
        if !evicted_out.is_null() {
            // SAFETY: non-NULL and writable per the caller contract.
            unsafe { write_out(evicted_out, evicted) };
        }
        Ok(())
    })
}

/// Removes the cached result stored under a token's cache key (64 hex digits, from
/// `mcp_oauth2_validator_token_cache_key`): how a revocation reaches other processes (nginx
/// workers) without the token itself being shared.
///
/// `evicted_out`: optional (may be NULL); on success receives whether a result was cached.
///
/// # Errors
/// `MCP_OAUTH2_RESULT_INVALID_ARGUMENT` (not 64 hex digits), `MCP_OAUTH2_RESULT_NULL_PARAMETER`.
///
/// # Safety
/// `validator` is NULL or live; `key` points to `key_len` readable bytes; `evicted_out` is
/// NULL or writable.
/// Thread safety: safe to call concurrently on the same validator.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_validator_evict_key(
    validator: *const mcp_oauth2_validator,
    key: *const u8,
    key_len: usize,
    evicted_out: *mut bool,
) -> mcp_oauth2_result {
    boundary(|| {
        // SAFETY: caller contract: NULL or a live validator; key bytes readable.
        let (validator, key) = unsafe { (borrow(validator)?, text(key, key_len)?) };
        if key.len() != 64 || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(mcp_oauth2_result::InvalidArgument);
        }
        let evicted = validator.validator.evict_key(key);
        if !evicted_out.is_null() {
            // SAFETY: non-NULL and writable per the caller contract.
            unsafe { write_out(evicted_out, evicted) };
        }
        Ok(())
    })
}

/// The cache key of a token: 64 lowercase hex digits, as `mcp_oauth2_pending_cache_key`
/// gives for its introspection (never the token itself). Hosts with a cache shared between
/// processes use it to drop a revoked token's entry there too.
///
/// `token`, `token_len`: the bare token (without `Bearer `), borrowed for the call.
/// `key_out` points to 64 writable bytes; they receive the key (not NUL-terminated).
///
/// # Errors
/// `MCP_OAUTH2_RESULT_NULL_PARAMETER`, `MCP_OAUTH2_RESULT_INVALID_ARGUMENT` (token not UTF-8).
///
/// # Safety
/// `validator` is NULL or live; `token` points to `token_len` readable bytes or is NULL
/// with length 0; `key_out` is NULL or points to 64 writable bytes.
/// Thread safety: safe to call concurrently on the same validator.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_validator_token_cache_key(
    validator: *const mcp_oauth2_validator,
    token: *const u8,
    token_len: usize,
    key_out: *mut u8,
) -> mcp_oauth2_result {
    boundary(|| {
        // SAFETY: caller contract: NULL or a live validator; token bytes readable.
        let (validator, token) = unsafe { (borrow(validator)?, text(token, token_len)?) };
        let key_out = out(key_out)?;
        let key = validator.validator.token_cache_key(token);
        // SAFETY: `key_out` points to 64 writable bytes per the caller contract, and the key
        // is 64 ASCII hex digits; the regions cannot overlap (the key is ours).
        unsafe { std::ptr::copy_nonoverlapping(key.as_ptr(), key_out, 64) };
        Ok(())
    })
}

/// How long, in milliseconds, a cache shared between processes may keep the answer it
/// stored under `key` (a `mcp_oauth2_pending_cache_key` of an introspection or token-exchange
/// step, whose answer the host just resumed with), at `now_unix_ms`: what is left of the
/// validator's own entry, which never outlives the first answer's expiry.
///
/// # Errors
/// `MCP_OAUTH2_RESULT_ABSENT` when the answer must not be kept (not cached: a failure, a
/// document step, caching off, or expired); `MCP_OAUTH2_RESULT_INVALID_ARGUMENT` (not a key);
/// `MCP_OAUTH2_RESULT_NULL_PARAMETER`.
///
/// # Safety
/// `validator` is NULL or live; `key` points to `key_len` readable bytes; `ttl_ms_out` is
/// NULL or writable.
/// Thread safety: safe to call concurrently on the same validator.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_validator_cache_ttl_ms(
    validator: *const mcp_oauth2_validator,
    key: *const u8,
    key_len: usize,
    now_unix_ms: u64,
    ttl_ms_out: *mut u64,
) -> mcp_oauth2_result {
    boundary(|| {
        // SAFETY: caller contract: NULL or a live validator; key bytes readable.
        let (validator, key) = unsafe { (borrow(validator)?, text(key, key_len)?) };
        let ttl_ms_out = out(ttl_ms_out)?;
        if key.len() != 64 || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(mcp_oauth2_result::InvalidArgument);
        }
        let ttl = validator.validator.cache_ttl(key, system_time(now_unix_ms)).ok_or(mcp_oauth2_result::Absent)?;
        // SAFETY: checked by `out`; writable per the caller contract.
        unsafe { write_out(ttl_ms_out, u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)) };
        Ok(())
    })
}

/// The number of warnings about the configuration (plain-http endpoints off loopback,
/// disabled certificate checks): the host logs each once, at start-up
/// (`mcp_oauth2_validator_warning`).
///
/// # Errors
/// `MCP_OAUTH2_RESULT_NULL_PARAMETER`.
///
/// # Safety
/// `validator` is NULL or live; `count_out` is NULL or writable.
/// Thread safety: safe to call concurrently on the same validator.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_validator_warning_count(
    validator: *const mcp_oauth2_validator,
    count_out: *mut usize,
) -> mcp_oauth2_result {
    // SAFETY: forwarded caller contract.
    unsafe { policy_get(validator, count_out, |p| Ok(p.warnings().len())) }
}

/// Warning number `index` (from 0), e.g. `introspection_endpoint: plain http: ...`. Never
/// contains a secret.
///
/// `warning_out` receives a view into `validator`, valid until it is freed.
///
/// # Errors
/// `MCP_OAUTH2_RESULT_OUT_OF_RANGE`, `MCP_OAUTH2_RESULT_NULL_PARAMETER`.
///
/// # Safety
/// `validator` is NULL or live; `warning_out` is NULL or writable.
/// Thread safety: safe to call concurrently on the same validator.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_validator_warning(
    validator: *const mcp_oauth2_validator,
    index: usize,
    warning_out: *mut mcp_oauth2_str,
) -> mcp_oauth2_result {
    // SAFETY: forwarded caller contract.
    unsafe {
        policy_get(validator, warning_out, |p| {
            p.warnings().get(index).map(|w| mcp_oauth2_str::of(w)).ok_or(mcp_oauth2_result::OutOfRange)
        })
    }
}

/// The Protected Resource Metadata document (RFC 9728) this validator serves, as JSON.
/// `begin`/`authorize` already answer the metadata paths; this is for hosts that serve it
/// elsewhere.
///
/// `document_out` receives a view into `validator`, valid until the validator is freed.
///
/// # Errors
/// `MCP_OAUTH2_RESULT_NULL_PARAMETER` if `validator` or `document_out` is NULL.
///
/// # Safety
/// `validator` is NULL or live; `document_out` is NULL or writable.
/// Thread safety: safe to call concurrently on the same validator.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_validator_metadata_document(
    validator: *const mcp_oauth2_validator,
    document_out: *mut mcp_oauth2_bytes,
) -> mcp_oauth2_result {
    boundary(|| {
        // SAFETY: caller contract: NULL or a live validator.
        let validator = unsafe { borrow(validator) }?;
        let document_out = out(document_out)?;
        // SAFETY: checked by `out`; writable per the caller contract.
        unsafe { write_out(document_out, mcp_oauth2_bytes::of(validator.validator.metadata_document())) };
        Ok(())
    })
}

/// Bits of `mcp_oauth2_validator_reads`: decisions read the request body of a POST
/// (`method_scopes` are configured); buffer it, up to `mcp_oauth2_validator_max_request_body_size`.
pub const MCP_OAUTH2_READS_BODY: u32 = 1;
/// Bits of `mcp_oauth2_validator_reads`: decisions read the peer address and the
/// `X-Forwarded-*` headers (`trusted_proxies` is set).
pub const MCP_OAUTH2_READS_FORWARDED: u32 = 2;
/// Bits of `mcp_oauth2_validator_reads`: decisions read `Origin` and
/// `Access-Control-Request-Method` (`allowed_origins` is set).
pub const MCP_OAUTH2_READS_ORIGIN: u32 = 4;

/// Reads the validator's compiled policy, NULL-checked.
///
/// # Safety
/// `validator` is NULL or live.
unsafe fn policy_of<'a>(validator: *const mcp_oauth2_validator) -> Result<&'a Policy> {
    // SAFETY: forwarded caller contract.
    Ok(unsafe { borrow(validator) }?.validator.policy())
}

/// The shared body of the policy accessors that return one value.
///
/// # Safety
/// `validator` is NULL or live; `value_out` is NULL or writable.
unsafe fn policy_get<T>(
    validator: *const mcp_oauth2_validator,
    value_out: *mut T,
    value: impl FnOnce(&Policy) -> Result<T>,
) -> mcp_oauth2_result {
    boundary(|| {
        // SAFETY: forwarded caller contract.
        let policy = unsafe { policy_of(validator) }?;
        let value_out = out(value_out)?;
        let value = value(policy)?;
        // SAFETY: checked by `out`; writable per the caller contract.
        unsafe { write_out(value_out, value) };
        Ok(())
    })
}

/// Which parts of a request decisions read beyond its method, path and `Authorization`
/// headers: a bitwise OR of `MCP_OAUTH2_READS_BODY`, `MCP_OAUTH2_READS_FORWARDED` and
/// `MCP_OAUTH2_READS_ORIGIN`. 0: every request is decided from those three alone, and a
/// host may pass nothing else.
///
/// # Errors
/// `MCP_OAUTH2_RESULT_NULL_PARAMETER`.
///
/// # Safety
/// `validator` is NULL or live; `reads_out` is NULL or writable.
/// Thread safety: safe to call concurrently on the same validator.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_validator_reads(
    validator: *const mcp_oauth2_validator,
    reads_out: *mut u32,
) -> mcp_oauth2_result {
    // SAFETY: forwarded caller contract.
    unsafe {
        policy_get(validator, reads_out, |p| {
            let bit = |on: bool, b: u32| if on { b } else { 0 };
            Ok(bit(p.reads_body(), MCP_OAUTH2_READS_BODY)
                | bit(p.reads_forwarded_headers(), MCP_OAUTH2_READS_FORWARDED)
                | bit(p.reads_origin(), MCP_OAUTH2_READS_ORIGIN))
        })
    }
}

/// `max_request_body_size` in bytes (0 = unlimited): with `MCP_OAUTH2_READS_BODY`, buffer
/// at most this many bytes plus one (one more byte lets the validator answer 413).
///
/// # Errors
/// `MCP_OAUTH2_RESULT_NULL_PARAMETER`.
///
/// # Safety
/// `validator` is NULL or live; `size_out` is NULL or writable.
/// Thread safety: safe to call concurrently on the same validator.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_validator_max_request_body_size(
    validator: *const mcp_oauth2_validator,
    size_out: *mut u64,
) -> mcp_oauth2_result {
    // SAFETY: forwarded caller contract.
    unsafe { policy_get(validator, size_out, |p| Ok(p.max_request_body_size())) }
}

/// The number of header names every allowed request removes (`Authorization` unless
/// `passthrough_credentials`, then every claim header): the same list as
/// `mcp_oauth2_decision_remove_header`, known before any request.
///
/// # Errors
/// `MCP_OAUTH2_RESULT_NULL_PARAMETER`.
///
/// # Safety
/// `validator` is NULL or live; `count_out` is NULL or writable.
/// Thread safety: safe to call concurrently on the same validator.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_validator_remove_header_count(
    validator: *const mcp_oauth2_validator,
    count_out: *mut usize,
) -> mcp_oauth2_result {
    // SAFETY: forwarded caller contract.
    unsafe { policy_get(validator, count_out, |p| Ok(p.remove_headers().len())) }
}

/// Header name number `index` (from 0) that every allowed request removes.
///
/// `name_out` receives a view into `validator`, valid until it is freed.
///
/// # Errors
/// `MCP_OAUTH2_RESULT_OUT_OF_RANGE`, `MCP_OAUTH2_RESULT_NULL_PARAMETER`.
///
/// # Safety
/// `validator` is NULL or live; `name_out` is NULL or writable.
/// Thread safety: safe to call concurrently on the same validator.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_validator_remove_header(
    validator: *const mcp_oauth2_validator,
    index: usize,
    name_out: *mut mcp_oauth2_str,
) -> mcp_oauth2_result {
    // SAFETY: forwarded caller contract.
    unsafe {
        policy_get(validator, name_out, |p| {
            p.remove_headers().nth(index).map(mcp_oauth2_str::of).ok_or(mcp_oauth2_result::OutOfRange)
        })
    }
}

/// The number of configured claim headers (`claim_to_header` or `upstream_headers`).
///
/// # Errors
/// `MCP_OAUTH2_RESULT_NULL_PARAMETER`.
///
/// # Safety
/// `validator` is NULL or live; `count_out` is NULL or writable.
/// Thread safety: safe to call concurrently on the same validator.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_validator_claim_header_count(
    validator: *const mcp_oauth2_validator,
    count_out: *mut usize,
) -> mcp_oauth2_result {
    // SAFETY: forwarded caller contract.
    unsafe { policy_get(validator, count_out, |p| Ok(p.claim_headers().len())) }
}

/// Claim header name number `index` (from 0), in configuration order: the order of
/// `mcp_oauth2_decision_claim_header_value`.
///
/// `name_out` receives a view into `validator`, valid until it is freed.
///
/// # Errors
/// `MCP_OAUTH2_RESULT_OUT_OF_RANGE`, `MCP_OAUTH2_RESULT_NULL_PARAMETER`.
///
/// # Safety
/// `validator` is NULL or live; `name_out` is NULL or writable.
/// Thread safety: safe to call concurrently on the same validator.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_validator_claim_header(
    validator: *const mcp_oauth2_validator,
    index: usize,
    name_out: *mut mcp_oauth2_str,
) -> mcp_oauth2_result {
    // SAFETY: forwarded caller contract.
    unsafe {
        policy_get(validator, name_out, |p| {
            p.claim_headers().nth(index).map(mcp_oauth2_str::of).ok_or(mcp_oauth2_result::OutOfRange)
        })
    }
}

/// True (`*up_out`) when the cluster cache (`cluster_cache_strategy: redis`) is in use:
/// configured, and Redis answered the last exchange with it. Requests skip Redis while it
/// fails; a watcher thread reconnects within a second of its return. For health checks.
///
/// # Errors
/// `MCP_OAUTH2_RESULT_NULL_PARAMETER`.
///
/// # Safety
/// `validator` is NULL or live; `up_out` is NULL or writable.
/// Thread safety: safe to call concurrently on the same validator.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_validator_cluster_cache_up(
    validator: *const mcp_oauth2_validator,
    up_out: *mut bool,
) -> mcp_oauth2_result {
    boundary(|| {
        // SAFETY: caller contract: NULL or a live validator.
        let validator = unsafe { borrow(validator) }?;
        let up_out = out(up_out)?;
        // SAFETY: checked by `out`; writable per the caller contract.
        unsafe { write_out(up_out, validator.validator.cluster_cache_up()) };
        Ok(())
    })
}

/// A warning about the cluster cache for the host to log (Redis unreachable, refusing the
/// password, ...), at most once a minute while Redis fails: copied into `buf` (UTF-8, not
/// NUL-terminated, cut at a character boundary to fit `cap` bytes), its length in
/// `*len_out`. Never contains a secret. Requests never fail because of Redis: they go on
/// with this process's cache and the authorization server.
///
/// # Errors
/// `MCP_OAUTH2_RESULT_ABSENT` when there is nothing to report (or no cluster cache);
/// `MCP_OAUTH2_RESULT_NULL_PARAMETER` (`buf` may be NULL only with `cap` 0).
///
/// # Safety
/// `validator` is NULL or live; `buf` points to `cap` writable bytes (or is NULL with `cap`
/// 0); `len_out` is NULL or writable.
/// Thread safety: safe to call concurrently on the same validator (one caller gets each
/// warning).
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_validator_cluster_warning(
    validator: *const mcp_oauth2_validator,
    now_unix_ms: u64,
    buf: *mut u8,
    cap: usize,
    len_out: *mut usize,
) -> mcp_oauth2_result {
    boundary(|| {
        // SAFETY: caller contract: NULL or a live validator.
        let validator = unsafe { borrow(validator) }?;
        let len_out = out(len_out)?;
        if buf.is_null() && cap > 0 {
            return Err(mcp_oauth2_result::NullParameter);
        }
        let warning = validator.validator.cluster_warning(system_time(now_unix_ms)).ok_or(mcp_oauth2_result::Absent)?;
        let mut n = warning.len().min(cap);
        while !warning.is_char_boundary(n) {
            n -= 1;
        }
        if n > 0 {
            // SAFETY: `buf` holds `cap` >= `n` writable bytes per the caller contract.
            unsafe { std::ptr::copy_nonoverlapping(warning.as_ptr(), buf, n) };
        }
        // SAFETY: checked by `out`; writable per the caller contract.
        unsafe { write_out(len_out, n) };
        Ok(())
    })
}
