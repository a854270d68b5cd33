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

    fn step_one<R: Rng>(&mut self, i: usize, arena: &Arena, p: &MotionParams, rng: &mut R, drift: Option<Vec2>) {
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
        let hd = if tau_h <= dt {
            mv_hat
        } else {
            self.head_direction[i] * (1.0 - dt / tau_h) + mv_hat * (dt / tau_h)
        };
        self.head_direction[i] = hd / hd.norm();

        self.pos[i] = pos;
        self.vel[i] = v;
        self.measured_vel[i] = mv;
    }
}
