//! Protected Resource Metadata (RFC 9728) and the `resource_metadata` URL of challenges
//! (behaviour.md §2).

use std::borrow::Cow;
use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::json;

use crate::addresses::parse_cidr;
use crate::request::Request;
use crate::Config;

/// The PRM document and where it is served, computed once per validator.
#[derive(Debug)]
pub(crate) struct Metadata {
    /// The JSON document.
    pub(crate) document: Vec<u8>,
    /// `metadata_endpoint` (Kong's path) and the RFC 9728 path-insert form.
    paths: [String; 2],
    /// The configured metadata path, appended to the origin in challenges.
    metadata_path: String,
    /// `scheme://host[:port]` of `resource`.
    resource_origin: String,
    /// `resource_origin` + `metadata_path`: the URL when no trusted proxy says otherwise.
    default_url: String,
    trusted_proxies: Vec<IpNet>,
}

impl Metadata {
    pub(crate) fn new(config: &Config) -> Self {
        let url = url::Url::parse(&config.resource).expect("resource validated as a URL");
        let resource_origin = url.origin().ascii_serialization();
        let resource_path = url.path().trim_end_matches('/');
        let metadata_path = config.effective_metadata_endpoint();
        let insert_path = format!("/.well-known/oauth-protected-resource{resource_path}");

        let mut doc = json!({
            "resource": config.resource,
            "authorization_servers": config.authorization_servers,
            "bearer_methods_supported": ["header"],
        });
        if let Some(scopes) = &config.scopes_supported {
            doc["scopes_supported"] = json!(scopes);
        }
        Metadata {
            document: serde_json::to_vec(&doc).expect("a JSON value serializes"),
            default_url: format!("{resource_origin}{metadata_path}"),
            paths: [metadata_path.clone(), insert_path],
            metadata_path,
            resource_origin,
            trusted_proxies: config.trusted_proxies.iter().filter_map(|p| parse_cidr(p)).collect(),
        }
    }

    /// True if `path` (without query) is one of the PRM paths.
    pub(crate) fn is_metadata_path(&self, path: &str) -> bool {
        self.paths.iter().any(|p| p == path)
    }

    /// The absolute `resource_metadata` URL for a challenge to this request.
    ///
    /// `X-Forwarded-Proto/Host/Port/Prefix` are believed only when the peer is a trusted
    /// proxy and the values are well-formed; otherwise the origin of `resource` is used.
    pub(crate) fn resource_metadata_url(&self, req: &Request<'_>) -> Cow<'_, str> {
        if self.trusted_proxies.is_empty() {
            return Cow::Borrowed(&self.default_url);
        }
        match self.forwarded_url(req) {
            Some(url) => Cow::Owned(url),
            None => Cow::Borrowed(&self.default_url),
        }
    }

    fn forwarded_url(&self, req: &Request<'_>) -> Option<String> {
        let peer: IpAddr = req.peer_addr?;
        if !self.trusted_proxies.iter().any(|n| n.contains(&peer)) {
            return None;
        }
        let first = |name: &str| -> Option<&str> {
            let v = std::str::from_utf8(req.header_value(name)?).ok()?;
            Some(v.split(',').next()?.trim()).filter(|s| !s.is_empty())
        };
        let host = first("x-forwarded-host")?;
        if !host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']' | b'_')) {
            return None;
        }
        let proto = match first("x-forwarded-proto").map(str::to_ascii_lowercase).as_deref() {
            Some("https") => "https",
            Some("http") => "http",
            None => self.resource_origin.split(':').next().unwrap_or("https"),
            Some(_) => return None,
        };
        let mut authority = host.to_owned();
        let has_port = host.rsplit_once(':').is_some_and(|(_, p)| !p.contains(']'));
        if let Some(port) = first("x-forwarded-port") {
            let port: u16 = port.parse().ok()?;
            let default = (proto == "https" && port == 443) || (proto == "http" && port == 80);
            if !has_port && !default {
                authority = format!("{authority}:{port}");
            }
        }
        let prefix = match first("x-forwarded-prefix") {
            Some(p) => {
                let ok = p.starts_with('/')
                    && p.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.' | b'~' | b'%'));
                if !ok {
                    return None;
                }
                p.trim_end_matches('/')
            }
            None => "",
        };
        Some(format!("{proto}://{authority}{prefix}{}", self.metadata_path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn meta(extra: Value) -> Metadata {
        let base = serde_json::json!({"resource": "https://mcp.example.com/mcp", "authorization_servers": ["https://as.example.com/realms/x"]});
        Metadata::new(&crate::config::test_config(base, extra))
    }

    #[test]
    fn document_shape() {
        let m = meta(json!({"scopes_supported": ["mcp:read"]}));
        let doc: Value = serde_json::from_slice(&m.document).unwrap();
        assert_eq!(
            doc,
            json!({"resource": "https://mcp.example.com/mcp", "authorization_servers": ["https://as.example.com/realms/x"],
                   "bearer_methods_supported": ["header"], "scopes_supported": ["mcp:read"]})
        );
        let doc: Value = serde_json::from_slice(&meta(json!({})).document).unwrap();
        assert!(doc.get("scopes_supported").is_none());
    }

    #[test]
    fn both_paths_are_served() {
        let m = meta(json!({}));
        assert!(m.is_metadata_path("/mcp/.well-known/oauth-protected-resource"));
        assert!(m.is_metadata_path("/.well-known/oauth-protected-resource/mcp"));
        assert!(!m.is_metadata_path("/.well-known/oauth-protected-resource"));
        let m = meta(json!({"metadata_endpoint": "/custom/prm"}));
        assert!(m.is_metadata_path("/custom/prm"));
        assert!(m.is_metadata_path("/.well-known/oauth-protected-resource/mcp"));
    }

    #[test]
    fn forwarded_headers_only_from_trusted_proxies() {
        let m = meta(json!({"trusted_proxies": ["10.0.0.0/8"]}));
        let req = Request::new("GET", "/mcp")
            .header("X-Forwarded-Host", "public.example.org, inner")
            .header("X-Forwarded-Proto", "https")
            .header("X-Forwarded-Port", "8443")
            .header("X-Forwarded-Prefix", "/gw/");
        let trusted = req.clone().peer_addr("10.1.2.3".parse().unwrap());
        assert_eq!(
            m.resource_metadata_url(&trusted),
            "https://public.example.org:8443/gw/mcp/.well-known/oauth-protected-resource"
        );
        let untrusted = req.clone().peer_addr("192.0.2.1".parse().unwrap());
        assert_eq!(
            m.resource_metadata_url(&untrusted),
            "https://mcp.example.com/mcp/.well-known/oauth-protected-resource"
        );
        assert_eq!(m.resource_metadata_url(&req), "https://mcp.example.com/mcp/.well-known/oauth-protected-resource");
        let evil =
            Request::new("GET", "/mcp").header("X-Forwarded-Host", "evil\"host").peer_addr("10.0.0.1".parse().unwrap());
        assert_eq!(m.resource_metadata_url(&evil), "https://mcp.example.com/mcp/.well-known/oauth-protected-resource");
    }
}
