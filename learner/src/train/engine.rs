//! The engine a run computes its iterations with, behind one type: the fused engine
//! (`crate::fused`, the default, as one or more exact data-parallel replicas), the same
//! iteration on a GPU (`crate::cuda::engine`, with `train.gpus`), or the burn engine
//! ([`Trainer`], the reference).
//!
//! `train.engine = "fused"` selects the fused engine when it covers the config (every variant of
//! the paper and the thesis; not the energy kernel); otherwise the run stays on burn and
//! [`Engine::new`] says why in one line. Both engines write checkpoint format v2 for every variant
//! but one: the burn engine writes its own v1 records for the separate discriminators of the
//! γ-model / SR, whose Adam state is not moved between the engines.

use std::path::Path;

use anyhow::{bail, Context, Result};
use burn::tensor::backend::AutodiffBackend;

use common::config::ConfigDoc;

use crate::config::LearnerConfig;
use crate::cuda::backend::DeviceCollective;
use crate::cuda::driver::CudaBackend;
use crate::cuda::nccl::NcclCollective;
use crate::cuda::replicas::DeviceReplicas;
use crate::cuda::source::ModelKernels;
use crate::fused::engine::{unsupported, FusedEngine};
use crate::fused::replicas::Replicas;
use crate::train::dataset::WindowSource;
use crate::train::trainer::{IterationLosses, TrainError, Trainer};
use crate::train::{checkpoint_v2, cross_engine};

pub enum Engine<B: AutodiffBackend> {
    Fused(Box<Replicas>),
    Gpu(Box<GpuRun>),
    Burn(Box<Trainer<B>>),
}

/// A run on GPUs: a device engine per GPU (their gradients summed by NCCL), and a one-thread
/// fused engine of the same model that holds the state on the host for checkpoints (written and
/// read in format v2 as the CPU engine's, so a GPU run resumes on the CPU and the reverse).
pub struct GpuRun {
    device: DeviceReplicas<CudaBackend>,
    host: FusedEngine,
    describe: String,
}

impl GpuRun {
    fn new(config: LearnerConfig, doc: ConfigDoc, state_dim: usize) -> Result<GpuRun> {
        let spec = config.train.gpus.clone();
        if let Some(why) = crate::cuda::engine::unsupported(&config) {
            bail!("--gpus {spec}: the GPU engine does not cover {why}; omit --gpus to train on the CPU");
        }
        let gpus = crate::cuda::gpus::select(&spec)?;
        if gpus.len() > config.train.batch_size {
            bail!(
                "--gpus {spec}: {} GPUs for a batch of {} rows; every GPU needs a row",
                gpus.len(),
                config.train.batch_size
            );
        }
        let kernels = ModelKernels::for_config(&config, state_dim).expect("checked by `unsupported`");
        let host = FusedEngine::replica(config, doc, state_dim, 1, None)?;
        let backends = gpus.iter().map(|&g| CudaBackend::new(g, &kernels)).collect::<Result<Vec<_>>>()?;
        let names: Vec<String> = backends.iter().map(CudaBackend::describe).collect();
        let collectives: Vec<DeviceCollective> = if backends.len() > 1 {
            let refs: Vec<&CudaBackend> = backends.iter().collect();
            NcclCollective::group(&refs)?.into_iter().map(|c| Box::new(c) as DeviceCollective).collect()
        } else {
            Vec::new()
        };
        let describe = match names.len() {
            1 => format!("GPU engine on {}", names[0]),
            n => format!("GPU engine, {n} replicas on {}", names.join(", ")),
        };
        let device = DeviceReplicas::new(&host, backends, collectives)?;
        Ok(GpuRun { device, host, describe })
    }
}

/// Whether the burn engine's state of this config can be moved to the fused engine and back.
fn crosses(config: &LearnerConfig) -> bool {
    unsupported(config).is_none() && !config.model.inner_separate_discriminator
}

impl<B: AutodiffBackend> Engine<B> {
    /// The engine `train.engine` asks for (the fused one with `train.replicas` replicas), or burn
    /// with a note on stderr when the fused engine does not cover the config.
    pub fn new(config: LearnerConfig, doc: ConfigDoc, state_dim: usize, device: B::Device) -> Result<Engine<B>> {
        if !config.train.gpus.is_empty() {
            return Ok(Engine::Gpu(Box::new(GpuRun::new(config, doc, state_dim)?)));
        }
        if config.train.engine == "fused" {
            match unsupported(&config) {
                None => {
                    let replicas = config.train.replicas;
                    return Ok(Engine::Fused(Box::new(Replicas::new(config, doc, state_dim, replicas)?)));
                }
                Some(why) if config.train.replicas > 1 => {
                    bail!(
                        "train.replicas = {} needs the fused engine, which does not cover {why}",
                        config.train.replicas
                    )
                }
                Some(why) => eprintln!("note: the fused engine does not cover {why}; this run uses the burn engine"),
            }
        }
        Ok(Engine::Burn(Box::new(Trainer::new(config, doc, state_dim, device))))
    }

    /// "fused engine, 2 threads", "fused engine, 2 replicas × 1 thread" or "burn engine".
    pub fn describe(&self) -> String {
        match self {
            Engine::Fused(f) if f.replicas() == 1 => format!("fused engine, {} threads", f.threads()),
            Engine::Fused(f) => {
                let each = f.threads_each();
                format!("fused engine, {} replicas × {each} thread{}", f.replicas(), if each == 1 { "" } else { "s" })
            }
            Engine::Gpu(g) => g.describe.clone(),
            Engine::Burn(_) => "burn engine".into(),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Engine::Fused(_) => "fused",
            Engine::Gpu(_) => "gpu",
            Engine::Burn(_) => "burn",
        }
    }

    /// Threads in all.
    pub fn threads(&self) -> usize {
        match self {
            Engine::Fused(f) => f.threads(),
            Engine::Gpu(_) | Engine::Burn(_) => 1,
        }
    }

    pub fn replicas(&self) -> usize {
        match self {
            Engine::Fused(f) => f.replicas(),
            Engine::Gpu(g) => g.device.replicas(),
            Engine::Burn(_) => 1,
        }
    }

    /// GPUs in use (0 on the CPU).
    pub fn gpus(&self) -> usize {
        match self {
            Engine::Gpu(g) => g.device.replicas(),
            Engine::Fused(_) | Engine::Burn(_) => 0,
        }
    }

    pub fn config(&self) -> &LearnerConfig {
        match self {
            Engine::Fused(f) => f.config(),
            Engine::Gpu(g) => &g.host.config,
            Engine::Burn(t) => &t.config,
        }
    }

    /// Iterations completed.
    pub fn step(&self) -> u64 {
        match self {
            Engine::Fused(f) => f.step(),
            Engine::Gpu(g) => g.device.step(),
            Engine::Burn(t) => t.step,
        }
    }

    pub fn iteration(&mut self, data: impl WindowSource) -> Result<IterationLosses, TrainError> {
        match self {
            Engine::Fused(f) => f.iteration(data),
            Engine::Gpu(g) => g.device.iteration(data),
            Engine::Burn(t) => t.iteration(data),
        }
    }

    /// Writes checkpoint `step()` into `dir` (the caller commits it) from replica 0, in format v2
    /// (v1 from the burn engine with separate discriminators). `meta` is the dataset's, kept with
    /// the checkpoint.
    pub fn save(&mut self, dir: &Path, meta: Option<&serde_json::Value>) -> Result<()> {
        match self {
            Engine::Fused(f) => {
                f.gather_members();
                let f = f.replica(0);
                checkpoint_v2::write(dir, &f.to_arrays(), f.state_json(), &f.doc.to_toml(), meta)
            }
            Engine::Gpu(g) => {
                g.device.store_into(&mut g.host)?;
                let f = &g.host;
                checkpoint_v2::write(dir, &f.to_arrays(), f.state_json(), &f.doc.to_toml(), meta)
            }
            Engine::Burn(t) if crosses(&t.config) => {
                let f = cross_engine::fused_from_trainer(t)?;
                let mut state = f.state_json();
                state["engine"] = "burn".into();
                checkpoint_v2::write(dir, &f.to_arrays(), state, &t.doc.to_toml(), meta)
            }
            Engine::Burn(t) => t.save(dir),
        }
    }

    /// Loads a checkpoint of either format written by either engine (with any replica count). A
    /// v2 checkpoint whose files fail their checksums is an error naming the file (the run loop
    /// then tries an older one).
    pub fn load(&mut self, dir: &Path) -> Result<()> {
        let v2 = checkpoint_v2::is_v2(dir);
        match self {
            Engine::Fused(f) if v2 => {
                let c = checkpoint_v2::read(dir)?;
                f.load_with(|first| first.load(c))
            }
            Engine::Gpu(g) => {
                if v2 {
                    g.host.load(checkpoint_v2::read(dir)?)?;
                } else {
                    cross_engine::load_v1_into_fused(&mut g.host, dir).context("loading a burn (v1) checkpoint")?;
                }
                g.device.load_from(&g.host)
            }
            Engine::Fused(f) => {
                if !crosses(f.config()) {
                    bail!(
                        "{} holds burn (v1) records of separate discriminators, which only the burn engine reads \
                         (train.engine = \"burn\")",
                        dir.display()
                    );
                }
                f.load_with(|first| cross_engine::load_v1_into_fused(first, dir))
                    .context("loading a burn (v1) checkpoint")
            }
            Engine::Burn(t) if v2 => {
                if !crosses(&t.config) {
                    bail!(
                        "{} is a v2 checkpoint of separate discriminators, which only the fused engine reads",
                        dir.display()
                    );
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
