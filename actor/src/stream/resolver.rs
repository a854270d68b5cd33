//! Where each shard slot is served, as the coordinator's shard map says, and one gRPC channel per
//! address.
//!
//! Slots are fixed per experiment (a stream always belongs to the same slot), but the node that
//! serves a slot may change: a standalone `replay` node dies and comes back elsewhere, or the
//! coordinator that hosts the shards restarts. A writer whose stream breaks asks again
//! ([`ShardResolver::address`] with `refresh`); the answer is one attempt, never a wait, so that
//! the writer owns the backoff, the logging and the drain deadline of its whole reconnection.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use proto::pb::coordinator_client::CoordinatorClient;
use proto::pb::replay_client::ReplayClient;
use proto::pb::{self};
use tonic::transport::{Channel, Endpoint};

/// gRPC message limit on the actor's channels (chunks are a few hundred KiB).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Deadline of one `GetShardMap` call.
const MAP_DEADLINE: Duration = Duration::from_secs(5);

/// An endpoint with the actor's transport settings. HTTP/2 keepalive pings are what detect a
/// peer that vanished without closing its socket (a killed VM, a partition): the insert stream
/// is long-lived and has no deadline of its own, so without them a writer could wait forever for
/// acknowledgements that will never come.
pub fn endpoint(addr: &str) -> Result<Endpoint, String> {
    let uri = if addr.contains("://") { addr.to_string() } else { format!("http://{addr}") };
    Ok(Endpoint::from_shared(uri)
        .map_err(|e| format!("bad address {addr}: {e}"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_adaptive_window(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true))
}

/// The actor's view of the shard map, shared by its writers.
pub struct ShardResolver {
    coordinator: CoordinatorClient<Channel>,
    /// The newest map fetched. A restarted coordinator starts its versions again, so a fetched
    /// map always replaces this one, whatever its version.
    map: Mutex<pb::ShardMap>,
    /// One channel per address: in-process shards share the coordinator's port, and their writers
    /// share one HTTP/2 connection. A tonic channel reconnects by itself after its connection
    /// breaks, so an entry stays valid across a server restart at the same address.
    channels: Mutex<HashMap<String, Channel>>,
}

impl ShardResolver {
    /// `map` is the one fetched at start; the first connection of each writer uses it as is.
    pub fn new(coordinator: CoordinatorClient<Channel>, map: pb::ShardMap) -> ShardResolver {
        ShardResolver { coordinator, map: Mutex::new(map), channels: Mutex::new(HashMap::new()) }
    }

    /// The address serving `shard`, re-fetching the map first when `refresh` (after a failure).
    /// A coordinator that does not answer leaves the last map in use: standalone shards serve on
    /// while the control plane is down, and a wrong address just fails the next attempt. Errs,
    /// with a line for the log, when the slot has no address; the caller retries with backoff.
    pub async fn address(&self, shard: u32, refresh: bool) -> Result<String, String> {
        let mut unreachable = None;
        if refresh {
            let mut request = tonic::Request::new(pb::GetShardMapRequest {});
            request.set_timeout(MAP_DEADLINE);
            match self.coordinator.clone().get_shard_map(request).await {
                Ok(map) => *self.map.lock().unwrap_or_else(|e| e.into_inner()) = map.into_inner(),
                Err(s) => unreachable = Some(format!("fetching the shard map: {} ({:?})", s.message(), s.code())),
            }
        }
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let why = match map.slots.get(shard as usize) {
            Some(slot) if !slot.address.is_empty() => return Ok(slot.address.clone()),
            Some(_) => format!("shard map version {}: slot {shard} has no live server", map.version),
            None => format!("shard map version {} has {} slots, not slot {shard}", map.version, map.slots.len()),
        };
        Err(match unreachable {
            Some(u) => format!("{u}; {why}"),
            None => why,
        })
    }

    /// A client for the shard at `address`. The channel connects lazily: a server that is down
    /// shows up as an error of the first call on it.
    pub fn client(&self, address: &str) -> Result<ReplayClient<Channel>, String> {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        let channel = match channels.get(address) {
            Some(c) => c.clone(),
            None => {
                let c = endpoint(address)?.connect_lazy();
                channels.insert(address.to_string(), c.clone());
                c
            }
        };
        Ok(ReplayClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }
}
