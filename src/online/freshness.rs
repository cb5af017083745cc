//! How old the data behind each scorer read is: the wall clock minus the shared
//! watermark (the newest event time any aggregator has written), kept as a Prometheus
//! histogram with atomics so the read path takes no lock.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::prometheus_text::{header, sample};

/// Bucket bounds in seconds: from a fresh pipeline (0.1 s) to a stalled one (an hour).
const BOUNDS_S: [f64; 10] = [0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 300.0, 3600.0];

/// The read-age histogram.
#[derive(Debug, Default)]
pub struct ReadAges {
    /// Reads at or below each bound (not cumulative; summed when rendered).
    buckets: [AtomicU64; BOUNDS_S.len()],
    count: AtomicU64,
    sum_ms: AtomicU64,
}

impl ReadAges {
    /// Notes one read of data `age_ms` old (a negative age, an event stamped ahead of
    /// this clock, counts as 0).
    pub fn observe(&self, age_ms: i64) {
        let age_ms = u64::try_from(age_ms).unwrap_or(0);
        let seconds = age_ms as f64 / 1000.0;
        if let Some(bucket) = BOUNDS_S.iter().position(|bound| seconds <= *bound) {
            self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_ms.fetch_add(age_ms, Ordering::Relaxed);
    }

    /// Reads noted so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Writes the histogram as `name`.
    pub fn render(&self, out: &mut String, name: &str, help: &str) {
        header(out, name, "histogram", help);
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0;
        for (bound, count) in BOUNDS_S.iter().zip(&self.buckets) {
            cumulative += count.load(Ordering::Relaxed);
            sample(out, &bucket, &[("le", &bound.to_string())], cumulative);
        }
        let count = self.count();
        sample(out, &bucket, &[("le", "+Inf")], count);
        let sum_s = self.sum_ms.load(Ordering::Relaxed) as f64 / 1000.0;
        sample(out, &format!("{name}_sum"), &[], sum_s);
        sample(out, &format!("{name}_count"), &[], count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_ages_below_zero_count_as_zero() {
        let ages = ReadAges::default();
        for age_ms in [-5, 50, 300, 2_000, 7_200_000] {
            ages.observe(age_ms);
        }
        let mut out = String::new();
        ages.render(&mut out, "age_seconds", "how old");
        let value = |le: &str| -> u64 {
            let prefix = format!("age_seconds_bucket{{le=\"{le}\"}} ");
            out.lines()
                .find_map(|line| line.strip_prefix(&prefix))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no bucket {le} in {out}"))
        };
        assert_eq!(value("0.1"), 2, "-5 ms and 50 ms");
        assert_eq!(value("0.5"), 3);
        assert_eq!(value("2.5"), 4);
        assert_eq!(value("3600"), 4, "two hours is over every bound");
        assert_eq!(value("+Inf"), 5);
        assert!(out.contains("age_seconds_count 5\n"), "{out}");
        assert!(out.contains("age_seconds_sum 7202.35\n"), "{out}");
    }
}
