//! The blocking [`Transport`] on `ureq` (rustls), for threaded hosts (C, Go, the demo
//! proxy's tests, `Validator::authorize`).

use std::io::ErrorKind as IoKind;

use ureq::tls::TlsConfig;
use ureq::Agent;

use crate::request::{HttpRequest, HttpResponse, TransportError, TransportErrorKind, MAX_RESPONSE_BODY};
use crate::transport::Transport;
use crate::Config;

/// A blocking transport on `ureq` (rustls), configured from the validator's
/// configuration: `ssl_verify`, `keepalive`; the timeout comes with each request.
/// Share one per validator: it pools connections.
#[derive(Debug, Clone)]
pub struct UreqTransport {
    agent: Agent,
}

impl UreqTransport {
    /// A transport for the calls of a validator built from `config`.
    pub fn new(config: &Config) -> Self {
        let agent_config = Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .max_idle_connections(if config.keepalive { 16 } else { 0 })
            .max_idle_connections_per_host(if config.keepalive { 16 } else { 0 })
            .tls_config(TlsConfig::builder().disable_verification(!config.ssl_verify).build())
            .user_agent("mcp-oauth2")
            .build();
        UreqTransport { agent: agent_config.into() }
    }
}

impl Transport for UreqTransport {
    fn send(&self, request: &HttpRequest) -> Result<HttpResponse, TransportError> {
        let mut builder = ureq::http::Request::builder().method(request.method).uri(&request.url);
        for (name, value) in &request.headers {
            builder = builder.header(name, value);
        }
        let http_request = builder
            .body(request.body.clone())
            .map_err(|_| TransportError::new(TransportErrorKind::Other, "could not build the request"))?;
        let http_request = self.agent.configure_request(http_request).timeout_global(Some(request.timeout)).build();
        let mut response = self.agent.run(http_request).map_err(map_error)?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect();
        let body =
            response.body_mut().with_config().limit(MAX_RESPONSE_BODY as u64).read_to_vec().map_err(map_error)?;
        Ok(HttpResponse { status, headers, body })
    }
}

fn map_error(e: ureq::Error) -> TransportError {
    use TransportErrorKind as K;
    let kind = match &e {
        ureq::Error::Timeout(_) => K::Timeout,
        ureq::Error::BodyExceedsLimit(_) => K::BodyTooLarge,
        ureq::Error::HostNotFound | ureq::Error::ConnectionFailed => K::Connect,
        ureq::Error::Tls(_) | ureq::Error::Rustls(_) => K::Tls,
        ureq::Error::Io(io) => match io.kind() {
            IoKind::ConnectionRefused | IoKind::ConnectionReset | IoKind::ConnectionAborted | IoKind::NotConnected => {
                K::Connect
            }
            IoKind::TimedOut | IoKind::WouldBlock => K::Timeout,
            _ => K::Other,
        },
        _ => K::Other,
    };
    // ureq's messages name the failure, not the request: no credentials or body text.
    TransportError::new(kind, kind.as_str())
}
