//! A tiny OAuth 2 authorization server for the embedded demo: client_credentials tokens
//! bound to the requested `resource` (which becomes `aud`), either opaque random strings or
//! RFC 9068 JWTs signed with a key generated at start-up; RFC 7662 introspection that
//! requires the gateway's client authentication (for both kinds); RFC 7009 revocation; RFC 8414 metadata and the
//! public key as a JWKS. In memory, 127.0.0.1 only. Not a production AS: it exists so the
//! demo needs nothing else.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use crate::serve::{json, Body, RequestLog};

/// The demo client that obtains tokens.
pub const DEMO_CLIENT_ID: &str = "demo-client";
/// Its secret (a fixed demo value, printed in the banner).
pub const DEMO_CLIENT_SECRET: &str = "demo-secret";
/// The gateway's introspection credentials.
pub const GATEWAY_CLIENT_ID: &str = "gateway";
/// The gateway's secret.
pub const GATEWAY_CLIENT_SECRET: &str = "gateway-secret";
/// Scopes the demo client may request (and gets when it asks for none).
pub const SCOPES: [&str; 2] = ["mcp:read", "mcp:write"];

/// What `/token` issues.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenFormat {
    /// 32 random bytes (base64url); only introspection can tell what they mean.
    Opaque,
    /// An RFC 9068 JWT access token (`typ: at+jwt`, ES256), verifiable with `/jwks`.
    Jwt,
}

/// The JWS algorithm of the signing key.
pub const SIGNING_ALG: &str = "ES256";

/// The AS's signing key: an ECDSA P-256 key pair generated at start-up (never stored on
/// disk, so a restart invalidates every JWT it issued, like the opaque tokens in memory).
struct SigningKey {
    encoding: jsonwebtoken::EncodingKey,
    kid: String,
    /// The public key as a JWK (`kty`, `crv`, `x`, `y`, `kid`, `use`, `alg`).
    jwk: Value,
}

impl SigningKey {
    fn generate() -> Result<Self, String> {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
            .map_err(|_| "cannot generate the demo AS signing key".to_owned())?;
        let pkcs8 = pair.to_pkcs8v1().map_err(|_| "cannot encode the demo AS signing key".to_owned())?;
        // Uncompressed SEC 1 point: 0x04 || x (32 bytes) || y (32 bytes).
        let point = pair.public_key().as_ref();
        let (x, y) = match point {
            [0x04, xy @ ..] if xy.len() == 64 => xy.split_at(32),
            _ => return Err("unexpected P-256 public key encoding".to_owned()),
        };
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let (x, y) = (b64(x), b64(y));
        // kid = RFC 7638 thumbprint: SHA-256 of the required members, sorted, no spaces.
        let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        let kid = b64(&Sha256::digest(canonical.as_bytes()));
        let jwk = json!({"kty": "EC", "crv": "P-256", "x": x, "y": y, "kid": kid, "use": "sig", "alg": SIGNING_ALG});
        Ok(SigningKey { encoding: jsonwebtoken::EncodingKey::from_ec_der(pkcs8.as_ref()), kid, jwk })
    }

    /// Signs `claims` as an RFC 9068 access token.
    fn sign(&self, claims: &Value) -> Result<String, String> {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.typ = Some("at+jwt".to_owned());
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).map_err(|e| format!("cannot sign a token: {e}"))
    }
}

struct Token {
    client_id: String,
    audience: Option<String>,
    scope: String,
    iat: i64,
    exp: i64,
}

/// The authorization server's state.
pub struct AuthServer {
    issuer: String,
    token_ttl: i64,
    format: TokenFormat,
    key: SigningKey,
    /// Added before every introspection answer: simulates a slow AS.
    introspection_delay: std::time::Duration,
    tokens: Mutex<HashMap<String, Token>>,
}

impl AuthServer {
    /// An AS whose issuer is `issuer` (`http://127.0.0.1:<port>`), issuing `format` tokens
    /// that live `token_ttl` seconds, answering introspection after `introspection_delay`.
    /// Generates the signing key (served at `/jwks` in both formats).
    pub fn new(
        issuer: String,
        format: TokenFormat,
        token_ttl: u64,
        introspection_delay: std::time::Duration,
    ) -> Result<Self, String> {
        Ok(AuthServer {
            introspection_delay,
            issuer,
            format,
            key: SigningKey::generate()?,
            token_ttl: i64::try_from(token_ttl).unwrap_or(i64::MAX),
            tokens: Mutex::new(HashMap::new()),
        })
    }

    /// Handles one request.
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let log = RequestLog::start("as", peer, &req);
        let (response, outcome) = self.route(req).await;
        log.finish(response.status().as_u16(), outcome, None);
        response
    }

    async fn route(&self, req: Request<Incoming>) -> (Response<Body>, &'static str) {
        match (req.method(), req.uri().path()) {
            // The same document at the OpenID Connect Discovery location, for clients that
            // look only there (this AS issues no ID tokens).
            (&Method::GET, "/.well-known/oauth-authorization-server" | "/.well-known/openid-configuration") => {
                (json(StatusCode::OK, &self.metadata()), "metadata")
            }
            (&Method::GET, "/jwks") => (json(StatusCode::OK, &json!({"keys": [self.key.jwk]})), "jwks"),
            (&Method::POST, "/token") => self.token(req).await,
            (&Method::POST, "/introspect") => self.introspect(req).await,
            (&Method::POST, "/revoke") => self.revoke(req).await,
            (&Method::GET, "/authorize") => {
                // Advertised because MCP clients' metadata schemas require the field; this AS
                // has no users, so there is no authorization code flow.
                (
                    oauth_error(
                        StatusCode::BAD_REQUEST,
                        "unsupported_response_type",
                        "Only client_credentials is supported",
                    ),
                    "unsupported",
                )
            }
            (
                _,
                "/.well-known/oauth-authorization-server"
                | "/.well-known/openid-configuration"
                | "/jwks"
                | "/token"
                | "/introspect"
                | "/revoke"
                | "/authorize",
            ) => (
                oauth_error(StatusCode::METHOD_NOT_ALLOWED, "invalid_request", "Method not allowed"),
                "method_not_allowed",
            ),
            _ => (oauth_error(StatusCode::NOT_FOUND, "not_found", "No such endpoint"), "not_found"),
        }
    }

    fn metadata(&self) -> Value {
        let i = &self.issuer;
        json!({
            "issuer": i,
            "authorization_endpoint": format!("{i}/authorize"),
            "token_endpoint": format!("{i}/token"),
            "introspection_endpoint": format!("{i}/introspect"),
            "revocation_endpoint": format!("{i}/revoke"),
            "jwks_uri": format!("{i}/jwks"),
            "grant_types_supported": ["client_credentials"],
            "response_types_supported": ["code"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic"],
            "introspection_endpoint_auth_methods_supported": ["client_secret_basic"],
            "revocation_endpoint_auth_methods_supported": ["client_secret_basic"],
            "scopes_supported": SCOPES,
        })
    }

    async fn token(&self, req: Request<Incoming>) -> (Response<Body>, &'static str) {
        if !client_authenticated(&req, DEMO_CLIENT_ID, DEMO_CLIENT_SECRET) {
            return (invalid_client(), "invalid_client");
        }
        let Some(form) = read_form(req).await else {
            return (
                oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "Expected a form body"),
                "invalid_request",
            );
        };
        if form.get("grant_type").map(Vec::as_slice) != Some(&["client_credentials".to_owned()][..]) {
            let e =
                oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type", "Only client_credentials is supported");
            return (e, "unsupported_grant_type");
        }
        let audience = match form.get("resource").map(Vec::as_slice) {
            None => None,
            Some([resource]) if is_resource_indicator(resource) => Some(resource.clone()),
            Some([_]) => {
                let e = oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_target",
                    "resource must be an absolute http(s) URL without a fragment",
                );
                return (e, "invalid_target");
            }
            Some(_) => {
                let e = oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_target",
                    "This server accepts one resource per token",
                );
                return (e, "invalid_target");
            }
        };
        let scope = match form.get("scope").map(Vec::as_slice) {
            None => SCOPES.join(" "),
            Some([requested]) => {
                let requested: Vec<&str> = requested.split(' ').filter(|s| !s.is_empty()).collect();
                if let Some(bad) = requested.iter().find(|s| !SCOPES.contains(s)) {
                    let _ = bad; // not echoed: the error stays generic
                    let e = oauth_error(StatusCode::BAD_REQUEST, "invalid_scope", "Unknown scope requested");
                    return (e, "invalid_scope");
                }
                requested.join(" ")
            }
            Some(_) => {
                return (
                    oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "scope given twice"),
                    "invalid_request",
                )
            }
        };

        let now = unix_now();
        let exp = now.saturating_add(self.token_ttl);
        let token = match self.format {
            TokenFormat::Opaque => random_token(),
            TokenFormat::Jwt => {
                // RFC 9068 §2.2: iss, exp, aud, sub, client_id, iat, jti (+ scope).
                let mut claims = json!({
                    "iss": self.issuer,
                    "sub": DEMO_CLIENT_ID,
                    "client_id": DEMO_CLIENT_ID,
                    "scope": scope,
                    "iat": now,
                    "exp": exp,
                    "jti": random_token(),
                });
                if let Some(aud) = &audience {
                    claims["aud"] = json!(aud);
                }
                match self.key.sign(&claims) {
                    Ok(jwt) => jwt,
                    Err(e) => {
                        let e = oauth_error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", &e);
                        return (e, "server_error");
                    }
                }
            }
        };
        {
            let mut tokens = self.tokens.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            tokens.retain(|_, t| t.exp > now); // forget expired tokens as new ones arrive
                                               // JWTs are kept too, so a gateway configured for introspection accepts them.
            tokens.insert(
                token.clone(),
                Token { client_id: DEMO_CLIENT_ID.to_owned(), audience, scope: scope.clone(), iat: now, exp },
            );
        }
        let mut response = json(
            StatusCode::OK,
            &json!({"access_token": token, "token_type": "Bearer", "expires_in": self.token_ttl, "scope": scope}),
        );
        response
            .headers_mut()
            .insert(hyper::header::CACHE_CONTROL, hyper::header::HeaderValue::from_static("no-store"));
        (response, "token_issued")
    }

    /// RFC 7009: the demo client revokes a token it was issued; introspection then answers
    /// `active: false` (a JWT stays verifiable locally until its `exp`: revocation reaches
    /// only gateways that introspect). Unknown tokens are answered the same (200).
    async fn revoke(&self, req: Request<Incoming>) -> (Response<Body>, &'static str) {
        if !client_authenticated(&req, DEMO_CLIENT_ID, DEMO_CLIENT_SECRET) {
            return (invalid_client(), "invalid_client");
        }
        let Some(form) = read_form(req).await else {
            return (
                oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "Expected a form body"),
                "invalid_request",
            );
        };
        let Some([token]) = form.get("token").map(Vec::as_slice) else {
            return (oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "token is required"), "invalid_request");
        };
        let mut tokens = self.tokens.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let revoked = tokens.remove(token).is_some();
        (json(StatusCode::OK, &json!({})), if revoked { "revoked" } else { "unknown_token" })
    }

    async fn introspect(&self, req: Request<Incoming>) -> (Response<Body>, &'static str) {
        if !client_authenticated(&req, GATEWAY_CLIENT_ID, GATEWAY_CLIENT_SECRET) {
            return (invalid_client(), "invalid_client");
        }
        let Some(form) = read_form(req).await else {
            return (
                oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "Expected a form body"),
                "invalid_request",
            );
        };
        let Some([token]) = form.get("token").map(Vec::as_slice) else {
            return (oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "token is required"), "invalid_request");
        };
        if !self.introspection_delay.is_zero() {
            tokio::time::sleep(self.introspection_delay).await;
        }
        let now = unix_now();
        let tokens = self.tokens.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let body = match tokens.get(token) {
            Some(t) if t.exp > now => {
                let mut claims = json!({
                    "active": true,
                    "client_id": t.client_id,
                    "sub": t.client_id,
                    "scope": t.scope,
                    "iat": t.iat,
                    "exp": t.exp,
                    "iss": self.issuer,
                    "token_type": "Bearer",
                });
                if let Some(aud) = &t.audience {
                    claims["aud"] = json!(aud);
                }
                claims
            }
            _ => json!({"active": false}),
        };
        let outcome = if body["active"] == true { "active" } else { "inactive" };
        (json(StatusCode::OK, &body), outcome)
    }
}

fn is_resource_indicator(resource: &str) -> bool {
    url::Url::parse(resource).is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.fragment().is_none())
}

/// client_secret_basic: `Authorization: Basic base64(urlencode(id):urlencode(secret))`.
fn client_authenticated<B>(req: &Request<B>, id: &str, secret: &str) -> bool {
    let mut values = req.headers().get_all(hyper::header::AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else { return false };
    let Some(encoded) = value.to_str().ok().and_then(|v| {
        let (scheme, rest) = v.split_once(' ')?;
        scheme.eq_ignore_ascii_case("basic").then(|| rest.trim())
    }) else {
        return false;
    };
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded) else { return false };
    let Ok(decoded) = String::from_utf8(decoded) else { return false };
    let Some((user, pass)) = decoded.split_once(':') else { return false };
    let decode = |s: &str| -> String {
        url::form_urlencoded::parse(format!("a={s}").as_bytes()).next().map(|(_, v)| v.into_owned()).unwrap_or_default()
    };
    constant_time_eq(decode(user).as_bytes(), id.as_bytes())
        & constant_time_eq(decode(pass).as_bytes(), secret.as_bytes())
}

/// Compares without an early exit on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A form-urlencoded body (at most 64 KiB), every value of every name.
async fn read_form(req: Request<Incoming>) -> Option<HashMap<String, Vec<String>>> {
    let is_form = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("application/x-www-form-urlencoded"));
    if !is_form {
        return None;
    }
    let bytes: Bytes = Limited::new(req.into_body(), 64 * 1024).collect().await.ok()?.to_bytes();
    let mut form: HashMap<String, Vec<String>> = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(&bytes) {
        form.entry(k.into_owned()).or_default().push(v.into_owned());
    }
    Some(form)
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS random number generator works");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response<Body> {
    json(status, &json!({"error": error, "error_description": description}))
}

fn invalid_client() -> Response<Body> {
    let mut r = oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "Client authentication failed");
    r.headers_mut()
        .insert(hyper::header::WWW_AUTHENTICATE, hyper::header::HeaderValue::from_static("Basic realm=\"demo-as\""));
    r
}

#[cfg(test)]
mod tests {
    #[test]
    fn constant_time_eq() {
        assert!(super::constant_time_eq(b"abc", b"abc"));
        assert!(!super::constant_time_eq(b"abc", b"abd"));
        assert!(!super::constant_time_eq(b"abc", b"ab"));
    }

    #[test]
    fn signed_tokens_verify_with_the_served_jwk() {
        let key = super::SigningKey::generate().unwrap();
        assert_eq!(key.jwk["kid"], key.kid.as_str());
        assert_eq!((key.jwk["use"].as_str(), key.jwk["alg"].as_str()), (Some("sig"), Some("ES256")));
        assert!(key.jwk.get("d").is_none(), "no private key material in the JWK");
        let claims = serde_json::json!({"sub": "s", "aud": "http://r/mcp", "exp": super::unix_now() + 60});
        let jwt = key.sign(&claims).unwrap();
        let header = jsonwebtoken::decode_header(&jwt).unwrap();
        assert_eq!((header.typ.as_deref(), header.kid.as_deref()), (Some("at+jwt"), Some(key.kid.as_str())));
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(key.jwk.clone()).unwrap();
        let decoding = jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap();
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
        validation.set_audience(&["http://r/mcp"]);
        let data = jsonwebtoken::decode::<serde_json::Value>(&jwt, &decoding, &validation).unwrap();
        assert_eq!(data.claims["sub"], "s");
        // Another start-up, another key: the first key's tokens do not verify with it.
        let other = super::SigningKey::generate().unwrap();
        assert_ne!(other.kid, key.kid);
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(other.jwk).unwrap();
        let decoding = jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap();
        assert!(jsonwebtoken::decode::<serde_json::Value>(&jwt, &decoding, &validation).is_err());
    }

    #[test]
    fn resource_indicators() {
        assert!(super::is_resource_indicator("http://127.0.0.1:8080/mcp"));
        assert!(!super::is_resource_indicator("http://127.0.0.1:8080/mcp#x"));
        assert!(!super::is_resource_indicator("urn:x"));
        assert!(!super::is_resource_indicator("/mcp"));
    }
}
