//! RFC 7662 token introspection: the request is built apart from sending it, and the
//! response is read strictly (behaviour.md §4).

use std::borrow::Cow;
use std::time::Duration;

use base64::Engine as _;
use serde_json::Value;
use url::form_urlencoded;

use crate::claims;
use crate::clock::UnixMs;
use crate::config::ClientAuth;
use crate::decision::Reason;
use crate::method::{HttpResult, MethodState, Progress, TokenValidation};
use crate::policy::Outcome;
use crate::request::{HttpRequest, HttpResponse, Purpose, TransportErrorKind, MAX_RESPONSE_BODY};
use crate::token::Secret;
use crate::Config;

/// Builds introspection requests for one configuration.
#[derive(Debug)]
pub(crate) struct Introspector {
    url: String,
    auth: ClientAuth,
    client_id: Option<String>,
    client_secret: Option<Secret>,
    /// `Authorization: Basic …` computed once.
    basic: Option<Secret>,
    args: Vec<(String, Secret)>,
    headers: Vec<(String, Secret)>,
    timeout: Duration,
}

impl Introspector {
    pub(crate) fn new(config: &Config, url: &str) -> Self {
        let auth = config.effective_client_auth();
        let basic = match (auth, &config.client_id, &config.client_secret) {
            (ClientAuth::ClientSecretBasic, Some(id), Some(secret)) => {
                // RFC 6749 §2.3.1: id and secret are form-urlencoded before base64.
                let pair = format!("{}:{}", form_encode(id), form_encode(secret.expose()));
                Some(Secret::new(format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair))))
            }
            _ => None,
        };
        Introspector {
            url: url.to_owned(),
            auth,
            client_id: config.client_id.clone(),
            client_secret: config.client_secret.clone(),
            basic,
            args: config.args.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            headers: config.headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            timeout: Duration::from_millis(config.timeout),
        }
    }

    /// The introspection request for `token`.
    pub(crate) fn request(&self, token: &str) -> HttpRequest {
        let mut form = form_urlencoded::Serializer::new(String::with_capacity(token.len() + 96));
        form.append_pair("token", token);
        form.append_pair("token_type_hint", "access_token");
        match self.auth {
            ClientAuth::ClientSecretPost => {
                if let (Some(id), Some(secret)) = (&self.client_id, &self.client_secret) {
                    form.append_pair("client_id", id);
                    form.append_pair("client_secret", secret.expose());
                }
            }
            ClientAuth::None => {
                if let Some(id) = &self.client_id {
                    form.append_pair("client_id", id);
                }
            }
            _ => {}
        }
        for (k, v) in &self.args {
            form.append_pair(k, v.expose());
        }
        let mut headers = Vec::with_capacity(3 + self.headers.len());
        headers.push(("Content-Type".to_owned(), "application/x-www-form-urlencoded".to_owned()));
        headers.push(("Accept".to_owned(), "application/json".to_owned()));
        if let Some(b) = &self.basic {
            headers.push(("Authorization".to_owned(), b.expose().to_owned()));
        }
        headers.extend(self.headers.iter().map(|(k, v)| (k.clone(), v.expose().to_owned())));
        HttpRequest {
            method: "POST",
            url: self.url.clone(),
            headers,
            body: form.finish().into_bytes(),
            timeout: self.timeout,
            purpose: Purpose::Introspection,
        }
    }
}

impl TokenValidation for Introspector {
    fn start(&self, token: &str, _now: UnixMs) -> Progress {
        Progress::Need(self.request(token), MethodState::Introspect)
    }

    fn resume(&self, _token: &str, state: MethodState, result: HttpResult, _now: UnixMs) -> Progress {
        match state {
            MethodState::Introspect => read_response(result),
            _ => Progress::Done(Outcome::Unavailable("introspection: unexpected step".into())),
        }
    }
}

fn failed(detail: impl Into<Cow<'static, str>>) -> Progress {
    Progress::Done(Outcome::Unavailable(detail.into()))
}

/// Reads an introspection response: 200, `application/json`, at most 1 MiB, a JSON object
/// whose `active` is exactly `true`.
pub(crate) fn read_response(result: HttpResult) -> Progress {
    let response: HttpResponse = match result {
        Ok(r) => r,
        Err(e) => {
            return failed(match e.kind {
                TransportErrorKind::Connect => "introspection: connection failed",
                TransportErrorKind::Timeout => "introspection: timed out",
                TransportErrorKind::Tls => "introspection: TLS failure",
                TransportErrorKind::BodyTooLarge => "introspection: response body over 1 MiB",
                _ => "introspection: transport failure",
            })
        }
    };
    if response.status != 200 {
        let hint = match response.status {
            400 | 401 | 403 => {
                " (the authorization server refused the gateway itself: check client_id, client_secret and client_auth)"
            }
            _ => "",
        };
        return failed(format!("introspection: HTTP {}{hint}", response.status));
    }
    if response.body.len() > MAX_RESPONSE_BODY {
        return failed("introspection: response body over 1 MiB");
    }
    if !response.header("content-type").is_some_and(is_json_media_type) {
        return failed("introspection: response is not application/json");
    }
    let claims = match serde_json::from_slice::<Value>(&response.body) {
        Ok(Value::Object(m)) => m,
        Ok(_) => return failed("introspection: response is not a JSON object"),
        Err(_) => return failed("introspection: response is not valid JSON"),
    };
    match claims.get("active") {
        Some(Value::Bool(true)) if claims::is_access_token(&claims) => Progress::Claims(claims),
        Some(Value::Bool(true)) => Progress::Done(Outcome::invalid(Reason::TokenTypeInvalid)),
        _ => Progress::Done(Outcome::invalid(Reason::TokenInactive)),
    }
}

/// `application/json`, with or without parameters (`; charset=utf-8`).
fn is_json_media_type(v: &str) -> bool {
    v.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
}

fn form_encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(extra: Value) -> Config {
        let base = json!({
            "resource": "https://mcp.example/mcp", "authorization_servers": ["https://as.example"],
            "introspection_endpoint": "https://as.example/introspect",
            "client_id": "gate way", "client_secret": "s3cr:t&="
        });
        crate::config::test_config(base, extra)
    }

    fn form(req: &HttpRequest) -> Vec<(String, String)> {
        form_urlencoded::parse(&req.body).into_owned().collect()
    }

    fn header<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
        req.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    #[test]
    fn basic_auth_is_form_encoded_and_never_in_the_body() {
        let c = config(json!({"args": {"extra": "1"}, "headers": {"X-Tenant": "t1"}}));
        let req = Introspector::new(&c, "https://as.example/introspect").request("tok+en/=");
        assert_eq!(req.method, "POST");
        let expected = base64::engine::general_purpose::STANDARD.encode("gate+way:s3cr%3At%26%3D");
        assert_eq!(header(&req, "authorization"), Some(format!("Basic {expected}").as_str()));
        assert_eq!(header(&req, "content-type"), Some("application/x-www-form-urlencoded"));
        assert_eq!(header(&req, "accept"), Some("application/json"));
        assert_eq!(header(&req, "x-tenant"), Some("t1"));
        let f = form(&req);
        assert_eq!(
            f,
            vec![
                ("token".into(), "tok+en/=".into()),
                ("token_type_hint".into(), "access_token".into()),
                ("extra".into(), "1".into())
            ]
        );
        assert!(!format!("{req:?}").contains("s3cr"), "Debug redacts");
        assert!(!format!("{req:?}").contains("tok+en"), "Debug redacts");
    }

    #[test]
    fn post_and_none_auth() {
        let req = Introspector::new(&config(json!({"client_auth": "client_secret_post"})), "https://x/i").request("t");
        assert_eq!(header(&req, "authorization"), None);
        let f = form(&req);
        assert!(f.contains(&("client_id".into(), "gate way".into())));
        assert!(f.contains(&("client_secret".into(), "s3cr:t&=".into())));
        let req = Introspector::new(&config(json!({"client_auth": "none", "client_secret": null})), "https://x/i")
            .request("t");
        assert_eq!(header(&req, "authorization"), None);
        assert_eq!(form(&req).len(), 3, "token, hint, client_id");
    }

    fn resp(status: u16, ct: &str, body: &str) -> HttpResult {
        Ok(HttpResponse::new(status, ct, body))
    }

    fn is_claims(p: &Progress) -> bool {
        matches!(p, Progress::Claims(_))
    }

    fn is_reason(p: &Progress, reason: Reason) -> bool {
        matches!(p, Progress::Done(Outcome::Invalid(r, _)) if *r == reason)
    }

    fn is_failed(p: &Progress) -> bool {
        matches!(p, Progress::Done(Outcome::Unavailable(_)))
    }

    #[test]
    fn strict_active_true() {
        assert!(is_claims(&read_response(resp(200, "application/json", r#"{"active":true}"#))));
        assert!(is_claims(&read_response(resp(200, "application/json; charset=UTF-8", r#"{"active":true}"#))));
        for body in [r#"{"active":"true"}"#, r#"{"active":1}"#, r#"{}"#, r#"{"active":false}"#, r#"{"active":null}"#] {
            assert!(is_reason(&read_response(resp(200, "application/json", body)), Reason::TokenInactive), "{body}");
        }
        for body in [
            r#"{"active":true,"typ":"Refresh"}"#,
            r#"{"active":true,"typ":"Offline"}"#,
            r#"{"active":true,"typ":"ID"}"#,
            r#"{"active":true,"token_type":"refresh_token"}"#,
        ] {
            assert!(is_reason(&read_response(resp(200, "application/json", body)), Reason::TokenTypeInvalid), "{body}");
        }
        for body in [r#"{"active":true,"typ":"Bearer"}"#, r#"{"active":true,"token_type":"Bearer"}"#] {
            assert!(is_claims(&read_response(resp(200, "application/json", body))), "{body}");
        }
    }

    #[test]
    fn failures_are_not_inactive() {
        for (status, ct, body) in [
            (500, "application/json", r#"{"active":true}"#),
            (401, "application/json", r#"{"error":"invalid_client"}"#),
            (200, "text/html", r#"{"active":true}"#),
            (200, "application/json", "<html>"),
            (200, "application/json", "[1,2]"),
            (200, "application/json", "\"x\""),
        ] {
            assert!(is_failed(&read_response(resp(status, ct, body))), "{status} {body}");
        }
        let big = format!(r#"{{"active":true,"x":"{}"}}"#, "a".repeat(MAX_RESPONSE_BODY));
        assert!(is_failed(&read_response(resp(200, "application/json", &big))));
        let e = crate::TransportError::new(TransportErrorKind::Timeout, "slow");
        match read_response(Err(e)) {
            Progress::Done(Outcome::Unavailable(d)) => assert_eq!(d, "introspection: timed out"),
            _ => panic!("not a failure"),
        }
    }
}
