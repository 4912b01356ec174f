//! The parts of a client request the validator reads, and the HTTP exchanges it asks the
//! host to perform.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::config::HttpVersion;
use crate::token::Secret;

/// The parts of one client request that the validator needs. Borrowed from the host's own
/// request representation; building one allocates only the header list.
#[derive(Clone, Default)]
pub struct Request<'a> {
    /// HTTP method, e.g. `GET`.
    pub method: &'a str,
    /// Request target path; a query string (`?…`) is ignored.
    pub path: &'a str,
    /// Header names and raw values, in the order received; a name may repeat.
    pub headers: Vec<(&'a str, &'a [u8])>,
    /// The address of the TCP peer (used for `trusted_proxies`).
    pub peer_addr: Option<IpAddr>,
    /// The buffered request body, when the host has it (needed for `method_scopes`).
    pub body: Option<&'a [u8]>,
}

impl<'a> Request<'a> {
    /// A request with a method and path and no headers.
    pub fn new(method: &'a str, path: &'a str) -> Self {
        Request { method, path, ..Request::default() }
    }

    /// Adds a header (builder style).
    pub fn header(mut self, name: &'a str, value: &'a (impl AsRef<[u8]> + ?Sized)) -> Self {
        self.headers.push((name, value.as_ref()));
        self
    }

    /// Sets the peer address (builder style).
    pub fn peer_addr(mut self, addr: IpAddr) -> Self {
        self.peer_addr = Some(addr);
        self
    }

    /// Sets the buffered body (builder style).
    pub fn body(mut self, body: &'a [u8]) -> Self {
        self.body = Some(body);
        self
    }

    /// The path without its query string.
    pub(crate) fn path_only(&self) -> &'a str {
        self.path.split_once('?').map_or(self.path, |(p, _)| p)
    }

    /// The value of the first header with this (lower-case) name.
    pub(crate) fn header_value(&self, lower_name: &str) -> Option<&'a [u8]> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(lower_name)).map(|(_, v)| *v)
    }
}

impl fmt::Debug for Request<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Header values may carry credentials: print names only.
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("path", &self.path_only())
            .field("headers", &self.headers.iter().map(|(n, _)| *n).collect::<Vec<_>>())
            .field("peer_addr", &self.peer_addr)
            .field("body_len", &self.body.map(<[u8]>::len))
            .finish()
    }
}

/// What an outbound call is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Purpose {
    /// RFC 7662 token introspection.
    Introspection,
    /// RFC 8414 / OpenID Connect authorization-server metadata (to find `jwks_uri`).
    Discovery,
    /// The authorization server's JSON Web Key Set (RFC 7517), for local JWT validation.
    Jwks,
    /// RFC 8693 token exchange: the validated token for one meant for the upstream.
    TokenExchange,
}

impl Purpose {
    /// A short name for logs, e.g. `introspection`.
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Introspection => "introspection",
            Purpose::Discovery => "discovery",
            Purpose::Jwks => "jwks",
            Purpose::TokenExchange => "token_exchange",
        }
    }
}

/// An HTTP request the host must perform for the validator (to the authorization server),
/// with everything a host doing its own I/O needs to perform it as configured: where to
/// connect (directly or through a forward proxy), which HTTP version, whether to reuse the
/// connection, whether to verify the server's certificate, and which client certificate to
/// present.
///
/// Its body and headers carry the token and client credentials, the client key and the
/// proxy credentials are secrets: `Debug` redacts them all.
#[derive(Clone)]
pub struct HttpRequest {
    /// `GET` or `POST`.
    pub method: &'static str,
    /// Absolute URL.
    pub url: String,
    /// Headers to send (the host adds `Host` and `Content-Length`).
    pub headers: Vec<(String, String)>,
    /// The body (form-urlencoded for introspection).
    pub body: Vec<u8>,
    /// The whole exchange must finish within this time; past it, report
    /// [`TransportErrorKind::Timeout`].
    pub timeout: Duration,
    /// What the call is for.
    pub purpose: Purpose,
    /// For `https://` URLs: verify the server's certificate chain and name (`ssl_verify`;
    /// on the mutual-TLS introspection call, `tls_client_auth_ssl_verify`). `false` is a
    /// deliberate operator choice (e.g. a self-signed authorization server): skip the
    /// verification then. Meaningless for `http://` URLs.
    pub verify_certificate: bool,
    /// The client certificate to present in the TLS handshake (RFC 8705 mutual TLS:
    /// `client_auth` `tls_client_auth` or `self_signed_tls_client_auth`, on the
    /// introspection call only). `None`: present none.
    pub client_certificate: Option<ClientCertificate>,
    /// The forward proxy to send the request through (`http_proxy` for `http://` URLs,
    /// `https_proxy` for `https://` URLs, unless `no_proxy` names the host). `None`: connect
    /// to the URL's host directly.
    pub proxy: Option<ProxyRoute>,
    /// The HTTP version to speak (`http_version`).
    pub http_version: HttpVersion,
    /// Whether the connection may be kept open and reused for later calls (`keepalive`);
    /// `false`: a fresh connection for this call, closed after it.
    pub keepalive: bool,
}

impl fmt::Debug for HttpRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpRequest")
            .field("method", &self.method)
            .field("url", &self.url)
            .field("headers", &self.headers.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>())
            .field("body", &format_args!("[redacted; {} bytes]", self.body.len()))
            .field("timeout", &self.timeout)
            .field("purpose", &self.purpose)
            .field("verify_certificate", &self.verify_certificate)
            .field("client_certificate", &self.client_certificate)
            .field("proxy", &self.proxy)
            .field("http_version", &self.http_version)
            .field("keepalive", &self.keepalive)
            .finish()
    }
}

/// The TLS client certificate an [`HttpRequest`] must be sent with (RFC 8705), from
/// `tls_client_auth_cert` and `tls_client_auth_key`, checked at construction: the
/// certificate PEM holds at least one certificate (the first is the client's, any others
/// its chain) and the key PEM one private key (PKCS#8, PKCS#1 RSA or SEC1 EC) that belongs
/// to it. Cheap to clone (shared). `Debug` prints neither.
#[derive(Clone)]
pub struct ClientCertificate {
    pem: Arc<(String, Secret)>,
}

impl ClientCertificate {
    pub(crate) fn new(cert_pem: String, key_pem: Secret) -> Self {
        ClientCertificate { pem: Arc::new((cert_pem, key_pem)) }
    }

    /// The certificate chain, PEM (`-----BEGIN CERTIFICATE-----` blocks; the client's own
    /// certificate first), as configured.
    pub fn cert_pem(&self) -> &str {
        &self.pem.0
    }

    /// The private key, PEM, as configured. A secret: never log it.
    pub fn key_pem(&self) -> &str {
        self.pem.1.expose()
    }
}

impl fmt::Debug for ClientCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientCertificate([redacted])")
    }
}

impl PartialEq for ClientCertificate {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.pem, &other.pem) || *self.pem == *other.pem
    }
}

impl Eq for ClientCertificate {}

/// A forward proxy an [`HttpRequest`] goes through (decided by the core from `http_proxy`,
/// `https_proxy`, their `*_proxy_authorization` and `no_proxy`).
///
/// How to use it (RFC 9110 §9.3.6, RFC 9112 §3.2): for an `https://` URL, open a tunnel
/// with `CONNECT host:port` to the proxy (sending [`ProxyRoute::authorization`] as
/// `Proxy-Authorization` on the `CONNECT`), then TLS to the authorization server through it
/// (end to end: the proxy sees no plaintext). For an `http://` URL, either send the request
/// to the proxy in absolute form (`POST http://host/path HTTP/1.1`, with
/// `Proxy-Authorization` on it) or tunnel it the same way; the built-in ureq transport
/// tunnels both. A proxy answer other than 2xx to the `CONNECT` (407: wrong credentials) is
/// a failed call (report [`TransportErrorKind::Connect`]).
///
/// Cheap to clone (shared). `Debug` redacts the authorization.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyRoute {
    inner: Arc<(String, Option<Secret>)>,
}

impl ProxyRoute {
    pub(crate) fn new(url: String, authorization: Option<Secret>) -> Self {
        ProxyRoute { inner: Arc::new((url, authorization)) }
    }

    /// The proxy's URL, `http://host[:port]` (port 80 when absent), as configured.
    pub fn url(&self) -> &str {
        &self.inner.0
    }

    /// The complete `Proxy-Authorization` header value (e.g. `Basic dXNlcjpwYXNz`), when
    /// configured. A secret: never log it.
    pub fn authorization(&self) -> Option<&str> {
        self.inner.1.as_ref().map(Secret::expose)
    }
}

impl fmt::Debug for ProxyRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyRoute")
            .field("url", &self.url())
            .field("authorization", &self.inner.1.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

/// The answer to an [`HttpRequest`].
#[derive(Clone, Default)]
pub struct HttpResponse {
    /// HTTP status code.
    pub status: u16,
    /// Response headers (only `Content-Type` is read).
    pub headers: Vec<(String, String)>,
    /// Response body; at most [`MAX_RESPONSE_BODY`] bytes are accepted.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// A response with a status, a `Content-Type` and a body.
    pub fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        HttpResponse { status, headers: vec![("Content-Type".to_owned(), content_type.to_owned())], body: body.into() }
    }

    pub(crate) fn header(&self, lower_name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(lower_name)).map(|(_, v)| v.as_str())
    }
}

impl fmt::Debug for HttpResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpResponse")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .field("body", &format_args!("[{} bytes]", self.body.len()))
            .finish()
    }
}

/// Largest authorization-server response body accepted (1 MiB); larger is a failure (503).
pub const MAX_RESPONSE_BODY: usize = 1024 * 1024;

/// Why an outbound call failed before a complete response arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransportErrorKind {
    /// Could not connect (refused, DNS, unreachable).
    Connect,
    /// The call did not complete within its timeout.
    Timeout,
    /// TLS handshake or certificate verification failed.
    Tls,
    /// The response body exceeded [`MAX_RESPONSE_BODY`].
    BodyTooLarge,
    /// Anything else (malformed HTTP, I/O error).
    Other,
}

impl TransportErrorKind {
    /// A short name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            TransportErrorKind::Connect => "connect",
            TransportErrorKind::Timeout => "timeout",
            TransportErrorKind::Tls => "tls",
            TransportErrorKind::BodyTooLarge => "body_too_large",
            TransportErrorKind::Other => "other",
        }
    }
}

/// A failed outbound call. Its message must not contain credentials or response text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportError {
    /// The kind of failure.
    pub kind: TransportErrorKind,
    /// A short description for logs.
    pub message: String,
}

impl TransportError {
    /// A transport error of a kind with a message.
    pub fn new(kind: TransportErrorKind, message: impl Into<String>) -> Self {
        TransportError { kind, message: message.into() }
    }
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.message)
    }
}

impl std::error::Error for TransportError {}
