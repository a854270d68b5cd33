//! Monte-Carlo ground truth: discounted returns of rollouts from one source state.
//!
//! `G = Σ_{t=0}^{T−1} γ^t r(x_t, a_t)` with `x_0` the source, T the horizon (Pendulum's 200-step
//! TimeLimit), as the reference's `compute_mc_returns` with `with_truncation=False`
//! (`dsm-algorithm.md` §4.3). One rollout feeds every reward function at once, so the returns of
//! several rewards come from the same trajectories, as the reference's stored (obs, act) arrays did.

use rand::Rng;

/// A process to roll out: its transition draws the action, writes the reward of each reward
/// function for (x_t, a_t) into `rewards`, and returns x_{t+1}.
pub trait Rollout {
    type State: Copy;
    fn step<R: Rng>(&self, x: &Self::State, rng: &mut R, rewards: &mut [f64]) -> Self::State;
}

/// `rollouts` discounted returns from `source` for each of `num_rewards` rewards:
/// `out[k][j]` is rollout j's return under reward k.
pub fn discounted_returns<P: Rollout, R: Rng>(
    process: &P,
    source: P::State,
    num_rewards: usize,
    rollouts: usize,
    horizon: usize,
    gamma: f64,
    rng: &mut R,
) -> Vec<Vec<f64>> {
    let mut out = vec![Vec::with_capacity(rollouts); num_rewards];
    let mut rewards = vec![0.0; num_rewards];
    let mut total = vec![0.0; num_rewards];
    for _ in 0..rollouts {
        let mut x = source;
        let mut discount = 1.0;
        total.fill(0.0);
        for _ in 0..horizon {
            x = process.step(&x, rng, &mut rewards);
            for (t, r) in total.iter_mut().zip(&rewards) {
                *t += discount * r;
            }
            discount *= gamma;
        }
        for (o, t) in out.iter_mut().zip(&total) {
            o.push(*t);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::rng;

    /// A two-state chain: from state i, stay with probability p_i; reward 1 in state 1, 0 in state
    /// 0 (on the state before the move).
    struct Chain {
        stay: [f64; 2],
    }

    impl Rollout for Chain {
        type State = usize;
        fn step<R: Rng>(&self, x: &usize, rng: &mut R, rewards: &mut [f64]) -> usize {
            rewards[0] = *x as f64;
            rewards[1] = 1.0 - *x as f64;
            if rng.random::<f64>() < self.stay[*x] {
                *x
            } else {
                1 - *x
            }
        }
    }

    /// The exact mean and variance of G by dynamic programming over (state, time): the first and
    /// second moments of the remaining return.
    fn exact_moments(chain: &Chain, source: usize, horizon: usize, gamma: f64) -> (f64, f64) {
        // m1[s], m2[s]: moments of Σ_{t'≥t} γ^{t'−t} r_{t'} from state s, built backwards.
        let (mut m1, mut m2) = ([0.0f64; 2], [0.0f64; 2]);
        for _ in 0..horizon {
            let mut n1 = [0.0; 2];
            let mut n2 = [0.0; 2];
            for s in 0..2 {
                let r = s as f64;
                let (p, q) = (chain.stay[s], 1.0 - chain.stay[s]);
                let e1 = p * m1[s] + q * m1[1 - s];
                let e2 = p * m2[s] + q * m2[1 - s];
                n1[s] = r + gamma * e1;
                n2[s] = r * r + 2.0 * r * gamma * e1 + gamma * gamma * e2;
            }
            m1 = n1;
            m2 = n2;
        }
        (m1[source], m2[source] - m1[source] * m1[source])
    }

    #[test]
    fn returns_of_a_tabular_chain_match_their_exact_moments() {
        let chain = Chain { stay: [0.7, 0.4] };
        let (horizon, gamma, n) = (30, 0.9, 40_000);
        let mut r = rng::stream(3, &["mc-test".into()]);
        let out = discounted_returns(&chain, 0, 2, n, horizon, gamma, &mut r);
        let (mean, var) = exact_moments(&chain, 0, horizon, gamma);
        let got_mean = out[0].iter().sum::<f64>() / n as f64;
        let got_var = out[0].iter().map(|g| (g - got_mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        // 5 standard errors of the mean; the variance's standard error is below var·sqrt(2/(n−1))
        // times a kurtosis factor, bounded here by 3 since G is bounded in [0, 1/(1−γ)].
        assert!((got_mean - mean).abs() < 5.0 * (var / n as f64).sqrt(), "{got_mean} vs {mean}");
        assert!((got_var - var).abs() < 5.0 * 3.0 * var * (2.0 / (n - 1) as f64).sqrt(), "{got_var} vs {var}");
        // The second reward is 1 − the first at every step: returns sum to Σγ^t exactly.
        let total = (1.0 - gamma.powi(horizon as i32)) / (1.0 - gamma);
        for (a, b) in out[0].iter().zip(&out[1]) {
            assert!((a + b - total).abs() < 1e-12);
        }
    }

    #[test]
    fn a_deterministic_chain_gives_its_exact_return() {
        // Always switch: rewards 0, 1, 0, 1, …
        let chain = Chain { stay: [0.0, 0.0] };
        let mut r = rng::stream(0, &["mc-test".into()]);
        let out = discounted_returns(&chain, 0, 2, 3, 4, 0.5, &mut r);
        assert_eq!(out[0], [0.5 + 0.125; 3]);
        assert_eq!(out[1], [1.0 + 0.25; 3]);
    }
}
