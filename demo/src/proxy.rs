//! The reverse proxy: every request goes through the validator; allowed ones are forwarded
//! with the decision's header changes and their response streamed back frame by frame
//! (see [`crate::stream`] for how a long-lived response follows its token).
//!
//! Validation runs on the async runtime: `Validator::begin` decides cache hits, metadata
//! and malformed requests at once; on a miss it hands this proxy the authorization-server
//! request to perform (`Step::Need`, done with the async [`AsClient`], then
//! `Pending::resume`) or, when another request already asks about the same token, a
//! ticket to wait on (`Step::Wait`). No thread ever blocks on an AS call.
//!
//! With the cluster cache (`cluster_cache_strategy: redis`), a leading introspection or
//! exchange step first asks Redis (`Pending::try_cluster`, the library's blocking client)
//! on tokio's blocking pool, never on the event loop; Redis's warnings are logged at
//! `warn` (see [`Proxy::watch_cluster`]).
//!
//! Two operations endpoints answer before the validator (loopback peers only, unless
//! `--ops-allow-remote`): `GET /metrics` (the validator's Prometheus text) and, with
//! `--admin-evict`, `POST /_mcp_oauth2/evict` (see [`Ops`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::http::uri::{Authority, PathAndQuery, Scheme};
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mcp_oauth2::config::ClusterCacheStrategy;
use mcp_oauth2::{Decision, Step, Validator};

use crate::as_client::{self, AsClient};
use crate::serve::{full, json, log_line, timestamp, Body, BoxError, RequestLog};
use crate::stream::Guarded;

type UpstreamBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// Shared state of the proxy.
pub struct Proxy {
    validator: Validator,
    as_client: Arc<AsClient>,
    client: Client<HttpsConnector<HttpConnector>, UpstreamBody>,
    upstream_scheme: Scheme,
    upstream_authority: Authority,
    /// Path prefix of the upstream URL, without a trailing slash (often empty).
    upstream_prefix: String,
    /// Buffer POST bodies: `method_scopes` need the JSON-RPC method.
    buffer_bodies: bool,
    max_body: u64,
    /// Decisions read only the method, the path and `Authorization`.
    fast_path: bool,
    /// The names of `Policy::remove_headers` and `Policy::claim_headers`, parsed once.
    remove_names: Vec<HeaderName>,
    claim_names: Vec<HeaderName>,
    /// `cluster_cache_strategy: redis`: leading steps ask Redis first.
    cluster: bool,
    ops: Ops,
}

/// The operations endpoints, answered by the proxy itself before any validation.
#[derive(Debug, Clone)]
pub struct Ops {
    /// `GET <path>`: the validator's metrics in the Prometheus text format (`None`: off,
    /// the path is an ordinary protected path).
    pub metrics_path: Option<String>,
    /// `POST /_mcp_oauth2/evict` (`--admin-evict`; off by default: the path is then an
    /// ordinary protected path).
    pub admin_evict: bool,
    /// Serve them to any peer (`--ops-allow-remote`); by default only to loopback peers,
    /// others get `403`.
    pub allow_remote: bool,
}

impl Default for Ops {
    fn default() -> Self {
        Ops { metrics_path: Some(METRICS_PATH.to_owned()), admin_evict: false, allow_remote: false }
    }
}

/// The default path of the metrics endpoint.
pub const METRICS_PATH: &str = "/metrics";
/// The path of the admin evict endpoint.
pub const EVICT_PATH: &str = "/_mcp_oauth2/evict";
/// The largest body the evict endpoint reads (a token is at most 8 KiB).
const MAX_EVICT_BODY: usize = 16 * 1024;
/// How often the cluster cache's warnings are looked for (the library offers one a
/// minute at most while Redis fails).
const CLUSTER_WARNING_EVERY: Duration = Duration::from_secs(1);

/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1), plus
/// `Proxy-Authorization`, which is for this hop.
const HOP_BY_HOP: [HeaderName; 9] = [
    hyper::header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    hyper::header::PROXY_AUTHENTICATE,
    hyper::header::PROXY_AUTHORIZATION,
    hyper::header::TE,
    hyper::header::TRAILER,
    hyper::header::TRANSFER_ENCODING,
    hyper::header::UPGRADE,
];

impl Proxy {
    /// A proxy in front of `upstream` (an `http://` or `https://` URL; its path is a prefix).
    pub fn new(validator: Validator, upstream: &str, ops: Ops) -> Result<Self, String> {
        let uri: Uri = upstream.parse().map_err(|_| format!("--upstream: not a URL: {upstream:?}"))?;
        let upstream_scheme = match uri.scheme_str() {
            Some("http") => Scheme::HTTP,
            Some("https") => Scheme::HTTPS,
            _ => return Err(format!("--upstream: must be an absolute http:// or https:// URL, got {upstream:?}")),
        };
        let upstream_authority = uri.authority().ok_or_else(|| format!("--upstream: no host in {upstream:?}"))?.clone();
        if upstream_authority.as_str().contains('@') {
            return Err("--upstream: must not contain user information (user@host)".to_owned());
        }
        if uri.query().is_some() {
            return Err("--upstream: must not have a query string".to_owned());
        }
        let policy = validator.policy();
        let names = |names: &mut dyn Iterator<Item = &str>| -> Result<Vec<HeaderName>, String> {
            names
                .map(|n| HeaderName::from_bytes(n.as_bytes()).map_err(|_| format!("header name {n:?} is not valid")))
                .collect()
        };
        let remove_names = names(&mut policy.remove_headers())?;
        let claim_names = names(&mut policy.claim_headers())?;
        // The upstream keeps connections alive (hyper's pool, no idle limit per host).
        let client = Client::builder(TokioExecutor::new()).build(as_client::connector(true));
        Ok(Proxy {
            buffer_bodies: policy.reads_body(),
            max_body: policy.max_request_body_size(),
            fast_path: policy.fast_path(),
            as_client: Arc::new(AsClient::new(validator.config())),
            upstream_scheme,
            upstream_authority,
            upstream_prefix: uri.path().trim_end_matches('/').to_owned(),
            client,
            remove_names,
            claim_names,
            cluster: validator.config().cluster_cache_strategy == ClusterCacheStrategy::Redis,
            ops,
            validator,
        })
    }

    /// With the cluster cache: a task that logs the library's warning about Redis (at most
    /// one a minute while it fails: unreachable, refusing the password, too slow) at
    /// `warn`. The warning names Redis's host and port and what failed, never the password.
    /// Ends when the proxy is dropped.
    pub fn watch_cluster(self: &Arc<Self>) {
        if !self.cluster {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(CLUSTER_WARNING_EVERY);
            loop {
                every.tick().await;
                let Some(proxy) = weak.upgrade() else { return };
                if let Some(warning) = proxy.validator.cluster_warning(SystemTime::now()) {
                    log_line(format!("{} proxy warn: {warning}", timestamp()));
                }
            }
        });
    }

    /// Handles one client request. Never fails: problems become responses.
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let log = RequestLog::start("proxy", peer, &req);
        let (response, reason, detail) = match self.operation(&req) {
            Some(op) => self.operate(op, req, peer).await,
            None => self.decide_and_forward(req, peer).await,
        };
        log.finish(response.status().as_u16(), reason, detail.as_deref());
        response
    }

    async fn decide_and_forward(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> (Response<Body>, &'static str, Option<String>) {
        let (parts, body) = req.into_parts();

        // Buffer the body only when the configuration needs to read it.
        let (body, buffered): (Option<Incoming>, Option<Bytes>) = if self.buffer_bodies && parts.method == Method::POST
        {
            match self.read_body(body).await {
                Ok(b) => (None, Some(b)),
                Err(response) => return (response, "request_body_unreadable", None),
            }
        } else {
            (Some(body), None)
        };

        let decision = {
            let request = validator_request(&parts.method, &parts.uri, &parts.headers, self.fast_path, peer.ip());
            let request = match &buffered {
                Some(b) => request.body(b),
                None => request,
            };
            self.decide(&request).await
        };
        let forward = match decision {
            Decision::Forward(f) => f,
            Decision::Respond(r) => return (to_hyper(&r), r.reason().as_str(), r.detail().map(str::to_owned)),
        };

        // The upstream URI from parts: the configured scheme and authority, always.
        let Some(uri) = self.upstream_uri(parts.uri.path_and_query()) else {
            let body = serde_json::json!({"error": "invalid_request", "error_description": "The request target must be a path"});
            return (json(StatusCode::BAD_REQUEST, &body), "invalid_request_target", None);
        };
        // What re-validating this request needs, should its response outlive the answer
        // the validator keeps about the token.
        let revalidation = forward.recheck_at().map(|_| Revalidation {
            proxy: Arc::clone(&self),
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            headers: if self.fast_path {
                // A forwarded request has exactly one Authorization header.
                ClientHeaders::Authorization(parts.headers.get(hyper::header::AUTHORIZATION).cloned())
            } else {
                ClientHeaders::All(parts.headers.clone())
            },
            peer: peer.ip(),
            body: buffered.clone(),
        });

        // The upstream request: same method, path and query, minus hop-by-hop headers and
        // `Host`, minus every header the decision removes, plus the claim headers it sets.
        let mut headers = parts.headers;
        strip_hop_by_hop(&mut headers);
        add_forwarded(&mut headers, &parts.uri, peer);
        headers.remove(hyper::header::HOST); // the client sets it from the upstream URI
        for name in &self.remove_names {
            headers.remove(name);
        }
        // Twins of the removed names (`X_User_Id` for `X-User-Id`, other spellings):
        // CGI/WSGI upstreams read them as the same variable.
        if headers.keys().any(|n| forward.must_remove(n.as_str())) {
            let doomed: Vec<HeaderName> = headers.keys().filter(|n| forward.must_remove(n.as_str())).cloned().collect();
            for name in doomed {
                headers.remove(name);
            }
        }
        // token_exchange: the exchanged token replaces the client's (never forwarded).
        if let Some(authorization) = forward.upstream_authorization() {
            match HeaderValue::from_str(authorization) {
                Ok(mut v) => {
                    v.set_sensitive(true);
                    headers.insert(hyper::header::AUTHORIZATION, v);
                }
                Err(_) => return (to_hyper(&mcp_oauth2::Response::internal_error()), "exchanged_token_invalid", None),
            }
        }
        for (name, value) in self.claim_names.iter().zip(forward.claim_header_values()) {
            let Some(value) = value else { continue };
            match HeaderValue::from_str(value) {
                Ok(v) => {
                    headers.insert(name.clone(), v);
                }
                // The core never renders a value with control characters; fail closed.
                Err(_) => return (to_hyper(&mcp_oauth2::Response::internal_error()), "claim_header_invalid", None),
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
            // hyper-util's error says connect/closed etc., never request content.
            Err(e) => return (bad_gateway(), "upstream_unavailable", Some(short_error(&e))),
        };
        let (mut res_parts, res_body) = upstream_res.into_parts();
        strip_hop_by_hop(&mut res_parts.headers);
        let body = match (forward.valid_until(), &revalidation) {
            // No expiry, no cached answer to age out: nothing can end the response.
            (None, None) => res_body.map_err(|e| Box::new(e) as BoxError).boxed(),
            (valid_until, _) => Guarded::new(res_body, valid_until, forward.recheck_at(), revalidation).boxed(),
        };
        (Response::from_parts(res_parts, body), "allowed", None)
    }

    /// The upstream URI of a request target: scheme and authority from `--upstream`, the
    /// prefix, then the client's path and query. `None` for a target that is not a path
    /// (`*`, or an HTTP/2 `:path` like `@host:port/x`, which string concatenation would
    /// turn into user information and another host).
    fn upstream_uri(&self, target: Option<&PathAndQuery>) -> Option<Uri> {
        upstream_uri(&self.upstream_scheme, &self.upstream_authority, &self.upstream_prefix, target)
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

    /// The operations endpoint a request is for, if any.
    fn operation(&self, req: &Request<Incoming>) -> Option<Operation> {
        let path = req.uri().path();
        if self.ops.metrics_path.as_deref() == Some(path) {
            Some(Operation::Metrics)
        } else if self.ops.admin_evict && path == EVICT_PATH {
            Some(Operation::Evict)
        } else {
            None
        }
    }

    /// Answers an operations request: loopback peers only (unless `--ops-allow-remote`),
    /// `GET`/`HEAD` for the metrics, `POST` for evict.
    async fn operate(
        &self,
        op: Operation,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> (Response<Body>, &'static str, Option<String>) {
        if !self.ops.allow_remote && !peer.ip().to_canonical().is_loopback() {
            let body = serde_json::json!({"error": "forbidden", "error_description": "Operations endpoints answer loopback clients only"});
            return (json(StatusCode::FORBIDDEN, &body), "ops_not_loopback", None);
        }
        let allowed: &[Method] = match op {
            Operation::Metrics => &[Method::GET, Method::HEAD],
            Operation::Evict => &[Method::POST],
        };
        if !allowed.contains(req.method()) {
            let body = serde_json::json!({"error": "method_not_allowed"});
            let mut response = json(StatusCode::METHOD_NOT_ALLOWED, &body);
            let allow = allowed.iter().map(Method::as_str).collect::<Vec<_>>().join(", ");
            if let Ok(v) = HeaderValue::from_str(&allow) {
                response.headers_mut().insert(hyper::header::ALLOW, v);
            }
            return (response, "ops_method_not_allowed", None);
        }
        match op {
            Operation::Metrics => {
                let text = self.validator.metrics().prometheus_text();
                let mut response = Response::new(full(text));
                response
                    .headers_mut()
                    .insert(hyper::header::CONTENT_TYPE, HeaderValue::from_static(PROMETHEUS_CONTENT_TYPE));
                (response, "metrics", None)
            }
            Operation::Evict => self.evict(req.into_body()).await,
        }
    }

    /// `POST /_mcp_oauth2/evict` with `{"token": "…"}` or `{"cache_key": "<64 hex>"}`
    /// (`Validator::token_cache_key`): drops the token's cached answer on this node and,
    /// with the cluster cache, from Redis and on every node (within a second). Answers
    /// `{"evicted": true|false}` (whether this node had it cached). The token is never
    /// logged.
    async fn evict(&self, body: Incoming) -> (Response<Body>, &'static str, Option<String>) {
        let bad = |description: &str| {
            let body = serde_json::json!({"error": "invalid_request", "error_description": description});
            (json(StatusCode::BAD_REQUEST, &body), "evict_invalid_request", None)
        };
        let bytes = match Limited::new(body, MAX_EVICT_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return bad("The body must be a JSON object of at most 16 KiB"),
        };
        let target = match serde_json::from_slice::<serde_json::Value>(&bytes) {
            Ok(serde_json::Value::Object(mut map)) if map.len() == 1 => {
                match (map.remove("token"), map.remove("cache_key")) {
                    (Some(serde_json::Value::String(t)), None) if !t.is_empty() => EvictTarget::Token(t),
                    (None, Some(serde_json::Value::String(k)))
                        if k.len() == 64 && k.bytes().all(|b| b.is_ascii_hexdigit()) =>
                    {
                        EvictTarget::CacheKey(k)
                    }
                    _ => return bad("Expected {\"token\": \"...\"} or {\"cache_key\": \"<64 hex digits>\"}"),
                }
            }
            _ => return bad("Expected {\"token\": \"...\"} or {\"cache_key\": \"<64 hex digits>\"}"),
        };
        let validator = self.validator.clone();
        let run = move || match &target {
            EvictTarget::Token(t) => validator.evict(t),
            EvictTarget::CacheKey(k) => validator.evict_key(k),
        };
        // With the cluster cache, evict publishes through Redis: blocking I/O, off the
        // event loop. Without it, it only touches this process's cache.
        let evicted = if self.cluster {
            match tokio::task::spawn_blocking(run).await {
                Ok(e) => e,
                Err(_) => return (to_hyper(&mcp_oauth2::Response::internal_error()), "evict_failed", None),
            }
        } else {
            run()
        };
        (json(StatusCode::OK, &serde_json::json!({"evicted": evicted})), "evicted", None)
    }

    /// Decides one request: at once when the validator can (cache hits, metadata,
    /// malformed requests), else after the authorization-server calls it asks for.
    pub async fn decide(&self, request: &mcp_oauth2::Request<'_>) -> Decision {
        match self.validator.begin(request, SystemTime::now()) {
            Step::Done(decision) => decision,
            // The rest runs as a task of its own (it owns everything it needs): a client
            // that goes away mid-call does not abandon the requests following this one,
            // and the answer still reaches the cache.
            step => match tokio::spawn(drive(Arc::clone(&self.as_client), self.cluster_validator(), step)).await {
                Ok(decision) => decision,
                Err(_) => Decision::Respond(mcp_oauth2::Response::internal_error()),
            },
        }
    }
}

impl Proxy {
    /// The validator, when leading steps ask the cluster cache first.
    fn cluster_validator(&self) -> Option<Validator> {
        self.cluster.then(|| self.validator.clone())
    }
}

enum Operation {
    Metrics,
    Evict,
}

enum EvictTarget {
    Token(String),
    CacheKey(String),
}

/// The content type of the Prometheus text exposition format 0.0.4.
const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Runs the validator's steps to a decision: performs each HTTP request it needs with the
/// async client, waits (bounded) for a concurrent request's answer. With the cluster
/// cache (`cluster`: the validator), a step about one token first asks Redis, on the
/// blocking pool: another node's answer is replayed, or this node leads the call (and
/// shares its answer on resume), or Redis is down and it goes on alone.
async fn drive(as_client: Arc<AsClient>, cluster: Option<Validator>, mut step: Step) -> Decision {
    loop {
        step = match step {
            Step::Done(decision) => return decision,
            Step::Need(http, pending) => {
                // While Redis is known to be down, try_cluster would return at once:
                // skip the trip to the blocking pool.
                let pending = match &cluster {
                    Some(v) if pending.is_token_response() && v.cluster_cache_up() => {
                        match tokio::task::spawn_blocking(move || pending.try_cluster(SystemTime::now())).await {
                            Ok(Ok(replayed)) => {
                                step = replayed;
                                continue;
                            }
                            Ok(Err(pending)) => pending,
                            // The look-up panicked (never expected): the step is gone.
                            Err(_) => return Decision::Respond(mcp_oauth2::Response::internal_error()),
                        }
                    }
                    _ => pending,
                };
                let result = as_client.send(http).await;
                pending.resume(result, SystemTime::now())
            }
            Step::Wait(ticket) => {
                // Past max_wait, resume anyway: the validator answers 503.
                let _ = tokio::time::timeout(ticket.max_wait(), ticket.ready()).await;
                ticket.resume(SystemTime::now())
            }
        };
    }
}

/// The validator's view of a client request. With the fast path only `Authorization`
/// is collected (nothing else is read).
fn validator_request<'a>(
    method: &'a Method,
    uri: &'a Uri,
    headers: &'a HeaderMap,
    fast_path: bool,
    peer: IpAddr,
) -> mcp_oauth2::Request<'a> {
    let path = uri.path_and_query().map_or("/", PathAndQuery::as_str);
    let mut request = mcp_oauth2::Request::new(method.as_str(), path).peer_addr(peer);
    request.headers = if fast_path {
        headers.get_all(hyper::header::AUTHORIZATION).iter().map(|v| ("authorization", v.as_bytes())).collect()
    } else {
        headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())).collect()
    };
    request
}

/// What a forwarded request's response keeps to re-validate it later (the same request
/// as the validator saw it).
pub struct Revalidation {
    proxy: Arc<Proxy>,
    method: Method,
    uri: Uri,
    headers: ClientHeaders,
    peer: IpAddr,
    body: Option<Bytes>,
}

enum ClientHeaders {
    /// The fast path: only `Authorization` is read.
    Authorization(Option<HeaderValue>),
    All(HeaderMap),
}

impl Revalidation {
    /// Decides the request again, now, as a task of its own.
    pub fn spawn(&self) -> tokio::task::JoinHandle<Decision> {
        let proxy = Arc::clone(&self.proxy);
        let (method, uri, peer, body) = (self.method.clone(), self.uri.clone(), self.peer, self.body.clone());
        let headers = match &self.headers {
            ClientHeaders::Authorization(value) => {
                let mut map = HeaderMap::new();
                if let Some(v) = value {
                    map.insert(hyper::header::AUTHORIZATION, v.clone());
                }
                map
            }
            ClientHeaders::All(map) => map.clone(),
        };
        tokio::spawn(async move {
            let request = validator_request(&method, &uri, &headers, false, peer);
            let request = match &body {
                Some(b) => request.body(b),
                None => request,
            };
            proxy.decide(&request).await
        })
    }
}

fn upstream_uri(scheme: &Scheme, authority: &Authority, prefix: &str, target: Option<&PathAndQuery>) -> Option<Uri> {
    let path_and_query = match target {
        None => PathAndQuery::from_static("/"),
        Some(t) if !t.as_str().starts_with('/') => return None,
        Some(t) if prefix.is_empty() => t.clone(),
        Some(t) => PathAndQuery::try_from(format!("{prefix}{t}")).ok()?,
    };
    Uri::builder().scheme(scheme.clone()).authority(authority.clone()).path_and_query(path_and_query).build().ok()
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
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// `X-Forwarded-For` (the peer appended to what the client sent, as nginx does),
/// `X-Forwarded-Proto` and `X-Forwarded-Host` (what the client asked for), so the upstream
/// knows the original request. The client's own `X-Forwarded-Proto/Host` are replaced.
fn add_forwarded(headers: &mut HeaderMap, uri: &Uri, peer: SocketAddr) {
    const XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
    const XFH: HeaderName = HeaderName::from_static("x-forwarded-host");
    const XFP: HeaderName = HeaderName::from_static("x-forwarded-proto");
    let ip = peer.ip().to_string();
    let xff = match headers.get(&XFF).and_then(|v| v.to_str().ok()) {
        Some(prior) if !prior.trim().is_empty() => format!("{prior}, {ip}"),
        _ => ip,
    };
    let host = match headers.get(hyper::header::HOST) {
        Some(h) => Some(h.clone()),
        None => uri.authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()), // HTTP/2 :authority
    };
    headers.remove(&XFH);
    if let Some(v) = host {
        headers.insert(XFH, v);
    }
    if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(xff)) {
        headers.insert(XFF, v);
    }
    headers.insert(XFP, HeaderValue::from_static("http"));
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

/// The proxy's own answer when the MCP server cannot be reached (not a validator decision).
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

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(prefix: &str, target: &str) -> Option<Uri> {
        let target = PathAndQuery::try_from(target).unwrap();
        let authority = Authority::from_static("127.0.0.1:8082");
        upstream_uri(&Scheme::HTTP, &authority, prefix, Some(&target))
    }

    #[test]
    fn upstream_uri_is_built_from_parts() {
        let s = |u: Option<Uri>| u.map(|u| u.to_string());
        assert_eq!(s(uri("", "/mcp?x=1")).as_deref(), Some("http://127.0.0.1:8082/mcp?x=1"));
        assert_eq!(s(uri("/base", "/mcp")).as_deref(), Some("http://127.0.0.1:8082/base/mcp"));
        // Concatenated, `http://127.0.0.1:8082` + `@evil:1/x` would name host `evil`. The
        // http crate refuses such a path today; the proxy does not rely on it.
        assert!(PathAndQuery::try_from("@evil:1/x").is_err());
        assert_eq!(uri("", "*"), None);
        for target in ["//evil:1/x", "/@evil:1/x", "/x?@evil:1"] {
            let u = uri("", target).unwrap();
            assert_eq!(u.authority().unwrap().as_str(), "127.0.0.1:8082", "{u}");
            assert_eq!(u.path_and_query().unwrap().as_str(), target);
        }
    }
}
