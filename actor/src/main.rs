//! The `actor` command line. Everything it does lives in the library; this is glue.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use actor::envs::{EnvConfig, EnvId};
use actor::goal_policy;
use actor::simulate::SimulateSpec;
use actor::stream::run::{run, ActorOptions};
use client::shutdown::shutdown_signal;
use common::config::ConfigDoc;

/// The actor of a δ-model experiment: steps E environments and streams their transitions into
/// the replay shards (`actor --env riab-walls --coordinator host:50051`), or simulates offline
/// and writes a NumPy dataset (`actor simulate …`).
#[derive(Debug, Parser)]
#[command(name = "actor", version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    stream: StreamArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Simulate E independent streams of N steps offline and write a NumPy .npz dataset.
    ///
    /// `actor simulate --env riab-random --steps 24000 --seed 0 --out random.npz` writes the
    /// thesis's 20-minute dataset (dt = 0.05 s, 50 place cells).
    Simulate(SimulateArgs),
}

/// Streaming into the replay shards (no subcommand).
#[derive(Debug, clap::Args)]
struct StreamArgs {
    /// Env id: riab-random, riab-lowth, riab-highth, riab-walls, riab-teleport, riab-goal or
    /// pendulum. It must match the coordinator's experiment (the first actor fixes it when the
    /// coordinator has no config).
    #[arg(long)]
    env: Option<String>,
    /// The coordinator's HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:50051")]
    coordinator: String,
    /// Number of environments stepped together (E); each is one stream.
    #[arg(long, default_value_t = 16)]
    envs: usize,
    /// This actor's id: with the experiment seed and env index it fixes every trajectory.
    #[arg(long, default_value_t = 0)]
    actor_id: u64,
    /// Serve Prometheus metrics at http://HOST:PORT/metrics.
    #[arg(long)]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Serve `grpc.health.v1` at HOST:PORT (SERVING while the process runs), for orchestrators
    /// that probe every role over gRPC (Kubernetes `grpc` probes). An actor serves no other gRPC.
    #[arg(long, value_name = "HOST:PORT")]
    health_addr: Option<std::net::SocketAddr>,
    /// On SIGTERM, wait at most this long (seconds) for outstanding chunks to be acknowledged.
    #[arg(long, default_value_t = 10.0)]
    drain_seconds: f64,
    /// Keep retrying an unreachable coordinator this long (seconds) at start.
    #[arg(long, default_value_t = 60.0)]
    connect_timeout_seconds: f64,
    /// Stop after this many steps per env (default: run until SIGTERM).
    #[arg(long)]
    max_steps: Option<u64>,
    /// Working directory: `riab-goal`'s trained policy is cached in DIR/policies/ (every actor of
    /// an experiment trains, or loads, the same one).
    #[arg(long, default_value = "dsm-work")]
    workdir: PathBuf,
}

#[derive(Debug, clap::Args)]
struct SimulateArgs {
    /// Env id: riab-random, riab-lowth, riab-highth, riab-walls, riab-teleport, riab-goal or
    /// pendulum. May be omitted when the config file sets `experiment.env`.
    #[arg(long)]
    env: Option<String>,
    /// Rows per stream (N). At dt = 0.05 s, 24000 rows are 20 simulated minutes.
    #[arg(long)]
    steps: usize,
    /// Experiment seed: fixes the place-cell centres and, with --actor-id, every trajectory.
    /// Defaults to the config's `experiment.seed` (0 if unset).
    #[arg(long)]
    seed: Option<u64>,
    /// Number of independent streams (E), one per row of the arrays.
    #[arg(long, default_value_t = 1)]
    envs: usize,
    /// Which actor's streams to produce (streams derive from seed, actor id and env index).
    #[arg(long, default_value_t = 0)]
    actor_id: u64,
    /// Experiment file (TOML with [experiment] and [env] sections; see configs/).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override one config value, e.g. `--set env.thigmotaxis=0.5` or `--set env.cells.n=100`.
    /// Repeatable; applied after the file, in order.
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    sets: Vec<String>,
    /// Output archive (.npz).
    #[arg(long)]
    out: PathBuf,
    /// Working directory: `riab-goal` trains its policy once (seconds) and caches it in
    /// DIR/policies/, keyed by the env config and seed; later runs load it.
    #[arg(long, default_value = "dsm-work")]
    workdir: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Simulate(args)) => simulate(args),
        None => stream(cli.stream),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn stream(args: StreamArgs) -> Result<()> {
    let Some(env) = &args.env else {
        bail!("--env is required (or use `actor simulate`; see --help)");
    };
    let env: EnvId = env.parse().map_err(anyhow::Error::msg)?;
    if args.envs == 0 {
        bail!("--envs must be at least 1");
    }
    if !(args.drain_seconds.is_finite() && args.drain_seconds >= 0.0) {
        bail!("--drain-seconds must be a number ≥ 0");
    }
    if !(args.connect_timeout_seconds.is_finite() && args.connect_timeout_seconds >= 0.0) {
        bail!("--connect-timeout-seconds must be a number ≥ 0");
    }
    let options = ActorOptions {
        env,
        coordinator: args.coordinator.clone(),
        envs: args.envs,
        actor_id: args.actor_id,
        drain: Duration::from_secs_f64(args.drain_seconds),
        connect_timeout: Duration::from_secs_f64(args.connect_timeout_seconds),
        max_steps: args.max_steps,
        workdir: args.workdir.clone(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        if let Some(addr) = args.metrics_addr {
            common::telemetry::serve_metrics(addr, "actor").with_context(|| format!("--metrics-addr {addr}"))?;
            actor::stream::metrics::register(env.as_str(), args.actor_id, args.envs);
        }
        if let Some(addr) = args.health_addr {
            proto::health::serve(addr).await.with_context(|| format!("--health-addr {addr}"))?;
        }
        let report = run(options, shutdown_signal()).await?;
        eprintln!(
            "actor stopped after {} steps per env; {} chunks acknowledged, {} refused, {} unacknowledged",
            report.steps,
            report.writers.iter().map(|w| w.acked_chunks).sum::<u64>(),
            report.writers.iter().map(|w| w.refused_chunks).sum::<u64>(),
            report.unacknowledged()
        );
        Ok(())
    })
}

fn simulate(args: SimulateArgs) -> Result<()> {
    let mut doc = match &args.config {
        Some(path) => ConfigDoc::load(path)?,
        None => ConfigDoc::empty(),
    };
    doc.apply_sets(&args.sets)?;
    let experiment = doc.experiment()?;
    let id: EnvId = match (&args.env, &experiment.env) {
        (Some(flag), Some(file)) if flag != file => {
            bail!("--env {flag} disagrees with the config's experiment.env = {file}")
        }
        (Some(id), _) | (None, Some(id)) => id.parse().map_err(anyhow::Error::msg)?,
        (None, None) => bail!("no env: pass --env <id> or set experiment.env in --config"),
    };
    if args.steps == 0 {
        bail!("--steps must be at least 1");
    }
    if args.envs == 0 {
        bail!("--envs must be at least 1");
    }
    if args.out.extension().and_then(|e| e.to_str()) != Some("npz") {
        bail!("--out {}: the output must be a .npz file", args.out.display());
    }
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.is_dir() {
            bail!("--out {}: directory {} does not exist", args.out.display(), dir.display());
        }
    }
    let config = EnvConfig::resolve(id, &doc.section("env"))?;
    let spec = SimulateSpec {
        env: id,
        config,
        seed: args.seed.unwrap_or(experiment.seed),
        actor_id: args.actor_id,
        num_envs: args.envs,
        steps: args.steps,
        policy: None,
    };
    spec.check()?;
    let mut spec = spec;
    spec.policy = goal_policy::for_env(&spec.config, spec.seed, &args.workdir, goal_policy::log_event)
        .with_context(|| format!("the riab-goal policy (--workdir {})", args.workdir.display()))?;
    if let Some((_, report)) = &spec.policy {
        eprintln!("{}", report.summary());
    }
    eprintln!(
        "simulating {} × {} steps of {} (seed {}, {:.1} MiB)",
        spec.num_envs,
        spec.steps,
        id,
        spec.seed,
        spec.bytes() as f64 / f64::from(1 << 20)
    );
    let start = Instant::now();
    let total = spec.steps;
    let dataset = spec.run(|done| {
        let secs = start.elapsed().as_secs_f64();
        let rate = done as f64 / secs;
        eprintln!(
            "  {done}/{total} steps ({:.0}%), {:.0} env-steps/s, ETA {:.0} s",
            100.0 * done as f64 / total as f64,
            rate * spec.num_envs as f64,
            (total - done) as f64 / rate
        );
    })?;
    let secs = start.elapsed().as_secs_f64();
    dataset.write(&args.out).with_context(|| format!("--out {}", args.out.display()))?;
    eprintln!(
        "wrote {} ({:.2} s simulated, {:.0} env-steps/s)",
        args.out.display(),
        secs,
        (spec.steps * spec.num_envs) as f64 / secs
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }
}
