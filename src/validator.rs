//! The sans-I/O machine over the compiled [`Policy`], a validation method and the token
//! exchange: `begin` → (`Need` → the host performs HTTP → `resume` | `Wait` → the host
//! waits → `resume`)* → `Done`. Single flight lives here: the first request to miss a
//! token's cache entry (or its exchanged token's) leads the call, concurrent ones follow it
//! with a [`Ticket`]. `authorize` is a thin blocking loop over the same steps.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use crate::cache::{Key, Lookup, TtlCache};
use crate::clock::UnixMs;
#[cfg(feature = "redis")]
use crate::cluster::{self, ClusterCache};
use crate::decision::{Decision, Exchanged, Forward};
use crate::exchange::{Actor, Exchanger};
use crate::flight::{Flight, Flights, Joined, Lead};
use crate::introspect::Introspector;
use crate::jwt::{JwtStep, LocalJwt};
use crate::method::{HttpResult, MethodState, Progress, TokenValidation};
use crate::metrics::{CacheKind, Eviction, Metrics, MetricsSnapshot};
use crate::policy::{Admission, Ctx, Outcome, Policy};
use crate::request::{HttpRequest, Purpose, Request, TransportError, TransportErrorKind};
use crate::token::{hex, AccessToken, Secret};
use crate::transport::Transport;
use crate::{Config, Error};

/// Validates requests for one configuration. Cheap to clone (`Arc` inside), `Send + Sync`;
/// holds the caches, so two configurations never share entries.
#[derive(Clone)]
pub struct Validator {
    shared: Arc<Shared>,
}

struct Shared {
    policy: Policy,
    method: Box<dyn TokenValidation>,
    cache: Option<TtlCache<Outcome>>,
    /// One validation per token in flight.
    flights: Flights<Settled>,
    /// One fetch per shared document (metadata, key set) in flight, for different tokens.
    fetches: Flights<HttpResult>,
    exchange: Option<Exchange>,
    metrics: Metrics,
    /// The cluster cache on Redis, with `cluster_cache_strategy: redis`.
    #[cfg(feature = "redis")]
    cluster: Option<Arc<ClusterCache>>,
}

/// What a token's validation settled on, as its followers receive it.
#[derive(Clone, Debug)]
struct Settled {
    outcome: Outcome,
    expires: Option<UnixMs>,
}

/// Token exchange (RFC 8693): the exchanger, the exchanged tokens and their flights.
struct Exchange {
    exchanger: Exchanger,
    cache: Option<TtlCache<Arc<Exchanged>>>,
    flights: Flights<ExchangeSettled>,
}

/// What an exchange settled on, as its followers receive it.
#[derive(Clone, Debug)]
struct ExchangeSettled {
    result: Result<Arc<Exchanged>, Cow<'static, str>>,
}

/// What the validator needs next.
#[derive(Debug)]
pub enum Step {
    /// The decision is made.
    Done(Decision),
    /// This request leads: perform the HTTP request, then call [`Pending::resume`].
    Need(HttpRequest, Pending),
    /// Another request is already asking the authorization server for what this one
    /// needs: wait on the ticket (bounded by [`Ticket::max_wait`]), then call
    /// [`Ticket::resume`].
    Wait(Ticket),
}

/// What one request carries through the machine, owned (no borrow of the request).
struct Job {
    ctx: Ctx<'static>,
    token: Secret,
    /// The token's cache key.
    key: Key,
    /// The actor token read from the request, with `actor_token_source: header`.
    actor: Option<Secret>,
}

/// One token's validation in progress, led by this request.
struct Flow {
    job: Job,
    key: Key,
    /// Releases the followers with a 503 if the host drops the validation.
    lead: Lead<Settled>,
}

/// One token exchange in progress, led by this request.
struct ExchangeFlow {
    job: Job,
    forward: Forward,
    key: Key,
    lead: Lead<ExchangeSettled>,
}

/// A validation waiting for the HTTP response of [`Step::Need`]. Owns everything it needs
/// (no borrow of the request), so it can be kept across the host's I/O. Dropping it
/// abandons the validation: requests waiting on it get a 503.
pub struct Pending {
    step: Box<PendingStep>,
}

struct PendingStep {
    shared: Arc<Shared>,
    stage: Stage,
    /// Set when the response is a document other validations wait for.
    fetch: Option<Lead<HttpResult>>,
    step_key: Key,
    /// What the call is for and when it was handed to the host, for the metrics.
    purpose: Purpose,
    issued: UnixMs,
    /// This node holds the cluster cache's lock for the answer: it shares it on resume.
    cluster_lead: bool,
}

/// What a pending step is part of.
enum Stage {
    Validate { flow: Box<Flow>, state: MethodState },
    Exchange(Box<ExchangeFlow>),
}

/// A request waiting for another request's authorization-server call. Wait with
/// [`Ticket::wait`] (blocking), [`Ticket::ready`] (async), [`Ticket::on_ready`] (a
/// callback) or by polling [`Ticket::is_ready`]; then [`Ticket::resume`].
pub struct Ticket {
    shared: Arc<Shared>,
    waiting: Waiting,
}

enum Waiting {
    /// Another request validates this token: its outcome is this request's.
    Token { job: Box<Job>, key: Key, flight: Arc<Flight<Settled>> },
    /// Another validation fetches a document this one needs; this one continues with it.
    Fetch { flow: Box<Flow>, state: MethodState, flight: Arc<Flight<HttpResult>> },
    /// Another request exchanges this token: its exchanged token is this request's.
    Exchange { job: Box<Job>, forward: Box<Forward>, key: Key, flight: Arc<Flight<ExchangeSettled>> },
}

impl Validator {
    /// Validates the configuration and builds the validator.
    ///
    /// # Errors
    /// A configuration error naming the field.
    pub fn new(config: Config) -> Result<Self, Error> {
        config.validate()?;
        let method: Box<dyn TokenValidation> = match &config.introspection_endpoint {
            // Introspection always wins when configured, as in Kong.
            Some(url) => Box::new(Introspector::new(&config, url)?),
            None => Box::new(LocalJwt::new(&config)),
        };
        let cache = config.cache_introspection.then(|| TtlCache::new(config.cache_max_entries));
        let exchange = match config.token_exchange.as_ref().filter(|t| t.enabled) {
            Some(te) => {
                let exchanger = Exchanger::new(&config, te)?;
                let cache = exchanger.cache.then(|| TtlCache::new(config.cache_max_entries));
                Some(Exchange { exchanger, cache, flights: Flights::new() })
            }
            None => None,
        };
        let shared = Shared {
            policy: Policy::new(config),
            method,
            cache,
            flights: Flights::new(),
            fetches: Flights::new(),
            exchange,
            metrics: Metrics::new(),
            #[cfg(feature = "redis")]
            cluster: None,
        };
        #[cfg(feature = "redis")]
        let shared = {
            let mut shared = shared;
            if shared.policy.config().cluster_cache_strategy == crate::config::ClusterCacheStrategy::Redis {
                shared.cluster = Some(Arc::new(ClusterCache::new(shared.policy.config())));
            }
            shared
        };
        let shared = Arc::new(shared);
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
        self.shared.observe(self.start(req, UnixMs::from_system(now)))
    }

    fn start(&self, req: &Request<'_>, now: UnixMs) -> Step {
        let shared = &self.shared;
        let (ctx, token) = match shared.policy.admit(req) {
            Admission::Decided(d) => return Step::Done(d),
            Admission::Token(ctx, token) => (ctx, token),
        };
        let actor = match shared.exchange.as_ref().map(|e| e.exchanger.actor()) {
            Some(Actor::Header(name)) => match req.header_value(&name.to_ascii_lowercase()).map(std::str::from_utf8) {
                Some(Ok(v)) if AccessToken(v.as_bytes()).well_formed().is_some() => Some(Secret::new(v)),
                _ => {
                    return Step::Done(
                        shared.policy.invalid_request(&ctx, "The actor token header is missing or malformed"),
                    )
                }
            },
            Some(Actor::Config(secret)) => Some(secret.clone()),
            Some(Actor::None) | None => None,
        };
        let key = shared.policy.cache_key(token);
        // A token found by its digest was checked when it was stored: a hit skips the
        // character scan (and builds nothing for a later step unless an exchange follows).
        if let Some(settled) = shared.lookup(&key, now) {
            let decision = shared.policy.decide(&ctx, &settled.outcome, settled.expires, now);
            let Decision::Forward(forward) = &decision else { return Step::Done(decision) };
            if shared.exchange.is_none() {
                return Step::Done(decision);
            }
            // An exchanged token already cached costs a second look-up and nothing else.
            let exchange_key = shared.exchange_key(&key, actor.as_ref().map(Secret::expose));
            if let Some(d) = shared.cached_exchange(&ctx, forward, &exchange_key, now) {
                return Step::Done(d);
            }
            return match token.well_formed() {
                Some(t) => Shared::exchange(shared, job(ctx, t, key, actor), forward.clone(), exchange_key, now),
                None => Step::Done(shared.policy.malformed_token(&ctx)),
            };
        }
        let Some(token) = token.well_formed() else {
            return Step::Done(shared.policy.malformed_token(&ctx));
        };
        let abandoned = Settled {
            outcome: Outcome::Unavailable(Cow::Borrowed("validation: the request validating this token was abandoned")),
            expires: None,
        };
        let lead = match shared.flights.join(key, abandoned) {
            Joined::Follow(flight) => {
                let waiting = Waiting::Token { job: Box::new(job(ctx, token, key, actor)), key, flight };
                return Step::Wait(Ticket { shared: Arc::clone(shared), waiting });
            }
            Joined::Lead(lead) => lead,
        };
        // A validation of this token may have finished between the miss and the join.
        if let Some(settled) = shared.cached(&key, now) {
            let decision = shared.policy.decide(&ctx, &settled.outcome, settled.expires, now);
            lead.complete(settled);
            return Shared::after_validation(shared, job(ctx, token, key, actor), decision, now);
        }
        let flow = Box::new(Flow { job: job(ctx, token, key, actor), key, lead });
        let progress = shared.method.start(token, now);
        Shared::advance(shared, flow, progress, now, now)
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
    /// ([`Pending::try_cluster`]).
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

    /// The cache key of a token (64 hex digits, as [`Pending::cache_key`] of its
    /// introspection): where a host's shared cache keeps its answer (to evict it there too).
    pub fn token_cache_key(&self, token: &str) -> String {
        hex(&self.shared.policy.cache_key(AccessToken(token.as_bytes())))
    }

    /// How long a cache shared between processes may keep the answer stored under
    /// `cache_key` (a [`Pending::cache_key`] of an introspection or exchange step), at
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
        self.shared.flights.in_flight()
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

fn job(ctx: Ctx<'_>, token: &str, key: Key, actor: Option<Secret>) -> Job {
    Job { ctx: ctx.into_owned(), token: Secret::new(token), key, actor }
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

impl Shared {
    /// Removes a token's entry and its exchanged token's (fixed actor) here; `publish`:
    /// and on every node through the cluster cache.
    fn evict(&self, key: &Key, publish: bool) -> bool {
        let mut keys = vec![*key];
        if let Some(ex) = &self.exchange {
            let actor = match ex.exchanger.actor() {
                Actor::Config(s) => Some(s.expose()),
                _ => None,
            };
            let exchange_key = self.exchange_key(key, actor);
            if let Some(cache) = &ex.cache {
                cache.remove(&exchange_key);
            }
            keys.push(exchange_key);
        }
        let evicted = self.cache.as_ref().is_some_and(|c| c.remove(key));
        self.metrics.evicted(Eviction::Revoked, u64::from(evicted));
        #[cfg(feature = "redis")]
        if let (true, Some(cluster)) = (publish, &self.cluster) {
            cluster.evict(&self.metrics, keys.iter().map(|k| hex(k)).collect());
        }
        let _ = (publish, keys);
        evicted
    }

    /// What is left of this node's entry under `key` (a token's or an exchanged token's).
    fn entry_ttl(&self, key: &Key, now: UnixMs) -> Option<Duration> {
        let expires = match self.cache.as_ref().and_then(|c| c.get(key, now)) {
            Some((_, expires)) => expires,
            None => self.exchange.as_ref()?.cache.as_ref()?.get(key, now)?.1,
        };
        Some(expires.after(now)).filter(|d| !d.is_zero())
    }

    fn cached(&self, key: &Key, now: UnixMs) -> Option<Settled> {
        let (outcome, expires) = self.cache.as_ref()?.get(key, now)?;
        Some(Settled { outcome, expires: Some(expires) })
    }

    /// [`Shared::cached`], counted: a request's first look at the token cache.
    fn lookup(&self, key: &Key, now: UnixMs) -> Option<Settled> {
        let cache = self.cache.as_ref()?;
        match cache.lookup(key, now) {
            Lookup::Hit(outcome, expires) => {
                self.metrics.lookup(CacheKind::Token, true);
                Some(Settled { outcome, expires: Some(expires) })
            }
            miss => {
                self.metrics.evicted(Eviction::Expired, u64::from(matches!(miss, Lookup::Expired)));
                self.metrics.lookup(CacheKind::Token, false);
                None
            }
        }
    }

    /// Counts what a step hands the host: every decision by reason, every wait by kind.
    fn observe(&self, step: Step) -> Step {
        match &step {
            Step::Done(d) => self.metrics.decision(d.reason()),
            Step::Wait(t) => self.metrics.wait(match t.waiting {
                Waiting::Token { .. } => 0,
                Waiting::Fetch { .. } => 1,
                Waiting::Exchange { .. } => 2,
            }),
            Step::Need(..) => {}
        }
        step
    }

    /// Continues a flow after a method step: finish it, or hand the host the next request
    /// (or a ticket, when another validation is already fetching that document).
    fn advance(shared: &Arc<Shared>, flow: Box<Flow>, progress: Progress, fetched_at: UnixMs, now: UnixMs) -> Step {
        match progress {
            Progress::Claims(claims, introspection) => {
                Shared::finish(shared, flow, shared.policy.grant(&claims, introspection, now), fetched_at, now)
            }
            Progress::Done(outcome) => Shared::finish(shared, flow, outcome, fetched_at, now),
            Progress::Need(http, state) => {
                let step_key = shared.step_key(&flow, &state, &http.url, now);
                let mut fetch = None;
                if !matches!(state, MethodState::Introspect) {
                    let abandoned =
                        Err(TransportError::new(TransportErrorKind::Other, "a concurrent fetch was abandoned"));
                    match shared.fetches.join(step_key, abandoned) {
                        Joined::Follow(flight) => {
                            let waiting = Waiting::Fetch { flow, state, flight };
                            return Step::Wait(Ticket { shared: Arc::clone(shared), waiting });
                        }
                        Joined::Lead(lead) => fetch = Some(lead),
                    }
                }
                let (purpose, issued) = (http.purpose, now);
                let stage = Stage::Validate { flow, state };
                let step = PendingStep {
                    shared: Arc::clone(shared),
                    stage,
                    fetch,
                    step_key,
                    purpose,
                    issued,
                    cluster_lead: false,
                };
                Step::Need(http, Pending { step: Box::new(step) })
            }
        }
    }

    /// Stores the outcome per the cache rule, releases the followers, decides.
    fn finish(shared: &Arc<Shared>, flow: Box<Flow>, outcome: Outcome, fetched_at: UnixMs, now: UnixMs) -> Step {
        let expires = shared.policy.expiry(&outcome, fetched_at, now);
        if let (Some(cache), Some(until)) = (&shared.cache, expires) {
            let pushed_out = cache.insert(flow.key, outcome.clone(), until, now);
            shared.metrics.evicted(Eviction::Capacity, u64::from(pushed_out));
        }
        let decision = shared.policy.decide(&flow.job.ctx, &outcome, expires, now);
        let Flow { job, lead, .. } = *flow;
        lead.complete(Settled { outcome, expires });
        Shared::after_validation(shared, job, decision, now)
    }

    /// After the token is decided: an allowed request with `token_exchange` goes on to the
    /// exchange (cached, led, or followed); everything else is done.
    fn after_validation(shared: &Arc<Shared>, job: Job, decision: Decision, now: UnixMs) -> Step {
        let (Decision::Forward(forward), Some(_)) = (&decision, &shared.exchange) else {
            return Step::Done(decision);
        };
        let key = shared.exchange_key(&job.key, job.actor.as_ref().map(Secret::expose));
        if let Some(d) = shared.cached_exchange(&job.ctx, forward, &key, now) {
            return Step::Done(d);
        }
        Shared::exchange(shared, job, forward.clone(), key, now)
    }

    /// The decision with the cached exchanged token, if there is one (counted).
    fn cached_exchange(&self, ctx: &Ctx<'_>, forward: &Forward, key: &Key, now: UnixMs) -> Option<Decision> {
        let cache = self.exchange.as_ref()?.cache.as_ref()?;
        let cached = cache.get(key, now);
        self.metrics.lookup(CacheKind::Exchange, cached.is_some());
        cached.map(|(exchanged, _)| self.policy.with_exchange(ctx, forward.clone(), exchanged))
    }

    /// The exchange of a token whose exchanged token is not cached: led, or followed.
    fn exchange(shared: &Arc<Shared>, job: Job, forward: Forward, key: Key, now: UnixMs) -> Step {
        let Some(ex) = &shared.exchange else { return Step::Done(Decision::Forward(forward)) };
        let abandoned = ExchangeSettled {
            result: Err(Cow::Borrowed("token exchange: the request exchanging this token was abandoned")),
        };
        let lead = match ex.flights.join(key, abandoned) {
            Joined::Follow(flight) => {
                let waiting = Waiting::Exchange { job: Box::new(job), forward: Box::new(forward), key, flight };
                return Step::Wait(Ticket { shared: Arc::clone(shared), waiting });
            }
            Joined::Lead(lead) => lead,
        };
        if let Some((exchanged, _)) = ex.cache.as_ref().and_then(|c| c.get(&key, now)) {
            lead.complete(ExchangeSettled { result: Ok(Arc::clone(&exchanged)) });
            return Step::Done(shared.policy.with_exchange(&job.ctx, forward, exchanged));
        }
        let http = match ex.exchanger.request(job.token.expose(), job.actor.as_ref().map(Secret::expose), now) {
            Ok(http) => http,
            Err(detail) => {
                lead.complete(ExchangeSettled { result: Err(Cow::Borrowed(detail)) });
                return Step::Done(shared.policy.unavailable(&job.ctx, Cow::Borrowed(detail)));
            }
        };
        let flow = Box::new(ExchangeFlow { job, forward, key, lead });
        let stage = Stage::Exchange(flow);
        let (purpose, issued) = (http.purpose, now);
        let step = PendingStep {
            shared: Arc::clone(shared),
            stage,
            fetch: None,
            step_key: key,
            purpose,
            issued,
            cluster_lead: false,
        };
        Step::Need(http, Pending { step: Box::new(step) })
    }

    /// Reads the token endpoint's answer, keeps the exchanged token (until the earliest of
    /// its `expires_in` — else `cache.ttl` —, the client token's `exp` and `cache_ttl_max`
    /// after the answer), releases the followers, decides.
    fn finish_exchange(&self, flow: Box<ExchangeFlow>, result: HttpResult, fetched_at: UnixMs, now: UnixMs) -> Step {
        let Some(ex) = &self.exchange else {
            return Step::Done(self.policy.unavailable(&flow.job.ctx, Cow::Borrowed("token exchange: not configured")));
        };
        let ExchangeFlow { job, forward, key, lead } = *flow;
        match ex.exchanger.read(result, |claims| self.policy.project(claims, None, None)) {
            Ok(exchanged) => {
                let exchanged = Arc::new(exchanged);
                if let Some(cache) = &ex.cache {
                    let fetched_at = fetched_at.min(now);
                    let ttl = exchanged.expires_in.unwrap_or(ex.exchanger.default_ttl);
                    let max = Duration::from_secs(self.policy.config().cache_ttl_max);
                    let mut until = fetched_at.plus(ttl.min(max));
                    if let Some(exp) = forward.valid_until_unix() {
                        until = until.min(UnixMs::at_secs(exp));
                    }
                    cache.insert(key, Arc::clone(&exchanged), until, now);
                }
                lead.complete(ExchangeSettled { result: Ok(Arc::clone(&exchanged)) });
                Step::Done(self.policy.with_exchange(&job.ctx, forward, exchanged))
            }
            Err(detail) => {
                lead.complete(ExchangeSettled { result: Err(detail.clone()) });
                Step::Done(self.policy.unavailable(&job.ctx, detail))
            }
        }
    }

    /// The key of an exchanged token: the client token (through its own cache key, a digest
    /// of it: the token is not hashed twice) and the actor token; the exchange parameters
    /// are the configuration's, already in its key space.
    fn exchange_key(&self, token_key: &Key, actor: Option<&str>) -> Key {
        self.policy.derived_key(&[b"exchange", token_key, actor.unwrap_or("").as_bytes()])
    }

    /// The key of the response a step waits for (see [`Pending::cache_key`]).
    fn step_key(&self, flow: &Flow, state: &MethodState, url: &str, now: UnixMs) -> Key {
        let url = url.as_bytes();
        let step = match state {
            MethodState::Introspect => return flow.key,
            // The keys that verify a signed introspection answer are the same documents.
            MethodState::Jwt(step) => step,
            MethodState::IntrospectKeys(waiting) => &waiting.step,
        };
        match step {
            JwtStep::Discover { .. } => self.policy.derived_key(&[b"discovery", url]),
            JwtStep::FetchKeys { .. } => self.policy.derived_key(&[b"jwks", url]),
            JwtStep::RefetchKeys { .. } => {
                let minute = now.secs().div_euclid(60).to_le_bytes();
                self.policy.derived_key(&[b"jwks-refetch", url, &minute])
            }
        }
    }

    /// How long a follower may sensibly wait for a token's validation: every call it
    /// may chain (local JWT: discovery across every server with retries, then two key
    /// fetches; introspection: one more call before those, when the answer is signed; an
    /// exchange after either), each bounded by `timeout`, plus a second.
    fn max_wait(&self) -> Duration {
        let config = self.policy.config();
        let servers = config.authorization_servers.len() as u64;
        let key_calls = 3 * servers * u64::from(config.metadata_discovery_retry) + 2;
        let calls = if config.introspection_endpoint.is_some() { 1 + key_calls } else { key_calls }
            + u64::from(self.exchange.is_some());
        Duration::from_millis(config.timeout.saturating_mul(calls)) + Duration::from_secs(1)
    }
}

impl Pending {
    /// Continues with the result of the HTTP request from [`Step::Need`], at `now`.
    pub fn resume(self, result: Result<crate::HttpResponse, TransportError>, now: SystemTime) -> Step {
        let now = UnixMs::from_system(now);
        let step = &self.step;
        let outcome = result.as_ref().map(|r| r.status).map_err(|e| e.kind);
        step.shared.metrics.request(step.purpose, outcome, now.after(step.issued));
        self.resume_at(result, now, now)
    }

    /// Continues with a response the host kept from an earlier, identical call (a cache
    /// shared between processes, under [`Pending::cache_key`]), first received at
    /// `fetched_at`: nothing derived from it outlives that answer's expiry.
    pub fn resume_cached(
        self,
        result: Result<crate::HttpResponse, TransportError>,
        fetched_at: SystemTime,
        now: SystemTime,
    ) -> Step {
        self.resume_at(result, UnixMs::from_system(fetched_at), UnixMs::from_system(now))
    }

    fn resume_at(self, result: HttpResult, fetched_at: UnixMs, now: UnixMs) -> Step {
        let PendingStep { shared, stage, fetch, step_key, cluster_lead, .. } = *self.step;
        if let Some(lead) = fetch {
            lead.complete(result.clone());
        }
        #[cfg(feature = "redis")]
        let shared_answer = cluster_lead.then(|| result.as_ref().ok().cloned()).flatten();
        let step = match stage {
            Stage::Validate { flow, state } => {
                let progress = shared.method.resume(flow.job.token.expose(), state, result, now);
                Shared::advance(&shared, flow, progress, fetched_at, now)
            }
            Stage::Exchange(flow) => shared.finish_exchange(flow, result, fetched_at, now),
        };
        #[cfg(feature = "redis")]
        if let (true, Some(cluster)) = (cluster_lead, &shared.cluster) {
            // Shared for what is left of this node's own entry: never longer, and not at
            // all when it was not kept (a failure, an answer not to be cached).
            let ttl = shared_answer.as_ref().and_then(|_| shared.entry_ttl(&step_key, now));
            match (shared_answer, ttl) {
                (Some(answer), Some(ttl)) => {
                    cluster.store(&shared.metrics, &hex(&step_key), fetched_at, &answer, Some(ttl))
                }
                _ => cluster.release(&shared.metrics, &hex(&step_key)),
            }
        }
        let _ = (step_key, cluster_lead);
        shared.observe(step)
    }

    /// Asks the cluster cache (`cluster_cache_strategy: redis`) for this step's answer
    /// before the host calls the authorization server: blocking Redis I/O, bounded by
    /// `cluster_cache_redis`'s timeouts and, while another node fetches the same answer,
    /// by `timeout`. Only answers about one token (introspection, token exchange) are
    /// shared; without the cluster cache, for other steps, or while Redis is down, this
    /// returns at once.
    ///
    /// `Ok(step)`: another node's answer was replayed (first fetched when that node fetched
    /// it: nothing derived from it lives longer than there). `Err(pending)`: perform the
    /// request and [`Pending::resume`]; when this node leads the cluster-wide call, resume
    /// shares the answer with the other nodes.
    ///
    /// [`Validator::authorize`] does this itself. Async hosts run it off their event loop
    /// (e.g. `spawn_blocking`); hosts that run their own Redis client (the nginx module,
    /// through `resty.redis`) use [`Pending::cache_key`], [`Pending::resume_cached`] and
    /// [`Validator::cache_ttl`] per docs/cluster-cache.md instead.
    #[allow(clippy::result_large_err)]
    pub fn try_cluster(self, now: SystemTime) -> Result<Step, Pending> {
        #[cfg(feature = "redis")]
        {
            let mut this = self;
            let Some(cluster) = this.step.shared.cluster.clone() else { return Err(this) };
            if this.step.cluster_lead || !this.is_token_response() || cluster.is_down() {
                return Err(this);
            }
            let key = hex(&this.step.step_key);
            let metrics = &this.step.shared.metrics;
            let started = std::time::Instant::now();
            let found = match cluster.lookup(metrics, &key) {
                cluster::Lookup::Hit(at, answer) => Some((at, answer)),
                cluster::Lookup::Lead => {
                    this.step.cluster_lead = true;
                    None
                }
                // Past the wait, this node calls the server itself, without the lock.
                cluster::Lookup::Wait => cluster.wait_for(metrics, &key),
                cluster::Lookup::Down => None,
            };
            metrics.lookup(CacheKind::Cluster, found.is_some());
            match found {
                Some((at, answer)) => {
                    let now = UnixMs::from_system(now + started.elapsed());
                    Ok(this.resume_at(Ok(answer), at.min(now), now))
                }
                None => Err(this),
            }
        }
        #[cfg(not(feature = "redis"))]
        {
            let _ = now;
            Err(self)
        }
    }

    /// A key for the response this step waits for, as 64 hex digits (a SHA-256 digest
    /// over the configuration's identity and what identifies the response; never the
    /// token). Hosts with a cache shared across processes (nginx workers) store and replay
    /// authorization-server responses under it, for [`Validator::cache_ttl`]:
    /// - introspection: the token (one response per token);
    /// - token exchange: the client token and the actor token;
    /// - discovery and key sets: the URL, so every token shares one document;
    /// - a key-set refetch after an unknown `kid`: the URL and the current minute, so a
    ///   replayed stale key set is never mistaken for the refetch.
    pub fn cache_key(&self) -> String {
        hex(&self.step.step_key)
    }

    /// True when the response is about this token alone (introspection, token exchange):
    /// a shared cache keeps it for [`Validator::cache_ttl`]. Other responses (metadata, key
    /// sets) are documents the validator keeps for their own configured lifetimes.
    pub fn is_token_response(&self) -> bool {
        matches!(self.step.stage, Stage::Validate { state: MethodState::Introspect, .. } | Stage::Exchange(_))
    }
}

impl fmt::Debug for Pending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Pending");
        match &self.step.stage {
            Stage::Validate { flow, state } => d.field("ctx", &flow.job.ctx).field("waiting_for", state),
            Stage::Exchange(flow) => d.field("ctx", &flow.job.ctx).field("waiting_for", &"token exchange"),
        };
        d.finish_non_exhaustive()
    }
}

impl Ticket {
    /// True once the awaited answer is in: [`Ticket::resume`] then continues with it.
    pub fn is_ready(&self) -> bool {
        match &self.waiting {
            Waiting::Token { flight, .. } => flight.is_done(),
            Waiting::Fetch { flight, .. } => flight.is_done(),
            Waiting::Exchange { flight, .. } => flight.is_done(),
        }
    }

    /// Blocks this thread until the answer is in or `timeout` passes; true if it is in.
    pub fn wait(&self, timeout: Duration) -> bool {
        match &self.waiting {
            Waiting::Token { flight, .. } => flight.wait(timeout),
            Waiting::Fetch { flight, .. } => flight.wait(timeout),
            Waiting::Exchange { flight, .. } => flight.wait(timeout),
        }
    }

    /// A future that completes when the answer is in (for async hosts; bound it with
    /// your runtime's timer and [`Ticket::max_wait`]).
    pub fn ready(&self) -> Ready<'_> {
        Ready { ticket: self }
    }

    /// Calls `f` once when the answer is in: at once on this thread if it already is,
    /// else on the thread that completes the awaited call (for event-loop hosts: `f`
    /// should only wake the loop, which then calls [`Ticket::resume`]).
    pub fn on_ready(&self, f: impl FnOnce() + Send + 'static) {
        match &self.waiting {
            Waiting::Token { flight, .. } => flight.on_done(Box::new(f)),
            Waiting::Fetch { flight, .. } => flight.on_done(Box::new(f)),
            Waiting::Exchange { flight, .. } => flight.on_done(Box::new(f)),
        }
    }

    /// How long waiting makes sense: past it, [`Ticket::resume`] anyway (a 503).
    pub fn max_wait(&self) -> Duration {
        match &self.waiting {
            Waiting::Token { .. } => self.shared.max_wait(),
            Waiting::Fetch { .. } | Waiting::Exchange { .. } => self.shared.policy.timeout() + Duration::from_secs(1),
        }
    }

    /// The key of the answer waited for (64 hex digits, as [`Pending::cache_key`] of the
    /// step it waits for): requests with equal keys wait for the same answer.
    pub fn cache_key(&self) -> String {
        match &self.waiting {
            Waiting::Token { key, .. } | Waiting::Exchange { key, .. } => hex(key),
            Waiting::Fetch { flow, .. } => hex(&flow.key),
        }
    }

    /// Continues at `now` with the awaited answer. When it is not in yet (the host gave
    /// up waiting), the decision is a 503: an authorization-server delay is never a 401.
    pub fn resume(self, now: SystemTime) -> Step {
        let now = UnixMs::from_system(now);
        let Ticket { shared, waiting } = self;
        let step = match waiting {
            Waiting::Token { job, flight, .. } => {
                let settled = flight.result().unwrap_or(Settled {
                    outcome: Outcome::Unavailable(Cow::Borrowed("validation: gave up waiting for a concurrent call")),
                    expires: None,
                });
                let decision = shared.policy.decide(&job.ctx, &settled.outcome, settled.expires, now);
                Shared::after_validation(&shared, *job, decision, now)
            }
            Waiting::Fetch { flow, state, flight } => {
                let result = flight.result().unwrap_or_else(|| {
                    Err(TransportError::new(TransportErrorKind::Timeout, "gave up waiting for a concurrent fetch"))
                });
                let progress = shared.method.resume(flow.job.token.expose(), state, result, now);
                Shared::advance(&shared, flow, progress, now, now)
            }
            Waiting::Exchange { job, forward, flight, .. } => {
                let result = flight
                    .result()
                    .map_or(Err(Cow::Borrowed("token exchange: gave up waiting for a concurrent exchange")), |s| {
                        s.result
                    });
                Step::Done(match result {
                    Ok(exchanged) => shared.policy.with_exchange(&job.ctx, *forward, exchanged),
                    Err(detail) => shared.policy.unavailable(&job.ctx, detail),
                })
            }
        };
        shared.observe(step)
    }
}

impl fmt::Debug for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let waits_for = match &self.waiting {
            Waiting::Token { .. } => "validation",
            Waiting::Fetch { .. } => "fetch",
            Waiting::Exchange { .. } => "token exchange",
        };
        f.debug_struct("Ticket").field("waits_for", &waits_for).field("ready", &self.is_ready()).finish()
    }
}

/// The future of [`Ticket::ready`].
#[derive(Debug)]
pub struct Ready<'t> {
    ticket: &'t Ticket,
}

impl Future for Ready<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match &self.ticket.waiting {
            Waiting::Token { flight, .. } => flight.poll_done(cx),
            Waiting::Fetch { flight, .. } => flight.poll_done(cx),
            Waiting::Exchange { flight, .. } => flight.poll_done(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
