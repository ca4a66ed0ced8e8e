//! A latency histogram of bounded size: logarithmic buckets 1% wide from 1 µs to over an hour,
//! so a percentile is within 1% of the true value whatever the run's length.

use std::time::Duration;

/// Relative width of a bucket.
const GROWTH: f64 = 1.01;
/// Buckets up to GROWTH^2500 µs ≈ 18 hours.
const BUCKETS: usize = 2500;

#[derive(Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self { counts: vec![0; BUCKETS], total: 0 }
    }
}

impl Histogram {
    pub fn record(&mut self, latency: Duration) {
        let micros = latency.as_micros().max(1) as f64;
        let bucket = (micros.ln() / GROWTH.ln()) as usize;
        self.counts[bucket.min(BUCKETS - 1)] += 1;
        self.total += 1;
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    /// The `p` quantile (0.99 for p99) in milliseconds: the upper bound of the bucket holding
    /// it (0 when empty).
    pub fn percentile_ms(&self, p: f64) -> f64 {
        let target = ((self.total as f64) * p).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (bucket, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= target {
                return GROWTH.powi(bucket as i32 + 1) / 1000.0;
            }
        }
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_within_one_percent_of_known_latencies() {
        let mut histogram = Histogram::default();
        // 1 ms to 10 s in steps of 1 ms: p50 = 5 s, p99 = 9.9 s, p99.9 = 9.99 s.
        for ms in 1..=10_000u64 {
            histogram.record(Duration::from_millis(ms));
        }
        assert_eq!(histogram.count(), 10_000);
        for (p, expected) in [(0.5, 5000.0), (0.99, 9900.0), (0.999, 9990.0), (1.0, 10_000.0)] {
            let got = histogram.percentile_ms(p);
            assert!((got - expected).abs() / expected <= 0.01, "p{p}: {got} ms, expected {expected} ms");
        }
        let mut one = Histogram::default();
        one.record(Duration::from_micros(250));
        assert!((one.percentile_ms(0.5) - 0.25).abs() / 0.25 <= 0.01);
        assert_eq!(Histogram::default().percentile_ms(0.99), 0.0);
    }
}
