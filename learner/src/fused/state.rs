//! The fused engine's training state as named arrays: the layout of checkpoint format v2
//! (`train::checkpoint_v2`), written from and read into a [`FusedEngine`], and copied between
//! engines of one model (the replicas of a group, a v1 checkpoint read through burn).

use anyhow::{bail, Result};

use super::engine::FusedEngine;
use super::network::GenParams;
use crate::train::checkpoint_v2::{Array, Checkpoint};

impl FusedEngine {
    /// Every parameter, target parameter, Adam moment and spectral-norm vector as a named array
    /// (checkpoint format v2). The separate discriminators' are stacked along a leading member
    /// axis, `separate_discriminator.{k}.weight` `[B·O, in, out]`, as the burn module holds them.
    pub fn to_arrays(&self) -> Vec<Array> {
        let gs = &self.gen_shape;
        let mut out = Vec::new();
        let gen = |out: &mut Vec<Array>, prefix: &str, p: &GenParams| {
            for l in 0..gs.layers() {
                let (i, o) = (gs.dims[l], gs.dims[l + 1]);
                out.push(Array::new(format!("{prefix}.{l}.weight"), vec![gs.atoms, i, o], p.weights[l].clone()));
                out.push(Array::new(format!("{prefix}.{l}.bias"), vec![gs.atoms, o], p.biases[l].clone()));
            }
        };
        gen(&mut out, "generator", &self.generator);
        gen(&mut out, "target", &self.target);
        gen(&mut out, "adam.generator.m1", &self.adam_generator.m1);
        gen(&mut out, "adam.generator.m2", &self.adam_generator.m2);
        let ps = &self.phi_shape;
        for k in 0..ps.layers() {
            let (i, o) = ps.dims(k);
            out.push(Array::new(format!("discriminator.{k}.weight"), vec![i, o], self.phi.weights[k].clone()));
            out.push(Array::new(format!("discriminator.{k}.bias"), vec![o], self.phi.biases[k].clone()));
            out.push(Array::new(format!("discriminator.{k}.u"), vec![o], self.phi.u[k].clone()));
            for (name, mo) in [("m1", &self.adam_phi.m1), ("m2", &self.adam_phi.m2)] {
                out.push(Array::new(
                    format!("adam.discriminator.{name}.{k}.weight"),
                    vec![i, o],
                    mo.weights[k].clone(),
                ));
                out.push(Array::new(format!("adam.discriminator.{name}.{k}.bias"), vec![o], mo.biases[k].clone()));
            }
        }
        let mm = self.members.len();
        if mm > 0 {
            let stack = |f: &dyn Fn(usize) -> Vec<f32>| -> Vec<f32> { (0..mm).flat_map(f).collect() };
            for k in 0..ps.layers() {
                let (i, o) = ps.dims(k);
                let sd = "separate_discriminator";
                out.push(Array::new(
                    format!("{sd}.{k}.weight"),
                    vec![mm, i, o],
                    stack(&|j| self.members[j].weights[k].clone()),
                ));
                out.push(Array::new(
                    format!("{sd}.{k}.bias"),
                    vec![mm, o],
                    stack(&|j| self.members[j].biases[k].clone()),
                ));
                out.push(Array::new(format!("{sd}.{k}.u"), vec![mm, o], stack(&|j| self.members[j].u[k].clone())));
                for (name, mo) in [("m1", &self.adam_members.m1), ("m2", &self.adam_members.m2)] {
                    let w = stack(&|j| mo[j].weights[k].clone());
                    out.push(Array::new(format!("adam.{sd}.{name}.{k}.weight"), vec![mm, i, o], w));
                    let b = stack(&|j| mo[j].biases[k].clone());
                    out.push(Array::new(format!("adam.{sd}.{name}.{k}.bias"), vec![mm, o], b));
                }
            }
        }
        out
    }

    /// The engine's part of `state.json`.
    pub fn state_json(&self) -> serde_json::Value {
        let mut state = serde_json::json!({
            "engine": "fused",
            "step": self.step,
            "rng_counter": self.step,
            "state_dim": self.state_dim,
            "adam_generator_time": self.adam_generator.time,
            "adam_discriminator_time": self.adam_phi.time,
        });
        if !self.members.is_empty() {
            state["adam_separate_discriminator_time"] = self.adam_members.time.into();
        }
        state
    }

    /// Loads a verified v2 checkpoint into this engine (shapes must match this model).
    pub fn load(&mut self, mut c: Checkpoint) -> Result<()> {
        let state_dim = c.state_u64("state_dim")? as usize;
        if state_dim != self.state_dim {
            bail!("the checkpoint is for states of {state_dim} floats, this run's data has {}", self.state_dim);
        }
        let gs = self.gen_shape.clone();
        let mut gen = |prefix: &str, p: &mut GenParams| -> Result<()> {
            for l in 0..gs.layers() {
                let (w, b) = gs.layer_sizes(l);
                p.weights[l] = c.take(&format!("{prefix}.{l}.weight"), w)?;
                p.biases[l] = c.take(&format!("{prefix}.{l}.bias"), b)?;
            }
            Ok(())
        };
        gen("generator", &mut self.generator)?;
        gen("target", &mut self.target)?;
        gen("adam.generator.m1", &mut self.adam_generator.m1)?;
        gen("adam.generator.m2", &mut self.adam_generator.m2)?;
        for k in 0..self.phi_shape.layers() {
            let (i, o) = self.phi_shape.dims(k);
            self.phi.weights[k] = c.take(&format!("discriminator.{k}.weight"), i * o)?;
            self.phi.biases[k] = c.take(&format!("discriminator.{k}.bias"), o)?;
            self.phi.u[k] = c.take(&format!("discriminator.{k}.u"), o)?;
            self.adam_phi.m1.weights[k] = c.take(&format!("adam.discriminator.m1.{k}.weight"), i * o)?;
            self.adam_phi.m1.biases[k] = c.take(&format!("adam.discriminator.m1.{k}.bias"), o)?;
            self.adam_phi.m2.weights[k] = c.take(&format!("adam.discriminator.m2.{k}.weight"), i * o)?;
            self.adam_phi.m2.biases[k] = c.take(&format!("adam.discriminator.m2.{k}.bias"), o)?;
        }
        let mm = self.members.len();
        if mm > 0 {
            let sd = "separate_discriminator";
            for k in 0..self.phi_shape.layers() {
                let (i, o) = self.phi_shape.dims(k);
                let mut unstack = |name: String, per: usize, dst: &mut dyn FnMut(usize, &[f32])| -> Result<()> {
                    let all = c.take(&name, mm * per)?;
                    for (j, chunk) in all.chunks_exact(per).enumerate() {
                        dst(j, chunk);
                    }
                    Ok(())
                };
                let members = &mut self.members;
                unstack(format!("{sd}.{k}.weight"), i * o, &mut |j, v| members[j].weights[k].copy_from_slice(v))?;
                unstack(format!("{sd}.{k}.bias"), o, &mut |j, v| members[j].biases[k].copy_from_slice(v))?;
                unstack(format!("{sd}.{k}.u"), o, &mut |j, v| members[j].u[k].copy_from_slice(v))?;
                for (name, mo) in [("m1", &mut self.adam_members.m1), ("m2", &mut self.adam_members.m2)] {
                    unstack(format!("adam.{sd}.{name}.{k}.weight"), i * o, &mut |j, v| {
                        mo[j].weights[k].copy_from_slice(v)
                    })?;
                    unstack(format!("adam.{sd}.{name}.{k}.bias"), o, &mut |j, v| mo[j].biases[k].copy_from_slice(v))?;
                }
            }
            self.adam_members.time = c.state_u64("adam_separate_discriminator_time")?;
        }
        self.adam_generator.time = c.state_u64("adam_generator_time")?;
        self.adam_phi.time = c.state_u64("adam_discriminator_time")?;
        self.step = c.state_u64("step")?;
        Ok(())
    }

    /// Copies the training state (parameters, target, u, Adam, step) from an engine of the same
    /// model: how the replicas of a group start equal after one of them loads a checkpoint.
    pub fn copy_state_from(&mut self, from: &FusedEngine) {
        self.generator.clone_from(&from.generator);
        self.target.clone_from(&from.target);
        self.phi.clone_from(&from.phi);
        self.members.clone_from(&from.members);
        self.adam_generator.clone_from(&from.adam_generator);
        self.adam_phi.clone_from(&from.adam_phi);
        self.adam_members.clone_from(&from.adam_members);
        self.step = from.step;
    }
}
