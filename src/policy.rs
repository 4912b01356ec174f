//! Audience, time and scope rules shared by every validation path (behaviour.md §4, §6).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::Config;

/// The audience rule (RFC 8707): `aud` must name the resource or one of `audiences`;
/// `audiences_denied` values never match.
#[derive(Debug)]
pub(crate) struct AudiencePolicy {
    relaxed: bool,
    accepted: Vec<String>,
    denied: Vec<String>,
}

impl AudiencePolicy {
    pub(crate) fn new(config: &Config) -> Self {
        let mut accepted = vec![config.resource.clone()];
        accepted.extend(config.audiences.iter().cloned());
        AudiencePolicy {
            relaxed: config.insecure_relaxed_audience_validation,
            accepted,
            denied: config.audiences_denied.clone(),
        }
    }

    /// True if the `aud` claim (string or array; absent fails) is acceptable.
    pub(crate) fn audience_matches(&self, aud: Option<&Value>) -> bool {
        if self.relaxed {
            return true;
        }
        let matches = |a: &str| !self.denied.iter().any(|d| d == a) && self.accepted.iter().any(|x| x == a);
        match aud {
            Some(Value::String(a)) => matches(a),
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).any(matches),
            _ => false,
        }
    }
}

/// Why a token's time claims make it unusable now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TimeFailure {
    Expired,
    NotYetValid,
}

/// `exp` must be later than now − leeway; `nbf` no later than now + leeway.
pub(crate) fn check_time(exp: Option<i64>, nbf: Option<i64>, now: i64, leeway: i64) -> Result<(), TimeFailure> {
    if let Some(exp) = exp {
        if exp.saturating_add(leeway) <= now {
            return Err(TimeFailure::Expired);
        }
    }
    if let Some(nbf) = nbf {
        if nbf > now.saturating_add(leeway) {
            return Err(TimeFailure::NotYetValid);
        }
    }
    Ok(())
}

/// Scope hierarchy from configuration only (`scope_implies`), closed transitively.
#[derive(Debug, Default)]
pub(crate) struct ScopeRules {
    implies: BTreeMap<String, Vec<String>>,
}

impl ScopeRules {
    pub(crate) fn new(config: &Config) -> Self {
        ScopeRules { implies: config.scope_implies.clone() }
    }

    /// True if the granted scopes (space-separated), expanded by `scope_implies`,
    /// cover every required scope.
    pub(crate) fn covers(&self, granted: Option<&str>, required: &[String]) -> bool {
        if required.is_empty() {
            return true;
        }
        let granted = granted.unwrap_or("");
        if self.implies.is_empty() {
            return required.iter().all(|r| granted.split(' ').any(|g| g == r));
        }
        let mut have: BTreeSet<&str> = BTreeSet::new();
        let mut todo: Vec<&str> = granted.split(' ').filter(|s| !s.is_empty()).collect();
        while let Some(s) = todo.pop() {
            if have.insert(s) {
                if let Some(more) = self.implies.get(s) {
                    todo.extend(more.iter().map(String::as_str));
                }
            }
        }
        required.iter().all(|r| have.contains(r.as_str()))
    }
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

    #[test]
    fn audience_is_strict_and_exact() {
        let p = AudiencePolicy::new(&config(json!({})));
        assert!(p.audience_matches(Some(&json!("https://mcp.example/mcp"))));
        assert!(p.audience_matches(Some(&json!(["x", "https://mcp.example/mcp"]))));
        assert!(!p.audience_matches(Some(&json!("https://mcp.example/mcp/"))));
        assert!(!p.audience_matches(Some(&json!("HTTPS://mcp.example/mcp"))));
        assert!(!p.audience_matches(Some(&json!("account"))));
        assert!(!p.audience_matches(Some(&json!([]))));
        assert!(!p.audience_matches(Some(&json!(1))));
        assert!(!p.audience_matches(None));
    }

    #[test]
    fn extra_and_denied_audiences() {
        let p = AudiencePolicy::new(&config(json!({"audiences": ["mcp-client", "account"]})));
        assert!(p.audience_matches(Some(&json!("mcp-client"))));
        assert!(!p.audience_matches(Some(&json!("account"))), "denied audiences never match");
        let relaxed = AudiencePolicy::new(&config(json!({"insecure_relaxed_audience_validation": true})));
        assert!(relaxed.audience_matches(None));
        assert!(relaxed.audience_matches(Some(&json!("account"))));
    }

    #[test]
    fn time_with_leeway() {
        assert_eq!(check_time(Some(100), None, 100, 0), Err(TimeFailure::Expired));
        assert_eq!(check_time(Some(101), None, 100, 0), Ok(()));
        assert_eq!(check_time(Some(95), None, 100, 10), Ok(()));
        assert_eq!(check_time(None, Some(101), 100, 0), Err(TimeFailure::NotYetValid));
        assert_eq!(check_time(None, Some(105), 100, 5), Ok(()));
        assert_eq!(check_time(Some(i64::MAX), Some(i64::MIN), 100, i64::MAX), Ok(()));
    }

    #[test]
    fn scopes_with_configured_hierarchy_only() {
        let r = ScopeRules::new(&config(json!({})));
        let req = |s: &[&str]| s.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        assert!(r.covers(Some("a b"), &req(&["b"])));
        assert!(!r.covers(Some("a b"), &req(&["b", "c"])));
        assert!(!r.covers(None, &req(&["a"])));
        assert!(r.covers(None, &[]));
        assert!(!r.covers(Some("mcp:admin"), &req(&["mcp:read"])), "nothing implied by name");
        let r = ScopeRules::new(&config(
            json!({"scope_implies": {"mcp:admin": ["mcp:write"], "mcp:write": ["mcp:read"], "mcp:read": ["mcp:admin"]}}),
        ));
        assert!(r.covers(Some("mcp:admin"), &req(&["mcp:read", "mcp:write"])));
        assert!(!r.covers(Some("other"), &req(&["mcp:read"])));
    }
}
