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

use client::connect;
use client::coordinator::CoordinatorHandle;
use common::shard::ShardAddresses;
use proto::pb::replay_client::ReplayClient;
use tonic::transport::Channel;

/// Deadline of one `GetShardMap` call.
const MAP_DEADLINE: Duration = Duration::from_secs(5);

/// The actor's view of the shard map, shared by its writers.
pub struct ShardResolver {
    coordinator: CoordinatorHandle,
    /// The newest map fetched. A restarted coordinator starts its versions again, so a fetched
    /// map always replaces this one, whatever its version.
    map: Mutex<ShardAddresses>,
    /// One channel per address: in-process shards share the coordinator's port, and their writers
    /// share one HTTP/2 connection. A tonic channel reconnects by itself after its connection
    /// breaks, so an entry stays valid across a server restart at the same address.
    channels: Mutex<HashMap<String, Channel>>,
}

impl ShardResolver {
    /// `map` is the one fetched at start; the first connection of each writer uses it as is.
    pub fn new(coordinator: CoordinatorHandle, map: ShardAddresses) -> ShardResolver {
        ShardResolver { coordinator, map: Mutex::new(map), channels: Mutex::new(HashMap::new()) }
    }

    /// The address serving `shard`, re-fetching the map first when `refresh` (after a failure).
    /// A coordinator that does not answer leaves the last map in use: standalone shards serve on
    /// while the control plane is down, and a wrong address just fails the next attempt. Errs,
    /// with a line for the log, when the slot has no address; the caller retries with backoff.
    pub async fn address(&self, shard: u32, refresh: bool) -> Result<String, String> {
        let mut unreachable = None;
        if refresh {
            match self.coordinator.shard_map(MAP_DEADLINE).await {
                Ok(map) => *self.map.lock().unwrap_or_else(|e| e.into_inner()) = map,
                Err(e) => unreachable = Some(e.to_string()),
            }
        }
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let why = match map.address(shard) {
            Some(address) => return Ok(address.to_string()),
            None if shard < map.num_slots() => {
                format!("shard map version {}: slot {shard} has no live server", map.version)
            }
            None => format!("shard map version {} has {} slots, not slot {shard}", map.version, map.num_slots()),
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
                let c = connect::connect_lazy(address).map_err(|e| e.to_string())?;
                channels.insert(address.to_string(), c.clone());
                c
            }
        };
        Ok(connect::replay_client(channel))
    }
}
