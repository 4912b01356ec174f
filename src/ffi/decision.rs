//! The decision handle and its accessors.

use super::{
    borrow, boundary, boundary_void, bytes, free_handle, into_handle, mcp_oauth2_bytes, mcp_oauth2_result,
    mcp_oauth2_str, out, text, unix_ms, write_out, write_pair, Result,
};
use crate::{Decision, Forward, Identity, Refusal, Response};

/// The verdict on one request: either answer the client (`allowed` false: status, headers,
/// body) or forward upstream (`allowed` true: headers to remove and set, identity,
/// `valid_until`). Created by `begin`, `resume`, `fail` or `authorize`, owned by the host,
/// freed with `mcp_oauth2_decision_free`.
///
/// Immutable: every accessor is safe to call concurrently on the same decision, from any
/// thread. It does not depend on the validator, the pending or the request that made it:
/// it stays valid after they are freed.
pub struct mcp_oauth2_decision {
    decision: Decision,
}

impl mcp_oauth2_decision {
    pub(crate) fn new(decision: Decision) -> Self {
        mcp_oauth2_decision { decision }
    }
}

/// Reads a decision through a pointer, NULL-checked.
///
/// # Safety
/// `decision` is NULL or live.
unsafe fn decision_of<'a>(decision: *const mcp_oauth2_decision) -> Result<&'a Decision> {
    // SAFETY: forwarded caller contract.
    Ok(&unsafe { borrow(decision) }?.decision)
}

fn response(d: &Decision) -> Result<&Response> {
    d.as_response().ok_or(mcp_oauth2_result::Absent)
}

fn forward(d: &Decision) -> Result<&Forward> {
    d.as_forward().ok_or(mcp_oauth2_result::Absent)
}

/// The shared body of the accessors that return one value: NULL checks, the value, the
/// write.
///
/// # Safety
/// `decision` is NULL or live; `value_out` is NULL or writable.
unsafe fn get<T>(
    decision: *const mcp_oauth2_decision,
    value_out: *mut T,
    value: impl FnOnce(&Decision) -> Result<T>,
) -> mcp_oauth2_result {
    boundary(|| {
        // SAFETY: forwarded caller contract.
        let decision = unsafe { decision_of(decision) }?;
        let value_out = out(value_out)?;
        let value = value(decision)?;
        // SAFETY: checked by `out`; writable per the caller contract.
        unsafe { write_out(value_out, value) };
        Ok(())
    })
}

/// The shared body of the identity accessors.
///
/// # Safety
/// As [`get`].
unsafe fn identity_str(
    decision: *const mcp_oauth2_decision,
    value_out: *mut mcp_oauth2_str,
    field: impl FnOnce(&Identity) -> Option<&str>,
) -> mcp_oauth2_result {
    // SAFETY: forwarded caller contract.
    unsafe {
        get(decision, value_out, |d| {
            field(forward(d)?.identity()).map(mcp_oauth2_str::of).ok_or(mcp_oauth2_result::Absent)
        })
    }
}

/// Whether the request goes upstream (`true`: forward it after applying the header changes)
/// or is answered by the host with this decision's status, headers and body (`false`).
///
/// # Errors
/// `MCP_OAUTH2_RESULT_NULL_PARAMETER` if `decision` or `allowed_out` is NULL.
///
/// # Safety
/// `decision` is NULL or live; `allowed_out` is NULL or writable.
/// Thread safety: safe to call concurrently on the same decision.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_decision_allowed(
    decision: *const mcp_oauth2_decision,
    allowed_out: *mut bool,
) -> mcp_oauth2_result {
    // SAFETY: forwarded caller contract.
    unsafe { get(decision, allowed_out, |d| Ok(d.is_forward())) }
}

/// Why: a stable snake_case name for logs and metrics (`allowed`, `metadata`,
/// `no_credentials`, `invalid_request`, `token_inactive`, `token_expired`,
/// `audience_mismatch`, `insufficient_scope`, `consumer_missing`,
/// `authorization_server_unavailable`, ...). Never contains the token.
///
/// `reason_out` receives a view of a static string.
///
/// # Errors
/// `MCP_OAUTH2_RESULT_NULL_PARAMETER`.
///
/// # Safety
/// `decision` is NULL or live; `reason_out` is NULL or writable.
/// Thread safety: safe to call concurrently on the same decision.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_decision_reason(
    decision: *const mcp_oauth2_decision,
    reason_out: *mut mcp_oauth2_str,
) -> mcp_oauth2_result {
    // SAFETY: forwarded caller contract.
    unsafe { get(decision, reason_out, |d| Ok(mcp_oauth2_str::of(d.reason().as_str()))) }
}

/// A short, secret-free explanation for logs (e.g. which authorization-server failure led
/// to a 503).
///
/// `detail_out` receives a view into `decision`, valid until it is freed.
///
/// # Errors
/// `MCP_OAUTH2_RESULT_ABSENT` when there is none (always for an allowed decision);
/// `MCP_OAUTH2_RESULT_NULL_PARAMETER`.
///
/// # Safety
/// `decision` is NULL or live; `detail_out` is NULL or writable.
/// Thread safety: safe to call concurrently on the same decision.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_decision_detail(
    decision: *const mcp_oauth2_decision,
    detail_out: *mut mcp_oauth2_str,
) -> mcp_oauth2_result {
    // SAFETY: forwarded caller contract.
    unsafe {
        get(decision, detail_out, |d| response(d)?.detail().map(mcp_oauth2_str::of).ok_or(mcp_oauth2_result::Absent))
    }
}

/// The HTTP status to answer the client with (200 for the metadata document, 401, 403,
/// 503, ...).
///
/// # Errors
/// `MCP_OAUTH2_RESULT_ABSENT` for an allowed decision; `MCP_OAUTH2_RESULT_NULL_PARAMETER`.
///
/// # Safety
/// `decision` is NULL or live; `status_out` is NULL or writable.
/// Thread safety: safe to call concurrently on the same decision.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_decision_status(
    decision: *const mcp_oauth2_decision,
    status_out: *mut u16,
) -> mcp_oauth2_result {
    // SAFETY: forwarded caller contract.
    unsafe { get(decision, status_out, |d| Ok(response(d)?.status())) }
}

/// The number of response headers to send to the client (`WWW-Authenticate`,
/// `Content-Type`, `Cache-Control`, CORS headers, ...).
///
/// # Errors
/// `MCP_OAUTH2_RESULT_ABSENT` for an allowed decision; `MCP_OAUTH2_RESULT_NULL_PARAMETER`.
///
/// # Safety
/// `decision` is NULL or live; `count_out` is NULL or writable.
/// Thread safety: safe to call concurrently on the same decision.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_decision_response_header_count(
    decision: *const mcp_oauth2_decision,
    count_out: *mut usize,
) -> mcp_oauth2_result {
    // SAFETY: forwarded caller contract.
    unsafe { get(decision, count_out, |d| Ok(response(d)?.headers().len())) }
}

/// Response header number `index` (from 0), in the order to send them.
///
/// `name_out` and `value_out` receive views into `decision`, valid until it is freed.
///
/// # Errors
/// `MCP_OAUTH2_RESULT_ABSENT` for an allowed decision; `MCP_OAUTH2_RESULT_OUT_OF_RANGE`;
/// `MCP_OAUTH2_RESULT_NULL_PARAMETER`.
///
/// # Safety
/// `decision` is NULL or live; `name_out` and `value_out` are NULL or writable.
/// Thread safety: safe to call concurrently on the same decision.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_decision_response_header(
    decision: *const mcp_oauth2_decision,
    index: usize,
    name_out: *mut mcp_oauth2_str,
    value_out: *mut mcp_oauth2_str,
) -> mcp_oauth2_result {
    boundary(|| {
        // SAFETY: forwarded caller contract.
        let decision = unsafe { decision_of(decision) }?;
        // SAFETY: writable outputs per the caller contract; views into `decision`.
        unsafe {
            write_pair(name_out, value_out, || {
                response(decision)?.headers().nth(index).ok_or(mcp_oauth2_result::OutOfRange)
            })
        }
    })
}

/// The value of the first response header called `name` (ASCII case-insensitive), e.g.
/// `WWW-Authenticate`.
///
/// `name`, `name_len`: UTF-8, borrowed for the call. `value_out` receives a view into
/// `decision`, valid until it is freed.
///
/// # Errors
/// `MCP_OAUTH2_RESULT_ABSENT` when there is no such header or the decision is allowed;
/// `MCP_OAUTH2_RESULT_INVALID_ARGUMENT` (name not UTF-8); `MCP_OAUTH2_RESULT_NULL_PARAMETER`.
///
/// # Safety
/// `decision` is NULL or live; `name` points to `name_len` readable bytes (or is NULL with
/// length 0); `value_out` is NULL or writable.
/// Thread safety: safe to call concurrently on the same decision.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_decision_response_header_value(
    decision: *const mcp_oauth2_decision,
    name: *const u8,
    name_len: usize,
    value_out: *mut mcp_oauth2_str,
) -> mcp_oauth2_result {
    // Runs inside the panic boundary of `get`, after the NULL checks of the other pointers.
    let value = |d: &Decision| {
        // SAFETY: caller contract for the name bytes.
        let name = unsafe { text(name, name_len) }?;
        response(d)?.header(name).map(mcp_oauth2_str::of).ok_or(mcp_oauth2_result::Absent)
    };
    // SAFETY: forwarded caller contract.
    unsafe { get(decision, value_out, value) }
}

/// The response body (JSON; empty for HEAD and preflight answers).
///
/// `body_out` receives a view into `decision`, valid until it is freed.
///
/// # Errors
/// `MCP_OAUTH2_RESULT_ABSENT` for an allowed decision; `MCP_OAUTH2_RESULT_NULL_PARAMETER`.
///
/// # Safety
/// `decision` is NULL or live; `body_out` is NULL or writable.
/// Thread safety: safe to call concurrently on the same decision.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_decision_body(
    decision: *const mcp_oauth2_decision,
    body_out: *mut mcp_oauth2_bytes,
) -> mcp_oauth2_result {
    // SAFETY: forwarded caller contract.
    unsafe { get(decision, body_out, |d| Ok(mcp_oauth2_bytes::of(response(d)?.body()))) }
}

/// The number of request headers to remove before forwarding (`Authorization` unless
/// `passthrough_credentials`, and every configured claim header, so that a client cannot
/// spoof them). Remove them all, then set the `_set_header`s.
///
/// # Errors
/// `MCP_OAUTH2_RESULT_ABSENT` for a denied decision; `MCP_OAUTH2_RESULT_NULL_PARAMETER`.
///
/// # Safety
/// `decision` is NULL or live; `count_out` is NULL or writable.
/// Thread safety: safe to call concurrently on the same decision.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_decision_remove_header_count(
    decision: *const mcp_oauth2_decision,
    count_out: *mut usize,
) -> mcp_oauth2_result {
    // SAFETY: forwarded caller contract.
    unsafe { get(decision, count_out, |d| Ok(forward(d)?.remove_headers().len())) }
}

/// Header name number `index` (from 0) to remove before forwarding.
///
/// `name_out` receives a view into `decision`, valid until it is freed.
///
/// # Errors
/// `MCP_OAUTH2_RESULT_ABSENT` for a denied decision; `MCP_OAUTH2_RESULT_OUT_OF_RANGE`;
/// `MCP_OAUTH2_RESULT_NULL_PARAMETER`.
///
/// # Safety
/// `decision` is NULL or live; `name_out` is NULL or writable.
/// Thread safety: safe to call concurrently on the same decision.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_decision_remove_header(
    decision: *const mcp_oauth2_decision,
    index: usize,
    name_out: *mut mcp_oauth2_str,
) -> mcp_oauth2_result {
    // SAFETY: forwarded caller contract.
    unsafe {
        get(decision, name_out, |d| {
            forward(d)?.remove_headers().nth(index).map(mcp_oauth2_str::of).ok_or(mcp_oauth2_result::OutOfRange)
        })
    }
}

/// The number of headers to set upstream after the removals (the mapped claims the token
/// carries).
///
/// # Errors
/// `MCP_OAUTH2_RESULT_ABSENT` for a denied decision; `MCP_OAUTH2_RESULT_NULL_PARAMETER`.
///
/// # Safety
/// `decision` is NULL or live; `count_out` is NULL or writable.
/// Thread safety: safe to call concurrently on the same decision.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_decision_set_header_count(
    decision: *const mcp_oauth2_decision,
    count_out: *mut usize,
) -> mcp_oauth2_result {
    // SAFETY: forwarded caller contract.
    unsafe { get(decision, count_out, |d| Ok(forward(d)?.set_headers().count())) }
}

/// Header number `index` (from 0) to set upstream. Values never contain CR, LF or NUL.
///
/// `name_out` and `value_out` receive views into `decision`, valid until it is freed.
///
/// # Errors
/// `MCP_OAUTH2_RESULT_ABSENT` for a denied decision; `MCP_OAUTH2_RESULT_OUT_OF_RANGE`;
/// `MCP_OAUTH2_RESULT_NULL_PARAMETER`.
///
/// # Safety
/// `decision` is NULL or live; `name_out` and `value_out` are NULL or writable.
/// Thread safety: safe to call concurrently on the same decision.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_decision_set_header(
    decision: *const mcp_oauth2_decision,
    index: usize,
    name_out: *mut mcp_oauth2_str,
    value_out: *mut mcp_oauth2_str,
) -> mcp_oauth2_result {
    boundary(|| {
        // SAFETY: forwarded caller contract.
        let decision = unsafe { decision_of(decision) }?;
        // SAFETY: writable outputs per the caller contract; views into `decision`.
        unsafe {
            write_pair(name_out, value_out, || {
                forward(decision)?.set_headers().nth(index).ok_or(mcp_oauth2_result::OutOfRange)
            })
        }
    })
}

/// The token's expiry (its `exp`) as Unix seconds. Long-lived responses (SSE streams) must
/// end by then.
///
/// # Errors
/// `MCP_OAUTH2_RESULT_ABSENT` for a denied decision or a token without `exp`;
/// `MCP_OAUTH2_RESULT_NULL_PARAMETER`.
///
/// # Safety
/// `decision` is NULL or live; `unix_seconds_out` is NULL or writable.
/// Thread safety: safe to call concurrently on the same decision.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_decision_valid_until(
    decision: *const mcp_oauth2_decision,
    unix_seconds_out: *mut i64,
) -> mcp_oauth2_result {
    // SAFETY: forwarded caller contract.
    unsafe { get(decision, unix_seconds_out, |d| forward(d)?.valid_until_unix().ok_or(mcp_oauth2_result::Absent)) }
}

/// When the validator's cached answer for this token ages out, as Unix milliseconds. A host
/// keeping a long-lived response open (an SSE stream) re-validates the token then (the same
/// request through `mcp_oauth2_validator_begin`: one authorization-server call for all of
/// the token's streams) and ends the response only if the token is no longer allowed.
///
/// # Errors
/// `MCP_OAUTH2_RESULT_ABSENT` for a denied decision or when the answer is not cached
/// (`cache_introspection` off); `MCP_OAUTH2_RESULT_NULL_PARAMETER`.
///
/// # Safety
/// `decision` is NULL or live; `unix_ms_out` is NULL or writable.
/// Thread safety: safe to call concurrently on the same decision.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_decision_recheck_at(
    decision: *const mcp_oauth2_decision,
    unix_ms_out: *mut u64,
) -> mcp_oauth2_result {
    // SAFETY: forwarded caller contract.
    unsafe {
        get(decision, unix_ms_out, |d| {
            let at = forward(d)?.recheck_at().ok_or(mcp_oauth2_result::Absent)?;
            Ok(unix_ms(at))
        })
    }
}

/// How long, in milliseconds, a cache shared with other processes may keep the
/// authorization server's answer behind this decision (see `mcp_oauth2_pending_cache_key`):
/// what is left of the validator's own entry. Never longer than the first answer's expiry.
///
/// # Errors
/// `MCP_OAUTH2_RESULT_ABSENT` when the answer must not be kept (no token, an
/// authorization-server failure, caching off); `MCP_OAUTH2_RESULT_NULL_PARAMETER`.
///
/// # Safety
/// `decision` is NULL or live; `ttl_ms_out` is NULL or writable.
/// Thread safety: safe to call concurrently on the same decision.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_decision_cache_ttl_ms(
    decision: *const mcp_oauth2_decision,
    ttl_ms_out: *mut u64,
) -> mcp_oauth2_result {
    // SAFETY: forwarded caller contract.
    unsafe {
        get(decision, ttl_ms_out, |d| {
            let ttl = d.cache_ttl().ok_or(mcp_oauth2_result::Absent)?;
            Ok(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
        })
    }
}

/// Whether a client request header must not reach the upstream: one of the headers to
/// remove (`mcp_oauth2_decision_remove_header`) after ASCII case folding and `_`/`-`
/// folding (CGI and WSGI upstreams read `X_User_Id` as `X-User-Id`). Ask it for every
/// request header and drop each one for which `*remove_out` is true.
///
/// `name`, `name_len`: the header name as received, borrowed for the call.
///
/// # Errors
/// `MCP_OAUTH2_RESULT_ABSENT` for a denied decision; `MCP_OAUTH2_RESULT_NULL_PARAMETER`.
///
/// # Safety
/// `decision` is NULL or live; `name` points to `name_len` readable bytes (or is NULL with
/// length 0); `remove_out` is NULL or writable.
/// Thread safety: safe to call concurrently on the same decision.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_decision_must_remove(
    decision: *const mcp_oauth2_decision,
    name: *const u8,
    name_len: usize,
    remove_out: *mut bool,
) -> mcp_oauth2_result {
    // SAFETY: forwarded caller contract; the name bytes are read inside the boundary.
    unsafe {
        get(decision, remove_out, |d| {
            let name = bytes(name, name_len)?;
            Ok(forward(d)?.plan.must_remove(name))
        })
    }
}

/// The value of claim header number `index` (from 0, in the order of
/// `mcp_oauth2_validator_claim_header`): set it upstream, or, when the result is
/// `MCP_OAUTH2_RESULT_ABSENT`, make sure the upstream gets no such header at all.
///
/// `value_out` receives a view into `decision`, valid until it is freed.
///
/// # Errors
/// `MCP_OAUTH2_RESULT_ABSENT` for a denied decision or a claim the token lacks;
/// `MCP_OAUTH2_RESULT_OUT_OF_RANGE`; `MCP_OAUTH2_RESULT_NULL_PARAMETER`.
///
/// # Safety
/// `decision` is NULL or live; `value_out` is NULL or writable.
/// Thread safety: safe to call concurrently on the same decision.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_decision_claim_header_value(
    decision: *const mcp_oauth2_decision,
    index: usize,
    value_out: *mut mcp_oauth2_str,
) -> mcp_oauth2_result {
    // SAFETY: forwarded caller contract.
    unsafe {
        get(decision, value_out, |d| {
            let value = forward(d)?.claim_header_values().nth(index).ok_or(mcp_oauth2_result::OutOfRange)?;
            value.map(mcp_oauth2_str::of).ok_or(mcp_oauth2_result::Absent)
        })
    }
}

/// The claims, as compact JSON, for what runs next (later plugins, access rules): of the
/// validated token, or of the exchanged token when `token_exchange` got a JWT.
///
/// `claims_out` receives a view into `decision`, valid until it is freed.
///
/// # Errors
/// `MCP_OAUTH2_RESULT_ABSENT` for a denied decision; `MCP_OAUTH2_RESULT_NULL_PARAMETER`.
///
/// # Safety
/// `decision` is NULL or live; `claims_out` is NULL or writable.
/// Thread safety: safe to call concurrently on the same decision.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_decision_claims_json(
    decision: *const mcp_oauth2_decision,
    claims_out: *mut mcp_oauth2_str,
) -> mcp_oauth2_result {
    // SAFETY: forwarded caller contract.
    unsafe { get(decision, claims_out, |d| Ok(mcp_oauth2_str::of(forward(d)?.claims_json()))) }
}

/// With `token_exchange`: the upstream's `Authorization` value, `Bearer <exchanged token>`.
/// Set it (replacing the client's, which is among the headers to remove). It is a
/// credential: never log it.
///
/// `value_out` receives a view into `decision`, valid until it is freed.
///
/// # Errors
/// `MCP_OAUTH2_RESULT_ABSENT` without an exchange or for a denied decision;
/// `MCP_OAUTH2_RESULT_NULL_PARAMETER`.
///
/// # Safety
/// `decision` is NULL or live; `value_out` is NULL or writable.
/// Thread safety: safe to call concurrently on the same decision.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_decision_upstream_authorization(
    decision: *const mcp_oauth2_decision,
    value_out: *mut mcp_oauth2_str,
) -> mcp_oauth2_result {
    // SAFETY: forwarded caller contract.
    unsafe {
        get(decision, value_out, |d| {
            forward(d)?.upstream_authorization().map(mcp_oauth2_str::of).ok_or(mcp_oauth2_result::Absent)
        })
    }
}

/// How loudly to log this decision: 0 debug (allowed, metadata, preflight), 1 info (a
/// refused request), 2 warn (the authorization server failed or refused the gateway's own
/// credentials: a 503), 3 error (an internal error). Log every decision at or above the
/// level the operator chose, with `mcp_oauth2_decision_reason` and `_detail` (which never
/// hold a token, a secret or the authorization server's text).
///
/// # Errors
/// `MCP_OAUTH2_RESULT_NULL_PARAMETER`.
///
/// # Safety
/// `decision` is NULL or live; `level_out` is NULL or writable.
/// Thread safety: safe to call concurrently on the same decision.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_decision_log_level(
    decision: *const mcp_oauth2_decision,
    level_out: *mut u32,
) -> mcp_oauth2_result {
    // SAFETY: forwarded caller contract.
    unsafe { get(decision, level_out, |d| Ok(d.log_level() as u32)) }
}

/// The token's `sub` claim.
///
/// `subject_out` receives a view into `decision`, valid until it is freed.
///
/// # Errors
/// `MCP_OAUTH2_RESULT_ABSENT` when the token has none or the decision is denied;
/// `MCP_OAUTH2_RESULT_NULL_PARAMETER`.
///
/// # Safety
/// `decision` is NULL or live; `subject_out` is NULL or writable.
/// Thread safety: safe to call concurrently on the same decision.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_decision_subject(
    decision: *const mcp_oauth2_decision,
    subject_out: *mut mcp_oauth2_str,
) -> mcp_oauth2_result {
    // SAFETY: forwarded caller contract.
    unsafe { identity_str(decision, subject_out, Identity::subject) }
}

/// The token's `client_id` claim (or `azp`).
///
/// `client_id_out` receives a view into `decision`, valid until it is freed.
///
/// # Errors
/// `MCP_OAUTH2_RESULT_ABSENT` when the token has none or the decision is denied;
/// `MCP_OAUTH2_RESULT_NULL_PARAMETER`.
///
/// # Safety
/// `decision` is NULL or live; `client_id_out` is NULL or writable.
/// Thread safety: safe to call concurrently on the same decision.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_decision_client_id(
    decision: *const mcp_oauth2_decision,
    client_id_out: *mut mcp_oauth2_str,
) -> mcp_oauth2_result {
    // SAFETY: forwarded caller contract.
    unsafe { identity_str(decision, client_id_out, Identity::client_id) }
}

/// The granted scopes, space-separated.
///
/// `scope_out` receives a view into `decision`, valid until it is freed.
///
/// # Errors
/// `MCP_OAUTH2_RESULT_ABSENT` when the token has none or the decision is denied;
/// `MCP_OAUTH2_RESULT_NULL_PARAMETER`.
///
/// # Safety
/// `decision` is NULL or live; `scope_out` is NULL or writable.
/// Thread safety: safe to call concurrently on the same decision.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_decision_scope(
    decision: *const mcp_oauth2_decision,
    scope_out: *mut mcp_oauth2_str,
) -> mcp_oauth2_result {
    // SAFETY: forwarded caller contract.
    unsafe { identity_str(decision, scope_out, Identity::scope) }
}

/// The value of the configured `consumer_claim`.
///
/// `consumer_out` receives a view into `decision`, valid until it is freed.
///
/// # Errors
/// `MCP_OAUTH2_RESULT_ABSENT` when not configured, not in the token, or the decision is
/// denied; `MCP_OAUTH2_RESULT_NULL_PARAMETER`.
///
/// # Safety
/// `decision` is NULL or live; `consumer_out` is NULL or writable.
/// Thread safety: safe to call concurrently on the same decision.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_decision_consumer(
    decision: *const mcp_oauth2_decision,
    consumer_out: *mut mcp_oauth2_str,
) -> mcp_oauth2_result {
    // SAFETY: forwarded caller contract.
    unsafe { identity_str(decision, consumer_out, Identity::consumer) }
}

/// The value of the configured `credential_claim` (default `sub`).
///
/// `credential_out` receives a view into `decision`, valid until it is freed.
///
/// # Errors
/// `MCP_OAUTH2_RESULT_ABSENT` when not in the token or the decision is denied;
/// `MCP_OAUTH2_RESULT_NULL_PARAMETER`.
///
/// # Safety
/// `decision` is NULL or live; `credential_out` is NULL or writable.
/// Thread safety: safe to call concurrently on the same decision.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_decision_credential(
    decision: *const mcp_oauth2_decision,
    credential_out: *mut mcp_oauth2_str,
) -> mcp_oauth2_result {
    // SAFETY: forwarded caller contract.
    unsafe { identity_str(decision, credential_out, Identity::credential) }
}

/// The raw introspection result, encoded per the configured `introspection_format`: the
/// JSON object the authorization server answered, as text (for a signed RFC 9701 answer, the
/// JSON text of its `token_introspection` claim), as is (`string`), in standard base64 with
/// padding (`base64`) or in URL-safe base64 without padding (`base64url`). It describes the
/// token (subject, scopes, client): treat it as personal data, not for logs.
///
/// `introspection_out` receives a view into `decision`, valid until it is freed (not
/// NUL-terminated).
///
/// # Errors
/// `MCP_OAUTH2_RESULT_ABSENT` when `introspection_format` is unset (also: local JWT
/// validation) or the decision is denied; `MCP_OAUTH2_RESULT_NULL_PARAMETER`.
///
/// # Safety
/// `decision` is NULL or live; `introspection_out` is NULL or writable.
/// Thread safety: safe to call concurrently on the same decision.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_decision_introspection(
    decision: *const mcp_oauth2_decision,
    introspection_out: *mut mcp_oauth2_str,
) -> mcp_oauth2_result {
    // SAFETY: forwarded caller contract.
    unsafe {
        get(decision, introspection_out, |d| {
            forward(d)?.introspection().map(mcp_oauth2_str::of).ok_or(mcp_oauth2_result::Absent)
        })
    }
}

/// The number of values of the configured `consumer_groups_claim`.
///
/// # Errors
/// `MCP_OAUTH2_RESULT_ABSENT` when not configured, not in the token, or the decision is
/// denied; `MCP_OAUTH2_RESULT_NULL_PARAMETER`.
///
/// # Safety
/// `decision` is NULL or live; `count_out` is NULL or writable.
/// Thread safety: safe to call concurrently on the same decision.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_decision_consumer_group_count(
    decision: *const mcp_oauth2_decision,
    count_out: *mut usize,
) -> mcp_oauth2_result {
    // SAFETY: forwarded caller contract.
    unsafe {
        get(decision, count_out, |d| {
            forward(d)?.identity().consumer_groups().map(<[_]>::len).ok_or(mcp_oauth2_result::Absent)
        })
    }
}

/// Consumer group number `index` (from 0).
///
/// `group_out` receives a view into `decision`, valid until it is freed.
///
/// # Errors
/// `MCP_OAUTH2_RESULT_ABSENT` as for the count; `MCP_OAUTH2_RESULT_OUT_OF_RANGE`;
/// `MCP_OAUTH2_RESULT_NULL_PARAMETER`.
///
/// # Safety
/// `decision` is NULL or live; `group_out` is NULL or writable.
/// Thread safety: safe to call concurrently on the same decision.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_decision_consumer_group(
    decision: *const mcp_oauth2_decision,
    index: usize,
    group_out: *mut mcp_oauth2_str,
) -> mcp_oauth2_result {
    // SAFETY: forwarded caller contract.
    unsafe {
        get(decision, group_out, |d| {
            let groups = forward(d)?.identity().consumer_groups().ok_or(mcp_oauth2_result::Absent)?;
            groups.get(index).map(|g| mcp_oauth2_str::of(g)).ok_or(mcp_oauth2_result::OutOfRange)
        })
    }
}

/// Why a host refuses a request the validator allowed (for
/// `mcp_oauth2_decision_refuse`, passed as a `uint32_t`).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum mcp_oauth2_refusal {
    /// No consumer matches the token's `consumer_claim` value (403).
    ConsumerNotFound = 1,
    /// None of the token's consumer groups exists (403).
    ConsumerGroupsNotFound = 2,
    /// The host's consumer look-up itself failed (503).
    ConsumerLookupFailed = 3,
}

/// For a host that refuses an allowed request itself (consumer mapping): a new decision
/// holding the response to send instead (403 or 503, the library's JSON body, CORS
/// headers when the request had an allowed `Origin`). `refusal` is one of
/// `mcp_oauth2_refusal`. The host owns the new decision; `decision` is unchanged.
///
/// # Errors
/// `MCP_OAUTH2_RESULT_ABSENT` if `decision` is not allowed; `MCP_OAUTH2_RESULT_INVALID_ARGUMENT`
/// for an unknown `refusal`; `MCP_OAUTH2_RESULT_NULL_PARAMETER`.
///
/// # Safety
/// `decision` is NULL or live; `refused_out` is NULL or a writable pointer variable.
/// Thread safety: safe to call concurrently on the same decision.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_decision_refuse(
    decision: *const mcp_oauth2_decision,
    refusal: u32,
    refused_out: *mut *mut mcp_oauth2_decision,
) -> mcp_oauth2_result {
    // SAFETY: forwarded caller contract.
    unsafe {
        get(decision, refused_out, |d| {
            let refusal = match refusal {
                1 => Refusal::ConsumerNotFound,
                2 => Refusal::ConsumerGroupsNotFound,
                3 => Refusal::ConsumerLookupFailed,
                _ => return Err(mcp_oauth2_result::InvalidArgument),
            };
            let response = forward(d)?.refuse(refusal);
            Ok(into_handle(mcp_oauth2_decision::new(Decision::Respond(response))))
        })
    }
}

/// A new decision holding the 500 response a host sends when it could not get a decision
/// at all (e.g. a call returned `MCP_OAUTH2_RESULT_PANIC`): the library's JSON body. Hosts
/// may build it once at start-up and reuse its parts. The host owns it.
///
/// # Errors
/// `MCP_OAUTH2_RESULT_NULL_PARAMETER`.
///
/// # Safety
/// `decision_out` is NULL or a writable pointer variable.
/// Thread safety: safe to call from any thread.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_decision_internal_error(
    decision_out: *mut *mut mcp_oauth2_decision,
) -> mcp_oauth2_result {
    boundary(|| {
        let decision_out = out(decision_out)?;
        let decision = into_handle(mcp_oauth2_decision::new(Decision::Respond(Response::internal_error())));
        // SAFETY: checked by `out`; writable per the caller contract.
        unsafe { write_out(decision_out, decision) };
        Ok(())
    })
}

/// Frees a decision and sets `*decision` to NULL. `decision` NULL or `*decision` NULL:
/// no-op, so calling it twice on the same variable is safe. Views obtained from it become
/// invalid.
///
/// # Safety
/// `decision` is NULL or points to a variable holding NULL or a decision from this library
/// that has not been freed through another variable.
/// Thread safety: no other thread may use the decision during or after this call.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_decision_free(decision: *mut *mut mcp_oauth2_decision) {
    // SAFETY: forwarded caller contract.
    boundary_void(|| unsafe { free_handle(decision) });
}
