//! `evaluator`: reports on trained checkpoints — every version a learner publishes to a
//! coordinator's registry, or one checkpoint offline.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{ArgGroup, Parser};

use learner::eval::evaluate;
use learner::service::evaluator::{self, EvaluatorOptions};

/// Evaluate δ-model checkpoints: return distributions against Monte-Carlo (Pendulum), written as
/// a report directory per checkpoint (report.md, report.json, PNG figures, .npy arrays).
///
/// With --coordinator, evaluates every version published to that coordinator's registry, the
/// backlog first, each exactly once among all evaluators of the registry. With --checkpoint,
/// evaluates one checkpoint directory and exits.
#[derive(Debug, Parser)]
#[command(name = "evaluator", version, about)]
#[command(group(ArgGroup::new("source").required(true).args(["coordinator", "checkpoint"])))]
struct Cli {
    /// Evaluate every model version in the registry of the coordinator at HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    coordinator: Option<String>,
    /// Evaluate this one checkpoint directory (…/checkpoints/step-…) offline.
    #[arg(long, value_name = "DIR")]
    checkpoint: Option<PathBuf>,
    /// With --checkpoint: a second checkpoint of the same env (e.g. the SR baseline), evaluated
    /// beside the first in the same report.
    #[arg(long, value_name = "DIR", requires = "checkpoint", conflicts_with = "coordinator")]
    compare: Option<PathBuf>,
    /// Reports go to DIR/eval/<version>/ (offline: DIR/eval/<step>/); the Monte-Carlo cache to
    /// DIR/eval/mc-cache/; checkpoints fetched from a learner to DIR/fetched/.
    #[arg(long, default_value = "dsm-work")]
    workdir: PathBuf,
    /// Serve Prometheus metrics at http://ADDR/metrics: the newest report's headline numbers and
    /// version, evaluations completed, seconds per report, versions waiting.
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Serve `grpc.health.v1` at HOST:PORT (SERVING while the process runs), for orchestrators
    /// that probe every role over gRPC (Kubernetes `grpc` probes). An evaluator serves no other gRPC.
    #[arg(long, value_name = "HOST:PORT")]
    health_addr: Option<std::net::SocketAddr>,
    /// With --coordinator: how long to keep retrying an unreachable coordinator at start.
    #[arg(long, default_value_t = 60, value_name = "S")]
    connect_timeout_seconds: u64,
    /// With --coordinator: the longest a checkpoint fetch from a learner may take.
    #[arg(long, default_value_t = 600, value_name = "S")]
    fetch_timeout_seconds: u64,
    /// With --coordinator: exit after writing N reports (default: run until SIGTERM or Ctrl-C).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    max_reports: Option<u64>,
    /// Override an [eval] value, e.g. `--set eval.mc_rollouts=1000`. Repeatable.
    #[arg(long = "set", value_name = "eval.KEY=VALUE")]
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
    if let Some(bad) = cli.sets.iter().find(|s| !s.starts_with("eval.")) {
        anyhow::bail!("--set {bad}: the evaluator takes eval.* values only (the rest comes from the checkpoint)");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("evaluator-io")
        .enable_all()
        .build()
        .context("starting the evaluator's runtime")?;
    if let Some(addr) = cli.metrics_addr {
        runtime
            .block_on(async { common::telemetry::serve_metrics(addr, "evaluator") })
            .with_context(|| format!("--metrics-addr {addr}"))?;
        evaluator::register_metrics();
        eprintln!("metrics at http://{addr}/metrics");
    }
    if let Some(addr) = cli.health_addr {
        runtime.block_on(proto::health::serve(addr)).with_context(|| format!("--health-addr {addr}"))?;
    }
    if let Some(dir) = &cli.checkpoint {
        let model = learner::eval::model::TrainedModel::load(dir)?;
        let name = format!("{:012}", model.step);
        drop(model);
        eprintln!("evaluating {} …", dir.display());
        let written = evaluate::evaluate(dir, cli.compare.as_deref(), &cli.workdir, &name, &cli.sets)?;
        evaluator::record(0, &written);
        eprintln!(
            "report in {:.1} s: {}\n{}",
            written.seconds,
            evaluator::headline_text(&written.headline),
            written.dir.join("report.md").display()
        );
        return Ok(());
    }
    let options = EvaluatorOptions {
        coordinator: cli.coordinator.clone().expect("clap requires a source"),
        workdir: cli.workdir.clone(),
        sets: cli.sets.clone(),
        connect_timeout: Duration::from_secs(cli.connect_timeout_seconds),
        fetch_timeout: Duration::from_secs(cli.fetch_timeout_seconds),
        max_reports: cli.max_reports.map(|n| n as usize),
    };
    let summary = runtime.block_on(evaluator::run(options, client::shutdown::shutdown_signal()))?;
    eprintln!("evaluator: {} reports written", summary.evaluated.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
        let parse = |args: &[&str]| Cli::try_parse_from([&["evaluator"], args].concat());
        assert!(parse(&["--checkpoint", "c", "--compare", "d"]).is_ok());
        assert!(
            parse(&["--coordinator", "127.0.0.1:50051", "--compare", "d"]).is_err(),
            "--compare needs --checkpoint"
        );
        assert!(parse(&[]).is_err());
        assert!(parse(&["--coordinator", "a:1", "--checkpoint", "c"]).is_err());
    }
}
