//! Bounded TTL cache of validation outcomes, keyed by SHA-256 digests (never raw tokens),
//! and single flight for concurrent misses in one process (behaviour.md §5).

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lru::LruCache;
use parking_lot::{Condvar, Mutex};

/// A cache key: SHA-256 over the validator's identity and the token.
pub(crate) type Key = [u8; 32];

struct Entry<V> {
    value: V,
    expires: Instant,
}

type Shard<V> = Mutex<LruCache<Key, Entry<V>>>;

/// An LRU cache with a per-entry TTL, split into shards to keep lock hold times and
/// contention low for threaded hosts.
pub(crate) struct TtlCache<V> {
    shards: Box<[Shard<V>]>,
}

impl<V: Clone> TtlCache<V> {
    /// A cache holding at most about `capacity` entries.
    pub(crate) fn new(capacity: usize) -> Self {
        // Shard only large caches, so that small capacities stay exact.
        let shards = if capacity >= 4096 { 16 } else { 1 };
        let per_shard = NonZeroUsize::new(capacity.div_ceil(shards).max(1)).expect("max(1) is non-zero");
        TtlCache { shards: (0..shards).map(|_| Mutex::new(LruCache::new(per_shard))).collect() }
    }

    fn shard(&self, key: &Key) -> &Shard<V> {
        // The key is a uniformly distributed digest: any byte picks a shard fairly.
        &self.shards[usize::from(key[31]) % self.shards.len()]
    }

    /// The live value for `key`; an expired entry is removed and reported as a miss.
    pub(crate) fn get(&self, key: &Key, now: Instant) -> Option<V> {
        let mut shard = self.shard(key).lock();
        match shard.get(key) {
            Some(e) if e.expires > now => Some(e.value.clone()),
            Some(_) => {
                shard.pop(key);
                None
            }
            None => None,
        }
    }

    /// Stores `value` for `ttl`; a zero TTL stores nothing.
    pub(crate) fn insert(&self, key: Key, value: V, ttl: Duration, now: Instant) {
        if ttl.is_zero() {
            return;
        }
        // Overflow (a TTL of centuries) is clamped rather than wrapped.
        let expires = now.checked_add(ttl).unwrap_or_else(|| now + Duration::from_secs(86_400 * 365));
        self.shard(&key).lock().put(key, Entry { value, expires });
    }

    /// Removes `key`; true if it was present.
    pub(crate) fn remove(&self, key: &Key) -> bool {
        self.shard(key).lock().pop(key).is_some()
    }

    /// Number of entries, live or not yet purged.
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }
}

/// One in-flight fetch that other threads can wait for.
pub(crate) struct Flight<V> {
    result: Mutex<Option<V>>,
    done: Condvar,
}

impl<V: Clone> Flight<V> {
    /// Waits up to `timeout` for the leader's result.
    pub(crate) fn wait(&self, timeout: Duration) -> Option<V> {
        let deadline = Instant::now() + timeout;
        let mut result = self.result.lock();
        while result.is_none() {
            if self.done.wait_until(&mut result, deadline).timed_out() {
                break;
            }
        }
        result.clone()
    }
}

/// The table of in-flight fetches, by key.
pub(crate) struct Flights<V> {
    table: Mutex<HashMap<Key, Arc<Flight<V>>>>,
}

/// The caller's part in a fetch for one key.
pub(crate) enum Role<'f, V: Clone> {
    /// Perform the fetch, then call [`Leader::complete`].
    Leader(Leader<'f, V>),
    /// Someone else is fetching: wait for their result.
    Follower(Arc<Flight<V>>),
}

/// The fetching thread's handle. Dropping it without completing (a panic in the
/// transport) wakes the followers with the `abandoned` value.
pub(crate) struct Leader<'f, V: Clone> {
    flights: &'f Flights<V>,
    key: Key,
    flight: Arc<Flight<V>>,
    abandoned: Option<V>,
}

impl<V: Clone> Flights<V> {
    pub(crate) fn new() -> Self {
        Flights { table: Mutex::new(HashMap::new()) }
    }

    /// Joins the fetch for `key`, or becomes its leader. `abandoned` is what followers
    /// get if the leader disappears without a result.
    pub(crate) fn join(&self, key: Key, abandoned: V) -> Role<'_, V> {
        let mut table = self.table.lock();
        if let Some(f) = table.get(&key) {
            return Role::Follower(Arc::clone(f));
        }
        let flight = Arc::new(Flight { result: Mutex::new(None), done: Condvar::new() });
        table.insert(key, Arc::clone(&flight));
        Role::Leader(Leader { flights: self, key, flight, abandoned: Some(abandoned) })
    }

    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> usize {
        self.table.lock().len()
    }
}

impl<V: Clone> Leader<'_, V> {
    /// Publishes the result to every follower and ends the flight.
    pub(crate) fn complete(mut self, value: V) {
        self.finish(value);
    }

    fn finish(&mut self, value: V) {
        self.abandoned = None;
        *self.flight.result.lock() = Some(value);
        self.flight.done.notify_all();
        self.flights.table.lock().remove(&self.key);
    }
}

impl<V: Clone> Drop for Leader<'_, V> {
    fn drop(&mut self) {
        if let Some(v) = self.abandoned.take() {
            self.finish(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_and_capacity() {
        let c: TtlCache<u32> = TtlCache::new(2);
        let t0 = Instant::now();
        c.insert([1; 32], 1, Duration::from_secs(10), t0);
        c.insert([2; 32], 2, Duration::from_secs(1), t0);
        assert_eq!(c.get(&[1; 32], t0), Some(1));
        assert_eq!(c.get(&[2; 32], t0 + Duration::from_secs(1)), None, "expired at its TTL");
        c.insert([3; 32], 3, Duration::from_secs(10), t0);
        c.insert([4; 32], 4, Duration::from_secs(10), t0);
        assert_eq!(c.len(), 2);
        assert_eq!(c.get(&[1; 32], t0), None, "least recently used was evicted");
        assert!(c.remove(&[4; 32]));
        assert!(!c.remove(&[4; 32]));
        c.insert([5; 32], 5, Duration::ZERO, t0);
        assert_eq!(c.get(&[5; 32], t0), None, "zero TTL is not stored");
        c.insert([6; 32], 6, Duration::MAX, t0);
        assert_eq!(c.get(&[6; 32], t0), Some(6));
    }

    #[test]
    fn sharded_cache_holds_its_capacity() {
        let c: TtlCache<u32> = TtlCache::new(10_000);
        let t0 = Instant::now();
        for i in 0..20_000u32 {
            let mut k = [0u8; 32];
            k[..4].copy_from_slice(&i.to_le_bytes());
            k[31] = (i % 251) as u8;
            c.insert(k, i, Duration::from_secs(60), t0);
        }
        assert!(c.len() <= 10_000 + 16, "{}", c.len());
        assert!(c.len() >= 9_000, "{}", c.len());
    }

    #[test]
    fn single_flight_wakes_followers_and_cleans_up() {
        let flights: Arc<Flights<u32>> = Arc::new(Flights::new());
        let leader = match flights.join([9; 32], 0) {
            Role::Leader(l) => l,
            Role::Follower(_) => panic!("first caller leads"),
        };
        let waiters: Vec<_> = (0..4)
            .map(|_| {
                let f = match flights.join([9; 32], 0) {
                    Role::Follower(f) => f,
                    Role::Leader(_) => panic!("second caller follows"),
                };
                std::thread::spawn(move || f.wait(Duration::from_secs(5)))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(20));
        leader.complete(7);
        for w in waiters {
            assert_eq!(w.join().unwrap(), Some(7));
        }
        assert_eq!(flights.in_flight(), 0);
    }

    #[test]
    fn abandoned_leader_releases_followers() {
        let flights: Flights<u32> = Flights::new();
        let leader = flights.join([1; 32], 99);
        let follower = match flights.join([1; 32], 99) {
            Role::Follower(f) => f,
            Role::Leader(_) => panic!(),
        };
        drop(leader);
        assert_eq!(follower.wait(Duration::from_secs(1)), Some(99));
        assert_eq!(flights.in_flight(), 0);
    }
}
