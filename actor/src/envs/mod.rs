//! The simulators. Pure domain code: no gRPC, no tokio, no I/O.
//!
//! Layout:
//! - [`config`]: env ids and the typed `[env]` section, with per-id defaults;
//! - [`geometry`], [`arena`]: the plane, walls and RatInABox's `Environment`;
//! - [`normal`]: Φ, Φ⁻¹ and the Rayleigh ↔ normal speed transform;
//! - [`motion`]: RatInABox's `Agent` for E agents (structure of arrays);
//! - [`place_cells`]: RatInABox's `PlaceCells`;
//! - [`teleport`]: the teleport motion of `riab-teleport` (a not-a-knot spline or i.i.d. jumps);
//! - [`riab`]: arena + agents + cells as one vectorised env;
//! - [`pendulum`]: gymnasium Pendulum-v1 with its data policy.
//!
//! Every env writes one row per call to `step` into a caller-owned [`Frame`], so stepping
//! allocates nothing.

pub mod arena;
pub mod config;
pub mod geometry;
pub mod motion;
pub mod normal;
pub mod pendulum;
pub mod place_cells;
pub mod riab;
pub mod teleport;

pub use config::{EnvConfig, EnvId};

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
    /// Builds `num_envs` envs of actor `actor_id` in the experiment seeded `seed`.
    pub fn new(config: &EnvConfig, seed: u64, actor_id: u64, num_envs: usize) -> VecEnv {
        match config {
            EnvConfig::Riab(c) => VecEnv::Riab(riab::RiabEnv::new(c, seed, actor_id, num_envs)),
            EnvConfig::Pendulum(c) => VecEnv::Pendulum(pendulum::PendulumEnv::new(c, seed, actor_id, num_envs)),
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
                EnvShape { obs_dim: e.obs_dim(), action_dim: 0, has_positions: true, has_rewards: false }
            }
            VecEnv::Pendulum(_) => EnvShape { obs_dim: 3, action_dim: 1, has_positions: false, has_rewards: true },
        }
    }

    /// A frame sized for this env.
    pub fn new_frame(&self) -> Frame {
        let s = self.shape();
        Frame::new(self.num_envs(), s.obs_dim, s.action_dim, s.has_positions, s.has_rewards)
    }

    /// Writes the next row of every env into `frame`.
    pub fn step(&mut self, frame: &mut Frame) {
        match self {
            VecEnv::Riab(e) => e.step(frame, None),
            VecEnv::Pendulum(e) => e.step(frame),
        }
    }
}
