//! `replay`: a standalone replay shard that registers with the coordinator and serves one slot.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;

use client::shutdown::shutdown_signal;
use coordinator::replay_node::{run_replay_node, ReplayNodeOptions};

/// A replay shard for scale-out: it fetches the experiment from the coordinator, takes a shard
/// slot (the one its newest checkpoint in --workdir belongs to, after a restart), restores that
/// checkpoint, and serves windows to learners until SIGTERM, when it writes a final checkpoint.
#[derive(Debug, Parser)]
#[command(name = "replay", version, about)]
struct Cli {
    /// The coordinator's HOST:PORT.
    #[arg(long)]
    coordinator: String,
    /// Address to listen on (port 0 picks a free port; the bound address is printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// HOST:PORT the shard map tells actors and learners (default: the bound address).
    #[arg(long)]
    advertise: Option<String>,
    /// Steps this shard stores before evicting the oldest chunks (default: replay.max_size of the
    /// experiment).
    #[arg(long)]
    max_size: Option<u64>,
    /// Directory for this shard's checkpoints (shards/shard-<id>/ckpt-*/, DONE written last).
    #[arg(long, default_value = "dsm-replay")]
    workdir: PathBuf,
    /// Serve Prometheus metrics at http://HOST:PORT/metrics.
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
    /// Keep retrying an unreachable coordinator (or a slot a dead node still holds) this long.
    #[arg(long, default_value_t = 60.0)]
    connect_timeout_seconds: f64,
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
    anyhow::ensure!(
        cli.connect_timeout_seconds.is_finite() && cli.connect_timeout_seconds >= 0.0,
        "--connect-timeout-seconds must be a number ≥ 0"
    );
    std::fs::create_dir_all(&cli.workdir).with_context(|| format!("--workdir {}", cli.workdir.display()))?;
    if let Some(addr) = cli.metrics_addr {
        common::telemetry::serve_metrics(addr, "replay").with_context(|| format!("--metrics-addr {addr}"))?;
    }
    let opts = ReplayNodeOptions {
        coordinator: cli.coordinator,
        listen: cli.listen,
        advertise: cli.advertise,
        max_size: cli.max_size,
        workdir: cli.workdir,
        connect_timeout: Duration::from_secs_f64(cli.connect_timeout_seconds),
    };
    run_replay_node(opts, shutdown_signal(), |bound, slot, slots| {
        println!("replay listening on {bound} (shard slot {slot} of {slots})");
    })
    .await?;
    eprintln!("replay stopped");
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
