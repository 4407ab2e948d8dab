//! Exponential back-off with jitter between retries of one call.

use std::time::Duration;

/// Pauses before the retries of one call: the `n`-th pause (from 0) is drawn uniformly from
/// `[cap / 2, cap]` with `cap = min(max, base · 2ⁿ)`.
///
/// Doubling gives an election or a split time to finish without a flood of retries; the
/// jitter keeps many clients that failed together (a leader that just stepped down) from
/// retrying in lockstep; the lower half-bound keeps a pause from collapsing to nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first pause's upper bound.
    pub base: Duration,
    /// No pause is longer.
    pub max: Duration,
}

impl Backoff {
    /// The upper bound of the `attempt`-th pause (counting from 0).
    pub fn cap(&self, attempt: u32) -> Duration {
        // 2^20 times any sensible base is already above any sensible max; stopping the
        // shift there keeps the multiplication from overflowing.
        let factor = 1u32 << attempt.min(20);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// The `attempt`-th pause for a jitter draw `unit` in `[0, 1]`.
    pub fn delay_with(&self, attempt: u32, unit: f64) -> Duration {
        let cap = self.cap(attempt);
        let half = cap / 2;
        half + (cap - half).mul_f64(unit.clamp(0.0, 1.0))
    }

    /// The `attempt`-th pause, with a random jitter.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.delay_with(attempt, rand::random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Backoff = Backoff {
        base: Duration::from_millis(10),
        max: Duration::from_millis(500),
    };

    #[test]
    fn doubles_up_to_the_max() {
        let caps: Vec<u128> = (0..8).map(|a| B.cap(a).as_millis()).collect();
        assert_eq!(caps, vec![10, 20, 40, 80, 160, 320, 500, 500]);
        assert_eq!(B.cap(u32::MAX), B.max, "no overflow on huge attempt counts");
    }

    #[test]
    fn jitter_stays_within_half_cap_and_cap() {
        for attempt in 0..40 {
            let cap = B.cap(attempt);
            assert_eq!(B.delay_with(attempt, 0.0), cap / 2);
            assert_eq!(B.delay_with(attempt, 1.0), cap);
            assert_eq!(B.delay_with(attempt, 7.0), cap, "draw clamped");
            for _ in 0..50 {
                let d = B.delay(attempt);
                assert!(
                    d >= cap / 2 && d <= cap,
                    "{d:?} outside [{:?}, {cap:?}]",
                    cap / 2
                );
                assert!(d <= B.max);
            }
        }
    }
}
