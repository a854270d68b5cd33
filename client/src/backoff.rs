//! Exponential backoff with jitter, for every retry any client makes (Conventions: "every retry
//! backs off with jitter"). Pure: it computes delays; the caller sleeps, so the schedule is unit
//! tested without a clock and a caller can sleep with `sleep_until` or inside a `select!`.
//!
//! The jitter spreads the retries of many processes (and of one process's tasks) that lost the
//! same server at the same moment, so they do not come back in lock-step when it does. One small
//! type of our own rather than a crate: the whole policy is "double from `base` up to `cap`, times
//! a uniform factor in [0.5, 1.5), back to `base` after a success", seeded, so tests can pin it.

use std::time::Duration;

use common::rng::StreamRng;
use rand::Rng;

/// Delays that double from `base` up to `cap`, each multiplied by a uniform factor in [0.5, 1.5).
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    next: Duration,
    rng: StreamRng,
}

impl Backoff {
    /// `seed` fixes the jitter. Callers derive it from their incarnation (or the experiment seed)
    /// and purpose, so two tasks of one process, and two processes, jitter differently.
    pub fn new(base: Duration, cap: Duration, seed: u64) -> Backoff {
        assert!(!base.is_zero() && base <= cap, "backoff needs 0 < base ≤ cap");
        Backoff { base, cap, next: base, rng: common::rng::stream(seed, &["backoff".into()]) }
    }

    /// The delay before the next attempt; the one after it is twice as long (up to the cap).
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next.mul_f64(self.rng.random_range(0.5..1.5));
        self.next = (self.next * 2).min(self.cap);
        d
    }

    /// Back to `base`, after a success.
    pub fn reset(&mut self) {
        self.next = self.base;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(d: Duration) -> f64 {
        d.as_secs_f64() * 1e3
    }

    /// Both sides of the jitter band for every step of the schedule, the cap included.
    #[test]
    fn delays_double_up_to_the_cap_within_the_jitter() {
        let (base, cap) = (Duration::from_millis(100), Duration::from_secs(2));
        let mut b = Backoff::new(base, cap, 7);
        let nominal = [100u64, 200, 400, 800, 1600, 2000, 2000, 2000];
        for n in nominal {
            let (d, n) = (ms(b.next_delay()), n as f64);
            assert!(d >= 0.5 * n && d < 1.5 * n, "{d} ms is outside [0.5, 1.5) × {n} ms");
        }
        b.reset();
        let d = b.next_delay();
        assert!(d >= base / 2 && d < base * 3 / 2, "{d:?} after a reset");
    }

    /// Over many draws the factor fills its band: the mean is 1 (within 5 sd of a uniform's
    /// mean over n = 10,000: sd = 1/√12/√n ≈ 0.003, so ±0.015) and both ends are approached.
    #[test]
    fn the_jitter_is_uniform_in_half_to_one_and_a_half() {
        let base = Duration::from_millis(100);
        let mut b = Backoff::new(base, base, 11);
        let factors: Vec<f64> = (0..10_000).map(|_| ms(b.next_delay()) / 100.0).collect();
        let mean = factors.iter().sum::<f64>() / factors.len() as f64;
        assert!((mean - 1.0).abs() < 0.015, "mean factor {mean}");
        let (lo, hi) = factors.iter().fold((f64::MAX, f64::MIN), |(l, h), &f| (l.min(f), h.max(f)));
        assert!((0.5..0.51).contains(&lo) && hi < 1.5 && hi > 1.49, "factors in [{lo}, {hi}]");
    }

    #[test]
    fn jitter_is_fixed_by_the_seed_and_differs_between_seeds() {
        let d = |seed| Backoff::new(Duration::from_millis(100), Duration::from_secs(2), seed).next_delay();
        assert_eq!(d(1), d(1));
        assert_ne!(d(1), d(2));
    }

    #[test]
    #[should_panic(expected = "0 < base ≤ cap")]
    fn a_base_above_the_cap_is_a_bug() {
        Backoff::new(Duration::from_secs(3), Duration::from_secs(2), 0);
    }
}
