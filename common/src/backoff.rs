//! Retry delays: capped doubling, computed by `backon`.

use std::time::Duration;

use backon::{BackoffBuilder as _, ExponentialBuilder};

/// `base`, `2 × base`, `4 × base`, …, never more than `cap`. No jitter: delays are
/// predictable, and the callers retry one thing each, not a herd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Backoff {
    pub const fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff { base, cap }
    }

    /// The delay before retry `n` (1-based; 0 counts as 1).
    pub fn delay(&self, n: u32) -> Duration {
        // After 64 doublings any base has passed any cap: stepping further only costs time
        // (`n` may come from an annotation anyone can write).
        let steps = n.saturating_sub(1).min(64) as usize;
        let mut delays = ExponentialBuilder::new()
            .with_min_delay(self.base)
            .with_max_delay(self.cap)
            .with_factor(2.0)
            .without_max_times()
            .build();
        delays.nth(steps).unwrap_or(self.cap).min(self.cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_then_stay_at_the_cap() {
        let b = Backoff::new(Duration::from_secs(10), Duration::from_secs(300));
        let secs: Vec<u64> = [0, 1, 2, 3, 5, 6, 40, u32::MAX].into_iter().map(|n| b.delay(n).as_secs()).collect();
        assert_eq!(secs, [10, 10, 20, 40, 160, 300, 300, 300]);
    }

    #[test]
    fn a_base_above_the_cap_is_capped() {
        assert_eq!(Backoff::new(Duration::from_secs(9), Duration::from_secs(5)).delay(1), Duration::from_secs(5));
    }
}
