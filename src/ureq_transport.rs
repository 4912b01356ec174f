//! The blocking [`Transport`] on `ureq` (rustls), for threaded hosts (`Validator::authorize`,
//! the C ABI's `mcp_oauth2_validator_authorize`, Go).
//!
//! Everything about how to make a call comes with the [`HttpRequest`]: certificate
//! verification, the client certificate (mutual TLS), the forward proxy, the HTTP version and
//! keep-alive. One `ureq::Agent` (a connection pool and a TLS configuration) is built lazily
//! per distinct (proxy, client certificate, verification, keep-alive) combination, so that a
//! connection is never reused across them.
//!
//! Forward proxies: the `CONNECT` tunnel is this module's own connector on ureq's
//! `unversioned` transport API, because ureq's built-in one can only send `Basic`
//! credentials taken from the proxy URL, while `*_proxy_authorization` is a whole
//! `Proxy-Authorization` value. Both `http://` and `https://` URLs are tunnelled (ureq
//! writes origin-form requests only); TLS to an https authorization server runs end to end
//! inside the tunnel.

use std::collections::HashMap;
use std::fmt;
use std::io::{ErrorKind as IoKind, Write as _};
use std::net::{IpAddr, SocketAddr};

use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use ureq::http::{Uri, Version};
use ureq::tls::{Certificate, ClientCert, PemItem, PrivateKey, TlsConfig};
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{
    ConnectionDetails, Connector, DefaultConnector, NextTimeout, RustlsConnector, TcpConnector, Transport as UreqIo,
    TransportAdapter,
};
use ureq::{Agent, Proxy};

use crate::config::HttpVersion;
use crate::request::{HttpRequest, HttpResponse, TransportError, TransportErrorKind, MAX_RESPONSE_BODY};
use crate::token::Secret;
use crate::transport::Transport;
use crate::Config;

/// A blocking transport on `ureq` (rustls). Every setting comes with each request (see
/// [`HttpRequest`]): one transport serves any validator. Share one per process or per
/// validator: it pools connections (unless a request says `keepalive: false`).
pub struct UreqTransport {
    /// Agents by the digest of the connection settings they were built for.
    agents: Mutex<HashMap<[u8; 32], Agent>>,
}

impl UreqTransport {
    /// A transport for the calls of a validator built from `config`. The configuration is
    /// not needed any more (each [`HttpRequest`] carries its settings); the parameter stays
    /// for compatibility.
    pub fn new(config: &Config) -> Self {
        let _ = config;
        UreqTransport { agents: Mutex::new(HashMap::new()) }
    }

    /// The agent for the connection settings of `request`, built on first use.
    fn agent(&self, request: &HttpRequest) -> Result<Agent, TransportError> {
        let key = settings_key(request);
        if let Some(agent) = self.agents.lock().get(&key) {
            return Ok(agent.clone());
        }
        let agent = build_agent(request)?;
        Ok(self.agents.lock().entry(key).or_insert(agent).clone())
    }
}

impl fmt::Debug for UreqTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UreqTransport").field("agents", &self.agents.lock().len()).finish()
    }
}

impl Transport for UreqTransport {
    fn send(&self, request: &HttpRequest) -> Result<HttpResponse, TransportError> {
        let agent = self.agent(request)?;
        let version = match request.http_version {
            HttpVersion::Http10 => Version::HTTP_10,
            HttpVersion::Http11 => Version::HTTP_11,
        };
        let mut builder = ureq::http::Request::builder().method(request.method).uri(&request.url).version(version);
        for (name, value) in &request.headers {
            builder = builder.header(name, value);
        }
        if !request.keepalive && request.http_version == HttpVersion::Http11 {
            builder = builder.header("Connection", "close");
        }
        let http_request = builder
            .body(request.body.clone())
            .map_err(|_| TransportError::new(TransportErrorKind::Other, "could not build the request"))?;
        let http_request = agent.configure_request(http_request).timeout_global(Some(request.timeout)).build();
        let mut response = agent.run(http_request).map_err(map_error)?;
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

/// A digest of every setting an agent is built from (never kept in the clear: it covers the
/// client key and the proxy credentials).
fn settings_key(request: &HttpRequest) -> [u8; 32] {
    let mut h = Sha256::new();
    let mut part = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    part(&[u8::from(request.verify_certificate), u8::from(request.keepalive)]);
    match &request.client_certificate {
        Some(c) => {
            part(c.cert_pem().as_bytes());
            part(c.key_pem().as_bytes());
        }
        None => part(b"-"),
    }
    match &request.proxy {
        Some(p) => {
            part(p.url().as_bytes());
            part(p.authorization().unwrap_or_default().as_bytes());
        }
        None => part(b"-"),
    }
    h.finalize().into()
}

fn build_agent(request: &HttpRequest) -> Result<Agent, TransportError> {
    let mut tls = TlsConfig::builder().disable_verification(!request.verify_certificate);
    if let Some(certificate) = &request.client_certificate {
        let bad = |what: &str| TransportError::new(TransportErrorKind::Tls, format!("client certificate: {what}"));
        let chain: Vec<Certificate<'static>> = ureq::tls::parse_pem(certificate.cert_pem().as_bytes())
            .filter_map(|item| match item {
                Ok(PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect();
        if chain.is_empty() {
            return Err(bad("no certificate in the PEM"));
        }
        let key = PrivateKey::from_pem(certificate.key_pem().as_bytes()).map_err(|_| bad("unreadable key"))?;
        tls = tls.client_cert(Some(ClientCert::new_with_certs(&chain, key)));
    }
    let idle = if request.keepalive { 16 } else { 0 };
    let config = Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .max_idle_connections(idle)
        .max_idle_connections_per_host(idle)
        .tls_config(tls.build())
        .user_agent("mcp-oauth2");
    let Some(route) = &request.proxy else {
        return Ok(Agent::with_parts(config.build(), DefaultConnector::default(), IpLiteralResolver::default()));
    };
    let proxy = Proxy::new(route.url())
        .map_err(|_| TransportError::new(TransportErrorKind::Other, "proxy: the proxy URL is not usable"))?;
    // With a proxy set, ureq leaves resolving the target to the proxy; the connection itself
    // is made by the chain below: TCP to the proxy + CONNECT, then TLS for https targets.
    let connector =
        ().chain(Tunnel { authorization: route.authorization().map(Secret::new) })
            .chain(TcpConnector::default())
            .chain(RustlsConnector::default());
    Ok(Agent::with_parts(config.proxy(Some(proxy)).build(), connector, IpLiteralResolver::default()))
}

/// ureq resolves the host of every request, pooled connection or not, and with a timeout
/// set (every request here has one) it does so on a new thread: with a local authorization
/// server that cost more than the whole exchange (measured: cold decisions 2–8x a raw POST,
/// 1.2x without it). An IP literal needs no lookup and is answered here, without a thread;
/// names go to ureq's resolver unchanged.
#[derive(Debug, Default)]
struct IpLiteralResolver(DefaultResolver);

impl Resolver for IpLiteralResolver {
    fn resolve(
        &self,
        uri: &Uri,
        config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        if let Some(authority) = uri.authority() {
            let host = authority.host();
            let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
            let port = authority.port_u16().or(match uri.scheme_str() {
                Some("https") => Some(443),
                Some("http") => Some(80),
                _ => None,
            });
            if let (Ok(ip), Some(port)) = (host.parse::<IpAddr>(), port) {
                let mut addrs = self.empty();
                addrs.push(SocketAddr::new(ip, port));
                return Ok(addrs);
            }
        }
        self.0.resolve(uri, config, timeout)
    }
}

/// Opens a `CONNECT` tunnel through the agent's proxy, with the configured
/// `Proxy-Authorization` value.
struct Tunnel {
    authorization: Option<Secret>,
}

impl fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tunnel").field("authorization", &self.authorization.as_ref().map(|_| "[redacted]")).finish()
    }
}

impl Connector<()> for Tunnel {
    type Out = Box<dyn UreqIo>;

    fn connect(&self, details: &ConnectionDetails, _: Option<()>) -> Result<Option<Self::Out>, ureq::Error> {
        let Some(proxy) = details.config.proxy() else { return Ok(None) };
        let proxy_uri = proxy.uri();
        let addrs = details.resolver.resolve(proxy_uri, details.config, details.timeout)?;
        let to_proxy = ConnectionDetails {
            uri: proxy_uri,
            addrs,
            config: details.config,
            request_level: details.request_level,
            resolver: details.resolver,
            now: details.now,
            timeout: details.timeout,
            current_time: details.current_time.clone(),
            run_connector: details.run_connector.clone(),
            register_shutdown: details.register_shutdown.clone(),
        };
        let Some(socket) = TcpConnector::default().connect(&to_proxy, None::<()>)? else {
            return Err(ureq::Error::ConnectionFailed);
        };
        let target = details.uri;
        let host = target.host().ok_or(ureq::Error::ConnectionFailed)?;
        let https = target.scheme_str() == Some("https");
        let port = target.port_u16().unwrap_or(if https { 443 } else { 80 });
        let mut head = format!("CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n");
        if let Some(value) = &self.authorization {
            head.push_str("Proxy-Authorization: ");
            head.push_str(value.expose());
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        let mut writer = TransportAdapter::new(socket.boxed(), details.current_time.clone());
        writer.set_timeout(details.timeout);
        writer.write_all(head.as_bytes())?;
        writer.flush()?;
        let mut transport = writer.into_inner();
        loop {
            let progressed = transport.maybe_await_input(details.timeout)?;
            let buffers = transport.buffers();
            let input = buffers.input();
            if let Some(end) = input.windows(4).position(|w| w == b"\r\n\r\n") {
                let status = std::str::from_utf8(&input[..end])
                    .ok()
                    .and_then(|head| head.split(' ').nth(1))
                    .and_then(|code| code.parse::<u16>().ok());
                buffers.input_consume(end + 4);
                return match status {
                    Some(200..=299) => Ok(Some(transport)),
                    Some(code) => Err(ureq::Error::ConnectProxyFailed(format!("the proxy answered {code}"))),
                    None => Err(ureq::Error::ConnectProxyFailed("the proxy answered no HTTP status".into())),
                };
            }
            buffers.input_consume(0);
            if !progressed {
                return Err(ureq::Error::ConnectProxyFailed("the proxy closed the connection".into()));
            }
        }
    }
}

fn map_error(e: ureq::Error) -> TransportError {
    use TransportErrorKind as K;
    let kind = match &e {
        ureq::Error::Timeout(_) => K::Timeout,
        ureq::Error::BodyExceedsLimit(_) => K::BodyTooLarge,
        ureq::Error::HostNotFound | ureq::Error::ConnectionFailed | ureq::Error::ConnectProxyFailed(_) => K::Connect,
        ureq::Error::Tls(_) | ureq::Error::Rustls(_) => K::Tls,
        ureq::Error::Io(io) => match io.kind() {
            IoKind::ConnectionRefused | IoKind::ConnectionReset | IoKind::ConnectionAborted | IoKind::NotConnected => {
                K::Connect
            }
            IoKind::TimedOut | IoKind::WouldBlock => K::Timeout,
            // rustls reports handshake failures (an unverifiable certificate, a refused
            // client certificate) through the stream as InvalidData.
            IoKind::InvalidData => K::Tls,
            _ => K::Other,
        },
        _ => K::Other,
    };
    // ureq's messages name the failure, not the request: no credentials or body text. A
    // proxy's refusal says which status (a 407 is wrong proxy credentials).
    match e {
        ureq::Error::ConnectProxyFailed(why) => TransportError::new(kind, format!("proxy: {why}")),
        _ => TransportError::new(kind, kind.as_str()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(url: &str) -> Vec<SocketAddr> {
        let uri: Uri = url.parse().unwrap();
        let config = Agent::config_builder().build();
        IpLiteralResolver::default().resolve(&uri, &config, NextTimeout::default()).unwrap().iter().copied().collect()
    }

    #[test]
    fn ip_literals_resolve_without_a_lookup_and_names_still_resolve() {
        assert_eq!(resolve("http://127.0.0.1:9400/introspect"), ["127.0.0.1:9400".parse().unwrap()]);
        assert_eq!(resolve("https://10.0.0.1/introspect"), ["10.0.0.1:443".parse().unwrap()]);
        assert_eq!(resolve("http://[::1]:8080/x"), ["[::1]:8080".parse().unwrap()]);
        assert!(resolve("http://localhost:9400/x").iter().all(|a| a.port() == 9400));
    }
}
