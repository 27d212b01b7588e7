//! Per-object exponential backoff for failed reconciles: 5 s, 10 s, 20 s, 40 s, then
//! every minute, until the object's next successful reconcile resets it. Before, a
//! failing object was retried every 5 s for as long as it failed, so a thousand
//! objects failing alike (storage down, a namespace's rights revoked) made 200
//! reconciles a second of pure retries.
//!
//! And [`WatchBackoff`], the pause before a controller watches again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// Failures kept at most: objects deleted while failing leave their count behind,
/// so past this many the counts start over (a retry then comes sooner, not later).
const MAX_TRACKED: usize = 10_000;

#[derive(Debug)]
pub struct Backoff {
    failures: Mutex<HashMap<String, u32>>,
    base: Duration,
    max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Duration::from_secs(5), Duration::from_secs(60))
    }
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            failures: Mutex::default(),
            base,
            max,
        }
    }

    /// One more failure of `key` (`namespace/name`): how long to wait before the retry.
    pub fn failed(&self, key: &str) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if failures.len() >= MAX_TRACKED && !failures.contains_key(key) {
            failures.clear();
        }
        let count = failures.entry(key.to_string()).or_insert(0);
        *count = count.saturating_add(1);
        let doublings = (*count - 1).min(16);
        self.base.saturating_mul(1 << doublings).min(self.max)
    }

    /// `key` reconciled: its next failure waits `base` again.
    pub fn succeeded(&self, key: &str) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        failures.remove(key);
    }
}

/// The pause before a controller's watches try again after an error: 250 ms,
/// doubling, at most 2 s; back to 250 ms once a watch delivers.
///
/// kube's default (client-go's: up to 30 s, reset only by a delivery) applies to a
/// controller's watches merged into one stream, and each of them fails on its own:
/// after an API server restart every watch reports its expired resource version
/// (410) in turn, each followed by a pause. The operator went on seeing nothing for
/// 60–80 s after a 60 s outage of the API server. A watch that cannot start costs the
/// API server one refused request per attempt: at most one every 2 s per controller.
#[derive(Debug, Clone)]
pub struct WatchBackoff {
    next: Duration,
}

impl WatchBackoff {
    const FIRST: Duration = Duration::from_millis(250);
    const MAX: Duration = Duration::from_secs(2);
}

impl Default for WatchBackoff {
    fn default() -> Self {
        Self { next: Self::FIRST }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let pause = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        Some(pause)
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_double_up_to_the_cap_per_object_and_a_success_resets_them() {
        let b = Backoff::default();
        let waits: Vec<u64> = (0..7).map(|_| b.failed("team/web").as_secs()).collect();
        assert_eq!(waits, [5, 10, 20, 40, 60, 60, 60]);
        assert_eq!(
            b.failed("team/api").as_secs(),
            5,
            "another object counts on its own"
        );
        b.succeeded("team/web");
        assert_eq!(b.failed("team/web").as_secs(), 5);
        for _ in 0..100 {
            b.failed("team/long");
        }
        assert_eq!(b.failed("team/long").as_secs(), 60, "no overflow");
    }

    #[test]
    fn the_counts_stay_bounded() {
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(8));
        for i in 0..MAX_TRACKED + 5 {
            b.failed(&format!("ns/{i}"));
        }
        assert!(b.failures.lock().unwrap().len() <= MAX_TRACKED);
    }

    #[test]
    fn a_watch_waits_at_most_two_seconds_and_a_delivery_resets_it() {
        use kube::runtime::utils::Backoff as _;
        let mut b = WatchBackoff::default();
        let waits: Vec<u128> = b.by_ref().take(6).map(|d| d.as_millis()).collect();
        assert_eq!(waits, [250, 500, 1000, 2000, 2000, 2000]);
        b.reset();
        assert_eq!(b.next(), Some(Duration::from_millis(250)));
    }
}
