//! The embedded upstream: a minimal, stateless MCP server over Streamable HTTP with two
//! tools, `echo` and `whoami`. It does no authentication at all; it shows what the proxy
//! forwards.
//!
//! - `POST /mcp`: one JSON-RPC message. Requests are answered as SSE (`text/event-stream`)
//!   when the client accepts it, else as JSON; notifications and responses get 202.
//! - `GET /mcp` (Accept: text/event-stream): a standalone SSE stream that sends a
//!   `notifications/message` event at once and then every `tick`, until the client (or
//!   the proxy, at the token's `valid_until`) closes it.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body as HttpBody, Frame, Incoming};
use hyper::header::HeaderMap;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::time::Interval;

use crate::serve::{json, respond, Body, BoxError, RequestLog};

const PROTOCOL_VERSIONS: [&str; 4] = ["2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"];

/// The echo MCP server.
pub struct EchoMcp {
    /// Interval between events on `GET /mcp` streams.
    pub tick: Duration,
}

impl EchoMcp {
    /// Handles one request.
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let log = RequestLog::start("upstream", peer, &req);
        let (response, outcome) = self.route(req).await;
        log.finish(response.status().as_u16(), outcome, None);
        response
    }

    async fn route(&self, req: Request<Incoming>) -> (Response<Body>, &'static str) {
        if req.uri().path() != "/mcp" {
            return (json(StatusCode::NOT_FOUND, &json!({"error": "not found"})), "not_found");
        }
        let accept = header_str(req.headers(), "accept").to_ascii_lowercase();
        match *req.method() {
            Method::POST => self.post(req, &accept).await,
            Method::GET if accept.contains("text/event-stream") => (self.stream(), "sse_stream"),
            Method::GET => {
                (rpc_http_error(StatusCode::NOT_ACCEPTABLE, "GET needs Accept: text/event-stream"), "not_acceptable")
            }
            _ => {
                let mut r = rpc_http_error(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed (stateless server)");
                r.headers_mut().insert(hyper::header::ALLOW, hyper::header::HeaderValue::from_static("GET, POST"));
                (r, "method_not_allowed")
            }
        }
    }

    async fn post(&self, req: Request<Incoming>, accept: &str) -> (Response<Body>, &'static str) {
        let content_type = header_str(req.headers(), "content-type").to_ascii_lowercase();
        if !content_type.starts_with("application/json") {
            return (
                rpc_http_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "Content-Type must be application/json"),
                "bad_content_type",
            );
        }
        let sse = accept.contains("text/event-stream");
        if !sse && !accept.contains("application/json") && !accept.contains("*/*") && !accept.is_empty() {
            return (
                rpc_http_error(StatusCode::NOT_ACCEPTABLE, "Accept application/json or text/event-stream"),
                "not_acceptable",
            );
        }
        let identity = identity_headers(req.headers());
        let Ok(collected) = Limited::new(req.into_body(), 1024 * 1024).collect().await else {
            return (rpc_http_error(StatusCode::PAYLOAD_TOO_LARGE, "Body too large or unreadable"), "bad_body");
        };
        let Ok(message) = serde_json::from_slice::<Value>(&collected.to_bytes()) else {
            return (rpc_error_response(Value::Null, -32700, "Parse error"), "parse_error");
        };
        let Some(obj) = message.as_object() else {
            return (rpc_error_response(Value::Null, -32600, "Expected one JSON-RPC message"), "invalid_request");
        };
        let (Some(id), Some(method)) = (obj.get("id"), obj.get("method").and_then(Value::as_str)) else {
            // A notification or a response from the client: accepted, no body.
            return (respond(StatusCode::ACCEPTED, "application/json", Bytes::new()), "accepted");
        };
        let params = obj.get("params").cloned().unwrap_or(Value::Null);
        let reply = match dispatch(method, &params, &identity) {
            Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
            Err((code, message)) => json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}}),
        };
        let body = serde_json::to_vec(&reply).expect("JSON value serializes");
        if sse {
            let mut event = b"event: message\ndata: ".to_vec();
            event.extend_from_slice(&body);
            event.extend_from_slice(b"\n\n");
            let mut r = respond(StatusCode::OK, "text/event-stream", event);
            r.headers_mut().insert(hyper::header::CACHE_CONTROL, hyper::header::HeaderValue::from_static("no-cache"));
            (r, "sse")
        } else {
            (respond(StatusCode::OK, "application/json", body), "json")
        }
    }

    fn stream(&self) -> Response<Body> {
        let mut interval = tokio::time::interval(self.tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let body = Ticks { interval, n: 0 };
        let mut r = Response::new(body.boxed());
        r.headers_mut()
            .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/event-stream"));
        r.headers_mut().insert(hyper::header::CACHE_CONTROL, hyper::header::HeaderValue::from_static("no-cache"));
        r
    }
}

fn dispatch(method: &str, params: &Value, identity: &Value) -> Result<Value, (i64, String)> {
    match method {
        "initialize" => {
            let requested = params.get("protocolVersion").and_then(Value::as_str).unwrap_or_default();
            let version = if PROTOCOL_VERSIONS.contains(&requested) { requested } else { PROTOCOL_VERSIONS[1] };
            Ok(json!({
                "protocolVersion": version,
                "capabilities": {"tools": {"listChanged": false}},
                "serverInfo": {"name": "mcp-oauth2-demo-echo", "version": env!("CARGO_PKG_VERSION")},
            }))
        }
        "ping" => Ok(json!({})),
        "tools/list" => Ok(json!({"tools": [
            {
                "name": "echo",
                "description": "Returns the given text.",
                "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
            },
            {
                "name": "whoami",
                "description": "Returns the Authorization, X-* and X_* headers this request reached the server with.",
                "inputSchema": {"type": "object", "properties": {}},
            },
        ]})),
        "tools/call" => {
            let name = params.get("name").and_then(Value::as_str).unwrap_or_default();
            let args = params.get("arguments").cloned().unwrap_or(Value::Null);
            match name {
                "echo" => match args.get("text").and_then(Value::as_str) {
                    Some(text) => Ok(json!({"content": [{"type": "text", "text": text}]})),
                    None => Err((-32602, "echo needs a string argument `text`".to_owned())),
                },
                "whoami" => Ok(json!({"content": [{"type": "text", "text": identity.to_string()}]})),
                _ => Err((-32602, format!("unknown tool {name:?}"))),
            }
        }
        _ => Err((-32601, format!("method not found: {method}"))),
    }
}

/// `authorization` (only if present) and every `x-*` and `x_*` header, lower-case names.
fn identity_headers(headers: &HeaderMap) -> Value {
    let mut out = serde_json::Map::new();
    for (name, value) in headers {
        let n = name.as_str();
        if n == "authorization" || n.starts_with("x-") || n.starts_with("x_") {
            out.insert(n.to_owned(), Value::String(String::from_utf8_lossy(value.as_bytes()).into_owned()));
        }
    }
    Value::Object(out)
}

fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> &'h str {
    headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default()
}

fn rpc_error_response(id: Value, code: i64, message: &str) -> Response<Body> {
    json(StatusCode::BAD_REQUEST, &json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}}))
}

fn rpc_http_error(status: StatusCode, message: &str) -> Response<Body> {
    json(status, &json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32000, "message": message}}))
}

/// The body of a `GET /mcp` stream: one SSE event per tick, forever.
struct Ticks {
    interval: Interval,
    n: u64,
}

impl HttpBody for Ticks {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.interval.poll_tick(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(_) => {
                let n = self.n;
                self.n += 1;
                let message = json!({
                    "jsonrpc": "2.0",
                    "method": "notifications/message",
                    "params": {"level": "info", "logger": "demo-echo", "data": format!("tick {n}")},
                });
                let event = format!("event: message\nid: {n}\ndata: {message}\n\n");
                Poll::Ready(Some(Ok(Frame::data(Bytes::from(event)))))
            }
        }
    }
}
