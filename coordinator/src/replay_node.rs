//! A standalone replay shard (`replay --coordinator host:port`): the scale-out form of the shards a
//! coordinator hosts in-process.
//!
//! 1. Fetch the experiment from the coordinator (waiting while no actor has fixed it yet): the
//!    `[replay]` section sets the window, the limiter and the checkpoint period.
//! 2. Look in the workdir for a complete checkpoint: a restarted shard asks the coordinator for
//!    the slot it held, and restores it (table, cursors, limiter counters).
//! 3. Register (role REPLAY, its advertised address); the coordinator assigns a slot and puts it
//!    in the shard map. A slot still held by a dead node's unexpired lease is retried with backoff.
//! 4. Serve the `Replay` service for that one shard, heartbeat, and re-register whenever the
//!    coordinator forgets it (coordinator restart, lease lost to a pause).
//! 5. On shutdown: stop serving, write a final checkpoint.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use client::coordinator::{CoordinatorHandle, NoExperimentYet, Registration, Role};
use proto::pb::replay_server::ReplayServer;
use proto::MAX_MESSAGE_BYTES;

use crate::checkpointer::{self, Checkpointer};
use crate::experiment::Experiment;
use crate::service::replay::ReplayService;
use crate::shard::Shard;

#[derive(Debug, Clone)]
pub struct ReplayNodeOptions {
    pub coordinator: String,
    pub listen: SocketAddr,
    /// What the shard map tells others; default: the bound address.
    pub advertise: Option<String>,
    /// Overrides `replay.max_size` for this shard.
    pub max_size: Option<u64>,
    pub workdir: PathBuf,
    /// How long to keep retrying an unreachable coordinator (at start, and for a slot held by a
    /// dead node's lease). A coordinator that answers without an experiment is waited for as long
    /// as it takes (the first actor fixes it).
    pub connect_timeout: Duration,
}

/// The coordinator and its experiment, once it has one.
async fn fetch_experiment(opts: &ReplayNodeOptions) -> Result<(CoordinatorHandle, Experiment)> {
    let (coordinator, spec) = CoordinatorHandle::connect_for_experiment(
        &opts.coordinator,
        opts.connect_timeout,
        NoExperimentYet::KeepWaiting,
    )
    .await
    .with_context(|| format!("--coordinator {}", opts.coordinator))?;
    Ok((coordinator, Experiment::new(spec.config)?))
}

/// The slot whose checkpoint in `workdir` is newest, if any: a restarted shard wants it back.
pub fn checkpointed_slot(workdir: &Path) -> Option<u32> {
    let shards = workdir.join("shards");
    let mut best: Option<(std::time::SystemTime, u32)> = None;
    for entry in std::fs::read_dir(shards).ok()?.flatten() {
        let name = entry.file_name();
        let Some(id) = name.to_str().and_then(|n| n.strip_prefix("shard-")).and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if let Some(t) = checkpointer::newest_complete_time(&entry.path()) {
            if best.is_none_or(|(b, _)| t > b) {
                best = Some((t, id));
            }
        }
    }
    best.map(|(_, id)| id)
}

/// Runs a replay node until `shutdown` resolves. `ready` receives the bound address and slot.
pub async fn run_replay_node(
    opts: ReplayNodeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
    ready: impl FnOnce(SocketAddr, u32, u32),
) -> Result<()> {
    let (coordinator, experiment) = fetch_experiment(&opts).await?;
    let r = experiment.replay().clone();
    let max_size = opts.max_size.unwrap_or(r.max_size);
    anyhow::ensure!(
        max_size >= u64::from(r.window_steps),
        "--max-size {max_size} cannot hold one window of {} steps",
        r.window_steps
    );
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("--listen {}: cannot bind", opts.listen))?;
    let bound = listener.local_addr()?;
    let advertise = opts.advertise.clone().unwrap_or_else(|| bound.to_string());
    let wanted = checkpointed_slot(&opts.workdir);
    let registration = Registration {
        advertise: advertise.clone(),
        shard_id: wanted,
        ..Registration::new(Role::Replay, common::incarnation::new_incarnation())
    };
    // A slot still held by a dead node's lease frees within one lease period: wait for it.
    let lease = coordinator.register_patiently(&registration, opts.connect_timeout).await?;
    let slot = lease.shard_id;

    let limiter = r.limiter().map_err(anyhow::Error::msg)?;
    let shard = Arc::new(Shard::new(slot, max_size, r.window_steps as usize, limiter, experiment.seed()));
    let dir = checkpointer::shard_dir(&opts.workdir, slot);
    checkpointer::restore_and_report(&shard, &dir)?;
    let checkpoints = Checkpointer::start(shard.clone(), dir, r.checkpoint_seconds);
    ready(bound, slot, lease.num_shards);

    // Heartbeats; a coordinator that forgot this node (it restarted) gets it again, for this slot.
    let lease = coordinator.keep_lease(Registration { shard_id: Some(slot), ..registration }, lease);
    let (closing_tx, closing) = tokio::sync::watch::channel(false);
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<ReplayServer<ReplayService>>().await;
    let service = ReplayService::new(vec![shard.clone()], closing)
        .with_checkpointer(slot, checkpoints.clone())
        .into_server()
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let served = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .add_service(health_service)
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, async move {
            shutdown.await;
            health.set_not_serving::<ReplayServer<ReplayService>>().await;
            let _ = closing_tx.send(true);
        })
        .await;
    drop(lease);
    let last = checkpoints.shutdown().await;
    match last {
        Ok(path) => eprintln!("final checkpoint of shard {slot}: {}", path.display()),
        Err(e) => eprintln!("error: final checkpoint of shard {slot}: {e:#}"),
    }
    served.map_err(Into::into)
}
