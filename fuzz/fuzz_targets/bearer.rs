//! Authorization header extraction (behaviour.md §3), through `Validator::begin`: the
//! decision for the fuzzed `Authorization` values (one per line) must be exactly the one an
//! independent reading of RFC 6750 gives, and a well-formed token must reach the
//! introspection request unchanged (and nothing else must).
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use mcp_oauth2::{Decision, Purpose, Request, Step, Validator, MAX_TOKEN_LEN};
use mcp_oauth2_fuzz::{introspection_config, now, validator, INTROSPECTION_URL};

static VALIDATOR: LazyLock<Validator> = LazyLock::new(|| validator(&introspection_config()));

/// What the contract says one request's `Authorization` values carry.
#[derive(PartialEq)]
enum Expected<'a> {
    NoCredentials,
    Malformed,
    TooLong,
    Token(&'a [u8]),
}

impl std::fmt::Debug for Expected<'_> {
    // Never the token itself, even a fuzzed one.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expected::NoCredentials => f.write_str("NoCredentials"),
            Expected::Malformed => f.write_str("Malformed"),
            Expected::TooLong => f.write_str("TooLong"),
            Expected::Token(t) => write!(f, "Token([{} bytes])", t.len()),
        }
    }
}

fn expected<'a>(values: &[&'a [u8]]) -> Expected<'a> {
    let value = match values {
        [] => return Expected::NoCredentials,
        [one] => *one,
        _ => return Expected::Malformed,
    };
    let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = value.iter().position(|b| !is_ows(b)).unwrap_or(value.len());
    let end = value.iter().rposition(|b| !is_ows(b)).map_or(start, |i| i + 1);
    let value = &value[start..end];
    if value.is_empty() {
        return Expected::NoCredentials;
    }
    let (scheme, rest) = value.split_at(value.iter().position(|b| *b == b' ').unwrap_or(value.len()));
    if !scheme.eq_ignore_ascii_case(b"Bearer") {
        return Expected::NoCredentials;
    }
    let token = &rest[rest.iter().position(|b| *b != b' ').unwrap_or(rest.len())..];
    if token.is_empty() {
        return Expected::Malformed;
    }
    if token.len() > MAX_TOKEN_LEN {
        return Expected::TooLong;
    }
    // b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
    let body = token.iter().take_while(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(b)).count();
    let padding = token[body..].iter().take_while(|b| **b == b'=').count();
    if body == 0 || body + padding != token.len() {
        return Expected::Malformed;
    }
    Expected::Token(token)
}

/// The `token` field of a form-urlencoded body.
fn form_token(body: &[u8]) -> Option<Vec<u8>> {
    let field = body.split(|b| *b == b'&').find_map(|f| f.strip_prefix(b"token="))?;
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        match field[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < field.len() => {
                let hex = std::str::from_utf8(&field[i + 1..i + 3]).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    Some(out)
}

fuzz_target!(|data: &[u8]| {
    let values: Vec<&[u8]> = if data.is_empty() { vec![] } else { data.split(|b| *b == b'\n').take(3).collect() };
    let names = ["Authorization", "authorization", "AUTHORIZATION"];
    let mut req = Request::new("POST", "/mcp");
    for (i, v) in values.iter().enumerate() {
        req = req.header(names[i % names.len()], *v);
    }
    let want = expected(&values);
    match (VALIDATOR.begin(&req, now()), &want) {
        (Step::Need(http, _pending), Expected::Token(token)) => {
            assert_eq!(http.purpose, Purpose::Introspection);
            assert_eq!(http.url, INTROSPECTION_URL, "the AS URL never comes from the request");
            let sent = form_token(&http.body).expect("the introspection body has a token field");
            assert!(sent == *token, "the token sent for introspection is not the request's");
        }
        (Step::Done(Decision::Respond(r)), Expected::NoCredentials) => {
            assert_eq!(r.status(), 401);
            let challenge = r.header("WWW-Authenticate").expect("a 401 has a challenge");
            assert!(!challenge.contains("error="), "no credentials: a challenge without error");
        }
        (Step::Done(Decision::Respond(r)), Expected::Malformed) => {
            assert_eq!(r.status(), 400);
            assert!(r.header("WWW-Authenticate").unwrap_or_default().contains("error=\"invalid_request\""));
        }
        (Step::Done(Decision::Respond(r)), Expected::TooLong) => {
            assert_eq!(r.status(), 401);
            assert!(r.header("WWW-Authenticate").unwrap_or_default().contains("error=\"invalid_token\""));
        }
        (step, want) => panic!("{want:?} but the validator answered {step:?}"),
    }
});
