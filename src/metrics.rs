//! One set of counters per validator, read by every surface: decisions by outcome and
//! reason, cache look-ups and evictions (in-process, and the host's shared cache as the
//! host reports it), authorization-server calls by kind and result with a latency
//! histogram, and single-flight waits. Counting is a relaxed atomic add (a few
//! nanoseconds on the cache-hit path); a [`MetricsSnapshot`] copies them out, merges
//! snapshots of several processes (nginx workers) and renders the Prometheus text
//! exposition format (version 0.0.4).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus::proto::{Bucket, Counter, Histogram, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{Encoder, TextEncoder};

use crate::decision::Reason;
use crate::request::{Purpose, TransportErrorKind};

/// What an outbound call was for (metric label `kind`).
const KINDS: [&str; 4] = ["introspection", "discovery", "jwks", "token_exchange"];
/// How an outbound call ended (metric label `result`).
const RESULTS: [&str; 7] = ["ok", "http_error", "connect", "timeout", "tls", "body_too_large", "other"];
/// Upper bounds of the latency histogram, in seconds.
const BUCKETS: [f64; 11] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// What a single-flight follower waited for (metric label `waits_for`).
pub(crate) const WAITS: [&str; 3] = ["validation", "fetch", "token_exchange"];

/// Cache look-ups: (cache label, hit?) → slot.
const CACHES: [&str; 4] = ["token", "exchange", "shared", "cluster"];
/// Why an entry left the token cache.
const EVICTIONS: [&str; 3] = ["revoked", "capacity", "expired"];

const REASONS: usize = Reason::ALL.len();
const HIST: usize = BUCKETS.len() + 2; // buckets, then count and sum (milliseconds)

// Layout of the counters (and of a snapshot): fixed, so snapshots of processes of the same
// build merge by adding slot by slot.
const DECISIONS_AT: usize = 0;
const LOOKUPS_AT: usize = DECISIONS_AT + REASONS;
const EVICTIONS_AT: usize = LOOKUPS_AT + CACHES.len() * 2;
const REQUESTS_AT: usize = EVICTIONS_AT + EVICTIONS.len();
const LATENCY_AT: usize = REQUESTS_AT + KINDS.len() * RESULTS.len();
const WAITS_AT: usize = LATENCY_AT + KINDS.len() * HIST;
const CLUSTER_ERRORS_AT: usize = WAITS_AT + WAITS.len();
const SLOTS: usize = CLUSTER_ERRORS_AT + 1;

/// Which cache a look-up went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CacheKind {
    Token = 0,
    Exchange = 1,
    Shared = 2,
    Cluster = 3,
}

/// Why an entry left the token cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Eviction {
    Revoked = 0,
    Capacity = 1,
    Expired = 2,
}

/// The live counters of one validator.
pub(crate) struct Metrics {
    slots: Box<[AtomicU64]>,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        Metrics { slots: (0..SLOTS).map(|_| AtomicU64::new(0)).collect() }
    }

    #[inline]
    fn add(&self, slot: usize, n: u64) {
        #[cfg(not(feature = "_bench-metrics-off"))]
        self.slots[slot].fetch_add(n, Ordering::Relaxed);
        #[cfg(feature = "_bench-metrics-off")]
        let _ = (slot, n);
    }

    pub(crate) fn decision(&self, reason: Reason) {
        self.add(DECISIONS_AT + reason as usize, 1);
    }

    pub(crate) fn lookup(&self, cache: CacheKind, hit: bool) {
        self.add(LOOKUPS_AT + cache as usize * 2 + usize::from(!hit), 1);
    }

    pub(crate) fn evicted(&self, why: Eviction, n: u64) {
        if n > 0 {
            self.add(EVICTIONS_AT + why as usize, n);
        }
    }

    /// One finished outbound call: its kind, how it ended, how long it took (on the
    /// caller's clock).
    pub(crate) fn request(&self, purpose: Purpose, result: Result<u16, TransportErrorKind>, took: Duration) {
        let kind = match purpose {
            Purpose::Introspection => 0,
            Purpose::Discovery => 1,
            Purpose::Jwks => 2,
            _ => 3,
        };
        let outcome = match result {
            Ok(200) => 0,
            Ok(_) => 1,
            Err(TransportErrorKind::Connect) => 2,
            Err(TransportErrorKind::Timeout) => 3,
            Err(TransportErrorKind::Tls) => 4,
            Err(TransportErrorKind::BodyTooLarge) => 5,
            Err(_) => 6,
        };
        self.add(REQUESTS_AT + kind * RESULTS.len() + outcome, 1);
        let secs = took.as_secs_f64();
        let hist = LATENCY_AT + kind * HIST;
        // Cumulative buckets are formed at rendering; here each call counts once.
        if let Some(b) = BUCKETS.iter().position(|le| secs <= *le) {
            self.add(hist + b, 1);
        }
        self.add(hist + BUCKETS.len(), 1);
        self.add(hist + BUCKETS.len() + 1, u64::try_from(took.as_millis()).unwrap_or(u64::MAX));
    }

    pub(crate) fn wait(&self, waits_for: usize) {
        self.add(WAITS_AT + waits_for, 1);
    }

    /// One failed exchange with the cluster cache (Redis down, slow or refusing).
    pub(crate) fn cluster_error(&self) {
        self.add(CLUSTER_ERRORS_AT, 1);
    }

    pub(crate) fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot { slots: self.slots.iter().map(|s| s.load(Ordering::Relaxed)).collect() }
    }
}

/// The counters of a validator at one moment. Snapshots of several processes running the
/// same build (nginx workers, gateway nodes) merge by [`MetricsSnapshot::merge`]; hosts
/// move them between processes with [`MetricsSnapshot::to_bytes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsSnapshot {
    slots: Vec<u64>,
}

/// Marks the layout of [`MetricsSnapshot::to_bytes`]; a build with another layout refuses
/// the bytes rather than misreading them.
const LAYOUT: u64 = 0x6d63_706f_0001_0000 ^ SLOTS as u64;

impl MetricsSnapshot {
    /// Adds another snapshot's counters to this one's.
    pub fn merge(&mut self, other: &MetricsSnapshot) {
        for (a, b) in self.slots.iter_mut().zip(&other.slots) {
            *a = a.saturating_add(*b);
        }
    }

    /// A compact binary form (little-endian counters after a layout mark), for a store
    /// shared by processes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 * (self.slots.len() + 1));
        out.extend_from_slice(&LAYOUT.to_le_bytes());
        for s in &self.slots {
            out.extend_from_slice(&s.to_le_bytes());
        }
        out
    }

    /// Reads [`MetricsSnapshot::to_bytes`]; `None` for bytes of another build or length.
    pub fn from_bytes(bytes: &[u8]) -> Option<MetricsSnapshot> {
        if bytes.len() != 8 * (SLOTS + 1) {
            return None;
        }
        let mut words = bytes.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")));
        if words.next()? != LAYOUT {
            return None;
        }
        Some(MetricsSnapshot { slots: words.collect() })
    }

    /// The value of one decision counter (for tests and hosts that read single figures).
    pub fn decisions(&self, reason: Reason) -> u64 {
        self.slots[DECISIONS_AT + reason as usize]
    }

    /// The Prometheus text exposition format (version 0.0.4), every name prefixed
    /// `mcp_oauth2_`.
    pub fn prometheus_text(&self) -> String {
        let mut families = Vec::new();

        let decisions = Reason::ALL.iter().map(|r| {
            let labels = [("decision", r.outcome()), ("reason", r.as_str())];
            (counter_metric(&labels, self.slots[DECISIONS_AT + *r as usize]), ())
        });
        families.push(family(
            "mcp_oauth2_decisions_total",
            "Decisions made, by outcome (allow, deny, error) and reason.",
            MetricType::COUNTER,
            decisions.map(|(m, ())| m),
        ));

        let lookups = CACHES.iter().enumerate().flat_map(|(c, cache)| {
            [("hit", 0), ("miss", 1)].map(|(result, o)| {
                counter_metric(&[("cache", cache), ("result", result)], self.slots[LOOKUPS_AT + c * 2 + o])
            })
        });
        families.push(family(
            "mcp_oauth2_cache_lookups_total",
            "Cache look-ups by cache (token, exchange, shared: the host's cache shared between processes, cluster: Redis shared between nodes) and result.",
            MetricType::COUNTER,
            lookups,
        ));

        let evictions = EVICTIONS
            .iter()
            .enumerate()
            .map(|(i, cause)| counter_metric(&[("cache", "token"), ("cause", cause)], self.slots[EVICTIONS_AT + i]));
        families.push(family(
            "mcp_oauth2_cache_evictions_total",
            "Entries that left the token cache, by cause (revoked: evicted by the host; capacity; expired).",
            MetricType::COUNTER,
            evictions,
        ));

        let requests = KINDS.iter().enumerate().flat_map(|(k, kind)| {
            RESULTS.iter().enumerate().map(move |(r, result)| {
                counter_metric(&[("kind", kind), ("result", result)], self.slots[REQUESTS_AT + k * RESULTS.len() + r])
            })
        });
        families.push(family(
            "mcp_oauth2_authorization_server_requests_total",
            "Calls to the authorization server, by kind and result (ok: HTTP 200; http_error: another status).",
            MetricType::COUNTER,
            requests,
        ));

        let latency = KINDS.iter().enumerate().map(|(k, kind)| {
            let at = LATENCY_AT + k * HIST;
            let mut cumulative = 0;
            let buckets = BUCKETS
                .iter()
                .enumerate()
                .map(|(b, le)| {
                    cumulative += self.slots[at + b];
                    let mut bucket = Bucket::default();
                    bucket.set_upper_bound(*le);
                    bucket.set_cumulative_count(cumulative);
                    bucket
                })
                .collect();
            let mut h = Histogram::default();
            h.set_bucket(buckets);
            h.set_sample_count(self.slots[at + BUCKETS.len()]);
            h.set_sample_sum(self.slots[at + BUCKETS.len() + 1] as f64 / 1000.0);
            let mut m = Metric::default();
            m.set_label(labels(&[("kind", kind)]));
            m.set_histogram(h);
            m
        });
        families.push(family(
            "mcp_oauth2_authorization_server_request_duration_seconds",
            "Time from handing the host an authorization-server request to its response, on the host's clock.",
            MetricType::HISTOGRAM,
            latency,
        ));

        let waits =
            WAITS.iter().enumerate().map(|(i, w)| counter_metric(&[("waits_for", w)], self.slots[WAITS_AT + i]));
        families.push(family(
            "mcp_oauth2_single_flight_waits_total",
            "Requests that waited for another request's authorization-server call instead of making their own.",
            MetricType::COUNTER,
            waits,
        ));

        families.push(family(
            "mcp_oauth2_cluster_cache_errors_total",
            "Exchanges with the cluster cache (Redis) that failed; the request was served from this node's cache or the authorization server.",
            MetricType::COUNTER,
            std::iter::once(counter_metric(&[], self.slots[CLUSTER_ERRORS_AT])),
        ));

        let mut out = Vec::new();
        TextEncoder::new().encode(&families, &mut out).expect("well-formed metric families encode");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(n, v)| {
            let mut l = LabelPair::default();
            l.set_name((*n).to_owned());
            l.set_value((*v).to_owned());
            l
        })
        .collect()
}

fn counter_metric(pairs: &[(&str, &str)], value: u64) -> Metric {
    let mut c = Counter::default();
    c.set_value(value as f64);
    let mut m = Metric::default();
    m.set_label(labels(pairs));
    m.set_counter(c);
    m
}

fn family(name: &str, help: &str, kind: MetricType, metrics: impl Iterator<Item = Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_owned());
    f.set_help(help.to_owned());
    f.set_field_type(kind);
    f.set_metric(metrics.collect());
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_merge_round_trip_and_render() {
        let m = Metrics::new();
        m.decision(Reason::Allowed);
        m.decision(Reason::Allowed);
        m.decision(Reason::TokenExpired);
        m.lookup(CacheKind::Token, true);
        m.lookup(CacheKind::Shared, false);
        m.evicted(Eviction::Revoked, 1);
        m.request(Purpose::Introspection, Ok(200), Duration::from_millis(7));
        m.request(Purpose::Introspection, Err(TransportErrorKind::Timeout), Duration::from_secs(11));
        m.wait(0);
        let mut a = m.snapshot();
        let b = MetricsSnapshot::from_bytes(&a.to_bytes()).unwrap();
        assert_eq!(a, b);
        a.merge(&b);
        assert_eq!(a.decisions(Reason::Allowed), 4);
        assert!(MetricsSnapshot::from_bytes(&a.to_bytes()[8..]).is_none());
        let text = a.prometheus_text();
        for line in [
            "# TYPE mcp_oauth2_decisions_total counter",
            "mcp_oauth2_decisions_total{decision=\"allow\",reason=\"allowed\"} 4",
            "mcp_oauth2_decisions_total{decision=\"deny\",reason=\"token_expired\"} 2",
            "mcp_oauth2_cache_lookups_total{cache=\"token\",result=\"hit\"} 2",
            "mcp_oauth2_cache_lookups_total{cache=\"shared\",result=\"miss\"} 2",
            "mcp_oauth2_cache_evictions_total{cache=\"token\",cause=\"revoked\"} 2",
            "mcp_oauth2_authorization_server_requests_total{kind=\"introspection\",result=\"timeout\"} 2",
            "mcp_oauth2_authorization_server_request_duration_seconds_bucket{kind=\"introspection\",le=\"0.01\"} 2",
            "mcp_oauth2_authorization_server_request_duration_seconds_bucket{kind=\"introspection\",le=\"+Inf\"} 4",
            "mcp_oauth2_authorization_server_request_duration_seconds_sum{kind=\"introspection\"} 22.014",
            "mcp_oauth2_single_flight_waits_total{waits_for=\"validation\"} 2",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert!(!text.contains("# EOF"), "0.0.4, not OpenMetrics");
    }
}
