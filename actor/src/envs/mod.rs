//! The simulators. Pure domain code: no gRPC, no tokio, no I/O.
//!
//! Layout:
//! - [`config`]: env ids and the typed `[env]` section, with per-id defaults;
//! - [`geometry`], [`arena`]: the plane, walls and RatInABox's `Environment`;
//! - [`normal`]: Φ, Φ⁻¹ and the Rayleigh ↔ normal speed transform;
//! - [`motion`]: RatInABox's `Agent` for E agents (structure of arrays);
//! - [`place_cells`]: RatInABox's `PlaceCells`;
//! - [`teleport`]: the teleport motion of `riab-teleport` (a not-a-knot spline or i.i.d. jumps);
//! - [`actor_critic`]: the continuous-time actor–critic (plain f64 MLPs, traces, TD updates);
//! - [`goal`]: `riab-goal`'s task, the training of its policy, and recording with it;
//! - [`riab`]: arena + agents + cells as one vectorised env;
//! - [`pendulum`]: gymnasium Pendulum-v1 with its data policy.
//!
//! Every env writes one row per call to `step` into a caller-owned [`Frame`], so stepping
//! allocates nothing.

pub mod actor_critic;
pub mod arena;
pub mod config;
pub mod geometry;
pub mod goal;
pub mod motion;
pub mod normal;
pub mod pendulum;
pub mod place_cells;
pub mod riab;
pub mod teleport;

use std::sync::Arc;

pub use actor_critic::GoalPolicy;
pub use config::{EnvConfig, EnvId};

/// Why a [`VecEnv`] cannot be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EnvError {
    /// `riab-goal` is driven by a trained policy; it never falls back to a random walk.
    #[error("riab-goal needs its trained policy (actor::goal_policy::load_or_train)")]
    MissingPolicy,
    #[error("a goal policy was given for an env without a goal")]
    UnexpectedPolicy,
    #[error("the goal policy does not fit this env: {0}")]
    BadPolicy(String),
}

/// dm_env's step types, with the same codes as the reference datasets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum StepType {
    #[default]
    First = 0,
    Mid = 1,
    Last = 2,
}

/// One row of E envs, flat and row-major.
#[derive(Debug, Clone, Default)]
pub struct Frame {
    /// E × S: the learner's state.
    pub observations: Vec<f32>,
    /// E × 2 positions, for arena envs (empty otherwise).
    pub positions: Vec<f32>,
    /// E × A actions, where the env has them (empty otherwise).
    pub actions: Vec<f32>,
    /// E rewards, where the env has them (empty otherwise).
    pub rewards: Vec<f32>,
    pub step_types: Vec<StepType>,
}

impl Frame {
    pub fn new(num_envs: usize, obs_dim: usize, action_dim: usize, positions: bool, rewards: bool) -> Frame {
        Frame {
            observations: vec![0.0; num_envs * obs_dim],
            positions: if positions { vec![0.0; num_envs * 2] } else { Vec::new() },
            actions: vec![0.0; num_envs * action_dim],
            rewards: if rewards { vec![0.0; num_envs] } else { Vec::new() },
            step_types: vec![StepType::First; num_envs],
        }
    }
}

/// What an env id produces, per env and per row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvShape {
    pub obs_dim: usize,
    /// 0 when the env has no actions.
    pub action_dim: usize,
    pub has_positions: bool,
    pub has_rewards: bool,
}

/// Any env, vectorised over E instances.
// One per process, so boxing the larger variant would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum VecEnv {
    Riab(riab::RiabEnv),
    Pendulum(pendulum::PendulumEnv),
}

impl VecEnv {
    /// Builds `num_envs` envs of actor `actor_id` in the experiment seeded `seed`. `policy` is the
    /// trained goal policy, required by `riab-goal` and refused by every other env.
    pub fn new(
        config: &EnvConfig,
        seed: u64,
        actor_id: u64,
        num_envs: usize,
        policy: Option<Arc<GoalPolicy>>,
    ) -> Result<VecEnv, EnvError> {
        let has_goal = matches!(config, EnvConfig::Riab(c) if c.goal.is_some());
        match (config, policy) {
            (EnvConfig::Riab(c), Some(p)) if has_goal => {
                riab::RiabEnv::with_goal_policy(c, seed, actor_id, num_envs, p)
                    .map(VecEnv::Riab)
                    .map_err(EnvError::BadPolicy)
            }
            (_, None) if has_goal => Err(EnvError::MissingPolicy),
            (_, Some(_)) => Err(EnvError::UnexpectedPolicy),
            (EnvConfig::Riab(c), None) => Ok(VecEnv::Riab(riab::RiabEnv::new(c, seed, actor_id, num_envs))),
            (EnvConfig::Pendulum(c), None) => {
                Ok(VecEnv::Pendulum(pendulum::PendulumEnv::new(c, seed, actor_id, num_envs)))
            }
        }
    }

    /// The shape of the env `config` builds, without building it.
    pub fn shape_of(config: &EnvConfig) -> EnvShape {
        match config {
            EnvConfig::Riab(c) => {
                EnvShape { obs_dim: c.cells.n, action_dim: 0, has_positions: true, has_rewards: c.goal.is_some() }
            }
            EnvConfig::Pendulum(_) => EnvShape { obs_dim: 3, action_dim: 1, has_positions: false, has_rewards: true },
        }
    }

    pub fn num_envs(&self) -> usize {
        match self {
            VecEnv::Riab(e) => e.num_envs(),
            VecEnv::Pendulum(e) => e.num_envs(),
        }
    }

    pub fn shape(&self) -> EnvShape {
        match self {
            VecEnv::Riab(e) => {
                EnvShape { obs_dim: e.obs_dim(), action_dim: 0, has_positions: true, has_rewards: e.has_rewards() }
            }
            VecEnv::Pendulum(_) => EnvShape { obs_dim: 3, action_dim: 1, has_positions: false, has_rewards: true },
        }
    }

    /// A frame sized for this env.
    pub fn new_frame(&self) -> Frame {
        let s = self.shape();
        Frame::new(self.num_envs(), s.obs_dim, s.action_dim, s.has_positions, s.has_rewards)
    }

    /// Whether the env cuts its streams into episodes itself (Pendulum, `riab-goal`); otherwise
    /// a stream is one endless episode and whoever cuts it places the LAST.
    pub fn has_episodes(&self) -> bool {
        match self {
            VecEnv::Riab(e) => e.has_rewards(),
            VecEnv::Pendulum(_) => true,
        }
    }

    /// Writes the next row of every env into `frame`.
    pub fn step(&mut self, frame: &mut Frame) {
        match self {
            VecEnv::Riab(e) => e.step(frame, None),
            VecEnv::Pendulum(e) => e.step(frame),
        }
    }
}
