//! Metrics snapshots: read from a validator, moved between processes as bytes, merged,
//! rendered as Prometheus text.

use std::sync::OnceLock;

use super::{
    borrow, borrow_mut, boundary, boundary_void, bytes, free_handle, into_handle, mcp_oauth2_bytes, mcp_oauth2_result,
    mcp_oauth2_str, mcp_oauth2_validator, out, write_out,
};
use crate::MetricsSnapshot;

/// The counters of a validator at one moment (decisions, cache look-ups and evictions,
/// authorization-server calls and their latency, single-flight waits). Created by
/// `mcp_oauth2_validator_metrics` or `mcp_oauth2_metrics_from_bytes`, owned by the host,
/// freed with `mcp_oauth2_metrics_free`.
///
/// Thread safety: the readers may run concurrently; `mcp_oauth2_metrics_merge` must not run
/// concurrently with anything else on the same snapshot.
pub struct mcp_oauth2_metrics {
    snapshot: MetricsSnapshot,
    bytes: OnceLock<Vec<u8>>,
    text: OnceLock<String>,
}

impl mcp_oauth2_metrics {
    fn new(snapshot: MetricsSnapshot) -> Self {
        mcp_oauth2_metrics { snapshot, bytes: OnceLock::new(), text: OnceLock::new() }
    }
}

/// A snapshot of the validator's counters now.
///
/// # Errors
/// `MCP_OAUTH2_RESULT_NULL_PARAMETER`.
///
/// # Safety
/// `validator` is NULL or live; `metrics_out` is NULL or a writable pointer variable.
/// Thread safety: safe to call concurrently on the same validator.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_validator_metrics(
    validator: *const mcp_oauth2_validator,
    metrics_out: *mut *mut mcp_oauth2_metrics,
) -> mcp_oauth2_result {
    boundary(|| {
        // SAFETY: caller contract: NULL or a live validator.
        let validator = unsafe { borrow(validator) }?;
        let metrics_out = out(metrics_out)?;
        let handle = into_handle(mcp_oauth2_metrics::new(validator.validator.metrics()));
        // SAFETY: checked by `out`; writable per the caller contract.
        unsafe { write_out(metrics_out, handle) };
        Ok(())
    })
}

/// Counts one look-up in the host's own cache shared between processes (the nginx shared
/// dict): `hit` true when the answer came from there instead of the authorization server.
///
/// # Errors
/// `MCP_OAUTH2_RESULT_NULL_PARAMETER`.
///
/// # Safety
/// `validator` is NULL or live.
/// Thread safety: safe to call concurrently on the same validator.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_validator_record_shared_cache(
    validator: *const mcp_oauth2_validator,
    hit: bool,
) -> mcp_oauth2_result {
    boundary(|| {
        // SAFETY: caller contract: NULL or a live validator.
        let validator = unsafe { borrow(validator) }?;
        validator.validator.record_shared_cache(hit);
        Ok(())
    })
}

/// Counts one look-up in a cluster cache the host runs itself (nginx through
/// `resty.redis`): `hit` true when another node's answer was replayed from there.
///
/// # Errors
/// `MCP_OAUTH2_RESULT_NULL_PARAMETER`.
///
/// # Safety
/// `validator` is NULL or live.
/// Thread safety: safe to call concurrently on the same validator.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_validator_record_cluster_cache(
    validator: *const mcp_oauth2_validator,
    hit: bool,
) -> mcp_oauth2_result {
    boundary(|| {
        // SAFETY: caller contract: NULL or a live validator.
        let validator = unsafe { borrow(validator) }?;
        validator.validator.record_cluster_cache(hit);
        Ok(())
    })
}

/// Counts one failed exchange with a cluster cache the host runs itself
/// (`mcp_oauth2_cluster_cache_errors_total`).
///
/// # Errors
/// `MCP_OAUTH2_RESULT_NULL_PARAMETER`.
///
/// # Safety
/// `validator` is NULL or live.
/// Thread safety: safe to call concurrently on the same validator.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_validator_record_cluster_cache_error(
    validator: *const mcp_oauth2_validator,
) -> mcp_oauth2_result {
    boundary(|| {
        // SAFETY: caller contract: NULL or a live validator.
        let validator = unsafe { borrow(validator) }?;
        validator.validator.record_cluster_cache_error();
        Ok(())
    })
}

/// The snapshot as bytes, to store where other processes read it (a shared dict) and
/// rebuild it with `mcp_oauth2_metrics_from_bytes` (same library build).
///
/// `bytes_out` receives a view into `metrics`, valid until it is freed or merged into.
///
/// # Errors
/// `MCP_OAUTH2_RESULT_NULL_PARAMETER`.
///
/// # Safety
/// `metrics` is NULL or live; `bytes_out` is NULL or writable.
/// Thread safety: see `mcp_oauth2_metrics`.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_metrics_bytes(
    metrics: *const mcp_oauth2_metrics,
    bytes_out: *mut mcp_oauth2_bytes,
) -> mcp_oauth2_result {
    boundary(|| {
        // SAFETY: caller contract: NULL or a live snapshot.
        let metrics = unsafe { borrow(metrics) }?;
        let bytes_out = out(bytes_out)?;
        let bytes = metrics.bytes.get_or_init(|| metrics.snapshot.to_bytes());
        // SAFETY: checked by `out`; writable per the caller contract.
        unsafe { write_out(bytes_out, mcp_oauth2_bytes::of(bytes)) };
        Ok(())
    })
}

/// A snapshot from `mcp_oauth2_metrics_bytes` of this library build (any process).
///
/// # Errors
/// `MCP_OAUTH2_RESULT_INVALID_ARGUMENT` for bytes of another build or length;
/// `MCP_OAUTH2_RESULT_NULL_PARAMETER`.
///
/// # Safety
/// `data` points to `len` readable bytes (or is NULL with length 0); `metrics_out` is NULL
/// or a writable pointer variable.
/// Thread safety: safe to call from any thread.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_metrics_from_bytes(
    data: *const u8,
    len: usize,
    metrics_out: *mut *mut mcp_oauth2_metrics,
) -> mcp_oauth2_result {
    boundary(|| {
        let metrics_out = out(metrics_out)?;
        // SAFETY: caller contract for the bytes.
        let data = unsafe { bytes(data, len) }?;
        let snapshot = MetricsSnapshot::from_bytes(data).ok_or(mcp_oauth2_result::InvalidArgument)?;
        // SAFETY: checked by `out`; writable per the caller contract.
        unsafe { write_out(metrics_out, into_handle(mcp_oauth2_metrics::new(snapshot))) };
        Ok(())
    })
}

/// Adds `other`'s counters to `into`'s (e.g. every nginx worker's into one). Views from
/// `into` (`_bytes`, `_text`) become invalid.
///
/// # Errors
/// `MCP_OAUTH2_RESULT_NULL_PARAMETER`.
///
/// # Safety
/// `into` is NULL or live and not used concurrently; `other` is NULL or live, and not
/// `into`.
/// Thread safety: see `mcp_oauth2_metrics`.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_metrics_merge(
    into: *mut mcp_oauth2_metrics,
    other: *const mcp_oauth2_metrics,
) -> mcp_oauth2_result {
    boundary(|| {
        // SAFETY: caller contract: live, distinct objects.
        let (into, other) = unsafe { (borrow_mut(into)?, borrow(other)?) };
        into.snapshot.merge(&other.snapshot);
        into.bytes = OnceLock::new();
        into.text = OnceLock::new();
        Ok(())
    })
}

/// The snapshot in the Prometheus text exposition format (version 0.0.4), for a scrape
/// endpoint (`Content-Type: text/plain; version=0.0.4`).
///
/// `text_out` receives a view into `metrics`, valid until it is freed or merged into.
///
/// # Errors
/// `MCP_OAUTH2_RESULT_NULL_PARAMETER`.
///
/// # Safety
/// `metrics` is NULL or live; `text_out` is NULL or writable.
/// Thread safety: see `mcp_oauth2_metrics`.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_metrics_text(
    metrics: *const mcp_oauth2_metrics,
    text_out: *mut mcp_oauth2_str,
) -> mcp_oauth2_result {
    boundary(|| {
        // SAFETY: caller contract: NULL or a live snapshot.
        let metrics = unsafe { borrow(metrics) }?;
        let text_out = out(text_out)?;
        let text = metrics.text.get_or_init(|| metrics.snapshot.prometheus_text());
        // SAFETY: checked by `out`; writable per the caller contract.
        unsafe { write_out(text_out, mcp_oauth2_str::of(text)) };
        Ok(())
    })
}

/// Frees a snapshot and sets `*metrics` to NULL (no-op for NULL, so twice is safe).
///
/// # Safety
/// `metrics` is NULL or points to a variable holding NULL or a snapshot from this library
/// not freed through another variable.
/// Thread safety: no other thread may use the snapshot during or after this call.
#[no_mangle]
pub unsafe extern "C" fn mcp_oauth2_metrics_free(metrics: *mut *mut mcp_oauth2_metrics) {
    // SAFETY: forwarded caller contract.
    boundary_void(|| unsafe { free_handle(metrics) });
}
