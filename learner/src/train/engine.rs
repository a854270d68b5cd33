//! The engine a run computes its iterations with, behind one type: the fused engine
//! (`crate::fused`, the default) or the burn engine ([`Trainer`], the reference).
//!
//! `train.engine = "fused"` selects the fused engine when it covers the config's variant; otherwise
//! the run stays on burn and [`Engine::new`] says why in one line. The fused engine writes
//! checkpoint format v2; the burn engine writes its v1 records.

use std::path::Path;

use anyhow::{bail, Context, Result};
use burn::tensor::backend::AutodiffBackend;

use common::config::ConfigDoc;

use crate::config::LearnerConfig;
use crate::fused::engine::{unsupported, FusedEngine};
use crate::train::dataset::WindowSource;
use crate::train::trainer::{IterationLosses, TrainError, Trainer};
use crate::train::{checkpoint_v2, cross_engine};

pub enum Engine<B: AutodiffBackend> {
    Fused(Box<FusedEngine>),
    Burn(Box<Trainer<B>>),
}

impl<B: AutodiffBackend> Engine<B> {
    /// The engine `train.engine` asks for, or burn with a note on stderr when the fused engine
    /// does not cover the variant.
    pub fn new(config: LearnerConfig, doc: ConfigDoc, state_dim: usize, device: B::Device) -> Result<Engine<B>> {
        if config.train.engine == "fused" {
            match unsupported(&config) {
                None => return Ok(Engine::Fused(Box::new(FusedEngine::new(config, doc, state_dim)?))),
                Some(why) => {
                    eprintln!("note: the fused engine does not cover {why} yet; this run uses the burn engine")
                }
            }
        }
        Ok(Engine::Burn(Box::new(Trainer::new(config, doc, state_dim, device))))
    }

    /// "fused, 2 threads" or "burn".
    pub fn describe(&self) -> String {
        match self {
            Engine::Fused(f) => format!("fused engine, {} threads", f.threads()),
            Engine::Burn(_) => "burn engine".into(),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Engine::Fused(_) => "fused",
            Engine::Burn(_) => "burn",
        }
    }

    pub fn threads(&self) -> usize {
        match self {
            Engine::Fused(f) => f.threads(),
            Engine::Burn(_) => 1,
        }
    }

    pub fn config(&self) -> &LearnerConfig {
        match self {
            Engine::Fused(f) => &f.config,
            Engine::Burn(t) => &t.config,
        }
    }

    /// Iterations completed.
    pub fn step(&self) -> u64 {
        match self {
            Engine::Fused(f) => f.step,
            Engine::Burn(t) => t.step,
        }
    }

    pub fn iteration(&mut self, data: impl WindowSource) -> Result<IterationLosses, TrainError> {
        match self {
            Engine::Fused(f) => f.iteration(data),
            Engine::Burn(t) => t.iteration(data),
        }
    }

    /// Writes checkpoint `step()` into `dir` (the caller commits it), in format v2 from either
    /// engine. The burn engine writes v1 (its own records) for the variants the fused engine does
    /// not cover yet, whose v2 layout is not defined. `meta` is the dataset's, kept with the
    /// checkpoint.
    pub fn save(&self, dir: &Path, meta: Option<&serde_json::Value>) -> Result<()> {
        match self {
            Engine::Fused(f) => checkpoint_v2::write(dir, &f.to_arrays(), f.state_json(), &f.doc.to_toml(), meta),
            Engine::Burn(t) if unsupported(&t.config).is_none() => {
                let f = cross_engine::fused_from_trainer(t)?;
                let mut state = f.state_json();
                state["engine"] = "burn".into();
                checkpoint_v2::write(dir, &f.to_arrays(), state, &t.doc.to_toml(), meta)
            }
            Engine::Burn(t) => t.save(dir),
        }
    }

    /// Loads a checkpoint of either format written by either engine. A v2 checkpoint whose files
    /// fail their checksums is an error naming the file (the run loop then tries an older one).
    pub fn load(&mut self, dir: &Path) -> Result<()> {
        let v2 = checkpoint_v2::is_v2(dir);
        match self {
            Engine::Fused(f) if v2 => f.load(checkpoint_v2::read(dir)?),
            Engine::Fused(f) => cross_engine::load_v1_into_fused(f, dir).context("loading a burn (v1) checkpoint"),
            Engine::Burn(t) if v2 => {
                if let Some(why) = unsupported(&t.config) {
                    bail!("{} is a v2 checkpoint, which this run's variant ({why}) cannot read yet", dir.display());
                }
                let mut f = cross_engine::fused_from_trainer(t)?;
                f.load(checkpoint_v2::read(dir)?)?;
                cross_engine::into_trainer(&f, t);
                Ok(())
            }
            Engine::Burn(t) => t.load(dir).context("loading burn records"),
        }
    }
}
