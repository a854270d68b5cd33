//! The agent's motion model: RatInABox's `Agent.update` in 2-D (v1.15.3, `ratinabox/Agent.py`),
//! for E agents at once, held as a structure of arrays.
//!
//! One step, for each agent (spec §2.3):
//! 1. Rotational velocity ω: Euler OU, `ω += −ω·dt/τ_ω + σ_ω √(2dt/τ_ω) ξ`; then v is rotated by
//!    the *new* ω·dt.
//! 2. Speed: the latent normal `z = Φ⁻¹(F_Rayleigh(|v|))` is recomputed from |v| every step (no z
//!    is stored, so anything that changed the speed feeds back), advanced by a unit OU with τ_v,
//!    and mapped back to a Rayleigh speed.
//! 3. Drift control (optional): `v += (u − v)·dt/τ_d`, τ_d = τ_v / ratio.
//! 4. Walls within `d`: a spring on v weighted 3(1 − thigmotaxis)², and a conveyor shift of p
//!    weighted 6·thigmotaxis².
//! 5. `p += v·dt`; 6. while the step from the previous position crosses a wall, bounce off the
//!    lowest-index one at half `speed_mean` and restart the step from the previous position;
//! 7. the boundary-condition safety net; 8. measured velocity and rotational velocity from the
//!    step taken; 9. head direction low-pass filtered from the measured velocity.
//!
//! Each agent draws from its own RNG stream, so its trajectory does not depend on how many agents
//! are stepped together.

use rand::Rng;
use rand_distr::StandardNormal;

use super::arena::Arena;
use super::config::RiabConfig;
use super::geometry::{pi_domain, Vec2};
use super::normal;

/// How many bounces one step may take before the agent stays where it was. RatInABox v1.15 loops
/// without bound; in a corner the half-speed restarted step always escapes within a few
/// iterations, so this cap only guards against a pathological polygon.
const MAX_BOUNCES: usize = 32;

/// The motion parameters, read once from the config.
#[derive(Debug, Clone, PartialEq)]
pub struct MotionParams {
    pub dt: f64,
    pub speed_mean: f64,
    pub speed_std: f64,
    pub speed_coherence_time: f64,
    pub rotational_velocity_std: f64,
    pub rotational_velocity_coherence_time: f64,
    pub head_direction_smoothing_timescale: f64,
    pub thigmotaxis: f64,
    pub wall_repel_distance: f64,
    pub wall_repel_strength: f64,
    /// RatInABox's `drift_to_random_strength_ratio` for drift-velocity control.
    pub drift_to_random_strength_ratio: f64,
}

impl MotionParams {
    pub fn from_config(c: &RiabConfig) -> Self {
        Self {
            dt: c.dt,
            speed_mean: c.speed_mean,
            speed_std: c.speed_std,
            speed_coherence_time: c.speed_coherence_time,
            rotational_velocity_std: c.rotational_velocity_std,
            rotational_velocity_coherence_time: c.rotational_velocity_coherence_time,
            head_direction_smoothing_timescale: c.head_direction_smoothing_timescale,
            thigmotaxis: c.thigmotaxis,
            wall_repel_distance: c.wall_repel_distance,
            wall_repel_strength: c.wall_repel_strength,
            drift_to_random_strength_ratio: 1.0,
        }
    }
}

/// The state of E agents (structure of arrays). Fields are public for tests and analyses; the
/// history a scientist reads (position, measured velocity, head direction) is here too.
#[derive(Debug, Clone, Default)]
pub struct Agents {
    pub pos: Vec<Vec2>,
    /// The internal velocity the dynamics act on.
    pub vel: Vec<Vec2>,
    /// The internal rotational velocity ω (rad/s).
    pub rot_vel: Vec<f64>,
    /// Δp/dt of the last step (what RatInABox's history records as `vel`).
    pub measured_vel: Vec<Vec2>,
    pub measured_rot_vel: Vec<f64>,
    pub head_direction: Vec<Vec2>,
    /// Whether the last step bounced off a wall.
    pub bounced: Vec<bool>,
}

impl Agents {
    /// E agents initialised as `initialise_position_and_velocity`: a uniform position, speed
    /// `speed_mean` in a uniform direction, ω = 0. `rngs[i]` is agent i's stream.
    pub fn new<R: Rng>(arena: &Arena, params: &MotionParams, rngs: &mut [R]) -> Agents {
        let mut a = Agents::default();
        for rng in rngs.iter_mut() {
            let pos = arena.sample_random(rng);
            let phi = rng.random::<f64>() * std::f64::consts::TAU;
            let v = Vec2::new(phi.cos(), phi.sin()) * params.speed_mean;
            a.pos.push(pos);
            a.vel.push(v);
            a.rot_vel.push(0.0);
            a.measured_vel.push(v);
            a.measured_rot_vel.push(0.0);
            a.head_direction.push(v / v.norm());
            a.bounced.push(false);
        }
        a
    }

    pub fn len(&self) -> usize {
        self.pos.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pos.is_empty()
    }

    /// Advances every agent by one step. `drift`, if given, holds one target velocity per agent.
    pub fn step<R: Rng>(&mut self, arena: &Arena, p: &MotionParams, rngs: &mut [R], drift: Option<&[Vec2]>) {
        debug_assert_eq!(rngs.len(), self.len());
        for (i, rng) in rngs.iter_mut().enumerate() {
            self.step_one(i, arena, p, rng, drift.map(|d| d[i]));
        }
    }

    /// Advances agent `i` alone by one step (`riab-goal` leaves an agent in place on its reset rows).
    pub fn step_one<R: Rng>(&mut self, i: usize, arena: &Arena, p: &MotionParams, rng: &mut R, drift: Option<Vec2>) {
        let dt = p.dt;
        let prev_pos = self.pos[i];
        let prev_mv = self.measured_vel[i];
        let mut pos = prev_pos;
        let mut v = self.vel[i];

        // 1. Rotational velocity (Euler OU, drift 0), then rotate v by the new ω·dt.
        let a_w = dt / p.rotational_velocity_coherence_time;
        let xi: f64 = rng.sample(StandardNormal);
        let mut w = self.rot_vel[i];
        w += -w * a_w + p.rotational_velocity_std * (2.0 * a_w).sqrt() * xi;
        self.rot_vel[i] = w;
        v = v.rotate(w * dt);

        // 2. Speed through the latent normal, recomputed from |v|.
        let mut s = v.norm();
        if s == 0.0 {
            v = Vec2::new(1e-8, 0.0);
            s = 1e-8;
        }
        let mut z = normal::rayleigh_to_normal(s, p.speed_mean);
        let a_v = dt / p.speed_coherence_time;
        let xi: f64 = rng.sample(StandardNormal);
        z += -z * a_v + (2.0 * a_v).sqrt() * xi;
        let s_new = if p.speed_std == 0.0 { p.speed_mean } else { normal::normal_to_rayleigh(z, p.speed_mean) };
        v = v * (s_new / s);

        // 3. Drift-velocity control (deterministic OU towards u).
        if let Some(u) = drift {
            let tau_d = p.speed_coherence_time / p.drift_to_random_strength_ratio;
            v += (u - v) * (dt / tau_d);
        }

        // 4. Wall repulsion: spring on v and conveyor belt on p, split by thigmotaxis.
        let walls = arena.walls();
        if p.wall_repel_strength != 0.0 && !walls.is_empty() {
            let d = p.wall_repel_distance;
            let big_v = p.wall_repel_strength * p.speed_mean;
            let k = big_v * big_v / (d * d);
            let mut acc = Vec2::ZERO;
            let mut conveyor = Vec2::ZERO;
            for wall in walls {
                let r = wall.vector_to(pos);
                let x = r.norm();
                if x <= d && x > 0.0 {
                    let n = r / x;
                    acc += n * (k * (d - x));
                    let q = (d - x) / d;
                    conveyor += n * (big_v * (1.0 - (1.0 - q * q).sqrt()));
                }
            }
            let th = p.thigmotaxis;
            v += acc * (3.0 * (1.0 - th) * (1.0 - th) * dt);
            pos += conveyor * (6.0 * th * th * dt);
        }

        // 5. Integrate.
        pos += v * dt;

        // 6. Bounce off the lowest-index crossed wall, restarting from the previous position.
        let mut bounced = false;
        let mut clear = false;
        for _ in 0..MAX_BOUNCES {
            let step = super::geometry::Segment::new(prev_pos, pos);
            match walls.iter().find(|w| w.crosses(&step)) {
                None => {
                    clear = true;
                    break;
                }
                Some(wall) => {
                    bounced = true;
                    v = wall.bounce(v);
                    v = v * (0.5 * p.speed_mean / v.norm());
                    pos = prev_pos + v * dt;
                }
            }
        }
        if !clear {
            pos = prev_pos;
        }
        self.bounced[i] = bounced;

        // 7. Boundary-condition safety net.
        if !arena.contains(pos) {
            pos = arena.apply_boundary_conditions(pos, rng);
        }

        // 8. Measured velocity and rotational velocity of the step taken.
        let mut mv = arena.vector_between(prev_pos, pos) / dt;
        if mv.norm2() == 0.0 {
            let (a, b): (f64, f64) = (rng.sample(StandardNormal), rng.sample(StandardNormal));
            mv = Vec2::new(a, b) * 1e-8;
        }
        self.measured_rot_vel[i] = pi_domain(mv.angle() - prev_mv.angle()) / dt;

        // 9. Head direction: low-pass filter of the measured direction.
        let tau_h = p.head_direction_smoothing_timescale;
        let mv_hat = mv / mv.norm();
        let hd = if tau_h <= dt { mv_hat } else { self.head_direction[i] * (1.0 - dt / tau_h) + mv_hat * (dt / tau_h) };
        self.head_direction[i] = hd / hd.norm();

        self.pos[i] = pos;
        self.vel[i] = v;
        self.measured_vel[i] = mv;
    }
}

#[cfg(test)]
mod tests {
    //! Golden and statistical checks against `ratinabox-spec.md` §7. Seeds are fixed, so these
    //! are deterministic; the tolerances come from the sample sizes (noted at each test), so only
    //! a defect in the model, not bad luck, makes one fail.

    use super::*;
    use crate::envs::config::{BoundaryConditions, EnvConfig, EnvId, RiabConfig};
    use common::rng::{self, StreamRng};

    fn config(id: EnvId) -> RiabConfig {
        match EnvConfig::defaults(id) {
            EnvConfig::Riab(c) => c,
            _ => unreachable!(),
        }
    }

    fn periodic(mut c: RiabConfig) -> RiabConfig {
        c.arena.boundary_conditions = BoundaryConditions::Periodic;
        c
    }

    fn rngs(seed: u64, n: usize) -> Vec<StreamRng> {
        (0..n).map(|i| rng::stream(seed, &["test".into(), i.into()])).collect()
    }

    /// Runs E agents for `steps` steps, calling `f` after each.
    fn run(c: &RiabConfig, seed: u64, e: usize, steps: usize, mut f: impl FnMut(&Agents)) {
        let arena = Arena::new(&c.arena);
        let p = MotionParams::from_config(c);
        let mut r = rngs(seed, e);
        let mut agents = Agents::new(&arena, &p, &mut r);
        for _ in 0..steps {
            agents.step(&arena, &p, &mut r, None);
            f(&agents);
        }
    }

    /// One-sample Kolmogorov–Smirnov statistic against a cdf.
    fn ks(mut xs: Vec<f64>, cdf: impl Fn(f64) -> f64) -> f64 {
        xs.sort_by(f64::total_cmp);
        let n = xs.len() as f64;
        xs.iter()
            .enumerate()
            .map(|(i, &x)| {
                let f = cdf(x);
                (f - i as f64 / n).abs().max(((i + 1) as f64 / n - f).abs())
            })
            .fold(0.0, f64::max)
    }

    /// §7.1: in a periodic box (no walls) the internal speed is Rayleigh(σ = speed_mean).
    /// Samples are thinned to every 40th step (2 s, ≈ 3 speed coherence times) so they are
    /// nearly independent; with n = 64 × 300 = 19,200 the α = 0.001 critical value is
    /// 1.95/√n = 0.0141.
    #[test]
    fn speed_is_rayleigh() {
        let c = periodic(config(EnvId::RiabRandom));
        let mut speeds = Vec::new();
        let mut t = 0usize;
        run(&c, 11, 64, 12_000, |a| {
            t += 1;
            if t.is_multiple_of(40) {
                speeds.extend(a.vel.iter().map(|v| v.norm()));
            }
        });
        let n = speeds.len() as f64;
        let sigma = c.speed_mean;
        let d = ks(speeds, |s| 1.0 - (-s * s / (2.0 * sigma * sigma)).exp());
        assert!(d < 1.95 / n.sqrt(), "KS D = {d} over n = {n}");
    }

    /// §7.2: the latent normal z = Φ⁻¹(F(|v|)) is an Euler OU with a = dt/τ_v: lag-1
    /// autocorrelation 1 − a = 0.9286 and std 1/√(1 − a/2) = 1.018 at dt = 0.05.
    /// Over 64 streams × 20,000 steps the effective sample size for the variance is about
    /// n·a/2 ≈ 46,000 (sd of the std ≈ 0.3%); we allow 1.5%.
    #[test]
    fn latent_speed_ou_statistics() {
        let c = periodic(config(EnvId::RiabRandom));
        let e = 64;
        let mut prev = vec![f64::NAN; e];
        let (mut sum, mut sum2, mut lag, mut n, mut nl) = (0.0, 0.0, 0.0, 0.0, 0.0);
        let mut zs = vec![0.0; e];
        run(&c, 12, e, 20_000, |a| {
            for (i, v) in a.vel.iter().enumerate() {
                let z = normal::rayleigh_to_normal(v.norm(), c.speed_mean);
                zs[i] = z;
                sum += z;
                sum2 += z * z;
                n += 1.0;
                if prev[i].is_finite() {
                    lag += z * prev[i];
                    nl += 1.0;
                }
            }
            prev.copy_from_slice(&zs);
        });
        let mean = sum / n;
        let var = sum2 / n - mean * mean;
        let acf = (lag / nl - mean * mean) / var;
        let a = c.dt / c.speed_coherence_time;
        assert!((var.sqrt() - 1.0 / (1.0 - a / 2.0).sqrt()).abs() < 0.015, "std {}", var.sqrt());
        assert!((acf - (1.0 - a)).abs() < 0.005, "lag-1 autocorrelation {acf}");
        assert!(mean.abs() < 0.02, "mean {mean}");
    }

    /// §7.3: the internal ω has std 120°/√(1 − dt/0.16) = 144.7°/s at dt = 0.05, in a solid box
    /// too (walls do not touch ω), and lag-1 autocorrelation 1 − dt/0.08 = 0.375. With
    /// 64 × 10,000 samples of a process that decorrelates in about one step, the sd of the std
    /// estimate is ≈ 0.15°/s; we allow 1°/s.
    #[test]
    fn rotational_velocity_std_at_dt_005() {
        for c in [config(EnvId::RiabRandom), periodic(config(EnvId::RiabRandom))] {
            let e = 64;
            let (mut sum2, mut lag, mut n) = (0.0, 0.0, 0.0);
            let mut prev = vec![0.0; e];
            run(&c, 13, e, 10_000, |a| {
                for (i, &w) in a.rot_vel.iter().enumerate() {
                    sum2 += w * w;
                    lag += w * prev[i];
                    n += 1.0;
                    prev[i] = w;
                }
            });
            let std_deg = (sum2 / n).sqrt().to_degrees();
            assert!((std_deg - 144.7).abs() < 1.0, "ω std {std_deg}°/s");
            let acf = lag / sum2;
            assert!((acf - 0.375).abs() < 0.01, "ω lag-1 autocorrelation {acf}");
        }
    }

    /// §7.7: right after a collision, |v| = 0.5·speed_mean = 0.04 and the normal component has
    /// flipped. An agent 1 mm from the right wall, heading straight at it at 1 m/s, with no
    /// noise and no repulsion.
    #[test]
    fn post_bounce_speed_is_four_cm_per_second() {
        let mut c = config(EnvId::RiabRandom);
        c.rotational_velocity_std = 0.0;
        c.speed_std = 0.0;
        c.wall_repel_strength = 0.0;
        c.speed_mean = 0.08;
        let arena = Arena::new(&c.arena);
        let mut p = MotionParams::from_config(&c);
        p.speed_std = 0.0;
        let mut r = rngs(1, 1);
        let mut a = Agents::new(&arena, &p, &mut r);
        a.pos[0] = Vec2::new(0.999, 0.5);
        a.vel[0] = Vec2::new(1.0, 0.0);
        // speed_std = 0 pins the speed to speed_mean: a 4 mm step, which crosses x = 1.
        a.step(&arena, &p, &mut r, None);
        assert!(a.bounced[0]);
        let v = a.vel[0];
        assert!((v.norm() - 0.04).abs() < 1e-12, "post-bounce speed {}", v.norm());
        assert!(v.x < 0.0 && v.y.abs() < 1e-12);
        assert!((a.pos[0].x - (0.999 - 0.04 * c.dt)).abs() < 1e-12);
    }

    /// §7.8: periodic box, no noise, speed pinned (speed_std = 0), dt = 0.01, v₀ = (0.08, 0),
    /// drift u = (0, 0.3): v turns towards u with |v| = 0.08 + 0.22·dt/0.7 = 0.0831; measured
    /// (0.004, 0.083) after 0.7 s and (0, 0.0831) after 2 s.
    #[test]
    fn deterministic_drift() {
        let mut c = periodic(config(EnvId::RiabRandom));
        c.dt = 0.01;
        c.rotational_velocity_std = 0.0;
        c.speed_std = 0.0;
        let arena = Arena::new(&c.arena);
        let p = MotionParams::from_config(&c);
        let mut r = rngs(2, 1);
        let mut a = Agents::new(&arena, &p, &mut r);
        a.pos[0] = Vec2::new(0.5, 0.5);
        a.vel[0] = Vec2::new(0.08, 0.0);
        let u = [Vec2::new(0.0, 0.3)];
        let speed = 0.08 + 0.22 * 0.01 / 0.7;
        for _ in 0..70 {
            a.step(&arena, &p, &mut r, Some(&u));
        }
        let v = a.vel[0];
        assert!((v.x - 0.004).abs() < 0.0015 && (v.y - 0.083).abs() < 0.0005, "v(0.7 s) = {v:?}");
        for _ in 70..200 {
            a.step(&arena, &p, &mut r, Some(&u));
        }
        let v = a.vel[0];
        assert!(v.x.abs() < 1e-4 && (v.y - 0.0831).abs() < 1e-4, "v(2 s) = {v:?}");
        // Once aligned with u, the speed reset and one drift step give exactly this speed.
        assert!((v.norm() - speed).abs() < 1e-6, "|v| = {}", v.norm());
    }

    /// §7.4: the time spent near the walls rises with thigmotaxis (0, 0.2, 0.5, 1). With 32
    /// streams × 24,000 steps per level the fractions are known to about ±0.5%; the levels
    /// differ by several times that.
    #[test]
    fn wall_occupancy_rises_with_thigmotaxis() {
        let mut fractions = Vec::new();
        for th in [0.0, 0.2, 0.5, 1.0] {
            let mut c = config(EnvId::RiabRandom);
            c.thigmotaxis = th;
            let (mut near, mut n) = (0usize, 0usize);
            run(&c, 14, 32, 24_000, |a| {
                for p in &a.pos {
                    let d = p.x.min(1.0 - p.x).min(p.y).min(1.0 - p.y);
                    near += usize::from(d < 0.05);
                    n += 1;
                }
            });
            fractions.push(near as f64 / n as f64);
        }
        for w in fractions.windows(2) {
            assert!(w[1] > w[0] + 0.01, "occupancy within 5 cm of a wall: {fractions:?}");
        }
    }

    /// §7.6: the agent never leaves the box and never crosses the thesis wall, so going from
    /// one side of x = 0.4 to the other needs the 10 cm gap at the top: side changes are far
    /// rarer than in the open box. (The spec's 0.18 occupancy left of the wall is one 20-minute
    /// run; over many streams the occupancy tends to the area share, so it is not tested here.)
    #[test]
    fn no_wall_crossing_in_riab_walls() {
        let side_changes = |c: &RiabConfig| {
            let arena = Arena::new(&c.arena);
            let wall = super::super::geometry::Segment::new(Vec2::new(0.4, 0.0), Vec2::new(0.4, 0.9));
            let mut prev: Vec<Vec2> = Vec::new();
            let (mut changes, mut crossings, mut outside) = (0usize, 0usize, 0usize);
            run(c, 15, 16, 24_000, |a| {
                for (i, p) in a.pos.iter().enumerate() {
                    if let Some(q) = prev.get(i) {
                        crossings += usize::from(super::super::geometry::Segment::new(*q, *p).crosses(&wall));
                        changes += usize::from((q.x < 0.4) != (p.x < 0.4));
                    }
                    outside += usize::from(!arena.contains(*p));
                }
                prev.clone_from(&a.pos);
            });
            (changes, crossings, outside)
        };
        let (with_wall, crossings, outside) = side_changes(&config(EnvId::RiabWalls));
        assert_eq!((crossings, outside), (0, 0));
        let (open, crossings, outside) = side_changes(&config(EnvId::RiabRandom));
        assert!(crossings > 0 && outside == 0);
        assert!(with_wall * 5 < open, "side changes: {with_wall} with the wall, {open} without");
    }
}
