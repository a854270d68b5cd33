//! Data-parallel replicas of the device engine: one per GPU, each on its own thread with its own
//! stream, computing its share of the batch rows, the gradients (and the loss) summed through a
//! [`DeviceCollective`] before the identical optimiser step on every replica; as
//! `fused::replicas` does for thread groups on the CPU.
//!
//! The group draws each step's windows once and lends them to every replica; each uploads its own
//! rows and draws its own rows' latents and horizons (counter-based, so a row's draws do not
//! depend on the replica). Replica 0's state is what checkpoints hold.

use std::sync::{Mutex, MutexGuard};

use anyhow::{bail, Result};

use super::backend::{Backend, DeviceCollective};
use super::engine::DeviceEngine;
use crate::config::LearnerConfig;
use crate::fused::engine::FusedEngine;
use crate::fused::pool::Pool;
use crate::fused::replicas::on_every_replica;
use crate::train::dataset::{WindowBatch, WindowSource};
use crate::train::draws::Phase;
use crate::train::trainer::{IterationLosses, TrainError};

/// The rows replica `rank` of `size` computes out of a batch of `batch`: contiguous and as even
/// as the batch allows.
pub fn replica_rows(batch: usize, rank: usize, size: usize) -> std::ops::Range<usize> {
    (rank * batch / size)..((rank + 1) * batch / size)
}

pub struct DeviceReplicas<B: Backend + Send> {
    engines: Vec<Mutex<DeviceEngine<B>>>,
    pool: Pool,
    batch: WindowBatch,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<B: Backend + Send> DeviceReplicas<B> {
    /// One replica per backend, all starting from `fused`'s state; `collectives` holds one member
    /// per backend (none for a single replica).
    pub fn new(fused: &FusedEngine, backends: Vec<B>, collectives: Vec<DeviceCollective>) -> Result<DeviceReplicas<B>> {
        let size = backends.len();
        let b = fused.config.train.batch_size;
        if size == 0 {
            bail!("no device for the replicas");
        }
        if size > b {
            bail!("{size} replicas for a batch of {b} rows: every replica needs a row");
        }
        if size > 1 && collectives.len() != size {
            bail!("{size} replicas need {size} members of a collective, got {}", collectives.len());
        }
        let mut collectives = collectives.into_iter().map(Some).collect::<Vec<_>>();
        collectives.resize_with(size, || None);
        let engines = backends
            .into_iter()
            .zip(collectives)
            .enumerate()
            .map(|(r, (dev, c))| {
                let c = if size == 1 { None } else { c };
                DeviceEngine::replica(fused, dev, replica_rows(b, r, size), c).map(Mutex::new)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(DeviceReplicas { engines, pool: Pool::new(size), batch: WindowBatch::default() })
    }

    pub fn replicas(&self) -> usize {
        self.engines.len()
    }

    /// Replica `r` (0: the one checkpoints are written from).
    pub fn replica(&self, r: usize) -> MutexGuard<'_, DeviceEngine<B>> {
        lock(&self.engines[r])
    }

    pub fn step(&self) -> u64 {
        self.replica(0).step
    }

    pub fn config(&self) -> LearnerConfig {
        self.replica(0).config.clone()
    }

    /// One iteration on every replica: the same windows, each replica's rows, the gradients
    /// summed, the same update everywhere.
    pub fn iteration(&mut self, mut data: impl WindowSource) -> Result<IterationLosses, TrainError> {
        if self.engines.len() == 1 {
            return self.engines[0].get_mut().unwrap_or_else(|e| e.into_inner()).iteration(data);
        }
        let d = self.phase(&mut data, Phase::Discriminator)?;
        let g = self.phase(&mut data, Phase::Generator)?;
        for e in &mut self.engines {
            e.get_mut().unwrap_or_else(|e| e.into_inner()).finish_iteration()?;
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

    /// Downloads replica 0's state into `fused` (for a checkpoint).
    pub fn store_into(&self, fused: &mut FusedEngine) -> Result<()> {
        self.replica(0).store_into(fused)
    }

    /// Uploads `fused`'s state into every replica.
    pub fn load_from(&self, fused: &FusedEngine) -> Result<()> {
        for e in &self.engines {
            lock(e).load_from(fused)?;
        }
        Ok(())
    }
}
