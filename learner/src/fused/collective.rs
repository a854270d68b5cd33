//! How replicas of the engine combine their gradients: the [`Collective`] trait, and
//! [`ThreadCollective`], its implementation for replicas that are thread groups of one process.
//!
//! The trait is over a buffer type that the replica's device owns, so that a GPU implementation
//! can reduce device memory (NCCL) without a copy through the host; on the CPU the buffer is a
//! `Vec<f32>`.
//!
//! The sum is taken in one fixed order, the pairwise tree over ranks (0 + 1, 2 + 3, then
//! (0 + 1) + (2 + 3), …), the same tree the engine uses over its blocks of rows. So every
//! replica ends with bit-identical values, and when each replica holds a whole subtree of blocks,
//! R replicas reproduce one replica's sum exactly.

use std::sync::{Arc, Mutex};

use anyhow::{bail, Result};

use super::pool::SpinBarrier;

/// A group of replicas that sum buffers element-wise.
pub trait Collective {
    /// A buffer on this replica's device.
    type Buffer;

    /// This replica's index, `0..size()`.
    fn rank(&self) -> usize;

    /// The number of replicas.
    fn size(&self) -> usize;

    /// Replaces `buf` on every replica by the element-wise sum of all replicas' `buf`. Every
    /// replica must call it, with buffers of one length; a length mismatch is an error on every
    /// replica (none is left waiting).
    fn all_reduce_sum(&self, buf: &mut Self::Buffer) -> Result<()>;
}

struct Shared {
    size: usize,
    slots: Vec<Mutex<Vec<f32>>>,
    /// Spins before it sleeps, as the engine's pool does: the replicas meet here twice a step.
    barrier: SpinBarrier,
}

/// Replicas as threads of one process, with host buffers.
pub struct ThreadCollective {
    rank: usize,
    shared: Arc<Shared>,
}

impl ThreadCollective {
    /// The `size` members of one group, to hand one to each replica's thread.
    pub fn group(size: usize) -> Vec<ThreadCollective> {
        assert!(size >= 1, "a collective needs at least one replica");
        let shared = Arc::new(Shared {
            size,
            slots: (0..size).map(|_| Mutex::new(Vec::new())).collect(),
            barrier: SpinBarrier::new(size),
        });
        (0..size).map(|rank| ThreadCollective { rank, shared: Arc::clone(&shared) }).collect()
    }
}

/// Sums `parts` into `out` by the pairwise tree over their indices (`out` is overwritten).
pub fn tree_sum_into(parts: &[&[f32]], out: &mut [f32]) {
    let n = parts.len();
    // Level by level, as `engine::tree_sum`: partial sums live in `sums[i]` for the leading index
    // i of each subtree.
    let mut sums: Vec<Vec<f32>> = parts.iter().map(|p| p.to_vec()).collect();
    let mut stride = 1;
    while stride < n {
        let mut i = 0;
        while i + stride < n {
            let (head, tail) = sums.split_at_mut(i + stride);
            for (a, b) in head[i].iter_mut().zip(&tail[0]) {
                *a += b;
            }
            i += 2 * stride;
        }
        stride *= 2;
    }
    out.copy_from_slice(&sums[0]);
}

impl Collective for ThreadCollective {
    type Buffer = Vec<f32>;

    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.shared.size
    }

    fn all_reduce_sum(&self, buf: &mut Vec<f32>) -> Result<()> {
        let shared = &self.shared;
        if shared.size == 1 {
            return Ok(());
        }
        let lock = |r: usize| shared.slots[r].lock().unwrap_or_else(|e| e.into_inner());
        // Deposit, wait for every deposit, and sum all of them on every replica (each reads the
        // slots only), so that no replica depends on another's arithmetic.
        lock(self.rank).clone_from(buf);
        shared.barrier.wait();
        let slots: Vec<_> = (0..shared.size).map(lock).collect();
        let lengths: Vec<usize> = slots.iter().map(|s| s.len()).collect();
        let result = if lengths.iter().any(|&l| l != lengths[0]) {
            Err(lengths)
        } else {
            let parts: Vec<&[f32]> = slots.iter().map(|s| s.as_slice()).collect();
            tree_sum_into(&parts, buf);
            Ok(())
        };
        drop(slots);
        // Nobody deposits for the next call before everyone has read this one.
        shared.barrier.wait();
        match result {
            Ok(()) => Ok(()),
            Err(lengths) => bail!("all_reduce_sum: the replicas' buffers differ in length: {lengths:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(size: usize, make: impl Fn(usize) -> Vec<f32> + Sync) -> Vec<Result<Vec<f32>>> {
        let group = ThreadCollective::group(size);
        std::thread::scope(|s| {
            let handles: Vec<_> = group
                .into_iter()
                .map(|c| {
                    let make = &make;
                    s.spawn(move || {
                        let mut buf = make(c.rank());
                        c.all_reduce_sum(&mut buf).map(|()| buf)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    /// Every replica gets the tree sum, bit for bit, for group sizes that are and are not powers
    /// of two; the values are chosen so that float addition order shows (1e8 + 1 − 1e8).
    #[test]
    fn every_replica_gets_the_same_tree_sum() {
        for size in [1usize, 2, 3, 4, 5] {
            let make =
                |r: usize| -> Vec<f32> { (0..7).map(|k| [1e8, 1.0, -1e8, 0.5, 3.0][r % 5] * (k + 1) as f32).collect() };
            let parts: Vec<Vec<f32>> = (0..size).map(make).collect();
            let refs: Vec<&[f32]> = parts.iter().map(|p| p.as_slice()).collect();
            let mut want = vec![0.0; 7];
            tree_sum_into(&refs, &mut want);
            for (rank, got) in run(size, make).into_iter().enumerate() {
                assert_eq!(got.unwrap(), want, "size {size}, rank {rank}");
            }
        }
    }

    /// The tree's order: ((a + b) + (c + d)), not ((a + b) + c) + d.
    #[test]
    fn the_order_is_the_pairwise_tree() {
        let (a, b, c, d) = ([1e8f32], [1.0f32], [-1e8f32], [1.0f32]);
        let mut out = [0.0f32];
        tree_sum_into(&[&a, &b, &c, &d], &mut out);
        assert_eq!(out[0], (a[0] + b[0]) + (c[0] + d[0]));
        assert_ne!(out[0], ((a[0] + b[0]) + c[0]) + d[0], "the two orders must differ for this test to mean anything");
    }

    /// Buffers of different lengths: an error on every replica, and the group still works after.
    #[test]
    fn a_length_mismatch_fails_on_every_replica_without_hanging() {
        let group = ThreadCollective::group(3);
        std::thread::scope(|s| {
            for c in group {
                s.spawn(move || {
                    let mut bad = vec![1.0; if c.rank() == 1 { 4 } else { 3 }];
                    let err = c.all_reduce_sum(&mut bad).unwrap_err();
                    assert!(err.to_string().contains("differ in length"), "{err}");
                    let mut good = vec![c.rank() as f32; 2];
                    c.all_reduce_sum(&mut good).unwrap();
                    assert_eq!(good, [3.0, 3.0]);
                });
            }
        });
    }
}
