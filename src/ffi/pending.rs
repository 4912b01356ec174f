//! The pending validation of the sans-I/O flow: the HTTP request the host must perform, and
//! `resume` / `fail` with its outcome.

use super::{
    borrow, borrow_mut, boundary, boundary_void, bytes, free_handle, into_handle, mcp_oauth2_bytes,
    mcp_oauth2_decision, mcp_oauth2_header, mcp_oauth2_result, mcp_oauth2_str, out, slice, write_out, write_pair,
    Result,
};
use crate::{HttpRequest, HttpResponse, Pending, Step, TransportError, TransportErrorKind};

/// How an HTTP exchange failed, for `mcp_oauth2_pending_fail` (passed as a `uint32_t`).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum mcp_oauth2_transport_error {
    /// Could not connect (refused, DNS failure, unreachable).
    Connect = 1,
    /// No complete response within `mcp_oauth2_pending_timeout_ms`.
    Timeout = 2,
    /// TLS handshake or certificate verification failed.
    Tls = 3,
    /// The response body was larger than 1 MiB (the host may stop reading there).
    BodyTooLarge = 4,
    /// Anything else (malformed HTTP, I/O error).
    Other = 5,
}

/// A validation waiting for the host to perform one HTTP request (to the authorization
/// server). Created by `mcp_oauth2_validator_begin`, owned by the host, freed with
/// `mcp_oauth2_pending_free`, also after it was resumed.
///
/// Its request carries the token and the gateway's client credentials: do not log the body
/// or the `Authorization` header.
///
/// Thread safety: the getters may run concurrently with each other; `resume` and `fail`
/// must not run concurrently with anything else on the same pending. A pending may be
/// moved to another thread (e.g. the one that completes the I/O).
pub struct mcp_oauth2_pending {
    /// `None` once resumed to a decision.
    state: Option<(HttpRequest, Pending)>,
    cache_key: String,
}

impl mcp_oauth2_pending {
    pub(crate) fn new(http: HttpRequest, pending: Pending) -> Self {
        let cache_key = pending.cache_key();
        mcp_oauth2_pending { state: Some((http, pending)), cache_key }
    }

    fn http(&self) -> Result<&HttpRequest> {
        self.state.as_ref().map(|(h, _)| h).ok_or(mcp_oauth2_result::AlreadyResumed)
    }

    /// Continues with the outcome; the pending either holds the next request (returns NULL)
    /// or is finished (returns the decision).
    fn resume(
        &mut self,
        result: std::result::Result<HttpResponse, TransportError>,
    ) -> Result<*mut mcp_oauth2_decision> {
        let (_, pending) = self.state.take().ok_or(mcp_oauth2_result::AlreadyResumed)?;
        match pending.resume(result) {
            Step::Done(d) => Ok(into_handle(mcp_oauth2_decision::new(d))),
            Step::Need(http, next) => {
                self.cache_key = next.cache_key();
                self.state = Some((http, next));
                Ok(std::ptr::null_mut())
            }
        }
    }
}

/// Reads the pending through a `const` pointer, NULL-checked.
///
/// # Safety
/// `pending` is NULL or live and not being resumed concurrently.
unsafe fn http_of<'a>(pending: *const mcp_oauth2_pending) -> Result<&'a HttpRequest> {
    // SAFETY: forwarded caller contract.
    unsafe { borrow(pending) }?.http()
}

/// The HTTP method to use: `POST` or `GET`.
///
/// `method_out` receives a view of a static string.
///
/// # Errors
/// `MCP_OAUTH2_RESULT_NULL_PARAMETER`, `MCP_OAUTH2_RESULT_ALREADY_RESUMED`.
///
/// # Safety
/// `pending` is NULL or live; `method_out` is NULL or writable.
/// Thread safety: see `mcp_oauth2_pending`.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_pending_method(
    pending: *const mcp_oauth2_pending,
    method_out: *mut mcp_oauth2_str,
) -> mcp_oauth2_result {
    boundary(|| {
        // SAFETY: caller contract.
        let http = unsafe { http_of(pending) }?;
        let method_out = out(method_out)?;
        // SAFETY: checked by `out`; writable per the caller contract.
        unsafe { write_out(method_out, mcp_oauth2_str::of(http.method)) };
        Ok(())
    })
}

/// The absolute URL to call (the introspection endpoint; in JWT mode an AS metadata or JWKS URL).
///
/// `url_out` receives a view into `pending`, valid until it is resumed or freed.
///
/// # Errors
/// `MCP_OAUTH2_RESULT_NULL_PARAMETER`, `MCP_OAUTH2_RESULT_ALREADY_RESUMED`.
///
/// # Safety
/// `pending` is NULL or live; `url_out` is NULL or writable.
/// Thread safety: see `mcp_oauth2_pending`.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_pending_url(
    pending: *const mcp_oauth2_pending,
    url_out: *mut mcp_oauth2_str,
) -> mcp_oauth2_result {
    boundary(|| {
        // SAFETY: caller contract.
        let http = unsafe { http_of(pending) }?;
        let url_out = out(url_out)?;
        // SAFETY: checked by `out`; writable per the caller contract.
        unsafe { write_out(url_out, mcp_oauth2_str::of(&http.url)) };
        Ok(())
    })
}

/// The number of headers to send (the host adds `Host` and `Content-Length` itself).
///
/// # Errors
/// `MCP_OAUTH2_RESULT_NULL_PARAMETER`, `MCP_OAUTH2_RESULT_ALREADY_RESUMED`.
///
/// # Safety
/// `pending` is NULL or live; `count_out` is NULL or writable.
/// Thread safety: see `mcp_oauth2_pending`.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_pending_header_count(
    pending: *const mcp_oauth2_pending,
    count_out: *mut usize,
) -> mcp_oauth2_result {
    boundary(|| {
        // SAFETY: caller contract.
        let http = unsafe { http_of(pending) }?;
        let count_out = out(count_out)?;
        // SAFETY: checked by `out`; writable per the caller contract.
        unsafe { write_out(count_out, http.headers.len()) };
        Ok(())
    })
}

/// Header number `index` (from 0) to send. It may be `Authorization` with the gateway's
/// client credentials: never log its value.
///
/// `name_out` and `value_out` receive views into `pending`, valid until it is resumed or
/// freed.
///
/// # Errors
/// `MCP_OAUTH2_RESULT_OUT_OF_RANGE` if `index` is not below the header count;
/// `MCP_OAUTH2_RESULT_NULL_PARAMETER`, `MCP_OAUTH2_RESULT_ALREADY_RESUMED`.
///
/// # Safety
/// `pending` is NULL or live; `name_out` and `value_out` are NULL or writable.
/// Thread safety: see `mcp_oauth2_pending`.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_pending_header(
    pending: *const mcp_oauth2_pending,
    index: usize,
    name_out: *mut mcp_oauth2_str,
    value_out: *mut mcp_oauth2_str,
) -> mcp_oauth2_result {
    boundary(|| {
        // SAFETY: caller contract.
        let http = unsafe { http_of(pending) }?;
        let header =
            || http.headers.get(index).map(|(n, v)| (n.as_str(), v.as_str())).ok_or(mcp_oauth2_result::OutOfRange);
        // SAFETY: writable outputs per the caller contract; views into `pending`.
        unsafe { write_pair(name_out, value_out, header) }
    })
}

/// The request body (form-urlencoded for introspection; it contains the token: never log
/// it).
///
/// `body_out` receives a view into `pending`, valid until it is resumed or freed.
///
/// # Errors
/// `MCP_OAUTH2_RESULT_NULL_PARAMETER`, `MCP_OAUTH2_RESULT_ALREADY_RESUMED`.
///
/// # Safety
/// `pending` is NULL or live; `body_out` is NULL or writable.
/// Thread safety: see `mcp_oauth2_pending`.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_pending_body(
    pending: *const mcp_oauth2_pending,
    body_out: *mut mcp_oauth2_bytes,
) -> mcp_oauth2_result {
    boundary(|| {
        // SAFETY: caller contract.
        let http = unsafe { http_of(pending) }?;
        let body_out = out(body_out)?;
        // SAFETY: checked by `out`; writable per the caller contract.
        unsafe { write_out(body_out, mcp_oauth2_bytes::of(&http.body)) };
        Ok(())
    })
}

/// How long the whole exchange may take, in milliseconds (the configured `timeout`). Past
/// it, call `mcp_oauth2_pending_fail` with `MCP_OAUTH2_TRANSPORT_ERROR_TIMEOUT`.
///
/// # Errors
/// `MCP_OAUTH2_RESULT_NULL_PARAMETER`, `MCP_OAUTH2_RESULT_ALREADY_RESUMED`.
///
/// # Safety
/// `pending` is NULL or live; `timeout_ms_out` is NULL or writable.
/// Thread safety: see `mcp_oauth2_pending`.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_pending_timeout_ms(
    pending: *const mcp_oauth2_pending,
    timeout_ms_out: *mut u64,
) -> mcp_oauth2_result {
    boundary(|| {
        // SAFETY: caller contract.
        let http = unsafe { http_of(pending) }?;
        let timeout_ms_out = out(timeout_ms_out)?;
        let ms = u64::try_from(http.timeout.as_millis()).unwrap_or(u64::MAX);
        // SAFETY: checked by `out`; writable per the caller contract.
        unsafe { write_out(timeout_ms_out, ms) };
        Ok(())
    })
}

/// The cache key of the token being validated: 64 lowercase hex digits of a SHA-256 over
/// the validator's configuration and the token (never the token itself). Hosts that share
/// authorization-server responses between processes store and replay them under this key.
///
/// `key_out` receives a view into `pending`, valid until it is freed (also after resume).
///
/// # Errors
/// `MCP_OAUTH2_RESULT_NULL_PARAMETER`.
///
/// # Safety
/// `pending` is NULL or live; `key_out` is NULL or writable.
/// Thread safety: see `mcp_oauth2_pending`.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_pending_cache_key(
    pending: *const mcp_oauth2_pending,
    key_out: *mut mcp_oauth2_str,
) -> mcp_oauth2_result {
    boundary(|| {
        // SAFETY: caller contract.
        let pending = unsafe { borrow(pending) }?;
        let key_out = out(key_out)?;
        // SAFETY: checked by `out`; writable per the caller contract.
        unsafe { write_out(key_out, mcp_oauth2_str::of(&pending.cache_key)) };
        Ok(())
    })
}

/// Continues with the HTTP response the host received: status, headers (only
/// `Content-Type` is read; headers whose name or value is not UTF-8 are skipped) and the
/// complete body. Everything is copied; the arguments are borrowed for the call only.
///
/// On success `*decision_out` receives either a new decision (owned by the host, free it
/// with `mcp_oauth2_decision_free`) or NULL, which means the pending now describes one more
/// HTTP request to perform (local JWT validation: AS metadata, then keys); loop until a decision. After a
/// decision, the pending is spent: every later call on it except `_cache_key` and `_free`
/// returns `MCP_OAUTH2_RESULT_ALREADY_RESUMED`.
///
/// # Errors
/// `MCP_OAUTH2_RESULT_NULL_PARAMETER`, `MCP_OAUTH2_RESULT_ALREADY_RESUMED`. On an error the
/// pending is unchanged.
///
/// # Safety
/// `pending` is NULL or live; `headers` points to `headers_len` headers (or is NULL with
/// length 0), each pair readable; `body` points to `body_len` readable bytes (or is NULL
/// with length 0); `decision_out` is NULL or writable.
/// Thread safety: no other call on the same pending may run concurrently.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_pending_resume(
    pending: *mut mcp_oauth2_pending,
    status: u16,
    headers: *const mcp_oauth2_header,
    headers_len: usize,
    body: *const u8,
    body_len: usize,
    decision_out: *mut *mut mcp_oauth2_decision,
) -> mcp_oauth2_result {
    boundary(|| {
        // SAFETY: caller contract: NULL or a live pending, not used concurrently.
        let pending = unsafe { borrow_mut(pending) }?;
        let decision_out = out(decision_out)?;
        pending.http()?;
        // SAFETY: caller contract for the header array and the body.
        let (headers, body) = unsafe { (slice(headers, headers_len)?, bytes(body, body_len)?) };
        let mut response = HttpResponse { status, headers: Vec::with_capacity(headers.len()), body: body.to_vec() };
        for h in headers {
            // SAFETY: caller contract for each header's pairs.
            let (name, value) = unsafe { (bytes(h.name, h.name_len)?, bytes(h.value, h.value_len)?) };
            if let (Ok(n), Ok(v)) = (std::str::from_utf8(name), std::str::from_utf8(value)) {
                response.headers.push((n.to_owned(), v.to_owned()));
            }
        }
        let decision = pending.resume(Ok(response))?;
        // SAFETY: checked by `out`; writable per the caller contract.
        unsafe { write_out(decision_out, decision) };
        Ok(())
    })
}

/// Continues after the HTTP exchange failed without a complete response. `kind` is one of
/// `mcp_oauth2_transport_error` (as a `uint32_t`); `message` (optional, UTF-8, for logs;
/// invalid UTF-8 is replaced) must not contain credentials. The decision is a 503: an
/// authorization-server failure never becomes a 401.
///
/// `*decision_out` and the spent state: as `mcp_oauth2_pending_resume`.
///
/// # Errors
/// `MCP_OAUTH2_RESULT_INVALID_ARGUMENT` for an unknown `kind` (the pending is unchanged);
/// `MCP_OAUTH2_RESULT_NULL_PARAMETER`, `MCP_OAUTH2_RESULT_ALREADY_RESUMED`.
///
/// # Safety
/// As `mcp_oauth2_pending_resume`, with `message` for `body`.
/// Thread safety: no other call on the same pending may run concurrently.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_pending_fail(
    pending: *mut mcp_oauth2_pending,
    kind: u32,
    message: *const u8,
    message_len: usize,
    decision_out: *mut *mut mcp_oauth2_decision,
) -> mcp_oauth2_result {
    boundary(|| {
        // SAFETY: caller contract: NULL or a live pending, not used concurrently.
        let pending = unsafe { borrow_mut(pending) }?;
        let decision_out = out(decision_out)?;
        pending.http()?;
        // SAFETY: caller contract for the message bytes.
        let message = String::from_utf8_lossy(unsafe { bytes(message, message_len) }?).into_owned();
        let kind = match kind {
            1 => TransportErrorKind::Connect,
            2 => TransportErrorKind::Timeout,
            3 => TransportErrorKind::Tls,
            4 => TransportErrorKind::BodyTooLarge,
            5 => TransportErrorKind::Other,
            _ => return Err(mcp_oauth2_result::InvalidArgument),
        };
        let decision = pending.resume(Err(TransportError::new(kind, message)))?;
        // SAFETY: checked by `out`; writable per the caller contract.
        unsafe { write_out(decision_out, decision) };
        Ok(())
    })
}

/// Frees a pending validation (resumed or not) and sets `*pending` to NULL. `pending` NULL
/// or `*pending` NULL: no-op, so calling it twice on the same variable is safe. Freeing an
/// unresumed pending abandons the validation (nothing is cached). Views obtained from it
/// become invalid; decisions obtained from it stay valid.
///
/// # Safety
/// `pending` is NULL or points to a variable holding NULL or a pending from this library
/// that has not been freed through another variable.
/// Thread safety: no other thread may use the pending during or after this call.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_pending_free(pending: *mut *mut mcp_oauth2_pending) {
    // SAFETY: forwarded caller contract.
    boundary_void(|| unsafe { free_handle(pending) });
}
