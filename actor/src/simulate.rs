//! Offline simulation: run an env for N rows and write a NumPy `.npz` dataset.
//!
//! The archive (format version 1) holds, with E independent streams (rows) of N steps:
//! - `observations` (E, N, S) float32: place-cell rates, or `[cos θ, sin θ, θ̇]` for Pendulum;
//! - `positions` (E, N, 2), `centres` (K, 2) and `widths` (K,) float32, for arena envs;
//! - `actions` (E, N, A) and `rewards` (E, N) float32, where the env has them;
//! - `step_type` (E, N) uint8: 0 FIRST, 1 MID, 2 LAST;
//! - `meta`: JSON with the format version, env id, dt, seed, sizes and the full env config.
//!
//! A RatInABox stream is one episode; its last row is marked LAST, as the thesis's RANDOM,
//! highTH and walls scripts do (its lowTH and teleport scripts left it MID; one row in 24,000).
//! Pendulum and `riab-goal` rows keep the env's own episode boundaries; `riab-goal` records with
//! its frozen policy ([`SimulateSpec::policy`], from `crate::goal_policy`), and `meta` then says
//! how that policy was trained.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use common::npz::{write_npz, NpyArray};

use crate::envs::{EnvConfig, EnvId, GoalPolicy, StepType, VecEnv};
use crate::goal_policy::PolicyReport;

/// The format version written into `meta`.
pub const FORMAT_VERSION: u32 = 1;

/// Refuse datasets whose arrays would not comfortably fit in memory.
const MAX_BYTES: u64 = 8 << 30;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimulateSpec {
    pub env: EnvId,
    pub config: EnvConfig,
    pub seed: u64,
    pub actor_id: u64,
    pub num_envs: usize,
    pub steps: usize,
    /// `riab-goal`'s trained policy and how it was obtained (required for it, refused otherwise).
    pub policy: Option<(Arc<GoalPolicy>, PolicyReport)>,
}

/// A simulated dataset, arrays laid out as in the archive.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub num_envs: usize,
    pub steps: usize,
    pub obs_dim: usize,
    pub observations: Vec<f32>,
    pub positions: Option<Vec<f32>>,
    pub actions: Option<(usize, Vec<f32>)>,
    pub rewards: Option<Vec<f32>>,
    pub step_types: Vec<u8>,
    /// (centres flattened K × 2, widths) for arena envs.
    pub cells: Option<(Vec<f32>, Vec<f32>)>,
    pub meta: serde_json::Value,
}

impl SimulateSpec {
    /// Bytes the dataset will occupy in memory.
    pub fn bytes(&self) -> u64 {
        let s = VecEnv::shape_of(&self.config);
        let per_row =
            (s.obs_dim + 2 * usize::from(s.has_positions) + s.action_dim + usize::from(s.has_rewards)) * 4 + 1;
        per_row as u64 * self.steps as u64 * self.num_envs as u64
    }

    /// Refuses empty or oversized datasets before any work is done.
    pub fn check(&self) -> Result<()> {
        if self.steps == 0 || self.num_envs == 0 {
            bail!("--steps and --envs must be at least 1");
        }
        let bytes = self.bytes();
        if bytes > MAX_BYTES {
            bail!(
                "{} envs × {} steps needs {:.1} GiB in memory (limit {} GiB); write several smaller archives",
                self.num_envs,
                self.steps,
                bytes as f64 / f64::from(1 << 30),
                MAX_BYTES >> 30
            );
        }
        Ok(())
    }

    /// Runs the simulation. `progress(rows_done)` is called about once a second.
    pub fn run(&self, mut progress: impl FnMut(usize)) -> Result<Dataset> {
        self.check()?;
        let (e_n, n) = (self.num_envs, self.steps);
        let policy = self.policy.as_ref().map(|(p, _)| p.clone());
        let mut env = VecEnv::new(&self.config, self.seed, self.actor_id, e_n, policy)?;
        let shape = env.shape();
        let s = shape.obs_dim;
        let a = shape.action_dim;
        let mut frame = env.new_frame();
        let mut obs = vec![0f32; e_n * n * s];
        let mut pos = if shape.has_positions { vec![0f32; e_n * n * 2] } else { Vec::new() };
        let mut act = vec![0f32; e_n * n * a];
        let mut rew = if shape.has_rewards { vec![0f32; e_n * n] } else { Vec::new() };
        let mut types = vec![0u8; e_n * n];
        let mut last_report = Instant::now();
        for t in 0..n {
            env.step(&mut frame);
            for e in 0..e_n {
                let row = e * n + t;
                obs[row * s..(row + 1) * s].copy_from_slice(&frame.observations[e * s..(e + 1) * s]);
                if shape.has_positions {
                    pos[row * 2..row * 2 + 2].copy_from_slice(&frame.positions[e * 2..e * 2 + 2]);
                }
                if a > 0 {
                    act[row * a..(row + 1) * a].copy_from_slice(&frame.actions[e * a..(e + 1) * a]);
                }
                if shape.has_rewards {
                    rew[row] = frame.rewards[e];
                }
                types[row] = frame.step_types[e] as u8;
            }
            if last_report.elapsed() >= Duration::from_secs(1) {
                progress(t + 1);
                last_report = Instant::now();
            }
        }
        if !env.has_episodes() {
            for e in 0..e_n {
                types[e * n + n - 1] = StepType::Last as u8;
            }
        }
        let cells = match &env {
            VecEnv::Riab(r) => Some((
                r.cells().centres().iter().flat_map(|c| [c.x as f32, c.y as f32]).collect(),
                r.cells().widths().iter().map(|&w| w as f32).collect(),
            )),
            VecEnv::Pendulum(_) => None,
        };
        let config_json = match &self.config {
            EnvConfig::Riab(c) => serde_json::to_value(c),
            EnvConfig::Pendulum(c) => serde_json::to_value(c),
        }
        .context("serialising the env config")?;
        let mut meta = serde_json::json!({
            "format_version": FORMAT_VERSION,
            "env": self.env.as_str(),
            "dt": self.config.dt(),
            "seed": self.seed,
            "actor_id": self.actor_id,
            "num_envs": e_n,
            "steps": n,
            "obs_dim": s,
            "env_config": config_json,
            "producer": format!("actor simulate {}", env!("CARGO_PKG_VERSION")),
        });
        if let Some((_, r)) = &self.policy {
            meta["goal_policy"] = serde_json::json!({
                "cache_file": r.path.file_name().map(|f| f.to_string_lossy().into_owned()),
                "episodes": r.episodes,
                "success_rate": r.success_rate,
                "window": r.window,
                "converged": r.converged,
                "train_seconds": r.train_seconds,
            });
        }
        Ok(Dataset {
            num_envs: e_n,
            steps: n,
            obs_dim: s,
            observations: obs,
            positions: shape.has_positions.then_some(pos),
            actions: (a > 0).then_some((a, act)),
            rewards: shape.has_rewards.then_some(rew),
            step_types: types,
            cells,
            meta,
        })
    }
}

impl Dataset {
    /// Writes the archive, consuming the arrays (atomically: a temporary file renamed into place).
    pub fn write(self, path: &Path) -> Result<()> {
        let (e, n) = (self.num_envs, self.steps);
        let mut arrays: Vec<(&str, NpyArray)> =
            vec![("observations", NpyArray::f32(vec![e, n, self.obs_dim], self.observations))];
        if let Some(p) = self.positions {
            arrays.push(("positions", NpyArray::f32(vec![e, n, 2], p)));
        }
        if let Some((a, act)) = self.actions {
            arrays.push(("actions", NpyArray::f32(vec![e, n, a], act)));
        }
        if let Some(r) = self.rewards {
            arrays.push(("rewards", NpyArray::f32(vec![e, n], r)));
        }
        arrays.push(("step_type", NpyArray::u8(vec![e, n], self.step_types)));
        if let Some((centres, widths)) = self.cells {
            arrays.push(("centres", NpyArray::f32(vec![widths.len(), 2], centres)));
            arrays.push(("widths", NpyArray::f32(vec![widths.len()], widths)));
        }
        arrays.push(("meta", NpyArray::string(self.meta.to_string())));
        let refs: Vec<(&str, &NpyArray)> = arrays.iter().map(|(k, v)| (*k, v)).collect();
        write_npz(path, &refs).with_context(|| format!("writing {}", path.display()))
    }
}
