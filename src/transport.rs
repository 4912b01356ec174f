//! Performing the validator's HTTP requests for the blocking driver: the [`Transport`]
//! trait. The default `ureq` feature implements it (`ureq_transport.rs`).

use crate::request::{HttpRequest, HttpResponse, TransportError};

/// Performs one [`HttpRequest`] for the blocking driver
/// [`Validator::authorize`](crate::Validator::authorize).
///
/// Implementations must honour [`HttpRequest::timeout`] and refuse bodies over
/// [`MAX_RESPONSE_BODY`](crate::MAX_RESPONSE_BODY) with
/// [`TransportErrorKind::BodyTooLarge`](crate::TransportErrorKind::BodyTooLarge).
pub trait Transport {
    /// Sends the request and returns the complete response, or why it failed.
    ///
    /// # Errors
    /// A [`TransportError`] when no complete response arrived.
    fn send(&self, request: &HttpRequest) -> Result<HttpResponse, TransportError>;
}

impl<F> Transport for F
where
    F: Fn(&HttpRequest) -> Result<HttpResponse, TransportError>,
{
    fn send(&self, request: &HttpRequest) -> Result<HttpResponse, TransportError> {
        self(request)
    }
}
