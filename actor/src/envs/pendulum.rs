//! gymnasium's Pendulum-v1 for E envs at once, driven by a noisy energy-shaping swing-up policy.
//!
//! Dynamics (gymnasium 0.29.1 `classic_control/pendulum.py`), θ = 0 upright:
//! `θ̇' = clip(θ̇ + (3g/2l · sin θ + 3/(ml²) · u)·dt, ±max_speed)`, `θ' = θ + θ̇'·dt`, u clipped to
//! ±max_torque, reward `−(norm(θ)² + 0.1θ̇² + 0.001u²)` on the state *before* the step. Reset:
//! θ ~ U[−π, π], θ̇ ~ U[−1, 1]. Observation `[cos θ, sin θ, θ̇]`.
//!
//! Stream layout (the reference's, `dsm-algorithm.md` §5.1): the reset observation is a FIRST
//! row (reward 0, action 0), then `max_episode_steps` steps follow, the last of which is LAST, and
//! the next row is the FIRST of a new episode: 201 rows per episode by default. Row t's action and
//! reward are those of the transition that produced row t, as in dm_env's `TimeStep`.
//!
//! The data policy: with E = ½θ̇² + (3g/2l)(cos θ − 1) (zero at upright rest; the dynamics give
//! dE/dt = 3/(ml²)·θ̇·u), pumping `u = −k·E·θ̇` drives E to 0; within `balance_angle` of upright,
//! a PD law `u = −k_p θ − k_d θ̇` holds it there. Gaussian noise of std σ is added to every action
//! before clipping, so the data cover the whole swing.

use std::f64::consts::{PI, TAU};

use rand::Rng;
use rand_distr::StandardNormal;

use common::rng::{self, StreamRng};

use super::config::PendulumConfig;
use super::{Frame, StepType};

pub struct PendulumEnv {
    config: PendulumConfig,
    theta: Vec<f64>,
    theta_dot: Vec<f64>,
    /// Steps taken in the current episode; `None` when the next row is a reset.
    elapsed: Vec<Option<u32>>,
    rngs: Vec<StreamRng>,
}

/// θ wrapped into [−π, π) (gymnasium's `angle_normalize`).
pub fn angle_normalize(x: f64) -> f64 {
    (x + PI).rem_euclid(TAU) - PI
}

impl PendulumEnv {
    pub fn new(config: &PendulumConfig, seed: u64, actor_id: u64, num_envs: usize) -> PendulumEnv {
        PendulumEnv {
            config: config.clone(),
            theta: vec![0.0; num_envs],
            theta_dot: vec![0.0; num_envs],
            elapsed: vec![None; num_envs],
            rngs: (0..num_envs).map(|i| rng::stream(seed, &["actor".into(), actor_id.into(), i.into()])).collect(),
        }
    }

    pub fn num_envs(&self) -> usize {
        self.theta.len()
    }

    /// The policy's action at (θ, θ̇), before noise and clipping.
    pub fn policy_mean(&self, theta: f64, theta_dot: f64) -> f64 {
        policy_mean(&self.config, theta, theta_dot)
    }

    /// One gymnasium step of env e under torque `u` (clipped here); returns the reward.
    fn physics(&mut self, e: usize, u: f64) -> f64 {
        let (th, thd, reward) = physics(&self.config, self.theta[e], self.theta_dot[e], u);
        self.theta[e] = th;
        self.theta_dot[e] = thd;
        reward
    }

    /// Writes the next row of every env into `frame`.
    pub fn step(&mut self, frame: &mut Frame) {
        for e in 0..self.num_envs() {
            let (action, reward, step_type) = match self.elapsed[e] {
                None => {
                    let rng = &mut self.rngs[e];
                    self.theta[e] = rng.random_range(-PI..PI);
                    self.theta_dot[e] = rng.random_range(-1.0..1.0);
                    self.elapsed[e] = Some(0);
                    (0.0, 0.0, StepType::First)
                }
                Some(k) => {
                    let u = policy_action(&self.config, self.theta[e], self.theta_dot[e], &mut self.rngs[e]);
                    let reward = self.physics(e, u);
                    let k = k + 1;
                    if k >= self.config.max_episode_steps {
                        self.elapsed[e] = None;
                        (u, reward, StepType::Last)
                    } else {
                        self.elapsed[e] = Some(k);
                        (u, reward, StepType::Mid)
                    }
                }
            };
            let (th, thd) = (self.theta[e], self.theta_dot[e]);
            frame.observations[3 * e] = th.cos() as f32;
            frame.observations[3 * e + 1] = th.sin() as f32;
            frame.observations[3 * e + 2] = thd as f32;
            frame.actions[e] = action as f32;
            frame.rewards[e] = reward as f32;
            frame.step_types[e] = step_type;
        }
    }
}

/// The data policy's action at (θ, θ̇), before noise and clipping: energy pumping, or PD balancing
/// near upright (module docs).
pub fn policy_mean(c: &PendulumConfig, theta: f64, theta_dot: f64) -> f64 {
    let p = &c.policy;
    let th = angle_normalize(theta);
    if th.abs() < p.balance_angle {
        return -p.balance_kp * th - p.balance_kd * theta_dot;
    }
    let energy = 0.5 * theta_dot * theta_dot + 1.5 * c.g / c.l * (th.cos() - 1.0);
    -p.energy_gain * energy * theta_dot
}

/// The data policy's stochastic action at (θ, θ̇): the mean plus Gaussian noise, clipped to the
/// torque limit. Recording and the evaluator's Monte-Carlo rollouts both draw actions here.
pub fn policy_action<R: Rng>(c: &PendulumConfig, theta: f64, theta_dot: f64, rng: &mut R) -> f64 {
    let xi: f64 = rng.sample(StandardNormal);
    (policy_mean(c, theta, theta_dot) + c.policy.noise_std * xi).clamp(-c.max_torque, c.max_torque)
}

/// One gymnasium step from (θ, θ̇) under torque `u` (clipped here): the new (θ, θ̇) and the reward
/// `−(norm(θ)² + 0.1θ̇² + 0.001u²)` of the state before the step.
pub fn physics(c: &PendulumConfig, th: f64, thd: f64, u: f64) -> (f64, f64, f64) {
    let u = u.clamp(-c.max_torque, c.max_torque);
    let cost = angle_normalize(th).powi(2) + 0.1 * thd * thd + 0.001 * u * u;
    let new_thd =
        (thd + (1.5 * c.g / c.l * th.sin() + 3.0 / (c.m * c.l * c.l) * u) * c.dt).clamp(-c.max_speed, c.max_speed);
    (th + new_thd * c.dt, new_thd, -cost)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envs::config::{EnvConfig, EnvId};

    fn config() -> PendulumConfig {
        match EnvConfig::defaults(EnvId::Pendulum) {
            EnvConfig::Pendulum(c) => c,
            _ => unreachable!(),
        }
    }

    /// gymnasium's step, worked by hand: θ = 1, θ̇ = 0.5, u = 1.5, dt 0.05, g 10.
    #[test]
    fn physics_matches_gymnasium() {
        let mut env = PendulumEnv::new(&config(), 0, 0, 1);
        env.theta[0] = 1.0;
        env.theta_dot[0] = 0.5;
        let r = env.physics(0, 1.5);
        let thd = 0.5 + (15.0 * 1f64.sin() + 3.0 * 1.5) * 0.05;
        assert!((env.theta_dot[0] - thd).abs() < 1e-15);
        assert!((env.theta[0] - (1.0 + thd * 0.05)).abs() < 1e-15);
        assert!((r + (1.0 + 0.1 * 0.25 + 0.001 * 2.25)).abs() < 1e-15);
        // Torque and speed clipping.
        env.theta[0] = 0.0;
        env.theta_dot[0] = 7.9;
        let r = env.physics(0, 5.0);
        assert_eq!(env.theta_dot[0], 8.0);
        assert!((r + (0.1 * 7.9 * 7.9 + 0.001 * 4.0)).abs() < 1e-12);
        assert!((angle_normalize(3.5 * PI) + 0.5 * PI).abs() < 1e-12);
    }

    #[test]
    fn stream_layout_is_first_mids_last() {
        let mut c = config();
        c.max_episode_steps = 5;
        let mut env = PendulumEnv::new(&c, 1, 0, 2);
        let mut frame = Frame::new(2, 3, 1, false, true);
        let mut types = Vec::new();
        for _ in 0..13 {
            env.step(&mut frame);
            types.push(frame.step_types[1] as u8);
            if frame.step_types[1] == StepType::First {
                assert_eq!((frame.rewards[1], frame.actions[1]), (0.0, 0.0));
            } else {
                assert!(frame.rewards[1] <= 0.0 && frame.actions[1].abs() <= 2.0);
            }
            let o = &frame.observations[3..6];
            assert!((o[0] * o[0] + o[1] * o[1] - 1.0).abs() < 1e-6);
        }
        assert_eq!(types, [0, 1, 1, 1, 1, 2, 0, 1, 1, 1, 1, 2, 0]);
    }

    /// Without noise, the controller swings the pendulum up from hanging and holds it there.
    #[test]
    fn the_policy_swings_up_and_balances() {
        let mut c = config();
        c.policy.noise_std = 0.0;
        let mut env = PendulumEnv::new(&c, 2, 0, 16);
        let mut frame = Frame::new(16, 3, 1, false, true);
        let mut upright_at_end = 0;
        for t in 0..=c.max_episode_steps {
            env.step(&mut frame);
            if t == c.max_episode_steps {
                upright_at_end = (0..16).filter(|&e| angle_normalize(env.theta[e]).abs() < 0.1).count();
            }
        }
        assert_eq!(upright_at_end, 16, "every episode ends balanced");
    }
}
