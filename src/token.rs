//! Bearer token extraction (RFC 6750 §2.1) and the redacting newtypes for secrets.

use std::fmt;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Tokens longer than this are rejected as `invalid_token` without contacting the AS.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// A secret string (client secret, private key, …). Its `Debug` prints `[redacted]`, and
/// so does serializing it: neither the value nor anything derived from it ever leaves.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret value. Call only where the value is sent to the authorization server.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret::new(value)
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("[redacted]")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Go through `Value` so that a wrongly typed secret is never echoed in the error
        // (serde's own "invalid type: integer `1234`" message would print it).
        match serde_json::Value::deserialize(deserializer)? {
            serde_json::Value::String(s) => Ok(Secret(s)),
            _ => Err(D::Error::custom("must be a string")),
        }
    }
}

/// A bearer token taken from a request, as its bytes (its characters are checked only
/// when it is not found in the cache: see [`bearer_candidate`]). `Debug` never prints it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct AccessToken<'a>(pub(crate) &'a [u8]);

impl<'a> AccessToken<'a> {
    /// The token as text, if it is an RFC 6750 b64token (so ASCII).
    pub(crate) fn well_formed(self) -> Option<&'a str> {
        if is_b64token(self.0) {
            std::str::from_utf8(self.0).ok()
        } else {
            None
        }
    }
}

impl fmt::Debug for AccessToken<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AccessToken([redacted; {} bytes])", self.0.len())
    }
}

/// What the `Authorization` header(s) of a request carry.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Extracted<'a> {
    /// No `Authorization` header, or one with another scheme.
    NoCredentials,
    /// Two `Authorization` headers, `Bearer` without a token, or a token that is not a b64token.
    Malformed,
    /// A token longer than [`MAX_TOKEN_LEN`].
    TooLong,
    /// A syntactically valid bearer token.
    Bearer(AccessToken<'a>),
}

/// Extracts the bearer token from the values of every `Authorization` header of a request.
#[cfg(test)]
pub(crate) fn extract_bearer<'a>(values: &[&'a [u8]]) -> Extracted<'a> {
    match bearer_candidate(values) {
        Extracted::Bearer(t) if t.well_formed().is_none() => Extracted::Malformed,
        other => other,
    }
}

/// [`extract_bearer`] without the b64token check of the token's characters, which the
/// caller makes with [`is_well_formed`] when it needs to: a token found in the cache (by
/// its SHA-256) was checked when it was stored, so a cache hit skips the scan.
pub(crate) fn bearer_candidate<'a>(values: &[&'a [u8]]) -> Extracted<'a> {
    let value = match values {
        [] => return Extracted::NoCredentials,
        [one] => *one,
        _ => return Extracted::Malformed,
    };
    let value = trim_ows(value);
    if value.is_empty() {
        return Extracted::NoCredentials;
    }
    let (scheme, rest) = match value.iter().position(|b| *b == b' ') {
        Some(i) => (&value[..i], &value[i..]),
        None => (value, &value[value.len()..]),
    };
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return Extracted::NoCredentials;
    }
    let token = trim_leading_spaces(rest);
    if token.is_empty() {
        return Extracted::Malformed;
    }
    if token.len() > MAX_TOKEN_LEN {
        return Extracted::TooLong;
    }
    Extracted::Bearer(AccessToken(token))
}

fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

fn trim_leading_spaces(mut v: &[u8]) -> &[u8] {
    while let [b' ', rest @ ..] = v {
        v = rest;
    }
    v
}

/// Bytes allowed before the trailing `=` padding of a b64token.
const B64TOKEN_CHAR: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~' | b'+' | b'/');
        b += 1;
    }
    t
};

/// RFC 6750 `b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
/// A table lookup per byte: this runs over every token on the hot path.
fn is_b64token(t: &[u8]) -> bool {
    let body_end = t.iter().rposition(|b| *b != b'=').map_or(0, |i| i + 1);
    body_end > 0 && t[..body_end].iter().fold(true, |ok, b| ok & B64TOKEN_CHAR[usize::from(*b)])
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(values: &[&str]) -> Extracted<'static> {
        let v: Vec<&'static [u8]> =
            values.iter().map(|s| &*Box::leak(s.as_bytes().to_vec().into_boxed_slice())).collect();
        extract_bearer(&v)
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_allows_several_spaces() {
        assert_eq!(ex(&["Bearer abc"]), Extracted::Bearer(AccessToken(b"abc")));
        assert_eq!(ex(&["bEaReR   abc=="]), Extracted::Bearer(AccessToken(b"abc==")));
        assert_eq!(ex(&["BEARER a-b.c_d~e+f/g "]), Extracted::Bearer(AccessToken(b"a-b.c_d~e+f/g")));
    }

    #[test]
    fn no_header_or_other_scheme_is_no_credentials() {
        assert_eq!(ex(&[]), Extracted::NoCredentials);
        assert_eq!(ex(&[""]), Extracted::NoCredentials);
        assert_eq!(ex(&["Basic Zm9vOmJhcg=="]), Extracted::NoCredentials);
        assert_eq!(ex(&["Bearerabc"]), Extracted::NoCredentials);
        assert_eq!(ex(&["DPoP abc"]), Extracted::NoCredentials);
    }

    #[test]
    fn malformed_bearer_values() {
        assert_eq!(ex(&["Bearer"]), Extracted::Malformed);
        assert_eq!(ex(&["Bearer    "]), Extracted::Malformed);
        assert_eq!(ex(&["Bearer a b"]), Extracted::Malformed);
        assert_eq!(ex(&["Bearer a,Bearer b"]), Extracted::Malformed);
        assert_eq!(ex(&["Bearer ==="]), Extracted::Malformed);
        assert_eq!(ex(&["Bearer a=b"]), Extracted::Malformed);
        assert_eq!(ex(&["Bearer \"abc\""]), Extracted::Malformed);
        assert_eq!(ex(&["Bearer a\tb"]), Extracted::Malformed);
        assert_eq!(ex(&["Bearer a", "Bearer a"]), Extracted::Malformed);
        assert_eq!(ex(&["Bearer a", "Basic b"]), Extracted::Malformed);
        assert_eq!(extract_bearer(&[b"Bearer \xff\xfe"]), Extracted::Malformed);
    }

    #[test]
    fn token_length_limit() {
        let ok = format!("Bearer {}", "a".repeat(MAX_TOKEN_LEN));
        assert!(matches!(ex(&[&ok]), Extracted::Bearer(_)));
        let long = format!("Bearer {}", "a".repeat(MAX_TOKEN_LEN + 1));
        assert_eq!(ex(&[&long]), Extracted::TooLong);
    }

    #[test]
    fn secrets_and_tokens_never_print() {
        let s = Secret::new("kong-secret");
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"[redacted]\"", "not even a digest of the value");
        assert!(!format!("{:?}", AccessToken(b"tok123")).contains("tok123"));
        let err = serde_json::from_str::<Secret>("12345678").unwrap_err().to_string();
        assert!(!err.contains("12345678"), "{err}");
    }
}
