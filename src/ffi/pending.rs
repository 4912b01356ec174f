//! The pending validation of the sans-I/O flow: the HTTP request the host must perform, and
//! `resume` / `fail` with its outcome.

use std::ffi::c_void;
use std::time::{Duration, SystemTime};

use super::{
    borrow, borrow_mut, boundary, boundary_void, bytes, free_handle, into_handle, mcp_oauth2_bytes,
    mcp_oauth2_decision, mcp_oauth2_header, mcp_oauth2_result, mcp_oauth2_str, out, slice, system_time, write_out,
    write_pair, Result,
};
use crate::{
    Decision, HttpRequest, HttpResponse, HttpVersion, Pending, Purpose, Step, Ticket, TransportError,
    TransportErrorKind,
};

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

/// What a pending validation waits for (written by `mcp_oauth2_pending_get_state`; a
/// `uint32_t` in C).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum mcp_oauth2_pending_state {
    /// The host performs the HTTP request it describes (`_method`, `_url`, `_header`,
    /// `_body`, `_timeout_ms`; how to connect: `_verify_certificate`, `_client_certificate`,
    /// `_proxy_url`, `_proxy_authorization`, `_http_version`, `_keepalive`), then calls
    /// `mcp_oauth2_pending_resume` or
    /// `mcp_oauth2_pending_fail`. This request leads: concurrent requests for the same token
    /// wait for it.
    Http = 1,
    /// Another request is already asking the authorization server what this one needs:
    /// the host waits (`mcp_oauth2_pending_wait`, `_is_ready`, `_on_ready`; at most
    /// `_max_wait_ms`), then calls `mcp_oauth2_pending_continue`.
    Wait = 2,
    /// Resumed to a decision: only `mcp_oauth2_pending_free` remains.
    Done = 3,
}

/// A validation waiting for something: the HTTP request the host must perform
/// (`MCP_OAUTH2_PENDING_STATE_HTTP`) or another request's authorization-server call
/// (`MCP_OAUTH2_PENDING_STATE_WAIT`). Created by `mcp_oauth2_validator_begin`, owned by the
/// host, freed with `mcp_oauth2_pending_free`, also after it was resumed. Freeing it
/// unresumed abandons the validation: requests waiting on it get a 503.
///
/// Its request carries the token and the gateway's client credentials: do not log the body,
/// the `Authorization` header, the client key or the `Proxy-Authorization` value.
///
/// Thread safety: the getters may run concurrently with each other; `resume`, `fail` and
/// `continue` must not run concurrently with anything else on the same pending. A pending
/// may be moved to another thread (e.g. the one that completes the I/O).
pub struct mcp_oauth2_pending {
    state: State,
    /// Every cache key handed out: a view stays valid until the pending is freed.
    keys: Vec<Box<str>>,
}

enum State {
    Http(HttpRequest, Pending),
    Wait(Ticket),
    Done,
}

impl mcp_oauth2_pending {
    /// The pending for a step that is not a decision (`None` for a decision).
    fn of(step: Step) -> (Option<Self>, Option<Decision>) {
        let mut p = mcp_oauth2_pending { state: State::Done, keys: Vec::new() };
        match p.enter(step) {
            Some(d) => (None, Some(d)),
            None => (Some(p), None),
        }
    }

    /// Moves to `step`'s state; returns the decision when it is one.
    fn enter(&mut self, step: Step) -> Option<Decision> {
        let (state, key) = match step {
            Step::Done(d) => {
                self.state = State::Done;
                return Some(d);
            }
            Step::Need(http, pending) => {
                let key = pending.cache_key();
                (State::Http(http, pending), key)
            }
            Step::Wait(ticket) => {
                let key = ticket.cache_key();
                (State::Wait(ticket), key)
            }
        };
        self.state = state;
        if self.keys.last().is_none_or(|k| **k != *key) {
            self.keys.push(key.into_boxed_str());
        }
        None
    }

    fn http(&self) -> Result<&HttpRequest> {
        match &self.state {
            State::Http(h, _) => Ok(h),
            State::Wait(_) => Err(mcp_oauth2_result::WrongState),
            State::Done => Err(mcp_oauth2_result::AlreadyResumed),
        }
    }

    fn ticket(&self) -> Result<&Ticket> {
        match &self.state {
            State::Wait(t) => Ok(t),
            State::Http(..) => Err(mcp_oauth2_result::WrongState),
            State::Done => Err(mcp_oauth2_result::AlreadyResumed),
        }
    }

    /// Continues an HTTP step with its outcome. The pending then holds the next step
    /// (returns NULL) or is finished (returns the decision).
    fn resume(
        &mut self,
        result: std::result::Result<HttpResponse, TransportError>,
        fetched_at: Option<SystemTime>,
        now: SystemTime,
    ) -> Result<*mut mcp_oauth2_decision> {
        self.http()?;
        let State::Http(_, pending) = std::mem::replace(&mut self.state, State::Done) else {
            return Err(mcp_oauth2_result::WrongState);
        };
        let step = match fetched_at {
            Some(at) => pending.resume_cached(result, at, now),
            None => pending.resume(result, now),
        };
        Ok(self.enter(step).map_or(std::ptr::null_mut(), |d| into_handle(mcp_oauth2_decision::new(d))))
    }
}

/// Creates the host's handles for the first step of a request.
pub(crate) fn first_step(step: Step) -> (*mut mcp_oauth2_decision, *mut mcp_oauth2_pending) {
    match mcp_oauth2_pending::of(step) {
        (_, Some(d)) => (into_handle(mcp_oauth2_decision::new(d)), std::ptr::null_mut()),
        (Some(p), None) => (std::ptr::null_mut(), into_handle(p)),
        (None, None) => unreachable!("a step is a decision or a pending"),
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
/// `MCP_OAUTH2_RESULT_NULL_PARAMETER`, `MCP_OAUTH2_RESULT_ALREADY_RESUMED`,
/// `MCP_OAUTH2_RESULT_WRONG_STATE` (the pending waits for another request).
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

/// What an outbound call is for (`mcp_oauth2_pending_purpose`, as a `uint32_t`).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum mcp_oauth2_purpose {
    /// RFC 7662 token introspection: the answer is about this token alone, and a cache
    /// shared between processes may keep it for the decision's `mcp_oauth2_decision_cache_ttl_ms`.
    Introspection = 1,
    /// RFC 8414 / OpenID Connect authorization-server metadata (to find the keys).
    Discovery = 2,
    /// The authorization server's JSON Web Key Set: for local JWT validation, or to verify
    /// a signed (RFC 9701) introspection answer.
    Jwks = 3,
    /// RFC 8693 token exchange (`token_exchange`): the answer is about this token (and the
    /// actor token) alone, like an introspection answer.
    TokenExchange = 4,
}

/// What the HTTP request is for.
///
/// # Errors
/// `MCP_OAUTH2_RESULT_NULL_PARAMETER`, `MCP_OAUTH2_RESULT_ALREADY_RESUMED`,
/// `MCP_OAUTH2_RESULT_WRONG_STATE`.
///
/// # Safety
/// `pending` is NULL or live; `purpose_out` is NULL or writable.
/// Thread safety: see `mcp_oauth2_pending`.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_pending_purpose(
    pending: *const mcp_oauth2_pending,
    purpose_out: *mut mcp_oauth2_purpose,
) -> mcp_oauth2_result {
    boundary(|| {
        // SAFETY: caller contract.
        let http = unsafe { http_of(pending) }?;
        let purpose_out = out(purpose_out)?;
        let purpose = match http.purpose {
            Purpose::Introspection => mcp_oauth2_purpose::Introspection,
            Purpose::Discovery => mcp_oauth2_purpose::Discovery,
            Purpose::Jwks => mcp_oauth2_purpose::Jwks,
            Purpose::TokenExchange => mcp_oauth2_purpose::TokenExchange,
        };
        // SAFETY: checked by `out`; writable per the caller contract.
        unsafe { write_out(purpose_out, purpose) };
        Ok(())
    })
}

/// The absolute URL to call (the introspection endpoint; in JWT mode an AS metadata or JWKS URL).
///
/// `url_out` receives a view into `pending`, valid until it is resumed or freed.
///
/// # Errors
/// `MCP_OAUTH2_RESULT_NULL_PARAMETER`, `MCP_OAUTH2_RESULT_ALREADY_RESUMED`,
/// `MCP_OAUTH2_RESULT_WRONG_STATE` (the pending waits for another request).
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
/// `MCP_OAUTH2_RESULT_NULL_PARAMETER`, `MCP_OAUTH2_RESULT_ALREADY_RESUMED`,
/// `MCP_OAUTH2_RESULT_WRONG_STATE` (the pending waits for another request).
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
/// `MCP_OAUTH2_RESULT_NULL_PARAMETER`, `MCP_OAUTH2_RESULT_ALREADY_RESUMED`,
/// `MCP_OAUTH2_RESULT_WRONG_STATE` (the pending waits for another request).
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
/// `MCP_OAUTH2_RESULT_NULL_PARAMETER`, `MCP_OAUTH2_RESULT_ALREADY_RESUMED`,
/// `MCP_OAUTH2_RESULT_WRONG_STATE` (the pending waits for another request).
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
/// `MCP_OAUTH2_RESULT_NULL_PARAMETER`, `MCP_OAUTH2_RESULT_ALREADY_RESUMED`,
/// `MCP_OAUTH2_RESULT_WRONG_STATE` (the pending waits for another request).
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

/// Whether to verify the authorization server's certificate (chain and name) on this call,
/// for an `https://` URL: the configured `ssl_verify`, or `tls_client_auth_ssl_verify` on
/// the mutual-TLS introspection call. `false` is a deliberate operator choice (e.g. a
/// self-signed authorization server): skip the verification then. Meaningless for
/// `http://` URLs.
///
/// # Errors
/// `MCP_OAUTH2_RESULT_NULL_PARAMETER`, `MCP_OAUTH2_RESULT_ALREADY_RESUMED`,
/// `MCP_OAUTH2_RESULT_WRONG_STATE` (the pending waits for another request).
///
/// # Safety
/// `pending` is NULL or live; `verify_out` is NULL or writable.
/// Thread safety: see `mcp_oauth2_pending`.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_pending_verify_certificate(
    pending: *const mcp_oauth2_pending,
    verify_out: *mut bool,
) -> mcp_oauth2_result {
    boundary(|| {
        // SAFETY: caller contract.
        let http = unsafe { http_of(pending) }?;
        let verify_out = out(verify_out)?;
        // SAFETY: checked by `out`; writable per the caller contract.
        unsafe { write_out(verify_out, http.verify_certificate) };
        Ok(())
    })
}

/// The TLS client certificate to present on this call (RFC 8705 mutual TLS: `client_auth`
/// `tls_client_auth` or `self_signed_tls_client_auth`, on the introspection call only):
/// the configured `tls_client_auth_cert` (PEM; the client's certificate first, then its
/// chain) and `tls_client_auth_key` (PEM private key: a secret, never log it). Checked at
/// construction: both parse and the key belongs to the certificate.
///
/// `cert_pem_out` and `key_pem_out` receive views into `pending`, valid until it is resumed
/// or freed (not NUL-terminated; copy them if your TLS library needs C strings). Neither is
/// written on an error.
///
/// # Errors
/// `MCP_OAUTH2_RESULT_ABSENT` when the call presents no client certificate;
/// `MCP_OAUTH2_RESULT_NULL_PARAMETER`, `MCP_OAUTH2_RESULT_ALREADY_RESUMED`,
/// `MCP_OAUTH2_RESULT_WRONG_STATE` (the pending waits for another request).
///
/// # Safety
/// `pending` is NULL or live; `cert_pem_out` and `key_pem_out` are NULL or writable.
/// Thread safety: see `mcp_oauth2_pending`.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_pending_client_certificate(
    pending: *const mcp_oauth2_pending,
    cert_pem_out: *mut mcp_oauth2_str,
    key_pem_out: *mut mcp_oauth2_str,
) -> mcp_oauth2_result {
    boundary(|| {
        // SAFETY: caller contract.
        let http = unsafe { http_of(pending) }?;
        let pair = || {
            let c = http.client_certificate.as_ref().ok_or(mcp_oauth2_result::Absent)?;
            Ok((c.cert_pem(), c.key_pem()))
        };
        // SAFETY: writable outputs per the caller contract; views into `pending`.
        unsafe { write_pair(cert_pem_out, key_pem_out, pair) }
    })
}

/// The forward proxy to send this call through, `http://host[:port]` (port 80 when
/// absent): `https_proxy` for an `https://` URL, `http_proxy` for an `http://` URL, unless
/// `no_proxy` names the host. For an `https://` URL open a tunnel with `CONNECT host:port`
/// (with `mcp_oauth2_pending_proxy_authorization` as `Proxy-Authorization`), then TLS to the
/// authorization server inside it; for an `http://` URL send the request to the proxy in
/// absolute form (`POST http://host/path HTTP/1.1`, with `Proxy-Authorization`) or tunnel it
/// the same way. A proxy answer other than 2xx (407: wrong credentials) is a failed call:
/// `mcp_oauth2_pending_fail` with `MCP_OAUTH2_TRANSPORT_ERROR_CONNECT`.
///
/// `url_out` receives a view into `pending`, valid until it is resumed or freed.
///
/// # Errors
/// `MCP_OAUTH2_RESULT_ABSENT` when the call goes directly to the URL's host;
/// `MCP_OAUTH2_RESULT_NULL_PARAMETER`, `MCP_OAUTH2_RESULT_ALREADY_RESUMED`,
/// `MCP_OAUTH2_RESULT_WRONG_STATE` (the pending waits for another request).
///
/// # Safety
/// `pending` is NULL or live; `url_out` is NULL or writable.
/// Thread safety: see `mcp_oauth2_pending`.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_pending_proxy_url(
    pending: *const mcp_oauth2_pending,
    url_out: *mut mcp_oauth2_str,
) -> mcp_oauth2_result {
    boundary(|| {
        // SAFETY: caller contract.
        let http = unsafe { http_of(pending) }?;
        let url_out = out(url_out)?;
        let proxy = http.proxy.as_ref().ok_or(mcp_oauth2_result::Absent)?;
        // SAFETY: checked by `out`; writable per the caller contract.
        unsafe { write_out(url_out, mcp_oauth2_str::of(proxy.url())) };
        Ok(())
    })
}

/// The whole `Proxy-Authorization` value to send to the proxy of this call (the configured
/// `http_proxy_authorization` or `https_proxy_authorization`, e.g. `Basic dXNlcjpwYXNz`): on
/// the `CONNECT`, or on the absolute-form request. A secret: never log it.
///
/// `authorization_out` receives a view into `pending`, valid until it is resumed or freed.
///
/// # Errors
/// `MCP_OAUTH2_RESULT_ABSENT` when the call goes directly, or its proxy has no configured
/// authorization; `MCP_OAUTH2_RESULT_NULL_PARAMETER`, `MCP_OAUTH2_RESULT_ALREADY_RESUMED`,
/// `MCP_OAUTH2_RESULT_WRONG_STATE` (the pending waits for another request).
///
/// # Safety
/// `pending` is NULL or live; `authorization_out` is NULL or writable.
/// Thread safety: see `mcp_oauth2_pending`.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_pending_proxy_authorization(
    pending: *const mcp_oauth2_pending,
    authorization_out: *mut mcp_oauth2_str,
) -> mcp_oauth2_result {
    boundary(|| {
        // SAFETY: caller contract.
        let http = unsafe { http_of(pending) }?;
        let authorization_out = out(authorization_out)?;
        let value = http.proxy.as_ref().and_then(|p| p.authorization()).ok_or(mcp_oauth2_result::Absent)?;
        // SAFETY: checked by `out`; writable per the caller contract.
        unsafe { write_out(authorization_out, mcp_oauth2_str::of(value)) };
        Ok(())
    })
}

/// The HTTP version to speak on a call (`mcp_oauth2_pending_http_version`, as a
/// `uint32_t`): the configured `http_version`.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum mcp_oauth2_http_version {
    /// HTTP/1.0.
    Http10 = 10,
    /// HTTP/1.1.
    Http11 = 11,
}

/// The HTTP version to speak on this call (`mcp_oauth2_http_version`).
///
/// # Errors
/// `MCP_OAUTH2_RESULT_NULL_PARAMETER`, `MCP_OAUTH2_RESULT_ALREADY_RESUMED`,
/// `MCP_OAUTH2_RESULT_WRONG_STATE` (the pending waits for another request).
///
/// # Safety
/// `pending` is NULL or live; `version_out` is NULL or writable.
/// Thread safety: see `mcp_oauth2_pending`.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_pending_http_version(
    pending: *const mcp_oauth2_pending,
    version_out: *mut mcp_oauth2_http_version,
) -> mcp_oauth2_result {
    boundary(|| {
        // SAFETY: caller contract.
        let http = unsafe { http_of(pending) }?;
        let version_out = out(version_out)?;
        let version = match http.http_version {
            HttpVersion::Http10 => mcp_oauth2_http_version::Http10,
            HttpVersion::Http11 => mcp_oauth2_http_version::Http11,
        };
        // SAFETY: checked by `out`; writable per the caller contract.
        unsafe { write_out(version_out, version) };
        Ok(())
    })
}

/// Whether the connection of this call may be kept open and reused for later calls (the
/// configured `keepalive`); `false`: a fresh connection for this call, closed after it.
///
/// # Errors
/// `MCP_OAUTH2_RESULT_NULL_PARAMETER`, `MCP_OAUTH2_RESULT_ALREADY_RESUMED`,
/// `MCP_OAUTH2_RESULT_WRONG_STATE` (the pending waits for another request).
///
/// # Safety
/// `pending` is NULL or live; `keepalive_out` is NULL or writable.
/// Thread safety: see `mcp_oauth2_pending`.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_pending_keepalive(
    pending: *const mcp_oauth2_pending,
    keepalive_out: *mut bool,
) -> mcp_oauth2_result {
    boundary(|| {
        // SAFETY: caller contract.
        let http = unsafe { http_of(pending) }?;
        let keepalive_out = out(keepalive_out)?;
        // SAFETY: checked by `out`; writable per the caller contract.
        unsafe { write_out(keepalive_out, http.keepalive) };
        Ok(())
    })
}

/// The state of the pending: what the host does next (`mcp_oauth2_pending_state`).
///
/// (Named `_get_state` because C puts type and function names in one namespace: the
/// enum `mcp_oauth2_pending_state` already has that name.)
///
/// # Errors
/// `MCP_OAUTH2_RESULT_NULL_PARAMETER`.
///
/// # Safety
/// `pending` is NULL or live; `state_out` is NULL or writable.
/// Thread safety: see `mcp_oauth2_pending`.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_pending_get_state(
    pending: *const mcp_oauth2_pending,
    state_out: *mut mcp_oauth2_pending_state,
) -> mcp_oauth2_result {
    boundary(|| {
        // SAFETY: caller contract.
        let pending = unsafe { borrow(pending) }?;
        let state_out = out(state_out)?;
        let state = match pending.state {
            State::Http(..) => mcp_oauth2_pending_state::Http,
            State::Wait(_) => mcp_oauth2_pending_state::Wait,
            State::Done => mcp_oauth2_pending_state::Done,
        };
        // SAFETY: checked by `out`; writable per the caller contract.
        unsafe { write_out(state_out, state) };
        Ok(())
    })
}

/// A key for the answer this step waits for: 64 lowercase hex digits of a SHA-256 over the
/// validator's configuration and what identifies the answer (for introspection and for a
/// wait, the token; for a metadata document or key set, its URL), never the token itself.
/// Hosts that share authorization-server responses between processes store and replay them
/// under this key (`mcp_oauth2_pending_resume_cached`).
///
/// After `resume` moved the pending to another step, this is the new step's key; after a
/// decision, the key of the last step (what the host stores the answer it just resumed
/// with under).
///
/// `key_out` receives a view into `pending`, valid until the pending is freed (every key it
/// ever handed out stays valid that long, also after `resume`).
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
        // A pending is created for a step with a key, so there is always one.
        let key = pending.keys.last().map_or("", |k| &**k);
        // SAFETY: checked by `out`; writable per the caller contract.
        unsafe { write_out(key_out, mcp_oauth2_str::of(key)) };
        Ok(())
    })
}

/// Reads a response given by the host.
///
/// # Safety
/// As `mcp_oauth2_pending_resume` for `headers` and `body`.
unsafe fn response(
    status: u16,
    headers: *const mcp_oauth2_header,
    headers_len: usize,
    body: *const u8,
    body_len: usize,
) -> Result<HttpResponse> {
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
    Ok(response)
}

/// Continues with the HTTP response the host received at `now_unix_ms` (the host's clock,
/// Unix milliseconds): status, headers (only `Content-Type` is read; headers whose name or
/// value is not UTF-8 are skipped) and the complete body. Everything is copied; the
/// arguments are borrowed for the call only.
///
/// On success `*decision_out` receives either a new decision (owned by the host, free it
/// with `mcp_oauth2_decision_free`) or NULL, which means the pending moved to its next step:
/// read `mcp_oauth2_pending_get_state` (local JWT validation asks for metadata, then keys; or it
/// waits for another request fetching them) and loop until a decision. After a decision
/// the pending is spent: every later call on it except `_get_state`, `_cache_key` and `_free`
/// returns `MCP_OAUTH2_RESULT_ALREADY_RESUMED`.
///
/// # Errors
/// `MCP_OAUTH2_RESULT_NULL_PARAMETER`, `MCP_OAUTH2_RESULT_ALREADY_RESUMED`,
/// `MCP_OAUTH2_RESULT_WRONG_STATE` (the pending waits for another request). On an error the
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
    now_unix_ms: u64,
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
        let response = unsafe { response(status, headers, headers_len, body, body_len) }?;
        let decision = pending.resume(Ok(response), None, system_time(now_unix_ms))?;
        // SAFETY: checked by `out`; writable per the caller contract.
        unsafe { write_out(decision_out, decision) };
        Ok(())
    })
}

/// As `mcp_oauth2_pending_resume`, with a response the host kept from an earlier, identical
/// call (its cache shared between processes, under `mcp_oauth2_pending_cache_key`), first
/// received at `fetched_at_unix_ms`: nothing derived from it outlives that first answer's
/// expiry, however often it is replayed.
///
/// # Errors
/// As `mcp_oauth2_pending_resume`.
///
/// # Safety
/// As `mcp_oauth2_pending_resume`.
/// Thread safety: no other call on the same pending may run concurrently.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_pending_resume_cached(
    pending: *mut mcp_oauth2_pending,
    fetched_at_unix_ms: u64,
    now_unix_ms: u64,
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
        let response = unsafe { response(status, headers, headers_len, body, body_len) }?;
        let fetched_at = Some(system_time(fetched_at_unix_ms));
        let decision = pending.resume(Ok(response), fetched_at, system_time(now_unix_ms))?;
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
/// `MCP_OAUTH2_RESULT_NULL_PARAMETER`, `MCP_OAUTH2_RESULT_ALREADY_RESUMED`,
/// `MCP_OAUTH2_RESULT_WRONG_STATE`.
///
/// # Safety
/// As `mcp_oauth2_pending_resume`, with `message` for `body`.
/// Thread safety: no other call on the same pending may run concurrently.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_pending_fail(
    pending: *mut mcp_oauth2_pending,
    now_unix_ms: u64,
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
        let decision = pending.resume(Err(TransportError::new(kind, message)), None, system_time(now_unix_ms))?;
        // SAFETY: checked by `out`; writable per the caller contract.
        unsafe { write_out(decision_out, decision) };
        Ok(())
    })
}

/// Reads the ticket of a waiting pending, NULL-checked.
///
/// # Safety
/// `pending` is NULL or live and not being continued concurrently.
unsafe fn ticket_of<'a>(pending: *const mcp_oauth2_pending) -> Result<&'a Ticket> {
    // SAFETY: forwarded caller contract.
    unsafe { borrow(pending) }?.ticket()
}

/// Whether the answer a waiting pending waits for is in (polling; never blocks). When it
/// is, call `mcp_oauth2_pending_continue`.
///
/// # Errors
/// `MCP_OAUTH2_RESULT_NULL_PARAMETER`, `MCP_OAUTH2_RESULT_ALREADY_RESUMED`,
/// `MCP_OAUTH2_RESULT_WRONG_STATE` (the pending needs an HTTP exchange).
///
/// # Safety
/// `pending` is NULL or live; `ready_out` is NULL or writable.
/// Thread safety: see `mcp_oauth2_pending`.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_pending_is_ready(
    pending: *const mcp_oauth2_pending,
    ready_out: *mut bool,
) -> mcp_oauth2_result {
    boundary(|| {
        // SAFETY: caller contract.
        let ticket = unsafe { ticket_of(pending) }?;
        let ready_out = out(ready_out)?;
        // SAFETY: checked by `out`; writable per the caller contract.
        unsafe { write_out(ready_out, ticket.is_ready()) };
        Ok(())
    })
}

/// Blocks the calling thread until the answer a waiting pending waits for is in, or
/// `timeout_ms` passes. `*ready_out` says which. Then call `mcp_oauth2_pending_continue`
/// (also after a timeout: the decision is then a 503).
///
/// # Errors
/// As `mcp_oauth2_pending_is_ready`.
///
/// # Safety
/// As `mcp_oauth2_pending_is_ready`.
/// Thread safety: see `mcp_oauth2_pending`.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_pending_wait(
    pending: *const mcp_oauth2_pending,
    timeout_ms: u64,
    ready_out: *mut bool,
) -> mcp_oauth2_result {
    boundary(|| {
        // SAFETY: caller contract.
        let ticket = unsafe { ticket_of(pending) }?;
        let ready_out = out(ready_out)?;
        let ready = ticket.wait(Duration::from_millis(timeout_ms));
        // SAFETY: checked by `out`; writable per the caller contract.
        unsafe { write_out(ready_out, ready) };
        Ok(())
    })
}

/// How long waiting makes sense, in milliseconds (every call the awaited request may
/// chain, each bounded by `timeout`, plus a second). Past it, call
/// `mcp_oauth2_pending_continue` anyway.
///
/// # Errors
/// As `mcp_oauth2_pending_is_ready`.
///
/// # Safety
/// `pending` is NULL or live; `max_wait_ms_out` is NULL or writable.
/// Thread safety: see `mcp_oauth2_pending`.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_pending_max_wait_ms(
    pending: *const mcp_oauth2_pending,
    max_wait_ms_out: *mut u64,
) -> mcp_oauth2_result {
    boundary(|| {
        // SAFETY: caller contract.
        let ticket = unsafe { ticket_of(pending) }?;
        let max_wait_ms_out = out(max_wait_ms_out)?;
        let ms = u64::try_from(ticket.max_wait().as_millis()).unwrap_or(u64::MAX);
        // SAFETY: checked by `out`; writable per the caller contract.
        unsafe { write_out(max_wait_ms_out, ms) };
        Ok(())
    })
}

/// Called once when the answer a waiting pending waits for is in.
pub type mcp_oauth2_ready_fn = Option<unsafe extern "C" fn(user_data: *mut c_void)>;

/// The host's callback and its argument, which the host promises may travel to (and be
/// called on) any thread.
struct ReadyCallback {
    callback: unsafe extern "C" fn(*mut c_void),
    user_data: *mut c_void,
}

// SAFETY: `mcp_oauth2_pending_on_ready` requires the callback and `user_data` to be usable
// from any thread.
unsafe impl Send for ReadyCallback {}

impl ReadyCallback {
    fn call(self) {
        // SAFETY: the host's callback with the host's argument, per its contract; a panic
        // cannot start here (C code does not unwind into Rust by contract).
        unsafe { (self.callback)(self.user_data) }
    }
}

/// Registers `callback(user_data)` to be called once when the answer a waiting pending
/// waits for is in: at once, on this thread, if it already is; otherwise on the thread of
/// the request that completes the awaited call, right after it completes. For event-loop
/// hosts: the callback should only wake the loop (e.g. write to an eventfd), which then
/// calls `mcp_oauth2_pending_continue`; it must not free or continue this pending itself,
/// and must not block. Register it at most once per wait.
///
/// # Errors
/// `MCP_OAUTH2_RESULT_NULL_PARAMETER` (also for a NULL `callback`),
/// `MCP_OAUTH2_RESULT_ALREADY_RESUMED`, `MCP_OAUTH2_RESULT_WRONG_STATE`.
///
/// # Safety
/// `pending` is NULL or live; `callback` may be called from any thread with `user_data`,
/// which must stay valid until then.
/// Thread safety: see `mcp_oauth2_pending`.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_pending_on_ready(
    pending: *const mcp_oauth2_pending,
    callback: mcp_oauth2_ready_fn,
    user_data: *mut c_void,
) -> mcp_oauth2_result {
    boundary(|| {
        // SAFETY: caller contract.
        let ticket = unsafe { ticket_of(pending) }?;
        let callback = callback.ok_or(mcp_oauth2_result::NullParameter)?;
        let ready = ReadyCallback { callback, user_data };
        ticket.on_ready(move || ready.call());
        Ok(())
    })
}

/// Continues a waiting pending at `now_unix_ms` with the answer it waited for. When the
/// answer is not in yet (the host stopped waiting), the decision is a 503: a delay at the
/// authorization server is never a 401.
///
/// `*decision_out`: a new decision, or NULL when the pending moved to another step (read
/// `mcp_oauth2_pending_get_state`), as for `mcp_oauth2_pending_resume`.
///
/// # Errors
/// `MCP_OAUTH2_RESULT_NULL_PARAMETER`, `MCP_OAUTH2_RESULT_ALREADY_RESUMED`,
/// `MCP_OAUTH2_RESULT_WRONG_STATE` (the pending needs an HTTP exchange).
///
/// # Safety
/// `pending` is NULL or live; `decision_out` is NULL or writable.
/// Thread safety: no other call on the same pending may run concurrently.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_pending_continue(
    pending: *mut mcp_oauth2_pending,
    now_unix_ms: u64,
    decision_out: *mut *mut mcp_oauth2_decision,
) -> mcp_oauth2_result {
    boundary(|| {
        // SAFETY: caller contract: NULL or a live pending, not used concurrently.
        let pending = unsafe { borrow_mut(pending) }?;
        let decision_out = out(decision_out)?;
        pending.ticket()?;
        let State::Wait(ticket) = std::mem::replace(&mut pending.state, State::Done) else {
            return Err(mcp_oauth2_result::WrongState);
        };
        let step = ticket.resume(system_time(now_unix_ms));
        let decision = pending.enter(step).map_or(std::ptr::null_mut(), |d| into_handle(mcp_oauth2_decision::new(d)));
        // SAFETY: checked by `out`; writable per the caller contract.
        unsafe { write_out(decision_out, decision) };
        Ok(())
    })
}

/// Asks the cluster cache (`cluster_cache_strategy: redis`) for the answer this HTTP step
/// waits for, before the host performs it: blocking Redis I/O bounded by
/// `cluster_cache_redis`'s timeouts (and, while another node fetches the same answer, by
/// `timeout`). Only answers about one token (introspection, token exchange) are shared;
/// without the cluster cache, for other steps or while Redis is down it returns at once.
/// `mcp_oauth2_validator_authorize` does this itself; event-loop hosts call it off their
/// loop (or run their own Redis client per docs/cluster-cache.md).
///
/// `*answered_out` true: another node's answer was replayed and the pending moved on, as
/// after `mcp_oauth2_pending_resume` (`*decision_out` a new decision, or NULL for the next
/// step). False: `*decision_out` is NULL and the pending is unchanged: perform the request
/// and resume; when this process leads the cluster-wide call, resume shares the answer.
///
/// # Errors
/// `MCP_OAUTH2_RESULT_NULL_PARAMETER`, `MCP_OAUTH2_RESULT_ALREADY_RESUMED`,
/// `MCP_OAUTH2_RESULT_WRONG_STATE` (the pending waits for another request).
///
/// # Safety
/// `pending` is NULL or live; `answered_out` and `decision_out` are NULL or writable.
/// Thread safety: no other call on the same pending may run concurrently.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_pending_try_cluster(
    pending: *mut mcp_oauth2_pending,
    now_unix_ms: u64,
    answered_out: *mut bool,
    decision_out: *mut *mut mcp_oauth2_decision,
) -> mcp_oauth2_result {
    boundary(|| {
        // SAFETY: caller contract: NULL or a live pending, not used concurrently.
        let pending = unsafe { borrow_mut(pending) }?;
        let (answered_out, decision_out) = (out(answered_out)?, out(decision_out)?);
        pending.http()?;
        let State::Http(http, inner) = std::mem::replace(&mut pending.state, State::Done) else {
            return Err(mcp_oauth2_result::WrongState);
        };
        let (answered, decision) = match inner.try_cluster(system_time(now_unix_ms)) {
            Ok(step) => {
                let d = pending.enter(step).map_or(std::ptr::null_mut(), |d| into_handle(mcp_oauth2_decision::new(d)));
                (true, d)
            }
            Err(inner) => {
                pending.state = State::Http(http, inner);
                (false, std::ptr::null_mut())
            }
        };
        // SAFETY: checked by `out`; writable per the caller contract.
        unsafe {
            write_out(answered_out, answered);
            write_out(decision_out, decision);
        }
        Ok(())
    })
}

/// Frees a pending validation (resumed or not) and sets `*pending` to NULL. `pending` NULL
/// or `*pending` NULL: no-op, so calling it twice on the same variable is safe. Freeing an
/// unresumed pending abandons the validation (nothing is cached; requests waiting on it
/// get a 503). Views obtained from it
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
