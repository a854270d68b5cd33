//! The paper's Pendulum evaluation (`dsm-algorithm.md` §4): source states, reward functions, the
//! δ-model's return distribution and its Monte-Carlo ground truth under the data policy.

use std::f64::consts::PI;

use actor::envs::config::PendulumConfig;
use actor::envs::pendulum::{angle_normalize, physics, policy_action};
use rand::Rng;

use super::monte_carlo::Rollout;

/// The reference's 9 source states (`plotting/pendulum.py::source_states`): θ ∈ {π/2, π, 3π/2} ×
/// θ̇ ∈ {−4, 0, 4}, θ = 0 upright. θ-major, as (θ, θ̇).
pub fn source_states() -> Vec<(f64, f64)> {
    let mut out = Vec::new();
    for theta in [PI / 2.0, PI, 3.0 * PI / 2.0] {
        for theta_dot in [-4.0, 0.0, 4.0] {
            out.push((theta, theta_dot));
        }
    }
    out
}

/// The observation `[cos θ, sin θ, θ̇]` of a state.
pub fn observation(theta: f64, theta_dot: f64) -> [f64; 3] {
    [theta.cos(), theta.sin(), theta_dot]
}

/// A short name for a source state, for file names: `th1.57_thd-4`.
pub fn source_name(theta: f64, theta_dot: f64) -> String {
    format!("th{theta:.2}_thd{theta_dot}")
}

/// The reference's reward functions for Pendulum-v1 (`dsm/rewards.py`), in its dict's order. The
/// dict holds 7 entries, `Default` duplicating `No Action Penalty`; both are kept, so a report has
/// the reference's 63 (reward, source) pairs and its summary statistics mean the same thing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reward {
    NoActionPenalty,
    Default,
    AboveHorizon,
    StayLeft,
    StayRight,
    AngularVelocityPenalty,
    CounterClockwisePenalty,
}

impl Reward {
    pub const ALL: [Reward; 7] = [
        Reward::NoActionPenalty,
        Reward::Default,
        Reward::AboveHorizon,
        Reward::StayLeft,
        Reward::StayRight,
        Reward::AngularVelocityPenalty,
        Reward::CounterClockwisePenalty,
    ];

    /// The reference's name (the key of its dict).
    pub fn title(self) -> &'static str {
        match self {
            Reward::NoActionPenalty => "No Action Penalty",
            Reward::Default => "Default",
            Reward::AboveHorizon => "Above Horizon",
            Reward::StayLeft => "Stay Left",
            Reward::StayRight => "Stay Right",
            Reward::AngularVelocityPenalty => "Angular Velocity Penalty",
            Reward::CounterClockwisePenalty => "Counter Clockwise Penalty",
        }
    }

    /// A file-name form of [`Self::title`]: `no-action-penalty`.
    pub fn slug(self) -> String {
        self.title().to_lowercase().replace(' ', "-")
    }

    /// r(x, a) for the observation `x = [cos θ, sin θ, θ̇]` and torque a. θ is recovered as
    /// atan2(sin, cos), so a generated state off the unit circle still has an angle.
    pub fn value(self, x: [f64; 3], action: f64) -> f64 {
        let theta = x[1].atan2(x[0]);
        let theta_dot = x[2];
        match self {
            Reward::NoActionPenalty | Reward::Default => {
                -(angle_normalize(theta).powi(2) + 0.1 * theta_dot * theta_dot)
            }
            Reward::AboveHorizon => -(f64::from(u8::from(theta.abs() > PI / 2.0)) + 0.1 * action * action),
            Reward::StayLeft => x[1].min(0.0),
            Reward::StayRight => x[1].max(0.0),
            Reward::AngularVelocityPenalty => -theta_dot.abs(),
            Reward::CounterClockwisePenalty => f64::from(u8::from(theta_dot > 0.0)),
        }
    }
}

/// Pendulum-v1 under the data policy, for Monte-Carlo rollouts: a state is (θ, θ̇).
///
/// The policy is the one the dataset was recorded with (its `[env.policy]`), and its actions are
/// the torques it applied. The reference's SAC actions were the raw squashed values in [−1, 1]
/// (quirk Q4); with this scripted policy there is no such gap: the reward sees the torque applied.
pub struct PendulumRollout<'a> {
    pub config: &'a PendulumConfig,
}

impl Rollout for PendulumRollout<'_> {
    type State = (f64, f64);

    fn step<R: Rng>(&self, x: &(f64, f64), rng: &mut R, rewards: &mut [f64]) -> (f64, f64) {
        let (theta, theta_dot) = *x;
        let u = policy_action(self.config, theta, theta_dot, rng);
        let obs = observation(theta, theta_dot);
        for (r, kind) in rewards.iter_mut().zip(Reward::ALL) {
            *r = kind.value(obs, u);
        }
        let (th, thd, _) = physics(self.config, theta, theta_dot, u);
        (th, thd)
    }
}

/// The δ-model's return under `reward` for each atom (§4.1): `R_o = mean_i r(x_{o,i}, a_{o,i}) /
/// (1 − γ)`, with `a ~ π(x)` the data policy's action at each generated state. `samples` is
/// `[O][n][3]` flat.
pub fn atom_returns<R: Rng>(
    config: &PendulumConfig,
    samples: &[f32],
    atoms: usize,
    reward: Reward,
    gamma: f64,
    rng: &mut R,
) -> Vec<f64> {
    let per_atom = samples.len() / atoms / 3;
    (0..atoms)
        .map(|o| {
            let mut sum = 0.0;
            for x in samples[o * per_atom * 3..(o + 1) * per_atom * 3].chunks_exact(3) {
                let x = [f64::from(x[0]), f64::from(x[1]), f64::from(x[2])];
                let theta = x[1].atan2(x[0]);
                let u = policy_action(config, theta, x[2], rng);
                sum += reward.value(x, u);
            }
            sum / per_atom as f64 / (1.0 - gamma)
        })
        .collect()
}

/// The policy's action without noise, clipped (for tests of the deterministic trajectory).
#[cfg(test)]
fn policy_mean_clipped(c: &PendulumConfig, theta: f64, theta_dot: f64) -> f64 {
    actor::envs::pendulum::policy_mean(c, theta, theta_dot).clamp(-c.max_torque, c.max_torque)
}

#[cfg(test)]
mod tests {
    use super::*;
    use actor::envs::config::{EnvConfig, EnvId};
    use common::rng;

    fn config() -> PendulumConfig {
        match EnvConfig::defaults(EnvId::Pendulum) {
            EnvConfig::Pendulum(c) => c,
            _ => unreachable!(),
        }
    }

    #[test]
    fn reward_functions_match_the_reference_definitions() {
        // Hanging down (θ = π), spinning counter-clockwise at 2 rad/s, torque 1.
        let x = observation(PI, 2.0);
        assert!((Reward::NoActionPenalty.value(x, 1.0) + (PI * PI + 0.4)).abs() < 1e-9);
        assert_eq!(Reward::Default.value(x, 1.0), Reward::NoActionPenalty.value(x, 1.0));
        assert!((Reward::AboveHorizon.value(x, 1.0) + 1.1).abs() < 1e-12);
        assert!((Reward::AboveHorizon.value(observation(0.2, 0.0), 0.0)).abs() < 1e-12);
        assert_eq!(Reward::AngularVelocityPenalty.value(x, 0.0), -2.0);
        assert_eq!(Reward::CounterClockwisePenalty.value(x, 0.0), 1.0);
        assert_eq!(Reward::CounterClockwisePenalty.value(observation(PI, -1.0), 0.0), 0.0);
        // θ = π/2: sin = 1, so Stay Right pays 1 and Stay Left 0; θ = 3π/2 the reverse.
        let right = observation(PI / 2.0, 0.0);
        let left = observation(3.0 * PI / 2.0, 0.0);
        assert!((Reward::StayRight.value(right, 0.0) - 1.0).abs() < 1e-12 && Reward::StayLeft.value(right, 0.0) == 0.0);
        assert!((Reward::StayLeft.value(left, 0.0) + 1.0).abs() < 1e-12 && Reward::StayRight.value(left, 0.0) == 0.0);
        // Off the unit circle the angle is still atan2.
        assert!((Reward::NoActionPenalty.value([0.0, 2.0, 0.0], 0.0) + (PI / 2.0).powi(2)).abs() < 1e-12);
        assert_eq!(source_states().len(), 9);
        assert_eq!(source_states()[4], (PI, 0.0));
    }

    /// A rollout applies the recording's dynamics and policy: at zero noise, the MC return equals
    /// the sum of the rewards along the deterministic trajectory.
    #[test]
    fn a_noiseless_rollout_is_the_deterministic_trajectory() {
        let mut c = config();
        c.policy.noise_std = 0.0;
        let p = PendulumRollout { config: &c };
        let mut r = rng::stream(0, &["t".into()]);
        let out = super::super::monte_carlo::discounted_returns(&p, (PI, 0.0), 7, 2, 200, 0.95, &mut r);
        let (mut th, mut thd, mut want, mut disc) = (PI, 0.0, 0.0, 1.0);
        for _ in 0..200 {
            let u = policy_mean_clipped(&c, th, thd);
            want += disc * Reward::NoActionPenalty.value(observation(th, thd), u);
            let next = physics(&c, th, thd, u);
            (th, thd) = (next.0, next.1);
            disc *= 0.95;
        }
        assert_eq!(out[0][0], out[0][1]);
        assert!((out[0][0] - want).abs() < 1e-9, "{} vs {want}", out[0][0]);
    }

    #[test]
    fn atom_returns_average_the_reward_over_each_atom() {
        // Two atoms: one all hanging still, one all upright still; Stay Right is 0 at both, the
        // velocity penalty 0, and No Action Penalty −π² and 0.
        let down = observation(PI, 0.0).map(|v| v as f32);
        let up = observation(0.0, 0.0).map(|v| v as f32);
        let samples: Vec<f32> = [down; 4].iter().chain([up; 4].iter()).flatten().copied().collect();
        let mut r = rng::stream(0, &["t".into()]);
        let got = atom_returns(&config(), &samples, 2, Reward::NoActionPenalty, 0.95, &mut r);
        assert!((got[0] + PI * PI / 0.05).abs() < 1e-3, "{got:?}");
        assert!(got[1].abs() < 1e-9);
    }
}
