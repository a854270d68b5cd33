//! Exact data-parallel replicas of the fused engine: R copies of the model, each computing the
//! gradients of its share of the batch rows on its own threads, summing them through a
//! [`Collective`](super::collective::Collective), and applying the identical optimiser step.
//!
//! The split is exact for these losses: every term is a per-row quantity (the median bandwidths
//! are per row), the counter-based draws make a row's latents and horizons independent of which
//! replica computes it, and the sums keep the one-replica order (see
//! [`replica_blocks`](super::engine::replica_blocks)). So R replicas train the same model as one,
//! bit for bit when R is a power of two, and every replica holds the same parameters, Adam
//! moments and spectral-norm vectors after every step.
//!
//! On the CPU a replica is a thread group of this process and the collective is a
//! [`ThreadCollective`]. The group draws each step's windows once and lends them to every replica;
//! a GPU replica would copy its rows to its device instead. Replica 0 is the one the run reads:
//! its state is what checkpoints hold. The SR variant's separate discriminators (one per batch
//! slot and atom) are sharded with their rows: a replica trains only its own and needs no sum
//! for them; [`Replicas::gather_members`] brings them together before a checkpoint.
//!
//! Errors (a non-finite loss, a failed draw) reach every replica alike, since they follow from
//! the summed values; a panic in one replica (a bug) would leave the others waiting in the
//! collective.

use std::sync::{Mutex, MutexGuard};

use anyhow::{bail, Result};

use common::config::ConfigDoc;

use super::collective::ThreadCollective;
use super::engine::{FusedEngine, HostCollective};
use super::pool::Pool;
use crate::config::LearnerConfig;
use crate::train::dataset::{WindowBatch, WindowSource};
use crate::train::draws::Phase;
use crate::train::trainer::{IterationLosses, TrainError};

/// R replicas of the fused engine in this process.
pub struct Replicas {
    engines: Vec<Mutex<FusedEngine>>,
    /// One thread per replica; each drives its replica's own pool.
    pool: Pool,
    batch: WindowBatch,
    config: LearnerConfig,
    threads_each: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs one step on every replica, replica r on thread r of `pool`. Every replica sums the same
/// values through its collective, so replica 0's result (or error) stands for all. Shared by the
/// CPU replicas and the device ones (`cuda::replicas`).
pub(crate) fn on_every_replica<E: Send>(
    pool: &Pool,
    engines: &[Mutex<E>],
    step: &(dyn Fn(&mut E) -> Result<f64, TrainError> + Sync),
) -> Result<f64, TrainError> {
    let results: Vec<Mutex<Option<Result<f64, TrainError>>>> = engines.iter().map(|_| Mutex::new(None)).collect();
    pool.run(&|r| {
        let out = step(&mut lock(&engines[r]));
        *lock(&results[r]) = Some(out);
    });
    let mut results = results.into_iter().map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner()));
    results.next().flatten().expect("replica 0 ran")
}

impl Replicas {
    /// `replicas` replicas of a fresh model, with `threads` threads in all (0: every core), split
    /// evenly (at least one each).
    pub fn new(config: LearnerConfig, doc: ConfigDoc, state_dim: usize, replicas: usize) -> Result<Replicas> {
        if replicas == 0 {
            bail!("--replicas must be at least 1");
        }
        let threads = match config.train.threads {
            0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            t => t,
        };
        let threads_each = (threads / replicas).max(1);
        let collectives: Vec<Option<HostCollective>> = if replicas == 1 {
            vec![None]
        } else {
            ThreadCollective::group(replicas).into_iter().map(|c| Some(Box::new(c) as HostCollective)).collect()
        };
        let engines = collectives
            .into_iter()
            .map(|c| FusedEngine::replica(config.clone(), doc.clone(), state_dim, threads_each, c).map(Mutex::new))
            .collect::<Result<Vec<_>>>()?;
        Ok(Replicas { engines, pool: Pool::new(replicas), batch: WindowBatch::default(), config, threads_each })
    }

    pub fn replicas(&self) -> usize {
        self.engines.len()
    }

    /// Threads in all (replicas × threads per replica).
    pub fn threads(&self) -> usize {
        self.engines.iter().map(|e| lock(e).threads()).sum()
    }

    /// Threads each replica was given.
    pub fn threads_each(&self) -> usize {
        self.threads_each
    }

    pub fn config(&self) -> &LearnerConfig {
        &self.config
    }

    /// Replica `r` (0: the one checkpoints are written from).
    pub fn replica(&self, r: usize) -> MutexGuard<'_, FusedEngine> {
        lock(&self.engines[r])
    }

    /// Iterations completed.
    pub fn step(&self) -> u64 {
        self.replica(0).step
    }

    /// One iteration on every replica: the same windows, each replica's share of the rows, the
    /// gradients summed, the same update everywhere.
    pub fn iteration(&mut self, mut data: impl WindowSource) -> Result<IterationLosses, TrainError> {
        if self.engines.len() == 1 {
            return self.engines[0].get_mut().unwrap_or_else(|e| e.into_inner()).iteration(data);
        }
        let has_d = self.replica(0).has_discriminator_step();
        let d = if has_d { self.phase(&mut data, Phase::Discriminator)? } else { f64::NAN };
        let g = self.phase(&mut data, Phase::Generator)?;
        for e in &mut self.engines {
            e.get_mut().unwrap_or_else(|e| e.into_inner()).finish_iteration();
        }
        Ok(IterationLosses { discriminator: d, generator: g })
    }

    fn phase<S: WindowSource>(&mut self, data: &mut S, phase: Phase) -> Result<f64, TrainError> {
        let mut batch = std::mem::take(&mut self.batch);
        let drawn = self.replica(0).draw(data, phase, &mut batch);
        let result = drawn.and_then(|()| on_every_replica(&self.pool, &self.engines, &|e| e.phase(&batch, phase)));
        self.batch = batch;
        result
    }

    /// Copies every replica's own separate discriminators (parameters, u, Adam moments) to the
    /// others, so that each replica, replica 0 included, holds the whole model: before a
    /// checkpoint is written. Training does not need it (a replica only reads its own members).
    pub fn gather_members(&self) {
        if self.engines.len() == 1 {
            return;
        }
        for r in 0..self.engines.len() {
            let (own, members, m1, m2) = {
                let e = self.replica(r);
                let own = e.own_members();
                (
                    own.clone(),
                    e.members[own.clone()].to_vec(),
                    e.adam_members.m1[own.clone()].to_vec(),
                    e.adam_members.m2[own].to_vec(),
                )
            };
            for other in (0..self.engines.len()).filter(|&o| o != r) {
                let mut e = self.replica(other);
                e.members[own.clone()].clone_from_slice(&members);
                e.adam_members.m1[own.clone()].clone_from_slice(&m1);
                e.adam_members.m2[own.clone()].clone_from_slice(&m2);
            }
        }
    }

    /// Loads a state into replica 0 with `load` (a checkpoint reader), then copies it to the
    /// others, so that every replica starts equal.
    pub fn load_with(&mut self, load: impl FnOnce(&mut FusedEngine) -> Result<()>) -> Result<()> {
        let (first, rest) = self.engines.split_first_mut().expect("at least one replica");
        let first = first.get_mut().unwrap_or_else(|e| e.into_inner());
        load(first)?;
        for other in rest {
            other.get_mut().unwrap_or_else(|e| e.into_inner()).copy_state_from(first);
        }
        Ok(())
    }
}
