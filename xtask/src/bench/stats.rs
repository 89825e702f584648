//! Order statistics over samples in microseconds.

use std::time::Duration;

use serde_json::{json, Value};

/// min / p50 / p99 / max of a set of samples, in microseconds, by nearest rank.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Summary {
    pub n: usize,
    pub min: i64,
    pub p50: i64,
    pub p99: i64,
    pub max: i64,
}

impl Summary {
    pub(crate) fn of_micros(mut samples: Vec<i64>) -> Summary {
        samples.sort_unstable();
        let rank = |p: f64| {
            let n = samples.len();
            if n == 0 {
                return 0;
            }
            let index = ((p * n as f64).ceil() as usize).clamp(1, n) - 1;
            samples[index]
        };
        Summary {
            n: samples.len(),
            min: samples.first().copied().unwrap_or(0),
            p50: rank(0.50),
            p99: rank(0.99),
            max: samples.last().copied().unwrap_or(0),
        }
    }

    pub(crate) fn of_durations(samples: impl IntoIterator<Item = Duration>) -> Summary {
        Summary::of_micros(samples.into_iter().map(micros).collect())
    }

    pub(crate) fn json(&self) -> Value {
        json!({
            "n": self.n,
            "min_us": self.min,
            "p50_us": self.p50,
            "p99_us": self.p99,
            "max_us": self.max,
        })
    }
}

/// A duration in whole microseconds.
pub(crate) fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

/// A number of microseconds for a human: µs below 10 ms, ms below 10 s, s above.
pub(crate) fn human_micros(us: i64) -> String {
    let magnitude = us.unsigned_abs();
    if magnitude < 10_000 {
        format!("{us} µs")
    } else if magnitude < 10_000_000 {
        format!("{:.1} ms", us as f64 / 1e3)
    } else {
        format!("{:.2} s", us as f64 / 1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles_pick_real_samples() {
        let summary = Summary::of_micros((1..=200).rev().collect());
        assert_eq!(
            (summary.min, summary.p50, summary.p99, summary.max),
            (1, 100, 198, 200)
        );
        let one = Summary::of_micros(vec![7]);
        assert_eq!((one.p50, one.p99), (7, 7));
    }
}
