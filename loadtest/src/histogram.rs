//! A latency histogram of bounded size (hdrhistogram's): 1 µs to an hour at two significant
//! digits, so a percentile is within 1% of the true value whatever the run's length.

use std::time::Duration;

/// Longest latency kept apart; longer ones count as this.
const MAX_MICROS: u64 = 3_600_000_000;

#[derive(Clone)]
pub struct Histogram(hdrhistogram::Histogram<u64>);

impl Default for Histogram {
    fn default() -> Self {
        // The bounds are constants that hdrhistogram accepts (low ≥ 1, high ≥ 2 × low, 2 digits):
        // the test below builds one.
        #[allow(clippy::expect_used)]
        let histogram = hdrhistogram::Histogram::new_with_bounds(1, MAX_MICROS, 2).expect("valid bounds");
        Self(histogram)
    }
}

impl Histogram {
    pub fn record(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(MAX_MICROS);
        self.0.saturating_record(micros.clamp(1, MAX_MICROS));
    }

    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// The `p` quantile (0.99 for p99) in milliseconds (0 when empty).
    pub fn percentile_ms(&self, p: f64) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        self.0.value_at_quantile(p) as f64 / 1000.0
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
        let mut long = Histogram::default();
        long.record(Duration::from_secs(7200));
        assert!((long.percentile_ms(1.0) - 3_600_000.0).abs() / 3_600_000.0 <= 0.01, "kept at the bound");
    }
}
