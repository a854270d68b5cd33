//! The RatInABox family as one vectorised env: E agents in one arena, observed through one
//! population of place cells.
//!
//! Rows follow the thesis recipe (`for t: Ag.update(); placecells.update()`): row t is the state
//! *after* update t, the initial position is not a row, and the stream is one endless episode
//! (FIRST, then MID). Whoever cuts the stream decides where a LAST goes.
//!
//! `riab-goal` is the exception: its frozen policy drives the agents, and the goal task cuts the
//! stream into episodes of its own (reset row FIRST, MID rows, LAST 1 s after the goal; see
//! [`GoalRecorder`]), with rewards.

use std::sync::Arc;

use common::rng::{self, StreamRng};

use super::actor_critic::GoalPolicy;
use super::arena::Arena;
use super::config::RiabConfig;
use super::geometry::Vec2;
use super::goal::{GoalAction, GoalRecorder};
use super::motion::{Agents, MotionParams};
use super::place_cells::PlaceCells;
use super::teleport::Teleport;
use super::{Frame, StepType};

/// What moves the agents.
// One per env, so boxing the larger variant would buy nothing.
#[allow(clippy::large_enum_variant)]
enum Motion {
    /// RatInABox's random walk (optionally under a caller's drift).
    Walk,
    /// `riab-teleport`: positions from the teleport path; the random walk is not stepped.
    Teleport(Teleport),
    /// `riab-goal`: the random walk under the frozen policy's drift, cut into goal episodes.
    Goal(GoalRecorder),
}

/// The place cells of the experiment seeded `seed`, from the stream `(seed, "cells")`: every
/// actor's observation cells, and the inputs `riab-goal`'s policy is trained on.
pub fn experiment_cells(config: &RiabConfig, arena: &Arena, seed: u64) -> PlaceCells {
    PlaceCells::new(&config.cells, arena, &mut rng::stream(seed, &["cells".into()]))
}

pub struct RiabEnv {
    arena: Arena,
    cells: PlaceCells,
    params: MotionParams,
    agents: Agents,
    rngs: Vec<StreamRng>,
    motion: Motion,
    /// Per-env OU noise of the rates, E × n (empty without noise).
    noise: Vec<f64>,
    /// One env's rates, reused every step.
    scratch: Vec<f64>,
    started: bool,
}

impl RiabEnv {
    /// `num_envs` agents for actor `actor_id` of the experiment seeded `seed`. Env i draws from
    /// the stream `(seed, "actor", actor_id, i)`; the cells from `(seed, "cells")`.
    ///
    /// # Panics
    /// If the config has a goal: `riab-goal` needs its policy ([`RiabEnv::with_goal_policy`]).
    pub fn new(config: &RiabConfig, seed: u64, actor_id: u64, num_envs: usize) -> RiabEnv {
        assert!(
            config.goal.is_none(),
            "riab-goal is driven by a trained policy: build it with RiabEnv::with_goal_policy"
        );
        Self::build(config, seed, Self::actor_streams(seed, actor_id, num_envs), None)
    }

    /// `riab-goal`'s env: as [`RiabEnv::new`], with the agents driven by `policy` (trained for this
    /// config and seed, see `actor::goal_policy`). Fails if the config has no goal or the policy's
    /// networks do not read this env's cells.
    pub fn with_goal_policy(
        config: &RiabConfig,
        seed: u64,
        actor_id: u64,
        num_envs: usize,
        policy: Arc<GoalPolicy>,
    ) -> Result<RiabEnv, String> {
        if config.goal.is_none() {
            return Err("this env has no goal (env.goal), so it takes no goal policy".into());
        }
        policy.check(config.cells.n)?;
        Ok(Self::build(config, seed, Self::actor_streams(seed, actor_id, num_envs), Some(policy)))
    }

    fn actor_streams(seed: u64, actor_id: u64, num_envs: usize) -> Vec<StreamRng> {
        (0..num_envs).map(|i| rng::stream(seed, &["actor".into(), actor_id.into(), i.into()])).collect()
    }

    /// E envs of the experiment seeded `seed` (its cells, its goal policy when `riab-goal`) whose
    /// agents draw from `rngs`, one stream per env: an analysis's rollouts, on streams of its
    /// own. Fails as [`RiabEnv::with_goal_policy`] does when the policy does not fit.
    pub fn for_analysis(
        config: &RiabConfig,
        seed: u64,
        rngs: Vec<StreamRng>,
        policy: Option<Arc<GoalPolicy>>,
    ) -> Result<RiabEnv, String> {
        match (&config.goal, &policy) {
            (Some(_), None) => return Err("riab-goal's rollouts need its goal policy".into()),
            (None, Some(_)) => return Err("this env has no goal (env.goal), so it takes no goal policy".into()),
            (Some(_), Some(p)) => p.check(config.cells.n)?,
            (None, None) => {}
        }
        Ok(Self::build(config, seed, rngs, policy))
    }

    /// Starts env `e`'s rollout at `pos`, with the motion state (velocity, rotational velocity,
    /// head direction) of agent `k` of `like` (a burn-in stream's, so that the start is a state
    /// the data policy visits). `riab-goal` starts a new episode there with the goal armed;
    /// `riab-teleport`'s next rows follow its teleport path, which does not depend on where the
    /// agent is. The cells' OU noise, if any, restarts at 0.
    pub fn start_at(&mut self, e: usize, pos: Vec2, like: &Agents, k: usize) {
        let a = &mut self.agents;
        a.pos[e] = pos;
        a.vel[e] = like.vel[k];
        a.rot_vel[e] = like.rot_vel[k];
        a.measured_vel[e] = like.measured_vel[k];
        a.measured_rot_vel[e] = like.measured_rot_vel[k];
        a.head_direction[e] = like.head_direction[k];
        a.bounced[e] = false;
        let n = self.cells.len();
        if self.cells.has_noise() {
            self.noise[e * n..(e + 1) * n].fill(0.0);
        }
        if let Motion::Goal(g) = &mut self.motion {
            self.cells.rates_at(&self.arena, pos, &mut self.scratch);
            g.start_here(e, &self.scratch);
        }
    }

    fn build(config: &RiabConfig, seed: u64, mut rngs: Vec<StreamRng>, policy: Option<Arc<GoalPolicy>>) -> RiabEnv {
        let num_envs = rngs.len();
        let arena = Arena::new(&config.arena);
        let cells = experiment_cells(config, &arena, seed);
        let params = MotionParams::from_config(config);
        let agents = Agents::new(&arena, &params, &mut rngs);
        let noise = if cells.has_noise() { vec![0.0; num_envs * cells.len()] } else { Vec::new() };
        let scratch = vec![0.0; cells.len()];
        let motion = match (&config.teleport, &config.goal, policy) {
            (_, Some(g), Some(policy)) => Motion::Goal(GoalRecorder::new(policy, g, config.dt, num_envs)),
            (Some(t), _, _) => Motion::Teleport(Teleport::new(t, config.dt, num_envs)),
            _ => Motion::Walk,
        };
        RiabEnv { arena, cells, params, agents, rngs, motion, noise, scratch, started: false }
    }

    pub fn num_envs(&self) -> usize {
        self.agents.len()
    }

    pub fn obs_dim(&self) -> usize {
        self.cells.len()
    }

    pub fn arena(&self) -> &Arena {
        &self.arena
    }

    pub fn cells(&self) -> &PlaceCells {
        &self.cells
    }

    pub fn agents(&self) -> &Agents {
        &self.agents
    }

    pub fn params(&self) -> &MotionParams {
        &self.params
    }

    /// Whether rows carry rewards (`riab-goal`).
    pub fn has_rewards(&self) -> bool {
        matches!(self.motion, Motion::Goal(_))
    }

    /// Advances every agent one step (optionally under drift-velocity control) and writes the
    /// rates, positions and step types of the new row into `frame` (and its rewards, for
    /// `riab-goal`, whose policy is the drift: `drift` must then be `None`).
    pub fn step(&mut self, frame: &mut Frame, drift: Option<&[Vec2]>) {
        match &mut self.motion {
            Motion::Goal(g) => {
                debug_assert!(drift.is_none(), "riab-goal's drift is its policy");
                for (e, rng) in self.rngs.iter_mut().enumerate() {
                    match g.action(e, &self.arena, rng) {
                        GoalAction::Reset(p) => {
                            self.agents.pos[e] = p;
                            frame.rewards[e] = 0.0;
                            frame.step_types[e] = StepType::First;
                        }
                        GoalAction::Move(u) => {
                            self.agents.step_one(e, &self.arena, &self.params, rng, Some(u));
                            let (reward, step_type) = g.after_move(e, &self.arena, self.agents.pos[e]);
                            frame.rewards[e] = reward as f32;
                            frame.step_types[e] = step_type;
                        }
                    }
                }
            }
            Motion::Walk => self.agents.step(&self.arena, &self.params, &mut self.rngs, drift),
            Motion::Teleport(t) => {
                for (e, rng) in self.rngs.iter_mut().enumerate() {
                    let p = t.next_position(e, &self.arena, rng);
                    // As `_measure_velocity_of_step_taken(overwrite_velocity=True)`.
                    let v = (p - self.agents.pos[e]) / self.params.dt;
                    self.agents.pos[e] = p;
                    self.agents.vel[e] = v;
                    self.agents.measured_vel[e] = v;
                }
                t.advance();
            }
        }
        let n = self.cells.len();
        let step_type = if self.started { StepType::Mid } else { StepType::First };
        self.started = true;
        for e in 0..self.agents.len() {
            let p = self.agents.pos[e];
            self.cells.rates_at(&self.arena, p, &mut self.scratch);
            if self.cells.has_noise() {
                let noise = &mut self.noise[e * n..(e + 1) * n];
                self.cells.step_noise(noise, self.params.dt, &mut self.rngs[e]);
                for (r, x) in self.scratch.iter_mut().zip(noise.iter()) {
                    *r += x;
                }
            }
            for (o, r) in frame.observations[e * n..(e + 1) * n].iter_mut().zip(&self.scratch) {
                *o = *r as f32;
            }
            frame.positions[2 * e] = p.x as f32;
            frame.positions[2 * e + 1] = p.y as f32;
            match &mut self.motion {
                Motion::Goal(g) => g.observe(e, &self.scratch),
                _ => frame.step_types[e] = step_type,
            }
        }
    }
}
