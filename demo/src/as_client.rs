//! The HTTP client of the proxy: the authorization-server calls the validator asks for
//! (`Step::Need`), performed on the async runtime (no blocking pool), and the TLS
//! connector both this client and the upstream client use.
//!
//! Every call honours what the validator's [`HttpRequest`] and configuration say:
//! `timeout` bounds the whole exchange (→ [`TransportErrorKind::Timeout`]), a body over
//! [`MAX_RESPONSE_BODY`] is refused (→ `BodyTooLarge`), redirects are never followed (a 3xx
//! goes back to the validator, which treats it as a failure), connect and TLS failures are
//! told apart, the request's `verify_certificate` (`ssl_verify`, or
//! `tls_client_auth_ssl_verify` on the mutual-TLS call) decides whether the server
//! certificate is verified (against the Mozilla roots), its `client_certificate` is
//! presented in the TLS handshake (RFC 8705 `tls_client_auth`,
//! `self_signed_tls_client_auth`), its `proxy` (`http_proxy`, `https_proxy`, minus
//! `no_proxy`: the core decides) is reached with a `CONNECT` tunnel (with its
//! `Proxy-Authorization`; TLS stays end to end with the AS), `http_version` 1.0 is spoken
//! when asked for, and `keepalive` decides whether connections are pooled.

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Body as _;
use hyper::Uri;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mcp_oauth2::{
    ClientCertificate, Config, HttpRequest, HttpResponse, HttpVersion, ProxyRoute, TransportError, TransportErrorKind,
    MAX_RESPONSE_BODY,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::sync::Semaphore;

/// Authorization-server calls in flight at most. More wait (as cheap async tasks) for a
/// free slot: a flood of distinct unknown tokens cannot open connections without bound.
const MAX_AS_CALLS: usize = 64;

type AsHttpClient = Client<HttpsConnector<Route>, Full<Bytes>>;

/// The TLS settings and route of a call: clients are kept per distinct value.
#[derive(Clone, PartialEq)]
struct Settings {
    verify: bool,
    certificate: Option<ClientCertificate>,
    proxy: Option<ProxyRoute>,
}

/// The client for authorization-server calls.
pub struct AsClient {
    /// For calls verifying as `ssl_verify` says, without a client certificate or a
    /// forward proxy.
    client: AsHttpClient,
    ssl_verify: bool,
    /// Clients for the other settings asked for (the mutual-TLS call: its certificate and
    /// `tls_client_auth_ssl_verify`; calls through a forward proxy), built on first use,
    /// each with its own pool.
    others: Mutex<Vec<(Settings, AsHttpClient)>>,
    keepalive: bool,
    calls: Semaphore,
}

impl AsClient {
    /// A client configured by the validator's configuration (`ssl_verify`, `keepalive`).
    pub fn new(config: &Config) -> Self {
        AsClient {
            client: http_client(
                as_connector(config.ssl_verify, None, None).expect("no certificate, no proxy"),
                config.keepalive,
            ),
            ssl_verify: config.ssl_verify,
            others: Mutex::new(Vec::new()),
            keepalive: config.keepalive,
            calls: Semaphore::new(MAX_AS_CALLS),
        }
    }

    /// The client for a request's TLS settings and route.
    fn client_for(&self, settings: Settings) -> Result<AsHttpClient, TransportError> {
        if settings.verify == self.ssl_verify && settings.certificate.is_none() && settings.proxy.is_none() {
            return Ok(self.client.clone());
        }
        let mut others = self.others.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, client)) = others.iter().find(|(s, _)| *s == settings) {
            return Ok(client.clone());
        }
        // The configuration's certificate, key and proxy URL were checked at construction; a
        // failure here fails the call (503), never with the key's text.
        let connector = as_connector(settings.verify, settings.certificate.as_ref(), settings.proxy.as_ref())
            .map_err(|_| error(TransportErrorKind::Tls))?;
        let client = http_client(connector, self.keepalive);
        others.push((settings, client.clone()));
        Ok(client)
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
        let HttpRequest {
            method,
            url,
            headers,
            body,
            verify_certificate,
            client_certificate,
            proxy,
            http_version,
            keepalive,
            ..
        } = request;
        let client =
            self.client_for(Settings { verify: verify_certificate, certificate: client_certificate, proxy })?;
        let mut builder =
            hyper::Request::builder().method(method).uri(url.as_str()).header(hyper::header::USER_AGENT, "mcp-oauth2");
        if http_version == HttpVersion::Http10 {
            builder = builder.version(hyper::Version::HTTP_10);
        }
        if !keepalive {
            builder = builder.header(hyper::header::CONNECTION, "close");
        }
        for (name, value) in &headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        let request = builder.body(Full::new(Bytes::from(body))).map_err(|_| error(TransportErrorKind::Other))?;
        let response = client.request(request).await.map_err(|e| error(classify(&e)))?;
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

fn http_client(connector: HttpsConnector<Route>, keepalive: bool) -> AsHttpClient {
    let mut builder = Client::builder(TokioExecutor::new());
    if !keepalive {
        builder.pool_max_idle_per_host(0);
    }
    builder.build(connector)
}

/// An `http://` and `https://` connector (TCP_NODELAY, HTTP/1.1 over TLS): server
/// certificates are verified against the Mozilla roots (webpki-roots) unless `verify` is
/// false (the configuration's `ssl_verify: false`). ring is the crypto provider.
pub fn connector(verify: bool) -> HttpsConnector<HttpConnector> {
    let tls = tls_config(verify, None).expect("no client certificate to read");
    hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1().wrap_connector(tcp())
}

/// The connector of authorization-server calls: as [`connector`], presenting
/// `client_certificate` (PEM chain and key) in TLS handshakes, and through `proxy`'s
/// `CONNECT` tunnel. Errors say which part could not be used, never its content.
fn as_connector(
    verify: bool,
    client_certificate: Option<&ClientCertificate>,
    proxy: Option<&ProxyRoute>,
) -> Result<HttpsConnector<Route>, String> {
    let tls = tls_config(verify, client_certificate)?;
    let route = match proxy {
        None => Route::Direct(tcp()),
        Some(p) => {
            let url: Uri = p.url().parse().map_err(|_| "the forward proxy's URL is not usable".to_owned())?;
            let mut tunnel = Tunnel::new(url, tcp());
            if let Some(auth) = p.authorization() {
                let mut value = hyper::header::HeaderValue::from_str(auth)
                    .map_err(|_| "the forward proxy's authorization is not a header value".to_owned())?;
                value.set_sensitive(true);
                tunnel = tunnel.with_auth(value);
            }
            Route::Tunnel(tunnel)
        }
    };
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(route))
}

fn tcp() -> HttpConnector {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false); // the TLS wrapper handles https:// URIs
    http
}

fn tls_config(verify: bool, client_certificate: Option<&ClientCertificate>) -> Result<ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions");
    let builder = if verify {
        let roots = RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
        builder.with_root_certificates(roots)
    } else {
        builder.dangerous().with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
    };
    Ok(match client_certificate {
        None => builder.with_no_client_auth(),
        Some(c) => {
            let chain = CertificateDer::pem_slice_iter(c.cert_pem().as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| "tls_client_auth_cert: not a PEM certificate chain".to_owned())?;
            let key = PrivateKeyDer::from_pem_slice(c.key_pem().as_bytes())
                .map_err(|_| "tls_client_auth_key: not a PEM private key".to_owned())?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|_| "tls_client_auth_cert: the certificate and key are not usable together".to_owned())?
        }
    })
}

type BoxError = Box<dyn StdError + Send + Sync>;

/// Where an authorization-server connection goes: to the URL's host, or through a forward
/// proxy's `CONNECT` tunnel (for `http://` URLs too: the core allows either form, and a
/// tunnel keeps one code path). TLS, when the URL is `https://`, runs inside it.
#[derive(Clone)]
pub enum Route {
    Direct(HttpConnector),
    Tunnel(Tunnel<HttpConnector>),
}

impl tower_service::Service<Uri> for Route {
    type Response = TokioIo<tokio::net::TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self {
            Route::Direct(c) => c.poll_ready(cx).map_err(Into::into),
            Route::Tunnel(t) => t.poll_ready(cx).map_err(Into::into),
        }
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        match self {
            Route::Direct(c) => {
                let connecting = c.call(dst);
                Box::pin(async move { connecting.await.map_err(Into::into) })
            }
            Route::Tunnel(t) => {
                // The tunnel asks for port 443 when the URL names none: give it the
                // scheme's own.
                let connecting = t.call(with_port(dst));
                Box::pin(async move { connecting.await.map_err(Into::into) })
            }
        }
    }
}

/// `dst` with its port written out (80 for http, 443 for https).
fn with_port(dst: Uri) -> Uri {
    if dst.port().is_some() {
        return dst;
    }
    let port = if dst.scheme_str() == Some("https") { 443 } else { 80 };
    let Some(authority) = dst.host().and_then(|host| format!("{host}:{port}").parse().ok()) else {
        return dst;
    };
    let mut parts = dst.clone().into_parts();
    parts.authority = Some(authority);
    Uri::from_parts(parts).unwrap_or(dst)
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
