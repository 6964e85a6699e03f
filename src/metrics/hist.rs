//! A histogram of fixed buckets kept in atomics: observing costs a short search and two
//! atomic adds, no lock (prometheus-client's own histogram takes a lock per observation).

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// Room for this many bounds (plus the `+Inf` bucket).
const MAX_BOUNDS: usize = 24;

/// Request and sync latencies, in nanoseconds: 2.5 µs (an in-memory read) to 10 s.
pub const LATENCY_NS: &[u64] = &[
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// Writes sharing one sync (the store's batch is at most 4096).
pub const BATCH: &[u64] = &[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096];

/// Nodes a request crossed before the one that answered it (at most `wire::MAX_HOPS`).
pub const HOPS: &[u64] = &[0, 1, 2, 3, 4, 5, 6, 7, 8];

/// Counts of observations at or under each bound, and their sum, in the unit observed.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [u64],
    /// `counts[i]`: observations in (bounds[i-1], bounds[i]]; the last, above every bound.
    counts: [AtomicU64; MAX_BOUNDS + 1],
    sum: AtomicU64,
}

impl Histogram {
    pub const fn new(bounds: &'static [u64]) -> Self {
        assert!(bounds.len() <= MAX_BOUNDS, "too many histogram bounds");
        Self {
            bounds,
            counts: [const { AtomicU64::new(0) }; MAX_BOUNDS + 1],
            sum: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: u64) {
        let bucket = self
            .bounds
            .iter()
            .position(|&b| value <= b)
            .unwrap_or(self.bounds.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    /// The counts now (not one instant across buckets: an observation made meanwhile may be
    /// in the count of its bucket and not yet in the sum; scrapes tolerate that).
    pub fn read(&self) -> Hist {
        Hist {
            bounds: self.bounds.to_vec(),
            counts: self.counts[..=self.bounds.len()]
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
            sum: self.sum.load(Ordering::Relaxed),
        }
    }
}

/// A histogram as read, sent in `kvnode stats` answers and encoded for `/metrics`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hist {
    /// Upper bounds, in the unit observed.
    pub bounds: Vec<u64>,
    /// One count per bound, then the count above every bound (not cumulative).
    pub counts: Vec<u64>,
    pub sum: u64,
}

impl Hist {
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// What was observed since `earlier` (a reading of the same histogram).
    pub fn since(&self, earlier: &Hist) -> Hist {
        if earlier.bounds != self.bounds {
            return self.clone();
        }
        Hist {
            bounds: self.bounds.clone(),
            counts: self
                .counts
                .iter()
                .zip(&earlier.counts)
                .map(|(now, then)| now.saturating_sub(*then))
                .collect(),
            sum: self.sum.saturating_sub(earlier.sum),
        }
    }

    /// The upper bound of the bucket holding quantile `q` (0..=1), as Prometheus's
    /// `histogram_quantile` would place it at the bucket's top: `None` with no observations,
    /// `u64::MAX` when it lies above every bound.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(self.bounds.get(i).copied().unwrap_or(u64::MAX));
            }
        }
        Some(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_observation_lands_in_the_first_bucket_whose_bound_holds_it() {
        let h = Histogram::new(&[10, 20]);
        for v in [0, 10, 11, 20, 21, 1000] {
            h.observe(v);
        }
        let r = h.read();
        assert_eq!(r.counts, vec![2, 2, 2]);
        assert_eq!(r.sum, 1062);
        assert_eq!(r.count(), 6);
    }

    #[test]
    fn quantiles_are_the_bound_of_the_bucket_they_fall_in() {
        let h = Histogram::new(&[1, 2, 4]);
        assert_eq!(h.read().quantile(0.5), None);
        for _ in 0..98 {
            h.observe(1);
        }
        h.observe(3);
        h.observe(9);
        let r = h.read();
        assert_eq!(r.quantile(0.5), Some(1));
        assert_eq!(r.quantile(0.99), Some(4));
        assert_eq!(r.quantile(1.0), Some(u64::MAX));
    }

    #[test]
    fn since_subtracts_an_earlier_reading() {
        let h = Histogram::new(&[1]);
        h.observe(1);
        let before = h.read();
        h.observe(5);
        let diff = h.read().since(&before);
        assert_eq!(diff.counts, vec![0, 1]);
        assert_eq!(diff.sum, 5);
    }
}
