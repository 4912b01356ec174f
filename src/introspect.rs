//! RFC 7662 token introspection: the request is built apart from sending it (client
//! authentication, transport facts), and the response is read strictly (behaviour.md §4),
//! including signed answers (RFC 9701), which are verified with the authorization server's
//! keys before they count.

use std::borrow::Cow;

use base64::Engine as _;
use serde_json::{Map, Value};
use url::form_urlencoded;

use crate::claims;
use crate::client_auth::ClientAuthenticator;
use crate::clock::UnixMs;
use crate::config::IntrospectionFormat;
use crate::decision::Reason;
use crate::jwt::LocalJwt;
use crate::method::{HttpResult, IntrospectKeys, MethodState, Progress, TokenValidation};
use crate::outbound::Outbound;
use crate::policy::Outcome;
use crate::request::{HttpRequest, HttpResponse, Purpose, TransportErrorKind, MAX_RESPONSE_BODY};
use crate::token::Secret;
use crate::{Config, Error};

/// The media type of a signed introspection answer (RFC 9701 §4).
const JWT_MEDIA_TYPE: &str = "application/token-introspection+jwt";

/// Builds introspection requests for one configuration and reads their answers.
pub(crate) struct Introspector {
    /// `introspection_endpoint`, or `mtls_introspection_endpoint` with a mutual-TLS method.
    url: String,
    outbound: Outbound,
    auth: ClientAuthenticator,
    args: Vec<(String, Secret)>,
    headers: Vec<(String, Secret)>,
    /// `introspection_jwt_response`: ask for signed answers and accept only those.
    require_signed: bool,
    /// `introspection_format`: how the raw answer is exposed to the host.
    format: Option<IntrospectionFormat>,
    /// Verifies signed answers with the authorization server's keys (metadata and key set
    /// fetched on first need, then cached); `None` without a `client_id` to check `aud`.
    signed: Option<LocalJwt>,
}

impl Introspector {
    /// The introspector of `config`, whose `introspection_endpoint` is `url`.
    ///
    /// # Errors
    /// A configuration error from the client authentication (keys, certificates).
    pub(crate) fn new(config: &Config, url: &str) -> Result<Self, Error> {
        let tls = config.effective_client_auth().is_tls();
        let url = match &config.mtls_introspection_endpoint {
            Some(mtls) if tls => mtls.as_str(),
            _ => url,
        };
        Ok(Introspector {
            url: url.to_owned(),
            outbound: Outbound::new(config),
            auth: ClientAuthenticator::new(config, url)?,
            args: config.args.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            headers: config.headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            require_signed: config.introspection_jwt_response,
            format: config.introspection_format,
            signed: config.client_id.is_some().then(|| LocalJwt::for_introspection_responses(config)),
        })
    }

    /// The introspection request for `token` at `now` (the time of its client assertion).
    ///
    /// # Errors
    /// A secret-free reason when the client assertion could not be signed.
    pub(crate) fn request(&self, token: &str, now: UnixMs) -> Result<HttpRequest, &'static str> {
        let mut request = self.outbound.request("POST", &self.url, Purpose::Introspection);
        let mut form = form_urlencoded::Serializer::new(String::with_capacity(token.len() + 96));
        form.append_pair("token", token);
        form.append_pair("token_type_hint", "access_token");
        let accept = if self.require_signed { JWT_MEDIA_TYPE } else { "application/json" };
        request.headers.reserve(3 + self.headers.len());
        request.headers.push(("Content-Type".to_owned(), "application/x-www-form-urlencoded".to_owned()));
        request.headers.push(("Accept".to_owned(), accept.to_owned()));
        self.auth.apply(&mut request, &mut form, now)?;
        for (k, v) in &self.args {
            form.append_pair(k, v.expose());
        }
        request.headers.extend(self.headers.iter().map(|(k, v)| (k.clone(), v.expose().to_owned())));
        request.body = form.finish().into_bytes();
        Ok(request)
    }

    /// Reads an introspection response: 200, at most 1 MiB, and either `application/json`
    /// with a JSON object, or a signed answer (RFC 9701) that verifies; then `active` must be
    /// exactly `true`.
    fn read(&self, result: HttpResult, now: UnixMs) -> Progress {
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
            if matches!(response.status, 400 | 401 | 403) {
                let fields = self.auth.fields_to_check();
                return failed(format!(
                    "introspection: HTTP {} (the authorization server refused the gateway itself: check {fields})",
                    response.status
                ));
            }
            return failed(format!("introspection: HTTP {}", response.status));
        }
        if response.body.len() > MAX_RESPONSE_BODY {
            return failed("introspection: response body over 1 MiB");
        }
        let content_type = response.header("content-type").unwrap_or_default();
        if is_media_type(content_type, JWT_MEDIA_TYPE) {
            let Ok(jwt) = std::str::from_utf8(&response.body).map(str::trim) else {
                return failed("introspection: the signed answer is not a JWT");
            };
            let Some(verifier) = &self.signed else {
                return failed("introspection: a signed answer (RFC 9701), but no client_id to check its aud");
            };
            let progress = verifier.start(jwt, now);
            return self.signed_progress(Secret::new(jwt), progress);
        }
        if !is_media_type(content_type, "application/json") {
            return failed("introspection: response is not application/json");
        }
        if self.require_signed {
            return failed("introspection: an unsigned answer where a signed one (RFC 9701) was asked for");
        }
        let claims = match serde_json::from_slice::<Value>(&response.body) {
            Ok(Value::Object(m)) => m,
            Ok(_) => return failed("introspection: response is not a JSON object"),
            Err(_) => return failed("introspection: response is not valid JSON"),
        };
        // Valid JSON is valid UTF-8: the raw text is the body.
        let raw = self.format.map(|_| String::from_utf8_lossy(&response.body).into_owned());
        self.read_claims(claims, raw)
    }

    /// Continues the verification of a signed answer: its claims, the next key fetch, or why
    /// it cannot be trusted (always a 503: the answer is the authorization server's, and a
    /// forged one says nothing about the token).
    fn signed_progress(&self, jwt: Secret, progress: Progress) -> Progress {
        match progress {
            Progress::Claims(mut verified, _) => match verified.remove("token_introspection") {
                Some(Value::Object(answer)) => {
                    let raw = self.format.map(|_| Value::Object(answer.clone()).to_string());
                    self.read_claims(answer, raw)
                }
                _ => failed("introspection: the signed answer has no token_introspection object"),
            },
            Progress::Need(http, MethodState::Jwt(step)) => {
                Progress::Need(http, MethodState::IntrospectKeys(Box::new(IntrospectKeys { response: jwt, step })))
            }
            Progress::Need(..) => failed("introspection: unexpected step"),
            Progress::Done(Outcome::Invalid(reason, _)) => {
                failed(format!("introspection: the signed answer does not verify ({})", signed_failure(reason)))
            }
            Progress::Done(other) => Progress::Done(other),
        }
    }

    /// `active` must be exactly `true`, and the token an access token.
    fn read_claims(&self, claims: Map<String, Value>, raw: Option<String>) -> Progress {
        match claims.get("active") {
            Some(Value::Bool(true)) if claims::is_access_token(&claims) => {
                Progress::Claims(claims, raw.map(|r| self.encode(&r)))
            }
            Some(Value::Bool(true)) => Progress::Done(Outcome::invalid(Reason::TokenTypeInvalid)),
            _ => Progress::Done(Outcome::invalid(Reason::TokenInactive)),
        }
    }

    /// The raw answer in the `introspection_format` encoding.
    fn encode(&self, raw: &str) -> Box<str> {
        match self.format {
            Some(IntrospectionFormat::Base64) => base64::engine::general_purpose::STANDARD.encode(raw).into(),
            Some(IntrospectionFormat::Base64url) => base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw).into(),
            _ => raw.into(),
        }
    }
}

impl std::fmt::Debug for Introspector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Introspector")
            .field("url", &self.url)
            .field("auth", &self.auth)
            .field("require_signed", &self.require_signed)
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

impl TokenValidation for Introspector {
    fn start(&self, token: &str, now: UnixMs) -> Progress {
        match self.request(token, now) {
            Ok(request) => Progress::Need(request, MethodState::Introspect),
            Err(detail) => failed(detail),
        }
    }

    fn resume(&self, _token: &str, state: MethodState, result: HttpResult, now: UnixMs) -> Progress {
        match (state, &self.signed) {
            (MethodState::Introspect, _) => self.read(result, now),
            (MethodState::IntrospectKeys(waiting), Some(verifier)) => {
                let IntrospectKeys { response, step } = *waiting;
                let progress = verifier.resume(response.expose(), MethodState::Jwt(step), result, now);
                self.signed_progress(response, progress)
            }
            _ => failed("introspection: unexpected step"),
        }
    }
}

/// Why a signed answer was not trusted, for logs.
fn signed_failure(reason: Reason) -> &'static str {
    match reason {
        Reason::TokenSignatureInvalid => "bad signature",
        Reason::TokenKeyUnknown => "no key of the authorization server fits",
        Reason::TokenAlgorithmNotAllowed => "algorithm not allowed",
        Reason::IssuerMismatch => "iss is not an accepted issuer",
        Reason::AudienceMismatch => "aud is not the gateway's client_id",
        Reason::TokenTypeInvalid => "typ is not token-introspection+jwt",
        Reason::TokenExpired | Reason::TokenNotYetValid => "outside its validity time",
        _ => "malformed",
    }
}

fn failed(detail: impl Into<Cow<'static, str>>) -> Progress {
    Progress::Done(Outcome::Unavailable(detail.into()))
}

/// `value` names the media type `expected`, with or without parameters (`; charset=utf-8`).
fn is_media_type(value: &str, expected: &str) -> bool {
    value.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case(expected))
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

    fn introspector(extra: Value) -> Introspector {
        let c = config(extra);
        Introspector::new(&c, c.introspection_endpoint.as_deref().unwrap()).unwrap()
    }

    const NOW: UnixMs = UnixMs(1_800_000_000_000);

    fn form(req: &HttpRequest) -> Vec<(String, String)> {
        form_urlencoded::parse(&req.body).into_owned().collect()
    }

    fn header<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
        req.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    #[test]
    fn basic_auth_is_form_encoded_and_never_in_the_body() {
        let req = introspector(json!({"args": {"extra": "1"}, "headers": {"X-Tenant": "t1"}}))
            .request("tok+en/=", NOW)
            .unwrap();
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
        let req = introspector(json!({"client_auth": "client_secret_post"})).request("t", NOW).unwrap();
        assert_eq!(header(&req, "authorization"), None);
        let f = form(&req);
        assert!(f.contains(&("client_id".into(), "gate way".into())));
        assert!(f.contains(&("client_secret".into(), "s3cr:t&=".into())));
        let req = introspector(json!({"client_auth": "none", "client_secret": null})).request("t", NOW).unwrap();
        assert_eq!(header(&req, "authorization"), None);
        assert_eq!(form(&req).len(), 3, "token, hint, client_id");
    }

    fn resp(status: u16, ct: &str, body: &str) -> HttpResult {
        Ok(HttpResponse::new(status, ct, body))
    }

    fn read_response(result: HttpResult) -> Progress {
        introspector(json!({})).read(result, NOW)
    }

    fn is_claims(p: &Progress) -> bool {
        matches!(p, Progress::Claims(..))
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
            (200, "application/token-introspection+jwt", "not.a.jwt"),
            (200, "application/token-introspection+jwt", r#"{"active":true}"#),
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

    #[test]
    fn introspection_format_encodes_the_raw_answer() {
        let body = r#"{"active":true, "sub":"ü/?>"}"#;
        for (format, expected) in [
            ("string", body.to_owned()),
            ("base64", base64::engine::general_purpose::STANDARD.encode(body)),
            ("base64url", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(body)),
        ] {
            let i = introspector(json!({"introspection_format": format}));
            match i.read(resp(200, "application/json", body), NOW) {
                Progress::Claims(_, Some(raw)) => assert_eq!(&*raw, expected, "{format}"),
                _ => panic!("{format}: no raw answer"),
            }
        }
        assert!(matches!(read_response(resp(200, "application/json", body)), Progress::Claims(_, None)));
    }

    #[test]
    fn a_required_signed_answer_is_asked_for_and_an_unsigned_one_refused() {
        let i = introspector(json!({"introspection_jwt_response": true}));
        let req = i.request("t", NOW).unwrap();
        assert_eq!(header(&req, "accept"), Some("application/token-introspection+jwt"));
        let p = i.read(resp(200, "application/json", r#"{"active":true}"#), NOW);
        assert!(matches!(p, Progress::Done(Outcome::Unavailable(d)) if d.contains("unsigned")));
    }
}
