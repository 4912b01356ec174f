//! The body of a forwarded response: the upstream's frames passed on as they arrive
//! (nothing is buffered), for as long as the token that allowed the request allows it.
//!
//! - At the token's `exp` ([`mcp_oauth2::Forward::valid_until`]; none = no end) the body
//!   ends.
//! - At [`mcp_oauth2::Forward::recheck_at`] (when the validator's cached answer about the
//!   token ages out) the same request is decided again, through `begin` like any request:
//!   every stream of one token rechecks at the same moment, and single flight makes that
//!   one authorization-server call. If the new decision forwards, the body goes on and the
//!   next recheck is scheduled from it; otherwise (revoked, expired, or the authorization
//!   server failing: 503) the body ends.
//!
//! A response is never cut for any other reason. Frames keep flowing while a recheck is in
//! flight. Timers are armed only while the upstream has nothing to send, so a short
//! response costs two clock reads.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use mcp_oauth2::Decision;
use tokio::task::JoinHandle;
use tokio::time::{Instant, Sleep};

use crate::serve::{log_line, BoxError};

/// Decides the stream's request again, as a task of its own (the proxy supplies it).
pub type Recheck = Box<dyn Fn() -> JoinHandle<Decision> + Send + Sync>;

/// Rechecks of one stream are at least this far apart, whatever the cache says (a
/// `cache_ttl_max` of 0 would otherwise ask the authorization server in a loop).
const MIN_RECHECK_INTERVAL: Duration = Duration::from_secs(1);

/// An upstream body that ends when the token stops allowing it.
pub struct Guarded<B> {
    inner: B,
    /// The token's `exp`.
    exp: Option<Instant>,
    /// The next recheck (none: the validator keeps no answer to age out).
    recheck_at: Option<Instant>,
    revalidation: Option<Recheck>,
    /// A recheck in flight.
    running: Option<JoinHandle<Decision>>,
    /// Wakes the body at the next deadline while the upstream is quiet.
    timer: Option<Pin<Box<Sleep>>>,
    ended: bool,
}

impl<B> Guarded<B> {
    /// Wraps `inner`: it ends at `valid_until`, and is rechecked at `recheck_at` with
    /// `revalidation` (without one there is no recheck).
    pub fn new(
        inner: B,
        valid_until: Option<SystemTime>,
        recheck_at: Option<SystemTime>,
        revalidation: Option<Recheck>,
    ) -> Self {
        let now = (Instant::now(), SystemTime::now());
        Guarded {
            inner,
            exp: valid_until.map(|t| instant_at(t, now)),
            recheck_at: recheck_at.filter(|_| revalidation.is_some()).map(|t| instant_at(t, now)),
            revalidation,
            running: None,
            timer: None,
            ended: false,
        }
    }

    fn end(&mut self, why: &str) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.ended = true;
        if let Some(task) = self.running.take() {
            task.abort();
        }
        log_line(format!("{} proxy stream closed: {why}", crate::serve::timestamp()));
        // A chunked stream (SSE) ends cleanly here; the client reconnects and is asked
        // for a valid token.
        Poll::Ready(None)
    }
}

/// The tokio instant of a wall-clock time (`now` read once for both clocks).
fn instant_at(t: SystemTime, now: (Instant, SystemTime)) -> Instant {
    match t.duration_since(now.1) {
        Ok(ahead) => now.0 + ahead,
        Err(_) => now.0,
    }
}

impl<B> HttpBody for Guarded<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        loop {
            if let Some(task) = &mut this.running {
                if let Poll::Ready(result) = Pin::new(task).poll(cx) {
                    this.running = None;
                    match result {
                        Ok(Decision::Forward(forward)) => {
                            let now = (Instant::now(), SystemTime::now());
                            this.exp = forward.valid_until().map(|t| instant_at(t, now));
                            this.recheck_at =
                                forward.recheck_at().map(|t| instant_at(t, now).max(now.0 + MIN_RECHECK_INTERVAL));
                        }
                        Ok(Decision::Respond(response)) => {
                            return this.end(&format!("the token is no longer allowed ({})", response.reason()));
                        }
                        Err(_) => return this.end("the recheck failed"),
                    }
                }
            }
            let now = Instant::now();
            if this.exp.is_some_and(|exp| exp <= now) {
                return this.end("the token expired");
            }
            if this.running.is_none() && this.recheck_at.is_some_and(|at| at <= now) {
                this.recheck_at = None;
                this.running = this.revalidation.as_ref().map(|recheck| recheck());
                continue; // poll it once: its completion wakes this body // poll it once: its completion wakes this body
            }
            if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
                return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
            }
            // The upstream is quiet: sleep until the next deadline.
            let recheck = if this.running.is_none() { this.recheck_at } else { None };
            let next = match (this.exp, recheck) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => match a.or(b) {
                    Some(t) => t,
                    None => return Poll::Pending,
                },
            };
            let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(next)));
            if timer.deadline() != next {
                timer.as_mut().reset(next);
            }
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
