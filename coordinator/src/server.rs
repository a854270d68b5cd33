//! Assembles a coordinator process: the control plane plus K in-process replay shards on one
//! port, with `grpc.health.v1`. The caller binds the listener (tests pass port 0) and owns the
//! shutdown signal.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use proto::pb::coordinator_server::CoordinatorServer;
use proto::pb::replay_server::ReplayServer;
use tokio::net::TcpListener;

use crate::checkpointer;
use crate::experiment::Experiment;
use crate::registry::{Kind, Registry};
use crate::service::coordinator::{CoordinatorService, CoordinatorState};
use crate::service::replay::ReplayService;
use crate::shard::Shard;
use crate::shard_map::ShardMap;

use proto::MAX_MESSAGE_BYTES;

/// How a coordinator process runs, beyond its experiment.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// The address the shard map hands out for the in-process shards.
    pub advertise: String,
    /// How many of the K slots this process serves itself (slots `0..hosted`); the rest wait for
    /// `replay` nodes to register. `None`: all of them.
    pub hosted_shards: Option<u32>,
    /// Where the checkpoint registry and the hosted shards' checkpoints live; `None` keeps
    /// everything in memory (tests).
    pub workdir: Option<PathBuf>,
}

/// The first `hosted` shards of the experiment's `[replay]`, built empty.
pub fn build_shards(experiment: &Experiment, hosted: u32) -> anyhow::Result<Vec<Arc<Shard>>> {
    let r = experiment.replay();
    (0..hosted)
        .map(|id| {
            let limiter = r.limiter().map_err(anyhow::Error::msg)?;
            Ok(Arc::new(Shard::new(id, r.max_size, r.window_steps as usize, limiter, experiment.seed())))
        })
        .collect()
}

/// Serves until `shutdown` resolves, hosting every shard in memory, with nothing on disk.
/// `advertise` is the address the shard map hands out.
pub async fn serve_coordinator(
    listener: TcpListener,
    advertise: String,
    experiment: Experiment,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve(listener, ServeOptions { advertise, ..Default::default() }, experiment, shutdown).await
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    options: ServeOptions,
    experiment: Experiment,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let slots = experiment.replay().shards;
    let hosted = options.hosted_shards.unwrap_or(slots);
    anyhow::ensure!(hosted <= slots, "--hosted-shards {hosted} exceeds the experiment's {slots} shard slots");
    let shards = build_shards(&experiment, hosted)?;
    // With a workdir: restore each hosted shard from its checkpoints, and keep writing them.
    let checkpoints = match &options.workdir {
        Some(dir) => checkpointer::start_hosted(&shards, dir, experiment.replay().checkpoint_seconds).await?,
        None => Vec::new(),
    };
    let map = ShardMap::new(slots, hosted, &options.advertise);
    let registry = match &options.workdir {
        Some(dir) => {
            let path = dir.join("registry.jsonl");
            let lease_ms = (experiment.replay().lease_seconds * 1000.0) as i64;
            Registry::open(&path, crate::service::coordinator::unix_ms(), lease_ms)
                .map_err(|e| anyhow::anyhow!("checkpoint registry {}: {e:#}", path.display()))?
        }
        None => Registry::default(),
    };
    if let Some(latest) = registry.latest(Kind::Model) {
        eprintln!(
            "checkpoint registry: {} entries, latest version {} ({})",
            registry.len(),
            latest.version,
            latest.uri
        );
    }
    restore_registry_gauges(&registry);
    let experiment_file = options.workdir.as_ref().map(|d| d.join("experiment.toml"));
    let state = CoordinatorState::new(experiment, map, registry, experiment_file);
    let reaper = tokio::spawn(state.clone().run_reaper());
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<CoordinatorServer<CoordinatorService>>().await;
    health.set_serving::<ReplayServer<ReplayService>>().await;
    let (closing_tx, closing) = tokio::sync::watch::channel(false);
    let coordinator = CoordinatorServer::new(CoordinatorService::new(state, closing.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let replay = checkpoints
        .iter()
        .fold(ReplayService::new(shards, closing), |s, c| s.with_checkpointer(c.shard().id(), c.clone()));
    let replay = ReplayServer::new(replay)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let health_on_shutdown = health.clone();
    // Without TCP_NODELAY, Nagle's algorithm and delayed ACKs cap a stream of small replies at a
    // few hundred per second (measured: 41× slower ingest; docs/benchmarks.md).
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let result = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(10)))
        .add_service(health_service)
        .add_service(coordinator)
        .add_service(replay)
        .serve_with_incoming_shutdown(incoming, async move {
            shutdown.await;
            health_on_shutdown.set_not_serving::<CoordinatorServer<CoordinatorService>>().await;
            health_on_shutdown.set_not_serving::<ReplayServer<ReplayService>>().await;
            // End the long-lived streams, so the graceful shutdown does not wait on clients.
            let _ = closing_tx.send(true);
        })
        .await;
    reaper.abort();
    // No insert is taken any more: the final checkpoints hold everything acknowledged.
    let saved = checkpointer::shutdown_all(&checkpoints).await;
    result?;
    saved
}

/// After a restart the registry's gauges start from what its file holds, not from 0, so that
/// "published minus evaluated" (the evaluator-lag alert) stays true across a coordinator restart.
fn restore_registry_gauges(registry: &Registry) {
    for kind in [Kind::Model, Kind::Policy] {
        if let Some(latest) = registry.latest(kind) {
            metrics::gauge!("dsm_coordinator_published_version", "kind" => kind.as_str()).set(latest.version as f64);
        }
    }
    let evaluated = registry
        .entries(Kind::Model, 0)
        .filter(|(_, e)| matches!(e, crate::registry::Evaluation::Done { .. }))
        .map(|(r, _)| r.version)
        .max();
    if let Some(v) = evaluated {
        metrics::gauge!("dsm_coordinator_evaluated_version").set(v as f64);
    }
}
