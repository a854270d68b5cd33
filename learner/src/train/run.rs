//! A whole run: dataset, resume, iterations with progress output, periodic checkpoints.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use burn::tensor::backend::AutodiffBackend;

use common::config::ConfigDoc;

use crate::config::LearnerConfig;
use crate::train::checkpoint::CheckpointDir;
use crate::train::dataset::OfflineDataset;
use crate::train::trainer::Trainer;

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSummary {
    pub resumed_from: Option<u64>,
    pub final_step: u64,
    pub iterations_run: u64,
    pub seconds: f64,
    pub last_losses: Option<(f64, f64)>,
}

fn hms(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    format!("{}h{:02}m{:02}s", s / 3600, s / 60 % 60, s % 60)
}

/// Trains on `dataset` until `config.train.steps` iterations, in `workdir`, resuming from its
/// newest complete checkpoint. Progress goes to stderr: a refreshed line on a terminal, plain
/// lines every `train.log_every` iterations otherwise.
pub fn run<B: AutodiffBackend>(
    doc: ConfigDoc,
    dataset: &Path,
    workdir: &Path,
    device: B::Device,
) -> Result<RunSummary> {
    let config = LearnerConfig::resolve(&doc)?;
    let data = OfflineDataset::load(dataset).with_context(|| format!("--dataset {}", dataset.display()))?;
    if let (Some(want), Some(have)) = (config.env.as_deref(), data.env_id()) {
        if want != have {
            bail!("the config's experiment.env is {want}, but {} was simulated from {have}", dataset.display());
        }
    }
    data.check_horizon(config.model.horizon)?;
    std::fs::create_dir_all(workdir).with_context(|| format!("--workdir {}", workdir.display()))?;
    let checkpoints = CheckpointDir::open(workdir, config.train.keep_checkpoints)?;
    for dir in checkpoints.incomplete() {
        eprintln!("warning: ignoring incomplete checkpoint {} (no DONE marker)", dir.display());
    }
    let total = config.train.steps;
    let (checkpoint_every, log_every) = (config.train.checkpoint_every, config.train.log_every);
    let mut trainer = Trainer::<B>::new(config, doc, data.obs_dim(), device);
    let mut resumed_from = None;
    if let Some((step, dir)) = checkpoints.latest() {
        trainer.load(&dir).with_context(|| format!("resuming from {}", dir.display()))?;
        eprintln!("resuming from checkpoint at step {step} ({})", dir.display());
        resumed_from = Some(step);
    }
    let start_step = trainer.step;
    if start_step >= total {
        eprintln!("nothing to do: the newest checkpoint is at step {start_step}, and train.steps is {total}");
        return Ok(RunSummary {
            resumed_from,
            final_step: start_step,
            iterations_run: 0,
            seconds: 0.0,
            last_losses: None,
        });
    }
    eprintln!(
        "training a δ-model on {} ({} streams × {} steps, {} floats per state) for {} iterations",
        dataset.display(),
        data.num_envs(),
        data.steps(),
        data.obs_dim(),
        total - start_step
    );
    let terminal = std::io::stderr().is_terminal();
    let started = Instant::now();
    let mut last_draw = Instant::now() - Duration::from_secs(1);
    let mut last = None;
    let mut saved_at = start_step;
    while trainer.step < total {
        let losses = trainer.iteration(&data)?;
        last = Some((losses.discriminator, losses.generator));
        let step = trainer.step;
        if step.is_multiple_of(checkpoint_every) {
            save(&trainer, &checkpoints)?;
            saved_at = step;
        }
        let done = step - start_step;
        let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-9);
        let eta = (total - step) as f64 / rate.max(1e-9);
        let line = format!(
            "step {step}/{total} ({:.1}%), {rate:.1} it/s, loss D {:.5} G {:.5}, ETA {}",
            100.0 * step as f64 / total as f64,
            losses.discriminator,
            losses.generator,
            hms(eta)
        );
        if terminal {
            if last_draw.elapsed() >= Duration::from_millis(250) || step == total {
                eprint!("\r{line}\x1b[K");
                let _ = std::io::stderr().flush();
                last_draw = Instant::now();
            }
        } else if step.is_multiple_of(log_every) || step == total {
            eprintln!("{line}");
        }
    }
    if terminal {
        eprintln!();
    }
    if saved_at != trainer.step {
        save(&trainer, &checkpoints)?;
    }
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "done: {} iterations in {} ({:.1} it/s); checkpoints in {}",
        trainer.step - start_step,
        hms(seconds),
        (trainer.step - start_step) as f64 / seconds.max(1e-9),
        checkpoints.root().display()
    );
    Ok(RunSummary {
        resumed_from,
        final_step: trainer.step,
        iterations_run: trainer.step - start_step,
        seconds,
        last_losses: last,
    })
}

fn save<B: AutodiffBackend>(trainer: &Trainer<B>, checkpoints: &CheckpointDir) -> Result<()> {
    let dir = checkpoints.begin(trainer.step)?;
    trainer.save(&dir)?;
    checkpoints.commit(&dir).with_context(|| format!("committing {}", dir.display()))
}
