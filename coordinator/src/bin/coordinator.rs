//! `coordinator`: the control plane, hosting K replay shards in-process on the same port.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;

use client::shutdown::shutdown_signal;
use common::config::ConfigDoc;
use coordinator::experiment::Experiment;
use coordinator::server::{serve, ServeOptions};

/// The control plane of a δ-model experiment: membership and leases, the experiment config, the
/// shard map and the checkpoint registry, plus K replay shards served in-process.
#[derive(Debug, Parser)]
#[command(name = "coordinator", version, about)]
struct Cli {
    /// Experiment file (TOML; see configs/). Without one, the first actor's --env fixes the
    /// experiment, with that env's defaults.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override one config value, e.g. `--set replay.max_size=200000`. Repeatable.
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    sets: Vec<String>,
    /// Address to listen on (port 0 picks a free port; the bound address is printed).
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// HOST:PORT the shard map tells others (default: the bound address).
    #[arg(long)]
    advertise: Option<String>,
    /// Number of shard slots (K); overrides replay.shards. Fixed for the experiment's life: a
    /// stream's shard is hash(stream id) mod K.
    #[arg(long)]
    shards: Option<u32>,
    /// How many of the K slots this process serves in-process (slots 0..N); the others are
    /// served by `replay --coordinator …` nodes as they register. Default: all K.
    #[arg(long)]
    hosted_shards: Option<u32>,
    /// Directory for the coordinator's files: the resolved experiment (experiment.toml, reloaded
    /// on a restart without --config), the checkpoint registry (registry.jsonl) and the hosted
    /// shards' checkpoints (shards/shard-<id>/).
    #[arg(long, default_value = "dsm-work")]
    workdir: PathBuf,
    /// Serve Prometheus metrics at http://HOST:PORT/metrics.
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    let saved = cli.workdir.join("experiment.toml");
    let mut doc = match &cli.config {
        Some(path) => ConfigDoc::load(path)?,
        // A restarted coordinator keeps its experiment (the first actor may have fixed it).
        None if saved.exists() => {
            eprintln!("resuming the experiment in {} (pass --config to start another)", saved.display());
            ConfigDoc::load(&saved)?
        }
        None => ConfigDoc::empty(),
    };
    doc.apply_sets(&cli.sets)?;
    if let Some(k) = cli.shards {
        anyhow::ensure!(k >= 1, "--shards must be at least 1");
        doc.apply_set(&format!("replay.shards={k}"))?;
    }
    let experiment = Experiment::new(doc)?;
    std::fs::create_dir_all(&cli.workdir).with_context(|| format!("--workdir {}", cli.workdir.display()))?;
    if let Some(addr) = cli.metrics_addr {
        common::telemetry::serve_metrics(addr, "coordinator").with_context(|| format!("--metrics-addr {addr}"))?;
        coordinator::metrics::register_coordinator();
    }
    let listener = tokio::net::TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("--listen {}: cannot bind", cli.listen))?;
    let bound = listener.local_addr()?;
    let advertise = cli.advertise.unwrap_or_else(|| bound.to_string());
    if let Some(toml) = experiment.config_toml() {
        std::fs::write(cli.workdir.join("experiment.toml"), toml).context("writing experiment.toml")?;
    }
    let slots = experiment.replay().shards;
    let hosted = cli.hosted_shards.unwrap_or(slots);
    anyhow::ensure!(hosted <= slots, "--hosted-shards {hosted} exceeds the {slots} shard slots (--shards)");
    println!(
        "coordinator listening on {bound} (advertised as {advertise}; {slots} shard slots, {hosted} in-process; env {})",
        experiment.env().map(|e| e.to_string()).unwrap_or_else(|| "set by the first actor".into())
    );
    let options = ServeOptions { advertise, hosted_shards: Some(hosted), workdir: Some(cli.workdir.clone()) };
    serve(listener, options, experiment, shutdown_signal()).await?;
    eprintln!("coordinator stopped");
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
