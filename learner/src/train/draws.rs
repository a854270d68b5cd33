//! Counter-based randomness for the learner: every draw of an iteration is a pure function of
//! (seed, iteration, phase, purpose, batch row), never of the order in which threads, replicas or
//! devices happen to ask for it.
//!
//! A draw's stream is named by that tuple through `common::rng::derive_seed` (SplitMix64 folded over
//! the path, the same derivation as every other stream of the system) and read sequentially
//! within the row: atom by atom, sample by sample, dimension by dimension. So:
//! - the burn engine and the fused engine see bit-identical latents, horizons and windows, which is
//!   what makes the engines comparable in tests;
//! - splitting the batch rows across threads (or, later, replicas and GPUs) does not change a draw;
//! - a run resumed at step k draws for iteration k+1 exactly what the unstopped run would have.
//!
//! The windows of a replay-fed learner are outside this: the replay store samples them remotely,
//! and which windows arrive depends on what the actors have inserted by then.

use std::ops::Range;

use rand::Rng;
use rand_distr::StandardNormal;

use common::rng::{self, StreamRng};

use crate::loss::target::HorizonSampler;
use crate::train::dataset::{WindowBatch, WindowSource, STEP_LAST};
use crate::train::trainer::TrainError;

/// The two steps of an iteration; each draws its own batch (dsm-algorithm.md §1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Discriminator,
    Generator,
}

impl Phase {
    fn label(self) -> &'static str {
        match self {
            Phase::Discriminator => "d",
            Phase::Generator => "g",
        }
    }
}

/// What a stream is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// The latents z of the online generator's samples X (the loss's left-hand side).
    Online,
    /// The latents of the target generator's bootstrap samples at s_H.
    Bootstrap,
    /// The geometric horizon indices of the Bellman target.
    Horizon,
}

impl Purpose {
    fn label(self) -> &'static str {
        match self {
            Purpose::Online => "online",
            Purpose::Bootstrap => "bootstrap",
            Purpose::Horizon => "horizon",
        }
    }
}

/// The counter-based generator of one run, keyed by the experiment seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Draws {
    key: u64,
}

impl Draws {
    pub fn new(experiment_seed: u64) -> Draws {
        Draws { key: rng::derive_seed(experiment_seed, &["learner".into(), "draws".into()]) }
    }

    /// The stream an offline dataset draws the windows of one step from (B starts, in row order).
    pub fn windows(&self, iteration: u64, phase: Phase) -> StreamRng {
        rng::stream(self.key, &[iteration.into(), phase.label().into(), "windows".into()])
    }

    /// The `batch` windows of `horizon + 1` steps of one step of `iteration`, from `data` with the
    /// step's own stream (what every engine draws before a step).
    #[allow(clippy::too_many_arguments)]
    pub fn fill_windows<S: WindowSource>(
        &self,
        data: &mut S,
        iteration: u64,
        phase: Phase,
        batch: usize,
        horizon: usize,
        out: &mut WindowBatch,
    ) -> Result<(), TrainError> {
        let mut window_rng = self.windows(iteration, phase);
        data.next_batch(&mut window_rng, batch, horizon, out).map_err(|source| TrainError::Data { iteration, source })
    }

    fn row(&self, iteration: u64, phase: Phase, purpose: Purpose, row: usize) -> StreamRng {
        rng::stream(self.key, &[iteration.into(), phase.label().into(), purpose.label().into(), row.into()])
    }

    /// Standard-normal latents for batch rows `rows`, laid out `[rows, O, I, Z]` in `out`
    /// (`out.len() == rows.len()·O·I·Z`). Row b's values depend only on (iteration, phase,
    /// purpose, b).
    pub fn latents(
        &self,
        iteration: u64,
        phase: Phase,
        purpose: Purpose,
        rows: Range<usize>,
        per_row: usize,
        out: &mut [f32],
    ) {
        assert_eq!(out.len(), rows.len() * per_row, "latent buffer of the wrong size");
        for (b, chunk) in rows.zip(out.chunks_exact_mut(per_row.max(1))) {
            let mut r = self.row(iteration, phase, purpose, b);
            for v in chunk {
                *v = r.sample::<f64, _>(StandardNormal) as f32;
            }
        }
    }

    /// Horizon indices j ∈ 0..=H for batch rows `rows`, `O·I` per row, laid out `[rows, O, I]`;
    /// `step_types` holds those rows' windows `[rows, H+1]`.
    #[allow(clippy::too_many_arguments)]
    pub fn horizons(
        &self,
        iteration: u64,
        phase: Phase,
        sampler: &HorizonSampler,
        rows: Range<usize>,
        step_types: &[u8],
        per_row: usize,
        out: &mut [u32],
    ) {
        let h1 = sampler.horizon() + 1;
        assert_eq!(step_types.len(), rows.len() * h1, "step types of the wrong size");
        assert_eq!(out.len(), rows.len() * per_row, "horizon buffer of the wrong size");
        for ((b, window), chunk) in rows.zip(step_types.chunks_exact(h1)).zip(out.chunks_exact_mut(per_row.max(1))) {
            let mut r = self.row(iteration, phase, Purpose::Horizon, b);
            let first_last = window.iter().position(|&t| t == STEP_LAST);
            for v in chunk {
                *v = sampler.draw(&mut r, first_last) as u32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A row's draws do not depend on which other rows are drawn with it (the thread split).
    #[test]
    fn rows_are_independent_of_the_split() {
        let d = Draws::new(7);
        let per_row = 3 * 4 * 5;
        let mut all = vec![0.0; 6 * per_row];
        d.latents(11, Phase::Generator, Purpose::Online, 0..6, per_row, &mut all);
        let mut tail = vec![0.0; 2 * per_row];
        d.latents(11, Phase::Generator, Purpose::Online, 4..6, per_row, &mut tail);
        assert_eq!(&all[4 * per_row..], &tail[..]);
        // Another iteration, phase or purpose gives other numbers.
        let mut other = vec![0.0; 6 * per_row];
        d.latents(12, Phase::Generator, Purpose::Online, 0..6, per_row, &mut other);
        assert_ne!(all, other);
        d.latents(11, Phase::Discriminator, Purpose::Online, 0..6, per_row, &mut other);
        assert_ne!(all, other);
        d.latents(11, Phase::Generator, Purpose::Bootstrap, 0..6, per_row, &mut other);
        assert_ne!(all, other);
    }

    /// The latents are standard normal: mean and variance within 5 standard errors over 60,000 draws.
    #[test]
    fn latents_are_standard_normal() {
        let d = Draws::new(1);
        let n = 1000 * 60;
        let mut z = vec![0.0f32; n];
        d.latents(1, Phase::Discriminator, Purpose::Online, 0..1000, 60, &mut z);
        let mean = z.iter().map(|&v| f64::from(v)).sum::<f64>() / n as f64;
        let var = z.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / n as f64;
        let se = (1.0 / n as f64).sqrt();
        assert!(mean.abs() < 5.0 * se, "mean {mean}");
        assert!((var - 1.0).abs() < 5.0 * (2.0 / n as f64).sqrt(), "variance {var}");
    }

    /// Horizons honour the first LAST of each row's window.
    #[test]
    fn horizons_stop_at_the_first_last() {
        let d = Draws::new(3);
        let sampler = HorizonSampler::new(0.95, 6, true);
        let mut types = vec![1u8; 2 * 7];
        types[7 + 2] = STEP_LAST; // row 1: LAST at t = 2
        let mut out = vec![0u32; 2 * 500];
        d.horizons(5, Phase::Generator, &sampler, 0..2, &types, 500, &mut out);
        assert!(out[..500].iter().all(|&j| j <= 6));
        assert!(out[..500].contains(&6), "the bootstrap slot is drawn with probability 0.735");
        assert!(out[500..].iter().all(|&j| j <= 2));
    }
}
