//! The C ABI (`include/mcp_oauth2.h`, generated from this module by cbindgen).
//!
//! A thin, mechanical shell over the safe core. This module is the only place in the crate
//! where `unsafe` code is allowed, and almost all of it lives in the helpers below:
//! `boundary` (the panic boundary every exported function runs inside), the pointer
//! readers (`borrow`, `bytes`, `text`, `slice`), `write_out`, and the
//! `Box` conversions of the handle types (`into_handle`, `free_handle`).
//!
//! Conventions (the header repeats them where they matter):
//! - every function returns [`mcp_oauth2_result`] (except the `void` `_free` functions);
//! - outputs are the last parameters, named `*_out`, and written only on
//!   [`mcp_oauth2_result::Ok`];
//! - input strings are `(const uint8_t *ptr, size_t len)`; `ptr` may be NULL only when
//!   `len` is 0;
//! - output strings are borrowed views ([`mcp_oauth2_str`], [`mcp_oauth2_bytes`]) into the
//!   object that returned them, valid until that object is freed;
//! - input enums are plain integers, checked.

// cbindgen reads the C names from the Rust names, so the types keep their C spelling.
#![allow(non_camel_case_types)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

// The panic boundary relies on unwinding: with `panic = "abort"` a bug would kill the host.
#[cfg(panic = "abort")]
compile_error!("the C ABI needs panic = \"unwind\" (a panic must become MCP_OAUTH2_RESULT_PANIC)");

mod decision;
mod error;
mod metrics;
mod pending;
mod validator;

use std::os::raw::c_char;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use self::decision::*;
pub use self::error::*;
pub use self::metrics::*;
pub use self::pending::*;
pub use self::validator::*;

/// The result of every fallible function. Values are stable and never renumbered; new
/// values may be added, so treat unknown values as errors.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum mcp_oauth2_result {
    /// Success: the `*_out` parameters are written.
    Ok = 0,
    /// A required pointer parameter was NULL (or a `(ptr, len)` pair had a NULL `ptr` and a
    /// non-zero `len`). Nothing was written or consumed.
    NullParameter = 1,
    /// A Rust panic was caught inside the function: a bug in mcp-oauth2. Nothing was
    /// written to `*_out`; objects passed in stay safe to use and must still be freed. A
    /// pending whose `_resume`, `_resume_cached`, `_fail` or `_continue` panicked is spent
    /// (later calls return `MCP_OAUTH2_RESULT_ALREADY_RESUMED`) and requests waiting on it
    /// get a 503. The host process is never aborted.
    Panic = 2,
    /// The configuration is invalid. `mcp_oauth2_validator_new` returns an error object
    /// naming the field.
    InvalidConfig = 3,
    /// The configuration enables a feature this build does not implement yet.
    Unsupported = 4,
    /// An argument is invalid: a string that must be UTF-8 is not, an unknown enum value,
    /// an unparsable peer address, a length over `PTRDIFF_MAX`.
    InvalidArgument = 5,
    /// The object has no such value: an identity field the token did not carry, a response
    /// field of an allowed decision, a forwarding field of a denied decision.
    Absent = 6,
    /// An index is not below the matching `_count`.
    OutOfRange = 7,
    /// The pending validation has already been resumed to a decision; it holds nothing any
    /// more and only `mcp_oauth2_pending_free` remains to be called.
    AlreadyResumed = 8,
    /// The call does not fit the pending's state: an HTTP getter, `_resume` or `_fail` on a
    /// pending that waits for another request (`MCP_OAUTH2_PENDING_STATE_WAIT`), or a wait
    /// function on one that needs an HTTP exchange. Nothing was changed.
    WrongState = 9,
}

type Result<T> = std::result::Result<T, mcp_oauth2_result>;

/// A borrowed UTF-8 string (not NUL-terminated). `ptr` is never NULL, even when `len` is 0.
/// It lives as long as the object that returned it; do not free it.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct mcp_oauth2_str {
    /// The first byte.
    pub ptr: *const c_char,
    /// The length in bytes.
    pub len: usize,
}

/// A borrowed byte string. `ptr` is never NULL, even when `len` is 0. It lives as long as
/// the object that returned it; do not free it.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct mcp_oauth2_bytes {
    /// The first byte.
    pub ptr: *const u8,
    /// The length in bytes.
    pub len: usize,
}

/// Where empty views point, so that `ptr` is always a valid address.
static EMPTY: [u8; 1] = [0];

impl mcp_oauth2_str {
    fn of(s: &str) -> Self {
        let b = mcp_oauth2_bytes::of(s.as_bytes());
        mcp_oauth2_str { ptr: b.ptr.cast(), len: b.len }
    }
}

impl mcp_oauth2_bytes {
    fn of(b: &[u8]) -> Self {
        if b.is_empty() {
            mcp_oauth2_bytes { ptr: EMPTY.as_ptr(), len: 0 }
        } else {
            mcp_oauth2_bytes { ptr: b.as_ptr(), len: b.len() }
        }
    }
}

/// One HTTP header given by the host: a name and a value, each `(ptr, len)`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct mcp_oauth2_header {
    /// The name (ASCII, any case).
    pub name: *const u8,
    /// The length of `name` in bytes.
    pub name_len: usize,
    /// The raw value.
    pub value: *const u8,
    /// The length of `value` in bytes.
    pub value_len: usize,
}

/// The panic boundary: runs `f`, maps its error to the result, and turns a panic into
/// [`mcp_oauth2_result::Panic`]. Every exported function runs inside it.
fn boundary(f: impl FnOnce() -> Result<()>) -> mcp_oauth2_result {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => mcp_oauth2_result::Ok,
        Ok(Err(r)) => r,
        Err(_) => mcp_oauth2_result::Panic,
    }
}

/// The panic boundary of the `void` `_free` functions: a panic is swallowed.
fn boundary_void(f: impl FnOnce()) {
    let _ = catch_unwind(AssertUnwindSafe(f));
}

/// Reads a required pointer to a host-owned or library-owned object.
///
/// # Safety
/// `ptr` is NULL or points to a live, properly aligned `T` that nobody mutates for `'a`.
unsafe fn borrow<'a, T>(ptr: *const T) -> Result<&'a T> {
    // SAFETY: the caller guarantees that a non-NULL `ptr` is valid for reads for `'a`.
    unsafe { ptr.as_ref() }.ok_or(mcp_oauth2_result::NullParameter)
}

/// Reads a required pointer to an object the library may mutate.
///
/// # Safety
/// `ptr` is NULL or points to a live `T` that nothing else accesses for `'a`.
unsafe fn borrow_mut<'a, T>(ptr: *mut T) -> Result<&'a mut T> {
    // SAFETY: the caller guarantees that a non-NULL `ptr` is valid and unaliased for `'a`.
    unsafe { ptr.as_mut() }.ok_or(mcp_oauth2_result::NullParameter)
}

/// Reads a `(ptr, len)` array; NULL is allowed only with `len` 0.
///
/// # Safety
/// A non-NULL `ptr` points to `len` initialised `T`s that stay unchanged for `'a`.
unsafe fn slice<'a, T>(ptr: *const T, len: usize) -> Result<&'a [T]> {
    if len == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(mcp_oauth2_result::NullParameter);
    }
    if len.checked_mul(size_of::<T>()).is_none_or(|n| n > isize::MAX as usize) {
        return Err(mcp_oauth2_result::InvalidArgument);
    }
    // SAFETY: non-NULL, `len` elements readable per the caller contract, size checked above.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// Reads a `(ptr, len)` byte string; NULL is allowed only with `len` 0.
///
/// # Safety
/// As [`slice`].
unsafe fn bytes<'a>(ptr: *const u8, len: usize) -> Result<&'a [u8]> {
    // SAFETY: forwarded caller contract.
    unsafe { slice(ptr, len) }
}

/// Reads a `(ptr, len)` string that must be UTF-8.
///
/// # Safety
/// As [`slice`].
unsafe fn text<'a>(ptr: *const u8, len: usize) -> Result<&'a str> {
    // SAFETY: forwarded caller contract.
    let b = unsafe { bytes(ptr, len) }?;
    std::str::from_utf8(b).map_err(|_| mcp_oauth2_result::InvalidArgument)
}

/// Checks that an output pointer is not NULL, before any work is done.
fn out<T>(ptr: *mut T) -> Result<*mut T> {
    if ptr.is_null() {
        Err(mcp_oauth2_result::NullParameter)
    } else {
        Ok(ptr)
    }
}

/// Writes an output.
///
/// # Safety
/// `ptr` was checked by [`out`] and points to writable memory for a `T` (the host's
/// variable; its old value is overwritten without being dropped).
unsafe fn write_out<T>(ptr: *mut T, value: T) {
    // SAFETY: per the caller contract; `write` does not drop the (uninitialised) old value.
    unsafe { ptr.write(value) }
}

/// Writes a `(name, value)` pair of views (a header) into two outputs: both are checked for
/// NULL first, then `pair` is computed, then both are written (neither on any error).
///
/// # Safety
/// `name_out` and `value_out` are NULL or writable; the views returned by `pair` live as
/// long as the object the caller documents.
unsafe fn write_pair<'a>(
    name_out: *mut mcp_oauth2_str,
    value_out: *mut mcp_oauth2_str,
    pair: impl FnOnce() -> Result<(&'a str, &'a str)>,
) -> Result<()> {
    let (name_out, value_out) = (out(name_out)?, out(value_out)?);
    let (name, value) = pair()?;
    // SAFETY: both checked by `out`; writable per the caller contract.
    unsafe {
        write_out(name_out, mcp_oauth2_str::of(name));
        write_out(value_out, mcp_oauth2_str::of(value));
    }
    Ok(())
}

/// The host's clock reading (Unix milliseconds, e.g. from `timespec_get` or
/// `clock_gettime(CLOCK_REALTIME)`) as the core's time.
fn system_time(unix_ms: u64) -> SystemTime {
    UNIX_EPOCH.checked_add(Duration::from_millis(unix_ms)).unwrap_or(UNIX_EPOCH)
}

/// A time as Unix milliseconds for the host.
fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Hands a new object to the host.
fn into_handle<T>(value: T) -> *mut T {
    Box::into_raw(Box::new(value))
}

/// Frees an object through the host's variable and clears the variable, so that freeing
/// twice through the same variable is a no-op.
///
/// # Safety
/// `slot` is NULL or points to a variable that is NULL or holds a pointer returned by
/// [`into_handle`] for this `T` and not freed through another copy of the pointer.
unsafe fn free_handle<T>(slot: *mut *mut T) {
    // SAFETY: a non-NULL `slot` is the host's variable, per the caller contract.
    let Some(slot) = (unsafe { slot.as_mut() }) else { return };
    let ptr = std::mem::replace(slot, std::ptr::null_mut());
    if !ptr.is_null() {
        // SAFETY: `ptr` came from `Box::into_raw` in `into_handle` and is freed only here,
        // once: the variable it was read from now holds NULL.
        drop(unsafe { Box::from_raw(ptr) });
    }
}

/// The stable snake_case name of a result value, e.g. `null_parameter` for
/// `MCP_OAUTH2_RESULT_NULL_PARAMETER`, for log messages.
///
/// `name_out` receives a view of a static string (it lives forever).
///
/// # Errors
/// `MCP_OAUTH2_RESULT_OUT_OF_RANGE` for a value this build does not know;
/// `MCP_OAUTH2_RESULT_NULL_PARAMETER` if `name_out` is NULL.
///
/// # Safety
/// `name_out` is NULL or points to writable memory for one `mcp_oauth2_str`.
/// Thread safety: safe to call from any thread at any time.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_result_name(result: u32, name_out: *mut mcp_oauth2_str) -> mcp_oauth2_result {
    boundary(|| {
        let name_out = out(name_out)?;
        let name = match result {
            0 => "ok",
            1 => "null_parameter",
            2 => "panic",
            3 => "invalid_config",
            4 => "unsupported",
            5 => "invalid_argument",
            6 => "absent",
            7 => "out_of_range",
            8 => "already_resumed",
            9 => "wrong_state",
            _ => return Err(mcp_oauth2_result::OutOfRange),
        };
        // SAFETY: checked by `out`; writable per the caller contract.
        unsafe { write_out(name_out, mcp_oauth2_str::of(name)) };
        Ok(())
    })
}

/// A test-only hook: with the `ffi-test-panic` feature (never in a release build), the
/// exported functions that take a string panic on the input `mcp-oauth2-test-panic`, and
/// `begin`/`authorize` on the request path `/__mcp_oauth2_test_panic` (a path a real nginx
/// can route to the module), so that C and nginx tests can prove the panic boundary works.
#[cfg(feature = "ffi-test-panic")]
fn test_panic_hook(input: &[u8]) {
    if input == b"mcp-oauth2-test-panic" || input == b"/__mcp_oauth2_test_panic" {
        panic!("mcp-oauth2 test panic (feature ffi-test-panic)");
    }
}

#[cfg(not(feature = "ffi-test-panic"))]
#[inline(always)]
fn test_panic_hook(_: &[u8]) {}

// The header promises hosts that validators, decisions and errors may be shared between
// threads and that a pending may move to another thread; the compiler holds us to it.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<mcp_oauth2_validator>();
    send_sync::<mcp_oauth2_decision>();
    send_sync::<mcp_oauth2_error>();
    send_sync::<mcp_oauth2_pending>();
    send_sync::<mcp_oauth2_metrics>();
};
