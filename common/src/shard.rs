//! Which shard a stream goes to.
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
