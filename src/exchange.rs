//! RFC 8693 token exchange: after the client's token is validated, the gateway asks the
//! token endpoint for a token meant for the upstream. The request is built apart from
//! sending it; the answer is read strictly (200, a JSON object, a usable `access_token`,
//! `issued_token_type` equal to the requested type), and anything else is a 503.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Map, Value};
use url::form_urlencoded;

use crate::claims;
use crate::client_auth::ClientAuthenticator;
use crate::clock::UnixMs;
use crate::config::{ActorTokenSource, ExchangeClientAuth, TokenExchange};
use crate::decision::{Exchanged, Grant};
use crate::method::HttpResult;
use crate::outbound::Outbound;
use crate::request::{HttpRequest, Purpose, TransportErrorKind, MAX_RESPONSE_BODY};
use crate::token::Secret;
use crate::{Config, Error};

const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

/// Builds exchange requests and reads their answers, for one configuration.
pub(crate) struct Exchanger {
    endpoint: String,
    auth: ExchangeAuth,
    subject_token_type: String,
    requested_token_type: String,
    actor: Actor,
    actor_token_type: Option<String>,
    audience: Vec<String>,
    scope: Option<String>,
    resource: Option<String>,
    /// Timeout, certificate verification, proxy, HTTP version, keep-alive of the call.
    outbound: Outbound,
    /// `cache.enabled`: exchanged tokens are kept for reuse.
    pub(crate) cache: bool,
    /// `cache.ttl`: how long, when the answer has no `expires_in`.
    pub(crate) default_ttl: Duration,
}

/// How the gateway authenticates at the token endpoint.
enum ExchangeAuth {
    /// `inherit`: the top-level client authentication, whatever its method (basic, post,
    /// a JWT assertion with `aud` = the token endpoint, mutual TLS, none).
    Inherited(Box<ClientAuthenticator>),
    /// `Authorization: Basic …`, computed once.
    Basic(Secret),
    Post {
        client_id: String,
        client_secret: Secret,
    },
    /// No authentication; `client_id` sent when known.
    None {
        client_id: Option<String>,
    },
}

/// Where the actor token comes from.
pub(crate) enum Actor {
    None,
    /// A request header (its name as configured).
    Header(String),
    Config(Secret),
}

impl Exchanger {
    /// The exchanger of an enabled `token_exchange` (validated by `Config::validate`).
    ///
    /// # Errors
    /// A configuration error of the inherited client authentication (keys, certificates).
    pub(crate) fn new(config: &Config, te: &TokenExchange) -> Result<Self, Error> {
        let request = &te.request;
        let endpoint = te.token_endpoint.clone().unwrap_or_default();
        let auth = exchange_auth(config, te, &endpoint)?;
        Ok(Exchanger {
            endpoint,
            auth,
            subject_token_type: request.subject_token_type.clone(),
            requested_token_type: request.requested_token_type.clone(),
            actor: match request.actor_token_source.unwrap_or(ActorTokenSource::None) {
                ActorTokenSource::None => Actor::None,
                ActorTokenSource::Header => Actor::Header(request.actor_token_header.clone().unwrap_or_default()),
                ActorTokenSource::Config => {
                    Actor::Config(request.actor_token.clone().unwrap_or_else(|| Secret::new("")))
                }
            },
            actor_token_type: request.actor_token_type.clone(),
            audience: request.audience.clone(),
            scope: (!request.scopes.is_empty()).then(|| request.scopes.join(" ")),
            resource: request.resource.clone(),
            outbound: Outbound::new(config),
            cache: te.cache.enabled,
            default_ttl: Duration::from_secs(te.cache.ttl),
        })
    }

    pub(crate) fn actor(&self) -> &Actor {
        &self.actor
    }

    /// The exchange request for the client's token (and the actor token, if any), at `now`
    /// (the time of an inherited client assertion).
    ///
    /// # Errors
    /// A secret-free reason when an inherited client assertion could not be signed.
    pub(crate) fn request(
        &self,
        subject_token: &str,
        actor_token: Option<&str>,
        now: UnixMs,
    ) -> Result<HttpRequest, &'static str> {
        let mut form = form_urlencoded::Serializer::new(String::with_capacity(subject_token.len() + 256));
        form.append_pair("grant_type", GRANT_TYPE);
        form.append_pair("subject_token", subject_token);
        form.append_pair("subject_token_type", &self.subject_token_type);
        form.append_pair("requested_token_type", &self.requested_token_type);
        if let Some(actor) = actor_token {
            form.append_pair("actor_token", actor);
            let actor_type =
                self.actor_token_type.as_deref().unwrap_or("urn:ietf:params:oauth:token-type:access_token");
            form.append_pair("actor_token_type", actor_type);
        }
        for a in &self.audience {
            form.append_pair("audience", a);
        }
        if let Some(scope) = &self.scope {
            form.append_pair("scope", scope);
        }
        if let Some(resource) = &self.resource {
            form.append_pair("resource", resource);
        }
        let mut request = self.outbound.request("POST", &self.endpoint, Purpose::TokenExchange);
        request.headers.push(("Content-Type".to_owned(), "application/x-www-form-urlencoded".to_owned()));
        request.headers.push(("Accept".to_owned(), "application/json".to_owned()));
        match &self.auth {
            ExchangeAuth::Inherited(auth) => auth.apply(&mut request, &mut form, now)?,
            ExchangeAuth::Basic(header) => {
                request.headers.push(("Authorization".to_owned(), header.expose().to_owned()))
            }
            ExchangeAuth::Post { client_id, client_secret } => {
                form.append_pair("client_id", client_id);
                form.append_pair("client_secret", client_secret.expose());
            }
            ExchangeAuth::None { client_id: Some(id) } => {
                form.append_pair("client_id", id);
            }
            ExchangeAuth::None { client_id: None } => {}
        }
        request.body = form.finish().into_bytes();
        Ok(request)
    }

    /// Reads the token endpoint's answer. `Err` carries a detail for logs (never the
    /// answer's text): every failure is a 503, never a 401 and never the client's token
    /// forwarded.
    pub(crate) fn read(
        &self,
        result: HttpResult,
        project: impl FnOnce(&Map<String, Value>) -> Arc<Grant>,
    ) -> Result<Exchanged, Cow<'static, str>> {
        let response = result.map_err(|e| {
            Cow::Borrowed(match e.kind {
                TransportErrorKind::Connect => "token exchange: connection failed",
                TransportErrorKind::Timeout => "token exchange: timed out",
                TransportErrorKind::Tls => "token exchange: TLS failure",
                TransportErrorKind::BodyTooLarge => "token exchange: response body over 1 MiB",
                _ => "token exchange: transport failure",
            })
        })?;
        if response.status != 200 {
            let hint = match response.status {
                400 | 401 | 403 => {
                    " (the token endpoint refused the exchange: check token_exchange.client_auth, \
                                   client_id, client_secret and request)"
                }
                _ => "",
            };
            return Err(Cow::Owned(format!("token exchange: HTTP {}{hint}", response.status)));
        }
        if response.body.len() > MAX_RESPONSE_BODY {
            return Err(Cow::Borrowed("token exchange: response body over 1 MiB"));
        }
        let doc = match serde_json::from_slice::<Value>(&response.body) {
            Ok(Value::Object(m)) => m,
            Ok(_) => return Err(Cow::Borrowed("token exchange: response is not a JSON object")),
            Err(_) => return Err(Cow::Borrowed("token exchange: response is not valid JSON")),
        };
        let token = match doc.get("access_token").and_then(Value::as_str) {
            Some(t) if !t.is_empty() && claims::is_safe_header_value(t) && !t.contains([' ', ',']) => t,
            _ => return Err(Cow::Borrowed("token exchange: no usable access_token in the response")),
        };
        match doc.get("issued_token_type").and_then(Value::as_str) {
            Some(t) if t == self.requested_token_type => {}
            Some(_) => {
                return Err(Cow::Borrowed("token exchange: issued_token_type differs from requested_token_type"))
            }
            None => return Err(Cow::Borrowed("token exchange: response without issued_token_type")),
        }
        let expires_in = match doc.get("expires_in") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => match n.as_u64() {
                Some(secs) => Some(Duration::from_secs(secs)),
                None => return Err(Cow::Borrowed("token exchange: expires_in is not a non-negative integer")),
            },
            Some(_) => return Err(Cow::Borrowed("token exchange: expires_in is not a number")),
        };
        Ok(Exchanged {
            authorization: Secret::new(format!("Bearer {token}")),
            projection: jwt_claims(token).map(|c| project(&c)),
            expires_in,
        })
    }
}

fn exchange_auth(config: &Config, te: &TokenExchange, endpoint: &str) -> Result<ExchangeAuth, Error> {
    let (method, id, secret) = match te.effective_client_auth() {
        ExchangeClientAuth::Inherit => {
            return Ok(ExchangeAuth::Inherited(Box::new(ClientAuthenticator::new(config, endpoint)?)));
        }
        other => (other, te.client_id.clone(), te.client_secret.clone()),
    };
    Ok(match (method, id, secret) {
        (ExchangeClientAuth::ClientSecretBasic, Some(id), Some(secret)) => {
            let encode = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            let pair = format!("{}:{}", encode(&id), encode(secret.expose()));
            ExchangeAuth::Basic(Secret::new(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            )))
        }
        (ExchangeClientAuth::ClientSecretPost, Some(client_id), Some(client_secret)) => {
            ExchangeAuth::Post { client_id, client_secret }
        }
        (_, client_id, _) => ExchangeAuth::None { client_id },
    })
}

/// The payload of a JWT (decoded, not verified: it came straight from the token endpoint
/// over the connection the gateway opened), or `None` for an opaque token.
fn jwt_claims(token: &str) -> Option<Map<String, Value>> {
    let mut parts = token.split('.');
    let (Some(_), Some(payload), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return None;
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        Value::Object(m) => Some(m),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::HttpResponse;
    use crate::TransportError;
    use serde_json::json;

    const NOW: UnixMs = UnixMs(1_800_000_000_000);

    fn exchanger(te: Value) -> Exchanger {
        let base = json!({"resource": "https://mcp.example/mcp", "authorization_servers": ["https://as.example"],
            "introspection_endpoint": "https://as.example/introspect", "client_id": "gw", "client_secret": "gw-secret",
            "passthrough_credentials": true});
        let mut te_all = json!({"enabled": true, "token_endpoint": "https://as.example/token"});
        for (k, v) in te.as_object().unwrap() {
            te_all[k] = v.clone();
        }
        let config = crate::config::test_config(base, json!({"token_exchange": te_all}));
        let te = config.token_exchange.clone().unwrap();
        Exchanger::new(&config, &te).unwrap()
    }

    fn form(req: &HttpRequest) -> Vec<(String, String)> {
        form_urlencoded::parse(&req.body).into_owned().collect()
    }

    fn header<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
        req.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    #[test]
    fn request_parameters_follow_the_configuration() {
        let e = exchanger(json!({"client_auth": "client_secret_post", "client_id": "ex", "client_secret": "ex-s",
            "request": {"audience": ["a1", "a2"], "scopes": ["s1", "s2"], "resource": "https://up.example/mcp",
                        "actor_token_source": "config", "actor_token": "actor-1"}}));
        let Actor::Config(actor) = e.actor() else { panic!() };
        let req = e.request("subject-1", Some(actor.expose()), NOW).unwrap();
        assert_eq!(
            (req.method, req.url.as_str(), req.purpose),
            ("POST", "https://as.example/token", Purpose::TokenExchange)
        );
        assert_eq!(header(&req, "authorization"), None);
        let at = "urn:ietf:params:oauth:token-type:access_token";
        let expected: Vec<(String, String)> = [
            ("grant_type", GRANT_TYPE),
            ("subject_token", "subject-1"),
            ("subject_token_type", at),
            ("requested_token_type", at),
            ("actor_token", "actor-1"),
            ("actor_token_type", at),
            ("audience", "a1"),
            ("audience", "a2"),
            ("scope", "s1 s2"),
            ("resource", "https://up.example/mcp"),
            ("client_id", "ex"),
            ("client_secret", "ex-s"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        assert_eq!(form(&req), expected);
        assert!(!format!("{req:?}").contains("subject-1"), "Debug redacts the body");
    }

    #[test]
    fn inherit_and_basic() {
        let e = exchanger(json!({"client_auth": "inherit"}));
        let req = e.request("t", None, NOW).unwrap();
        let basic = base64::engine::general_purpose::STANDARD.encode("gw:gw-secret");
        assert_eq!(header(&req, "authorization"), Some(format!("Basic {basic}").as_str()));
        assert!(!form(&req).iter().any(|(k, _)| k.starts_with("client") || k.starts_with("actor")));
        let e = exchanger(json!({"client_auth": "none", "client_id": "pub"}));
        assert!(form(&e.request("t", None, NOW).unwrap()).contains(&("client_id".into(), "pub".into())));
    }

    fn answer(body: Value) -> HttpResult {
        Ok(HttpResponse::new(200, "application/json", body.to_string()))
    }

    fn project(_: &Map<String, Value>) -> Arc<Grant> {
        Arc::new(Grant {
            exp: None,
            nbf: None,
            identity: Default::default(),
            header_values: Box::default(),
            refusal: None,
            claims_json: "{}".into(),
            introspection: None,
        })
    }

    #[test]
    fn answers_are_read_strictly() {
        let e = exchanger(json!({}));
        let at = "urn:ietf:params:oauth:token-type:access_token";
        let ok = e.read(answer(json!({"access_token": "x.y", "issued_token_type": at, "expires_in": 60})), project);
        let ok = ok.unwrap();
        assert_eq!(ok.authorization.expose(), "Bearer x.y");
        assert_eq!(ok.expires_in, Some(Duration::from_secs(60)));
        assert!(ok.projection.is_none(), "not a JWT");
        let jwt = format!("e30.{}.sig", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"sub":"s"}"#));
        let ok = e.read(answer(json!({"access_token": jwt, "issued_token_type": at})), project).unwrap();
        assert!(ok.projection.is_some(), "a JWT is projected");
        for (bad, why) in [
            (json!({"issued_token_type": at}), "no usable access_token"),
            (json!({"access_token": "a b", "issued_token_type": at}), "no usable access_token"),
            (json!({"access_token": "a\r\nX: y", "issued_token_type": at}), "no usable access_token"),
            (json!({"access_token": "a"}), "without issued_token_type"),
            (json!({"access_token": "a", "issued_token_type": "urn:ietf:params:oauth:token-type:id_token"}), "differs"),
            (json!({"access_token": "a", "issued_token_type": at, "expires_in": "60"}), "not a number"),
        ] {
            let e = e.read(answer(bad.clone()), project).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        let e400 = e.read(Ok(HttpResponse::new(400, "application/json", r#"{"error":"invalid_grant"}"#)), project);
        assert!(e400.unwrap_err().contains("HTTP 400"));
        let timeout = e.read(Err(TransportError::new(TransportErrorKind::Timeout, "slow")), project);
        assert_eq!(timeout.unwrap_err(), "token exchange: timed out");
        assert!(e.read(Ok(HttpResponse::new(200, "application/json", "[1]")), project).is_err());
    }

    #[test]
    fn inherit_uses_the_top_level_client_authentication_and_transport() {
        let keys: Value = serde_json::from_str(include_str!("../tests/testdata/client-jwks.json")).unwrap();
        let base = json!({"resource": "https://mcp.example/mcp", "authorization_servers": ["https://as.example"],
            "introspection_endpoint": "https://as.example/introspect", "client_id": "gw",
            "client_auth": "private_key_jwt", "client_jwk": keys["ec-p256"].clone(),
            "https_proxy": "http://proxy.corp:3128", "http_version": 1.0, "passthrough_credentials": true,
            "token_exchange": {"enabled": true, "token_endpoint": "https://as.example/token", "client_auth": "inherit"}});
        let config = crate::config::test_config(base, json!({}));
        let e = Exchanger::new(&config, config.token_exchange.as_ref().unwrap()).unwrap();
        let req = e.request("t", None, NOW).unwrap();
        let f = form(&req);
        let assertion = f.iter().find(|(k, _)| k == "client_assertion").map(|(_, v)| v.clone()).unwrap();
        let payload = assertion.split('.').nth(1).unwrap();
        let claims: Value =
            serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        assert_eq!(claims["aud"], "https://as.example/token", "the assertion is for the token endpoint");
        assert_eq!(claims["iat"], 1_800_000_000);
        assert!(!req.headers.iter().any(|(n, _)| n == "Authorization"));
        assert_eq!(req.proxy.as_ref().map(|p| p.url()), Some("http://proxy.corp:3128"));
        assert_eq!(req.http_version, crate::HttpVersion::Http10);
    }
}
