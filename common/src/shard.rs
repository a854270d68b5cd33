//! A stream's identity, which shard it goes to, and where each shard is served.
//!
//! Conventions: shard = FNV-1a-64 of the stream id's little-endian bytes mod K, where the stream
//! id is (actor_id u64, incarnation u64, env_index u32) and K is the number of shard slots,
//! fixed per experiment. Every actor and every shard computes the same answer with no lookup.

use crate::rng::fnv1a64;

/// The shard slot of stream (actor_id, incarnation, env_index) among `num_shards`.
pub fn shard_of(actor_id: u64, incarnation: u64, env_index: u32, num_shards: u32) -> u32 {
    assert!(num_shards > 0, "at least one shard");
    let mut bytes = [0u8; 20];
    bytes[..8].copy_from_slice(&actor_id.to_le_bytes());
    bytes[8..16].copy_from_slice(&incarnation.to_le_bytes());
    bytes[16..].copy_from_slice(&env_index.to_le_bytes());
    (fnv1a64(&bytes) % u64::from(num_shards)) as u32
}

/// The identity of one stream, as in ARCHITECTURE.md's "Streams" convention: what the shards
/// key their storage by and what a sampled window names as its origin.
///
/// The incarnation is a random u64 drawn per actor process ([`crate::incarnation`]), so a
/// restarted actor opens new streams instead of continuing (and corrupting the step order of) its
/// previous incarnation's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamKey {
    /// The actor that produces the stream.
    pub actor_id: u64,
    /// The actor process's random incarnation number.
    pub incarnation: u64,
    /// Which of the actor's E lock-stepped environments.
    pub env_index: u32,
}

impl StreamKey {
    /// The shard slot this stream goes to, of `num_shards` ([`shard_of`]).
    pub fn shard(&self, num_shards: u32) -> u32 {
        shard_of(self.actor_id, self.incarnation, self.env_index, num_shards)
    }
}

impl std::fmt::Display for StreamKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "stream (actor {}, incarnation {:#x}, env {})", self.actor_id, self.incarnation, self.env_index)
    }
}

/// Where each of the K shard slots is served, as the coordinator's shard map said when it was
/// fetched: the clients' view (the coordinator's own map, with its node ids and hosted slots, is
/// `coordinator::shard_map`). Slots never change in number, only in address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardAddresses {
    /// Increases whenever a slot changes (a restarted coordinator starts again from 1, so a
    /// client takes a fetched map whatever its version).
    pub version: u64,
    /// Index = shard id: `HOST:PORT` serving the slot, `None` while no live node serves it.
    pub slots: Vec<Option<String>>,
}

impl ShardAddresses {
    /// K, the number of shard slots.
    pub fn num_slots(&self) -> u32 {
        self.slots.len() as u32
    }

    /// Where `shard` is served, if the map has that slot and someone serves it.
    pub fn address(&self, shard: u32) -> Option<&str> {
        self.slots.get(shard as usize).and_then(|a| a.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_is_fnv_of_the_little_endian_id() {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&3u64.to_le_bytes());
        bytes.extend_from_slice(&99u64.to_le_bytes());
        bytes.extend_from_slice(&5u32.to_le_bytes());
        assert_eq!(shard_of(3, 99, 5, 7), (fnv1a64(&bytes) % 7) as u32);
        assert_eq!(shard_of(3, 99, 5, 1), 0);
        assert_eq!(StreamKey { actor_id: 3, incarnation: 99, env_index: 5 }.shard(7), shard_of(3, 99, 5, 7));
    }

    #[test]
    fn streams_spread_over_shards() {
        let mut counts = [0usize; 4];
        for e in 0..4000 {
            counts[shard_of(1, 0xdead_beef, e, 4) as usize] += 1;
        }
        // 1000 expected per shard, sd ≈ 27: allow 5 sd.
        assert!(counts.iter().all(|&c| (c as i64 - 1000).abs() < 140), "{counts:?}");
    }
}
