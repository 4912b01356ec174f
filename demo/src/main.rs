//! `cargo run --release -p mcp-oauth2-demo`: the mcp-oauth2 library as a small reverse
//! proxy in front of an MCP server.
//!
//! Without arguments it starts, on 127.0.0.1, a demo authorization server, an echo MCP
//! server and the proxy in front of it, and prints curl commands that show the flow
//! (401 with its challenge → metadata → token → 200); tokens are opaque and introspected,
//! or with `--jwt` RFC 9068 JWTs validated locally with the AS's JWKS. With `--config FILE --upstream URL`
//! it protects a real MCP server with a Kong `ai-mcp-oauth2` configuration (plugin JSON,
//! Admin API object, decK `kong.yaml`, or KongPlugin manifest). See docs/demo-proxy.md.

mod as_client;
mod auth_server;
mod config_file;
mod echo_mcp;
mod proxy;
mod serve;
mod stream;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use mcp_oauth2::{Config, Validator};
use serde_json::json;
use tokio::sync::watch;

use crate::auth_server::{AuthServer, TokenFormat};
use crate::echo_mcp::EchoMcp;
use crate::proxy::{Ops, Proxy};

const USAGE: &str = "\
Usage:
  demo_proxy [demo options]                       embedded demo: AS + echo MCP server + proxy
  demo_proxy --config FILE --upstream URL [--listen ADDR] [--check]

Real mode:
  --config FILE      plugin config: bare `config` JSON/YAML, Admin API plugin object
                     ({\"name\": \"ai-mcp-oauth2\", \"config\": {...}}), decK kong.yaml
                     (${{ env \"DECK_X\" }} substituted), or a KongPlugin manifest
  --upstream URL     the MCP server to protect (http://host:port[/prefix])
  --listen ADDR      where the proxy listens (default 127.0.0.1:8080)
  --check            load and validate the configuration, print a summary, exit

Demo options (no --config):
  --listen ADDR           proxy (default 127.0.0.1:8080)
  --as-listen ADDR        demo authorization server (default 127.0.0.1:8081)
  --upstream-listen ADDR  echo MCP server (default 127.0.0.1:8082)
  --jwt                   the AS issues RFC 9068 JWT access tokens and the proxy
                          validates them locally (metadata discovery + JWKS) instead
                          of introspecting opaque tokens
  --token-ttl SECS        lifetime of demo tokens (default 300)
  --tick-ms MS            interval of events on GET /mcp SSE streams (default 1000)
  --as-delay-ms MS        slow down every introspection (default 0): other requests
                          through the proxy do not wait for it

Operations endpoints (both modes; answered by the proxy itself, loopback clients only):
  --metrics-path PATH     the Prometheus metrics (default /metrics)
  --no-metrics            no metrics endpoint (the path is proxied like any other)
  --admin-evict           enable POST /_mcp_oauth2/evict with {\"token\": \"...\"} or
                          {\"cache_key\": \"<64 hex>\"}: drops the token's cached answer
                          (on every node with the cluster cache); off by default
  --ops-allow-remote      serve them to non-loopback clients too (default: 403)

Port 0 picks a free port; the banner prints the real ones. Ctrl-C stops everything.
";

/// Exit status for configuration errors (bad file, bad field, unsupported feature).
const EXIT_CONFIG: u8 = 2;

struct Args {
    config: Option<String>,
    upstream: Option<String>,
    listen: SocketAddr,
    as_listen: SocketAddr,
    upstream_listen: SocketAddr,
    token_ttl: u64,
    tick_ms: u64,
    as_delay_ms: u64,
    jwt: bool,
    check: bool,
    ops: Ops,
}

fn parse_args() -> Result<Args, String> {
    let addr = |s: &str| -> SocketAddr { s.parse().expect("valid default") };
    let mut args = Args {
        config: None,
        upstream: None,
        listen: addr("127.0.0.1:8080"),
        as_listen: addr("127.0.0.1:8081"),
        upstream_listen: addr("127.0.0.1:8082"),
        token_ttl: 300,
        tick_ms: 1000,
        as_delay_ms: 0,
        jwt: false,
        check: false,
        ops: Ops::default(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let parse_addr = |v: String, flag: &str| -> Result<SocketAddr, String> {
            v.parse().map_err(|_| format!("{flag}: not an address like 127.0.0.1:8080: {v:?}"))
        };
        match flag.as_str() {
            "--config" => args.config = Some(value()?),
            "--upstream" => args.upstream = Some(value()?),
            "--listen" => args.listen = parse_addr(value()?, "--listen")?,
            "--as-listen" => args.as_listen = parse_addr(value()?, "--as-listen")?,
            "--upstream-listen" => args.upstream_listen = parse_addr(value()?, "--upstream-listen")?,
            "--token-ttl" => {
                args.token_ttl =
                    value()?.parse().ok().filter(|t| *t > 0).ok_or("--token-ttl: a positive number of seconds")?
            }
            "--tick-ms" => {
                args.tick_ms = value()?.parse().ok().filter(|t| *t > 0).ok_or("--tick-ms: a positive number")?
            }
            "--as-delay-ms" => {
                args.as_delay_ms = value()?.parse().map_err(|_| "--as-delay-ms: a number of milliseconds")?
            }
            "--check" => args.check = true,
            "--metrics-path" => {
                let path = value()?;
                if !path.starts_with('/') || path.contains(['?', '#']) || path.chars().any(char::is_whitespace) {
                    return Err(format!("--metrics-path: a path like /metrics, not {path:?}"));
                }
                args.ops.metrics_path = Some(path);
            }
            "--no-metrics" => args.ops.metrics_path = None,
            "--admin-evict" => args.ops.admin_evict = true,
            "--ops-allow-remote" => args.ops.allow_remote = true,
            "--jwt" => args.jwt = true,
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?} (see --help)")),
        }
    }
    if args.config.is_none() && (args.upstream.is_some() || args.check) {
        return Err("--upstream and --check need --config FILE".to_owned());
    }
    if args.config.is_some() && args.jwt {
        // In real mode the configuration file decides (no introspection_endpoint = JWT).
        return Err(
            "--jwt is for the embedded demo; with --config, leave out introspection_endpoint instead".to_owned()
        );
    }
    if args.config.is_none() {
        // The demo AS has fixed, printed secrets and the echo server no auth at all.
        for (flag, addr) in
            [("--listen", args.listen), ("--as-listen", args.as_listen), ("--upstream-listen", args.upstream_listen)]
        {
            if !addr.ip().is_loopback() {
                return Err(format!(
                    "{flag}: the embedded demo listens on loopback addresses only (127.0.0.1), not {addr}"
                ));
            }
        }
    }
    if args.config.is_some() && !args.check && args.upstream.is_none() {
        return Err("--upstream URL is required with --config (the MCP server to protect)".to_owned());
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("demo_proxy: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Err(e) = serve::start_log() {
        eprintln!("demo_proxy: cannot start the log writer: {e}");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("demo_proxy: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match &args.config {
        Some(path) => runtime.block_on(real_mode(&args, path)),
        None => runtime.block_on(demo_mode(&args)),
    };
    // Tasks may still wait for an authorization server; do not wait for them.
    runtime.shutdown_timeout(Duration::from_secs(1));
    serve::flush_log();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config(e)) => {
            eprintln!("demo_proxy: configuration error: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(Failure::Runtime(e)) => {
            eprintln!("demo_proxy: {e}");
            ExitCode::FAILURE
        }
    }
}

enum Failure {
    Config(String),
    Runtime(String),
}

/// Loads `path` into a validator; errors name the file and the field path.
fn load_validator(path: &str) -> Result<(Validator, config_file::Found), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: cannot read: {e}"))?;
    let env = |name: &str| std::env::var(name).ok();
    let found = config_file::parse(&text, &env).map_err(|e| format!("{path}: {e}"))?;
    let at = |e: mcp_oauth2::Error| -> String {
        let field = match (found.location.as_str(), e.field()) {
            ("", Some(f)) => f.to_owned(),
            (loc, Some(f)) => format!("{loc}.{f}"),
            ("", None) => String::new(),
            (loc, None) => loc.to_owned(),
        };
        if field.is_empty() {
            format!("{path}: {}", e.message())
        } else {
            format!("{path}: {field}: {}", e.message())
        }
    };
    let config = Config::from_value(found.config.clone()).map_err(at)?;
    let validator = Validator::new(config).map_err(at)?;
    Ok((validator, found))
}

async fn real_mode(args: &Args, path: &str) -> Result<(), Failure> {
    let signals = Signals::install()?;
    let (validator, found) = load_validator(path).map_err(Failure::Config)?;
    for w in &found.warnings {
        eprintln!("demo_proxy: warning: {w}");
    }
    for w in validator.warnings() {
        eprintln!("demo_proxy: warning: {w}");
    }
    let config = validator.config();
    if !config.ssl_verify {
        eprintln!("demo_proxy: warning: ssl_verify is false: authorization-server certificates are not verified");
    }
    if args.check {
        println!(
            "{path}: OK ({}{})",
            found.kind,
            if found.location.is_empty() { String::new() } else { format!(", at {}", found.location) }
        );
        println!("  resource               {}", config.resource);
        println!("  authorization_servers  {}", config.authorization_servers.join(", "));
        println!("  metadata path          {}", config.effective_metadata_endpoint());
        println!("  introspection          {}", config.introspection_endpoint.as_deref().unwrap_or("-"));
        println!("  client_auth            {}", config.effective_client_auth().as_str());
        println!("  cluster cache          {}", cluster_summary(config));
        return Ok(());
    }
    let upstream = args.upstream.as_deref().expect("checked by parse_args");
    let proxy = Proxy::new(validator.clone(), upstream, args.ops.clone()).map_err(Failure::Config)?;
    let listener = serve::bind(args.listen, "proxy", "--listen").await.map_err(Failure::Runtime)?;
    let addr = listener.local_addr().map_err(|e| Failure::Runtime(e.to_string()))?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let proxy = Arc::new(proxy);
    proxy.watch_cluster();
    let server = tokio::spawn(serve::serve(
        listener,
        Arc::new(move |req, peer| Arc::clone(&proxy).handle(req, peer)),
        stop_rx,
        Duration::from_secs(3),
    ));
    println!("mcp-oauth2 demo proxy ({} from {path})", found.kind);
    println!("  proxy listening on http://{addr}");
    println!("  upstream           {upstream}");
    println!("  resource           {}", config.resource);
    println!("  metadata path      {}", config.effective_metadata_endpoint());
    println!("  cluster cache      {}", cluster_summary(config));
    println!("  operations         {}", ops_summary(&args.ops));
    println!("Ctrl-C stops it.");
    signals.wait().await;
    let _ = stop_tx.send(true);
    let _ = server.await;
    serve::log_line(format!("{} demo_proxy stopped", serve::timestamp()));
    Ok(())
}

async fn demo_mode(args: &Args) -> Result<(), Failure> {
    let signals = Signals::install()?;
    let bind = |addr, what, flag| serve::bind(addr, what, flag);
    let proxy_listener = bind(args.listen, "proxy", "--listen").await.map_err(Failure::Runtime)?;
    let as_listener =
        bind(args.as_listen, "demo authorization server", "--as-listen").await.map_err(Failure::Runtime)?;
    let up_listener =
        bind(args.upstream_listen, "echo MCP server", "--upstream-listen").await.map_err(Failure::Runtime)?;
    let local = |l: &tokio::net::TcpListener| l.local_addr().map_err(|e| Failure::Runtime(e.to_string()));
    let (proxy_addr, as_addr, up_addr) = (local(&proxy_listener)?, local(&as_listener)?, local(&up_listener)?);

    let issuer = format!("http://{as_addr}");
    let resource = format!("http://{proxy_addr}/mcp");
    let format = if args.jwt { TokenFormat::Jwt } else { TokenFormat::Opaque };
    // The same shape as examples/configs/demo.json, with the ports actually bound.
    let mut config = json!({
        "resource": resource,
        "authorization_servers": [issuer],
        "scopes_supported": auth_server::SCOPES,
        "claim_to_header": [
            {"claim": "client_id", "header": "X-Client-Id"},
            {"claim": "scope", "header": "X-Scope"},
        ],
    });
    match format {
        TokenFormat::Opaque => {
            config["introspection_endpoint"] = json!(format!("{issuer}/introspect"));
            config["client_id"] = json!(auth_server::GATEWAY_CLIENT_ID);
            config["client_secret"] = json!(auth_server::GATEWAY_CLIENT_SECRET);
        }
        // No introspection_endpoint: the validator discovers the AS metadata from
        // authorization_servers, fetches its jwks_uri and verifies the JWTs itself.
        TokenFormat::Jwt => config["access_token_type"] = json!("at+jwt"),
    }
    let config = Config::from_value(config).map_err(|e| Failure::Config(e.to_string()))?;
    let metadata_path = config.effective_metadata_endpoint();
    let validator = Validator::new(config).map_err(|e| Failure::Config(e.to_string()))?;
    let proxy =
        Arc::new(Proxy::new(validator, &format!("http://{up_addr}"), args.ops.clone()).map_err(Failure::Config)?);
    let auth = AuthServer::new(issuer.clone(), format, args.token_ttl, Duration::from_millis(args.as_delay_ms))
        .map_err(Failure::Runtime)?;
    let auth = Arc::new(auth);
    let echo = Arc::new(EchoMcp { tick: Duration::from_millis(args.tick_ms) });

    let (stop_tx, stop_rx) = watch::channel(false);
    let grace = Duration::from_secs(3);
    let servers = [
        tokio::spawn(serve::serve(
            proxy_listener,
            Arc::new(move |req, peer| Arc::clone(&proxy).handle(req, peer)),
            stop_rx.clone(),
            grace,
        )),
        tokio::spawn(serve::serve(
            as_listener,
            Arc::new(move |req, peer| Arc::clone(&auth).handle(req, peer)),
            stop_rx.clone(),
            grace,
        )),
        tokio::spawn(serve::serve(
            up_listener,
            Arc::new(move |req, peer| Arc::clone(&echo).handle(req, peer)),
            stop_rx,
            grace,
        )),
    ];

    print!("{}", banner(&resource, &issuer, &format!("http://{up_addr}/mcp"), &proxy_addr, &metadata_path, format));
    signals.wait().await;
    let _ = stop_tx.send(true);
    for s in servers {
        let _ = s.await;
    }
    serve::log_line(format!("{} demo_proxy stopped", serve::timestamp()));
    Ok(())
}

/// The banner's cluster-cache line (never the password).
fn cluster_summary(config: &Config) -> String {
    use mcp_oauth2::config::ClusterCacheStrategy;
    if config.cluster_cache_strategy == ClusterCacheStrategy::Off {
        return "off".to_owned();
    }
    let r = &config.cluster_cache_redis;
    format!(
        "redis at {}:{} (database {}, prefix {}{})",
        r.host,
        r.port,
        r.database,
        r.prefix,
        if r.ssl { ", TLS" } else { "" }
    )
}

/// The banner's operations line.
fn ops_summary(ops: &Ops) -> String {
    let mut parts = Vec::new();
    if let Some(p) = &ops.metrics_path {
        parts.push(format!("GET {p}"));
    }
    if ops.admin_evict {
        parts.push(format!("POST {}", proxy::EVICT_PATH));
    }
    if parts.is_empty() {
        return "none".to_owned();
    }
    format!("{} ({})", parts.join(", "), if ops.allow_remote { "any client" } else { "loopback clients only" })
}

/// The banner of the embedded demo: each command is one line, ready to paste into a shell.
fn banner(
    resource: &str,
    issuer: &str,
    upstream: &str,
    proxy_addr: &SocketAddr,
    metadata_path: &str,
    format: TokenFormat,
) -> String {
    let (id, secret) = (auth_server::DEMO_CLIENT_ID, auth_server::DEMO_CLIENT_SECRET);
    let mcp_headers = "-H 'Content-Type: application/json' -H 'Accept: application/json, text/event-stream'";
    let (mode, token_kind, keys_step) = match format {
        TokenFormat::Opaque => (
            format!("introspection (RFC 7662) of opaque tokens at {issuer}/introspect"),
            "an opaque token",
            String::new(),
        ),
        TokenFormat::Jwt => (
            format!(
                "local JWT (RFC 9068 at+jwt, {}): keys via {issuer}/.well-known/oauth-authorization-server, no introspection",
                auth_server::SIGNING_ALG
            ),
            "a signed JWT (RFC 9068)",
            format!(
                "\n# 2b. The AS metadata names its key set (jwks_uri); the proxy fetches it once and verifies JWTs itself\n\
                 curl -s {issuer}/jwks\n"
            ),
        ),
    };
    format!(
        "\
mcp-oauth2 demo proxy
  proxy listening on http://{proxy_addr}   protects {resource}
  auth server        {issuer}   client {id} / {secret}
  echo MCP server    {upstream}   (upstream, no auth of its own)
  token validation   {mode}

# 1. No token: 401, and the challenge points to the Protected Resource Metadata
curl -si -X POST {resource} {mcp_headers} -d '{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/list\"}}'

# 2. The metadata document names the authorization server
curl -s http://{proxy_addr}{metadata_path}
{keys_step}
# 3. Get a token for this resource (client_credentials, RFC 8707 resource): {token_kind}
TOKEN=$(curl -s -u {id}:{secret} -d grant_type=client_credentials -d resource={resource} -d 'scope=mcp:read mcp:write' {issuer}/token | sed -E 's/.*\"access_token\":\"([^\"]+)\".*/\\1/')

# 4. Call the echo tool through the proxy: 200
curl -si -X POST {resource} -H \"Authorization: Bearer $TOKEN\" {mcp_headers} -d '{{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"tools/call\",\"params\":{{\"name\":\"echo\",\"arguments\":{{\"text\":\"hello through the proxy\"}}}}}}'

# 5. What the MCP server received: X-Client-Id and X-Scope set by the proxy, no Authorization
curl -s -X POST {resource} -H \"Authorization: Bearer $TOKEN\" -H 'Content-Type: application/json' -H 'Accept: application/json' -d '{{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"tools/call\",\"params\":{{\"name\":\"whoami\",\"arguments\":{{}}}}}}'

# 6. A server-sent event stream through the proxy (Ctrl-C to stop; it also ends when the token expires)
curl -sN {resource} -H \"Authorization: Bearer $TOKEN\" -H 'Accept: text/event-stream'

Requests are logged on stderr, one line each. Ctrl-C stops everything.
"
    )
}

/// Ctrl-C (SIGINT) or SIGTERM. The handlers are installed when this is created, before
/// the banner is printed, so a signal sent right after the banner is never missed.
struct Signals {
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Self, Failure> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let err = |e: std::io::Error| Failure::Runtime(format!("cannot install signal handlers: {e}"));
            Ok(Signals {
                int: signal(SignalKind::interrupt()).map_err(err)?,
                term: signal(SignalKind::terminate()).map_err(err)?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Signals {})
        }
    }

    async fn wait(mut self) {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.int.recv() => {}
                _ = self.term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
