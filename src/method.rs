//! The one interface of every way to validate a token (introspection, local JWT): start,
//! then resume with each HTTP response it asked for, until it yields claims or an outcome.
//! The validator is a small begin/resume machine over it.

use std::borrow::Cow;

use serde_json::{Map, Value};

use crate::clock::UnixMs;
use crate::policy::Outcome;
use crate::request::{HttpRequest, HttpResponse, TransportError};
use crate::token::Secret;

/// The result of one HTTP exchange the host performed.
pub(crate) type HttpResult = Result<HttpResponse, TransportError>;

/// Where a validation stands after a step.
pub(crate) enum Progress {
    /// The token is genuine and active: the policy's token rules apply to these claims. The
    /// second member is the raw introspection result as the host sees it
    /// (`introspection_format`), when configured.
    Claims(Map<String, Value>, Option<Box<str>>),
    /// Decided without claims (rejected, or the authorization server failed).
    Done(Outcome),
    /// Perform this request, then resume with the state.
    Need(HttpRequest, MethodState),
}

/// What a validation waits for (the state of every method, so that a pending validation
/// is one type).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MethodState {
    /// The introspection response.
    Introspect,
    /// Authorization-server metadata or a key set for local JWT validation.
    Jwt(JwtStep),
    /// Authorization-server metadata or a key set to verify a signed (RFC 9701)
    /// introspection answer, kept here meanwhile.
    IntrospectKeys(Box<IntrospectKeys>),
}

/// A signed introspection answer waiting for the keys that verify it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IntrospectKeys {
    /// The compact JWS the authorization server answered (token facts: redacted).
    pub(crate) response: Secret,
    /// What is being fetched.
    pub(crate) step: JwtStep,
}

/// What a pending local-JWT fetch is for (the JWT method's state, also used to verify
/// signed introspection answers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum JwtStep {
    /// Metadata candidate `candidate` (of the one authorization server bound to the
    /// token's issuer), attempt `attempt` (from 1); `transient` is the last transient
    /// failure seen for that server.
    Discover { candidate: usize, attempt: u32, transient: Option<Cow<'static, str>> },
    /// The key set at `url` (cache miss or expiry), for key slot `slot`.
    FetchKeys { slot: usize, url: String },
    /// The key set at `url` again, because the token's `kid` is not in the cached set.
    RefetchKeys { slot: usize, url: String },
}

/// A way to validate a token.
pub(crate) trait TokenValidation: Send + Sync {
    /// Starts validating `token` at `now`.
    fn start(&self, token: &str, now: UnixMs) -> Progress;

    /// Continues after the HTTP request of `state`, with its result.
    fn resume(&self, token: &str, state: MethodState, result: HttpResult, now: UnixMs) -> Progress;
}
