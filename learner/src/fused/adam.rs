//! Adam and the Polyak average in one pass over flat buffers.
//!
//! The arithmetic is burn 0.21's `AdaptiveMomentum` (`burn-optim/src/optim/adam.rs`) operation for
//! operation in f32, so that the fused engine and the burn engine take the same steps:
//! `m ← β₁m + (1−β₁)g`, `v ← β₂v + (1−β₂)g²`, `c = √(1−β₂ᵗ)/(1−β₁ᵗ)`,
//! `θ ← θ − lr·(m·c)/(√v + ε·√(1−β₂ᵗ))`, which is the textbook `m̂/(√v̂ + ε)`.

use super::simd::simd_fn;

/// The Adam hyper-parameters of both networks (`train.learning_rate`, `train.adam_eps`; β fixed at
/// the reference's 0.9 and 0.999).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamConfig {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
}

impl AdamConfig {
    pub fn new(lr: f64, eps: f64) -> AdamConfig {
        AdamConfig { lr: lr as f32, beta1: 0.9, beta2: 0.999, eps: eps as f32 }
    }

    /// One step at time `t` (1 for the first step) on one parameter buffer.
    pub fn step(&self, t: u64, param: &mut [f32], grad: &[f32], m: &mut [f32], v: &mut [f32]) {
        adam_update(param, grad, m, v, self.constants(t));
    }

    /// The element-wise update's constants at time `t`, `[β₁, 1−β₁, β₂, 1−β₂, c, ε·√(1−β₂ᵗ), lr]`
    /// (the CUDA engine's `adam_update` takes the same).
    pub fn constants(&self, t: u64) -> [f32; 7] {
        let time = t.min(i32::MAX as u64) as i32;
        let b2 = (1.0 - self.beta2.powi(time)).sqrt();
        let c = b2 / (1.0 - self.beta1.powi(time));
        let (f1, f2) = (1.0 - self.beta1, 1.0 - self.beta2);
        let eps = self.eps * b2;
        [self.beta1, f1, self.beta2, f2, c, eps, self.lr]
    }
}

simd_fn! {
    /// The element-wise update; `k` = [β₁, 1−β₁, β₂, 1−β₂, c, ε·√(1−β₂ᵗ), lr].
    pub(crate) fn adam_update(param: &mut [f32], grad: &[f32], m: &mut [f32], v: &mut [f32], k: [f32; 7]) {
        let [beta1, f1, beta2, f2, c, eps, lr] = k;
        for (((p, &g), m), v) in param.iter_mut().zip(grad).zip(m.iter_mut()).zip(v.iter_mut()) {
            *m = *m * beta1 + g * f1;
            *v = *v * beta2 + g * g * f2;
            *p -= (*m * c) / (v.sqrt() + eps) * lr;
        }
    }
}

/// `target ← (1 − τ)·target + τ·online`, as burn's `mul_scalar(1 − τ) + mul_scalar(τ)`.
pub fn polyak(tau: f64, target: &mut [f32], online: &[f32]) {
    polyak_update((1.0 - tau) as f32, tau as f32, target, online);
}

simd_fn! {
    fn polyak_update(keep: f32, take: f32, target: &mut [f32], online: &[f32]) {
        for (t, &o) in target.iter_mut().zip(online) {
            *t = *t * keep + o * take;
        }
    }
}
