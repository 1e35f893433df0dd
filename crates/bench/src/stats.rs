//! Percentiles and summaries of latency samples.
//!
//! Percentiles use the nearest-rank method: the p-th percentile of n sorted samples is the one
//! at rank ⌈p/100 · n⌉. It never interpolates, so every reported value is one that was measured,
//! and with fewer than 1,000 samples p99.9 is simply the maximum (the sample counts are printed
//! next to every figure so that this is visible).

use std::time::Duration;

/// Latency samples in nanoseconds.
#[derive(Clone, Debug, Default)]
pub struct Samples {
    nanos: Vec<u64>,
    sorted: bool,
}

impl Samples {
    pub fn new() -> Samples {
        Samples::default()
    }

    pub fn with_capacity(n: usize) -> Samples {
        Samples {
            nanos: Vec::with_capacity(n),
            sorted: true,
        }
    }

    pub fn push(&mut self, d: Duration) {
        self.nanos
            .push(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        self.sorted = false;
    }

    pub fn len(&self) -> usize {
        self.nanos.len()
    }

    fn sort(&mut self) {
        if !self.sorted {
            self.nanos.sort_unstable();
            self.sorted = true;
        }
    }

    /// The p-th percentile (0 < p ≤ 100), nearest rank; `None` without samples.
    pub fn percentile(&mut self, p: f64) -> Option<Duration> {
        self.sort();
        nearest_rank(&self.nanos, p).map(Duration::from_nanos)
    }

    pub fn p50(&mut self) -> Option<Duration> {
        self.percentile(50.0)
    }

    pub fn p99(&mut self) -> Option<Duration> {
        self.percentile(99.0)
    }
}

/// The nearest-rank p-th percentile of `sorted` (ascending).
pub fn nearest_rank<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let n = sorted.len();
    // The epsilon keeps 99.9 % of 1,000 at rank 999 despite binary floating point.
    let rank = ((p / 100.0) * n as f64 - 1e-9).ceil() as usize;
    Some(sorted[rank.clamp(1, n) - 1])
}

/// The median of a few values (e.g. throughput per round); `None` when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(nearest_rank(&v, 50.0), Some(50));
        assert_eq!(nearest_rank(&v, 99.0), Some(99));
        assert_eq!(nearest_rank(&v, 99.9), Some(100));
        assert_eq!(nearest_rank(&v, 100.0), Some(100));
        assert_eq!(nearest_rank(&v, 0.0), Some(1));
        assert_eq!(nearest_rank::<u64>(&[], 50.0), None);
        // Few samples: p50 of 4 is the 2nd, p99 is the maximum.
        assert_eq!(nearest_rank(&[1, 2, 3, 4], 50.0), Some(2));
        assert_eq!(nearest_rank(&[1, 2, 3, 4], 99.0), Some(4));
        let thousand: Vec<u64> = (1..=1000).collect();
        assert_eq!(nearest_rank(&thousand, 99.9), Some(999));
    }

    #[test]
    fn samples_sort_lazily() {
        let mut s = Samples::new();
        for n in [5u64, 1, 4, 2, 3] {
            s.push(Duration::from_micros(n));
        }
        assert_eq!(s.p50(), Some(Duration::from_micros(3)));
        s.push(Duration::from_micros(100));
        assert_eq!(s.percentile(100.0), Some(Duration::from_micros(100)));
        assert_eq!(s.len(), 6);
        assert_eq!(Samples::new().p99(), None);
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }
}
