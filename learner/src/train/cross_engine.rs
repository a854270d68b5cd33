//! The δ-model's training state moved between the two engines, so that a checkpoint written by
//! one resumes on the other.
//!
//! The state is the same on both sides: generator, target generator, φ with its spectral-norm
//! vectors u, both networks' Adam moments and times, and the step (which is also the counter of
//! the draws). The burn engine keeps the Adam moments in its optimiser's records, one per
//! parameter id; here they are read out of, and written into, those records. Both directions copy
//! f32 values unchanged, so a round trip is exact.

use anyhow::{ensure, Result};
use burn::backend::{Autodiff, NdArray};
use burn::module::{Param, RunningState};
use burn::optim::record::AdaptorRecord;
use burn::optim::{Adam, AdamState, AdaptiveMomentumState, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};

use crate::fused::engine::{gen_from_burn, phi_from_burn, FusedEngine};
use crate::train::trainer::Trainer;

fn to_vec<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec::<f32>().expect("f32 tensor data")
}

/// (time, m1, m2) of one parameter; `None` before its first step.
fn moments<B: AutodiffBackend, const D: usize>(
    record: Option<&AdaptorRecord<Adam, B>>,
) -> Option<(u64, Vec<f32>, Vec<f32>)> {
    let state: AdamState<B::InnerBackend, D> = record?.clone().into_state::<D>();
    let m = state.momentum;
    Some((m.time as u64, to_vec(m.moment_1), to_vec(m.moment_2)))
}

fn record<B: AutodiffBackend, const D: usize>(
    time: u64,
    m1: &[f32],
    m2: &[f32],
    shape: [usize; D],
    device: &B::Device,
) -> AdaptorRecord<Adam, B> {
    let t = |v: &[f32]| Tensor::<B::InnerBackend, D>::from_data(TensorData::new(v.to_vec(), shape), device);
    AdaptorRecord::from_state::<D>(AdamState::new(AdaptiveMomentumState::new(time as usize, t(m1), t(m2))))
}

/// The same parameter (id and autodiff setting kept) with new values.
fn replaced<B: Backend, const D: usize>(
    p: &Param<Tensor<B, D>>,
    values: &[f32],
    device: &B::Device,
) -> Param<Tensor<B, D>> {
    let shape: [usize; D] = p.val().dims();
    let t = Tensor::<B, D>::from_data(TensorData::new(values.to_vec(), shape), device);
    p.clone().transform_for_load(t, p.id)
}

/// A fused engine holding the burn trainer's state (for the δ-model; other variants are not on the
/// fused engine yet). Runs on one thread: it is a container for checkpoints, not for training.
pub fn fused_from_trainer<B: AutodiffBackend>(t: &Trainer<B>) -> Result<FusedEngine> {
    let mut config = t.config.clone();
    config.train.threads = 1;
    let mut f = FusedEngine::new(config, t.doc.clone(), t.state_dim)?;
    f.config.train.threads = t.config.train.threads;
    f.generator = gen_from_burn(&t.generator);
    f.target = gen_from_burn(&t.target);
    f.phi = phi_from_burn(&t.discriminator);
    let records_g = t.optim_g.to_record();
    let records_d = t.optim_d.to_record();
    let mut times = Vec::new();
    for (l, (w, b)) in t.generator.weights.iter().zip(&t.generator.biases).enumerate() {
        for (param, m1, m2) in [
            (w, &mut f.adam_generator.m1.weights[l], &mut f.adam_generator.m2.weights[l]),
            (b, &mut f.adam_generator.m1.biases[l], &mut f.adam_generator.m2.biases[l]),
        ] {
            match moments::<B, 3>(records_g.get(&param.id)) {
                Some((time, a, b)) => {
                    (*m1, *m2) = (a, b);
                    times.push(time);
                }
                None => times.push(0),
            }
        }
    }
    ensure!(times.iter().all(|&x| x == times[0]), "the generator's parameters have different Adam times {times:?}");
    f.adam_generator.time = times[0];
    times.clear();
    for (k, layer) in t.discriminator.layers().enumerate() {
        let (m1, m2) = (&mut f.adam_phi.m1, &mut f.adam_phi.m2);
        match moments::<B, 2>(records_d.get(&layer.weight.id)) {
            Some((time, a, b)) => {
                (m1.weights[k], m2.weights[k]) = (a, b);
                times.push(time);
            }
            None => times.push(0),
        }
        match moments::<B, 1>(records_d.get(&layer.bias.id)) {
            Some((time, a, b)) => {
                (m1.biases[k], m2.biases[k]) = (a, b);
                times.push(time);
            }
            None => times.push(0),
        }
    }
    ensure!(times.iter().all(|&x| x == times[0]), "φ's parameters have different Adam times {times:?}");
    f.adam_phi.time = times[0];
    f.step = t.step;
    Ok(f)
}

/// Writes the fused engine's state into the burn trainer (same model shapes).
pub fn into_trainer<B: AutodiffBackend>(f: &FusedEngine, t: &mut Trainer<B>) {
    let device = t.device.clone();
    // The optimiser's own map type, emptied (burn keys it by parameter id).
    let mut records_g = t.optim_g.to_record();
    records_g.clear();
    let gen = &mut t.generator;
    let target = &mut t.target;
    let (mg, time_g) = (&f.adam_generator, f.adam_generator.time);
    for l in 0..gen.weights.len() {
        let (ws, bs) = (gen.weights[l].val().dims(), gen.biases[l].val().dims());
        gen.weights[l] = replaced(&gen.weights[l], &f.generator.weights[l], &device);
        gen.biases[l] = replaced(&gen.biases[l], &f.generator.biases[l], &device);
        target.weights[l] = replaced(&target.weights[l], &f.target.weights[l], &device);
        target.biases[l] = replaced(&target.biases[l], &f.target.biases[l], &device);
        if time_g > 0 {
            records_g
                .insert(gen.weights[l].id, record::<B, 3>(time_g, &mg.m1.weights[l], &mg.m2.weights[l], ws, &device));
            records_g.insert(gen.biases[l].id, record::<B, 3>(time_g, &mg.m1.biases[l], &mg.m2.biases[l], bs, &device));
        }
    }
    let mut records_d = t.optim_d.to_record();
    records_d.clear();
    let (md, time_d) = (&f.adam_phi, f.adam_phi.time);
    for (k, layer) in t.discriminator.layers_mut().enumerate() {
        let (ws, bs) = (layer.weight.val().dims(), layer.bias.val().dims());
        layer.weight = replaced(&layer.weight, &f.phi.weights[k], &device);
        layer.bias = replaced(&layer.bias, &f.phi.biases[k], &device);
        let u = Tensor::<B, 2>::from_data(TensorData::new(f.phi.u[k].clone(), [1, f.phi.u[k].len()]), &device);
        layer.u = RunningState::new(u);
        if time_d > 0 {
            records_d
                .insert(layer.weight.id, record::<B, 2>(time_d, &md.m1.weights[k], &md.m2.weights[k], ws, &device));
            records_d.insert(layer.bias.id, record::<B, 1>(time_d, &md.m1.biases[k], &md.m2.biases[k], bs, &device));
        }
    }
    t.optim_g = t.optim_g.clone().load_record(records_g);
    t.optim_d = t.optim_d.clone().load_record(records_d);
    t.step = f.step;
}

/// Loads a v1 (burn records) checkpoint into the fused engine `f`: a burn trainer on the CPU reads
/// the records, and its state is copied over.
pub fn load_v1_into_fused(f: &mut FusedEngine, dir: &std::path::Path) -> Result<()> {
    let mut t = Trainer::<Autodiff<NdArray>>::new(f.config.clone(), f.doc.clone(), f.state_dim, Default::default());
    t.load(dir)?;
    let from = fused_from_trainer(&t)?;
    copy_state(&from, f);
    Ok(())
}

/// Copies the training state (parameters, target, u, Adam, step) between fused engines of one model.
pub fn copy_state(from: &FusedEngine, to: &mut FusedEngine) {
    to.copy_state_from(from);
}
