//! The reverse proxy: every request goes through the validator; allowed ones are forwarded
//! with the decision's header changes and their response streamed back frame by frame,
//! ending at the token's `valid_until`.
//!
//! Validation strategy: `begin` runs on the async thread (it never blocks and answers
//! cache hits, metadata and malformed requests at once). Only on a cache miss does the
//! request move to tokio's blocking pool, where `Validator::authorize` performs the
//! introspection with the blocking ureq transport. That keeps the core's single flight
//! (concurrent misses for one token make one AS call), and an AS call never occupies an
//! async runtime thread. Driving `begin`/`resume` with the async client would lose single
//! flight, which lives only in `authorize`.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mcp_oauth2::{Decision, UreqTransport, Validator};
use tokio::time::Sleep;

use crate::serve::{full, json, Body, BoxError, RequestLog};

type UpstreamBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// Shared state of the proxy.
pub struct Proxy {
    validator: Validator,
    transport: Arc<UreqTransport>,
    client: Client<HttpsConnector<HttpConnector>, UpstreamBody>,
    /// `scheme://authority` of the upstream.
    upstream_origin: String,
    /// Path prefix of the upstream URL, without a trailing slash.
    upstream_prefix: String,
    /// Buffer POST bodies: `method_scopes` needs the JSON-RPC method.
    buffer_bodies: bool,
    max_body: u64,
    /// Bounds the blocking threads busy with AS calls: a flood of distinct unknown tokens
    /// queues here (cheaply, as async waiters) instead of growing the blocking pool.
    as_calls: Arc<tokio::sync::Semaphore>,
}

/// Concurrent authorization-server calls at most (each holds one blocking thread).
const MAX_AS_CALLS: usize = 64;

/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1), plus
/// `Proxy-Authorization`, which is for this hop.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

impl Proxy {
    /// A proxy in front of `upstream` (an `http://` or `https://` URL; its path is a prefix).
    pub fn new(validator: Validator, upstream: &str) -> Result<Self, String> {
        let uri: Uri = upstream.parse().map_err(|_| format!("--upstream: not a URL: {upstream:?}"))?;
        let scheme = match uri.scheme_str() {
            Some(scheme @ ("http" | "https")) => scheme,
            _ => return Err(format!("--upstream: must be an absolute http:// or https:// URL, got {upstream:?}")),
        };
        let authority = uri.authority().ok_or_else(|| format!("--upstream: no host in {upstream:?}"))?;
        if uri.query().is_some() {
            return Err("--upstream: must not have a query string".to_owned());
        }
        let transport = Arc::new(UreqTransport::new(validator.config()));
        let config = validator.config();
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.enforce_http(false); // the TLS wrapper below handles https:// URIs
                                  // Server certificates are checked against the Mozilla roots (webpki-roots).
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(Proxy {
            buffer_bodies: !config.method_scopes.is_empty(),
            max_body: config.max_request_body_size,
            upstream_origin: format!("{scheme}://{authority}"),
            upstream_prefix: uri.path().trim_end_matches('/').to_owned(),
            client: Client::builder(TokioExecutor::new()).build(connector),
            as_calls: Arc::new(tokio::sync::Semaphore::new(MAX_AS_CALLS)),
            transport,
            validator,
        })
    }

    /// Handles one client request. Never fails: problems become responses.
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let log = RequestLog::start("proxy", peer, &req);
        let (response, reason, detail) = self.decide_and_forward(req, peer).await;
        log.finish(response.status().as_u16(), &reason, detail.as_deref());
        response
    }

    async fn decide_and_forward(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> (Response<Body>, String, Option<String>) {
        let (parts, body) = req.into_parts();

        // Buffer the body only when the configuration needs to read it.
        let (body, buffered): (Option<Incoming>, Option<Bytes>) =
            if self.buffer_bodies && parts.method == hyper::Method::POST {
                match self.read_body(body).await {
                    Ok(b) => (None, Some(b)),
                    Err(response) => return (response, "request_body_unreadable".to_owned(), None),
                }
            } else {
                (Some(body), None)
            };

        let decision = self.decide(&parts, peer, buffered.as_deref()).await;
        let forward = match decision {
            Ok(Decision::Forward(f)) => f,
            Ok(Decision::Respond(r)) => {
                let reason = r.reason().as_str().to_owned();
                let detail = r.detail().map(str::to_owned);
                return (to_hyper(&r), reason, detail);
            }
            Err(detail) => {
                let body =
                    serde_json::json!({"error": "temporarily_unavailable", "error_description": "The gateway failed"});
                return (json(StatusCode::SERVICE_UNAVAILABLE, &body), "internal_error".to_owned(), Some(detail));
            }
        };

        // Build the upstream request: same method, path and query, minus hop-by-hop headers,
        // minus what the decision removes, plus what it sets.
        let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let uri = match format!("{}{}{}", self.upstream_origin, self.upstream_prefix, path_and_query).parse::<Uri>() {
            Ok(u) => u,
            Err(_) => return (bad_gateway(), "bad_upstream_uri".to_owned(), None),
        };
        let mut headers = parts.headers;
        strip_hop_by_hop(&mut headers);
        add_forwarded(&mut headers, &parts.uri, peer);
        headers.remove(hyper::header::HOST); // the client sets it from the upstream URI
        for name in forward.remove_headers() {
            headers.remove(name);
        }
        for (name, value) in forward.set_headers() {
            match (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
                (Ok(n), Ok(v)) => {
                    headers.append(n, v);
                }
                // The core never emits CR/LF/NUL; anything else unrepresentable fails closed.
                _ => {
                    let body = serde_json::json!({"error": "forbidden", "error_description": "A claim cannot be sent upstream"});
                    return (json(StatusCode::FORBIDDEN, &body), "claim_header_invalid".to_owned(), None);
                }
            }
        }
        let upstream_body: UpstreamBody = match (body, buffered) {
            (Some(incoming), _) => incoming.map_err(|e| Box::new(e) as BoxError).boxed(),
            (None, Some(bytes)) => Full::new(bytes).map_err(|never| match never {}).boxed(),
            (None, None) => Full::new(Bytes::new()).map_err(|never| match never {}).boxed(),
        };
        let mut upstream_req = Request::new(upstream_body);
        *upstream_req.method_mut() = parts.method;
        *upstream_req.uri_mut() = uri;
        *upstream_req.headers_mut() = headers;

        let upstream_res = match self.client.request(upstream_req).await {
            Ok(r) => r,
            Err(e) => {
                // hyper-util's error says connect/closed etc., never request content.
                return (bad_gateway(), "upstream_unavailable".to_owned(), Some(short_error(&e)));
            }
        };
        let (mut res_parts, res_body) = upstream_res.into_parts();
        strip_hop_by_hop(&mut res_parts.headers);
        let body = UntilExpiry::new(res_body, forward.valid_until()).boxed();
        (Response::from_parts(res_parts, body), "allowed".to_owned(), None)
    }

    async fn read_body(&self, body: Incoming) -> Result<Bytes, Response<Body>> {
        // Read at most one byte past the limit: enough for the core to answer 413.
        let limit = if self.max_body == 0 { usize::MAX } else { usize::try_from(self.max_body).unwrap_or(usize::MAX) };
        let mut collected = Vec::new();
        let mut body = Limited::new(body, limit.saturating_add(1));
        loop {
            match body.frame().await {
                None => break,
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        collected.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                    // Pass limit + 1 bytes: the validator answers 413 in its own format.
                    if collected.len() <= limit {
                        collected.resize(limit.saturating_add(1), 0);
                    }
                    break;
                }
                Some(Err(_)) => {
                    let body = serde_json::json!({"error": "invalid_request", "error_description": "The request body could not be read"});
                    return Err(json(StatusCode::BAD_REQUEST, &body));
                }
            }
        }
        Ok(Bytes::from(collected))
    }

    /// Runs the validator: at once when it can decide without I/O, on the blocking pool
    /// (single flight, ureq) when it needs the authorization server.
    async fn decide(
        &self,
        parts: &hyper::http::request::Parts,
        peer: SocketAddr,
        body: Option<&[u8]>,
    ) -> Result<Decision, String> {
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let method = parts.method.as_str();
        let headers: Vec<(&str, &[u8])> = parts.headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())).collect();
        let mut request = mcp_oauth2::Request::new(method, path).peer_addr(peer.ip());
        request.headers = headers;
        if let Some(b) = body {
            request = request.body(b);
        }
        match self.validator.begin(&request, SystemTime::now()) {
            mcp_oauth2::Step::Done(decision) => Ok(decision),
            step => {
                // Not led from here: the blocking driver below leads (or follows) itself.
                drop(step);
                // Owned copies for the blocking thread; dropped with it.
                let owned = OwnedRequest {
                    method: method.to_owned(),
                    path: path.to_owned(),
                    headers: parts
                        .headers
                        .iter()
                        .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
                        .collect(),
                    peer: peer.ip(),
                    body: body.map(<[u8]>::to_vec),
                };
                let validator = self.validator.clone();
                let transport = Arc::clone(&self.transport);
                let permit = Arc::clone(&self.as_calls)
                    .acquire_owned()
                    .await
                    .map_err(|_| "the AS call limiter is closed".to_owned())?;
                tokio::task::spawn_blocking(move || {
                    let _permit = permit; // released when the call is done
                    let mut request = mcp_oauth2::Request::new(&owned.method, &owned.path).peer_addr(owned.peer);
                    request.headers = owned.headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())).collect();
                    if let Some(b) = &owned.body {
                        request = request.body(b);
                    }
                    validator.authorize(&request, transport.as_ref())
                })
                .await
                .map_err(|e| format!("validation task failed: {e}"))
            }
        }
    }
}

struct OwnedRequest {
    method: String,
    path: String,
    headers: Vec<(String, Vec<u8>)>,
    peer: std::net::IpAddr,
    body: Option<Vec<u8>>,
}

/// Removes hop-by-hop headers, including every header named in `Connection`.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(hyper::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// `X-Forwarded-For` (the peer appended to what the client sent, as nginx does),
/// `X-Forwarded-Proto` and `X-Forwarded-Host` (what the client asked for), so the upstream
/// knows the original request. The client's own `X-Forwarded-Proto/Host` are replaced.
fn add_forwarded(headers: &mut HeaderMap, uri: &Uri, peer: SocketAddr) {
    let ip = peer.ip().to_string();
    let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prior) if !prior.trim().is_empty() => format!("{prior}, {ip}"),
        _ => ip,
    };
    let host = headers
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| uri.authority().map(|a| a.as_str().to_owned())); // HTTP/2 :authority
    headers.remove("x-forwarded-host");
    if let Some(v) = host.and_then(|h| HeaderValue::from_str(&h).ok()) {
        headers.insert("x-forwarded-host", v);
    }
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert("x-forwarded-for", v);
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
}

fn to_hyper(r: &mcp_oauth2::Response) -> Response<Body> {
    let mut response = Response::new(full(r.body().to_vec()));
    *response.status_mut() = StatusCode::from_u16(r.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    for (name, value) in r.headers() {
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
            response.headers_mut().append(n, v);
        }
    }
    response
}

fn bad_gateway() -> Response<Body> {
    json(
        StatusCode::BAD_GATEWAY,
        &serde_json::json!({"error": "bad_gateway", "error_description": "The MCP server is unreachable"}),
    )
}

fn short_error(e: &hyper_util::client::legacy::Error) -> String {
    if e.is_connect() {
        "connect failed".to_owned()
    } else {
        "upstream request failed".to_owned()
    }
}

/// An upstream response body that ends when the token that allowed it expires, so a
/// long-lived SSE stream cannot outlive its authorization. Frames pass through as they
/// arrive: nothing is buffered.
pub struct UntilExpiry<B> {
    inner: B,
    deadline: Pin<Box<Sleep>>,
    expired: bool,
}

impl<B> UntilExpiry<B> {
    /// Wraps `inner`, ending it at `valid_until`.
    pub fn new(inner: B, valid_until: Option<SystemTime>) -> Self {
        // No `exp`: a year stands for "never".
        let left = valid_until.map_or(std::time::Duration::from_secs(365 * 86_400), |v| {
            v.duration_since(SystemTime::now()).unwrap_or_default()
        });
        UntilExpiry { inner, deadline: Box::pin(tokio::time::sleep(left)), expired: false }
    }
}

impl<B> HttpBody for UntilExpiry<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.expired {
            return Poll::Ready(None);
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            self.expired = true;
            crate::serve::log_line(&format!(
                "{} proxy stream closed: the token's valid_until passed",
                crate::serve::timestamp()
            ));
            // A chunked stream (SSE) ends cleanly here; the client reconnects and re-authenticates.
            return Poll::Ready(None);
        }
        Pin::new(&mut self.inner).poll_frame(cx).map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.expired || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
