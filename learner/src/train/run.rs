//! A whole run: a data source, resume, iterations with progress output, periodic checkpoints.
//!
//! One loop ([`train`]) serves both data sources: an offline dataset ([`run`]) and the live
//! replay store ([`run_from_coordinator`]), which also publishes each checkpoint to the
//! coordinator's registry.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use burn::tensor::backend::AutodiffBackend;

use common::config::ConfigDoc;
use common::rng;

use crate::config::LearnerConfig;
use crate::service::checkpoint_store;
use crate::train::checkpoint::CheckpointDir;
use crate::train::dataset::{OfflineDataset, WindowSource};
use crate::train::engine::Engine;
use crate::train::publisher::Publisher;
use crate::train::replay_source::{check_experiment, fetch_experiment, ReplayOptions, ReplaySource};

/// How long a finished run waits for the coordinator to take its last checkpoints.
const PUBLISH_GRACE: Duration = Duration::from_secs(10);

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSummary {
    pub resumed_from: Option<u64>,
    pub final_step: u64,
    pub iterations_run: u64,
    pub seconds: f64,
    pub last_losses: Option<(f64, f64)>,
    /// Checkpoint versions the coordinator's registry accepted from this run, in order (empty
    /// when training from a dataset).
    pub published: Vec<u64>,
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
    let about = format!(
        "{} ({} streams × {} steps, {} floats per state)",
        dataset.display(),
        data.num_envs(),
        data.steps(),
        data.obs_dim()
    );
    let meta = data.meta().cloned();
    let engine = Engine::<B>::new(config, doc, data.obs_dim(), device)?;
    train(engine, &data, workdir, &about, None, meta.as_ref())
}

/// Trains on windows from the replay store behind the coordinator at `options.coordinator`, as
/// [`run`] does on a dataset, and publishes each checkpoint to the coordinator's registry.
///
/// Refuses to start, naming both values, when the coordinator's experiment serves windows of
/// another length than `model.horizon + 1` or states of another size than the model's (see
/// [`check_experiment`]). An unreachable coordinator later on never stops training: the sampling
/// client waits for its shards, and publishing retries in the background.
pub fn run_from_coordinator<B: AutodiffBackend>(
    doc: ConfigDoc,
    options: &ReplayOptions,
    workdir: &Path,
    device: B::Device,
) -> Result<RunSummary> {
    let config = LearnerConfig::resolve(&doc)?;
    // One worker thread drives the sampling client's prefetch and the publisher while burn
    // computes on the calling thread.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("learner-io")
        .enable_all()
        .build()
        .context("starting the learner's I/O runtime")?;
    let (client, experiment) = runtime.block_on(fetch_experiment(&options.coordinator, options.connect_timeout))?;
    let served = check_experiment(&config, &doc, &experiment)?;
    let seed = rng::derive_seed(config.seed, &["learner".into(), "replay".into()]);
    let source = ReplaySource::start(runtime.handle().clone(), options, served.clone(), config.train.batch_size, seed)?;
    let store_root = workdir.join("checkpoints");
    std::fs::create_dir_all(&store_root).with_context(|| format!("--workdir {}", workdir.display()))?;
    let store = runtime.block_on(checkpoint_store::serve(&options.listen, &store_root))?;
    let fetch_address = options.advertise.clone().unwrap_or_else(|| store.to_string());
    eprintln!("checkpoint store: serving {} at {store} (published as {fetch_address})", store_root.display());
    let publisher = Publisher::start(runtime.handle().clone(), client.rpc()).with_fetch_address(fetch_address);
    let about = format!(
        "the replay store at {} ({}, {} floats per state, windows of {} steps)",
        options.coordinator, served.env, served.obs_dim, served.window_steps
    );
    let engine = Engine::<B>::new(config, doc, served.obs_dim, device)?;
    let meta = served.meta()?;
    let result = train(engine, source, workdir, &about, Some(&publisher), Some(&meta));
    let report = publisher.finish(PUBLISH_GRACE);
    let mut summary = result?;
    summary.published = report.published;
    Ok(summary)
}

/// The loop both sources share: resume, iterate, checkpoint (and publish), report.
fn train<B: AutodiffBackend, S: WindowSource>(
    mut trainer: Engine<B>,
    mut source: S,
    workdir: &Path,
    about: &str,
    publisher: Option<&Publisher>,
    meta: Option<&serde_json::Value>,
) -> Result<RunSummary> {
    std::fs::create_dir_all(workdir).with_context(|| format!("--workdir {}", workdir.display()))?;
    let checkpoints = CheckpointDir::open(workdir, trainer.config().train.keep_checkpoints)?;
    for dir in checkpoints.incomplete() {
        eprintln!("warning: ignoring incomplete checkpoint {} (no DONE marker)", dir.display());
    }
    let total = trainer.config().train.steps;
    let (checkpoint_every, log_every) = (trainer.config().train.checkpoint_every, trainer.config().train.log_every);
    let mut resumed_from = None;
    // The newest complete checkpoint that loads; one whose files fail their checksums is skipped.
    let mut loaded = None;
    for (step, dir) in checkpoints.complete().into_iter().rev() {
        match trainer.load(&dir) {
            Ok(()) => {
                loaded = Some((step, dir));
                break;
            }
            Err(e) if format!("{e:#}").contains("fails its checksum") => {
                eprintln!("warning: skipping checkpoint {}: {e:#}", dir.display());
            }
            Err(e) => return Err(e.context(format!("resuming from {}", dir.display()))),
        }
    }
    if let Some((step, dir)) = loaded {
        eprintln!("resuming from checkpoint at step {step} ({})", dir.display());
        resumed_from = Some(step);
        // Published by the run that wrote it, unless the coordinator was unreachable then; the
        // publisher skips it if the registry has it.
        if let Some(p) = publisher {
            p.publish(step, &dir, &[]);
        }
    }
    let start_step = trainer.step();
    if start_step >= total {
        eprintln!("nothing to do: the newest checkpoint is at step {start_step}, and train.steps is {total}");
        return Ok(RunSummary {
            resumed_from,
            final_step: start_step,
            iterations_run: 0,
            seconds: 0.0,
            last_losses: None,
            published: Vec::new(),
        });
    }
    let what = trainer.config().model.name();
    eprintln!("training {what} on {about} for {} iterations ({})", total - start_step, trainer.describe());
    super::metrics::started(trainer.name(), trainer.threads(), trainer.replicas(), trainer.gpus(), start_step);
    let terminal = std::io::stderr().is_terminal();
    let started = Instant::now();
    let mut last_draw = Instant::now() - Duration::from_secs(1);
    let mut last = None;
    let mut saved_at = start_step;
    while trainer.step() < total {
        if super::stop::requested() {
            break;
        }
        let began = Instant::now();
        let losses = trainer.iteration(&mut source)?;
        last = Some((losses.discriminator, losses.generator));
        let step = trainer.step();
        super::metrics::iteration(step, losses.discriminator, losses.generator, began.elapsed());
        let done = step - start_step;
        let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-9);
        if step.is_multiple_of(checkpoint_every) {
            save(&mut trainer, &checkpoints, publisher, last, rate, meta)?;
            saved_at = step;
        }
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
    let seconds = started.elapsed().as_secs_f64();
    if saved_at != trainer.step() {
        let rate = (trainer.step() - start_step) as f64 / seconds.max(1e-9);
        save(&mut trainer, &checkpoints, publisher, last, rate, meta)?;
    }
    eprintln!(
        "done: {} iterations in {} ({:.1} it/s); checkpoints in {}",
        trainer.step() - start_step,
        hms(seconds),
        (trainer.step() - start_step) as f64 / seconds.max(1e-9),
        checkpoints.root().display()
    );
    Ok(RunSummary {
        resumed_from,
        final_step: trainer.step(),
        iterations_run: trainer.step() - start_step,
        seconds,
        last_losses: last,
        published: Vec::new(),
    })
}

/// Writes checkpoint `trainer.step()`, commits it (DONE last), then queues it for the registry with
/// the losses of its last iteration and the run's rate.
fn save<B: AutodiffBackend>(
    trainer: &mut Engine<B>,
    checkpoints: &CheckpointDir,
    publisher: Option<&Publisher>,
    losses: Option<(f64, f64)>,
    iterations_per_second: f64,
    meta: Option<&serde_json::Value>,
) -> Result<()> {
    let dir = checkpoints.begin(trainer.step())?;
    trainer.save(&dir, meta)?;
    let Some(p) = publisher else {
        checkpoints.commit(&dir).with_context(|| format!("committing {}", dir.display()))?;
        super::metrics::checkpoint(trainer.step());
        return Ok(());
    };
    // Published checkpoints stay while evaluators need them (retention.rs).
    checkpoints.mark_done(&dir).with_context(|| format!("committing {}", dir.display()))?;
    super::metrics::checkpoint(trainer.step());
    let (d, g) = losses.unwrap_or((f64::NAN, f64::NAN));
    p.publish(trainer.step(), &dir, &[("loss_d", d), ("loss_g", g), ("iterations_per_second", iterations_per_second)]);
    p.prune(checkpoints, trainer.config().train.keep_unevaluated);
    Ok(())
}
