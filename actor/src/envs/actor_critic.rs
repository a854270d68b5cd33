//! The continuous-time actor–critic that drives `riab-goal`: RatInABox's
//! `demos/actor_critic_example.ipynb` as `Sruthi-sk/dsm-hippocampus` `dsm/scripts/actor_critic_rat.py`
//! uses it (cited below as `:LINE` of `actor_critic_rat.py` at commit 24d6463), in plain f64 Rust.
//!
//! - [`Mlp`]: PyTorch's `nn.Sequential` of `Linear` layers with a ReLU after every hidden layer
//!   (`MultiLayerPerceptron`, `:106-125`), with PyTorch's default `Linear` init, forward and backward.
//! - [`Actor`]: an MLP n → 50 → 2 whose mean velocity is `0.5·tanh(·)` (`VxVyGaussianMLP.forward`,
//!   `:140-141`); actions are drawn from N(mean, 0.1²) per axis (`sample_action`, `:143-153`) and
//!   trained on the gradient of their log-probability.
//! - [`Critic`]: an MLP n → 20 → 20 → 1, the value V, with the continuous TD error
//!   `δ = r + dV/dt − V/τ` (`Critic._update_td_error`, `:84-91`).
//! - [`TdLearner`]: the eligibility traces and the SGD step both share (`BaseActorCritic`, `:11-70`).
//! - [`GoalPolicy`]: the frozen weights, serialisable, as `riab-goal` records with them.
//!
//! Everything is pure: no I/O, and randomness only through the caller's RNG.

use rand::Rng;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

use super::geometry::Vec2;

/// A fully connected ReLU network: `Linear(sizes[0], sizes[1])`, ReLU, …, `Linear(·, sizes[L])`,
/// with no activation after the last layer.
///
/// `params` holds, layer after layer, the weight matrix (out × in, row-major, PyTorch's layout)
/// and then the bias (out).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mlp {
    sizes: Vec<usize>,
    params: Vec<f64>,
}

/// The activations of one forward pass, kept for the backward pass, plus backward scratch.
/// Build one per network with [`Mlp::workspace`]; passes then allocate nothing.
#[derive(Debug, Clone)]
pub struct Workspace {
    /// `acts[0]` the input, `acts[l]` the post-ReLU output of hidden layer l, `acts[L]` the raw
    /// output of the last layer.
    acts: Vec<Vec<f64>>,
    /// ∂L/∂(layer output), the current and the next layer down.
    d_out: Vec<f64>,
    d_in: Vec<f64>,
}

impl Mlp {
    /// A network with PyTorch's default `nn.Linear` init, layer by layer: weights and biases both
    /// U(−1/√fan_in, 1/√fan_in) (`kaiming_uniform_(a=√5)` gives exactly that bound). Weights are
    /// drawn before biases in each layer, as PyTorch does; the streams differ from torch's, of course.
    pub fn new<R: Rng>(sizes: &[usize], rng: &mut R) -> Mlp {
        assert!(sizes.len() >= 2 && sizes.iter().all(|&s| s > 0), "an MLP needs ≥ 2 non-zero layer sizes");
        let mut params = Vec::with_capacity(Self::count(sizes));
        for w in sizes.windows(2) {
            let (n_in, n_out) = (w[0], w[1]);
            let bound = 1.0 / (n_in as f64).sqrt();
            params.extend((0..n_out * n_in + n_out).map(|_| rng.random_range(-bound..bound)));
        }
        Mlp { sizes: sizes.to_vec(), params }
    }

    /// A network with the given parameters (layout as in the struct doc).
    pub fn from_params(sizes: &[usize], params: Vec<f64>) -> Result<Mlp, String> {
        let m = Mlp { sizes: sizes.to_vec(), params };
        m.check()?;
        Ok(m)
    }

    fn count(sizes: &[usize]) -> usize {
        sizes.windows(2).map(|w| w[0] * w[1] + w[1]).sum()
    }

    /// Checks what deserialisation cannot: ≥ 2 non-zero sizes, the parameter count, finiteness.
    pub fn check(&self) -> Result<(), String> {
        if self.sizes.len() < 2 || self.sizes.contains(&0) {
            return Err(format!("layer sizes {:?}: need at least two, all non-zero", self.sizes));
        }
        let want = Self::count(&self.sizes);
        if self.params.len() != want {
            return Err(format!("layer sizes {:?} need {want} parameters, found {}", self.sizes, self.params.len()));
        }
        if self.params.iter().any(|p| !p.is_finite()) {
            return Err("a parameter is not finite".into());
        }
        Ok(())
    }

    pub fn sizes(&self) -> &[usize] {
        &self.sizes
    }

    pub fn params(&self) -> &[f64] {
        &self.params
    }

    pub fn num_params(&self) -> usize {
        self.params.len()
    }

    pub fn n_in(&self) -> usize {
        self.sizes[0]
    }

    pub fn n_out(&self) -> usize {
        *self.sizes.last().expect("checked non-empty")
    }

    /// Buffers sized for this network.
    pub fn workspace(&self) -> Workspace {
        let widest = self.sizes.iter().copied().max().unwrap_or(0);
        Workspace {
            acts: self.sizes.iter().map(|&s| vec![0.0; s]).collect(),
            d_out: vec![0.0; widest],
            d_in: vec![0.0; widest],
        }
    }

    /// The forward pass; the activations stay in `ws` for [`Mlp::backward`].
    ///
    /// # Shapes
    /// `x: [n_in] -> [n_out]`
    pub fn forward<'w>(&self, x: &[f64], ws: &'w mut Workspace) -> &'w [f64] {
        debug_assert_eq!(x.len(), self.n_in());
        ws.acts[0].copy_from_slice(x);
        let last = self.sizes.len() - 2;
        let mut offset = 0;
        for l in 0..=last {
            let (n_in, n_out) = (self.sizes[l], self.sizes[l + 1]);
            let (w, b) = self.params[offset..offset + n_out * n_in + n_out].split_at(n_out * n_in);
            let (before, after) = ws.acts.split_at_mut(l + 1);
            let (input, output) = (&before[l], &mut after[0]);
            for (o, out) in output.iter_mut().enumerate() {
                let row = &w[o * n_in..(o + 1) * n_in];
                let z = b[o] + row.iter().zip(input).map(|(a, b)| a * b).sum::<f64>();
                *out = if l < last { z.max(0.0) } else { z };
            }
            offset += n_out * n_in + n_out;
        }
        &ws.acts[last + 1]
    }

    /// The raw output of the last forward pass in `ws`.
    pub fn output<'w>(&self, ws: &'w Workspace) -> &'w [f64] {
        &ws.acts[self.sizes.len() - 1]
    }

    /// Writes into `grad` the gradient, with respect to every parameter, of `Σ_k g_out[k]·out[k]`
    /// at the activations of the last forward pass in `ws` (one reverse-mode sweep). A ReLU's
    /// derivative at 0 is 0, as in PyTorch.
    pub fn backward(&self, ws: &mut Workspace, g_out: &[f64], grad: &mut [f64]) {
        debug_assert_eq!(g_out.len(), self.n_out());
        debug_assert_eq!(grad.len(), self.params.len());
        let n_layers = self.sizes.len() - 1;
        ws.d_out[..g_out.len()].copy_from_slice(g_out);
        let mut end = self.params.len();
        for l in (0..n_layers).rev() {
            let (n_in, n_out) = (self.sizes[l], self.sizes[l + 1]);
            let start = end - (n_out * n_in + n_out);
            // Through the ReLU of a hidden layer: its output is > 0 exactly where z > 0.
            if l + 1 < n_layers {
                for (d, &a) in ws.d_out[..n_out].iter_mut().zip(&ws.acts[l + 1]) {
                    if a <= 0.0 {
                        *d = 0.0;
                    }
                }
            }
            let input = &ws.acts[l];
            let (gw, gb) = grad[start..end].split_at_mut(n_out * n_in);
            for o in 0..n_out {
                let d = ws.d_out[o];
                gb[o] = d;
                for (g, &x) in gw[o * n_in..(o + 1) * n_in].iter_mut().zip(input) {
                    *g = d * x;
                }
            }
            if l > 0 {
                let w = &self.params[start..start + n_out * n_in];
                let d_in = &mut ws.d_in[..n_in];
                d_in.fill(0.0);
                for o in 0..n_out {
                    let d = ws.d_out[o];
                    if d != 0.0 {
                        for (di, &wi) in d_in.iter_mut().zip(&w[o * n_in..(o + 1) * n_in]) {
                            *di += d * wi;
                        }
                    }
                }
                std::mem::swap(&mut ws.d_out, &mut ws.d_in);
            }
            end = start;
        }
    }
}

/// The learning constants both networks share.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TdParams {
    /// The simulation step (s).
    pub dt: f64,
    /// τ of the TD error (s).
    pub td_tau: f64,
    /// τ_e of the eligibility traces (s).
    pub trace_tau: f64,
    pub learning_rate: f64,
}

/// A network with an eligibility trace per parameter, trained by TD-modulated SGD.
#[derive(Debug, Clone)]
pub struct TdLearner {
    pub net: Mlp,
    ws: Workspace,
    grad: Vec<f64>,
    trace: Vec<f64>,
}

impl TdLearner {
    pub fn new(net: Mlp) -> TdLearner {
        let n = net.num_params();
        TdLearner { ws: net.workspace(), grad: vec![0.0; n], trace: vec![0.0; n], net }
    }

    /// Zeroes the traces (`initialise_traces`, called at the start of every episode by
    /// `run_episode`, `:199-200`).
    pub fn reset_trace(&mut self) {
        self.trace.fill(0.0);
    }

    pub fn trace(&self) -> &[f64] {
        &self.trace
    }

    /// One training step on the output gradient `g_out` at the last forward pass
    /// (`_train_step`, `:43-48`, with `_update_traces`, `:59-68`):
    /// `g = ∇θ Σ g_out·out`; `e ← (1 − dt/τ_e)·e + (dt/τ_e)·g`; `θ ← θ + lr·(e·δ·dt)`.
    /// The SGD is maximising (`maximize=True`, `:20`), with no weight decay (`L2 = 0`).
    fn learn(&mut self, g_out: &[f64], td_error: f64, p: &TdParams) {
        self.net.backward(&mut self.ws, g_out, &mut self.grad);
        let k = p.dt / p.trace_tau;
        let step = p.learning_rate * td_error * p.dt;
        for ((theta, e), g) in self.net.params.iter_mut().zip(&mut self.trace).zip(&self.grad) {
            *e = (1.0 - k) * *e + k * g;
            *theta += step * *e;
        }
    }
}

/// The critic: V(s) from the place-cell rates, and the TD error.
///
/// It holds the value of the last two inputs it saw, as `Critic.update` keeps `firingrate` and
/// `firingrate_last` (`Critic.update`, `:76-82`). Reproduced as is, including the reference's one-step lag: at step
/// t the agent has just moved to s_t and received r_t, but the critic has only seen up to
/// s_{t−1}, so `δ_t = r_t + (V(s_{t−1}) − V(s_{t−2}))/dt − V(s_{t−1})/τ`, and the gradient is
/// that of V(s_{t−1}); only then does it read s_t ([`Critic::observe`]).
#[derive(Debug, Clone)]
pub struct Critic {
    pub learner: TdLearner,
    /// V of the last input observed, at the parameters of that moment.
    value: f64,
    /// V of the input before it (`firingrate_last`).
    value_last: f64,
}

impl Critic {
    pub fn new(net: Mlp) -> Critic {
        assert_eq!(net.n_out(), 1, "the critic has one output");
        Critic { learner: TdLearner::new(net), value: 0.0, value_last: 0.0 }
    }

    /// Reads a first input: V and V_last both become V(x), so the first δ has dV/dt = 0
    /// (`firingrate_last = firingrate` at construction, `:29-30`).
    pub fn start(&mut self, x: &[f64]) {
        self.value = self.learner.net.forward(x, &mut self.learner.ws)[0];
        self.value_last = self.value;
    }

    /// `δ = r + (V − V_last)/dt − V/τ` (`_update_td_error`, `:84-91`).
    pub fn td_error(&self, reward: f64, p: &TdParams) -> f64 {
        reward + (self.value - self.value_last) / p.dt - self.value / p.td_tau
    }

    /// Trains on ∇V of the last input, modulated by δ.
    pub fn learn(&mut self, td_error: f64, p: &TdParams) {
        self.learner.learn(&[1.0], td_error, p);
    }

    /// Reads the new input: V_last ← V, V ← V(x) at the current parameters (`:80-81`).
    pub fn observe(&mut self, x: &[f64]) {
        self.value_last = self.value;
        self.value = self.learner.net.forward(x, &mut self.learner.ws)[0];
    }

    pub fn value(&self) -> f64 {
        self.value
    }
}

/// The actor: a Gaussian policy over a 2-D drift velocity with mean `scale·tanh(MLP(x))` and a
/// fixed std per axis.
#[derive(Debug, Clone)]
pub struct Actor {
    pub learner: TdLearner,
    pub action_scale: f64,
    pub noise_std: f64,
    /// The mean action at the last input observed.
    mean: Vec2,
}

impl Actor {
    pub fn new(net: Mlp, action_scale: f64, noise_std: f64) -> Actor {
        assert_eq!(net.n_out(), 2, "the actor has two outputs (vx, vy)");
        Actor { learner: TdLearner::new(net), action_scale, noise_std, mean: Vec2::ZERO }
    }

    /// Reads a new input and recomputes the mean action (`Actor.update` → `NeuralNetworkNeurons.update`).
    pub fn observe(&mut self, x: &[f64]) {
        let out = self.learner.net.forward(x, &mut self.learner.ws);
        self.mean = Vec2::new(self.action_scale * out[0].tanh(), self.action_scale * out[1].tanh());
    }

    pub fn mean(&self) -> Vec2 {
        self.mean
    }

    /// Draws ξ ~ N(0, I₂) and returns `(mean + σ·ξ, ξ)` (`sample_action`, `:143-153`).
    pub fn sample<R: Rng>(&self, rng: &mut R) -> (Vec2, [f64; 2]) {
        let xi: [f64; 2] = [rng.sample(StandardNormal), rng.sample(StandardNormal)];
        (self.mean + Vec2::new(xi[0], xi[1]) * self.noise_std, xi)
    }

    /// Trains on ∇ log π(a | x) of the action `mean + σ·ξ` taken from the last input, modulated by
    /// δ (`Actor.update`, `:95-99`, with `L = log_prob`).
    ///
    /// With `μ_k = s·tanh(z_k)`: `∂ log π/∂μ_k = (a_k − μ_k)/σ² = ξ_k/σ` and
    /// `∂μ_k/∂z_k = s·(1 − tanh² z_k)`. With σ = 0 there is no exploration and no gradient.
    pub fn learn(&mut self, xi: [f64; 2], td_error: f64, p: &TdParams) {
        if self.noise_std == 0.0 {
            return;
        }
        let z = self.learner.net.output(&self.learner.ws);
        let g = [0, 1].map(|k| {
            let t = z[k].tanh();
            xi[k] / self.noise_std * self.action_scale * (1.0 - t * t)
        });
        self.learner.learn(&g, td_error, p);
    }
}

/// The frozen policy `riab-goal` records with: the actor's weights (and the critic's, for
/// analyses such as value maps), with the action head's constants.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GoalPolicy {
    pub actor: Mlp,
    pub critic: Mlp,
    pub action_scale: f64,
    pub action_noise_std: f64,
}

impl GoalPolicy {
    /// Freezes a trained actor and critic.
    pub fn freeze(actor: &Actor, critic: &Critic) -> GoalPolicy {
        GoalPolicy {
            actor: actor.learner.net.clone(),
            critic: critic.learner.net.clone(),
            action_scale: actor.action_scale,
            action_noise_std: actor.noise_std,
        }
    }

    /// Checks a deserialised policy against the number of place cells it will read.
    pub fn check(&self, n_cells: usize) -> Result<(), String> {
        self.actor.check().map_err(|e| format!("actor: {e}"))?;
        self.critic.check().map_err(|e| format!("critic: {e}"))?;
        if self.actor.n_in() != n_cells || self.critic.n_in() != n_cells {
            return Err(format!(
                "the networks read {} and {} inputs but there are {n_cells} place cells",
                self.actor.n_in(),
                self.critic.n_in()
            ));
        }
        if self.actor.n_out() != 2 || self.critic.n_out() != 1 {
            return Err("the actor must have 2 outputs and the critic 1".into());
        }
        if !(self.action_scale.is_finite() && self.action_noise_std.is_finite() && self.action_noise_std >= 0.0) {
            return Err("action_scale and action_noise_std must be finite (the std ≥ 0)".into());
        }
        Ok(())
    }

    /// Buffers for [`GoalPolicy::mean`] (one per thread).
    pub fn workspace(&self) -> Workspace {
        self.actor.workspace()
    }

    /// The mean drift velocity at input `x`.
    pub fn mean(&self, x: &[f64], ws: &mut Workspace) -> Vec2 {
        let out = self.actor.forward(x, ws);
        Vec2::new(self.action_scale * out[0].tanh(), self.action_scale * out[1].tanh())
    }

    /// A noisy action around `mean`, as in training (N(mean, σ²) per axis).
    pub fn sample<R: Rng>(&self, mean: Vec2, rng: &mut R) -> Vec2 {
        let xi: [f64; 2] = [rng.sample(StandardNormal), rng.sample(StandardNormal)];
        mean + Vec2::new(xi[0], xi[1]) * self.action_noise_std
    }

    /// The critic's value at input `x` (allocates its own buffers; for analyses, not stepping).
    pub fn value(&self, x: &[f64]) -> f64 {
        self.critic.forward(x, &mut self.critic.workspace())[0]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::rng;

    fn net(sizes: &[usize], seed: u64) -> Mlp {
        Mlp::new(sizes, &mut rng::stream(seed, &["test".into()]))
    }

    fn input(n: usize, seed: u64) -> Vec<f64> {
        let mut r = rng::stream(seed, &["input".into()]);
        (0..n).map(|_| r.random::<f64>()).collect()
    }

    /// Central differences with h = 1e-6 have truncation error O(h²·f''') and rounding error
    /// O(ε/h) ≈ 1e-10 on O(1) outputs; 1e-6 absolute + relative leaves room for both. The ReLU
    /// kinks are the only non-smooth points; random inputs hit one with probability ~0.
    fn assert_grad_matches(analytic: &[f64], f: &mut dyn FnMut(&[f64]) -> f64, params: &[f64]) {
        let h = 1e-6;
        let mut p = params.to_vec();
        for i in 0..p.len() {
            let orig = p[i];
            p[i] = orig + h;
            let up = f(&p);
            p[i] = orig - h;
            let down = f(&p);
            p[i] = orig;
            let numeric = (up - down) / (2.0 * h);
            let tol = 1e-6 * (1.0 + numeric.abs());
            assert!((analytic[i] - numeric).abs() < tol, "param {i}: analytic {} numeric {numeric}", analytic[i]);
        }
    }

    #[test]
    fn init_follows_pytorch_bounds() {
        let m = net(&[50, 20, 1], 1);
        assert_eq!(m.num_params(), 50 * 20 + 20 + 20 + 1);
        let (first, second) = m.params().split_at(50 * 20 + 20);
        let b1 = 1.0 / 50f64.sqrt();
        let b2 = 1.0 / 20f64.sqrt();
        assert!(first.iter().all(|p| p.abs() < b1));
        assert!(second.iter().all(|p| p.abs() < b2));
        // 1020 draws of U(−b, b): the max is within 1% of b with probability 1 − (0.99)^1020 ≈ 1.
        assert!(first.iter().fold(0f64, |a, p| a.max(p.abs())) > 0.99 * b1);
    }

    #[test]
    fn mlp_gradients_match_finite_differences() {
        for (sizes, seed) in [(vec![5, 4, 3], 1), (vec![6, 5, 4, 1], 2), (vec![3, 2], 3)] {
            let m = net(&sizes, seed);
            let x = input(sizes[0], seed);
            let g_out: Vec<f64> = (0..m.n_out()).map(|k| 0.5 + k as f64).collect();
            let mut ws = m.workspace();
            m.forward(&x, &mut ws);
            let mut grad = vec![0.0; m.num_params()];
            m.backward(&mut ws, &g_out, &mut grad);
            let mut f = |p: &[f64]| {
                let mm = Mlp::from_params(&sizes, p.to_vec()).unwrap();
                let out = mm.forward(&x, &mut mm.workspace()).to_vec();
                out.iter().zip(&g_out).map(|(o, g)| o * g).sum()
            };
            assert_grad_matches(&grad, &mut f, m.params());
        }
    }

    #[test]
    fn actor_gradient_is_that_of_the_log_probability() {
        let sizes = [6, 5, 2];
        let mut actor = Actor::new(net(&sizes, 4), 0.5, 0.1);
        let x = input(6, 4);
        actor.observe(&x);
        let (a, xi) = actor.sample(&mut rng::stream(4, &["noise".into()]));
        // Capture the gradient through a learning step with τ_e = dt, which makes the trace equal
        // to the gradient, and lr·δ·dt = 1, which makes the parameter change equal to it too.
        let before = actor.learner.net.params().to_vec();
        let p = TdParams { dt: 1.0, td_tau: 5.0, trace_tau: 1.0, learning_rate: 1.0 };
        actor.learn(xi, 1.0, &p);
        let grad = actor.learner.trace().to_vec();
        for ((new, old), g) in actor.learner.net.params().iter().zip(&before).zip(&grad) {
            assert!((new - old - g).abs() < 1e-15, "θ moves by lr·δ·dt·e = e");
        }
        let mut log_prob = |params: &[f64]| {
            let m = Mlp::from_params(&sizes, params.to_vec()).unwrap();
            let out = m.forward(&x, &mut m.workspace()).to_vec();
            let s = 0.1f64;
            [a.x, a.y]
                .iter()
                .zip(&out)
                .map(|(ak, zk)| {
                    let mu = 0.5 * zk.tanh();
                    -(ak - mu).powi(2) / (2.0 * s * s) - s.ln() - 0.5 * (2.0 * std::f64::consts::PI).ln()
                })
                .sum()
        };
        assert_grad_matches(&grad, &mut log_prob, &before);
    }

    /// One TD update of a 2 → 1 → 1 critic, by hand:
    /// W1 = [0.5, −1], b1 = 0.25, W2 = [2], b2 = 0.1; x = [1, 0.5]:
    /// z = 0.5 − 0.5 + 0.25 = 0.25 = h, V = 2·0.25 + 0.1 = 0.6;
    /// ∇V = [v·x1, v·x2, v, h, 1] = [2, 1, 2, 0.25, 1].
    /// With V_last = 0.4, r = 1, dt = 0.1, τ = 5: δ = 1 + 0.2/0.1 − 0.6/5 = 2.88.
    /// Trace from 0 with dt/τ_e = 0.02: e = 0.02·∇V = [0.04, 0.02, 0.04, 0.005, 0.02].
    /// lr·δ·dt = 0.01·2.88·0.1 = 0.00288, so Δθ = 0.00288·e =
    /// [1.152e-4, 5.76e-5, 1.152e-4, 1.44e-5, 5.76e-5].
    #[test]
    fn one_td_update_matches_a_hand_computation() {
        let sizes = [2, 1, 1];
        let mut critic = Critic::new(Mlp::from_params(&sizes, vec![0.5, -1.0, 0.25, 2.0, 0.1]).unwrap());
        critic.start(&[1.0, 0.5]);
        assert!((critic.value() - 0.6).abs() < 1e-15);
        critic.value_last = 0.4;
        let p = TdParams { dt: 0.1, td_tau: 5.0, trace_tau: 5.0, learning_rate: 0.01 };
        let delta = critic.td_error(1.0, &p);
        assert!((delta - 2.88).abs() < 1e-12, "{delta}");
        critic.learn(delta, &p);
        let want_trace = [0.04, 0.02, 0.04, 0.005, 0.02];
        let want = [0.5 + 1.152e-4, -1.0 + 5.76e-5, 0.25 + 1.152e-4, 2.0 + 1.44e-5, 0.1 + 5.76e-5];
        for (got, want) in critic.learner.trace().iter().zip(want_trace) {
            assert!((got - want).abs() < 1e-15, "trace {got} vs {want}");
        }
        for (got, want) in critic.learner.net.params().iter().zip(want) {
            assert!((got - want).abs() < 1e-15, "param {got} vs {want}");
        }
        // A second step with δ = 0 only decays the trace and adds 0.02 of the new gradient
        // (the same input, so the same ∇V up to the tiny parameter change).
        critic.learn(0.0, &p);
        assert!((critic.learner.trace()[4] - (0.98 * 0.02 + 0.02)).abs() < 1e-15);
        // observe() shifts V into V_last.
        critic.observe(&[0.0, 0.0]);
        assert!((critic.value_last - 0.6).abs() < 1e-3);
    }

    #[test]
    fn frozen_policy_round_trips_and_is_checked() {
        let actor = Actor::new(net(&[4, 3, 2], 5), 0.5, 0.1);
        let critic = Critic::new(net(&[4, 2, 2, 1], 6));
        let policy = GoalPolicy::freeze(&actor, &critic);
        let json = serde_json::to_string(&policy).unwrap();
        let back: GoalPolicy = serde_json::from_str(&json).unwrap();
        assert_eq!(back, policy, "f64s survive JSON exactly");
        back.check(4).unwrap();
        assert!(back.check(5).unwrap_err().contains("5 place cells"));
        let mut short = policy.clone();
        short.actor.params.pop();
        assert!(short.check(4).unwrap_err().contains("actor"));
        let x = input(4, 7);
        let mut ws = policy.workspace();
        let mean = policy.mean(&x, &mut ws);
        assert!(mean.x.abs() < 0.5 && mean.y.abs() < 0.5);
    }
}
