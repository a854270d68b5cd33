//! `riab-goal`: the goal task, the training of its actor–critic drift policy, and the per-env
//! state that records with the frozen policy.
//!
//! The reference is the thesis's `-pc-goal` recipe (`ratinabox-spec.md` §4.2): RatInABox's
//! `SpatialGoalEnvironment(dt=0.1, teleport_on_reset=True, episode_terminate_delay=1)` with one
//! `SpatialGoal(pos=[0.5, 0.5], goal_radius=0.1, reward=Reward(1, decay="none", expire_clock=1))`
//! (`dsm-hippocampus` at commit 24d6463: `dsm/envs.py:11-59`, `dsm/scripts/make_dataset_rat_PC_goal.py:82-93`
//! and the thesis's `TaskEnvironmentGym.py`), trained by `run_episode` of
//! `dsm/scripts/actor_critic_rat.py:189-229`.
//!
//! # The task, step by step (`TaskEnvironmentGym.step_all`, `:365-457`)
//! After the agent moves: the reward caches tick (`Reward.update`: the expire clock loses dt and
//! the reward is dropped at ≤ 0), then the goal is checked (reached when the line-of-sight
//! distance is below the radius; the reward is pushed with its full clock), then the reward is the
//! sum of the active rewards. Reaching the goal arms an unrewarded `TimeElapsedGoal` of
//! `episode_terminate_delay`; the step on which it has elapsed is terminal, and the next episode
//! starts with a teleport (`reset`, `:311-355`).
//!
//! We count in steps, with exact arithmetic: the reward is on for `max(1, ⌈D/dt⌉)` rows (the
//! arrival row and the next ⌈D/dt⌉ − 1), and the episode ends `⌈delay/dt⌉` steps after arrival.
//! At the defaults that is 10 rewarded rows (1 s) and a terminal row 10 steps (1 s) after the
//! arrival row. The reference counts in floating point (`1 − 10·0.1 = 1.4e-16 > 0` keeps the
//! reward an 11th row, and `t_{k+10} − t_k ≥ 1` fails for about 74 % of k), which makes its
//! episodes 1 or 2 rows longer at random; we do not reproduce that.
//!
//! # Where the agent restarts
//! `reset` teleports to `Environment.sample_positions(1)`, whose default method is
//! `uniform_jitter`: with n = 1 that is the arena's single grid point, the centre, jittered by
//! U(±0.45·δ) with δ = √area, i.e. uniform on [0.05, 0.95]² in the unit box, not on the whole box
//! ([`reset_position`]).

use std::collections::VecDeque;
use std::sync::Arc;

use common::rng::{self, StreamRng};
use rand::Rng;

use super::actor_critic::{Actor, Critic, GoalPolicy, Mlp, TdParams, Workspace};
use super::arena::Arena;
use super::config::{GoalConfig, RiabConfig};
use super::geometry::{Segment, Vec2};
use super::motion::{Agents, MotionParams};
use super::place_cells::PlaceCells;
use super::StepType;

/// Converts a duration to whole steps, forgiving float noise in `secs / dt` (10.000000000000002
/// and 9.999999999999998 both mean 10).
fn steps_ceil(secs: f64, dt: f64) -> u32 {
    (secs / dt - 1e-9).ceil().max(0.0) as u32
}

/// The goal and its timing, in steps.
#[derive(Debug, Clone, PartialEq)]
pub struct GoalTask {
    pub position: Vec2,
    pub radius: f64,
    pub reward: f64,
    /// Rows on which the reward is on, counting the arrival row.
    pub reward_steps: u32,
    /// Steps from the arrival row to the terminal row.
    pub reset_steps: u32,
}

/// One env's progress through its episode.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GoalState {
    /// Steps since the goal was reached this episode (0 on the arrival row).
    since_arrival: Option<u32>,
    /// Rows of reward left, counting the current one. Like RatInABox's reward cache, it is not
    /// cleared by a reset (at the defaults it has run out by then).
    reward_left: u32,
}

/// What one step of the task gives.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outcome {
    pub reward: f64,
    /// The episode ends on this row (the next one starts after a teleport).
    pub terminal: bool,
}

impl GoalTask {
    pub fn new(config: &GoalConfig, dt: f64) -> GoalTask {
        GoalTask {
            position: Vec2::new(config.position[0], config.position[1]),
            radius: config.radius,
            reward: config.reward,
            reward_steps: steps_ceil(config.reward_duration, dt).max(1),
            reset_steps: steps_ceil(config.reset_delay, dt),
        }
    }

    /// `SpatialGoal.check`: the line-of-sight distance from the agent to the goal is below the
    /// radius (euclidean, or the short way round on a torus; infinite when an internal wall
    /// blocks the view; `Environment.get_distances_between___accounting_for_environment`).
    pub fn reached(&self, arena: &Arena, pos: Vec2) -> bool {
        if arena.vector_between(self.position, pos).norm() >= self.radius {
            return false;
        }
        let view = Segment::new(pos, self.position);
        !arena.internal_walls().iter().any(|w| w.crosses(&view))
    }

    /// Advances the task by one step, after the agent has moved to `pos`.
    pub fn step(&self, s: &mut GoalState, arena: &Arena, pos: Vec2) -> Outcome {
        s.reward_left = s.reward_left.saturating_sub(1);
        match s.since_arrival {
            Some(k) => s.since_arrival = Some(k + 1),
            None if self.reached(arena, pos) => {
                s.since_arrival = Some(0);
                // A second arrival while a reward is still on would add a second reward in the
                // reference; here it restarts the one clock (only possible with reward_duration
                // longer than reset_delay).
                s.reward_left = self.reward_steps;
            }
            None => {}
        }
        Outcome {
            reward: if s.reward_left > 0 { self.reward } else { 0.0 },
            terminal: s.since_arrival.is_some_and(|k| k >= self.reset_steps),
        }
    }

    /// Starts a new episode: the goal is armed again.
    pub fn reset(&self, s: &mut GoalState) {
        s.since_arrival = None;
    }
}

/// Where `reset` puts the agent: `Environment.sample_positions(1)` (method `uniform_jitter`,
/// `Environment.py:599-631`). The grid of one point exists when the box is square (δ = √area fits
/// once on each axis): its centre, jittered by U(±0.45δ) per axis. Otherwise RatInABox would fail
/// (no grid point to copy), and so for a non-square box, or a polygon whose centre or jittered
/// point falls outside, we draw uniformly instead. Allocates nothing, unlike
/// [`Arena::sample_positions`].
pub fn reset_position<R: Rng>(arena: &Arena, rng: &mut R) -> Vec2 {
    let [x0, x1, y0, y1] = arena.extent();
    let delta = ((x1 - x0) * (y1 - y0)).sqrt();
    let one_point = ((x1 - x0) / delta) as usize >= 1 && ((y1 - y0) / delta) as usize >= 1;
    let centre = Vec2::new(x0 + delta / 2.0, y0 + delta / 2.0);
    if one_point && arena.contains(centre) {
        let half = 0.45 * delta;
        let p = centre + Vec2::new(rng.random_range(-half..half), rng.random_range(-half..half));
        if arena.contains(p) {
            return p;
        }
    }
    arena.sample_random(rng)
}

/// Where training stands, reported once per episode.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainProgress {
    /// Episodes finished.
    pub episodes: usize,
    pub max_episodes: usize,
    /// Fraction of successes over the last `window` episodes.
    pub success_rate: f64,
    /// Episodes in the window so far (`min(episodes, success_window)`).
    pub window: usize,
    /// Mean episode length over the window (s).
    pub mean_episode_s: f64,
}

/// A trained, frozen policy and how training ended.
#[derive(Debug, Clone)]
pub struct Trained {
    pub policy: GoalPolicy,
    pub progress: TrainProgress,
    /// Whether the success criterion was met (otherwise `max_episodes` ran out).
    pub converged: bool,
}

/// Trains the actor–critic of `config.goal.policy` from scratch, single-threaded, drawing every
/// random number (initial weights, motion, exploration, teleports) from `rng`, with the place
/// cells `cells` as inputs (pass the experiment's observation cells). `progress` is called after
/// every episode.
///
/// The loop is `make_dataset_rat_PC_goal.py:126-139` around `run_episode`
/// (`actor_critic_rat.py:189-229`), and each step does, in order:
/// 1. sample `a = μ + σξ` from the actor's current mean μ;
/// 2. move the agent with `a` as its drift velocity (`drift_to_random_strength_ratio = 1`);
/// 3. the place cells read the new position; the task gives r and terminal ([`GoalTask::step`]);
/// 4. the critic computes δ from r and its last two values, learns, then reads the new rates;
/// 5. the actor learns from δ and log π(a), then reads the new rates (its next mean);
/// 6. after more than `episode_timeout` the episode fails; else if terminal it succeeds. Both
///    teleport the agent ([`reset_position`]) and zero both traces.
///
/// Reproduced from the reference although the issue is silent on them: the critic's δ lags one
/// step behind the reward ([`Critic`]); the critic's values and the actor's mean are *not*
/// recomputed after a teleport, so an episode's first action comes from the previous episode's
/// last position and its second δ has a dV/dt across the jump; the timeout is checked first, so
/// an episode whose delay after arrival outlasts the timeout fails.
///
/// Training stops once the window holds `success_window` episodes of which more than
/// `success_rate` succeeded. The reference stops as soon as `i > 10` on the rate over however
/// many episodes it has (fewer than 50 before episode 50); we wait for a full window, as the issue
/// states it. Inputs are the rates as they are (plus OU noise if the cells have any), as
/// `NeuralNetworkNeurons.get_state` reads `firingrate`. The reference starts the networks on
/// all-zero rates (the cells have not updated yet); we start them on the rates at the first position.
pub fn train<R: Rng>(
    config: &RiabConfig,
    cells: &PlaceCells,
    rng: &mut R,
    mut progress: impl FnMut(&TrainProgress),
) -> Result<Trained, String> {
    let goal = config.goal.as_ref().ok_or("the env has no goal (env.goal)")?;
    let pc = &goal.policy;
    if pc.action_noise_std <= 0.0 {
        return Err(
            "env.goal.policy.action_noise_std must be positive to train (the policy gradient needs exploration)".into(),
        );
    }
    let arena = Arena::new(&config.arena);
    let params = MotionParams::from_config(config);
    let task = GoalTask::new(goal, config.dt);
    let tp = TdParams { dt: config.dt, td_tau: pc.td_tau, trace_tau: pc.trace_tau, learning_rate: pc.learning_rate };
    let timeout_steps = (pc.episode_timeout / config.dt + 1e-9).floor() as u64;
    let n = cells.len();

    let actor_sizes = [n, pc.actor_hidden, 2];
    let critic_sizes: Vec<usize> = std::iter::once(n).chain(pc.critic_hidden.iter().copied()).chain([1]).collect();
    let mut actor = Actor::new(Mlp::new(&actor_sizes, rng), pc.action_scale, pc.action_noise_std);
    let mut critic = Critic::new(Mlp::new(&critic_sizes, rng));

    let mut agents = Agents::new(&arena, &params, std::slice::from_mut(&mut *rng));
    agents.pos[0] = reset_position(&arena, rng);
    let mut x = vec![0.0; n];
    let mut noise = vec![0.0; if cells.has_noise() { n } else { 0 }];
    let mut read = |pos: Vec2, x: &mut [f64], rng: &mut R| {
        cells.rates_at(&arena, pos, x);
        if cells.has_noise() {
            cells.step_noise(&mut noise, config.dt, rng);
            x.iter_mut().zip(&noise).for_each(|(r, e)| *r += e);
        }
    };
    read(agents.pos[0], &mut x, rng);
    critic.start(&x);
    actor.observe(&x);

    let mut window: VecDeque<(bool, u64)> = VecDeque::with_capacity(pc.success_window);
    let mut state = GoalState::default();
    let mut report =
        TrainProgress { episodes: 0, max_episodes: pc.max_episodes, success_rate: 0.0, window: 0, mean_episode_s: 0.0 };
    let mut converged = false;
    while report.episodes < pc.max_episodes {
        actor.learner.reset_trace();
        critic.learner.reset_trace();
        task.reset(&mut state);
        let mut steps = 0u64;
        let success = loop {
            let (a, xi) = actor.sample(rng);
            agents.step(&arena, &params, std::slice::from_mut(&mut *rng), Some(std::slice::from_ref(&a)));
            let pos = agents.pos[0];
            read(pos, &mut x, rng);
            let out = task.step(&mut state, &arena, pos);
            let delta = critic.td_error(out.reward, &tp);
            if !delta.is_finite() {
                return Err(format!("the TD error became {delta} in episode {}", report.episodes + 1));
            }
            critic.learn(delta, &tp);
            critic.observe(&x);
            actor.learn(xi, delta, &tp);
            actor.observe(&x);
            steps += 1;
            if steps > timeout_steps {
                break false;
            }
            if out.terminal {
                break true;
            }
        };
        agents.pos[0] = reset_position(&arena, rng);
        if window.len() == pc.success_window {
            window.pop_front();
        }
        window.push_back((success, steps));
        report.episodes += 1;
        report.window = window.len();
        report.success_rate = window.iter().filter(|w| w.0).count() as f64 / window.len() as f64;
        report.mean_episode_s = window.iter().map(|w| w.1).sum::<u64>() as f64 * config.dt / window.len() as f64;
        progress(&report);
        if window.len() == pc.success_window && report.success_rate > pc.success_rate {
            converged = true;
            break;
        }
    }
    Ok(Trained { policy: GoalPolicy::freeze(&actor, &critic), progress: report, converged })
}

/// The place cells of the experiment seeded `seed`, built by the same function as
/// [`super::riab::RiabEnv`]'s observation cells, so a policy trained on them reads the rates the
/// archive records.
pub fn experiment_cells(config: &RiabConfig, seed: u64) -> PlaceCells {
    super::riab::experiment_cells(config, &Arena::new(&config.arena), seed)
}

/// The RNG training draws from: the stream `(seed, "policy")`, the same for every actor of an
/// experiment, so all of them derive the same policy.
pub fn policy_rng(seed: u64) -> StreamRng {
    rng::stream(seed, &["policy".into()])
}

/// What the env does to one agent on a row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum GoalAction {
    /// Move with this drift velocity.
    Move(Vec2),
    /// A reset row: teleport here and do not move (`dm_env`'s restart step).
    Reset(Vec2),
}

/// `riab-goal`'s per-env state while recording with a frozen policy, as the reference's
/// evaluation loop (`make_dataset_rat_PC_goal.py:182-243`) steps it through `dsm/stade.py`'s
/// `GymEnvWrapper`:
/// - row 0, and the row after every LAST, is a **reset row**: the agent is teleported
///   ([`reset_position`]) and does not move; it is FIRST, with reward 0 (dm_env's `restart` has
///   none). So `--steps 12001` gives the reference's T = 12000 steps plus the initial reset row;
/// - every other row moves the agent with a noisy action `N(μ, σ²)` from the frozen actor (the
///   reference samples in evaluation too, `:212`) and takes the reward of [`GoalTask::step`]; it
///   is LAST when the episode ends there, else MID. There is no timeout while recording.
///
/// After every row the actor reads that row's rates for its next mean, so, unlike training, the
/// first action after a teleport comes from the new position (the reset row updates the cells
/// and the actor, `:219-226`). The reference's row 0 holds stale rates from before its reset; ours
/// holds the rates at the reset position.
#[derive(Debug, Clone)]
pub struct GoalRecorder {
    policy: Arc<GoalPolicy>,
    task: GoalTask,
    states: Vec<GoalState>,
    means: Vec<Vec2>,
    reset_next: Vec<bool>,
    ws: Workspace,
}

impl GoalRecorder {
    pub fn new(policy: Arc<GoalPolicy>, goal: &GoalConfig, dt: f64, num_envs: usize) -> GoalRecorder {
        let ws = policy.workspace();
        GoalRecorder {
            policy,
            task: GoalTask::new(goal, dt),
            states: vec![GoalState::default(); num_envs],
            means: vec![Vec2::ZERO; num_envs],
            reset_next: vec![true; num_envs],
            ws,
        }
    }

    pub fn task(&self) -> &GoalTask {
        &self.task
    }

    /// What env `e` does on this row.
    pub fn action<R: Rng>(&mut self, e: usize, arena: &Arena, rng: &mut R) -> GoalAction {
        if self.reset_next[e] {
            self.reset_next[e] = false;
            self.task.reset(&mut self.states[e]);
            GoalAction::Reset(reset_position(arena, rng))
        } else {
            GoalAction::Move(self.policy.sample(self.means[e], rng))
        }
    }

    /// The reward and step type of env `e`'s row after [`GoalAction::Move`] took it to `pos`.
    pub fn after_move(&mut self, e: usize, arena: &Arena, pos: Vec2) -> (f64, StepType) {
        let out = self.task.step(&mut self.states[e], arena, pos);
        self.reset_next[e] = out.terminal;
        (out.reward, if out.terminal { StepType::Last } else { StepType::Mid })
    }

    /// Starts a new episode of env `e` where its agent now is, without the reset's teleport: the
    /// goal is armed again and the policy reads `rates`, the cells at that position. An analysis
    /// uses it to start a rollout from a chosen state.
    pub fn start_here(&mut self, e: usize, rates: &[f64]) {
        self.reset_next[e] = false;
        self.states[e] = GoalState::default();
        self.observe(e, rates);
    }

    /// Env `e`'s actor reads the row's rates.
    pub fn observe(&mut self, e: usize, rates: &[f64]) {
        self.means[e] = self.policy.mean(rates, &mut self.ws);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envs::config::{EnvConfig, EnvId};

    fn goal_config() -> RiabConfig {
        match EnvConfig::defaults(EnvId::RiabGoal) {
            EnvConfig::Riab(c) => c,
            _ => unreachable!(),
        }
    }

    fn setup() -> (RiabConfig, Arena, GoalTask) {
        let c = goal_config();
        let arena = Arena::new(&c.arena);
        let task = GoalTask::new(c.goal.as_ref().unwrap(), c.dt);
        (c, arena, task)
    }

    const AWAY: Vec2 = Vec2::new(0.1, 0.1);
    const AT_GOAL: Vec2 = Vec2::new(0.52, 0.47);

    #[test]
    fn defaults_give_ten_rewarded_rows_and_a_reset_one_second_after_arrival() {
        let (_, arena, task) = setup();
        assert_eq!((task.reward_steps, task.reset_steps), (10, 10));
        let mut s = GoalState::default();
        for _ in 0..5 {
            assert_eq!(task.step(&mut s, &arena, AWAY), Outcome { reward: 0.0, terminal: false });
        }
        // Arrival row (k) and 9 more rows: reward 1 for exactly 1 s, wherever the agent goes.
        let mut rewards = vec![];
        let mut terminal_at = None;
        for j in 0..15 {
            let pos = if j % 2 == 0 { AT_GOAL } else { AWAY };
            let out = task.step(&mut s, &arena, pos);
            rewards.push(out.reward);
            if out.terminal && terminal_at.is_none() {
                terminal_at = Some(j);
            }
        }
        assert_eq!(rewards[..10], [1.0; 10]);
        assert!(rewards[10..].iter().all(|&r| r == 0.0));
        assert_eq!(terminal_at, Some(10), "LAST 10 steps (1 s) after the arrival row");
        // After the reset the goal is armed again.
        task.reset(&mut s);
        assert_eq!(task.step(&mut s, &arena, AWAY), Outcome { reward: 0.0, terminal: false });
        assert_eq!(task.step(&mut s, &arena, AT_GOAL), Outcome { reward: 1.0, terminal: false });
    }

    #[test]
    fn durations_round_like_exact_arithmetic() {
        let (mut c, _, _) = setup();
        let g = c.goal.as_mut().unwrap();
        g.reward_duration = 0.0;
        g.reset_delay = 0.0;
        let t = GoalTask::new(g, 0.1);
        assert_eq!((t.reward_steps, t.reset_steps), (1, 0), "reward on the arrival row; LAST there too");
        g.reward_duration = 0.25;
        g.reset_delay = 0.3;
        let t = GoalTask::new(g, 0.1);
        assert_eq!((t.reward_steps, t.reset_steps), (3, 3));
        g.reward_duration = 0.7; // 0.7 / 0.1 = 6.999999999999999
        assert_eq!(GoalTask::new(g, 0.1).reward_steps, 7);
    }

    #[test]
    fn goal_radius_is_strict_and_walls_block_the_view() {
        let (mut c, arena, task) = setup();
        assert!(task.reached(&arena, Vec2::new(0.5, 0.5)));
        assert!(task.reached(&arena, Vec2::new(0.5999, 0.5)));
        assert!(!task.reached(&arena, Vec2::new(0.6001, 0.5)));
        c.arena.walls = vec![[[0.55, 0.0], [0.55, 1.0]]];
        let walled = Arena::new(&c.arena);
        assert!(task.reached(&walled, Vec2::new(0.54, 0.5)));
        assert!(!task.reached(&walled, Vec2::new(0.56, 0.5)), "no line of sight");
    }

    #[test]
    fn reset_positions_are_uniform_on_the_jittered_cell() {
        let (_, arena, _) = setup();
        let mut r = rng::stream(0, &["reset".into()]);
        let ps: Vec<Vec2> = (0..20_000).map(|_| reset_position(&arena, &mut r)).collect();
        assert!(ps.iter().all(|p| p.x >= 0.05 && p.x < 0.95 && p.y >= 0.05 && p.y < 0.95));
        // Mean of U(0.05, 0.95): 0.5, sd 0.26/√20000 = 0.0018; 5 sd = 0.009.
        let mx = ps.iter().map(|p| p.x).sum::<f64>() / ps.len() as f64;
        assert!((mx - 0.5).abs() < 0.009, "{mx}");
        assert!(ps.iter().any(|p| p.x < 0.06) && ps.iter().any(|p| p.x > 0.94));
    }

    #[test]
    fn training_is_deterministic_and_reports_each_episode() {
        let (mut c, _, _) = setup();
        c.goal.as_mut().unwrap().policy.max_episodes = 3;
        let cells = experiment_cells(&c, 7);
        let mut seen = vec![];
        let a = train(&c, &cells, &mut policy_rng(7), |p| seen.push(p.episodes)).unwrap();
        let b = train(&c, &cells, &mut policy_rng(7), |_| {}).unwrap();
        assert_eq!(seen, [1, 2, 3]);
        assert_eq!(a.policy, b.policy);
        assert!(!a.converged);
        assert_eq!(a.progress.window, 3);
        a.policy.check(cells.len()).unwrap();
        let other = train(&c, &cells, &mut policy_rng(8), |_| {}).unwrap();
        assert_ne!(other.policy, a.policy);
    }

    #[test]
    fn recorder_resets_on_row_zero_and_after_last() {
        let (c, arena, _) = setup();
        let cells = experiment_cells(&c, 1);
        let policy = Arc::new(GoalPolicy::freeze(
            &Actor::new(Mlp::new(&[cells.len(), 4, 2], &mut policy_rng(1)), 0.5, 0.1),
            &Critic::new(Mlp::new(&[cells.len(), 3, 1], &mut policy_rng(1))),
        ));
        let mut rec = GoalRecorder::new(policy, c.goal.as_ref().unwrap(), c.dt, 2);
        let mut r = policy_rng(2);
        assert!(matches!(rec.action(0, &arena, &mut r), GoalAction::Reset(_)));
        assert!(matches!(rec.action(0, &arena, &mut r), GoalAction::Move(_)));
        assert_eq!(rec.after_move(0, &arena, AT_GOAL), (1.0, StepType::Mid));
        for _ in 0..9 {
            assert!(matches!(rec.action(0, &arena, &mut r), GoalAction::Move(_)));
            assert_eq!(rec.after_move(0, &arena, AWAY), (1.0, StepType::Mid));
        }
        assert!(matches!(rec.action(0, &arena, &mut r), GoalAction::Move(_)));
        assert_eq!(rec.after_move(0, &arena, AWAY), (0.0, StepType::Last));
        assert!(matches!(rec.action(0, &arena, &mut r), GoalAction::Reset(_)));
        assert!(matches!(rec.action(1, &arena, &mut r), GoalAction::Reset(_)), "envs are independent");
    }
}
