//! The caller's clock. The core never reads a clock of its own: every step that needs the
//! time is handed `now` (a [`SystemTime`]), and everything time-dependent inside (token
//! `exp`/`nbf`, cache entries, key-set expiry, the refetch limit) is computed from it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A point in time as milliseconds since the Unix epoch: what every cache and rule inside
/// the core compares. Times before 1970 count as 0; times past year 292 million saturate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct UnixMs(pub(crate) i64);

impl UnixMs {
    pub(crate) fn from_system(t: SystemTime) -> Self {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => UnixMs(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            Err(_) => UnixMs(0),
        }
    }

    /// Whole seconds (the unit of JWT and introspection time claims), rounded down.
    pub(crate) fn secs(self) -> i64 {
        self.0.div_euclid(1000)
    }

    /// The time at whole second `secs`.
    pub(crate) fn at_secs(secs: i64) -> Self {
        UnixMs(secs.saturating_mul(1000))
    }

    /// `self + d`, saturating (a TTL of centuries never wraps into the past).
    pub(crate) fn plus(self, d: Duration) -> Self {
        UnixMs(self.0.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)))
    }

    /// The time left from `now` until `self` (zero when past).
    pub(crate) fn after(self, now: UnixMs) -> Duration {
        Duration::from_millis(u64::try_from(self.0.saturating_sub(now.0)).unwrap_or(0))
    }

    pub(crate) fn to_system(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(u64::try_from(self.0).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_saturate_instead_of_wrapping() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let ms = UnixMs::from_system(t);
        assert_eq!(ms.0, 1_700_000_000_123);
        assert_eq!(ms.secs(), 1_700_000_000);
        assert_eq!(ms.to_system(), t);
        assert_eq!(UnixMs::from_system(UNIX_EPOCH - Duration::from_secs(5)), UnixMs(0));
        assert_eq!(UnixMs(i64::MAX).plus(Duration::from_secs(1)), UnixMs(i64::MAX));
        assert_eq!(ms.plus(Duration::MAX), UnixMs(i64::MAX));
        assert_eq!(UnixMs(10).after(UnixMs(20)), Duration::ZERO);
        assert_eq!(UnixMs(2_000).after(UnixMs(500)), Duration::from_millis(1_500));
        assert_eq!(UnixMs::at_secs(i64::MAX), UnixMs(i64::MAX));
    }
}
