//! Authorization-server metadata discovery (RFC 8414, OpenID Connect Discovery 1.0): where
//! the keys for local JWT validation live (`jwks_uri`), and which issuer they belong to.

use std::borrow::Cow;

use serde_json::{Map, Value};

use crate::request::{HttpResponse, TransportError, TransportErrorKind, MAX_RESPONSE_BODY};
use crate::Config;

/// One metadata URL to try, and the issuer its document must name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Candidate {
    pub(crate) url: String,
    /// `None` for an explicit `metadata_discovery_endpoint`: any issuer, which then
    /// becomes a discovered issuer.
    pub(crate) issuer: Option<String>,
    /// Index of the authorization server it derives from (candidates of one server are
    /// adjacent).
    pub(crate) server: usize,
}

/// The parts of an authorization server's metadata that local validation uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AsMetadata {
    pub(crate) issuer: String,
    pub(crate) jwks_uri: String,
}

/// What one metadata fetch says.
#[derive(Debug)]
pub(crate) enum Fetched {
    /// A usable document.
    Found(AsMetadata),
    /// Not here (4xx, not a metadata document, another issuer): try the next candidate.
    Absent(Cow<'static, str>),
    /// A transient failure (transport, 5xx, 429): retry this URL.
    Failed(Cow<'static, str>),
}

/// The metadata URLs to try, in order: `metadata_discovery_endpoint` alone if set; else,
/// for each of `authorization_servers`, the RFC 8414 path-insert form, the OpenID
/// path-insert form, and the OpenID path-append form (duplicates dropped).
pub(crate) fn candidates(config: &Config) -> Vec<Candidate> {
    if let Some(url) = &config.metadata_discovery_endpoint {
        return vec![Candidate { url: url.clone(), issuer: None, server: 0 }];
    }
    let mut out: Vec<Candidate> = Vec::new();
    for (server, issuer) in config.authorization_servers.iter().enumerate() {
        let Ok(parsed) = url::Url::parse(issuer) else { continue };
        // RFC 8414 §3.1: the issuer must have no query or fragment to derive a URL.
        if parsed.query().is_some() || parsed.fragment().is_some() {
            continue;
        }
        let origin = parsed.origin().ascii_serialization();
        let path = parsed.path().trim_end_matches('/');
        let urls = [
            format!("{origin}/.well-known/oauth-authorization-server{path}"),
            format!("{origin}/.well-known/openid-configuration{path}"),
            format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/')),
        ];
        for url in urls {
            if !out.iter().any(|c| c.url == url) {
                out.push(Candidate { url, issuer: Some(issuer.clone()), server });
            }
        }
    }
    out
}

/// Why a JSON document could not be read; `transient` failures are worth retrying.
pub(crate) struct Unreadable {
    pub(crate) transient: bool,
    pub(crate) detail: Cow<'static, str>,
}

/// Reads a 200 response whose body is a JSON object (at most 1 MiB). `what` names the
/// document in details; details never contain response text.
pub(crate) fn read_json_object(
    result: Result<HttpResponse, TransportError>,
    what: &'static str,
) -> Result<Map<String, Value>, Unreadable> {
    let fail = |transient: bool, detail: String| Unreadable { transient, detail: Cow::Owned(detail) };
    let response = match result {
        Ok(r) => r,
        Err(e) => {
            let why = match e.kind {
                TransportErrorKind::Connect => "connection failed",
                TransportErrorKind::Timeout => "timed out",
                TransportErrorKind::Tls => "TLS failure",
                TransportErrorKind::BodyTooLarge => "response body over 1 MiB",
                _ => "transport failure",
            };
            return Err(fail(e.kind != TransportErrorKind::BodyTooLarge, format!("{what}: {why}")));
        }
    };
    if response.status != 200 {
        let transient = response.status >= 500 || response.status == 429 || response.status == 408;
        return Err(fail(transient, format!("{what}: HTTP {}", response.status)));
    }
    if response.body.len() > MAX_RESPONSE_BODY {
        return Err(fail(false, format!("{what}: response body over 1 MiB")));
    }
    match serde_json::from_slice::<Value>(&response.body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(fail(false, format!("{what}: response is not a JSON object"))),
        Err(_) => Err(fail(false, format!("{what}: response is not valid JSON"))),
    }
}

/// Reads a metadata response fetched for `candidate`: its `issuer` must equal the issuer
/// the URL was derived from (RFC 8414 §3.3), and `jwks_uri` must be an http(s) URL.
pub(crate) fn read_metadata(result: Result<HttpResponse, TransportError>, candidate: &Candidate) -> Fetched {
    let doc = match read_json_object(result, "discovery") {
        Ok(d) => d,
        Err(Unreadable { transient: true, detail }) => return Fetched::Failed(detail),
        Err(Unreadable { transient: false, detail }) => return Fetched::Absent(detail),
    };
    let Some(issuer) = doc.get("issuer").and_then(Value::as_str).filter(|s| !s.is_empty()) else {
        return Fetched::Absent("discovery: metadata without an issuer".into());
    };
    if candidate.issuer.as_deref().is_some_and(|expected| expected != issuer) {
        return Fetched::Absent("discovery: metadata issuer differs from the issuer it was fetched for".into());
    }
    let Some(jwks_uri) = doc.get("jwks_uri").and_then(Value::as_str) else {
        return Fetched::Absent("discovery: metadata without jwks_uri".into());
    };
    let usable = url::Url::parse(jwks_uri)
        .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some() && u.username().is_empty());
    if !usable {
        return Fetched::Absent("discovery: jwks_uri is not an absolute http(s) URL".into());
    }
    // Metadata that came over https names https endpoints: a downgrade to http would let
    // anyone on the path substitute the keys.
    if candidate.url.starts_with("https://") && !jwks_uri.starts_with("https://") {
        return Fetched::Absent("discovery: metadata fetched over https names a plain-http jwks_uri".into());
    }
    Fetched::Found(AsMetadata { issuer: issuer.to_owned(), jwks_uri: jwks_uri.to_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(extra: Value) -> Config {
        crate::config::test_config(
            json!({"resource": "https://mcp.example/mcp", "authorization_servers": ["https://as.example"]}),
            extra,
        )
    }

    fn urls(c: &Config) -> Vec<String> {
        candidates(c).into_iter().map(|c| c.url).collect()
    }

    #[test]
    fn candidate_order_follows_rfc8414_then_openid() {
        let c = config(json!({"authorization_servers": ["https://as.example/realms/mcp/", "https://b.example"]}));
        assert_eq!(
            urls(&c),
            [
                "https://as.example/.well-known/oauth-authorization-server/realms/mcp",
                "https://as.example/.well-known/openid-configuration/realms/mcp",
                "https://as.example/realms/mcp/.well-known/openid-configuration",
                "https://b.example/.well-known/oauth-authorization-server",
                "https://b.example/.well-known/openid-configuration",
            ]
        );
        let first = &candidates(&c)[0];
        assert_eq!(first.issuer.as_deref(), Some("https://as.example/realms/mcp/"));
        let c = config(json!({"metadata_discovery_endpoint": "https://x.example/meta"}));
        assert_eq!(candidates(&c), [Candidate { url: "https://x.example/meta".into(), issuer: None, server: 0 }]);
    }

    fn ok(body: Value) -> Result<HttpResponse, TransportError> {
        Ok(HttpResponse::new(200, "application/json", body.to_string()))
    }

    #[test]
    fn metadata_is_read_strictly() {
        let cand = Candidate { url: "u".into(), issuer: Some("https://as.example".into()), server: 0 };
        let good = json!({"issuer": "https://as.example", "jwks_uri": "https://as.example/jwks"});
        assert!(matches!(read_metadata(ok(good), &cand), Fetched::Found(m) if m.jwks_uri == "https://as.example/jwks"));
        let other = json!({"issuer": "https://evil.example", "jwks_uri": "https://as.example/jwks"});
        assert!(matches!(read_metadata(ok(other), &cand), Fetched::Absent(_)));
        let no_jwks = json!({"issuer": "https://as.example"});
        assert!(matches!(read_metadata(ok(no_jwks), &cand), Fetched::Absent(_)));
        let bad_uri = json!({"issuer": "https://as.example", "jwks_uri": "file:///etc/passwd"});
        assert!(matches!(read_metadata(ok(bad_uri), &cand), Fetched::Absent(_)));
        let https = Candidate { url: "https://as.example/.well-known/openid-configuration".into(), ..cand.clone() };
        let downgrade = json!({"issuer": "https://as.example", "jwks_uri": "http://as.example/jwks"});
        assert!(matches!(read_metadata(ok(downgrade.clone()), &https), Fetched::Absent(d) if d.contains("plain-http")));
        let plain = Candidate { url: "http://as.example/.well-known/openid-configuration".into(), ..cand.clone() };
        assert!(matches!(read_metadata(ok(downgrade), &plain), Fetched::Found(_)), "http metadata may name http keys");
        assert!(matches!(read_metadata(Ok(HttpResponse::new(404, "text/html", "no")), &cand), Fetched::Absent(_)));
        assert!(matches!(read_metadata(Ok(HttpResponse::new(502, "text/html", "no")), &cand), Fetched::Failed(_)));
        let err = TransportError::new(TransportErrorKind::Connect, "refused");
        assert!(matches!(read_metadata(Err(err), &cand), Fetched::Failed(_)));
        assert!(matches!(read_metadata(Ok(HttpResponse::new(200, "text/html", "<html>")), &cand), Fetched::Absent(_)));
    }
}
