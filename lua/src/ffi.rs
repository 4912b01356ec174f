//! The LuaJIT FFI fast path of `resty.mcp_oauth2`: the cache-hit forward decided without
//! the Lua C API, callable from JIT-compiled Lua.
//!
//! A Lua C function call (what mlua methods are) cannot be compiled into a LuaJIT trace and
//! converts every argument into a registry reference; an FFI call passes the request's
//! strings as pointers and costs a few nanoseconds. Only the common case takes this path:
//! a request whose decision is a forward. Everything else (metadata, challenges, AS calls)
//! reports `FFI_OTHER` and the caller uses `validator:check` instead.

use std::cell::RefCell;
use std::ffi::c_void;
use std::os::raw::c_int;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;

use mcp_oauth2::{Decision, Forward, Request, Step, Validator};

/// The decision is a forward: `values` and `valid_until` are written.
pub const FFI_FORWARD: c_int = 1;
/// Anything else: use `validator:check`, which returns the full answer.
pub const FFI_OTHER: c_int = 0;
/// The validator panicked (caught): the caller must fail closed.
pub const FFI_PANIC: c_int = -1;

/// A borrowed byte string handed to Lua (`ffi.string(ptr, len)`); `ptr` is NULL for an
/// absent claim.
#[repr(C)]
pub struct LuaStr {
    ptr: *const u8,
    len: usize,
}

/// What `validator:ffi_handle()` points to. Owned by the validator's userdata.
pub struct FfiHandle {
    validator: Validator,
    names: Vec<String>,
    /// The forward whose header values the last call returned: the `LuaStr` pointers point
    /// into it and stay valid until the next call on this handle.
    last: RefCell<Option<Forward>>,
}

impl FfiHandle {
    pub fn new(validator: Validator, names: Vec<String>) -> Self {
        FfiHandle { validator, names, last: RefCell::new(None) }
    }
}

/// The address of [`mcp_oauth2_lua_check`], for `ffi.cast` on the Lua side (so the FFI
/// call goes to this very library, whichever path it was loaded from).
pub fn check_fn_address() -> *mut c_void {
    mcp_oauth2_lua_check as *const () as *mut c_void
}

/// # Safety
/// `ptr` must point to `len` readable bytes, or be NULL (then `len` is ignored).
unsafe fn bytes<'a>(ptr: *const u8, len: usize) -> Option<&'a [u8]> {
    if ptr.is_null() {
        None
    } else {
        // SAFETY: the caller guarantees `len` readable bytes at a non-NULL `ptr`.
        Some(unsafe { std::slice::from_raw_parts(ptr, len) })
    }
}

/// Decides a request with only a method, a path and an `Authorization` value (the
/// configuration needs nothing else: no trusted proxies, origins or per-method scopes).
///
/// Returns [`FFI_FORWARD`] and writes one [`LuaStr`] per configured claim header (in
/// `validator:header_names()` order) into `values` and the Unix expiry into `valid_until`;
/// [`FFI_OTHER`] for every other decision (nothing written); [`FFI_PANIC`] if the validator
/// panicked. The written strings stay valid until the next call with the same `handle`.
///
/// # Safety
/// `handle` comes from `validator:ffi_handle()` of a validator that is still alive, and is
/// used only from the thread running that Lua state. `method`/`path` point to
/// `method_len`/`path_len` readable bytes; `authz` likewise or NULL. `values` points to
/// `n_values` writable [`LuaStr`]s and `valid_until` to a writable double.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_lua_check(
    handle: *const FfiHandle,
    method: *const u8,
    method_len: usize,
    path: *const u8,
    path_len: usize,
    authz: *const u8,
    authz_len: usize,
    values: *mut LuaStr,
    n_values: usize,
    valid_until: *mut f64,
) -> c_int {
    if handle.is_null() || method.is_null() || path.is_null() || values.is_null() || valid_until.is_null() {
        return FFI_OTHER;
    }
    let run = AssertUnwindSafe(|| {
        // SAFETY: non-NULL (checked above) and alive by the caller contract.
        let h = unsafe { &*handle };
        if n_values < h.names.len() {
            return FFI_OTHER;
        }
        // SAFETY: the caller guarantees the lengths of these buffers.
        let (Some(method), Some(path)) = (unsafe { bytes(method, method_len) }, unsafe { bytes(path, path_len) })
        else {
            return FFI_OTHER;
        };
        crate::test_hook(path);
        // Not UTF-8 (a `%FF` in the path): the general path handles it.
        let (Ok(method), Ok(path)) = (std::str::from_utf8(method), std::str::from_utf8(path)) else {
            return FFI_OTHER;
        };
        let mut request = Request::new(method, path);
        // SAFETY: as above; NULL means no Authorization header.
        if let Some(a) = unsafe { bytes(authz, authz_len) } {
            request.headers.push(("authorization", a));
        }
        let Step::Done(Decision::Forward(forward)) = h.validator.begin(&request) else {
            return FFI_OTHER;
        };
        // SAFETY: `values` has `n_values` >= names.len() writable slots (caller contract).
        let out = unsafe { std::slice::from_raw_parts_mut(values, h.names.len()) };
        let mut set = forward.set_headers().peekable();
        for (slot, name) in out.iter_mut().zip(&h.names) {
            *slot = match set.next_if(|(n, _)| n == name) {
                // Points into the grant, which `last` keeps alive below.
                Some((_, v)) => LuaStr { ptr: v.as_ptr(), len: v.len() },
                None => LuaStr { ptr: ptr::null(), len: 0 },
            };
        }
        drop(set);
        // SAFETY: writable by the caller contract.
        unsafe { *valid_until = forward.valid_until_unix() as f64 };
        *h.last.borrow_mut() = Some(forward);
        FFI_FORWARD
    });
    catch_unwind(run).unwrap_or(FFI_PANIC)
}
