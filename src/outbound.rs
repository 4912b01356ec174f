//! How every outbound call (introspection, discovery, key sets, token exchange) is made:
//! timeout, certificate verification, forward proxy (`http_proxy`, `https_proxy`,
//! `no_proxy`), HTTP version and keep-alive. Built once per configuration; each
//! [`HttpRequest`] it starts carries those facts, so a host doing its own I/O needs nothing
//! else from the configuration.

use std::time::Duration;

use crate::addresses::NoProxy;
use crate::config::HttpVersion;
use crate::request::{ClientCertificate, HttpRequest, ProxyRoute, Purpose};
use crate::Config;

/// The transport facts of one configuration, applied to every outbound call.
#[derive(Debug, Clone)]
pub(crate) struct Outbound {
    timeout: Duration,
    verify_certificate: bool,
    http_version: HttpVersion,
    keepalive: bool,
    http_proxy: Option<ProxyRoute>,
    https_proxy: Option<ProxyRoute>,
    no_proxy: NoProxy,
}

impl Outbound {
    /// The outbound settings of a validated configuration.
    pub(crate) fn new(config: &Config) -> Self {
        let route = |url: &Option<String>, auth: &Option<crate::Secret>| {
            url.as_ref().map(|u| ProxyRoute::new(u.trim_end_matches('/').to_owned(), auth.clone()))
        };
        Outbound {
            timeout: Duration::from_millis(config.timeout),
            verify_certificate: config.ssl_verify,
            http_version: config.http_version,
            keepalive: config.keepalive,
            http_proxy: route(&config.http_proxy, &config.http_proxy_authorization),
            https_proxy: route(&config.https_proxy, &config.https_proxy_authorization),
            // Checked by `Config::validate`; an unparsable list cannot reach here.
            no_proxy: config.no_proxy.as_deref().map(NoProxy::parse).transpose().ok().flatten().unwrap_or_default(),
        }
    }

    /// A request to `url` with no headers and no body yet, carrying every transport fact:
    /// the caller adds what the call itself needs.
    pub(crate) fn request(&self, method: &'static str, url: &str, purpose: Purpose) -> HttpRequest {
        HttpRequest {
            method,
            url: url.to_owned(),
            headers: Vec::new(),
            body: Vec::new(),
            timeout: self.timeout,
            purpose,
            verify_certificate: self.verify_certificate,
            client_certificate: None,
            proxy: self.route(url),
            http_version: self.http_version,
            keepalive: self.keepalive,
        }
    }

    /// A `GET` of a JSON document (metadata, key set).
    pub(crate) fn get_json(&self, url: &str, purpose: Purpose) -> HttpRequest {
        let mut r = self.request("GET", url, purpose);
        r.headers.push(("Accept".to_owned(), "application/json".to_owned()));
        r
    }

    /// Makes `request` a mutual-TLS call: it presents `certificate` and verifies the server
    /// per `verify` (`tls_client_auth_ssl_verify`) instead of `ssl_verify`.
    pub(crate) fn mutual_tls(request: &mut HttpRequest, certificate: &ClientCertificate, verify: bool) {
        request.client_certificate = Some(certificate.clone());
        request.verify_certificate = verify;
    }

    /// The proxy for `url`: `https_proxy` for https, `http_proxy` for http, none when the
    /// host is in `no_proxy`.
    pub(crate) fn route(&self, url: &str) -> Option<ProxyRoute> {
        if self.http_proxy.is_none() && self.https_proxy.is_none() {
            return None;
        }
        let parsed = url::Url::parse(url).ok()?;
        let proxy = match parsed.scheme() {
            "https" => self.https_proxy.as_ref(),
            "http" => self.http_proxy.as_ref(),
            _ => None,
        }?;
        if self.no_proxy.bypasses(&parsed) {
            return None;
        }
        Some(proxy.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn outbound(extra: serde_json::Value) -> Outbound {
        let base = json!({"resource": "https://mcp.example/mcp", "authorization_servers": ["https://as.example"]});
        Outbound::new(&crate::config::test_config(base, extra))
    }

    fn via(o: &Outbound, url: &str) -> Option<String> {
        o.route(url).map(|r| r.url().to_owned())
    }

    #[test]
    fn proxy_per_scheme_and_no_proxy() {
        let o = outbound(json!({
            "http_proxy": "http://proxy.corp:3128", "https_proxy": "http://tunnel.corp:8080/",
            "https_proxy_authorization": "Basic dTpw",
            "no_proxy": " internal.example, .svc.local,10.0.0.0/8 , 192.0.2.7,[::1],"
        }));
        assert_eq!(via(&o, "http://as.example/i").as_deref(), Some("http://proxy.corp:3128"));
        assert_eq!(via(&o, "https://as.example/i").as_deref(), Some("http://tunnel.corp:8080"));
        assert_eq!(o.route("https://as.example/i").unwrap().authorization(), Some("Basic dTpw"));
        assert_eq!(o.route("http://as.example/i").unwrap().authorization(), None);
        for direct in [
            "https://internal.example/i",
            "https://a.b.internal.example/i",
            "https://INTERNAL.example./i",
            "https://x.svc.local/i",
            "https://svc.local/i",
            "http://10.1.2.3:8080/i",
            "http://192.0.2.7/i",
            "http://[::1]:9/i",
        ] {
            assert_eq!(via(&o, direct), None, "{direct}");
        }
        for proxied in ["https://notinternal.example/i", "http://192.0.2.8/i", "https://internal.example.evil/i"] {
            assert!(via(&o, proxied).is_some(), "{proxied}");
        }
        let all = outbound(json!({"https_proxy": "http://p:1", "no_proxy": "*"}));
        assert_eq!(via(&all, "https://as.example/"), None);
        let only_https = outbound(json!({"https_proxy": "http://p:1"}));
        assert_eq!(via(&only_https, "http://as.example/"), None, "http URLs go direct without http_proxy");
    }

    #[test]
    fn every_request_carries_the_transport_facts() {
        let o = outbound(json!({"ssl_verify": false, "keepalive": false, "http_version": 1.0, "timeout": 1234}));
        let r = o.get_json("https://as.example/jwks", Purpose::Jwks);
        assert_eq!((r.method, r.purpose, r.timeout), ("GET", Purpose::Jwks, Duration::from_millis(1234)));
        assert!(!r.verify_certificate && !r.keepalive && r.proxy.is_none() && r.client_certificate.is_none());
        assert_eq!(r.http_version, HttpVersion::Http10);
        let r = outbound(json!({})).request("POST", "https://as.example/i", Purpose::Introspection);
        assert!(r.verify_certificate && r.keepalive);
        assert_eq!(r.http_version, HttpVersion::Http11);
    }

    #[test]
    fn proxy_configuration_errors_name_the_field() {
        let err = |extra: serde_json::Value| {
            let base = json!({"resource": "https://mcp.example/mcp", "authorization_servers": ["https://as.example"]});
            let mut v = base;
            for (k, x) in extra.as_object().unwrap() {
                v[k] = x.clone();
            }
            crate::Config::from_value(v).unwrap_err().to_string()
        };
        assert!(err(json!({"http_proxy": "https://p:1"})).starts_with("http_proxy: must be the proxy's http://"));
        assert!(err(json!({"https_proxy": "http://p:1/path"})).starts_with("https_proxy:"));
        assert!(err(json!({"https_proxy": "http://u:pw@p:1"})).starts_with("https_proxy: must not contain credentials"));
        let warned = |extra: serde_json::Value| {
            let mut v = json!({"resource": "https://mcp.example/mcp", "authorization_servers": ["https://as.example"]});
            for (k, x) in extra.as_object().unwrap() {
                v[k] = x.clone();
            }
            crate::Config::from_value(v).unwrap().ineffective_fields()
        };
        assert_eq!(
            warned(json!({"http_proxy_authorization": "Basic x"})),
            ["http_proxy_authorization: set, but has no effect without http_proxy"]
        );
        assert!(err(json!({"https_proxy": "http://p:1", "https_proxy_authorization": "Basic a\r\nX: y"}))
            .starts_with("https_proxy_authorization: must be"));
        assert_eq!(
            warned(json!({"no_proxy": "a.example"})),
            ["no_proxy: set, but has no effect without http_proxy or https_proxy"]
        );
        let e = err(json!({"http_proxy": "http://p:1", "no_proxy": "a.example, http://b.example:80"}));
        assert!(e.starts_with("no_proxy: entry 2 is not"), "{e}");
        assert!(err(json!({"http_proxy": "http://p:1", "no_proxy": "*.example"})).starts_with("no_proxy: entry 1"));
        assert!(
            !err(json!({"https_proxy": "http://p:1", "https_proxy_authorization": "Basic s3cr\n"})).contains("s3cr")
        );
    }
}
