//! A trained δ-model read back from a checkpoint (format v2), for sampling.
//!
//! Only the online generator is needed: the evaluation samples `sample_from_sr(θ, s)` with the
//! online parameters, as the reference's `plot_callback` does. Everything else the evaluation
//! needs — the env, its cells and data policy — is rebuilt from the checkpoint's own
//! `config.toml` and the dataset's `meta.json`, so the ground truth is the system the model was
//! trained on.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rand_distr::{Distribution, StandardNormal};

use common::config::ConfigDoc;
use common::rng;

use crate::config::LearnerConfig;
use crate::fused::network::{gen_forward, GenActs, GenParams, GenShape};
use crate::train::checkpoint_v2;

/// Inner samples per forward pass: bounds the activations (O × chunk × width floats per layer).
const SAMPLE_CHUNK: usize = 256;

pub struct TrainedModel {
    pub dir: PathBuf,
    pub step: u64,
    pub doc: ConfigDoc,
    pub config: LearnerConfig,
    /// The dataset's `meta` (env id, seed, env config), when the checkpoint has one.
    pub meta: Option<serde_json::Value>,
    pub shape: GenShape,
    generator: GenParams,
}

impl TrainedModel {
    /// Reads the checkpoint in `dir` (complete, v2, every file matching its checksum).
    pub fn load(dir: &Path) -> Result<TrainedModel> {
        if !dir.join("DONE").is_file() {
            bail!("{} is not a complete checkpoint (no DONE marker)", dir.display());
        }
        if !checkpoint_v2::is_v2(dir) {
            bail!(
                "{} is a format v1 checkpoint (burn records); the evaluator reads format v2: resume the run with \
                 this learner once, and its next checkpoint is v2",
                dir.display()
            );
        }
        let mut c = checkpoint_v2::read(dir)?;
        let text = std::fs::read_to_string(dir.join("config.toml")).context("reading config.toml")?;
        let doc = ConfigDoc::parse(&text, &dir.join("config.toml").display().to_string())?;
        let config = LearnerConfig::resolve(&doc)?;
        let meta = match std::fs::read_to_string(dir.join("meta.json")) {
            Ok(t) => Some(serde_json::from_str(&t).context("meta.json is not JSON")?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).context("reading meta.json"),
        };
        let state_dim = c.state_u64("state_dim")? as usize;
        let step = c.state_u64("step")?;
        let m = &config.model;
        let shape = GenShape::new(m.num_outer, m.latent_dims, state_dim, m.generator_hidden, m.generator_layers);
        let mut generator = GenParams::zeros(&shape);
        for l in 0..shape.layers() {
            let (w, b) = shape.layer_sizes(l);
            generator.weights[l] = c.take(&format!("generator.{l}.weight"), w)?;
            generator.biases[l] = c.take(&format!("generator.{l}.bias"), b)?;
        }
        if generator.buffers().any(|b| b.iter().any(|v| !v.is_finite())) {
            bail!("{}: the generator's parameters hold NaN or infinity", dir.display());
        }
        Ok(TrainedModel { dir: dir.to_path_buf(), step, doc, config, meta, shape, generator })
    }

    pub fn state_dim(&self) -> usize {
        self.shape.state
    }

    pub fn atoms(&self) -> usize {
        self.shape.atoms
    }

    /// `n` samples of every atom at source state `s`, `[O][n][S]` flat: z ~ N(0, I) from the
    /// stream `(seed, "eval", "latents", label)`, so a report is reproducible.
    pub fn sample(&self, s: &[f32], n: usize, seed: u64, label: &str) -> Vec<f32> {
        assert_eq!(s.len(), self.state_dim(), "a source state has {} floats", self.state_dim());
        let (o, zd, sd) = (self.shape.atoms, self.shape.latent, self.shape.state);
        let mut r = rng::stream(seed, &["eval".into(), "latents".into(), label.into()]);
        let mut out = vec![0.0f32; o * n * sd];
        let mut done = 0;
        while done < n {
            let chunk = SAMPLE_CHUNK.min(n - done);
            let z: Vec<f32> = (0..o * chunk * zd).map(|_| StandardNormal.sample(&mut r)).collect();
            let mut acts = GenActs::new(&self.shape, 1, chunk);
            gen_forward(&self.shape, &self.generator, &z, s, 1, chunk, &mut acts);
            for a in 0..o {
                let from = &acts.out[a * chunk * sd..(a + 1) * chunk * sd];
                out[(a * n + done) * sd..(a * n + done + chunk) * sd].copy_from_slice(from);
            }
            done += chunk;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sampler's atom-major layout and chunking agree with one unchunked forward pass.
    #[test]
    fn chunked_samples_equal_one_forward_pass() {
        let shape = GenShape::new(3, 2, 4, 8, 2);
        let mut r = rng::stream(1, &["t".into()]);
        let mut generator = GenParams::zeros(&shape);
        for b in generator.buffers_mut() {
            for v in b.iter_mut() {
                *v = StandardNormal.sample(&mut r);
            }
        }
        let model = TrainedModel {
            dir: PathBuf::new(),
            step: 0,
            doc: ConfigDoc::empty(),
            config: LearnerConfig::resolve(&ConfigDoc::empty()).unwrap(),
            meta: None,
            shape: shape.clone(),
            generator: generator.clone(),
        };
        let s = [0.5, -1.0, 0.25, 2.0];
        let n = SAMPLE_CHUNK + 7;
        let got = model.sample(&s, n, 9, "x");
        // The same latents, drawn chunk by chunk, then one pass over all n.
        let mut r = rng::stream(9, &["eval".into(), "latents".into(), "x".into()]);
        let mut z = vec![0.0f32; 3 * n * 2];
        for (start, len) in [(0, SAMPLE_CHUNK), (SAMPLE_CHUNK, 7)] {
            let drawn: Vec<f32> = (0..3 * len * 2).map(|_| StandardNormal.sample(&mut r)).collect();
            for a in 0..3 {
                for i in 0..len {
                    for d in 0..2 {
                        z[(a * n + start + i) * 2 + d] = drawn[(a * len + i) * 2 + d];
                    }
                }
            }
        }
        let mut acts = GenActs::new(&shape, 1, n);
        gen_forward(&shape, &generator, &z, &s, 1, n, &mut acts);
        assert_eq!(got.len(), acts.out.len());
        for (a, b) in got.iter().zip(&acts.out) {
            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
        }
    }
}
