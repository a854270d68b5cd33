//! `learner`: trains a δ-model on an offline dataset written by `actor simulate`, or on windows
//! from a running coordinator's replay store.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use burn::backend::{Autodiff, NdArray};
use clap::{ArgGroup, Parser};

use common::config::ConfigDoc;
use learner::train::replay_source::ReplayOptions;
use learner::train::run::{run, run_from_coordinator};

/// Train a δ-model (distributional successor measure) on an offline `.npz` dataset or on the
/// replay store of a running coordinator, with checkpoints and resume. Runs on the CPU by default:
/// the fused engine (train.engine), on train.threads threads (0 = every core), as --replicas
/// data-parallel replicas; or on a GPU with --gpus.
#[derive(Debug, Parser)]
#[command(name = "learner", version, about)]
#[command(group(ArgGroup::new("source").required(true).args(["dataset", "coordinator"])))]
struct Cli {
    /// Experiment file with [experiment], [model] and [train] sections (see configs/).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Dataset written by `actor simulate` (observations and step_type are used).
    #[arg(long)]
    dataset: Option<PathBuf>,
    /// Train from the replay store of the coordinator at HOST:PORT instead of a dataset. Its
    /// experiment must serve windows of model.horizon + 1 steps and the model's state size;
    /// every checkpoint is published to its registry. Retried for --connect-timeout-seconds.
    #[arg(long, value_name = "HOST:PORT")]
    coordinator: Option<String>,
    /// With --coordinator: batches kept ready ahead of training (each iteration takes two)
    /// [default: 8].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..), conflicts_with = "dataset")]
    prefetch: Option<u64>,
    /// With --coordinator: how long to keep retrying a coordinator that is not up, or has no
    /// experiment yet, at start [default: 60].
    #[arg(long, conflicts_with = "dataset")]
    connect_timeout_seconds: Option<u64>,
    /// With --coordinator: where the checkpoint store listens, from which evaluators on other
    /// machines fetch checkpoints (port 0: any free port) [default: 127.0.0.1:0].
    #[arg(long, value_name = "HOST:PORT", conflicts_with = "dataset")]
    listen: Option<String>,
    /// With --coordinator: the checkpoint store's address as published in the registry
    /// [default: the address it is bound to].
    #[arg(long, value_name = "HOST:PORT", conflicts_with = "dataset")]
    advertise: Option<String>,
    /// Total iterations (one discriminator step + one generator step each); overrides
    /// train.steps. A resumed run continues up to this count.
    #[arg(long)]
    steps: Option<u64>,
    /// Where checkpoints go; a rerun with the same directory resumes from its newest one.
    #[arg(long, default_value = "dsm-work")]
    workdir: PathBuf,
    /// Serve Prometheus metrics at http://ADDR/metrics: iterations, losses, seconds per
    /// iteration, the newest checkpoint's step, the engine (and, with --coordinator, the sampling
    /// client's windows and shards).
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Run the fused engine as N exact data-parallel replicas (overrides train.replicas): each
    /// computes the gradients of its share of the batch rows on train.threads / N threads, the
    /// replicas sum them and apply one update, and replica 0 writes the checkpoints. The trained
    /// model is the same for any N (bit for bit for powers of two).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    replicas: Option<u64>,
    /// Train on these GPUs (overrides train.gpus): `0`, `0,1` or `all`. The fused engine's
    /// iteration on each device, one replica per GPU with its share of the batch rows and the
    /// gradients summed by NCCL, with the CPU engine's draws and checkpoints, so a run resumes on
    /// either. Needs a CUDA driver, NVRTC (libnvrtc), cuBLAS (libcublas) and, for several GPUs,
    /// NCCL (libnccl) on the library path.
    #[arg(long, value_name = "LIST", conflicts_with = "replicas")]
    gpus: Option<String>,
    /// Override one config value, e.g. `--set model.num_outer=1`. Repeatable.
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    sets: Vec<String>,
}

fn main() -> ExitCode {
    match main_inner(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn main_inner(cli: Cli) -> Result<()> {
    learner::train::stop::install()?;
    // The exporter's listener is a task on its own small runtime, alive until the run ends.
    let _metrics = match cli.metrics_addr {
        Some(addr) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("learner-metrics")
                .enable_all()
                .build()
                .context("starting the metrics runtime")?;
            rt.block_on(async { common::telemetry::serve_metrics(addr, "learner") })
                .with_context(|| format!("--metrics-addr {addr}"))?;
            learner::train::metrics::register();
            eprintln!("metrics at http://{addr}/metrics");
            Some(rt)
        }
        None => None,
    };
    let mut doc = match &cli.config {
        Some(path) => ConfigDoc::load(path)?,
        None => ConfigDoc::empty(),
    };
    doc.apply_sets(&cli.sets)?;
    if let Some(n) = cli.replicas {
        doc.apply_set(&format!("train.replicas={n}"))?;
    }
    if let Some(gpus) = &cli.gpus {
        learner::cuda::gpus::parse(gpus)?;
        doc.apply_set(&format!("train.gpus={}", toml_string(gpus)))?;
    }
    if let Some(steps) = cli.steps {
        doc.apply_set(&format!("train.steps={steps}"))?;
    }
    match (&cli.dataset, cli.coordinator) {
        (Some(dataset), _) => run::<Autodiff<NdArray>>(doc, dataset, &cli.workdir, Default::default())?,
        (None, Some(coordinator)) => {
            let mut options = ReplayOptions::new(coordinator);
            if let Some(n) = cli.prefetch {
                options.prefetch = n as usize;
            }
            if let Some(s) = cli.connect_timeout_seconds {
                options.connect_timeout = std::time::Duration::from_secs(s);
            }
            if let Some(listen) = cli.listen {
                options.listen = listen;
            }
            options.advertise = cli.advertise;
            run_from_coordinator::<Autodiff<NdArray>>(doc, &options, &cli.workdir, Default::default())?
        }
        (None, None) => anyhow::bail!("give --dataset FILE or --coordinator HOST:PORT"),
    };
    Ok(())
}

/// `s` as a TOML string literal.
fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    /// Exactly one data source: --dataset or --coordinator.
    #[test]
    fn one_data_source_is_required() {
        let parse = |args: &[&str]| Cli::try_parse_from([&["learner"], args].concat());
        assert!(parse(&["--dataset", "d.npz"]).is_ok());
        let cli = parse(&["--coordinator", "127.0.0.1:50051", "--prefetch", "4"]).unwrap();
        assert_eq!((cli.coordinator.as_deref(), cli.prefetch), (Some("127.0.0.1:50051"), Some(4)));
        assert!(parse(&[]).is_err());
        assert!(parse(&["--dataset", "d.npz", "--coordinator", "127.0.0.1:50051"]).is_err());
        assert!(parse(&["--dataset", "d.npz", "--prefetch", "4"]).is_err(), "--prefetch needs --coordinator");
        assert!(parse(&["--coordinator", "127.0.0.1:50051", "--prefetch", "0"]).is_err());
    }
}
