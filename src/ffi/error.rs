//! The error object: why a configuration was refused, with the field path.

use super::{borrow, boundary, boundary_void, free_handle, mcp_oauth2_result, mcp_oauth2_str, out, write_out};
use crate::{Error, ErrorKind};

/// Why `mcp_oauth2_validator_new` refused a configuration. Created by the library, owned by
/// the host, freed with `mcp_oauth2_error_free`. Immutable: safe to read from several
/// threads at once. Its message never contains a secret or a token.
pub struct mcp_oauth2_error {
    message: String,
    field: Option<String>,
    kind: ErrorKind,
}

impl mcp_oauth2_error {
    pub(crate) fn new(e: &Error) -> Self {
        mcp_oauth2_error { message: e.to_string(), field: e.field().map(str::to_owned), kind: e.kind() }
    }

    /// The result code a function returns for this error.
    pub(crate) fn result(&self) -> mcp_oauth2_result {
        match self.kind {
            ErrorKind::Unsupported => mcp_oauth2_result::Unsupported,
            ErrorKind::Config => mcp_oauth2_result::InvalidConfig,
        }
    }
}

/// The whole message, `field.path: what is wrong` (or just `what is wrong` when no single
/// field is at fault, e.g. `invalid JSON: line 1 column 9`).
///
/// `message_out` receives a view into `error`, valid until `error` is freed.
///
/// # Errors
/// `MCP_OAUTH2_RESULT_NULL_PARAMETER` if `error` or `message_out` is NULL.
///
/// # Safety
/// `error` is NULL or a live error object; `message_out` is NULL or writable.
/// Thread safety: safe to call concurrently on the same error.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_error_message(
    error: *const mcp_oauth2_error,
    message_out: *mut mcp_oauth2_str,
) -> mcp_oauth2_result {
    boundary(|| {
        // SAFETY: caller contract: NULL or a live error object.
        let error = unsafe { borrow(error) }?;
        let message_out = out(message_out)?;
        // SAFETY: checked by `out`; writable per the caller contract.
        unsafe { write_out(message_out, mcp_oauth2_str::of(&error.message)) };
        Ok(())
    })
}

/// The configuration field path at fault, e.g. `claim_to_header[0].header`.
///
/// `field_out` receives a view into `error`, valid until `error` is freed.
///
/// # Errors
/// `MCP_OAUTH2_RESULT_ABSENT` when the error is not about one field (malformed JSON);
/// `MCP_OAUTH2_RESULT_NULL_PARAMETER` if `error` or `field_out` is NULL.
///
/// # Safety
/// `error` is NULL or a live error object; `field_out` is NULL or writable.
/// Thread safety: safe to call concurrently on the same error.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_error_field(
    error: *const mcp_oauth2_error,
    field_out: *mut mcp_oauth2_str,
) -> mcp_oauth2_result {
    boundary(|| {
        // SAFETY: caller contract: NULL or a live error object.
        let error = unsafe { borrow(error) }?;
        let field_out = out(field_out)?;
        let field = error.field.as_deref().ok_or(mcp_oauth2_result::Absent)?;
        // SAFETY: checked by `out`; writable per the caller contract.
        unsafe { write_out(field_out, mcp_oauth2_str::of(field)) };
        Ok(())
    })
}

/// Frees an error object and sets `*error` to NULL. `error` NULL or `*error` NULL: no-op,
/// so calling it twice on the same variable is safe. Views obtained from the error become
/// invalid.
///
/// # Safety
/// `error` is NULL or points to a variable holding NULL or an error object from this
/// library that has not been freed through another variable.
/// Thread safety: no other thread may use the error during or after this call.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_error_free(error: *mut *mut mcp_oauth2_error) {
    // SAFETY: forwarded caller contract.
    boundary_void(|| unsafe { free_handle(error) });
}
