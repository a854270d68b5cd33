//! Monte-Carlo in the RatInABox simulator: the ground truths of the place-cell analyses.
//!
//! Every rollout runs the env the model was trained on (its arena, cells and data policy; for
//! `riab-goal` its frozen goal policy) on random streams of the evaluation's own, many agents at
//! once, in parallel over threads. A rollout starts at a chosen source position with the motion
//! state (velocity, rotational velocity, head direction) of a burn-in stream of the same env,
//! drawn in turn from a pool, so that it starts as the data policy would be moving there.
//! `riab-teleport`'s path does not depend on the agent's position, so there the source is only
//! the first row.
//!
//! The occupancy the δ-model learns is `M(s) = Σ_t (1−γ)γ^t δ_{S_t}` (from t = 0 with
//! `cumulant_is_source_state`, from t = 1 without; `dsm-algorithm.md` §3.2): one sample is the
//! state at a geometric time j with P(j = t) ∝ γ^t. A LAST row is absorbing, as in the target
//! (§3.2): a rollout that reaches one before j stays there.

use std::sync::Arc;

use anyhow::{anyhow, Result};
use rand::Rng;

use actor::envs::actor_critic::GoalPolicy;
use actor::envs::config::RiabConfig;
use actor::envs::geometry::Vec2;
use actor::envs::motion::Agents;
use actor::envs::riab::RiabEnv;
use actor::envs::{Frame, StepType};
use common::rng::{self, StreamRng};

/// Steps the burn-in stream runs before its first state is kept (10 s at dt 0.05: every OU
/// process of the motion model has forgotten its start).
const BURN_IN_STEPS: usize = 200;
/// Steps between two kept burn-in states.
const BURN_IN_EVERY: usize = 10;
/// States in the burn-in pool.
const POOL: usize = 256;
/// A discounted average is truncated where the remaining weight γ^T falls below this.
const TAIL: f64 = 1e-3;

/// The simulator of one experiment, for rollouts.
pub struct Simulator {
    config: RiabConfig,
    /// The experiment's seed: the cells (and the goal policy) are the experiment's.
    seed: u64,
    policy: Option<Arc<GoalPolicy>>,
    /// The evaluation's seed: every rollout stream derives from it.
    eval_seed: u64,
    threads: usize,
    pool: Agents,
}

impl Simulator {
    pub fn new(
        config: &RiabConfig,
        seed: u64,
        policy: Option<Arc<GoalPolicy>>,
        eval_seed: u64,
        threads: usize,
    ) -> Result<Simulator> {
        let mut sim = Simulator {
            config: config.clone(),
            seed,
            policy,
            eval_seed,
            threads: threads.max(1),
            pool: Agents::default(),
        };
        let mut env = sim.env(vec![rng::stream(eval_seed, &["riab".into(), "burn-in".into()])])?;
        let mut frame = frame_for(&env);
        for t in 0..BURN_IN_STEPS + POOL * BURN_IN_EVERY {
            env.step(&mut frame, None);
            if t >= BURN_IN_STEPS && (t - BURN_IN_STEPS).is_multiple_of(BURN_IN_EVERY) {
                let a = env.agents();
                sim.pool.pos.push(a.pos[0]);
                sim.pool.vel.push(a.vel[0]);
                sim.pool.rot_vel.push(a.rot_vel[0]);
                sim.pool.measured_vel.push(a.measured_vel[0]);
                sim.pool.measured_rot_vel.push(a.measured_rot_vel[0]);
                sim.pool.head_direction.push(a.head_direction[0]);
                sim.pool.bounced.push(false);
            }
        }
        Ok(sim)
    }

    pub fn dt(&self) -> f64 {
        self.config.dt
    }

    fn env(&self, rngs: Vec<StreamRng>) -> Result<RiabEnv> {
        RiabEnv::for_analysis(&self.config, self.seed, rngs, self.policy.clone()).map_err(|e| anyhow!(e))
    }

    /// Rollouts `offset..offset + sources.len()` of family `label`, each started at its source.
    /// Rollout k has the stream `(eval seed, "riab", label, k)` and burn-in state k mod 256, so
    /// results do not depend on how rollouts are split over threads.
    fn started(&self, label: &str, sources: &[Vec2], offset: usize) -> Result<RiabEnv> {
        let rngs = (0..sources.len())
            .map(|i| rng::stream(self.eval_seed, &["riab".into(), label.into(), (offset + i).into()]))
            .collect();
        let mut env = self.env(rngs)?;
        for (e, &p) in sources.iter().enumerate() {
            env.start_at(e, p, &self.pool, (offset + e) % POOL);
        }
        Ok(env)
    }

    /// `rollouts` samples of the discounted occupancy `M(source)` (positions), with discount
    /// `gamma`, from t = 0 when `from_source` (else t ≥ 1).
    pub fn occupancy(
        &self,
        label: &str,
        source: Vec2,
        gamma: f64,
        from_source: bool,
        rollouts: usize,
    ) -> Result<Vec<[f64; 2]>> {
        let per = rollouts.div_ceil(self.threads);
        let parts = parallel(self.threads, |t| -> Result<Vec<[f64; 2]>> {
            let (lo, hi) = (t * per, ((t + 1) * per).min(rollouts));
            if lo >= hi {
                return Ok(Vec::new());
            }
            let first = usize::from(!from_source);
            let js: Vec<usize> = (lo..hi)
                .map(|k| {
                    let mut r = rng::stream(self.eval_seed, &["riab".into(), label.into(), "horizon".into(), k.into()]);
                    first + geometric(gamma, &mut r)
                })
                .collect();
            let mut env = self.started(label, &vec![source; hi - lo], lo)?;
            let mut frame = frame_for(&env);
            let mut out: Vec<Option<[f64; 2]>> = js.iter().map(|&j| (j == 0).then_some([source.x, source.y])).collect();
            let last = js.iter().copied().max().unwrap_or(0);
            for t in 1..=last {
                env.step(&mut frame, None);
                for (e, slot) in out.iter_mut().enumerate() {
                    if slot.is_none() && (t == js[e] || frame.step_types[e] == StepType::Last) {
                        *slot = Some([frame.positions[2 * e] as f64, frame.positions[2 * e + 1] as f64]);
                    }
                }
                if out.iter().all(Option::is_some) {
                    break;
                }
            }
            Ok(out.into_iter().map(|p| p.expect("every rollout reached its horizon")).collect())
        })?;
        Ok(parts.into_iter().flatten().collect())
    }

    /// For each source, `per_source` trajectories' discounted average observation
    /// `Σ_t w_t φ(S_t) / Σ_t w_t`, `w_t = (1−γ)γ^t` (from t = 0 when `from_source`), truncated where
    /// the remaining weight is below 1e-3; after a LAST row the weight stays on it. This is what
    /// one atom of the δ-model stands for (one possible future, averaged), so its spread over
    /// trajectories is the truth for the atoms' spread. `[source][trajectory][cell]`, flat.
    pub fn discounted_observations(
        &self,
        label: &str,
        sources: &[Vec2],
        per_source: usize,
        gamma: f64,
        from_source: bool,
    ) -> Result<Vec<f32>> {
        let n = self.config.cells.n;
        let steps = if gamma <= 0.0 { 1 } else { ((TAIL.ln() / gamma.ln()).ceil() as usize).clamp(1, 100_000) };
        let first = usize::from(!from_source);
        let total = sources.len() * per_source;
        let per = total.div_ceil(self.threads);
        let parts = parallel(self.threads, |t| -> Result<Vec<f32>> {
            let (lo, hi) = (t * per, ((t + 1) * per).min(total));
            if lo >= hi {
                return Ok(Vec::new());
            }
            let starts: Vec<Vec2> = (lo..hi).map(|k| sources[k / per_source]).collect();
            let mut env = self.started(label, &starts, lo)?;
            let mut frame = frame_for(&env);
            let e_count = hi - lo;
            let mut sums = vec![0.0f64; e_count * n];
            let mut weights = vec![0.0f64; e_count];
            let mut absorbed: Vec<Option<usize>> = vec![None; e_count];
            let mut rates = vec![0.0; n];
            // Row 0: the source's own (noise-free) vector.
            let mut w = 1.0 - gamma;
            if first == 0 {
                for (e, p) in starts.iter().enumerate() {
                    env.cells().rates_at(env.arena(), *p, &mut rates);
                    for (s, r) in sums[e * n..(e + 1) * n].iter_mut().zip(&rates) {
                        *s += w * r;
                    }
                    weights[e] += w;
                }
            }
            let mut last_obs = vec![0.0f32; e_count * n];
            for t in 1..first + steps {
                w *= gamma;
                env.step(&mut frame, None);
                for e in 0..e_count {
                    if absorbed[e].is_none() {
                        last_obs[e * n..(e + 1) * n].copy_from_slice(&frame.observations[e * n..(e + 1) * n]);
                        if frame.step_types[e] == StepType::Last {
                            absorbed[e] = Some(t);
                        }
                    }
                    if t >= first {
                        for (s, o) in sums[e * n..(e + 1) * n].iter_mut().zip(&last_obs[e * n..(e + 1) * n]) {
                            *s += w * *o as f64;
                        }
                        weights[e] += w;
                    }
                }
            }
            Ok(sums.chunks(n).zip(&weights).flat_map(|(s, w)| s.iter().map(move |v| (v / w) as f32)).collect())
        })?;
        Ok(parts.into_iter().flatten().collect())
    }

    /// One stream of the data policy, `seconds` long, from a burn-in state: its positions.
    pub fn trajectory(&self, seconds: f64) -> Result<Vec<[f64; 2]>> {
        let steps = (seconds / self.config.dt).round() as usize;
        let mut env = self.started("trajectory", &[self.pool.pos[0]], 0)?;
        let mut frame = frame_for(&env);
        Ok((0..steps)
            .map(|_| {
                env.step(&mut frame, None);
                [frame.positions[0] as f64, frame.positions[1] as f64]
            })
            .collect())
    }
}

/// j ≥ 0 with P(j = t) = (1−γ)γ^t, by inversion.
pub fn geometric<R: Rng>(gamma: f64, rng: &mut R) -> usize {
    if gamma <= 0.0 {
        return 0;
    }
    let u: f64 = 1.0 - rng.random::<f64>(); // (0, 1]
    (u.ln() / gamma.ln()).floor().min(1e9) as usize
}

fn frame_for(env: &RiabEnv) -> Frame {
    Frame::new(env.num_envs(), env.obs_dim(), 0, true, env.has_rewards())
}

/// `f(0..threads)` on scoped threads, results in order.
fn parallel<T: Send>(threads: usize, f: impl Fn(usize) -> Result<T> + Sync) -> Result<Vec<T>> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn({
                    let f = &f;
                    move || f(t)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("a rollout thread panicked")).collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use actor::envs::config::{EnvConfig, EnvId};

    fn riab(id: EnvId) -> RiabConfig {
        let EnvConfig::Riab(c) = EnvConfig::defaults(id) else { unreachable!() };
        c
    }

    /// With γ = 0 every sample of the occupancy is the source itself.
    #[test]
    fn gamma_zero_gives_the_source() {
        let sim = Simulator::new(&riab(EnvId::RiabRandom), 0, None, 1, 2).unwrap();
        let s = Vec2::new(0.3, 0.7);
        let got = sim.occupancy("t", s, 0.0, true, 100).unwrap();
        assert_eq!(got.len(), 100);
        assert!(got.iter().all(|p| *p == [0.3, 0.7]));
    }

    /// Without motion noise (speed pinned, no rotational velocity, no wall repulsion) the agent
    /// runs straight at the constant speed v from the source, so a sample at time j lies j·v·dt
    /// along one ray: the distances are whole multiples of the step, and the multiples are
    /// geometric, P(j) = (1−γ)γ^j, with mean γ/(1−γ).
    #[test]
    fn a_noiseless_walk_gives_the_closed_form() {
        let mut c = riab(EnvId::RiabRandom);
        c.speed_std = 0.0;
        c.rotational_velocity_std = 0.0;
        c.wall_repel_strength = 0.0;
        c.thigmotaxis = 0.0;
        let gamma = 0.5;
        let sim = Simulator::new(&c, 0, None, 2, 2).unwrap();
        let s = Vec2::new(0.5, 0.5);
        let n = 4000;
        let got = sim.occupancy("t", s, gamma, true, n).unwrap();
        let step = c.speed_mean * c.dt;
        let mut counts = [0usize; 64];
        for p in &got {
            let d = (p[0] - s.x).hypot(p[1] - s.y) / step;
            let j = d.round();
            assert!((d - j).abs() < 1e-4, "distance {d} steps is not a whole number");
            counts[j as usize] += 1;
        }
        let mean = counts.iter().enumerate().map(|(j, c)| j as f64 * *c as f64).sum::<f64>() / n as f64;
        // Geometric: mean γ/(1−γ) = 1, variance γ/(1−γ)² = 2; 4 standard errors.
        assert!((mean - 1.0).abs() < 4.0 * (2.0 / n as f64).sqrt(), "mean {mean}");
        for (j, &k) in counts.iter().enumerate().take(4) {
            let p = (1.0 - gamma) * gamma.powi(j as i32);
            let sd = (n as f64 * p * (1.0 - p)).sqrt();
            assert!((k as f64 - n as f64 * p).abs() < 4.0 * sd, "j = {j}: {k} vs {}", n as f64 * p);
        }
        // Without the source term, j ≥ 1.
        let later = sim.occupancy("u", s, gamma, false, 200).unwrap();
        assert!(later.iter().all(|p| (p[0] - s.x).hypot(p[1] - s.y) > 0.5 * step));
    }

    /// The walls env's wall keeps the occupancy on its side: from 5 cm left of the wall, with
    /// γ = 0.95, almost no sample lies right of it (the way round is over 1 m), while in the open
    /// box the same source spreads to both sides.
    #[test]
    fn walls_show_in_the_occupancy() {
        let s = Vec2::new(0.35, 0.4);
        let right = |id: EnvId| {
            let sim = Simulator::new(&riab(id), 0, None, 3, 2).unwrap();
            let got = sim.occupancy("t", s, 0.95, true, 2000).unwrap();
            got.iter().filter(|p| p[0] > 0.4).count() as f64 / got.len() as f64
        };
        let (walls, open) = (right(EnvId::RiabWalls), right(EnvId::RiabRandom));
        assert!(walls < 0.01 && open > 0.1, "walls {walls}, open {open}");
    }

    #[test]
    fn discounted_observations_of_gamma_zero_are_the_source_vectors() {
        let c = riab(EnvId::RiabRandom);
        let sim = Simulator::new(&c, 0, None, 1, 2).unwrap();
        let sources = [Vec2::new(0.2, 0.2), Vec2::new(0.8, 0.3)];
        let got = sim.discounted_observations("d", &sources, 3, 0.0, true).unwrap();
        let env = RiabEnv::new(&c, 0, 0, 1);
        let mut rates = vec![0.0; c.cells.n];
        for (k, chunk) in got.chunks(c.cells.n).enumerate() {
            env.cells().rates_at(env.arena(), sources[k / 3], &mut rates);
            for (a, b) in chunk.iter().zip(&rates) {
                assert!((*a as f64 - b).abs() < 1e-6);
            }
        }
        let with = sim.discounted_observations("d", &sources, 3, 0.9, true).unwrap();
        assert_eq!(with.len(), 2 * 3 * c.cells.n);
        assert!(with.iter().all(|v| v.is_finite()));
    }
}
