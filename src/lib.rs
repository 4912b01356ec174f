//! # mcp-oauth2
//!
//! An embeddable OAuth 2 resource server for gateways in front of MCP (Model Context
//! Protocol) servers, configured like Kong's `ai-mcp-oauth2` plugin. For one request it
//! serves the Protected Resource Metadata document (RFC 9728), takes the bearer token
//! (RFC 6750), validates it by introspection (RFC 7662) or locally as a JWT access token
//! (RFC 9068) with the authorization server's keys (JWKS, found through RFC 8414 / OpenID
//! discovery when not configured), enforces the audience (RFC 8707)
//! and scopes, maps claims to upstream headers, and answers everything else with the status
//! and `WWW-Authenticate` challenge MCP clients need.
//!
//! The core performs no network I/O and reads no clock: [`Validator::begin`] takes the
//! request and the host's `now`, and either decides at once ([`Step::Done`]), asks the host
//! to perform an HTTP request ([`Step::Need`], continued with [`Pending::resume`]), or —
//! when another request is already asking the authorization server the same question —
//! hands it a [`Ticket`] to wait on ([`Step::Wait`], continued with [`Ticket::resume`]).
//! Blocking hosts call [`Validator::authorize`] with a [`Transport`] (the default `ureq`
//! feature provides [`UreqTransport`]): a loop over the same steps.
//!
//! ```
//! use mcp_oauth2::{Decision, HttpRequest, HttpResponse, Request, TransportError, Validator};
//!
//! let validator = Validator::from_json(r#"{
//!     "resource": "https://mcp.example.com/mcp",
//!     "authorization_servers": ["https://as.example.com"],
//!     "introspection_endpoint": "https://as.example.com/introspect",
//!     "client_id": "gateway",
//!     "client_secret": "gateway-secret",
//!     "claim_to_header": [{"claim": "sub", "header": "X-User-Id"}]
//! }"#)?;
//!
//! // A stand-in authorization server; use `UreqTransport::new(validator.config())` for real.
//! let as_server = |_: &HttpRequest| -> Result<HttpResponse, TransportError> {
//!     Ok(HttpResponse::new(200, "application/json",
//!         r#"{"active": true, "sub": "alice", "aud": "https://mcp.example.com/mcp"}"#))
//! };
//!
//! let request = Request::new("POST", "/mcp").header("Authorization", "Bearer abc123");
//! match validator.authorize(&request, &as_server) {
//!     Decision::Forward(forward) => {
//!         assert_eq!(forward.remove_headers().collect::<Vec<_>>(), ["Authorization", "X-User-Id"]);
//!         assert_eq!(forward.set_headers().collect::<Vec<_>>(), [("X-User-Id", "alice")]);
//!     }
//!     Decision::Respond(response) => panic!("denied: {}", response.status()),
//! }
//!
//! // Without a token: 401 with the challenge that points MCP clients at the metadata.
//! let decision = validator.authorize(&Request::new("POST", "/mcp"), &as_server);
//! let response = decision.as_response().unwrap();
//! assert_eq!(response.status(), 401);
//! assert_eq!(
//!     response.header("WWW-Authenticate").unwrap(),
//!     r#"Bearer resource_metadata="https://mcp.example.com/mcp/.well-known/oauth-protected-resource""#
//! );
//! # Ok::<(), mcp_oauth2::Error>(())
//! ```

// Unsafe code is allowed only in the C ABI (`ffi`), the one module that needs it.
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod addresses;
mod cache;
mod claims;
mod client_auth;
mod client_keys;
mod clock;
#[cfg(feature = "redis")]
mod cluster;
pub mod config;
mod decision;
mod discovery;
mod error;
mod exchange;
#[cfg(feature = "ffi")]
#[allow(unsafe_code)]
#[doc(hidden)]
pub mod ffi;
mod flight;
mod flow;
mod headers;
mod introspect;
mod jwks;
mod jwt;
mod metadata;
mod method;
mod metrics;
mod outbound;
mod policy;
mod request;
mod scopes;
mod token;
mod transport;
#[cfg(feature = "ureq")]
mod ureq_transport;
mod validator;

pub use crate::claims::MAX_HEADER_VALUE_LEN;
pub use crate::config::{Config, HttpVersion};
pub use crate::decision::{Decision, Forward, Identity, LogLevel, Reason, Refusal, Response};
pub use crate::error::{Error, ErrorKind};
pub use crate::flow::{Pending, Ready, Step, Ticket};
pub use crate::metrics::MetricsSnapshot;
pub use crate::policy::Policy;
pub use crate::request::{
    ClientCertificate, HttpRequest, HttpResponse, ProxyRoute, Purpose, Request, TransportError, TransportErrorKind,
    MAX_RESPONSE_BODY,
};
pub use crate::token::{Secret, MAX_TOKEN_LEN};
pub use crate::transport::Transport;
#[cfg(feature = "ureq")]
pub use crate::ureq_transport::UreqTransport;
pub use crate::validator::Validator;

/// The README's Rust examples, compiled by `cargo test --doc` so they cannot go stale.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
