//! Exponential backoff with jitter, for every retry the actor makes (Conventions: "every retry
//! backs off with jitter"). Pure: it computes delays; the caller sleeps.
//!
//! The jitter spreads the retries of many actors (and of one actor's writers) that lost the same
//! server at the same moment, so they do not reconnect in lock-step when it comes back.

use std::time::Duration;

use common::rng::StreamRng;
use rand::Rng;

/// Delays that double from `base` up to `cap`, each multiplied by a uniform factor in [0.5, 1.5).
pub struct Backoff {
    base: Duration,
    cap: Duration,
    next: Duration,
    rng: StreamRng,
}

impl Backoff {
    /// `seed` fixes the jitter; callers derive it from their incarnation and purpose, so two
    /// writers of one actor jitter differently.
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

    #[test]
    fn delays_double_up_to_the_cap_within_the_jitter() {
        let (base, cap) = (Duration::from_millis(100), Duration::from_secs(2));
        let mut b = Backoff::new(base, cap, 7);
        let nominal = [100u64, 200, 400, 800, 1600, 2000, 2000, 2000];
        for n in nominal {
            let d = b.next_delay().as_secs_f64() * 1e3;
            let n = n as f64;
            assert!(d >= 0.5 * n && d < 1.5 * n, "{d} ms is outside [0.5, 1.5) × {n} ms");
        }
        b.reset();
        let d = b.next_delay();
        assert!(d >= base / 2 && d < base * 3 / 2, "{d:?} after a reset");
    }

    #[test]
    fn jitter_differs_between_seeds() {
        let d = |seed| Backoff::new(Duration::from_millis(100), Duration::from_secs(2), seed).next_delay();
        assert_ne!(d(1), d(2));
    }
}
