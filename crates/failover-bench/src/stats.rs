//! Latency samples and their summary.

use std::time::Duration;

use serde::Serialize;

/// Latencies of one phase, in microseconds.
#[derive(Debug, Default)]
pub struct Samples(Vec<u32>);

impl Samples {
    /// Records one latency (saturating at about 71 minutes).
    pub fn push(&mut self, latency: Duration) {
        self.0
            .push(u32::try_from(latency.as_micros()).unwrap_or(u32::MAX));
    }

    /// Adds every sample of `other`.
    pub fn extend(&mut self, other: Samples) {
        self.0.extend(other.0);
    }

    /// Percentiles, mean and max, in milliseconds.
    pub fn summary(mut self) -> Summary {
        if self.0.is_empty() {
            return Summary::default();
        }
        self.0.sort_unstable();
        let ms = |us: u32| f64::from(us) / 1000.0;
        // Nearest rank: the smallest sample with at least p of all samples at or below it.
        let pct = |p: f64| {
            let rank = (p * self.0.len() as f64).ceil() as usize;
            ms(self.0[rank.clamp(1, self.0.len()) - 1])
        };
        let sum: u64 = self.0.iter().map(|&us| u64::from(us)).sum();
        Summary {
            p50_ms: pct(0.50),
            p90_ms: pct(0.90),
            p99_ms: pct(0.99),
            max_ms: ms(self.0[self.0.len() - 1]),
            mean_ms: sum as f64 / self.0.len() as f64 / 1000.0,
        }
    }
}

/// Latency summary of one phase.
#[derive(Debug, Default, Serialize)]
pub struct Summary {
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest sample.
    pub max_ms: f64,
    /// Arithmetic mean.
    pub mean_ms: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut s = Samples::default();
        for ms in 1..=100 {
            s.push(Duration::from_millis(ms));
        }
        let summary = s.summary();
        assert_eq!(summary.p50_ms, 50.0);
        assert_eq!(summary.p99_ms, 99.0);
        assert_eq!(summary.max_ms, 100.0);
        assert_eq!(summary.mean_ms, 50.5);
    }

    #[test]
    fn empty_summary_is_zero() {
        assert_eq!(Samples::default().summary().p99_ms, 0.0);
    }
}
