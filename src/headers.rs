//! The header plan of an allowed request: which client headers go (the client's
//! `Authorization`, every client-sent copy of a claim header) and which claim headers are
//! set. Built once per validator; every allowed decision shares it.

use serde_json::{Map, Value};

use crate::claims;
use crate::config::ClaimPath;
use crate::Config;

/// The header changes every allowed request gets.
#[derive(Debug)]
pub(crate) struct HeaderPlan {
    /// `Authorization` (unless `passthrough_credentials`), then every claim header, in
    /// configuration spelling.
    remove: Vec<String>,
    /// The claim headers, in configuration order, with the claim each comes from.
    claim_headers: Vec<(String, ClaimPath)>,
    /// `remove`, folded (see [`fold`]): what a client header must not equal.
    folded: Vec<Vec<u8>>,
}

/// A claim value that cannot be sent as a header (CR, LF, NUL, over 8 KiB).
pub(crate) struct UnsafeClaimValue;

impl HeaderPlan {
    pub(crate) fn new(config: &Config) -> Self {
        let claim_headers: Vec<(String, ClaimPath)> = if config.upstream_headers.is_empty() {
            config.claim_to_header.iter().map(|m| (m.header.clone(), ClaimPath::claim(&m.claim))).collect()
        } else {
            config.upstream_headers.iter().map(|m| (m.header.clone(), m.path.clone())).collect()
        };
        let mut remove = Vec::with_capacity(claim_headers.len() + 2);
        let exchange = config.token_exchange.as_ref().filter(|t| t.enabled);
        // The client's token never reaches the upstream: removed unless passed through;
        // with an exchange it is replaced by the exchanged one.
        if !config.passthrough_credentials || exchange.is_some() {
            remove.push("Authorization".to_owned());
        }
        // An actor token read from a request header is for the token endpoint only.
        if let Some(name) = exchange.and_then(|t| t.request.actor_token_header.as_ref()).filter(|_| {
            exchange.is_some_and(|t| t.request.actor_token_source == Some(crate::config::ActorTokenSource::Header))
        }) {
            remove.push(name.clone());
        }
        remove.extend(claim_headers.iter().map(|(name, _)| name.clone()));
        let folded = remove.iter().map(|n| fold(n.as_bytes()).collect()).collect();
        HeaderPlan { remove, claim_headers, folded }
    }

    /// Header names to remove from the client request before forwarding.
    pub(crate) fn remove_headers(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        self.remove.iter().map(String::as_str)
    }

    /// The claim header names, in configuration order.
    pub(crate) fn claim_header_names(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        self.claim_headers.iter().map(|(n, _)| n.as_str())
    }

    /// True if a client header with this name must not reach the upstream: it equals a
    /// removed header after ASCII case folding and `_`↔`-` folding. CGI and WSGI upstreams
    /// read `X_User_Id` and `X-User-Id` as one variable, so removing only the exact
    /// spelling would let a client supply the claim header through its twin.
    pub(crate) fn must_remove(&self, name: &[u8]) -> bool {
        self.folded.iter().any(|f| f.len() == name.len() && fold(name).eq(f.iter().copied()))
    }

    /// The value of every claim header for these claims (`None`: the claim is absent),
    /// rendered once per validated token.
    pub(crate) fn render(&self, claims: &Map<String, Value>) -> Result<Box<[Option<Box<str>>]>, UnsafeClaimValue> {
        self.claim_headers
            .iter()
            .map(|(_, path)| match claims::lookup(claims, &path.0).and_then(claims::render) {
                Some(v) if claims::is_safe_header_value(&v) => Ok(Some(v.into_boxed_str())),
                Some(_) => Err(UnsafeClaimValue),
                None => Ok(None),
            })
            .collect()
    }
}

/// ASCII lower case, `_` read as `-`.
fn fold(name: &[u8]) -> impl Iterator<Item = u8> + '_ {
    name.iter().map(|b| if *b == b'_' { b'-' } else { b.to_ascii_lowercase() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn plan(extra: Value) -> HeaderPlan {
        let base = json!({"resource": "https://mcp.example/mcp", "authorization_servers": ["https://as.example"]});
        HeaderPlan::new(&crate::config::test_config(base, extra))
    }

    #[test]
    fn underscore_and_case_twins_of_removed_headers_must_go() {
        let p = plan(json!({"claim_to_header": [{"claim": "email", "header": "X-User-Email"}]}));
        assert_eq!(p.remove_headers().collect::<Vec<_>>(), ["Authorization", "X-User-Email"]);
        for name in ["X-User-Email", "x-user-email", "X_User_Email", "x_uSeR-eMaIl", "AUTHORIZATION", "authorization"] {
            assert!(p.must_remove(name.as_bytes()), "{name}");
        }
        for name in ["X-User-Emails", "X-User", "X.User.Email", "Authorisation", "Content-Type", ""] {
            assert!(!p.must_remove(name.as_bytes()), "{name}");
        }
        let p = plan(json!({"passthrough_credentials": true}));
        assert!(!p.must_remove(b"Authorization"), "kept with passthrough_credentials");
    }

    #[test]
    fn values_render_once_and_unsafe_values_are_refused() {
        let p = plan(
            json!({"upstream_headers": [{"header": "X-Sub", "path": ["sub"]}, {"header": "X-G", "path": ["groups", 1]}]}),
        );
        let claims = json!({"sub": "alice", "groups": ["a", "b"]});
        let values = p.render(claims.as_object().unwrap()).ok().unwrap();
        assert_eq!(&*values, &[Some("alice".into()), Some("b".into())]);
        let claims = json!({"sub": "a\r\nX-Evil: 1"});
        assert!(p.render(claims.as_object().unwrap()).is_err());
        let claims = json!({});
        assert_eq!(&*p.render(claims.as_object().unwrap()).ok().unwrap(), &[None, None]);
    }
}
