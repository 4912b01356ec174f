//! The HTTP client of the proxy: the authorization-server calls the validator asks for
//! (`Step::Need`), performed on the async runtime (no blocking pool), and the TLS
//! connector both this client and the upstream client use.
//!
//! Every call honours what the validator's [`HttpRequest`] and configuration say:
//! `timeout` bounds the whole exchange (→ [`TransportErrorKind::Timeout`]), a body over
//! [`MAX_RESPONSE_BODY`] is refused (→ `BodyTooLarge`), redirects are never followed (a 3xx
//! goes back to the validator, which treats it as a failure), connect and TLS failures are
//! told apart, `ssl_verify` decides whether the server certificate is verified (against
//! the Mozilla roots), and `keepalive` whether connections are pooled.

use std::error::Error as StdError;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Body as _;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mcp_oauth2::{Config, HttpRequest, HttpResponse, TransportError, TransportErrorKind, MAX_RESPONSE_BODY};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::sync::Semaphore;

/// Authorization-server calls in flight at most. More wait (as cheap async tasks) for a
/// free slot: a flood of distinct unknown tokens cannot open connections without bound.
const MAX_AS_CALLS: usize = 64;

/// The client for authorization-server calls.
pub struct AsClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    calls: Semaphore,
}

impl AsClient {
    /// A client configured by the validator's configuration (`ssl_verify`, `keepalive`).
    pub fn new(config: &Config) -> Self {
        let mut builder = Client::builder(TokioExecutor::new());
        if !config.keepalive {
            builder.pool_max_idle_per_host(0);
        }
        AsClient { client: builder.build(connector(config.ssl_verify)), calls: Semaphore::new(MAX_AS_CALLS) }
    }

    /// Performs one call the validator asked for. The message of an error names the
    /// failure only (never the request's credentials or the response's text).
    pub async fn send(&self, request: HttpRequest) -> Result<HttpResponse, TransportError> {
        let _slot = self.calls.acquire().await.map_err(|_| error(TransportErrorKind::Other))?;
        let timeout = request.timeout;
        match tokio::time::timeout(timeout, self.exchange(request)).await {
            Ok(result) => result,
            Err(_) => Err(error(TransportErrorKind::Timeout)),
        }
    }

    async fn exchange(&self, request: HttpRequest) -> Result<HttpResponse, TransportError> {
        let HttpRequest { method, url, headers, body, .. } = request;
        let mut builder =
            hyper::Request::builder().method(method).uri(url.as_str()).header(hyper::header::USER_AGENT, "mcp-oauth2");
        for (name, value) in &headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        let request = builder.body(Full::new(Bytes::from(body))).map_err(|_| error(TransportErrorKind::Other))?;
        let response = self.client.request(request).await.map_err(|e| error(classify(&e)))?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect();
        let body = response.into_body();
        if body.size_hint().lower() > MAX_RESPONSE_BODY as u64 {
            return Err(error(TransportErrorKind::BodyTooLarge));
        }
        let body = Limited::new(body, MAX_RESPONSE_BODY).collect().await.map_err(|e| {
            error(if e.is::<http_body_util::LengthLimitError>() {
                TransportErrorKind::BodyTooLarge
            } else {
                TransportErrorKind::Other
            })
        })?;
        Ok(HttpResponse { status, headers, body: Vec::from(body.to_bytes()) })
    }
}

fn error(kind: TransportErrorKind) -> TransportError {
    TransportError::new(kind, kind.as_str())
}

/// What a failed exchange was: a TLS failure anywhere in the error's chain, else a
/// connect failure, else something else (the connection closed, malformed HTTP).
fn classify(e: &hyper_util::client::legacy::Error) -> TransportErrorKind {
    if is_tls(e) {
        TransportErrorKind::Tls
    } else if e.is_connect() {
        TransportErrorKind::Connect
    } else {
        TransportErrorKind::Other
    }
}

fn is_tls(e: &(dyn StdError + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(err) = next {
        if err.is::<rustls::Error>() {
            return true;
        }
        // `io::Error::source` skips the error it wraps: look at that one too.
        if let Some(inner) = err.downcast_ref::<std::io::Error>().and_then(std::io::Error::get_ref) {
            if is_tls(inner) {
                return true;
            }
        }
        next = err.source();
    }
    false
}

/// An `http://` and `https://` connector (TCP_NODELAY, HTTP/1.1 over TLS): server
/// certificates are verified against the Mozilla roots (webpki-roots) unless `verify` is
/// false (the configuration's `ssl_verify: false`). ring is the crypto provider.
pub fn connector(verify: bool) -> HttpsConnector<HttpConnector> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions");
    let tls = if verify {
        let roots = RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder.dangerous().with_custom_certificate_verifier(Arc::new(NoVerification(provider))).with_no_client_auth()
    };
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false); // the TLS wrapper handles https:// URIs
    hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1().wrap_connector(http)
}

/// `ssl_verify: false`: any certificate is accepted (the handshake's signatures are
/// still checked, so the session is with the holder of the presented key).
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
