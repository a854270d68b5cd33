//! Asking the roles how they are, over their own interfaces: `grpc.health.v1`, the replay shards'
//! `Stats`, the registry's `ListCheckpoints`, and `/metrics`. Every call has a short deadline:
//! a role that does not answer is "not up yet" (or dead, which the process status tells).

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use proto::pb;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::plan::Ready;

const DEADLINE: Duration = Duration::from_millis(800);

/// Blocking probes on a small runtime of their own (the supervisor's loop is synchronous).
///
/// The runtime has a worker thread, so connections keep being driven between probes (pings
/// answered, and closed when dropped), and one channel per address is kept: a server's graceful
/// shutdown waits for its open connections, and a pile of undriven ones would hold the
/// coordinator up for its whole drain bound. [`Prober::disconnect`] drops them all.
pub struct Prober {
    runtime: tokio::runtime::Runtime,
    channels: RefCell<HashMap<String, Channel>>,
}

impl Prober {
    pub fn new() -> std::io::Result<Prober> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("dsm-probe")
            .enable_all()
            .build()?;
        Ok(Prober { runtime, channels: RefCell::new(HashMap::new()) })
    }

    /// The channel to `addr` (connected on first use, reconnected after a failure).
    fn channel(&self, addr: &str) -> Option<Channel> {
        let mut channels = self.channels.borrow_mut();
        if let Some(c) = channels.get(addr) {
            return Some(c.clone());
        }
        let _inside = self.runtime.enter();
        let channel = client::connect::endpoint(addr).ok()?.connect_timeout(DEADLINE).connect_lazy();
        channels.insert(addr.to_string(), channel.clone());
        Some(channel)
    }

    /// Closes every connection (before the servers are stopped).
    pub fn disconnect(&self) {
        self.channels.borrow_mut().clear();
    }

    /// Whether the role is up: SERVING on health, or `/metrics` answering.
    pub fn ready(&self, ready: Ready) -> bool {
        match ready {
            Ready::Health(addr) => self.serving(addr),
            Ready::Metrics(addr) => crate::prom_text::fetch(addr, DEADLINE).is_some(),
        }
    }

    fn serving(&self, addr: SocketAddr) -> bool {
        self.health(&addr.to_string(), "", DEADLINE).is_ok()
    }

    /// Ok when `service` at `addr` (HOST:PORT) answers SERVING within `timeout`; otherwise what
    /// it answered, or why it did not.
    pub fn health(&self, addr: &str, service: &str, timeout: Duration) -> Result<(), String> {
        self.runtime.block_on(async {
            let call = async {
                let channel = self.channel(addr).ok_or_else(|| format!("{addr:?} is not a HOST:PORT"))?;
                let mut health = HealthClient::new(channel);
                let request = HealthCheckRequest { service: service.to_string() };
                let answer = health.check(request).await.map_err(|s| match s.code() {
                    tonic::Code::NotFound => format!("no service {service:?} there"),
                    tonic::Code::Unavailable => "not answering (connection refused or closed)".to_string(),
                    _ => format!("{}: {}", s.code(), s.message()),
                })?;
                match answer.into_inner().status() {
                    ServingStatus::Serving => Ok(()),
                    other => Err(other.as_str_name().to_string()),
                }
            };
            tokio::time::timeout(timeout, call).await.unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")))
        })
    }

    /// The steps the whole store holds now (after the shards restored their checkpoints): the
    /// shard map from the coordinator, then each slot's `Stats`. None if any slot does not answer.
    pub fn stored_steps(&self, coordinator: SocketAddr) -> Option<u64> {
        self.runtime.block_on(async {
            let call = async {
                let mut c = client::connect::coordinator_client(self.channel(&coordinator.to_string())?);
                let map =
                    c.get_shard_map(client::connect::with_deadline(pb::GetShardMapRequest {}, DEADLINE)).await.ok()?;
                let mut total = 0;
                for slot in map.into_inner().slots {
                    let mut replay = client::connect::replay_client(self.channel(&slot.address)?);
                    let request = pb::StatsRequest { shard_id: slot.shard_id };
                    let stats = replay.stats(client::connect::with_deadline(request, DEADLINE)).await.ok()?;
                    total += stats.into_inner().size_steps;
                }
                Some(total)
            };
            tokio::time::timeout(DEADLINE * 4, call).await.ok().flatten()
        })
    }

    /// Every model version in the registry, oldest first, with its evaluation; None when the
    /// coordinator does not answer.
    pub fn checkpoints(&self, coordinator: SocketAddr) -> Option<Vec<pb::CheckpointEntry>> {
        self.runtime.block_on(async {
            let call = async {
                let mut c = client::connect::coordinator_client(self.channel(&coordinator.to_string())?);
                let request = pb::ListCheckpointsRequest { kind: pb::CheckpointKind::Model as i32, from_version: 0 };
                let answer = c.list_checkpoints(client::connect::with_deadline(request, DEADLINE)).await.ok()?;
                Some(answer.into_inner().entries)
            };
            tokio::time::timeout(DEADLINE * 2, call).await.ok().flatten()
        })
    }
}
