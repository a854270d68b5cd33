//! The typed `[env]` section: one schema per env family, with defaults per env id.
//!
//! `[env]` is resolved in three layers: the defaults of the env id (the RatInABox defaults plus
//! the thesis recipe of `ratinabox-spec.md` §4.2, or gymnasium's Pendulum-v1), then the
//! experiment file's `[env]`, then `--set env.key=value`. Every field is a config value, so the
//! number of cells, their widths and tuning, dt and thigmotaxis change without code edits. Unknown
//! keys are refused (a typo must not silently fall back to a default).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

use common::config::{merge, to_table, typed, ConfigError};

/// The env ids this crate simulates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EnvId {
    /// Random foraging, thigmotaxis 0.2 (thesis "random").
    RiabRandom,
    /// Random foraging, thigmotaxis 0 (thesis "lowTH").
    RiabLowTh,
    /// Random foraging, thigmotaxis 1 (thesis "highTH").
    RiabHighTh,
    /// Random foraging with a wall from (0.4, 0) to (0.4, 0.9), thigmotaxis 0.2 (thesis "walls").
    RiabWalls,
    /// A cubic spline through uniform random points, 12,000 per 1200 s (thesis "teleport").
    RiabTeleport,
    /// Goal seeking at (0.5, 0.5) under a learned actor–critic drift policy, dt 0.1 (thesis "goal").
    RiabGoal,
    /// gymnasium Pendulum-v1 under a noisy energy-shaping swing-up controller.
    Pendulum,
}

impl EnvId {
    pub const ALL: [EnvId; 7] = [
        EnvId::RiabRandom,
        EnvId::RiabLowTh,
        EnvId::RiabHighTh,
        EnvId::RiabWalls,
        EnvId::RiabTeleport,
        EnvId::RiabGoal,
        EnvId::Pendulum,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EnvId::RiabRandom => "riab-random",
            EnvId::RiabLowTh => "riab-lowth",
            EnvId::RiabHighTh => "riab-highth",
            EnvId::RiabWalls => "riab-walls",
            EnvId::RiabTeleport => "riab-teleport",
            EnvId::RiabGoal => "riab-goal",
            EnvId::Pendulum => "pendulum",
        }
    }

    pub fn is_riab(self) -> bool {
        !matches!(self, EnvId::Pendulum)
    }
}

impl fmt::Display for EnvId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EnvId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        EnvId::ALL.into_iter().find(|id| id.as_str() == s).ok_or_else(|| {
            let known: Vec<&str> = EnvId::ALL.iter().map(|id| id.as_str()).collect();
            format!("unknown env id `{s}` (known: {})", known.join(", "))
        })
    }
}

/// Solid walls or a torus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BoundaryConditions {
    Solid,
    Periodic,
}

/// `[env.arena]`: the box, RatInABox's `Environment`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArenaConfig {
    /// Height of the default rectangular box (m).
    pub scale: f64,
    /// Width / height of the default rectangular box.
    pub aspect: f64,
    /// A simple polygon `[[x, y], …]` replacing the rectangle (solid boundaries only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boundary: Option<Vec<[f64; 2]>>,
    pub boundary_conditions: BoundaryConditions,
    /// Extra walls, each a segment `[[x0, y0], [x1, y1]]`.
    pub walls: Vec<[[f64; 2]; 2]>,
}

/// The tuning curve of a place cell, as a function of distance r and width w.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tuning {
    Gaussian,
    GaussianThreshold,
    DiffOfGaussians,
    TopHat,
    OneHot,
}

/// How walls enter the distance between a cell's centre and the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WallGeometry {
    Euclidean,
    LineOfSight,
    Geodesic,
}

/// One width for every cell, or one per cell (m).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Widths {
    One(f64),
    PerCell(Vec<f64>),
}

/// How centres are laid out: by a RatInABox sampling method, or listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CentreMethod {
    UniformJitter,
    Uniform,
    Random,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Centres {
    Method(CentreMethod),
    Explicit(Vec<[f64; 2]>),
}

/// `[env.cells]`: RatInABox `PlaceCells`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CellsConfig {
    pub n: usize,
    pub description: Tuning,
    pub widths: Widths,
    pub centres: Centres,
    pub wall_geometry: WallGeometry,
    pub min_fr: f64,
    pub max_fr: f64,
    /// Std of additive OU noise on the rates (Hz); 0 turns it off.
    pub noise_std: f64,
    pub noise_coherence_time: f64,
}

/// How `riab-teleport` moves the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TeleportMode {
    /// RatInABox's `import_trajectory`: a not-a-knot cubic spline through uniform random points.
    Spline,
    /// A fresh uniform position every step: true i.i.d. jumps.
    Iid,
}

/// `[env.teleport]`: the thesis's "teleport" motion (`ratinabox-spec.md` §4.2), which replaces
/// the random walk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeleportConfig {
    pub mode: TeleportMode,
    /// Random points per block, at `np.linspace(0, period, points)` (spline mode; at least 4).
    pub points: usize,
    /// Seconds one block of points spans; a new block starts every `period` seconds.
    pub period: f64,
    /// Repeat the first block for ever, as the thesis's `t % t_max` looped its one trajectory,
    /// instead of drawing a new block every period.
    #[serde(rename = "loop")]
    pub repeat: bool,
}

/// `[env.goal.policy]`: the continuous-time actor–critic that drives `riab-goal` (RatInABox's
/// `demos/actor_critic_example.ipynb`, as `dsm-hippocampus` `actor_critic_rat.py` uses it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoalPolicyConfig {
    /// Hidden width of the actor MLP (place-cell rates → hidden (ReLU) → 2).
    pub actor_hidden: usize,
    /// Hidden widths of the critic MLP (rates → … → 1).
    pub critic_hidden: Vec<usize>,
    /// The actor's mean action is `action_scale · tanh(·)` (m/s).
    pub action_scale: f64,
    /// Std of the Gaussian exploration noise on each action component (m/s).
    pub action_noise_std: f64,
    /// τ of the TD error `δ = r + dV/dt − V/τ` (s).
    pub td_tau: f64,
    /// Time constant of the eligibility traces (s).
    pub trace_tau: f64,
    /// SGD learning rate of actor and critic.
    pub learning_rate: f64,
    /// Training stops after this many episodes at most.
    pub max_episodes: usize,
    /// An episode that has not reached the goal after this long (s) fails.
    pub episode_timeout: f64,
    /// Training stops when more than `success_rate` of the last `success_window` episodes succeed.
    pub success_window: usize,
    pub success_rate: f64,
}

/// `[env.goal]`: `riab-goal`'s task (`SpatialGoalEnvironment` of the thesis recipe).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoalConfig {
    /// Centre of the goal (m).
    pub position: [f64; 2],
    /// The goal is reached within this distance of its centre (m).
    pub radius: f64,
    /// Reward per step while the reward is active.
    pub reward: f64,
    /// The reward stays on this long after the goal is reached (s; `Reward(expire_clock=1)`).
    pub reward_duration: f64,
    /// The episode ends this long after the goal is reached, and the agent is teleported to a
    /// uniform random position (s; `episode_terminate_delay`).
    pub reset_delay: f64,
    pub policy: GoalPolicyConfig,
}

/// `[env]` for the RatInABox family: the `Agent` parameters plus the arena and the cells.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RiabConfig {
    /// Time step (s).
    pub dt: f64,
    /// Wall-hugging tendency in [0, 1].
    pub thigmotaxis: f64,
    /// Rayleigh σ of the speed in 2-D (m/s); the mean speed is σ√(π/2).
    pub speed_mean: f64,
    /// Only its being 0 matters in 2-D: then the speed is pinned to `speed_mean`.
    pub speed_std: f64,
    pub speed_coherence_time: f64,
    /// Stationary std of the rotational velocity OU (rad/s; RatInABox's 120°/s).
    pub rotational_velocity_std: f64,
    pub rotational_velocity_coherence_time: f64,
    pub head_direction_smoothing_timescale: f64,
    pub wall_repel_distance: f64,
    pub wall_repel_strength: f64,
    pub arena: ArenaConfig,
    pub cells: CellsConfig,
    /// `riab-teleport` only: teleport motion instead of the random walk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teleport: Option<TeleportConfig>,
    /// `riab-goal` only: the goal task and its learned drift policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub goal: Option<GoalConfig>,
}

/// `[env.policy]` for Pendulum: the data policy.
///
/// An energy-shaping swing-up controller (Åström & Furuta 2000) with a PD balancer near the top,
/// plus Gaussian action noise, clipped to the torque limit. Its gains are config values because the
/// Monte-Carlo ground truth of an evaluation depends on them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwingUpConfig {
    /// k in `u = −k·E·θ̇`, where E is the energy relative to upright rest.
    pub energy_gain: f64,
    /// Within this |θ| (rad) of upright, a PD controller takes over.
    pub balance_angle: f64,
    pub balance_kp: f64,
    pub balance_kd: f64,
    /// Std of the Gaussian noise added to every action before clipping (N·m).
    pub noise_std: f64,
}

/// `[env]` for `pendulum`: gymnasium Pendulum-v1's constants.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PendulumConfig {
    pub dt: f64,
    pub g: f64,
    pub m: f64,
    pub l: f64,
    pub max_speed: f64,
    pub max_torque: f64,
    /// The TimeLimit: an episode's LAST step comes after this many steps.
    pub max_episode_steps: u32,
    pub policy: SwingUpConfig,
}

/// A resolved `[env]`.
// Resolved once per process and passed by reference, so boxing the larger variant (the goal
// section made it so) would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum EnvConfig {
    Riab(RiabConfig),
    Pendulum(PendulumConfig),
}

impl EnvConfig {
    /// The defaults of an env id.
    pub fn defaults(id: EnvId) -> EnvConfig {
        match id {
            EnvId::Pendulum => EnvConfig::Pendulum(PendulumConfig {
                dt: 0.05,
                g: 10.0,
                m: 1.0,
                l: 1.0,
                max_speed: 8.0,
                max_torque: 2.0,
                max_episode_steps: 200,
                policy: SwingUpConfig {
                    energy_gain: 0.2,
                    balance_angle: 0.6,
                    balance_kp: 10.0,
                    balance_kd: 2.0,
                    noise_std: 0.3,
                },
            }),
            _ => {
                let (thigmotaxis, walls) = match id {
                    EnvId::RiabLowTh => (0.0, vec![]),
                    EnvId::RiabHighTh => (1.0, vec![]),
                    EnvId::RiabWalls => (0.2, vec![[[0.4, 0.0], [0.4, 0.9]]]),
                    // The teleport and goal scripts leave the Agent's defaults (thigmotaxis 0.5);
                    // teleport motion never reads it.
                    EnvId::RiabTeleport | EnvId::RiabGoal => (0.5, vec![]),
                    _ => (0.2, vec![]),
                };
                let teleport = (id == EnvId::RiabTeleport).then_some(TeleportConfig {
                    mode: TeleportMode::Spline,
                    points: 12_000,
                    period: 1200.0,
                    repeat: false,
                });
                let goal = (id == EnvId::RiabGoal).then(|| GoalConfig {
                    position: [0.5, 0.5],
                    radius: 0.1,
                    reward: 1.0,
                    reward_duration: 1.0,
                    reset_delay: 1.0,
                    policy: GoalPolicyConfig {
                        actor_hidden: 50,
                        critic_hidden: vec![20, 20],
                        action_scale: 0.5,
                        action_noise_std: 0.1,
                        td_tau: 5.0,
                        trace_tau: 5.0,
                        learning_rate: 0.01,
                        max_episodes: 5000,
                        episode_timeout: 15.0,
                        success_window: 50,
                        success_rate: 0.99,
                    },
                });
                let dt = if id == EnvId::RiabGoal { 0.1 } else { 0.05 };
                EnvConfig::Riab(RiabConfig {
                    dt,
                    thigmotaxis,
                    speed_mean: 0.08,
                    speed_std: 0.08,
                    speed_coherence_time: 0.7,
                    rotational_velocity_std: 120f64.to_radians(),
                    rotational_velocity_coherence_time: 0.08,
                    head_direction_smoothing_timescale: 0.15,
                    wall_repel_distance: 0.1,
                    wall_repel_strength: 1.0,
                    arena: ArenaConfig {
                        scale: 1.0,
                        aspect: 1.0,
                        boundary: None,
                        boundary_conditions: BoundaryConditions::Solid,
                        walls,
                    },
                    cells: CellsConfig {
                        n: 50,
                        description: Tuning::Gaussian,
                        widths: Widths::One(0.2),
                        centres: Centres::Method(CentreMethod::UniformJitter),
                        wall_geometry: WallGeometry::Geodesic,
                        min_fr: 0.0,
                        max_fr: 1.0,
                        noise_std: 0.0,
                        noise_coherence_time: 0.5,
                    },
                    teleport,
                    goal,
                })
            }
        }
    }

    /// Lays a raw `[env]` table over the defaults of `id` and validates the result.
    pub fn resolve(id: EnvId, env: &toml::Table) -> Result<EnvConfig, ConfigError> {
        let defaults = EnvConfig::defaults(id);
        let mut table = defaults.to_table();
        merge(&mut table, env);
        let config = match defaults {
            EnvConfig::Riab(_) => EnvConfig::Riab(typed("env", table)?),
            EnvConfig::Pendulum(_) => EnvConfig::Pendulum(typed("env", table)?),
        };
        let invalid = |message| ConfigError::Invalid { section: "env".into(), message };
        if let EnvConfig::Riab(c) = &config {
            if c.teleport.is_some() && id != EnvId::RiabTeleport {
                return Err(invalid(format!("env.teleport belongs to riab-teleport, not {id}")));
            }
            if c.goal.is_some() && id != EnvId::RiabGoal {
                return Err(invalid(format!("env.goal belongs to riab-goal, not {id}")));
            }
        }
        config.validate().map_err(invalid)?;
        Ok(config)
    }

    pub fn to_table(&self) -> toml::Table {
        match self {
            EnvConfig::Riab(c) => to_table(c),
            EnvConfig::Pendulum(c) => to_table(c),
        }
    }

    pub fn dt(&self) -> f64 {
        match self {
            EnvConfig::Riab(c) => c.dt,
            EnvConfig::Pendulum(c) => c.dt,
        }
    }

    /// Checks the ranges serde cannot; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        fn positive(key: &str, v: f64) -> Result<(), String> {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(format!("env.{key} must be a positive number, got {v}"))
            }
        }
        fn non_negative(key: &str, v: f64) -> Result<(), String> {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                Err(format!("env.{key} must be a finite number ≥ 0, got {v}"))
            }
        }
        match self {
            EnvConfig::Pendulum(c) => {
                for (k, v) in
                    [("dt", c.dt), ("m", c.m), ("l", c.l), ("max_speed", c.max_speed), ("max_torque", c.max_torque)]
                {
                    positive(k, v)?;
                }
                non_negative("g", c.g)?;
                if c.max_episode_steps == 0 {
                    return Err("env.max_episode_steps must be at least 1".into());
                }
                let p = &c.policy;
                for (k, v) in [
                    ("policy.energy_gain", p.energy_gain),
                    ("policy.balance_angle", p.balance_angle),
                    ("policy.balance_kp", p.balance_kp),
                    ("policy.balance_kd", p.balance_kd),
                    ("policy.noise_std", p.noise_std),
                ] {
                    non_negative(k, v)?;
                }
                Ok(())
            }
            EnvConfig::Riab(c) => {
                for (k, v) in [
                    ("dt", c.dt),
                    ("speed_coherence_time", c.speed_coherence_time),
                    ("rotational_velocity_coherence_time", c.rotational_velocity_coherence_time),
                    ("wall_repel_distance", c.wall_repel_distance),
                    ("arena.scale", c.arena.scale),
                    ("arena.aspect", c.arena.aspect),
                    ("cells.noise_coherence_time", c.cells.noise_coherence_time),
                ] {
                    positive(k, v)?;
                }
                for (k, v) in [
                    ("speed_mean", c.speed_mean),
                    ("speed_std", c.speed_std),
                    ("rotational_velocity_std", c.rotational_velocity_std),
                    ("head_direction_smoothing_timescale", c.head_direction_smoothing_timescale),
                    ("wall_repel_strength", c.wall_repel_strength),
                    ("cells.noise_std", c.cells.noise_std),
                ] {
                    non_negative(k, v)?;
                }
                if !(0.0..=1.0).contains(&c.thigmotaxis) {
                    return Err(format!("env.thigmotaxis must be in [0, 1], got {}", c.thigmotaxis));
                }
                if c.speed_mean == 0.0 {
                    return Err("env.speed_mean must be positive (it scales bounces and repulsion)".into());
                }
                if !(c.cells.min_fr.is_finite() && c.cells.max_fr.is_finite()) {
                    return Err("env.cells.min_fr and env.cells.max_fr must be finite".into());
                }
                if c.cells.n == 0 {
                    return Err("env.cells.n must be at least 1".into());
                }
                match &c.cells.widths {
                    Widths::One(w) => positive("cells.widths", *w)?,
                    Widths::PerCell(ws) => {
                        if ws.len() != c.cells.n {
                            return Err(format!(
                                "env.cells.widths lists {} widths but env.cells.n = {}",
                                ws.len(),
                                c.cells.n
                            ));
                        }
                        ws.iter().try_for_each(|w| positive("cells.widths", *w))?;
                    }
                }
                if let Centres::Explicit(cs) = &c.cells.centres {
                    if cs.len() != c.cells.n {
                        return Err(format!(
                            "env.cells.centres lists {} centres but env.cells.n = {}",
                            cs.len(),
                            c.cells.n
                        ));
                    }
                    if cs.iter().flatten().any(|v| !v.is_finite()) {
                        return Err("env.cells.centres must be finite".into());
                    }
                }
                for (i, w) in c.arena.walls.iter().enumerate() {
                    if w.iter().flatten().any(|v| !v.is_finite()) || w[0] == w[1] {
                        return Err(format!("env.arena.walls[{i}] must join two distinct finite points"));
                    }
                }
                if let Some(t) = &c.teleport {
                    positive("teleport.period", t.period)?;
                    if t.mode == TeleportMode::Spline && t.points < 4 {
                        return Err(format!(
                            "env.teleport.points must be at least 4 for a not-a-knot spline, got {}",
                            t.points
                        ));
                    }
                }
                if let Some(g) = &c.goal {
                    if g.position.iter().any(|v| !v.is_finite()) {
                        return Err("env.goal.position must be finite".into());
                    }
                    positive("goal.radius", g.radius)?;
                    if !g.reward.is_finite() {
                        return Err("env.goal.reward must be finite".into());
                    }
                    non_negative("goal.reward_duration", g.reward_duration)?;
                    non_negative("goal.reset_delay", g.reset_delay)?;
                    let p = &g.policy;
                    for (k, v) in [
                        ("goal.policy.action_scale", p.action_scale),
                        ("goal.policy.td_tau", p.td_tau),
                        ("goal.policy.trace_tau", p.trace_tau),
                        ("goal.policy.learning_rate", p.learning_rate),
                        ("goal.policy.episode_timeout", p.episode_timeout),
                    ] {
                        positive(k, v)?;
                    }
                    non_negative("goal.policy.action_noise_std", p.action_noise_std)?;
                    if p.actor_hidden == 0 || p.critic_hidden.contains(&0) {
                        return Err("env.goal.policy.actor_hidden and critic_hidden widths must be at least 1".into());
                    }
                    if p.max_episodes == 0 || p.success_window == 0 {
                        return Err("env.goal.policy.max_episodes and success_window must be at least 1".into());
                    }
                    if !(p.success_rate > 0.0 && p.success_rate <= 1.0) {
                        return Err(format!("env.goal.policy.success_rate must be in (0, 1], got {}", p.success_rate));
                    }
                }
                if let Some(b) = &c.arena.boundary {
                    if b.len() < 3 || b.iter().flatten().any(|v| !v.is_finite()) {
                        return Err("env.arena.boundary must list at least 3 finite vertices".into());
                    }
                    if c.arena.boundary_conditions == BoundaryConditions::Periodic {
                        return Err(
                            "env.arena.boundary_conditions = \"periodic\" needs the rectangular box (no env.arena.boundary)".into(),
                        );
                    }
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_and_print() {
        for id in EnvId::ALL {
            assert_eq!(id.as_str().parse::<EnvId>().unwrap(), id);
        }
        let err = "riab-wall".parse::<EnvId>().unwrap_err();
        assert!(err.contains("riab-wall") && err.contains("riab-walls"), "{err}");
    }

    #[test]
    fn defaults_follow_the_thesis_recipes() {
        let th = |id| match EnvConfig::defaults(id) {
            EnvConfig::Riab(c) => (c.thigmotaxis, c.arena.walls.len(), c.cells.n, c.dt),
            _ => unreachable!(),
        };
        assert_eq!(th(EnvId::RiabRandom), (0.2, 0, 50, 0.05));
        assert_eq!(th(EnvId::RiabLowTh), (0.0, 0, 50, 0.05));
        assert_eq!(th(EnvId::RiabHighTh), (1.0, 0, 50, 0.05));
        assert_eq!(th(EnvId::RiabWalls), (0.2, 1, 50, 0.05));
    }

    #[test]
    fn file_and_overrides_layer_over_defaults() {
        let table: toml::Table =
            "thigmotaxis = 0.5\n[cells]\nn = 3\nwidths = [0.1, 0.2, 0.3]\ndescription = \"top_hat\"\n".parse().unwrap();
        let EnvConfig::Riab(c) = EnvConfig::resolve(EnvId::RiabWalls, &table).unwrap() else { panic!() };
        assert_eq!(c.thigmotaxis, 0.5);
        assert_eq!(c.cells.n, 3);
        assert_eq!(c.cells.description, Tuning::TopHat);
        assert_eq!(c.cells.widths, Widths::PerCell(vec![0.1, 0.2, 0.3]));
        assert_eq!(c.arena.walls.len(), 1, "the id's wall stays");
        assert_eq!(c.speed_mean, 0.08);
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            ("thigmotaxs = 0.5", "thigmotaxs"),
            ("thigmotaxis = 1.5", "env.thigmotaxis"),
            ("dt = 0", "env.dt"),
            ("[cells]\nn = 2\nwidths = [0.1]", "env.cells.widths"),
            ("[cells]\ndescription = \"square\"", "square"),
            ("[arena]\nwalls = [[[0.1, 0.1], [0.1, 0.1]]]", "env.arena.walls[0]"),
        ];
        for (text, needle) in cases {
            let table: toml::Table = text.parse().unwrap();
            let err = EnvConfig::resolve(EnvId::RiabRandom, &table).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
        let table: toml::Table = "[policy]\nnoise_std = -1".parse().unwrap();
        let err = EnvConfig::resolve(EnvId::Pendulum, &table).unwrap_err().to_string();
        assert!(err.contains("env.policy.noise_std"), "{err}");
    }
}
