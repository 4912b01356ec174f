//! The cluster cache on Redis (`cluster_cache_strategy: redis`): gateway nodes share the
//! authorization server's answers about tokens (introspection, token exchange), so the
//! server sees one call per token across the cluster, and a revocation reaches every node.
//!
//! What is stored, and how nodes cooperate (docs/cluster-cache.md is the contract other
//! hosts — nginx through `resty.redis` — implement too):
//! - `<prefix>:answer:<key>`: the answer to a step whose [`crate::Pending::cache_key`] is
//!   `<key>` (a SHA-256 over the configuration and the token: never the token), as
//!   `<fetched_at ms>\n<status>\n<content-type>\n<body>`, for exactly
//!   [`crate::Validator::cache_ttl`] (`PX`); replays keep the first fetch time, so no node
//!   ever extends an entry. Failures are never stored.
//! - `<prefix>:lock:<key>`: `SET NX PX <timeout>` by the first node to miss; the others wait
//!   for the answer (bounded by `timeout`), then call the server themselves.
//! - `<prefix>:evictions`: a sorted set of evicted keys scored by `<prefix>:evictions:seq`
//!   (`INCR`); every node reads what is new at most every 250 ms and drops its own copies.
//!
//! Redis failing or slow never fails a request: the node falls back to its own cache and
//! the authorization server, counts it, and offers one warning per minute to the host.

use std::fmt;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use redis::{Client, ConnectionAddr, ConnectionInfo, ConnectionLike, RedisConnectionInfo};

use crate::clock::UnixMs;
use crate::config::ClusterCacheRedis;
use crate::metrics::Metrics;
use crate::request::HttpResponse;
use crate::Config;

/// How often a node reads the evictions log (revocations reach it within this) and, while
/// Redis is down, tries to reconnect.
pub(crate) const WATCH_EVERY: Duration = Duration::from_millis(250);
/// How many evictions the log keeps (a node that missed more re-reads nothing older).
const EVICTIONS_KEPT: isize = 10_000;
/// How often a node polls for an answer another node is fetching.
const WAIT_POLL: Duration = Duration::from_millis(10);
/// A look-up, atomically (no node takes the lock after another stored the answer): the
/// answer, else 1 when this node took the lock, else 0.
static LOOKUP: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        "local v = redis.call('GET', KEYS[1]) \
         if v then return v end \
         if redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[1]) then return 1 end \
         return 0",
    )
});
/// An eviction, atomically (a reader never sees a sequence number before its entry):
/// delete the answer, number the eviction, log it, trim the log.
static EVICT: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        "redis.call('DEL', KEYS[3]) \
         local n = redis.call('INCR', KEYS[2]) \
         redis.call('ZADD', KEYS[1], n, ARGV[1]) \
         redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -tonumber(ARGV[2]) - 1) \
         return n",
    )
});
/// One warning per this, while Redis fails.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// A node's connection to the cluster cache.
pub(crate) struct ClusterCache {
    pool: Pool,
    prefix: String,
    /// Host and port, for warnings.
    address: (String, u16),
    /// How long a node waits for another node's call (the configuration's `timeout`).
    wait: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Set by a failed exchange: requests skip Redis until the watcher reconnects.
    down: bool,
    /// Whether the evictions log was read once, and the last sequence number seen.
    started: bool,
    seen: i64,
    /// Evictions not yet published (Redis was down): published on reconnection.
    unpublished: Vec<String>,
    /// Sequence numbers of this node's own evictions, skipped when read back.
    own: std::collections::HashSet<i64>,
    /// The last failure not yet reported, and when one was last reported.
    failure: Option<String>,
    warned: Option<UnixMs>,
}

/// What the cluster cache says about a step's answer.
pub(crate) enum Lookup {
    /// Another node stored it: replay it.
    Hit(UnixMs, HttpResponse),
    /// Nobody is fetching it: this node does, holding the cluster-wide lock.
    Lead,
    /// Another node is fetching it: wait for its answer.
    Wait,
    /// Redis is unreachable or failing: this node fetches it alone.
    Down,
}

impl fmt::Debug for ClusterCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterCache").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

/// Idle connections kept for reuse (at most `keepalive_pool_size`), as resty.redis's
/// keepalive pool: a request takes one or opens one, and gives it back unless it failed.
/// (A pool that retries connecting until its own timeout, as r2d2's does, would turn a
/// refused connection into a stall per request and hide why Redis refused.)
struct Pool {
    client: Client,
    idle: Mutex<Vec<redis::Connection>>,
    keep: usize,
    connect: Duration,
    read: Duration,
    write: Duration,
}

impl Pool {
    fn run<T>(&self, f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>) -> redis::RedisResult<T> {
        let idle = self.idle.lock().pop();
        let mut conn = match idle {
            Some(conn) => conn,
            None => {
                let conn = self.client.get_connection_with_timeout(self.connect)?;
                conn.set_read_timeout(Some(self.read))?;
                conn.set_write_timeout(Some(self.write))?;
                conn
            }
        };
        let result = f(&mut conn);
        if result.is_ok() && conn.is_open() {
            let mut idle = self.idle.lock();
            if idle.len() < self.keep {
                idle.push(conn);
            }
        }
        result
    }

    fn clear(&self) {
        self.idle.lock().clear();
    }
}

impl ClusterCache {
    /// The cluster cache of a configuration with `cluster_cache_strategy: redis`. Connects
    /// lazily: a node starts (and serves, alone) while Redis is down.
    pub(crate) fn new(config: &Config) -> Self {
        let redis = &config.cluster_cache_redis;
        let pool = Pool {
            client: Client::open(connection_info(redis)).expect("a connection info is always accepted"),
            idle: Mutex::new(Vec::new()),
            keep: redis.keepalive_pool_size as usize,
            connect: Duration::from_millis(redis.connect_timeout),
            read: Duration::from_millis(redis.read_timeout),
            write: Duration::from_millis(redis.send_timeout),
        };
        ClusterCache {
            pool,
            prefix: redis.prefix.clone(),
            address: (redis.host.clone(), redis.port),
            wait: Duration::from_millis(config.timeout),
            // Down until the watcher's first round connects: requests never wait for it.
            state: Mutex::new(State { down: true, ..State::default() }),
        }
    }

    fn key(&self, kind: &str, key: &str) -> String {
        format!("{}:{kind}:{key}", self.prefix)
    }

    /// True while Redis is known to fail: requests do not try it (the watcher does).
    pub(crate) fn is_down(&self) -> bool {
        self.state.lock().down
    }

    /// Remembers a failure for the next warning.
    pub(crate) fn fail(&self, why: &str) {
        let mut state = self.state.lock();
        state.down = true;
        state.failure = Some(format!("cluster cache (Redis at {}:{}): {why}", self.address.0, self.address.1));
    }

    /// Runs `f` on a pooled connection; a failure marks Redis down, is counted and is
    /// remembered for the next warning.
    fn with<T>(
        &self,
        metrics: &Metrics,
        what: &str,
        f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Option<T> {
        match self.pool.run(f) {
            Ok(v) => Some(v),
            Err(e) => {
                let why = describe(&e);
                self.pool.clear();
                metrics.cluster_error();
                self.fail(&format!("{what} failed: {why}"));
                None
            }
        }
    }

    /// The stored answer to a step, or this node's part in fetching it.
    pub(crate) fn lookup(&self, metrics: &Metrics, key: &str) -> Lookup {
        if self.is_down() {
            return Lookup::Down;
        }
        let answer = self.key("answer", key);
        let lock = self.key("lock", key);
        let lock_ms = u64::try_from(self.wait.as_millis()).unwrap_or(u64::MAX).max(1);
        // A plain GET first: an answer already there (the common case) costs one round trip
        // and no script; on a miss the script reads again and takes the lock atomically.
        let found =
            self.with(metrics, "look-up", |c| match redis::cmd("GET").arg(&answer).query::<Option<Vec<u8>>>(c)? {
                Some(bytes) => Ok(redis::Value::BulkString(bytes)),
                None => LOOKUP.key(&answer).key(&lock).arg(lock_ms).invoke::<redis::Value>(c),
            });
        match found {
            None => Lookup::Down,
            Some(redis::Value::BulkString(bytes)) => match decode(&bytes) {
                Some((at, response)) => Lookup::Hit(at, response),
                // Unreadable (another build wrote it?): fetch it again, alone.
                None => Lookup::Down,
            },
            Some(redis::Value::Int(1)) => Lookup::Lead,
            Some(_) => Lookup::Wait,
        }
    }

    /// Waits (blocking, bounded by `timeout`) for the answer another node is fetching.
    /// `None`: that node finished without an answer to share (a failure), died, or is
    /// slower than `timeout`: this node calls the server itself.
    pub(crate) fn wait_for(&self, metrics: &Metrics, key: &str) -> Option<(UnixMs, HttpResponse)> {
        let answer = self.key("answer", key);
        let lock = self.key("lock", key);
        let deadline = Instant::now() + self.wait;
        while Instant::now() < deadline {
            std::thread::sleep(WAIT_POLL);
            // The lock first: the leader stores the answer before it releases the lock, so
            // an answer stored in between is still read.
            let (locked, bytes) = self.with(metrics, "wait", |c| {
                let locked: bool = redis::cmd("EXISTS").arg(&lock).query(c)?;
                let bytes: Option<Vec<u8>> = redis::cmd("GET").arg(&answer).query(c)?;
                Ok((locked, bytes))
            })?;
            if let Some(found) = bytes.as_deref().and_then(decode) {
                return Some(found);
            }
            if !locked {
                return None;
            }
        }
        None
    }

    /// Stores an answer for `ttl` (what is left of the validator's own entry: never
    /// longer) and releases the lock; `ttl` `None` only releases it (failures and answers
    /// not to be cached are never shared).
    pub(crate) fn store(
        &self,
        metrics: &Metrics,
        key: &str,
        fetched_at: UnixMs,
        response: &HttpResponse,
        ttl: Option<Duration>,
    ) {
        if self.is_down() {
            return;
        }
        let answer = self.key("answer", key);
        let lock = self.key("lock", key);
        self.with(metrics, "store", |c| {
            let mut pipe = redis::pipe();
            pipe.atomic();
            if let Some(ttl) = ttl.filter(|t| !t.is_zero()) {
                let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
                pipe.cmd("SET").arg(&answer).arg(encode(fetched_at, response)).arg("PX").arg(ms).ignore();
            }
            pipe.cmd("DEL").arg(&lock).ignore();
            pipe.query::<()>(c)
        });
    }

    /// Releases the lock without an answer.
    pub(crate) fn release(&self, metrics: &Metrics, key: &str) {
        if self.is_down() {
            return;
        }
        let lock = self.key("lock", key);
        self.with(metrics, "unlock", |c| redis::cmd("DEL").arg(&lock).query::<()>(c));
    }

    /// Removes the stored answers under `keys` and tells every node to drop its copies.
    /// While Redis is down the keys wait (up to the log's size) and go out on reconnection.
    pub(crate) fn evict(&self, metrics: &Metrics, keys: Vec<String>) {
        let keys = {
            let mut state = self.state.lock();
            let mut all = std::mem::take(&mut state.unpublished);
            all.extend(keys);
            if state.down {
                let excess = all.len().saturating_sub(EVICTIONS_KEPT as usize);
                all.drain(..excess);
                state.unpublished = all;
                return;
            }
            all
        };
        if self.publish(metrics, &keys).is_none() {
            let mut state = self.state.lock();
            let mut all = keys;
            all.append(&mut state.unpublished);
            let excess = all.len().saturating_sub(EVICTIONS_KEPT as usize);
            all.drain(..excess);
            state.unpublished = all;
        }
    }

    fn publish(&self, metrics: &Metrics, keys: &[String]) -> Option<()> {
        let log = self.key("evictions", "log");
        let seq = self.key("evictions", "seq");
        let numbers = self.with(metrics, "evict", |c| {
            let mut numbers = Vec::with_capacity(keys.len());
            for key in keys {
                numbers.push(
                    EVICT
                        .key(&log)
                        .key(&seq)
                        .key(self.key("answer", key))
                        .arg(key)
                        .arg(EVICTIONS_KEPT)
                        .invoke::<i64>(c)?,
                );
            }
            Ok(numbers)
        })?;
        let mut state = self.state.lock();
        if state.own.len() < EVICTIONS_KEPT as usize {
            state.own.extend(numbers);
        }
        Some(())
    }

    /// The watcher's round (every 250 ms, on its own thread): reconnects when Redis was
    /// down, publishes what waited, and returns the keys evicted by any node since the
    /// last round.
    pub(crate) fn watch(&self, metrics: &Metrics) -> Vec<String> {
        let (started, seen) = {
            let state = self.state.lock();
            (state.started, state.seen)
        };
        let log = self.key("evictions", "log");
        let seq = self.key("evictions", "seq");
        let found = self.with(metrics, "eviction log", |c| {
            let current: i64 = redis::cmd("GET").arg(&seq).query::<Option<i64>>(c)?.unwrap_or(0);
            if !started {
                // Older evictions concern answers this node never had.
                return Ok((Vec::new(), current));
            }
            // Fewer than seen: Redis restarted empty; read its log from the start.
            let from = if current < seen { 0 } else { seen };
            if current == from {
                return Ok((Vec::new(), current));
            }
            let keys: Vec<(String, i64)> = redis::cmd("ZRANGEBYSCORE")
                .arg(&log)
                .arg(format!("({from}"))
                .arg(current)
                .arg("WITHSCORES")
                .query(c)?;
            Ok((keys, current))
        });
        let Some((entries, current)) = found else { return Vec::new() };
        let (keys, unpublished) = {
            let mut state = self.state.lock();
            state.down = false;
            state.started = true;
            if current < seen {
                state.own.clear();
            }
            state.seen = current;
            // This node's own evictions were applied here when it made them.
            let keys: Vec<String> = entries.into_iter().filter(|(_, n)| !state.own.remove(n)).map(|(k, _)| k).collect();
            (keys, std::mem::take(&mut state.unpublished))
        };
        if !unpublished.is_empty() {
            self.evict(metrics, unpublished);
        }
        keys
    }

    /// A warning about Redis failing, at most once a minute while it fails (for the host
    /// to log); `None` otherwise.
    pub(crate) fn warning(&self, now: UnixMs) -> Option<String> {
        let mut state = self.state.lock();
        if state.warned.is_some_and(|at| now < at.plus(WARN_EVERY)) {
            return None;
        }
        let failure = state.failure.take()?;
        state.warned = Some(now);
        Some(format!("{failure}; serving from this node's own cache and the authorization server"))
    }
}

/// The Redis client's address and credentials.
fn connection_info(redis: &ClusterCacheRedis) -> ConnectionInfo {
    let addr = if redis.ssl {
        ConnectionAddr::TcpTls {
            host: redis.host.clone(),
            port: redis.port,
            insecure: !redis.ssl_verify,
            tls_params: None,
        }
    } else {
        ConnectionAddr::Tcp(redis.host.clone(), redis.port)
    };
    let mut settings = RedisConnectionInfo::default().set_db(redis.database);
    if let Some(u) = &redis.username {
        settings = settings.set_username(u);
    }
    if let Some(p) = &redis.password {
        settings = settings.set_password(p.expose());
    }
    let info: ConnectionInfo = redis::IntoConnectionInfo::into_connection_info(addr).expect("an address converts");
    info.set_redis_settings(settings)
}

/// What a Redis error says, without anything the server sent back (it could echo a key).
fn describe(e: &redis::RedisError) -> String {
    if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connection_refusal() || e.is_connection_dropped() || e.is_io_error() {
        "connection failed".to_owned()
    } else if matches!(e.kind(), redis::ErrorKind::AuthenticationFailed) || e.to_string().contains("WRONGPASS") {
        "authentication failed (check cluster_cache_redis.username and password)".to_owned()
    } else if e.to_string().contains("NOAUTH") {
        "Redis requires a password (set cluster_cache_redis.password)".to_owned()
    } else {
        format!("error {:?}", e.kind())
    }
}

/// `<fetched_at ms>\n<status>\n<content-type>\n<body>`.
fn encode(fetched_at: UnixMs, response: &HttpResponse) -> Vec<u8> {
    let ct = response.header("content-type").unwrap_or("");
    let mut out = format!("{}\n{}\n{}\n", fetched_at.0, response.status, ct).into_bytes();
    out.extend_from_slice(&response.body);
    out
}

fn decode(bytes: &[u8]) -> Option<(UnixMs, HttpResponse)> {
    let mut parts = bytes.splitn(4, |b| *b == b'\n');
    let at: i64 = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let status: u16 = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let ct = std::str::from_utf8(parts.next()?).ok()?;
    let body = parts.next()?.to_vec();
    Some((UnixMs(at), HttpResponse::new(status, ct, body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_round_trip_and_garbage_is_refused() {
        let r = HttpResponse::new(200, "application/json; charset=utf-8", "{\"active\":true}\nmore");
        let (at, back) = decode(&encode(UnixMs(1_700_000_000_123), &r)).unwrap();
        assert_eq!(at, UnixMs(1_700_000_000_123));
        assert_eq!((back.status, back.body.as_slice()), (200, r.body.as_slice()));
        assert_eq!(back.header("content-type"), Some("application/json; charset=utf-8"));
        for bad in [&b""[..], b"x\n200\na\nb", b"1\nstatus\na\nb", b"1\n200"] {
            assert!(decode(bad).is_none(), "{bad:?}");
        }
    }
}
