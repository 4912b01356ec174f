//! The sans-I/O machine behind [`crate::Validator`]: the steps a request goes through
//! (`Step::Need` → the host performs HTTP → `Pending::resume`; `Step::Wait` → the host
//! waits → `Ticket::resume`; `Step::Done`), over the compiled [`Policy`], a validation
//! method and the token exchange. Single flight lives here: the first request to miss a
//! token's cache entry (or its exchanged token's) leads the call, concurrent ones follow
//! it with a [`Ticket`]. With the cluster cache, a leading step asks Redis first
//! ([`Pending::try_cluster`]).

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
use crate::jwt::LocalJwt;
use crate::method::{HttpResult, JwtStep, MethodState, Progress, TokenValidation};
use crate::metrics::{CacheKind, Eviction, Metrics};
use crate::policy::{Admission, Ctx, Outcome, Policy};
use crate::request::{HttpRequest, Purpose, Request, TransportError, TransportErrorKind};
use crate::token::{hex, AccessToken, Secret};
use crate::{Config, Error};

pub(crate) struct Shared {
    pub(crate) policy: Policy,
    method: Box<dyn TokenValidation>,
    pub(crate) cache: Option<TtlCache<Outcome>>,
    /// One validation per token in flight.
    flights: Flights<Settled>,
    /// One fetch per shared document (metadata, key set) in flight, for different tokens.
    fetches: Flights<HttpResult>,
    exchange: Option<Exchange>,
    pub(crate) metrics: Metrics,
    /// The cluster cache on Redis, with `cluster_cache_strategy: redis`.
    #[cfg(feature = "redis")]
    pub(crate) cluster: Option<Arc<ClusterCache>>,
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
fn job(ctx: Ctx<'_>, token: &str, key: Key, actor: Option<Secret>) -> Job {
    Job { ctx: ctx.into_owned(), token: Secret::new(token), key, actor }
}
impl Shared {
    /// The validator's state for a configuration (validated here).
    pub(crate) fn new(config: Config) -> Result<Shared, Error> {
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
        Ok(shared)
    }

    /// Number of token validations in flight now.
    pub(crate) fn validations_in_flight(&self) -> usize {
        self.flights.in_flight()
    }

    /// The first step of a request: a decision, the call it leads, or a ticket.
    pub(crate) fn start(self: &Arc<Shared>, req: &Request<'_>, now: UnixMs) -> Step {
        let shared = self;
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

    /// Removes a token's entry and its exchanged token's (fixed actor) here; `publish`:
    /// and on every node through the cluster cache.
    pub(crate) fn evict(&self, key: &Key, publish: bool) -> bool {
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
    pub(crate) fn entry_ttl(&self, key: &Key, now: UnixMs) -> Option<Duration> {
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
    pub(crate) fn observe(&self, step: Step) -> Step {
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
    /// [`Validator::authorize`](crate::Validator::authorize) does this itself. Async hosts run it off their event loop
    /// (e.g. `spawn_blocking`); hosts that run their own Redis client (the nginx module,
    /// through `resty.redis`) use [`Pending::cache_key`], [`Pending::resume_cached`] and
    /// [`Validator::cache_ttl`](crate::Validator::cache_ttl) per docs/cluster-cache.md instead.
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
    /// authorization-server responses under it, for [`Validator::cache_ttl`](crate::Validator::cache_ttl):
    /// - introspection: the token (one response per token);
    /// - token exchange: the client token and the actor token;
    /// - discovery and key sets: the URL, so every token shares one document;
    /// - a key-set refetch after an unknown `kid`: the URL and the current minute, so a
    ///   replayed stale key set is never mistaken for the refetch.
    pub fn cache_key(&self) -> String {
        hex(&self.step.step_key)
    }

    /// True when the response is about this token alone (introspection, token exchange):
    /// a shared cache keeps it for [`Validator::cache_ttl`](crate::Validator::cache_ttl). Other responses (metadata, key
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
