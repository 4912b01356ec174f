//! Bounded TTL cache of validation outcomes, keyed by SHA-256 digests (never raw tokens).
//! Expiry is measured on the caller's clock ([`UnixMs`]).

use std::num::NonZeroUsize;

use lru::LruCache;
use parking_lot::Mutex;

use crate::clock::UnixMs;

/// A cache key: SHA-256 over the validator's identity and the token.
pub(crate) type Key = [u8; 32];

struct Entry<V> {
    value: V,
    expires: UnixMs,
}

type Shard<V> = Mutex<LruCache<Key, Entry<V>>>;

/// What a look-up found.
pub(crate) enum Lookup<V> {
    Hit(V, UnixMs),
    Miss,
    /// An entry past its expiry (now removed).
    Expired,
}

/// An LRU cache with a per-entry expiry, split into shards to keep lock hold times and
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

    /// The live value for `key` and its expiry; an expired entry is removed.
    pub(crate) fn lookup(&self, key: &Key, now: UnixMs) -> Lookup<V> {
        let mut shard = self.shard(key).lock();
        match shard.get(key) {
            Some(e) if e.expires > now => Lookup::Hit(e.value.clone(), e.expires),
            Some(_) => {
                shard.pop(key);
                Lookup::Expired
            }
            None => Lookup::Miss,
        }
    }

    /// [`TtlCache::lookup`], hits only.
    pub(crate) fn get(&self, key: &Key, now: UnixMs) -> Option<(V, UnixMs)> {
        match self.lookup(key, now) {
            Lookup::Hit(v, expires) => Some((v, expires)),
            Lookup::Miss | Lookup::Expired => None,
        }
    }

    /// Stores `value` until `expires`; an expiry not after `now` stores nothing. True if
    /// another entry had to leave to make room.
    pub(crate) fn insert(&self, key: Key, value: V, expires: UnixMs, now: UnixMs) -> bool {
        if expires <= now {
            return false;
        }
        let pushed_out = self.shard(&key).lock().push(key, Entry { value, expires });
        pushed_out.is_some_and(|(k, _)| k != key)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_and_capacity() {
        let c: TtlCache<u32> = TtlCache::new(2);
        let t0 = UnixMs(1_000);
        c.insert([1; 32], 1, UnixMs(11_000), t0);
        c.insert([2; 32], 2, UnixMs(2_000), t0);
        assert_eq!(c.get(&[1; 32], t0), Some((1, UnixMs(11_000))));
        assert_eq!(c.get(&[2; 32], UnixMs(2_000)), None, "expired at its expiry");
        assert!(!c.insert([3; 32], 3, UnixMs(11_000), t0), "the expired entry made room");
        assert!(c.insert([4; 32], 4, UnixMs(11_000), t0), "a live entry had to leave");
        assert_eq!(c.len(), 2);
        assert_eq!(c.get(&[1; 32], t0), None, "least recently used was evicted");
        assert!(c.remove(&[4; 32]));
        assert!(!c.remove(&[4; 32]));
        c.insert([5; 32], 5, t0, t0);
        assert_eq!(c.get(&[5; 32], t0), None, "an entry already expired is not stored");
        c.insert([6; 32], 6, UnixMs(i64::MAX), t0);
        assert_eq!(c.get(&[6; 32], t0).map(|(v, _)| v), Some(6));
    }

    #[test]
    fn sharded_cache_holds_its_capacity() {
        let c: TtlCache<u32> = TtlCache::new(10_000);
        let t0 = UnixMs(0);
        for i in 0..20_000u32 {
            let mut k = [0u8; 32];
            k[..4].copy_from_slice(&i.to_le_bytes());
            k[31] = (i % 251) as u8;
            c.insert(k, i, UnixMs(60_000), t0);
        }
        assert!(c.len() <= 10_000 + 16, "{}", c.len());
        assert!(c.len() >= 9_000, "{}", c.len());
    }
}
