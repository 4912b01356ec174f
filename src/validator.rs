//! The validator: one compiled configuration with its caches, and its public face —
//! `begin` (the sans-I/O steps of [`crate::flow`]), the blocking `authorize` loop over
//! them, revocation, metrics and the cluster cache's state.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::cache::{Key, TtlCache};
use crate::clock::UnixMs;
#[cfg(feature = "redis")]
use crate::cluster;
use crate::decision::Decision;
use crate::flow::{Shared, Step};
use crate::metrics::{CacheKind, MetricsSnapshot};
use crate::policy::Policy;
use crate::request::Request;
use crate::token::{hex, AccessToken};
use crate::transport::Transport;
use crate::{Config, Error};

/// Validates requests for one configuration. Cheap to clone (`Arc` inside), `Send + Sync`;
/// holds the caches, so two configurations never share entries.
#[derive(Clone)]
pub struct Validator {
    shared: Arc<Shared>,
}

impl Validator {
    /// Validates the configuration and builds the validator.
    ///
    /// # Errors
    /// A configuration error naming the field.
    pub fn new(config: Config) -> Result<Self, Error> {
        let shared = Arc::new(Shared::new(config)?);
        #[cfg(feature = "redis")]
        if shared.cluster.is_some() {
            watch_cluster(&shared);
        }
        Ok(Validator { shared })
    }

    /// Parses a JSON configuration (the Kong `config` object) and builds the validator.
    ///
    /// # Errors
    /// As [`Config::from_json`] and [`Validator::new`].
    pub fn from_json(json: &str) -> Result<Self, Error> {
        Validator::new(Config::from_json(json)?)
    }

    /// The configuration in effect.
    pub fn config(&self) -> &Config {
        self.shared.policy.config()
    }

    /// The compiled policy: what decisions read, for hosts to read too.
    pub fn policy(&self) -> &Policy {
        &self.shared.policy
    }

    /// The Protected Resource Metadata document (JSON).
    pub fn metadata_document(&self) -> &[u8] {
        self.shared.policy.metadata_document()
    }

    /// Warnings about the configuration for the host to log once (see [`Policy::warnings`]).
    pub fn warnings(&self) -> &[String] {
        self.shared.policy.warnings()
    }

    /// Starts deciding one request at `now` (the host's clock). Never blocks and never
    /// performs I/O.
    pub fn begin(&self, req: &Request<'_>, now: SystemTime) -> Step {
        self.shared.observe(self.shared.start(req, UnixMs::from_system(now)))
    }

    /// Decides one request, performing the authorization-server calls with `transport`
    /// and waiting for concurrent requests on this thread (the system clock).
    ///
    /// Concurrent misses for one token share one call (single flight).
    pub fn authorize<T: Transport + ?Sized>(&self, req: &Request<'_>, transport: &T) -> Decision {
        self.authorize_at(req, transport, SystemTime::now)
    }

    /// [`Validator::authorize`] with the host's clock, read at every step. With
    /// `cluster_cache_strategy: redis`, answers about tokens go through the cluster cache
    /// ([`Pending::try_cluster`](crate::Pending::try_cluster)).
    pub fn authorize_at<T, C>(&self, req: &Request<'_>, transport: &T, clock: C) -> Decision
    where
        T: Transport + ?Sized,
        C: Fn() -> SystemTime,
    {
        let mut step = self.begin(req, clock());
        loop {
            step = match step {
                Step::Done(decision) => return decision,
                Step::Need(http, pending) => match pending.try_cluster(clock()) {
                    Ok(step) => step,
                    Err(pending) => {
                        let result = transport.send(&http);
                        pending.resume(result, clock())
                    }
                },
                Step::Wait(ticket) => {
                    ticket.wait(ticket.max_wait());
                    ticket.resume(clock())
                }
            };
        }
    }

    /// The counters of this validator now (see [`MetricsSnapshot`]).
    pub fn metrics(&self) -> MetricsSnapshot {
        self.shared.metrics.snapshot()
    }

    /// Counts a look-up in the host's own cache shared between processes (the nginx shared
    /// dict): `hit` when it answered from there instead of calling the authorization server.
    pub fn record_shared_cache(&self, hit: bool) {
        self.shared.metrics.lookup(CacheKind::Shared, hit);
    }

    /// Removes a token's cached result (after revocation), and its exchanged tokens' when
    /// the actor is fixed. True if its validation result was cached here.
    ///
    /// With `cluster_cache_strategy: redis` this also deletes the answers from Redis and
    /// tells every node (they drop their copies within a second): a blocking Redis call,
    /// bounded by `cluster_cache_redis`'s timeouts; while Redis is unreachable the
    /// revocation waits and goes out when it is back.
    pub fn evict(&self, token: &str) -> bool {
        let key = self.shared.policy.cache_key(AccessToken(token.as_bytes()));
        self.shared.evict(&key, true)
    }

    /// Removes the cached result stored under a token's cache key (64 hex digits, from
    /// [`Validator::token_cache_key`]): how a revocation reaches other processes (nginx
    /// workers) without the token itself ever being shared. True if it was cached. Also
    /// its exchanged tokens' when the actor is fixed, and, with the cluster cache, on
    /// every node (as [`Validator::evict`]).
    pub fn evict_key(&self, cache_key: &str) -> bool {
        let Some(key) = unhex(cache_key) else { return false };
        self.shared.evict(&key, true)
    }

    /// The cache key of a token (64 hex digits, as [`Pending::cache_key`](crate::Pending::cache_key) of its
    /// introspection): where a host's shared cache keeps its answer (to evict it there too).
    pub fn token_cache_key(&self, token: &str) -> String {
        hex(&self.shared.policy.cache_key(AccessToken(token.as_bytes())))
    }

    /// How long a cache shared between processes may keep the answer stored under
    /// `cache_key` (a [`Pending::cache_key`](crate::Pending::cache_key) of an introspection or exchange step), at
    /// `now`: what is left of the validator's own entry for it, which never outlives the
    /// first answer's expiry. `None`: not to be kept (not cached, expired, a failure).
    pub fn cache_ttl(&self, cache_key: &str, now: SystemTime) -> Option<Duration> {
        self.shared.entry_ttl(&unhex(cache_key)?, UnixMs::from_system(now))
    }

    /// Counts a look-up in a cluster cache the host runs itself (nginx through
    /// `resty.redis`): `hit` when another node's answer was replayed.
    pub fn record_cluster_cache(&self, hit: bool) {
        self.shared.metrics.lookup(CacheKind::Cluster, hit);
    }

    /// Counts a failed exchange with a cluster cache the host runs itself.
    pub fn record_cluster_cache_error(&self) {
        self.shared.metrics.cluster_error();
    }

    /// True when the cluster cache is in use: configured, and Redis answered the last
    /// exchange with it (requests skip Redis while it fails; a watcher thread reconnects
    /// within a second of it coming back). For health checks.
    pub fn cluster_cache_up(&self) -> bool {
        #[cfg(feature = "redis")]
        if let Some(cluster) = &self.shared.cluster {
            return !cluster.is_down();
        }
        false
    }

    /// A warning about the cluster cache (Redis unreachable, refusing the password, …)
    /// for the host to log: at most once a minute while Redis fails, `None` otherwise
    /// (and always without the cluster cache). The request path never fails because of
    /// Redis: it goes on with this node's cache and the authorization server.
    pub fn cluster_warning(&self, now: SystemTime) -> Option<String> {
        #[cfg(feature = "redis")]
        if let Some(cluster) = &self.shared.cluster {
            return cluster.warning(UnixMs::from_system(now));
        }
        let _ = now;
        None
    }

    /// Number of cached validation results (live or not yet purged).
    pub fn cached_entries(&self) -> usize {
        self.shared.cache.as_ref().map_or(0, TtlCache::len)
    }

    /// Number of token validations in flight now.
    pub fn validations_in_flight(&self) -> usize {
        self.shared.validations_in_flight()
    }
}

impl fmt::Debug for Validator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Validator")
            .field("resource", &self.config().resource)
            .field("cached_entries", &self.cached_entries())
            .finish_non_exhaustive()
    }
}

fn unhex(s: &str) -> Option<Key> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut key = [0u8; 32];
    for (i, pair) in b.chunks_exact(2).enumerate() {
        let digit = |c: u8| (c as char).to_digit(16);
        key[i] = u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()?;
    }
    Some(key)
}

/// Reads the cluster's evictions every 250 ms (and reconnects when Redis was down) for as
/// long as the validator lives.
#[cfg(feature = "redis")]
fn watch_cluster(shared: &Arc<Shared>) {
    let Some(cluster) = shared.cluster.clone() else { return };
    let weak = Arc::downgrade(shared);
    let spawned = std::thread::Builder::new().name("mcp-oauth2-cluster".to_owned()).spawn(move || loop {
        let Some(shared) = weak.upgrade() else { return };
        for key in cluster.watch(&shared.metrics) {
            if let Some(key) = unhex(&key) {
                shared.evict(&key, false);
            }
        }
        drop(shared);
        std::thread::sleep(cluster::WATCH_EVERY);
    });
    if spawned.is_err() {
        // Redis stays marked down: this node works alone, and says so.
        if let Some(cluster) = &shared.cluster {
            cluster.fail("cannot start its watcher thread");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::method::HttpResult;
    use crate::HttpResponse;
    use serde_json::json;

    fn validator() -> Validator {
        Validator::from_json(
            &json!({"resource": "https://mcp.example/mcp", "authorization_servers": ["https://as.example"],
                    "introspection_endpoint": "https://as.example/introspect", "client_id": "c", "client_secret": "s"})
            .to_string(),
        )
        .unwrap()
    }

    fn active() -> HttpResult {
        Ok(HttpResponse::new(200, "application/json", r#"{"active":true,"aud":"https://mcp.example/mcp"}"#))
    }

    #[test]
    fn concurrent_requests_follow_the_leader_without_blocking() {
        let v = validator();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let req = Request::new("GET", "/mcp").header("Authorization", "Bearer abc");
        let Step::Need(_, pending) = v.begin(&req, t0) else { panic!("the first request leads") };
        let Step::Wait(ticket) = v.begin(&req, t0) else { panic!("the second follows") };
        let Step::Wait(other) = v.begin(&req, t0) else { panic!("so does the third") };
        assert!(!ticket.is_ready());
        assert_eq!(v.validations_in_flight(), 1);
        let Step::Done(d) = pending.resume(active(), t0) else { panic!("one call decides") };
        assert!(d.is_forward());
        assert!(ticket.is_ready() && other.is_ready());
        let Step::Done(d) = ticket.resume(t0) else { panic!("the follower decides from the leader's answer") };
        assert!(d.is_forward());
        assert_eq!(d.cache_ttl(), Some(Duration::from_secs(3600)));
        assert!(matches!(v.begin(&req, t0), Step::Done(d) if d.is_forward()), "then cached");
        assert_eq!(v.validations_in_flight(), 0);
    }

    #[test]
    fn a_dropped_leader_releases_its_followers_with_a_503() {
        let v = validator();
        let t0 = SystemTime::now();
        let req = Request::new("GET", "/mcp").header("Authorization", "Bearer abc");
        let Step::Need(_, pending) = v.begin(&req, t0) else { panic!() };
        let Step::Wait(ticket) = v.begin(&req, t0) else { panic!() };
        drop(pending);
        assert!(ticket.is_ready());
        let Step::Done(d) = ticket.resume(t0) else { panic!() };
        assert_eq!(d.as_response().unwrap().status(), 503);
        assert!(matches!(v.begin(&req, t0), Step::Need(..)), "nothing was cached: a new leader");
    }

    #[test]
    fn giving_up_on_a_ticket_is_a_503() {
        let v = validator();
        let t0 = SystemTime::now();
        let req = Request::new("GET", "/mcp").header("Authorization", "Bearer abc");
        let Step::Need(_, _pending) = v.begin(&req, t0) else { panic!() };
        let Step::Wait(ticket) = v.begin(&req, t0) else { panic!() };
        assert!(!ticket.wait(Duration::from_millis(5)));
        // Introspection, then (for a signed answer) discovery with 3 tries and two key fetches.
        assert_eq!(ticket.max_wait(), Duration::from_millis(12 * 10_000 + 1_000));
        let Step::Done(d) = ticket.resume(t0) else { panic!() };
        assert_eq!(d.as_response().unwrap().status(), 503);
    }

    #[test]
    fn time_is_the_callers() {
        let v = validator();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let req = Request::new("GET", "/mcp").header("Authorization", "Bearer abc");
        let Step::Need(_, pending) = v.begin(&req, t0) else { panic!() };
        let body = json!({"active": true, "aud": "https://mcp.example/mcp", "exp": 1_000_100}).to_string();
        let Step::Done(d) = pending.resume(Ok(HttpResponse::new(200, "application/json", body)), t0) else { panic!() };
        assert_eq!(d.cache_ttl(), Some(Duration::from_secs(100)));
        let at = |s| t0 + Duration::from_secs(s);
        assert!(matches!(v.begin(&req, at(99)), Step::Done(d) if d.is_forward()));
        assert!(matches!(v.begin(&req, at(100)), Step::Need(..)), "expired with exp: asks again");
    }
}
