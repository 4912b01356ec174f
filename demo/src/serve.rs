//! What the three servers share: bytes bodies, the accept loop with graceful shutdown, and
//! the one-line-per-request log.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{mpsc, Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Error type of every body the servers send.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The response body of every server.
pub type Body = BoxBody<Bytes, BoxError>;

/// A complete body.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

/// A response with a status, a content type and a complete body.
pub fn respond(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

/// A JSON response.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    respond(status, "application/json", serde_json::to_vec(value).expect("JSON value serializes"))
}

/// Binds a listener, with an error message that says what to do when the port is taken.
pub async fn bind(addr: SocketAddr, what: &str, flag: &str) -> Result<TcpListener, String> {
    TcpListener::bind(addr).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            format!("{what}: {addr} is already in use; choose another address with {flag} (port 0 = any free port)")
        } else {
            format!("{what}: cannot listen on {addr}: {e}")
        }
    })
}

/// Serves HTTP/1.1 and HTTP/2 on `listener` until `shutdown` flips to true, then lets open
/// connections finish for up to `grace` (long-lived SSE streams are then dropped).
pub async fn serve<H, F>(listener: TcpListener, handler: Arc<H>, mut shutdown: watch::Receiver<bool>, grace: Duration)
where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        log_line(format!("{} accept failed: {e}", timestamp()));
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let handler = Arc::clone(&handler);
                let service = service_fn(move |req| {
                    let fut = handler(req, peer);
                    async move { Ok::<_, Infallible>(fut.await) }
                });
                let conn = builder.serve_connection(TokioIo::new(stream), service).into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    // Client resets and half-written requests end here; nothing to report.
                    let _ = conn.await;
                });
            }
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(grace, graceful.shutdown()).await;
}

/// One request's log line: `<time> <component> <peer> <METHOD> <path> <status> <reason>
/// <ms>`. The path is printed without its query string (a client may put a token there)
/// and nothing from headers or bodies is ever logged.
pub struct RequestLog {
    component: &'static str,
    peer: SocketAddr,
    method: hyper::Method,
    uri: hyper::Uri,
    started: Instant,
}

impl RequestLog {
    /// Starts timing a request.
    pub fn start<B>(component: &'static str, peer: SocketAddr, req: &Request<B>) -> Self {
        RequestLog { component, peer, method: req.method().clone(), uri: req.uri().clone(), started: Instant::now() }
    }

    /// Writes the line to stderr.
    pub fn finish(self, status: u16, reason: &str, detail: Option<&str>) {
        use std::fmt::Write as _;
        let RequestLog { component, peer, method, uri, started } = self;
        // Hundredths of a millisecond, printed without float formatting.
        let centi_ms = started.elapsed().as_micros().div_ceil(10);
        let mut line = String::with_capacity(128);
        write_timestamp(&mut line);
        let _ = write!(line, " {component} {peer} {method} ");
        line.extend(uri.path().chars().map(|c| if c.is_control() { '?' } else { c }));
        let _ = write!(line, " {status} {reason} {}.{:02}ms", centi_ms / 100, centi_ms % 100);
        if let Some(d) = detail {
            let _ = write!(line, " ({d})");
        }
        log_line(line);
    }
}

enum LogMessage {
    Line(String),
    Flush(mpsc::SyncSender<()>),
}

static LOG: OnceLock<mpsc::Sender<LogMessage>> = OnceLock::new();

/// How long the log writer lets lines gather before writing them.
const BATCH_WINDOW: Duration = Duration::from_millis(5);

/// Starts the log writer: a thread of its own (not the runtime's blocking pool) that
/// writes the lines the servers hand it in batches, so a request never waits for stderr
/// or for another request's write. Until it runs, lines are written directly.
pub fn start_log() -> std::io::Result<()> {
    let (tx, rx) = mpsc::channel::<LogMessage>();
    std::thread::Builder::new().name("log".to_owned()).spawn(move || {
        use std::io::Write as _;
        let mut out = std::io::BufWriter::with_capacity(64 * 1024, std::io::stderr());
        let handle = |message: LogMessage, out: &mut std::io::BufWriter<std::io::Stderr>| match message {
            LogMessage::Line(line) => {
                let _ = out.write_all(line.as_bytes());
                let _ = out.write_all(b"\n");
            }
            LogMessage::Flush(done) => {
                let _ = out.flush();
                let _ = done.send(());
            }
        };
        // Block while idle; once a line arrives, let the others of the burst gather for a
        // moment and write them together: under load the servers' threads then never
        // wake this one per line (a thread wake-up costs more than the line itself).
        while let Ok(message) = rx.recv() {
            let flushing = matches!(message, LogMessage::Flush(_));
            handle(message, &mut out);
            if !flushing {
                std::thread::sleep(BATCH_WINDOW);
            }
            while let Ok(message) = rx.try_recv() {
                handle(message, &mut out);
            }
            let _ = out.flush();
        }
    })?;
    let _ = LOG.set(tx);
    Ok(())
}

/// Waits (a second at most) until every line logged so far is written.
pub fn flush_log() {
    if let Some(tx) = LOG.get() {
        let (done_tx, done_rx) = mpsc::sync_channel(1);
        if tx.send(LogMessage::Flush(done_tx)).is_ok() {
            let _ = done_rx.recv_timeout(Duration::from_secs(1));
        }
    }
}

/// Logs one line (without its newline).
pub fn log_line(line: String) {
    let line = match LOG.get() {
        Some(tx) => match tx.send(LogMessage::Line(line)) {
            Ok(()) => return,
            Err(mpsc::SendError(LogMessage::Line(line))) => line,
            Err(_) => return,
        },
        None => line,
    };
    use std::io::Write as _;
    let mut buf = line.into_bytes();
    buf.push(b'\n');
    let _ = std::io::stderr().lock().write_all(&buf);
}

/// UTC time as `2026-11-26T06:30:00.123Z` (no date crate for one log prefix).
pub fn timestamp() -> String {
    let mut s = String::with_capacity(24);
    write_timestamp(&mut s);
    s
}

fn write_timestamp(out: &mut String) {
    use std::fmt::Write as _;
    thread_local! {
        /// The date and time to the second of the last line this thread wrote.
        static SECOND: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = now.as_secs();
    SECOND.with_borrow_mut(|(cached, text)| {
        if *cached != secs {
            let (days, rem) = (secs / 86_400, secs % 86_400);
            let (y, m, d) = civil_from_days(i64::try_from(days).unwrap_or(0));
            text.clear();
            let _ = write!(text, "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60);
            *cached = secs;
        }
        out.push_str(text);
    });
    let _ = write!(out, ".{:03}Z", now.subsec_millis());
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's method).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let m = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    #[test]
    fn timestamps() {
        let t = super::timestamp();
        assert_eq!(t.len(), 24, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z') && t.as_bytes()[10] == b'T', "{t}");
        assert_eq!(super::timestamp()[..19].len(), 19);
    }

    #[test]
    fn civil_dates() {
        assert_eq!(super::civil_from_days(0), (1970, 1, 1));
        assert_eq!(super::civil_from_days(20_513), (2026, 3, 1));
        assert_eq!(super::civil_from_days(11_016), (2000, 2, 29));
    }
}
