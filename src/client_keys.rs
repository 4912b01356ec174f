//! The keys and certificates of client authentication, parsed and checked from the
//! configuration's text (a JWK, a shared secret, PEM): what signs an RFC 7523 assertion, and
//! whether a mutual-TLS certificate and key belong together. Every problem is a
//! configuration error naming the field; nothing here prints key material. Used by the
//! configuration's checks and by the client authenticator, and depends on neither.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RsaEncoding};
use aws_lc_rs::{hmac, rsa};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Map, Value};

use crate::Error;

/// Smallest RSA modulus accepted for signing (RFC 7518 §3.3).
const MIN_RSA_BYTES: usize = 256;

pub(crate) enum Signer {
    Hmac(Box<hmac::Key>),
    Rsa(Box<rsa::KeyPair>, &'static dyn RsaEncoding),
    Ecdsa(Box<EcdsaKeyPair>),
    Ed25519(Box<Ed25519KeyPair>),
}

impl Signer {
    pub(crate) fn sign(&self, message: &[u8]) -> Result<Vec<u8>, aws_lc_rs::error::Unspecified> {
        match self {
            Signer::Hmac(key) => Ok(hmac::sign(key, message).as_ref().to_vec()),
            Signer::Rsa(key, encoding) => {
                let mut out = vec![0u8; key.public_modulus_len()];
                key.sign(*encoding, &SystemRandom::new(), message, &mut out)?;
                Ok(out)
            }
            Signer::Ecdsa(key) => Ok(key.sign(&SystemRandom::new(), message)?.as_ref().to_vec()),
            Signer::Ed25519(key) => Ok(key.sign(message).as_ref().to_vec()),
        }
    }
}

/// `client_secret_jwt`: HMAC with the client secret, `client_alg` HS256 (default), HS384 or
/// HS512.
pub(crate) fn hmac_signer(alg: Option<&str>, secret: &str) -> Result<(Signer, &'static str, Option<String>), Error> {
    let (alg, algorithm) = match alg.unwrap_or("HS256") {
        "HS256" => ("HS256", hmac::HMAC_SHA256),
        "HS384" => ("HS384", hmac::HMAC_SHA384),
        "HS512" => ("HS512", hmac::HMAC_SHA512),
        _ => return Err(Error::config("client_alg", "is not HS256, HS384 or HS512 (client_secret_jwt)")),
    };
    Ok((Signer::Hmac(Box::new(hmac::Key::new(algorithm, secret.as_bytes()))), alg, None))
}

/// The kinds of private key `private_key_jwt` signs with, and the algorithms each fits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Rsa,
    P256,
    P384,
    P521,
    Ed25519,
}

impl KeyKind {
    fn algorithms(self) -> &'static [&'static str] {
        match self {
            KeyKind::Rsa => &["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"],
            KeyKind::P256 => &["ES256"],
            KeyKind::P384 => &["ES384"],
            KeyKind::P521 => &["ES512"],
            KeyKind::Ed25519 => &["EdDSA"],
        }
    }

    fn name(self) -> &'static str {
        match self {
            KeyKind::Rsa => "an RSA key",
            KeyKind::P256 => "an EC P-256 key",
            KeyKind::P384 => "an EC P-384 key",
            KeyKind::P521 => "an EC P-521 key",
            KeyKind::Ed25519 => "an Ed25519 key",
        }
    }
}

/// `private_key_jwt`: the signer for `client_jwk` (a JWK, or a JWK Set with one private
/// key) and `client_alg` (default: the JWK's `alg`, else the key type's usual one).
pub(crate) fn private_key_signer(
    jwk_text: &str,
    alg: Option<&str>,
) -> Result<(Signer, &'static str, Option<String>), Error> {
    let err = |m: &str| Error::config("client_jwk", m);
    let jwk = match serde_json::from_str::<Value>(jwk_text) {
        Ok(Value::Object(m)) => m,
        _ => return Err(err("must be a JWK or a JWK Set (a JSON object)")),
    };
    let jwk = match jwk.get("keys") {
        Some(Value::Array(keys)) => {
            let private: Vec<&Map<String, Value>> =
                keys.iter().filter_map(Value::as_object).filter(|k| k.contains_key("d")).collect();
            match private.as_slice() {
                [one] => (*one).clone(),
                [] => return Err(err("is a JWK Set without a private key")),
                _ => return Err(err("is a JWK Set with several private keys: keep the one to sign with")),
            }
        }
        Some(_) => return Err(err("\"keys\" must be an array")),
        None => jwk,
    };
    match jwk.get("use") {
        None => {}
        Some(Value::String(u)) if u == "sig" => {}
        Some(_) => return Err(err("is not a signing key (\"use\" is not \"sig\")")),
    }
    if let Some(ops) = jwk.get("key_ops") {
        let signs = ops.as_array().is_some_and(|ops| ops.iter().any(|o| o.as_str() == Some("sign")));
        if !signs {
            return Err(err("is not a signing key (\"key_ops\" lacks \"sign\")"));
        }
    }
    let kid = match jwk.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(err("\"kid\" must be a string")),
    };
    let kind = key_kind(&jwk)?;
    let jwk_alg = match jwk.get("alg") {
        None => None,
        Some(Value::String(a)) => Some(a.as_str()),
        Some(_) => return Err(err("\"alg\" must be a string")),
    };
    if let (Some(a), Some(j)) = (alg, jwk_alg) {
        if a != j {
            return Err(Error::config("client_alg", "differs from the \"alg\" of client_jwk"));
        }
    }
    let chosen = alg.or(jwk_alg).unwrap_or(kind.algorithms()[0]);
    let Some(alg) = kind.algorithms().iter().copied().find(|a| *a == chosen) else {
        let field = if alg.is_some() { "client_alg" } else { "client_jwk" };
        return Err(Error::config(
            field,
            format!(
                "does not fit: client_jwk is {}, which signs {} (client_alg)",
                kind.name(),
                kind.algorithms().join(", ")
            ),
        ));
    };
    let signer = match kind {
        KeyKind::Rsa => rsa_signer(&jwk, alg)?,
        KeyKind::P256 | KeyKind::P384 | KeyKind::P521 => ec_signer(&jwk, kind)?,
        KeyKind::Ed25519 => {
            let (d, x) = (member(&jwk, "d")?, member(&jwk, "x")?);
            let pair = Ed25519KeyPair::from_seed_and_public_key(&d, &x)
                .map_err(|_| err("is not a valid Ed25519 private key (\"d\" and \"x\" do not form a key)"))?;
            Signer::Ed25519(Box::new(pair))
        }
    };
    Ok((signer, alg, kid))
}

fn key_kind(jwk: &Map<String, Value>) -> Result<KeyKind, Error> {
    let err = |m: &str| Error::config("client_jwk", m);
    if jwk.get("kty").and_then(Value::as_str) == Some("oct") {
        return Err(err("is a symmetric key: private_key_jwt signs with a private key (use client_secret_jwt)"));
    }
    if !jwk.contains_key("d") {
        return Err(err("is a public key: private_key_jwt needs the private key (\"d\")"));
    }
    let crv = jwk.get("crv").and_then(Value::as_str);
    match (jwk.get("kty").and_then(Value::as_str), crv) {
        (Some("RSA"), _) => Ok(KeyKind::Rsa),
        (Some("EC"), Some("P-256")) => Ok(KeyKind::P256),
        (Some("EC"), Some("P-384")) => Ok(KeyKind::P384),
        (Some("EC"), Some("P-521")) => Ok(KeyKind::P521),
        (Some("EC"), _) => Err(err("has an unsupported EC curve (P-256, P-384 or P-521)")),
        (Some("OKP"), Some("Ed25519")) => Ok(KeyKind::Ed25519),
        (Some("OKP"), _) => Err(err("has an unsupported OKP curve (Ed25519)")),
        _ => Err(err("has a missing or unsupported \"kty\" (RSA, EC or OKP)")),
    }
}

/// A base64url member of the JWK, decoded (trailing `=` tolerated).
fn member(jwk: &Map<String, Value>, name: &str) -> Result<Vec<u8>, Error> {
    let text = jwk.get(name).and_then(Value::as_str).ok_or_else(|| {
        Error::config("client_jwk", format!("lacks the \"{name}\" parameter (or it is not a string)"))
    })?;
    URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .map_err(|_| Error::config("client_jwk", format!("\"{name}\" is not base64url")))
}

fn rsa_signer(jwk: &Map<String, Value>, alg: &str) -> Result<Signer, Error> {
    let [n, e, d, p, q, dp, dq, qi] = ["n", "e", "d", "p", "q", "dp", "dq", "qi"].map(|m| member(jwk, m));
    let n = n?;
    let n = strip_leading_zeros(&n);
    if n.len() < MIN_RSA_BYTES {
        return Err(Error::config("client_jwk", "is an RSA key shorter than 2048 bits"));
    }
    let e = e?;
    let components = rsa::KeyPairComponents {
        public_key: rsa::PublicKeyComponents { n, e: strip_leading_zeros(&e) },
        d: d?,
        p: p?,
        q: q?,
        dP: dp?,
        dQ: dq?,
        qInv: qi?,
    };
    let pair = rsa::KeyPair::from_components(&components).map_err(|_| {
        Error::config("client_jwk", "is not a valid RSA private key (its parameters do not form a key)")
    })?;
    let encoding: &'static dyn RsaEncoding = match alg {
        "RS256" => &signature::RSA_PKCS1_SHA256,
        "RS384" => &signature::RSA_PKCS1_SHA384,
        "RS512" => &signature::RSA_PKCS1_SHA512,
        "PS256" => &signature::RSA_PSS_SHA256,
        "PS384" => &signature::RSA_PSS_SHA384,
        _ => &signature::RSA_PSS_SHA512,
    };
    Ok(Signer::Rsa(Box::new(pair), encoding))
}

fn ec_signer(jwk: &Map<String, Value>, kind: KeyKind) -> Result<Signer, Error> {
    let (algorithm, len) = match kind {
        KeyKind::P256 => (&signature::ECDSA_P256_SHA256_FIXED_SIGNING, 32),
        KeyKind::P384 => (&signature::ECDSA_P384_SHA384_FIXED_SIGNING, 48),
        _ => (&signature::ECDSA_P521_SHA512_FIXED_SIGNING, 66),
    };
    let (x, y, d) = (member(jwk, "x")?, member(jwk, "y")?, member(jwk, "d")?);
    if x.len() != len || y.len() != len || d.len() != len {
        return Err(Error::config("client_jwk", "has EC parameters of the wrong length for its curve"));
    }
    let mut point = Vec::with_capacity(1 + 2 * len);
    point.push(4);
    point.extend_from_slice(&x);
    point.extend_from_slice(&y);
    let pair = EcdsaKeyPair::from_private_key_and_public_key(algorithm, &d, &point).map_err(|_| {
        Error::config("client_jwk", "is not a valid EC private key (\"d\", \"x\", \"y\" do not form a key)")
    })?;
    Ok(Signer::Ecdsa(Box::new(pair)))
}

/// The mutual-TLS certificate chain and key parse, and the key belongs to the first
/// certificate (its public key appears in the certificate's SubjectPublicKeyInfo).
pub(crate) fn check_certificate_and_key(cert_pem: &str, key_pem: &str) -> Result<(), Error> {
    let certs: Vec<CertificateDer<'_>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|_| Error::config("tls_client_auth_cert", "is not valid PEM"))?;
    let Some(leaf) = certs.first() else {
        return Err(Error::config("tls_client_auth_cert", "holds no PEM certificate"));
    };
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|_| {
        Error::config("tls_client_auth_key", "holds no PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC)")
    })?;
    let public = public_key_of(&key).ok_or_else(|| {
        Error::config("tls_client_auth_key", "is not a usable RSA, EC (P-256, P-384, P-521) or Ed25519 private key")
    })?;
    if !leaf.as_ref().windows(public.len()).any(|w| w == public.as_slice()) {
        return Err(Error::config("tls_client_auth_key", "does not belong to tls_client_auth_cert"));
    }
    Ok(())
}

/// The public key bytes of a private key, as they appear in a certificate (RSA: the DER
/// `RSAPublicKey`; EC: the uncompressed point; Ed25519: the 32 bytes).
fn public_key_of(key: &PrivateKeyDer<'_>) -> Option<Vec<u8>> {
    let der = key.secret_der();
    let ec = || {
        [
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
            &signature::ECDSA_P521_SHA512_FIXED_SIGNING,
        ]
        .into_iter()
        .find_map(|alg| EcdsaKeyPair::from_private_key_der(alg, der).ok())
        .map(|k| k.public_key().as_ref().to_vec())
    };
    match key {
        PrivateKeyDer::Pkcs1(_) => rsa::KeyPair::from_der(der).ok().map(|k| k.public_key().as_ref().to_vec()),
        PrivateKeyDer::Sec1(_) => ec(),
        PrivateKeyDer::Pkcs8(_) => {
            rsa::KeyPair::from_pkcs8(der).ok().map(|k| k.public_key().as_ref().to_vec()).or_else(ec).or_else(|| {
                Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).ok().map(|k| k.public_key().as_ref().to_vec())
            })
        }
        _ => None,
    }
}

fn strip_leading_zeros(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[start..]
}
