//! Assembles a coordinator process: the control plane plus K in-process replay shards on one
//! port, with `grpc.health.v1`. The caller binds the listener (tests pass port 0) and owns the
//! shutdown signal.

use std::future::Future;
use std::sync::Arc;

use proto::pb::coordinator_server::CoordinatorServer;
use proto::pb::replay_server::ReplayServer;
use tokio::net::TcpListener;

use crate::experiment::Experiment;
use crate::service::coordinator::{CoordinatorService, CoordinatorState, ShardMap};
use crate::service::replay::ReplayService;
use crate::shard::Shard;

/// gRPC message limit, both directions. Chunks are a few hundred KiB; a 4096-window sample of
/// 50-float observations is about 6 MiB. Set explicitly, never near what we send.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// The shards a coordinator hosts, built from the experiment's `[replay]`.
pub fn build_shards(experiment: &Experiment) -> anyhow::Result<Vec<Arc<Shard>>> {
    let r = experiment.replay();
    (0..r.shards)
        .map(|id| {
            let limiter = r.limiter().map_err(anyhow::Error::msg)?;
            Ok(Arc::new(Shard::new(id, r.max_size, r.window_steps as usize, limiter, experiment.seed())))
        })
        .collect()
}

/// Serves until `shutdown` resolves. `advertise` is the address the shard map hands out.
pub async fn serve_coordinator(
    listener: TcpListener,
    advertise: String,
    experiment: Experiment,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let shards = build_shards(&experiment)?;
    let map = ShardMap { version: 1, addresses: vec![advertise; shards.len()] };
    let state = CoordinatorState::new(experiment, map);
    let reaper = tokio::spawn(state.clone().run_reaper());
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<CoordinatorServer<CoordinatorService>>().await;
    health.set_serving::<ReplayServer<ReplayService>>().await;
    let (closing_tx, closing) = tokio::sync::watch::channel(false);
    let coordinator = CoordinatorServer::new(CoordinatorService::new(state, closing.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let replay = ReplayServer::new(ReplayService::new(shards, closing))
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
    result.map_err(Into::into)
}
