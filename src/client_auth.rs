//! How the gateway authenticates itself to an authorization-server endpoint (`client_auth`):
//! `client_secret_basic`, `client_secret_post`, RFC 7523 JWT assertions
//! (`client_secret_jwt`, `private_key_jwt`), RFC 8705 mutual TLS (`tls_client_auth`,
//! `self_signed_tls_client_auth`) and `none`.
//!
//! A [`ClientAuthenticator`] is built once per endpoint from the configuration: keys and
//! certificates are parsed and checked there (every problem is a configuration error naming
//! the field), so that each request only signs. Assertions are built per request at the
//! caller's `now`, with a fresh random `jti`. Keys are held by aws-lc-rs; nothing here prints
//! a secret (`Debug` names the method, the algorithm and the `kid` only).

use std::fmt;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use serde_json::{Map, Value};
use url::form_urlencoded::{self, Serializer};

use crate::client_keys::{check_certificate_and_key, hmac_signer, private_key_signer, Signer};
use crate::clock::UnixMs;
use crate::config::ClientAuth;
use crate::outbound::Outbound;
use crate::request::{ClientCertificate, HttpRequest};
use crate::token::Secret;
use crate::{Config, Error};

/// `client_assertion_type` of RFC 7523 §2.2.
pub(crate) const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// An assertion's lifetime: `exp` = `iat` + this (RFC 7523 §3 asks for a short one).
pub(crate) const ASSERTION_LIFETIME_SECS: i64 = 60;

/// The client authentication of one endpoint.
pub(crate) struct ClientAuthenticator {
    method: ClientAuth,
    client_id: Option<String>,
    credentials: Credentials,
}

enum Credentials {
    /// `none`.
    Nothing,
    /// `client_secret_basic`: the whole `Authorization` value, computed once.
    Basic(Secret),
    /// `client_secret_post`: the secret for the form.
    Post(Secret),
    /// `client_secret_jwt` / `private_key_jwt`.
    Assertion(Box<Assertion>),
    /// `tls_client_auth` / `self_signed_tls_client_auth`: the certificate to present and
    /// whether to verify the server (`tls_client_auth_ssl_verify`).
    MutualTls(ClientCertificate, bool),
}

/// An RFC 7523 client assertion for one endpoint: everything but `jti`, `iat`, `exp` and the
/// signature is computed once.
pub(crate) struct Assertion {
    signer: Signer,
    alg: &'static str,
    kid: Option<String>,
    /// base64url of the JOSE header, then `.`.
    header: String,
    /// The claims JSON up to the per-request members: `{"iss":…,"sub":…,"aud":…,"jti":"`.
    claims_prefix: String,
}

impl ClientAuthenticator {
    /// The client authentication of `config` at `endpoint` (the URL the calls go to: the
    /// default `aud` of assertions).
    ///
    /// # Errors
    /// A configuration error naming the field(s): a `client_jwk` that is not a usable
    /// private key or does not fit `client_alg`, a certificate or key that does not parse or
    /// does not match. Never a secret in the message.
    pub(crate) fn new(config: &Config, endpoint: &str) -> Result<Self, Error> {
        let method = config.effective_client_auth();
        let secret = || config.client_secret.clone().unwrap_or_else(|| Secret::new(""));
        let client_id = config.client_id.clone();
        let credentials = match method {
            ClientAuth::None => Credentials::Nothing,
            ClientAuth::ClientSecretBasic => {
                // RFC 6749 §2.3.1: id and secret are form-urlencoded before base64.
                let pair = format!(
                    "{}:{}",
                    form_encode(client_id.as_deref().unwrap_or_default()),
                    form_encode(secret().expose())
                );
                Credentials::Basic(Secret::new(format!("Basic {}", STANDARD.encode(pair))))
            }
            ClientAuth::ClientSecretPost => Credentials::Post(secret()),
            ClientAuth::ClientSecretJwt | ClientAuth::PrivateKeyJwt => {
                let (signer, alg, kid) = if method == ClientAuth::ClientSecretJwt {
                    hmac_signer(config.client_alg.as_deref(), secret().expose())?
                } else {
                    let jwk = config.client_jwk.as_ref().map(|j| j.0.expose()).unwrap_or_default();
                    private_key_signer(jwk, config.client_alg.as_deref())?
                };
                let audience = config.client_assertion_audience.as_deref().unwrap_or(endpoint);
                let id = client_id.as_deref().unwrap_or_default();
                Credentials::Assertion(Box::new(Assertion::new(signer, alg, kid, id, audience)))
            }
            ClientAuth::TlsClientAuth | ClientAuth::SelfSignedTlsClientAuth => {
                let cert = config.tls_client_auth_cert.clone().unwrap_or_default();
                let key = config.tls_client_auth_key.clone().unwrap_or_else(|| Secret::new(""));
                check_certificate_and_key(&cert, key.expose())?;
                Credentials::MutualTls(ClientCertificate::new(cert, key), config.tls_client_auth_ssl_verify)
            }
        };
        Ok(ClientAuthenticator { method, client_id, credentials })
    }

    /// Authenticates one call at `now`: the form fields (`client_id`, `client_secret`,
    /// `client_assertion*`), the `Authorization` header, or the client certificate of the
    /// request.
    ///
    /// # Errors
    /// A short, secret-free reason when an assertion could not be signed (a crypto-library
    /// failure: never expected; the call must then not be made).
    /// The configuration fields to check when the server refuses these credentials, for
    /// the detail of the 503 an operator reads in the logs.
    pub(crate) fn fields_to_check(&self) -> &'static str {
        match self.method {
            ClientAuth::ClientSecretBasic | ClientAuth::ClientSecretPost => "client_id, client_secret and client_auth",
            ClientAuth::ClientSecretJwt => "client_id, client_secret, client_alg and client_auth",
            ClientAuth::PrivateKeyJwt => "client_id, client_jwk, client_alg and client_auth",
            ClientAuth::TlsClientAuth | ClientAuth::SelfSignedTlsClientAuth => {
                "client_id, tls_client_auth_cert, tls_client_auth_key and client_auth"
            }
            ClientAuth::None => "client_id and client_auth",
        }
    }

    pub(crate) fn apply(
        &self,
        request: &mut HttpRequest,
        form: &mut Serializer<'_, String>,
        now: UnixMs,
    ) -> Result<(), &'static str> {
        match &self.credentials {
            Credentials::Nothing => {
                if let Some(id) = &self.client_id {
                    form.append_pair("client_id", id);
                }
            }
            Credentials::Basic(value) => request.headers.push(("Authorization".to_owned(), value.expose().to_owned())),
            Credentials::Post(secret) => {
                form.append_pair("client_id", self.client_id.as_deref().unwrap_or_default());
                form.append_pair("client_secret", secret.expose());
            }
            Credentials::Assertion(assertion) => {
                let jwt = assertion.sign(now)?;
                form.append_pair("client_assertion_type", ASSERTION_TYPE);
                form.append_pair("client_assertion", &jwt);
            }
            Credentials::MutualTls(certificate, verify) => {
                // RFC 8705 §2: the client identifies itself with `client_id`.
                form.append_pair("client_id", self.client_id.as_deref().unwrap_or_default());
                Outbound::mutual_tls(request, certificate, *verify);
            }
        }
        Ok(())
    }
}

impl fmt::Debug for ClientAuthenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("ClientAuthenticator");
        d.field("method", &self.method.as_str()).field("client_id", &self.client_id);
        if let Credentials::Assertion(a) = &self.credentials {
            d.field("alg", &a.alg).field("kid", &a.kid);
        }
        d.finish_non_exhaustive()
    }
}

impl Assertion {
    fn new(signer: Signer, alg: &'static str, kid: Option<String>, client_id: &str, audience: &str) -> Self {
        let mut header = Map::new();
        header.insert("alg".into(), Value::from(alg));
        header.insert("typ".into(), Value::from("JWT"));
        if let Some(k) = &kid {
            header.insert("kid".into(), Value::from(k.as_str()));
        }
        let header = format!("{}.", URL_SAFE_NO_PAD.encode(Value::Object(header).to_string()));
        let id = Value::from(client_id).to_string();
        let aud = Value::from(audience).to_string();
        let claims_prefix = format!("{{\"iss\":{id},\"sub\":{id},\"aud\":{aud},\"jti\":\"");
        Assertion { signer, alg, kid, header, claims_prefix }
    }

    /// A signed assertion at `now`: a fresh 128-bit random `jti`, `iat` = now, `exp` = now +
    /// 60 s.
    pub(crate) fn sign(&self, now: UnixMs) -> Result<String, &'static str> {
        use std::fmt::Write as _;
        let jti = random_jti().map_err(|_| "client assertion: no random jti")?;
        let iat = now.secs();
        let mut claims = String::with_capacity(self.claims_prefix.len() + 64);
        claims.push_str(&self.claims_prefix);
        URL_SAFE_NO_PAD.encode_string(jti, &mut claims);
        let _ = write!(claims, "\",\"iat\":{iat},\"exp\":{}}}", iat.saturating_add(ASSERTION_LIFETIME_SECS));
        // Room for the header, the claims in base64 and the largest signature (RSA 4096).
        let mut jwt = String::with_capacity(self.header.len() + claims.len().div_ceil(3) * 4 + 700);
        jwt.push_str(&self.header);
        URL_SAFE_NO_PAD.encode_string(claims, &mut jwt);
        let signature = self.signer.sign(jwt.as_bytes()).map_err(|_| "client assertion: signing failed")?;
        jwt.push('.');
        URL_SAFE_NO_PAD.encode_string(signature, &mut jwt);
        Ok(jwt)
    }
}

/// 128 bits from the operating system's CSPRNG (through aws-lc), never handed out twice.
///
/// Drawn 32 at a time into a per-thread pool: one call to the generator (a system call)
/// serves 32 assertions. The pool remembers the process it was filled in, so a forked child
/// (nginx workers) never reuses its parent's bytes.
fn random_jti() -> Result<[u8; 16], aws_lc_rs::error::Unspecified> {
    use std::cell::RefCell;
    const BATCH: usize = 32;
    struct Pool {
        bytes: [u8; 16 * BATCH],
        next: usize,
        pid: u32,
    }
    thread_local! {
        static POOL: RefCell<Pool> = const { RefCell::new(Pool { bytes: [0; 16 * BATCH], next: BATCH, pid: 0 }) };
    }
    POOL.with_borrow_mut(|pool| {
        let pid = std::process::id();
        if pool.next == BATCH || pool.pid != pid {
            aws_lc_rs::rand::fill(&mut pool.bytes)?;
            pool.next = 0;
            pool.pid = pid;
        }
        let mut jti = [0u8; 16];
        let slot = &mut pool.bytes[pool.next * 16..(pool.next + 1) * 16];
        jti.copy_from_slice(slot);
        // Used bytes are wiped: nothing of an earlier jti stays behind.
        slot.fill(0);
        pool.next += 1;
        Ok(jti)
    })
}

fn form_encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::hmac;
    use aws_lc_rs::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
    use serde_json::json;

    const ENDPOINT: &str = "https://as.example/introspect";
    const NOW: UnixMs = UnixMs(1_800_000_000_000);

    fn jwks() -> Value {
        serde_json::from_str(include_str!("../tests/testdata/client-jwks.json")).unwrap()
    }

    fn config(extra: Value) -> Result<Config, Error> {
        let mut v = json!({
            "resource": "https://mcp.example/mcp", "authorization_servers": ["https://as.example"],
            "introspection_endpoint": ENDPOINT, "client_id": "gate\"way"
        });
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        Config::from_value(v)
    }

    fn authenticator(extra: Value) -> ClientAuthenticator {
        ClientAuthenticator::new(&config(extra).unwrap(), ENDPOINT).unwrap()
    }

    fn error(extra: Value) -> Error {
        config(extra).unwrap_err()
    }

    /// Applies `auth` to a fresh request; returns the request and its form.
    fn apply(auth: &ClientAuthenticator) -> (HttpRequest, Vec<(String, String)>) {
        let outbound = Outbound::new(&config(json!({"client_secret": "x"})).unwrap());
        let mut request = outbound.request("POST", ENDPOINT, crate::Purpose::Introspection);
        let mut form = Serializer::new(String::new());
        auth.apply(&mut request, &mut form, NOW).unwrap();
        let form = form_urlencoded::parse(form.finish().as_bytes()).into_owned().collect();
        (request, form)
    }

    fn assertion(auth: &ClientAuthenticator) -> String {
        let (request, form) = apply(auth);
        assert!(request.headers.is_empty(), "no Authorization header with an assertion");
        let get = |n: &str| form.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        assert_eq!(get("client_assertion_type").as_deref(), Some(ASSERTION_TYPE));
        assert_eq!(get("client_secret"), None);
        get("client_assertion").expect("client_assertion")
    }

    fn part(jwt: &str, i: usize) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(jwt.split('.').nth(i).unwrap()).unwrap()
    }

    fn verifies(jwt: &str, alg: &str, jwk: &Value) -> bool {
        let (message, signature) = jwt.rsplit_once('.').unwrap();
        let signature = URL_SAFE_NO_PAD.decode(signature).unwrap();
        let b = |n: &str| URL_SAFE_NO_PAD.decode(jwk[n].as_str().unwrap()).unwrap();
        let message = message.as_bytes();
        let point = || [vec![4], b("x"), b("y")].concat();
        match alg {
            "RS256" | "RS384" | "RS512" | "PS256" | "PS384" | "PS512" => {
                let params = match alg {
                    "RS256" => &signature::RSA_PKCS1_2048_8192_SHA256,
                    "RS384" => &signature::RSA_PKCS1_2048_8192_SHA384,
                    "RS512" => &signature::RSA_PKCS1_2048_8192_SHA512,
                    "PS256" => &signature::RSA_PSS_2048_8192_SHA256,
                    "PS384" => &signature::RSA_PSS_2048_8192_SHA384,
                    _ => &signature::RSA_PSS_2048_8192_SHA512,
                };
                RsaPublicKeyComponents { n: b("n"), e: b("e") }.verify(params, message, &signature).is_ok()
            }
            "ES256" => {
                UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point()).verify(message, &signature).is_ok()
            }
            "ES384" => {
                UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, point()).verify(message, &signature).is_ok()
            }
            "ES512" => {
                UnparsedPublicKey::new(&signature::ECDSA_P521_SHA512_FIXED, point()).verify(message, &signature).is_ok()
            }
            "EdDSA" => UnparsedPublicKey::new(&signature::ED25519, b("x")).verify(message, &signature).is_ok(),
            _ => unreachable!(),
        }
    }

    #[test]
    fn private_key_jwt_signs_with_every_key_type_and_algorithm() {
        let keys = jwks();
        for (key, alg) in [
            ("rsa-2048", "RS256"),
            ("rsa-2048", "RS384"),
            ("rsa-2048", "RS512"),
            ("rsa-2048", "PS256"),
            ("rsa-2048", "PS384"),
            ("rsa-2048", "PS512"),
            ("ec-p256", "ES256"),
            ("ec-p384", "ES384"),
            ("ec-p521", "ES512"),
            ("ed25519", "EdDSA"),
        ] {
            let mut jwk = keys[key].clone();
            jwk["kid"] = json!(format!("kid-{key}"));
            let auth =
                authenticator(json!({"client_auth": "private_key_jwt", "client_jwk": jwk.clone(), "client_alg": alg}));
            let jwt = assertion(&auth);
            let header: Value = serde_json::from_slice(&part(&jwt, 0)).unwrap();
            assert_eq!(header, json!({"alg": alg, "typ": "JWT", "kid": format!("kid-{key}")}), "{key} {alg}");
            assert!(verifies(&jwt, alg, &jwk), "{key} {alg}: the signature verifies with the public key");
            let mut tampered = jwt.clone();
            tampered.replace_range(tampered.len() - 6..tampered.len() - 5, "A");
            tampered.replace_range(tampered.len() - 5..tampered.len() - 4, "B");
            assert!(!verifies(&tampered, alg, &jwk), "{key} {alg}: a changed signature does not");
        }
    }

    #[test]
    fn assertion_claims_follow_rfc_7523() {
        let auth = authenticator(json!({"client_auth": "client_secret_jwt", "client_secret": "hmac-secret"}));
        let jwt = assertion(&auth);
        let claims: Value = serde_json::from_slice(&part(&jwt, 1)).unwrap();
        let jti = claims["jti"].as_str().unwrap().to_owned();
        assert_eq!(jti.len(), 22, "128 random bits");
        assert_eq!(
            claims,
            json!({"iss": "gate\"way", "sub": "gate\"way", "aud": ENDPOINT, "jti": jti,
                   "iat": 1_800_000_000, "exp": 1_800_000_060})
        );
        let header: Value = serde_json::from_slice(&part(&jwt, 0)).unwrap();
        assert_eq!(header, json!({"alg": "HS256", "typ": "JWT"}));
        let (message, signature) = jwt.rsplit_once('.').unwrap();
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"hmac-secret");
        assert!(hmac::verify(&key, message.as_bytes(), &URL_SAFE_NO_PAD.decode(signature).unwrap()).is_ok());
        // Every assertion is new: a different jti each time, even at the same instant.
        let jtis: std::collections::HashSet<String> = (0..200)
            .map(|_| {
                let c: Value = serde_json::from_slice(&part(&assertion(&auth), 1)).unwrap();
                c["jti"].as_str().unwrap().to_owned()
            })
            .collect();
        assert_eq!(jtis.len(), 200);
        // HS384 / HS512, and an explicit audience (the issuer, for servers that want it).
        let auth =
            authenticator(json!({"client_auth": "client_secret_jwt", "client_secret": "s", "client_alg": "HS512",
            "client_assertion_audience": "https://as.example"}));
        let jwt = assertion(&auth);
        let claims: Value = serde_json::from_slice(&part(&jwt, 1)).unwrap();
        assert_eq!(claims["aud"], "https://as.example");
        let header: Value = serde_json::from_slice(&part(&jwt, 0)).unwrap();
        assert_eq!(header["alg"], "HS512");
        assert_eq!(URL_SAFE_NO_PAD.decode(jwt.rsplit_once('.').unwrap().1).unwrap().len(), 64);
    }

    #[test]
    fn jtis_are_never_repeated_across_threads_and_refills() {
        let all: Vec<[u8; 16]> = std::thread::scope(|s| {
            let handles: Vec<_> =
                (0..4).map(|_| s.spawn(|| (0..100).map(|_| random_jti().unwrap()).collect::<Vec<_>>())).collect();
            handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        let distinct: std::collections::HashSet<[u8; 16]> = all.iter().copied().collect();
        assert_eq!(distinct.len(), 400);
        assert!(!distinct.contains(&[0u8; 16]), "never a wiped slot");
    }

    #[test]
    fn client_jwk_forms_and_default_algorithms() {
        let keys = jwks();
        let p256 = keys["ec-p256"].clone();
        let alg = |extra: Value| {
            let jwt = assertion(&authenticator(extra));
            serde_json::from_slice::<Value>(&part(&jwt, 0)).unwrap()["alg"].as_str().unwrap().to_owned()
        };
        // An object, a JSON string holding one (Kong's form), a JWK Set with one private key.
        assert_eq!(alg(json!({"client_auth": "private_key_jwt", "client_jwk": p256.clone()})), "ES256");
        assert_eq!(alg(json!({"client_auth": "private_key_jwt", "client_jwk": p256.to_string()})), "ES256");
        let mut public = p256.clone();
        public.as_object_mut().unwrap().remove("d");
        let set = json!({"keys": [public, p256.clone()]});
        assert_eq!(alg(json!({"client_auth": "private_key_jwt", "client_jwk": set})), "ES256");
        // Defaults by key type, or the JWK's own alg.
        for (key, expected) in [("rsa-2048", "RS256"), ("ec-p384", "ES384"), ("ec-p521", "ES512"), ("ed25519", "EdDSA")]
        {
            assert_eq!(alg(json!({"client_auth": "private_key_jwt", "client_jwk": keys[key].clone()})), expected);
        }
        let mut ps = keys["rsa-2048"].clone();
        ps["alg"] = json!("PS384");
        assert_eq!(alg(json!({"client_auth": "private_key_jwt", "client_jwk": ps})), "PS384");
    }

    #[test]
    fn unusable_keys_are_configuration_errors_naming_the_fields() {
        let keys = jwks();
        let pk = |jwk: Value, extra: Value| {
            let mut e = json!({"client_auth": "private_key_jwt", "client_jwk": jwk});
            for (k, x) in extra.as_object().unwrap() {
                e[k] = x.clone();
            }
            error(e).to_string()
        };
        let e = pk(keys["ec-p256"].clone(), json!({"client_alg": "RS256"}));
        assert!(e.starts_with("client_alg: does not fit: client_jwk is an EC P-256 key"), "{e}");
        let e = pk(keys["rsa-2048"].clone(), json!({"client_alg": "EdDSA"}));
        assert!(e.starts_with("client_alg: does not fit: client_jwk is an RSA key") && e.contains("PS512"), "{e}");
        let mut with_alg = keys["ed25519"].clone();
        with_alg["alg"] = json!("ES256");
        assert!(pk(with_alg.clone(), json!({})).starts_with("client_jwk: does not fit"));
        assert_eq!(pk(with_alg, json!({"client_alg": "EdDSA"})), "client_alg: differs from the \"alg\" of client_jwk");
        assert_eq!(pk(keys["rsa-1024"].clone(), json!({})), "client_jwk: is an RSA key shorter than 2048 bits");
        let mut public = keys["ec-p256"].clone();
        public.as_object_mut().unwrap().remove("d");
        assert!(pk(public.clone(), json!({})).starts_with("client_jwk: is a public key"));
        assert_eq!(pk(json!({"keys": [public]}), json!({})), "client_jwk: is a JWK Set without a private key");
        assert!(pk(json!({"keys": [keys["ec-p256"].clone(), keys["ed25519"].clone()]}), json!({}))
            .contains("several private keys"));
        assert!(pk(json!({"kty": "oct", "k": "c2VjcmV0"}), json!({})).contains("symmetric"));
        let mut enc = keys["ec-p256"].clone();
        enc["use"] = json!("enc");
        assert!(pk(enc, json!({})).contains("not a signing key"));
        let mut wrong = keys["ec-p256"].clone();
        wrong["d"] = keys["ec-p384"]["d"].clone();
        assert!(pk(wrong, json!({})).starts_with("client_jwk: has EC parameters of the wrong length"));
        let mut mismatched = keys["ec-p256"].clone();
        mismatched["x"] = keys["ec-p256"]["y"].clone();
        assert!(pk(mismatched, json!({})).starts_with("client_jwk: is not a valid EC private key"));
        let mut rsa = keys["rsa-2048"].clone();
        rsa.as_object_mut().unwrap().remove("qi");
        assert_eq!(pk(rsa, json!({})), "client_jwk: lacks the \"qi\" parameter (or it is not a string)");
        let mut rsa = keys["rsa-2048"].clone();
        rsa["d"] = keys["rsa-2048"]["dp"].clone();
        assert!(pk(rsa, json!({})).starts_with("client_jwk: is not a valid RSA private key"));
        assert!(error(json!({"client_auth": "client_secret_jwt", "client_secret": "s", "client_alg": "RS256"}))
            .to_string()
            .starts_with("client_alg:"));
        assert!(error(json!({"client_auth": "private_key_jwt"})).to_string().starts_with("client_jwk: is required"));
    }

    #[test]
    fn fields_of_other_methods_are_loaded_and_warned_not_ignored() {
        let keys = jwks();
        for (extra, field) in [
            (json!({"client_secret": "s", "client_jwk": keys["ec-p256"].clone()}), "client_jwk"),
            (json!({"client_secret": "s", "client_alg": "HS256"}), "client_alg"),
            (
                json!({"client_secret": "s", "client_assertion_audience": "https://as.example"}),
                "client_assertion_audience",
            ),
            (
                json!({"client_auth": "private_key_jwt", "client_jwk": keys["ec-p256"].clone(), "client_secret": "s"}),
                "client_secret",
            ),
            (json!({"client_auth": "none", "client_secret": "s"}), "client_secret"),
            (json!({"client_secret": "s", "tls_client_auth_cert": "x"}), "tls_client_auth_cert"),
            (json!({"client_secret": "s", "tls_client_auth_ssl_verify": false}), "tls_client_auth_ssl_verify"),
            (
                json!({"client_secret": "s", "mtls_introspection_endpoint": "https://mtls.as.example/i"}),
                "mtls_introspection_endpoint",
            ),
        ] {
            // Kong accepts such a configuration, so it loads; construction says so.
            let warnings = config(extra.clone()).unwrap().ineffective_fields();
            let expected = format!("{field}: set, but has no effect with client_auth");
            assert!(warnings.iter().any(|w| w.starts_with(&expected)), "{extra}: {warnings:?}");
        }
        let e =
            error(json!({"client_auth": "tls_client_auth", "tls_client_auth_cert": "x", "tls_client_auth_key": "y"}));
        assert_eq!(e.to_string(), "tls_client_auth_cert: holds no PEM certificate");
    }

    #[test]
    fn secrets_and_keys_never_appear_in_debug_or_errors() {
        let keys = jwks();
        let rsa = keys["rsa-2048"].clone();
        let material: Vec<String> = ["d", "p", "q", "dp", "dq", "qi"]
            .iter()
            .map(|m| rsa[m].as_str().unwrap()[..16].to_owned())
            .chain(["hmac-s3cret".to_owned()])
            .collect();
        let leaks = |text: &str| material.iter().any(|m| text.contains(m.as_str()));
        let c = config(json!({"client_auth": "private_key_jwt", "client_jwk": rsa.clone()})).unwrap();
        let auth = ClientAuthenticator::new(&c, ENDPOINT).unwrap();
        assert!(!leaks(&format!("{auth:?}")) && !leaks(&format!("{c:?}")), "Debug");
        let (request, _) = apply(&auth);
        assert!(!leaks(&format!("{request:?}")));
        let hs = authenticator(json!({"client_auth": "client_secret_jwt", "client_secret": "hmac-s3cret"}));
        assert!(!leaks(&format!("{hs:?}")));
        assert!(!leaks(&serde_json::to_string(&c).unwrap()), "serialized config");
        // Broken keys: the errors name fields and parameters, never values.
        for broken in [
            json!({"d": rsa["dp"].clone()}),
            json!({"qi": 7}),
            json!({"n": "!!!"}),
            json!({"kty": "EC", "crv": "P-256"}),
            json!({"alg": rsa["d"].clone()}),
        ] {
            let mut k = rsa.clone();
            for (name, v) in broken.as_object().unwrap() {
                k[name] = v.clone();
            }
            let e = error(json!({"client_auth": "private_key_jwt", "client_jwk": k.to_string()}));
            assert!(!leaks(&e.to_string()) && !leaks(&format!("{e:?}")), "{e}");
        }
        let e = error(json!({"client_auth": "client_secret_jwt", "client_secret": "hmac-s3cret", "client_alg": "RS1"}));
        assert!(!leaks(&e.to_string()));
    }
}
