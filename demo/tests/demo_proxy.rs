//! Runs the `demo_proxy` binary and checks what a user would see: the embedded
//! demo's printed commands work when pasted into a shell, the flow 401 → token → 200,
//! what the upstream receives, SSE streaming and its end at `valid_until`, the `--jwt`
//! mode (RFC 9068 tokens validated locally through discovery and the JWKS), the config
//! file formats, and config errors.
//!
//! The binary is the one cargo builds for this package (`CARGO_BIN_EXE_demo_proxy`).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine as _;

/// The binary under test, built by cargo for this package's integration tests.
fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_demo_proxy")
}

/// The repository root: the Kong fixtures in tests/testdata and the sample configs in
/// examples/configs are shared with the library's own tests and docs.
fn repo_root() -> String {
    format!("{}/..", env!("CARGO_MANIFEST_DIR"))
}

fn testdata(name: &str) -> String {
    format!("{}/tests/testdata/{name}", repo_root())
}

/// A running demo_proxy; killed on drop. Its stderr (the request log) is collected.
struct Running {
    child: Child,
    banner: Vec<String>,
    stderr: mpsc::Receiver<String>,
    log: Vec<String>,
}

impl Running {
    /// Starts the binary and waits for the line `until_line_starts` on stdout.
    fn start(args: &[&str], until_line_starts: &str) -> Running {
        let mut child = Command::new(binary())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn demo_proxy");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let (err_tx, err_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if err_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut banner = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let done = line.starts_with(until_line_starts);
                    banner.push(line);
                    if done {
                        break;
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let errors: Vec<String> = err_rx.try_iter().collect();
                    panic!("demo_proxy did not print {until_line_starts:?}; stdout {banner:?}; stderr {errors:?}");
                }
            }
        }
        Running { child, banner, stderr: err_rx, log: Vec::new() }
    }

    fn demo(extra: &[&str]) -> Running {
        let mut args =
            vec!["--listen", "127.0.0.1:0", "--as-listen", "127.0.0.1:0", "--upstream-listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        Running::start(&args, "Requests are logged on stderr")
    }

    /// The URL printed after `label` in the banner (first `http://…` word).
    fn url_after(&self, label: &str) -> String {
        let line = self.banner.iter().find(|l| l.trim_start().starts_with(label)).expect(label);
        line.split_whitespace().find(|w| w.starts_with("http://")).expect("a URL").to_owned()
    }

    fn log(&mut self) -> &[String] {
        self.log.extend(self.stderr.try_iter());
        &self.log
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into()
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

fn reply(res: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Reply {
    let mut res = res.expect("HTTP exchange");
    let status = res.status().as_u16();
    let headers =
        res.headers().iter().map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap_or_default().to_owned())).collect();
    let body = res.body_mut().read_to_string().expect("body");
    Reply { status, headers, body }
}

fn mcp_post(resource: &str, token: Option<&str>, body: &str, extra: &[(&str, &str)]) -> Reply {
    let mut req = agent()
        .post(resource)
        .header("Content-Type", "application/json")
        .header("Accept", "application/json, text/event-stream");
    if let Some(t) = token {
        req = req.header("Authorization", &format!("Bearer {t}"));
    }
    for (n, v) in extra {
        req = req.header(*n, *v);
    }
    reply(req.send(body))
}

fn get_token(issuer: &str, resource: Option<&str>) -> String {
    let basic = base64::engine::general_purpose::STANDARD.encode("demo-client:demo-secret");
    let mut form = vec![("grant_type", "client_credentials"), ("scope", "mcp:read mcp:write")];
    if let Some(r) = resource {
        form.push(("resource", r));
    }
    let r = reply(
        agent().post(&format!("{issuer}/token")).header("Authorization", &format!("Basic {basic}")).send_form(form),
    );
    assert_eq!(r.status, 200, "token: {}", r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    v["access_token"].as_str().unwrap().to_owned()
}

/// The JSON-RPC result of a response that is JSON or a one-event SSE stream.
fn rpc_result(body: &str) -> serde_json::Value {
    let json = body.lines().find_map(|l| l.strip_prefix("data: ")).unwrap_or(body);
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {body}"));
    v["result"].clone()
}

fn whoami(resource: &str, token: &str, extra: &[(&str, &str)]) -> serde_json::Value {
    let r = mcp_post(
        resource,
        Some(token),
        r#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"whoami","arguments":{}}}"#,
        extra,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let text = rpc_result(&r.body)["content"][0]["text"].as_str().unwrap().to_owned();
    serde_json::from_str(&text).unwrap()
}

/// Runs the banner's commands as printed, in one shell; returns each command's output and
/// the `$TOKEN` they obtained.
fn run_printed_commands(demo: &Running, expected: usize) -> (Vec<String>, String) {
    let commands: Vec<&String> =
        demo.banner.iter().filter(|l| l.starts_with("curl ") || l.starts_with("TOKEN=")).collect();
    assert_eq!(commands.len(), expected, "banner commands: {:?}", demo.banner);
    // The last one streams forever, so bound it.
    let mut script = String::from("set -u\n");
    for (i, c) in commands.iter().enumerate() {
        let c = if c.starts_with("curl -sN ") { format!("timeout 2 {c}") } else { (*c).clone() };
        script.push_str(&format!("{c}\necho; echo '@@{i}@@'\n"));
    }
    script.push_str("echo \"@@TOKEN $TOKEN\"\n");
    let out = Command::new("bash").arg("-c").arg(&script).output().expect("bash");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut parts: Vec<String> = Vec::new();
    let mut rest = stdout.as_str();
    for i in 0..commands.len() {
        let marker = format!("@@{i}@@");
        let (part, after) = rest.split_once(&marker).unwrap_or_else(|| panic!("no {marker} in {stdout}"));
        parts.push(part.to_owned());
        rest = after;
    }
    let token = rest.split("@@TOKEN ").nth(1).unwrap().trim().to_owned();
    assert!(token.len() >= 40, "a token was obtained: {stdout}");
    (parts, token)
}

#[test]
fn printed_commands_work_when_pasted_into_a_shell() {
    let mut demo = Running::demo(&["--tick-ms", "100"]);
    assert!(demo.banner.iter().any(|l| l.contains("token validation   introspection")), "{:?}", demo.banner);
    let (parts, token) = run_printed_commands(&demo, 6);

    let resource = demo.url_after("proxy listening on").replace("http://", "");
    let resource = format!("http://{resource}/mcp");
    // 1: 401 with the challenge.
    assert!(parts[0].contains("HTTP/1.1 401"), "{}", parts[0]);
    let challenge =
        format!("www-authenticate: Bearer resource_metadata=\"{resource}/.well-known/oauth-protected-resource\"");
    assert!(parts[0].to_ascii_lowercase().contains(&challenge.to_ascii_lowercase()), "{}", parts[0]);
    // 2: the PRM document.
    let prm: serde_json::Value = serde_json::from_str(parts[1].trim()).expect("PRM JSON");
    assert_eq!(prm["resource"], resource.as_str());
    assert_eq!(prm["authorization_servers"][0], demo.url_after("auth server").as_str());
    // 4: 200 with the echoed text.
    assert!(parts[3].contains("HTTP/1.1 200"), "{}", parts[3]);
    assert!(parts[3].contains("hello through the proxy"), "{}", parts[3]);
    // 5: the upstream saw the claim headers and no Authorization.
    let seen: serde_json::Value =
        serde_json::from_str(rpc_result(&parts[4])["content"][0]["text"].as_str().unwrap()).unwrap();
    assert_eq!(seen["x-client-id"], "demo-client");
    assert_eq!(seen["x-scope"], "mcp:read mcp:write");
    assert!(seen.get("authorization").is_none(), "{seen}");
    // 6: events arrived through the proxy while the stream was open.
    assert!(parts[5].matches("event: message").count() >= 2, "{}", parts[5]);

    // One log line per request, and never the token.
    std::thread::sleep(Duration::from_millis(200));
    let log = demo.log().to_vec();
    assert!(log.iter().any(|l| l.contains(" proxy ") && l.contains("POST /mcp 401 no_credentials")), "{log:?}");
    assert!(log.iter().any(|l| l.contains(" proxy ") && l.contains("POST /mcp 200 allowed")), "{log:?}");
    assert!(log.iter().all(|l| !l.contains(&token)), "the token leaked into the log");
    assert!(log.iter().all(|l| !l.contains("demo-secret") && !l.contains("gateway-secret")), "a secret leaked");
    // Opaque tokens are introspected.
    assert!(log.iter().any(|l| l.contains(" as ") && l.contains("POST /introspect 200 active")), "{log:?}");
}

/// The decoded JOSE header and claims of a compact JWS (no verification).
fn jwt_parts(token: &str) -> (serde_json::Value, serde_json::Value) {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "a JWT has three dot-separated parts: {token}");
    let decode = |p: &str| -> serde_json::Value {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(p).expect("base64url");
        serde_json::from_slice(&bytes).expect("JSON")
    };
    (decode(parts[0]), decode(parts[1]))
}

fn b64url_json(v: &serde_json::Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

/// Log lines of the demo AS for `method path`.
fn as_requests(demo: &mut Running, method_path: &str) -> usize {
    std::thread::sleep(Duration::from_millis(150));
    let needle = format!(" {method_path} ");
    demo.log().iter().filter(|l| l.contains(" as ") && l.contains(&needle)).count()
}

#[test]
fn jwt_mode_printed_commands_work_when_pasted_into_a_shell() {
    let mut demo = Running::demo(&["--jwt", "--tick-ms", "100"]);
    assert!(demo.banner.iter().any(|l| l.contains("token validation   local JWT")), "{:?}", demo.banner);
    let issuer = demo.url_after("auth server");
    // One more command than the opaque mode: the JWKS.
    let (parts, token) = run_printed_commands(&demo, 7);
    assert!(parts[0].contains("HTTP/1.1 401"), "{}", parts[0]);
    let prm: serde_json::Value = serde_json::from_str(parts[1].trim()).expect("PRM JSON");
    assert_eq!(prm["authorization_servers"][0], issuer.as_str());
    let jwks: serde_json::Value = serde_json::from_str(parts[2].trim()).expect("JWKS JSON");
    let (header, claims) = jwt_parts(&token);
    assert_eq!(header["typ"], "at+jwt");
    assert_eq!(header["kid"], jwks["keys"][0]["kid"], "the token names the served key");
    assert_eq!(claims["iss"], issuer.as_str());
    assert!(parts[4].contains("HTTP/1.1 200"), "{}", parts[4]);
    assert!(parts[4].contains("hello through the proxy"), "{}", parts[4]);
    let seen: serde_json::Value =
        serde_json::from_str(rpc_result(&parts[5])["content"][0]["text"].as_str().unwrap()).unwrap();
    assert_eq!(seen["x-client-id"], "demo-client");
    assert_eq!(seen["x-scope"], "mcp:read mcp:write");
    assert!(seen.get("authorization").is_none(), "{seen}");
    assert!(parts[6].matches("event: message").count() >= 2, "{}", parts[6]);
    // Validated locally: metadata and keys fetched, never an introspection.
    assert_eq!(as_requests(&mut demo, "POST /introspect"), 0, "{:?}", demo.log());
    assert_eq!(as_requests(&mut demo, "GET /.well-known/oauth-authorization-server"), 1, "{:?}", demo.log());
    let log = demo.log().to_vec();
    assert!(log.iter().all(|l| !l.contains(&token)), "the token leaked into the log");
}

#[test]
fn jwt_mode_validates_locally_with_discovery_and_jwks() {
    let mut demo = Running::demo(&["--jwt", "--token-ttl", "120"]);
    let resource = format!("{}/mcp", demo.url_after("proxy listening on"));
    let issuer = demo.url_after("auth server");
    let list = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;

    let r = mcp_post(&resource, None, list, &[]);
    assert_eq!(r.status, 401);
    assert!(r.header("www-authenticate").unwrap().starts_with("Bearer resource_metadata="));

    // The token is an RFC 9068 JWT for this resource.
    let token = get_token(&issuer, Some(&resource));
    let (header, claims) = jwt_parts(&token);
    assert_eq!(header["typ"], "at+jwt", "{header}");
    assert_eq!(header["alg"], "ES256", "{header}");
    assert_eq!(claims["iss"], issuer.as_str());
    assert_eq!(claims["aud"], resource.as_str());
    assert_eq!(claims["sub"], "demo-client");
    assert_eq!(claims["client_id"], "demo-client");
    assert_eq!(claims["scope"], "mcp:read mcp:write");
    assert_eq!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(), 120);
    assert!(claims["jti"].as_str().is_some_and(|j| j.len() >= 16), "{claims}");
    assert_ne!(jwt_parts(&get_token(&issuer, Some(&resource))).1["jti"], claims["jti"], "jti is unique");

    let r = mcp_post(&resource, Some(&token), list, &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = whoami(&resource, &token, &[("X-Client-Id", "mallory"), ("X-Scope", "admin")]);
    assert_eq!(seen["x-client-id"], "demo-client", "{seen}");
    assert_eq!(seen["x-scope"], "mcp:read mcp:write", "{seen}");
    assert!(seen.get("authorization").is_none(), "{seen}");

    let invalid = |token: &str, what: &str| {
        let r = mcp_post(&resource, Some(token), list, &[]);
        assert_eq!(r.status, 401, "{what}: {}", r.body);
        let challenge = r.header("www-authenticate").unwrap();
        assert!(challenge.contains(r#"error="invalid_token""#), "{what}: {challenge}");
    };
    let [h, p, sig]: [&str; 3] = token.split('.').collect::<Vec<_>>().try_into().unwrap();
    // Claims changed, signature kept.
    let mut forged_claims = claims.clone();
    forged_claims["client_id"] = "mallory".into();
    invalid(&format!("{h}.{}.{sig}", b64url_json(&forged_claims)), "tampered claims");
    // One signature byte changed (a middle character: the last one carries padding bits).
    let mut bad_sig: Vec<char> = sig.chars().collect();
    let mid = bad_sig.len() / 2;
    bad_sig[mid] = if bad_sig[mid] == 'A' { 'B' } else { 'A' };
    invalid(&format!("{h}.{p}.{}", bad_sig.into_iter().collect::<String>()), "tampered signature");
    // Signed by another P-256 key that claims the served key's kid.
    let other = {
        use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
        jsonwebtoken::EncodingKey::from_ec_der(pair.to_pkcs8v1().unwrap().as_ref())
    };
    let mut forged_header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    forged_header.typ = Some("at+jwt".to_owned());
    forged_header.kid = header["kid"].as_str().map(str::to_owned);
    invalid(&jsonwebtoken::encode(&forged_header, &claims, &other).unwrap(), "another key, same kid");
    // alg none, without a signature.
    let none = serde_json::json!({"alg": "none", "typ": "at+jwt", "kid": header["kid"]});
    invalid(&format!("{}.{p}.", b64url_json(&none)), "alg none");
    // A JWT for another resource, an opaque string.
    invalid(&get_token(&issuer, Some("http://127.0.0.1:1/other")), "wrong audience");
    invalid("not-a-jwt-but-an-opaque-string", "opaque");
    // The genuine token still works after all that.
    assert_eq!(mcp_post(&resource, Some(&token), list, &[]).status, 200);

    // The proxy's log names the reasons (its writer thread may lag on a loaded machine).
    let reasons = ["token_signature_invalid", "token_algorithm_not_allowed", "audience_mismatch", "token_malformed"];
    let logged = |log: &[String], reason: &str| {
        log.iter().any(|l| l.contains(" proxy ") && l.contains(&format!(" 401 {reason} ")))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline && !reasons.iter().all(|r| logged(demo.log(), r)) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = demo.log().to_vec();
    for reason in reasons {
        assert!(
            log.iter().any(|l| l.contains(" proxy ") && l.contains(&format!(" 401 {reason} "))),
            "{reason}: {log:?}"
        );
    }
    // Discovery once, keys once (no refetch: every kid was known), no introspection.
    assert_eq!(as_requests(&mut demo, "POST /introspect"), 0, "{:?}", demo.log());
    assert_eq!(as_requests(&mut demo, "GET /.well-known/oauth-authorization-server"), 1, "{:?}", demo.log());
    assert_eq!(as_requests(&mut demo, "GET /jwks"), 1, "{:?}", demo.log());

    // What the proxy found: RFC 8414 metadata (also at the OpenID location) with jwks_uri,
    // and the public key with kid, use and alg, without private material.
    for path in ["/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"] {
        let r = reply(agent().get(&format!("{issuer}{path}")).call());
        assert_eq!(r.status, 200, "{path}");
        let m: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(m["issuer"], issuer.as_str(), "{path}");
        assert_eq!(m["jwks_uri"], format!("{issuer}/jwks"), "{path}");
    }
    let r = reply(agent().get(&format!("{issuer}/jwks")).call());
    let jwks: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1, "{jwks}");
    let key = &keys[0];
    assert_eq!((key["kty"].as_str(), key["crv"].as_str()), (Some("EC"), Some("P-256")), "{key}");
    assert_eq!((key["use"].as_str(), key["alg"].as_str()), (Some("sig"), Some("ES256")), "{key}");
    assert_eq!(key["kid"], header["kid"]);
    assert!(key.get("d").is_none(), "private key material served: {key}");

    // The AS still introspects its JWTs, for gateways configured that way.
    let basic = base64::engine::general_purpose::STANDARD.encode("gateway:gateway-secret");
    let introspect = |t: &str| -> serde_json::Value {
        let r = reply(
            agent()
                .post(&format!("{issuer}/introspect"))
                .header("Authorization", &format!("Basic {basic}"))
                .send_form([("token", t)]),
        );
        serde_json::from_str(&r.body).unwrap()
    };
    let active = introspect(&token);
    assert_eq!((active["active"].as_bool(), active["aud"].as_str()), (Some(true), Some(resource.as_str())));
    assert_eq!(introspect(&format!("{h}.{}.{sig}", b64url_json(&forged_claims)))["active"], false);
}

#[test]
fn opaque_mode_metadata_has_jwks_uri_too() {
    // The key set is served in both modes; only the tokens differ.
    let demo = Running::demo(&[]);
    let issuer = demo.url_after("auth server");
    let r = reply(agent().get(&format!("{issuer}/.well-known/oauth-authorization-server")).call());
    let m: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(m["jwks_uri"], format!("{issuer}/jwks"));
    assert_eq!(m["introspection_endpoint"], format!("{issuer}/introspect"));
    let token = get_token(&issuer, None);
    assert!(!token.contains('.'), "opaque tokens without --jwt: {token}");
}

#[test]
fn flow_401_token_200_and_what_upstream_receives() {
    let demo = Running::demo(&[]);
    let resource = format!("{}/mcp", demo.url_after("proxy listening on"));
    let issuer = demo.url_after("auth server");
    let list = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;

    let r = mcp_post(&resource, None, list, &[]);
    assert_eq!(r.status, 401);
    assert!(r.header("www-authenticate").unwrap().starts_with("Bearer resource_metadata="));

    let token = get_token(&issuer, Some(&resource));
    let r = mcp_post(&resource, Some(&token), list, &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    let tools: Vec<String> = rpc_result(&r.body)["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(tools, ["echo", "whoami"]);

    // Spoofed identity headers and hop-by-hop headers never reach the upstream.
    let seen = whoami(
        &resource,
        &token,
        &[("X-Client-Id", "mallory"), ("Connection", "X-Hop"), ("X-Hop", "secret-hop"), ("X-Other", "kept")],
    );
    assert_eq!(seen["x-client-id"], "demo-client", "{seen}");
    assert!(seen.get("authorization").is_none(), "{seen}");
    assert!(seen.get("x-hop").is_none(), "a header named in Connection was forwarded: {seen}");
    assert_eq!(seen["x-other"], "kept");
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1", "{seen}");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(
        seen["x-forwarded-host"].as_str(),
        resource.strip_prefix("http://").and_then(|r| r.strip_suffix("/mcp"))
    );
    let seen = whoami(&resource, &token, &[("X-Forwarded-For", "203.0.113.7"), ("X-Forwarded-Host", "evil.example")]);
    assert_eq!(seen["x-forwarded-for"], "203.0.113.7, 127.0.0.1", "{seen}");
    assert_ne!(seen["x-forwarded-host"], "evil.example");

    // A token for another resource, or without one: 401 invalid_token.
    for other in [get_token(&issuer, Some("http://127.0.0.1:1/other")), get_token(&issuer, None)] {
        let r = mcp_post(&resource, Some(&other), list, &[]);
        assert_eq!(r.status, 401, "{}", r.body);
        assert!(r.header("www-authenticate").unwrap().contains(r#"error="invalid_token""#));
    }
    // An unknown token: 401.
    let r = mcp_post(&resource, Some("not-a-real-token"), list, &[]);
    assert_eq!(r.status, 401);
    // JSON when SSE is not accepted.
    let r = reply(
        agent()
            .post(&resource)
            .header("Authorization", &format!("Bearer {token}"))
            .header("Content-Type", "application/json")
            .header("Accept", "application/json")
            .send(r#"{"jsonrpc":"2.0","id":5,"method":"ping"}"#),
    );
    assert_eq!((r.status, r.header("content-type")), (200, Some("application/json")), "{}", r.body);
}

#[test]
fn sse_arrives_event_by_event_and_ends_at_valid_until() {
    let demo = Running::demo(&["--token-ttl", "3", "--tick-ms", "200"]);
    let resource = format!("{}/mcp", demo.url_after("proxy listening on"));
    let token = get_token(&demo.url_after("auth server"), Some(&resource));
    let res = agent()
        .get(&resource)
        .header("Authorization", &format!("Bearer {token}"))
        .header("Accept", "text/event-stream")
        .call()
        .expect("GET stream");
    assert_eq!(res.status().as_u16(), 200);
    let mut reader = BufReader::new(res.into_body().into_reader());
    // The upstream stream never ends by itself, so reading the first events proves the
    // proxy passes them on as they come instead of buffering the body.
    let mut events = 0;
    let mut line = String::new();
    let ended = loop {
        match reader.read_line(&mut line) {
            Ok(0) => break true,
            Ok(_) => {}
            Err(e) => panic!("the stream failed instead of ending: {e}"),
        }
        if line.starts_with("data: ") {
            events += 1;
        }
        line.clear();
        if events > 200 {
            break false;
        }
    };
    assert!(events >= 2, "events arrived one by one before the stream ended ({events})");
    assert!(ended, "the stream ended when the token expired");
    // The token is expired now: the next request is refused.
    let r = mcp_post(&resource, Some(&token), r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#, &[]);
    assert_eq!(r.status, 401, "{}", r.body);
}

#[test]
fn slow_introspection_single_flight_and_no_blocked_runtime() {
    // Every introspection takes 1.5 s at the AS.
    let mut demo = Running::demo(&["--as-delay-ms", "1500"]);
    let resource = format!("{}/mcp", demo.url_after("proxy listening on"));
    let issuer = demo.url_after("auth server");
    let ping = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
    let cached = get_token(&issuer, Some(&resource));
    assert_eq!(mcp_post(&resource, Some(&cached), ping, &[]).status, 200); // now cached
    let shared = get_token(&issuer, Some(&resource));
    let distinct: Vec<String> = (0..6).map(|_| get_token(&issuer, Some(&resource))).collect();

    // 10 concurrent requests with one new token, and 6 with distinct new tokens: 7 slow
    // introspections in flight at once, more than the proxy has async worker threads.
    let mut slow = Vec::new();
    for token in std::iter::repeat_n(shared.clone(), 10).chain(distinct) {
        let resource = resource.clone();
        slow.push(std::thread::spawn(move || {
            let status = mcp_post(&resource, Some(&token), ping, &[]).status;
            (status, Instant::now())
        }));
    }
    std::thread::sleep(Duration::from_millis(300));
    // Meanwhile a request with the cached token and a metadata request are answered at
    // once: no AS call holds a runtime thread.
    assert_eq!(mcp_post(&resource, Some(&cached), ping, &[]).status, 200);
    let r = reply(agent().get(&format!("{resource}/.well-known/oauth-protected-resource")).call());
    assert_eq!(r.status, 200);
    let fast_done = Instant::now();
    for handle in slow {
        let (status, done) = handle.join().unwrap();
        assert_eq!(status, 200);
        assert!(done > fast_done, "a slow introspection finished before the cached request");
    }
    // Introspections: 1 for the cached token, 1 for the 10 requests sharing a token
    // (single flight), 6 for the distinct tokens.
    std::thread::sleep(Duration::from_millis(200));
    let introspections = demo.log().iter().filter(|l| l.contains(" as ") && l.contains("POST /introspect")).count();
    assert_eq!(introspections, 8, "{:?}", demo.log());
}

#[test]
fn authorization_server_down_is_503_not_401() {
    let dir = tempdir();
    let config = dir.join("down.json");
    // Port 1 on 127.0.0.1: nothing listens there.
    std::fs::write(
        &config,
        r#"{"resource": "http://127.0.0.1:8080/mcp", "authorization_servers": ["http://127.0.0.1:1"],
            "introspection_endpoint": "http://127.0.0.1:1/introspect", "client_id": "gw", "client_secret": "s", "timeout": 2000}"#,
    )
    .unwrap();
    let running = Running::start(
        &["--config", config.to_str().unwrap(), "--upstream", "http://127.0.0.1:1", "--listen", "127.0.0.1:0"],
        "Ctrl-C stops it",
    );
    let base = running.url_after("proxy listening on");
    let r = mcp_post(&format!("{base}/mcp"), Some("some-token"), "{}", &[]);
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.header("www-authenticate").is_none());
    // The metadata is served without any AS.
    let r = reply(agent().get(&format!("{base}/.well-known/oauth-protected-resource/mcp")).call());
    assert_eq!(r.status, 200);
}

#[test]
fn real_mode_forwards_with_a_prefix_and_fails_closed_on_a_bad_upstream() {
    // The embedded demo provides the AS and the echo server; a second proxy in real mode
    // protects the same echo server with a config file.
    let demo = Running::demo(&[]);
    let issuer = demo.url_after("auth server");
    let echo = demo.url_after("echo MCP server").trim_end_matches("/mcp").to_owned();
    let dir = tempdir();
    let config = dir.join("real.json");
    let resource = "http://127.0.0.1:9/real/mcp";
    std::fs::write(
        &config,
        serde_json::json!({
            "name": "mcp-oauth2",
            "config": {
                "resource": resource,
                "authorization_servers": [issuer],
                "introspection_endpoint": format!("{issuer}/introspect"),
                "client_id": "gateway",
                "client_secret": "gateway-secret",
                "claim_to_header": [{"claim": "sub", "header": "X-User-Id"}],
            }
        })
        .to_string(),
    )
    .unwrap();
    let token = get_token(&issuer, Some(resource));
    let start = |upstream: &str| {
        Running::start(
            &["--config", config.to_str().unwrap(), "--upstream", upstream, "--listen", "127.0.0.1:0"],
            "Ctrl-C stops it",
        )
    };
    // The upstream URL's path is a prefix: /mcp is sent to /mcp when the prefix is "/".
    let real = start(&format!("{echo}/"));
    let base = real.url_after("proxy listening on");
    let seen = whoami(&format!("{base}/mcp"), &token, &[("X-User-Id", "spoofed")]);
    assert_eq!(seen["x-user-id"], "demo-client", "{seen}");
    assert!(seen.get("authorization").is_none());
    // A prefix that the echo server does not know: its 404 comes back through the proxy.
    let real = start(&format!("{echo}/base"));
    let r = mcp_post(&format!("{}/mcp", real.url_after("proxy listening on")), Some(&token), "{}", &[]);
    assert_eq!(r.status, 404, "{}", r.body);
    // https:// to a server that does not speak TLS: 502, and the proxy keeps running.
    let mut real = start(&echo.replace("http://", "https://"));
    let url = format!("{}/mcp", real.url_after("proxy listening on"));
    for _ in 0..2 {
        let r = mcp_post(&url, Some(&token), "{}", &[]);
        assert_eq!(r.status, 502, "{}", r.body);
    }
    std::thread::sleep(Duration::from_millis(100));
    assert!(real.log().iter().any(|l| l.contains("502 upstream_unavailable")), "{:?}", real.log());
    assert!(real.child.try_wait().unwrap().is_none(), "the proxy is still running");
}

#[test]
fn method_scopes_read_the_buffered_body_and_forward_it_intact() {
    let demo = Running::demo(&[]);
    let issuer = demo.url_after("auth server");
    let echo = demo.url_after("echo MCP server").trim_end_matches("/mcp").to_owned();
    let dir = tempdir();
    let config = dir.join("scoped.yaml");
    let resource = "http://127.0.0.1:9/scoped/mcp";
    std::fs::write(
        &config,
        format!(
            "resource: {resource}\nauthorization_servers: [{issuer}]\nintrospection_endpoint: {issuer}/introspect\n\
             client_id: gateway\nclient_secret: gateway-secret\nmax_request_body_size: 4096\n\
             method_scopes:\n  tools/call: [mcp:write]\n"
        ),
    )
    .unwrap();
    let real = Running::start(
        &["--config", config.to_str().unwrap(), "--upstream", &echo, "--listen", "127.0.0.1:0"],
        "Ctrl-C stops it",
    );
    let url = format!("{}/mcp", real.url_after("proxy listening on"));
    let basic = base64::engine::general_purpose::STANDARD.encode("demo-client:demo-secret");
    let token_with = |scope: &str| {
        let r = reply(
            agent().post(&format!("{issuer}/token")).header("Authorization", &format!("Basic {basic}")).send_form([
                ("grant_type", "client_credentials"),
                ("resource", resource),
                ("scope", scope),
            ]),
        );
        serde_json::from_str::<serde_json::Value>(&r.body).unwrap()["access_token"].as_str().unwrap().to_owned()
    };
    let (reader, writer) = (token_with("mcp:read"), token_with("mcp:read mcp:write"));
    let text = "x".repeat(2000);
    let call = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"echo","arguments":{{"text":"{text}"}}}}}}"#
    );
    let list = r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#;

    assert_eq!(mcp_post(&url, Some(&reader), list, &[]).status, 200);
    let r = mcp_post(&url, Some(&reader), &call, &[]);
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.header("www-authenticate").unwrap().contains(r#"error="insufficient_scope""#));
    // The body the proxy read to find the method reaches the upstream intact.
    let r = mcp_post(&url, Some(&writer), &call, &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(rpc_result(&r.body)["content"][0]["text"], text.as_str());
    // Larger than max_request_body_size: 413 from the library, nothing forwarded.
    let big = call.replace(&text, &"y".repeat(5000));
    let r = mcp_post(&url, Some(&writer), &big, &[]);
    assert_eq!(r.status, 413, "{}", r.body);
}

fn tempdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("demo-proxy-test-{}-{}", std::process::id(), rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
}

fn check(config: &str, env: &[(&str, &str)]) -> std::process::Output {
    Command::new(binary()).args(["--config", config, "--check"]).envs(env.iter().copied()).output().expect("run")
}

#[test]
fn every_kong_fixture_loads() {
    let deck_env = [
        ("DECK_MCP_AUTH_URL", "http://127.0.0.1:8080/mcp"),
        ("DECK_KEYCLOAK_AUTHZ_URL", "http://127.0.0.1:9400/realms/mcp"),
        (
            "DECK_KEYCLOAK_INTROSPECTION_URL",
            "http://127.0.0.1:9400/realms/mcp/protocol/openid-connect/token/introspect",
        ),
        ("DECK_CLIENT_ID", "kong"),
        ("DECK_CLIENT_SECRET", "kong-secret-from-env"),
    ];
    for (file, expect) in [
        ("kong-deck.yaml", "decK file, at plugins[0].config"),
        ("kong-deck-route-scoped.yaml", "decK file, at plugins[0].config"),
        ("kongplugin.yaml", "KongPlugin manifest"),
        ("kong-config.json", "plugin config object"),
        ("kong-admin-api-plugin.json", "Kong Admin API plugin object"),
    ] {
        let out = check(&testdata(file), &deck_env);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{file}: {stdout} {}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains(expect), "{file}: {stdout}");
        assert!(!stdout.contains("kong-secret"), "a secret was printed: {stdout}");
    }
    // The decK values really came from the environment.
    let out = check(&testdata("kong-deck.yaml"), &deck_env);
    assert!(String::from_utf8_lossy(&out.stdout)
        .contains("http://127.0.0.1:9400/realms/mcp/protocol/openid-connect/token/introspect"));
    // The sample configs shipped with the example load too.
    let samples = format!("{}/examples/configs", repo_root());
    let mut count = 0;
    for entry in std::fs::read_dir(&samples).unwrap() {
        let path = entry.unwrap().path();
        if matches!(path.extension().and_then(|e| e.to_str()), Some("json" | "yaml")) {
            let out = check(
                path.to_str().unwrap(),
                &[
                    ("DECK_CLIENT_SECRET", "x"),
                    ("DECK_MCP_RESOURCE", "http://127.0.0.1:8080/mcp"),
                    ("DECK_AS_URL", "http://127.0.0.1:8081"),
                ],
            );
            assert!(out.status.success(), "{}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
            count += 1;
        }
    }
    assert!(count >= 3, "sample configs found: {count}");
}

#[test]
fn config_errors_name_the_field_and_exit_nonzero() {
    let dir = tempdir();
    let cases: [(&str, &str, &str); 7] = [
        (
            "typo.yaml",
            "plugins:\n- name: ai-mcp-oauth2\n  config:\n    resource: http://127.0.0.1:8080/mcp\n    authorization_servers: [http://as]\n    introspection_endpoint: http://as/i\n    introspection_endpiont: http://as/x\n",
            "plugins[0].config",
        ),
        (
            "badurl.json",
            r#"{"name": "ai-mcp-oauth2", "config": {"resource": "not a url", "authorization_servers": ["http://as"], "introspection_endpoint": "http://as/i"}}"#,
            "config.resource:",
        ),
        (
            "unset.yaml",
            "plugins:\n- name: mcp-oauth2\n  config:\n    resource: ${{ env \"DECK_NOT_SET_ANYWHERE\" }}\n",
            "DECK_NOT_SET_ANYWHERE is not set",
        ),
        ("noprefix.yaml", "resource: ${{ env \"HOME\" }}\n", "HOME must be prefixed with DECK_"),
        ("wrongplugin.json", r#"{"name": "key-auth", "config": {}}"#, "name: expected ai-mcp-oauth2"),
        ("broken.yaml", "resource: [unclosed\n", "not valid YAML or JSON"),
        (
            "missing.json",
            r#"{"authorization_servers": ["http://as"], "introspection_endpoint": "http://as/i"}"#,
            "resource",
        ),
    ];
    for (name, text, expect) in cases {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        let out = check(path.to_str().unwrap(), &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
        assert!(stderr.contains(expect), "{name}: expected {expect:?} in {stderr:?}");
        assert!(stderr.contains(name), "{name}: the error names the file: {stderr}");
    }
    // The typo'd field is named.
    let out = check(dir.join("typo.yaml").to_str().unwrap(), &[]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("introspection_endpiont"));
    // A missing file, a missing --upstream, an unknown flag.
    for args in [
        vec!["--config", "/nonexistent/kong.yaml", "--check"],
        vec!["--config", "x.json"],
        vec!["--frobnicate"],
        vec!["--jwt", "--config", "x.json", "--check"],
    ] {
        let out = Command::new(binary()).args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    // A port that is taken: a clear error naming the flag.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(binary()).args(["--listen", &addr]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("already in use") && stderr.contains("--listen"), "{stderr}");
}

#[test]
fn ctrl_c_stops_cleanly() {
    let mut demo = Running::demo(&["--tick-ms", "100"]);
    // An open SSE stream through the proxy must not keep the process alive.
    let resource = format!("{}/mcp", demo.url_after("proxy listening on"));
    let token = get_token(&demo.url_after("auth server"), Some(&resource));
    let stream = agent()
        .get(&resource)
        .header("Authorization", &format!("Bearer {token}"))
        .header("Accept", "text/event-stream")
        .call()
        .expect("GET stream");
    let mut reader = BufReader::new(stream.into_body().into_reader());
    let mut first = String::new();
    reader.read_line(&mut first).unwrap();
    assert!(first.starts_with("event: message"), "{first}");
    let pid = demo.child.id().to_string();
    assert!(Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = demo.child.try_wait().unwrap() {
            assert!(status.success(), "exit status after Ctrl-C: {status}");
            break;
        }
        assert!(Instant::now() < deadline, "still running 10 s after SIGINT");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(100));
    assert!(demo.log().iter().any(|l| l.contains("demo_proxy stopped")));
}

/// The names of the threads of a process (Linux).
fn threads(pid: u32) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("/proc/<pid>/task")
        .map(|e| std::fs::read_to_string(e.unwrap().path().join("comm")).unwrap_or_default().trim().to_owned())
        .collect();
    names.sort();
    names
}

/// Log lines of the demo AS for `POST /introspect`, without waiting.
fn introspections(demo: &mut Running) -> usize {
    demo.log().iter().filter(|l| l.contains(" as ") && l.contains(" POST /introspect ")).count()
}

#[test]
fn fifty_concurrent_requests_with_a_new_token_make_one_as_call_without_a_blocking_pool() {
    // A slow AS, so that all 50 requests arrive while the first one's call is in flight.
    let mut demo = Running::demo(&["--as-delay-ms", "500"]);
    let resource = format!("{}/mcp", demo.url_after("proxy listening on"));
    let issuer = demo.url_after("auth server");
    let ping = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
    // Warm up every path once (AS call, upstream connection), then count the threads.
    assert_eq!(mcp_post(&resource, Some(&get_token(&issuer, Some(&resource))), ping, &[]).status, 200);
    std::thread::sleep(Duration::from_millis(200));
    let before = threads(demo.child.id());
    let introspected_before = introspections(&mut demo);

    let token = get_token(&issuer, Some(&resource));
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(50));
    let clients: Vec<_> = (0..50)
        .map(|_| {
            let (resource, token, barrier) = (resource.clone(), token.clone(), std::sync::Arc::clone(&barrier));
            std::thread::spawn(move || {
                barrier.wait();
                mcp_post(&resource, Some(&token), ping, &[]).status
            })
        })
        .collect();
    // While the validation is in flight: the requests wait as tasks, not threads.
    std::thread::sleep(Duration::from_millis(300));
    let during = threads(demo.child.id());
    let statuses: Vec<u16> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    std::thread::sleep(Duration::from_millis(200));
    let after = threads(demo.child.id());
    assert_eq!(introspections(&mut demo) - introspected_before, 1, "{:?}", demo.log());
    // tokio's blocking pool would have started threads (and keeps them 10 s): the
    // process has exactly the threads it had before (main, the runtime's workers, the
    // log writer).
    assert_eq!(during, before, "threads while 50 requests waited for one AS call");
    assert_eq!(after, before, "threads after");
    assert!(before.len() <= 2 + std::thread::available_parallelism().map_or(2, |n| n.get()), "{before:?}");
}

/// One SSE stream through the proxy, read on a thread: `Ok(time)` per event, then
/// `Err(time)` when the stream ends.
fn open_stream(url: &str, token: &str) -> mpsc::Receiver<Result<Instant, Instant>> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();
    let res = agent
        .get(url)
        .header("Authorization", &format!("Bearer {token}"))
        .header("Accept", "text/event-stream")
        .call()
        .expect("GET stream");
    assert_eq!(res.status().as_u16(), 200);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(res.into_body().into_reader());
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => {
                    let _ = tx.send(Err(Instant::now()));
                    return;
                }
                Ok(_) if line.starts_with("data: ") => {
                    if tx.send(Ok(Instant::now())).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
            }
        }
    });
    rx
}

/// Drains a stream's channel: the time of its last event and, if it ended, when.
fn stream_state(rx: &mpsc::Receiver<Result<Instant, Instant>>, last: &mut Option<Instant>) -> Option<Instant> {
    for item in rx.try_iter() {
        match item {
            Ok(t) => *last = Some(t),
            Err(t) => return Some(t),
        }
    }
    None
}

/// A real-mode proxy (config written to a temp file) in front of the embedded demo's echo
/// server, introspecting at the embedded demo AS.
fn real_proxy(demo: &Running, resource: &str, extra: serde_json::Value) -> Running {
    let issuer = demo.url_after("auth server");
    let echo = demo.url_after("echo MCP server").trim_end_matches("/mcp").to_owned();
    let mut config = serde_json::json!({
        "resource": resource,
        "authorization_servers": [issuer],
        "introspection_endpoint": format!("{issuer}/introspect"),
        "client_id": "gateway",
        "client_secret": "gateway-secret",
    });
    for (k, v) in extra.as_object().unwrap() {
        config[k] = v.clone();
    }
    let path = tempdir().join("real.json");
    std::fs::write(&path, config.to_string()).unwrap();
    Running::start(
        &["--config", path.to_str().unwrap(), "--upstream", &echo, "--listen", "127.0.0.1:0"],
        "Ctrl-C stops it",
    )
}

#[test]
fn sse_streams_outlive_cache_expiry_but_not_revocation_or_exp() {
    // Tokens live 18 s; the proxy keeps an introspection answer 2 s.
    let mut demo = Running::demo(&["--token-ttl", "18", "--tick-ms", "200"]);
    let issuer = demo.url_after("auth server");
    let resource = "http://127.0.0.1:9/streams/mcp";
    let mut real = real_proxy(&demo, resource, serde_json::json!({"cache_ttl_max": 2}));
    let url = format!("{}/mcp", real.url_after("proxy listening on"));
    let issued = Instant::now();
    let (revoked_token, kept_token) = (get_token(&issuer, Some(resource)), get_token(&issuer, Some(resource)));
    let introspected_before = introspections(&mut demo);
    // Three streams of the token to revoke, one of the token that runs to its exp.
    let revoked: Vec<_> = (0..3).map(|_| open_stream(&url, &revoked_token)).collect();
    let kept = open_stream(&url, &kept_token);
    let mut last = [None; 4];

    // 10 s: five times the cache lifetime. Every stream is still open and receiving.
    std::thread::sleep((issued + Duration::from_secs(10)).saturating_duration_since(Instant::now()));
    let now = Instant::now();
    for (i, rx) in revoked.iter().chain([&kept]).enumerate() {
        assert_eq!(stream_state(rx, &mut last[i]), None, "stream {i} was cut while its token was valid");
        assert!(last[i].is_some_and(|t| now - t < Duration::from_secs(1)), "stream {i} is not receiving");
    }

    // Revoke one token at the AS: its streams end once the proxy's answer ages out (2 s)
    // and the recheck finds the token inactive.
    let basic = base64::engine::general_purpose::STANDARD.encode("demo-client:demo-secret");
    let r = reply(
        agent()
            .post(&format!("{issuer}/revoke"))
            .header("Authorization", &format!("Basic {basic}"))
            .send_form([("token", revoked_token.as_str())]),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let revoked_at = Instant::now();
    for (i, rx) in revoked.iter().enumerate() {
        let ended = loop {
            match rx.recv_timeout(Duration::from_secs(5)).expect("the stream of a revoked token ends") {
                Ok(t) => last[i] = Some(t),
                Err(t) => break t,
            }
        };
        let after = ended - revoked_at;
        assert!(after <= Duration::from_millis(3500), "stream {i} ended {after:?} after the revocation");
    }
    // The other token's stream goes on, and ends at its exp (18 s after it was issued).
    assert_eq!(stream_state(&kept, &mut last[3]), None, "the other token's stream was cut");
    let ended = loop {
        match kept.recv_timeout(Duration::from_secs(8)).expect("the stream ends at exp") {
            Ok(t) => last[3] = Some(t),
            Err(t) => break t,
        }
    };
    let lived = ended - issued;
    assert!(
        (Duration::from_millis(16_500)..=Duration::from_millis(19_500)).contains(&lived),
        "the stream ended {lived:?} after its token was issued (exp: 18 s)"
    );
    assert!(last[3].is_some_and(|t| ended - t < Duration::from_secs(1)), "it was receiving until then");

    // Both tokens are refused now.
    let ping = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
    assert_eq!(mcp_post(&url, Some(&revoked_token), ping, &[]).status, 401);
    assert_eq!(mcp_post(&url, Some(&kept_token), ping, &[]).status, 401);
    std::thread::sleep(Duration::from_millis(200));
    let log = real.log().to_vec();
    let closed = |why: &str| log.iter().filter(|l| l.contains("proxy stream closed") && l.contains(why)).count();
    assert_eq!(closed("no longer allowed (token_inactive)"), 3, "{log:?}");
    assert_eq!(closed("the token expired"), 1, "{log:?}");
    // Rechecks are shared by a token's streams: one AS call per token every 2 s (about
    // 6 for the revoked token, 9 for the other), not one per stream (about 27).
    let calls = introspections(&mut demo) - introspected_before;
    assert!((8..=20).contains(&calls), "{calls} introspections during the streams");
}

#[test]
fn underscore_twins_of_claim_headers_never_reach_the_upstream() {
    let demo = Running::demo(&[]);
    let issuer = demo.url_after("auth server");
    let resource = "http://127.0.0.1:9/twins/mcp";
    let real = real_proxy(
        &demo,
        resource,
        serde_json::json!({"claim_to_header": [
            {"claim": "sub", "header": "X-User-Id"},
            // The demo's tokens have no email: only a client could supply this header.
            {"claim": "email", "header": "X-User-Email"},
        ]}),
    );
    let url = format!("{}/mcp", real.url_after("proxy listening on"));
    let token = get_token(&issuer, Some(resource));
    let seen = whoami(
        &url,
        &token,
        &[
            ("X_User_Id", "mallory"),
            ("x_user_email", "mallory@evil.example"),
            ("X-USER_EMAIL", "mallory@evil.example"),
            ("X-User-Email", "mallory@evil.example"),
            ("X_Other", "kept"),
        ],
    );
    assert_eq!(seen["x-user-id"], "demo-client", "{seen}");
    for spoofed in ["x_user_id", "x_user_email", "x-user_email", "x-user-email"] {
        assert!(seen.get(spoofed).is_none(), "{spoofed} reached the upstream: {seen}");
    }
    assert_eq!(seen["x_other"], "kept", "other underscore headers pass: {seen}");
}

/// One HTTP/1.1 exchange on a raw socket; returns the status line.
fn raw_http1(addr: &str, request: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).lines().next().unwrap_or_default().to_owned()
}

/// Sends one HTTP/2 request (prior knowledge) with these pseudo-headers and headers,
/// HPACK-encoded as literals, so that any `:path` can be sent (HTTP client libraries
/// refuse to build the hostile ones). Returns the bytes the server sent back.
fn raw_http2(addr: &str, fields: &[(&str, &str)]) -> Vec<u8> {
    use std::io::{Read as _, Write as _};
    let mut block = Vec::new();
    for (name, value) in fields {
        assert!(name.len() < 127 && value.len() < 127);
        block.push(0x00); // literal header field without indexing, new name
        block.push(name.len() as u8);
        block.extend_from_slice(name.as_bytes());
        block.push(value.len() as u8);
        block.extend_from_slice(value.as_bytes());
    }
    let mut wire = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    wire.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]); // SETTINGS, empty
    let len = block.len();
    // HEADERS on stream 1, END_STREAM | END_HEADERS.
    wire.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, 0x1, 0x5, 0, 0, 0, 1]);
    wire.extend_from_slice(&block);
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.write_all(&wire).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    out
}

#[test]
fn a_request_target_cannot_change_the_upstream_authority() {
    let mut demo = Running::demo(&[]);
    let base = demo.url_after("proxy listening on");
    let addr = base.trim_start_matches("http://").to_owned();
    let resource = format!("{base}/mcp");
    let token = get_token(&demo.url_after("auth server"), Some(&resource));
    // Where a hostile target would send the request instead of the echo server.
    let evil = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    evil.set_nonblocking(true).unwrap();
    let evil_addr = evil.local_addr().unwrap().to_string();

    // HTTP/1.1, a target that is not a path: refused.
    let status = raw_http1(
        &addr,
        &format!(
            "GET @{evil_addr}/x HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        ),
    );
    assert!(status.starts_with("HTTP/1.1 4"), "{status}");
    // HTTP/1.1 absolute form naming another host: forwarded to the configured upstream
    // (the echo server answers a GET without Accept: text/event-stream with 406).
    let status = raw_http1(
        &addr,
        &format!(
            "GET http://{evil_addr}/mcp HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        ),
    );
    assert!(status.starts_with("HTTP/1.1 406"), "{status}");
    // HTTP/2: a `:path` of `@host:port/x`, and an `:authority` naming another host.
    let auth = format!("Bearer {token}");
    for (authority, path) in [(addr.as_str(), format!("@{evil_addr}/x")), (evil_addr.as_str(), "/mcp".to_owned())] {
        let fields = [
            (":method", "GET"),
            (":scheme", "http"),
            (":authority", authority),
            (":path", path.as_str()),
            ("authorization", auth.as_str()),
        ];
        let answer = raw_http2(&addr, &fields);
        assert!(!answer.is_empty(), "the proxy answered over HTTP/2");
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(evil.accept().is_err(), "the proxy connected to the host named in a request target");
    // The proxy is still serving, and the upstream saw only the forwarded requests.
    assert_eq!(mcp_post(&resource, Some(&token), r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#, &[]).status, 200);
    let log = demo.log().to_vec();
    assert!(log.iter().all(|l| !l.contains(&evil_addr)), "{log:?}");
}

/// A fake authorization server on 127.0.0.1 that answers every connection the same way.
fn fake_as(answer: &'static [u8], delay: Duration) -> String {
    use std::io::{Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                let _ = stream.read(&mut buf);
                std::thread::sleep(delay);
                let _ = stream.write_all(answer);
                if answer.len() > 100_000 {
                    // More than MAX_RESPONSE_BODY announced: send a lot of it.
                    let chunk = vec![b' '; 64 * 1024];
                    for _ in 0..32 {
                        if stream.write_all(&chunk).is_err() {
                            break;
                        }
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn authorization_server_failures_are_503_with_what_failed() {
    const BIG: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2000000\r\n\r\n{\"active\": true,                                                                                                                     ";
    let cases: [(&str, String, &str); 5] = [
        ("refused", "http://127.0.0.1:1/introspect".to_owned(), "introspection: connection failed"),
        (
            "not TLS",
            format!("https://{}/introspect", fake_as(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", Duration::ZERO)),
            "introspection: TLS failure",
        ),
        ("silent", format!("http://{}/introspect", fake_as(b"", Duration::from_secs(30))), "introspection: timed out"),
        (
            "redirect (not followed)",
            format!(
                "http://{}/introspect",
                fake_as(
                    b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:1/\r\nContent-Length: 0\r\n\r\n",
                    Duration::ZERO
                )
            ),
            "introspection: HTTP 302",
        ),
        ("oversize", format!("http://{}/introspect", fake_as(BIG, Duration::ZERO)), "over 1 MiB"),
    ];
    for (what, endpoint, detail) in cases {
        let dir = tempdir();
        let config = dir.join("as.json");
        std::fs::write(
            &config,
            serde_json::json!({
                "resource": "http://127.0.0.1:8080/mcp", "authorization_servers": ["http://127.0.0.1:1"],
                "introspection_endpoint": endpoint, "client_id": "gw", "client_secret": "s", "timeout": 1000,
                "ssl_verify": false,
            })
            .to_string(),
        )
        .unwrap();
        let mut proxy = Running::start(
            &["--config", config.to_str().unwrap(), "--upstream", "http://127.0.0.1:1", "--listen", "127.0.0.1:0"],
            "Ctrl-C stops it",
        );
        let base = proxy.url_after("proxy listening on");
        let r = mcp_post(&format!("{base}/mcp"), Some("some-token"), "{}", &[]);
        assert_eq!(r.status, 503, "{what}: {}", r.body);
        assert!(r.header("www-authenticate").is_none(), "{what}");
        std::thread::sleep(Duration::from_millis(150));
        let log = proxy.log().to_vec();
        assert!(
            log.iter().any(|l| l.contains(" 503 authorization_server_unavailable ") && l.contains(detail)),
            "{what}: expected {detail:?} in {log:?}"
        );
        assert!(log.iter().any(|l| l.contains("warning: ssl_verify is false")), "{what}: {log:?}");
    }
}
