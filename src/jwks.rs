//! JSON Web Key Sets (RFC 7517): parsing into verification keys, and choosing the key for
//! one token (by `kid`, or the single key that fits a kid-less token).

use std::borrow::Cow;
use std::fmt;

use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;

use crate::discovery::{read_json_object, Unreadable};
use crate::request::{HttpResponse, TransportError};

/// Smallest RSA modulus accepted (RFC 8725 §3.5 / NIST: 2048 bits).
const MIN_RSA_BYTES: usize = 256;

/// The kind of public key, which decides the algorithms it may verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyKind {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl KeyKind {
    fn fits(self, alg: Algorithm) -> bool {
        use Algorithm as A;
        match self {
            KeyKind::Rsa => matches!(alg, A::RS256 | A::RS384 | A::RS512 | A::PS256 | A::PS384 | A::PS512),
            KeyKind::P256 => alg == A::ES256,
            KeyKind::P384 => alg == A::ES384,
            KeyKind::Ed25519 => alg == A::EdDSA,
        }
    }
}

/// One verification key from a JWKS.
pub(crate) struct VerifyKey {
    pub(crate) kid: Option<String>,
    pub(crate) kind: KeyKind,
    /// The JWK's `alg`, when it names one: then only that algorithm may use the key.
    pub(crate) alg: Option<Algorithm>,
    pub(crate) key: DecodingKey,
}

impl VerifyKey {
    fn fits(&self, alg: Algorithm) -> bool {
        self.kind.fits(alg) && self.alg.is_none_or(|a| a == alg)
    }
}

impl fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyKey").field("kid", &self.kid).field("kind", &self.kind).field("alg", &self.alg).finish()
    }
}

/// The usable keys of one JWKS, and why the others were skipped (for logs).
#[derive(Debug, Default)]
pub(crate) struct KeySet {
    pub(crate) keys: Vec<VerifyKey>,
    pub(crate) skipped: Vec<String>,
}

/// The key chosen for a token.
#[derive(Debug)]
pub(crate) enum Selected<'k> {
    Key(&'k DecodingKey),
    /// The token names a `kid` the set does not have: worth a refetch.
    UnknownKid,
    /// No single key fits (a kid-less token with zero or several candidates, or a known
    /// `kid` whose key does not fit the algorithm): a refetch would not help.
    NoFit,
}

impl KeySet {
    /// The key for a token with this `kid` (if any) and algorithm. A kid-less token gets
    /// a key only when exactly one key fits its algorithm.
    pub(crate) fn select(&self, kid: Option<&str>, alg: Algorithm) -> Selected<'_> {
        match kid {
            Some(kid) => {
                let mut named = self.keys.iter().filter(|k| k.kid.as_deref() == Some(kid)).peekable();
                if named.peek().is_none() {
                    return Selected::UnknownKid;
                }
                let fitting: Vec<&VerifyKey> = named.filter(|k| k.fits(alg)).collect();
                match fitting.as_slice() {
                    [one] => Selected::Key(&one.key),
                    _ => Selected::NoFit,
                }
            }
            None => {
                let mut fitting = self.keys.iter().filter(|k| k.fits(alg));
                match (fitting.next(), fitting.next()) {
                    (Some(one), None) => Selected::Key(&one.key),
                    _ => Selected::NoFit,
                }
            }
        }
    }
}

/// Reads a JWKS response. A transport failure, non-200, or a body that is not a JSON
/// object with a `keys` array fails the set (503); a malformed key is skipped.
pub(crate) fn read_jwks(result: Result<HttpResponse, TransportError>) -> Result<KeySet, Cow<'static, str>> {
    let doc = read_json_object(result, "jwks").map_err(|Unreadable { detail, .. }| detail)?;
    let Some(Value::Array(keys)) = doc.get("keys") else {
        return Err("jwks: document without a \"keys\" array".into());
    };
    let mut set = KeySet::default();
    for (i, jwk) in keys.iter().enumerate() {
        match parse_key(jwk) {
            Ok(Some(k)) => set.keys.push(k),
            Ok(None) => {}
            Err(why) => {
                let kid = jwk.get("kid").and_then(Value::as_str).map(|k| format!(" (kid {k:?})")).unwrap_or_default();
                set.skipped.push(format!("keys[{i}]{kid}: {why}"));
            }
        }
    }
    Ok(set)
}

/// One JWK: `Ok(None)` for a key that is not for signatures (`use: enc`, or `key_ops`
/// without `verify`), `Err` for a key that cannot be used, with the reason.
fn parse_key(jwk: &Value) -> Result<Option<VerifyKey>, &'static str> {
    let Value::Object(jwk) = jwk else { return Err("not a JSON object") };
    match jwk.get("use") {
        None => {}
        Some(Value::String(u)) if u == "sig" => {}
        Some(Value::String(_)) => return Ok(None),
        Some(_) => return Err("\"use\" is not a string"),
    }
    if let Some(ops) = jwk.get("key_ops") {
        let Value::Array(ops) = ops else { return Err("\"key_ops\" is not an array") };
        if !ops.iter().any(|o| o.as_str() == Some("verify")) {
            return Ok(None);
        }
    }
    let kid = match jwk.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err("\"kid\" is not a string"),
    };
    let alg = match jwk.get("alg") {
        None => None,
        Some(Value::String(a)) => match a.parse::<Algorithm>() {
            Ok(Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) => return Err("symmetric \"alg\""),
            Ok(a) => Some(a),
            Err(_) => return Err("unsupported \"alg\""),
        },
        Some(_) => return Err("\"alg\" is not a string"),
    };
    if jwk.contains_key("d") {
        // A private key in a public set is a publisher mistake, not something to trust.
        return Err("contains private key material");
    }
    let text = |name: &str| -> Result<&str, &'static str> {
        jwk.get(name).and_then(Value::as_str).ok_or("missing or non-string key parameter")
    };
    let (kind, key) = match jwk.get("kty").and_then(Value::as_str) {
        Some("RSA") => {
            let (n, e) = (b64(text("n")?)?, b64(text("e")?)?);
            let n = strip_leading_zeros(&n);
            if n.len() < MIN_RSA_BYTES {
                return Err("RSA modulus shorter than 2048 bits");
            }
            let e = strip_leading_zeros(&e);
            if e.is_empty() || e.len() > 8 {
                return Err("RSA exponent out of range");
            }
            (KeyKind::Rsa, DecodingKey::from_rsa_raw_components(n, e))
        }
        Some("EC") => {
            let (kind, len) = match jwk.get("crv").and_then(Value::as_str) {
                Some("P-256") => (KeyKind::P256, 32),
                Some("P-384") => (KeyKind::P384, 48),
                _ => return Err("unsupported EC curve"),
            };
            let (x, y) = (text("x")?, text("y")?);
            if b64(x)?.len() != len || b64(y)?.len() != len {
                return Err("EC coordinates of the wrong length");
            }
            (kind, DecodingKey::from_ec_components(x, y).map_err(|_| "invalid EC coordinates")?)
        }
        Some("OKP") => {
            if jwk.get("crv").and_then(Value::as_str) != Some("Ed25519") {
                return Err("unsupported OKP curve");
            }
            let x = text("x")?;
            if b64(x)?.len() != 32 {
                return Err("Ed25519 key of the wrong length");
            }
            (KeyKind::Ed25519, DecodingKey::from_ed_components(x).map_err(|_| "invalid Ed25519 key")?)
        }
        Some("oct") => return Err("symmetric keys are never used for access tokens"),
        Some(_) => return Err("unsupported kty"),
        None => return Err("missing kty"),
    };
    if let Some(a) = alg {
        if !kind.fits(a) {
            return Err("\"alg\" does not match the key type");
        }
    }
    Ok(Some(VerifyKey { kid, kind, alg, key }))
}

fn b64(s: &str) -> Result<Vec<u8>, &'static str> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s).map_err(|_| "key parameter is not base64url")
}

fn strip_leading_zeros(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[start..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn keys() -> Value {
        serde_json::from_str(include_str!("../tests/testdata/jwt-keys.json")).unwrap()
    }

    fn jwk(name: &str, extra: Value) -> Value {
        let mut k = keys()[name]["public_jwk"].clone();
        for (n, v) in extra.as_object().unwrap() {
            k[n] = v.clone();
        }
        k
    }

    fn read(doc: Value) -> Result<KeySet, Cow<'static, str>> {
        read_jwks(Ok(HttpResponse::new(200, "application/json", doc.to_string())))
    }

    #[test]
    fn every_supported_key_type_parses() {
        let set = read(json!({"keys": [
            jwk("rsa-1", json!({"kid": "r"})), jwk("ec-p256", json!({"kid": "e", "alg": "ES256"})),
            jwk("ec-p384", json!({})), jwk("ed25519", json!({"kid": "d", "use": "sig"}))
        ]}))
        .unwrap();
        assert_eq!(set.skipped, Vec::<String>::new());
        let kinds: Vec<KeyKind> = set.keys.iter().map(|k| k.kind).collect();
        assert_eq!(kinds, [KeyKind::Rsa, KeyKind::P256, KeyKind::P384, KeyKind::Ed25519]);
        assert!(matches!(set.select(Some("r"), Algorithm::PS384), Selected::Key(_)));
        assert!(matches!(set.select(Some("r"), Algorithm::ES256), Selected::NoFit));
        assert!(matches!(set.select(Some("zzz"), Algorithm::RS256), Selected::UnknownKid));
        assert!(matches!(set.select(None, Algorithm::ES384), Selected::Key(_)), "one P-384 key");
        assert!(matches!(set.select(None, Algorithm::EdDSA), Selected::Key(_)));
    }

    #[test]
    fn kidless_token_needs_exactly_one_fitting_key() {
        let set =
            read(json!({"keys": [jwk("rsa-1", json!({"kid": "a"})), jwk("rsa-2", json!({"kid": "b"}))]})).unwrap();
        assert!(matches!(set.select(None, Algorithm::RS256), Selected::NoFit));
        assert!(matches!(set.select(None, Algorithm::ES256), Selected::NoFit));
        let set = read(json!({"keys": [jwk("rsa-1", json!({"alg": "RS256"})), jwk("rsa-2", json!({"alg": "PS256"}))]}))
            .unwrap();
        assert!(matches!(set.select(None, Algorithm::PS256), Selected::Key(_)), "alg narrows the candidates");
    }

    #[test]
    fn bad_keys_are_skipped_with_a_reason_and_enc_keys_ignored() {
        let set = read(json!({"keys": [
            jwk("rsa-1", json!({"kid": "enc", "use": "enc"})),
            jwk("rsa-1", json!({"kid": "wrap", "key_ops": ["wrapKey"]})),
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            {"kty": "RSA", "kid": "short", "n": "AQAB", "e": "AQAB"},
            {"kty": "EC", "kid": "k1", "crv": "secp256k1", "x": "AA", "y": "AA"},
            jwk("ec-p256", json!({"kid": "badalg", "alg": "RS256"})),
            jwk("rsa-1", json!({"kid": "priv", "d": "AAAA"})),
            jwk("rsa-1", json!({"kid": "hs", "alg": "HS256"})),
            "not an object",
            {"kty": "RSA", "kid": "nob64", "n": "!!!", "e": "AQAB"},
            jwk("rsa-2", json!({"kid": "good"}))
        ]}))
        .unwrap();
        assert_eq!(set.keys.len(), 1);
        assert_eq!(set.keys[0].kid.as_deref(), Some("good"));
        assert_eq!(set.skipped.len(), 8, "{:?}", set.skipped);
        assert!(set.skipped[0].starts_with("keys[2] (kid \"hmac\"): symmetric"), "{:?}", set.skipped);
    }

    #[test]
    fn broken_sets_fail() {
        assert!(read(json!({"keys": {}})).is_err());
        assert!(read(json!([])).is_err());
        assert!(read_jwks(Ok(HttpResponse::new(500, "application/json", "{}"))).is_err());
        assert!(read_jwks(Ok(HttpResponse::new(200, "text/html", "<html>"))).is_err());
        assert_eq!(read(json!({"keys": []})).unwrap().keys.len(), 0, "an empty set is valid");
    }
}
