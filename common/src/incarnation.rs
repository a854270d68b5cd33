//! A process's incarnation: the one value in the system that is meant *not* to be reproducible.
//!
//! A stream is (actor id, incarnation, env index) (Conventions), so an actor restarted with the
//! same id opens new streams instead of colliding with its previous life's; an evaluator's claims
//! name it, so two evaluator processes never pass for one. Every other random stream derives from
//! the experiment seed ([`crate::rng`]); this one derives from the clock and the process id. Retry
//! jitter is seeded from it too, so that processes that lost the same server at the same moment
//! do not retry in lock-step.

/// A random u64 for this process: the wall clock in nanoseconds and the pid, through SplitMix64.
/// Two calls in one process differ too (the clock moves), so callers draw it once and keep it.
pub fn new_incarnation() -> u64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    crate::rng::splitmix64(nanos as u64 ^ (u64::from(std::process::id()) << 40))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incarnations_differ_between_draws() {
        let a = new_incarnation();
        std::thread::sleep(std::time::Duration::from_millis(1));
        assert_ne!(a, new_incarnation());
    }
}
