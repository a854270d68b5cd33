//! The typed `[eval]` section: how much to sample and simulate per report.
//!
//! Defaults are the reference's (`dsm-algorithm.md` §4): 1,024 samples per atom, 5,000
//! Monte-Carlo rollouts per source state, and a fixed seed (the reference evaluates with
//! `PRNGKey(0)`), so two reports of one checkpoint are identical. The RatInABox analyses'
//! defaults are the thesis's where it has one (a 5 cm grid of source positions, §8.4) and the
//! field's conventions otherwise (`ratinabox-spec.md` §5: fields at 0.2·peak, shifts of more
//! than 20 s).

use serde::{Deserialize, Serialize};

use common::config::{merge, to_table, typed, ConfigDoc, ConfigError};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// Generated states per atom and source state.
    pub samples_per_atom: usize,
    /// Monte-Carlo rollouts per source state.
    pub mc_rollouts: usize,
    /// Seed of the latents and of the Monte-Carlo rollouts.
    pub seed: u64,
    /// Threads for the Monte-Carlo rollouts (one source each); 0 = every core.
    pub threads: usize,
    /// Dataset points drawn in grey behind the samples (a uniform subsample).
    pub background_points: usize,
    /// RatInABox: the bin size (m) of the grid of source positions, rate maps and histograms.
    pub grid_dx: f64,
    /// RatInABox: the decoder's grid (m): true population vectors every `decoder_dx`.
    pub decoder_dx: f64,
    /// RatInABox: samples per atom and source position for the predicted rate maps.
    pub map_samples_per_atom: usize,
    /// RatInABox: the source positions (m) of the predicted-occupancy maps; each must lie in the
    /// arena. Their samples per atom are `samples_per_atom`, their rollouts `mc_rollouts`.
    pub occupancy_sources: Vec<[f64; 2]>,
    /// RatInABox: simulated trajectories per source position for the true spread of the future.
    pub spread_rollouts: usize,
    /// RatInABox: length (s) of the simulated trajectory that gives the occupancy of the Skaggs
    /// information and its shift test (the thesis's 20 minutes).
    pub si_trajectory_seconds: f64,
    /// RatInABox: circular shifts of the shift test.
    pub si_shuffles: usize,
    /// RatInABox: the shortest shift (s).
    pub si_min_shift_seconds: f64,
    /// RatInABox: a place field is a connected set of bins at or above this fraction of the peak…
    pub field_threshold: f64,
    /// …of at least this area (m²).
    pub field_min_area: f64,
    /// RatInABox: cells drawn in the rate-map figure (evenly spaced over the population).
    pub cells_shown: usize,
    /// RatInABox remapping: the std of the Gaussian noise added to every input rate, per level.
    pub remap_noise_std: Vec<f64>,
    /// RatInABox remapping: the fraction of cells moved to new random centres, per level.
    pub remap_shift_fraction: Vec<f64>,
    /// RatInABox remapping: the bin size (m) of its grid of source positions.
    pub remap_grid_dx: f64,
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            samples_per_atom: 1024,
            mc_rollouts: 5000,
            seed: 0,
            threads: 0,
            background_points: 5000,
            grid_dx: 0.05,
            decoder_dx: 0.01,
            map_samples_per_atom: 32,
            occupancy_sources: vec![[0.35, 0.5], [0.5, 0.5], [0.15, 0.15]],
            spread_rollouts: 32,
            si_trajectory_seconds: 1200.0,
            si_shuffles: 100,
            si_min_shift_seconds: 20.0,
            field_threshold: 0.2,
            field_min_area: 0.01,
            cells_shown: 6,
            remap_noise_std: vec![0.0, 0.05, 0.1, 0.2, 0.3, 0.5],
            remap_shift_fraction: vec![0.0, 0.1, 0.25, 0.5, 0.75, 1.0],
            remap_grid_dx: 0.1,
        }
    }
}

impl EvalConfig {
    /// The `[eval]` section of `doc` over the defaults.
    pub fn resolve(doc: &ConfigDoc) -> Result<EvalConfig, ConfigError> {
        let mut table = to_table(&EvalConfig::default());
        merge(&mut table, &doc.section("eval"));
        let config: EvalConfig = typed("eval", table)?;
        let invalid = |message: String| ConfigError::Invalid { section: "eval".into(), message };
        for (key, v) in [
            ("samples_per_atom", config.samples_per_atom),
            ("mc_rollouts", config.mc_rollouts),
            ("map_samples_per_atom", config.map_samples_per_atom),
            ("spread_rollouts", config.spread_rollouts),
            ("si_shuffles", config.si_shuffles),
        ] {
            if v == 0 {
                return Err(invalid(format!("eval.{key} must be at least 1")));
            }
        }
        for (key, v) in [
            ("grid_dx", config.grid_dx),
            ("decoder_dx", config.decoder_dx),
            ("remap_grid_dx", config.remap_grid_dx),
            ("si_trajectory_seconds", config.si_trajectory_seconds),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(invalid(format!("eval.{key} must be positive, not {v}")));
            }
        }
        if !(config.si_min_shift_seconds >= 0.0 && 2.0 * config.si_min_shift_seconds < config.si_trajectory_seconds) {
            return Err(invalid(format!(
                "eval.si_min_shift_seconds ({}) must be at least 0 and below half of eval.si_trajectory_seconds ({})",
                config.si_min_shift_seconds, config.si_trajectory_seconds
            )));
        }
        let threshold_ok = config.field_threshold > 0.0 && config.field_threshold < 1.0;
        if !threshold_ok || config.field_min_area.is_nan() || config.field_min_area < 0.0 {
            return Err(invalid(
                "eval.field_threshold must lie in (0, 1) and eval.field_min_area be at least 0".into(),
            ));
        }
        if config.remap_noise_std.iter().any(|v| !(v.is_finite() && *v >= 0.0)) {
            return Err(invalid(format!(
                "eval.remap_noise_std: every level must be ≥ 0, not {:?}",
                config.remap_noise_std
            )));
        }
        if config.remap_shift_fraction.iter().any(|v| !(0.0..=1.0).contains(v)) {
            return Err(invalid(format!(
                "eval.remap_shift_fraction: every level must lie in [0, 1], not {:?}",
                config.remap_shift_fraction
            )));
        }
        if config.occupancy_sources.iter().flatten().any(|v| !v.is_finite()) {
            return Err(invalid("eval.occupancy_sources: every position must be finite".into()));
        }
        Ok(config)
    }

    /// The number of threads to use.
    pub fn threads(&self) -> usize {
        if self.threads > 0 {
            self.threads
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_overrides_and_errors() {
        assert_eq!(EvalConfig::resolve(&ConfigDoc::empty()).unwrap(), EvalConfig::default());
        let mut doc = ConfigDoc::empty();
        doc.apply_set("eval.mc_rollouts=100").unwrap();
        assert_eq!(EvalConfig::resolve(&doc).unwrap().mc_rollouts, 100);
        doc.apply_set("eval.samples_per_atom=0").unwrap();
        assert!(EvalConfig::resolve(&doc).unwrap_err().to_string().contains("eval.samples_per_atom"));
        let mut doc = ConfigDoc::empty();
        doc.apply_set("eval.nope=1").unwrap();
        assert!(EvalConfig::resolve(&doc).unwrap_err().to_string().contains("nope"));
    }
}
