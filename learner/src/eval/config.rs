//! The typed `[eval]` section: how much to sample and simulate per report.
//!
//! Defaults are the reference's (`dsm-algorithm.md` §4): 1,024 samples per atom, 5,000
//! Monte-Carlo rollouts per source state, and a fixed seed (the reference evaluates with
//! `PRNGKey(0)`), so two reports of one checkpoint are identical.

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
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig { samples_per_atom: 1024, mc_rollouts: 5000, seed: 0, threads: 0, background_points: 5000 }
    }
}

impl EvalConfig {
    /// The `[eval]` section of `doc` over the defaults.
    pub fn resolve(doc: &ConfigDoc) -> Result<EvalConfig, ConfigError> {
        let mut table = to_table(&EvalConfig::default());
        merge(&mut table, &doc.section("eval"));
        let config: EvalConfig = typed("eval", table)?;
        for (key, v) in [("samples_per_atom", config.samples_per_atom), ("mc_rollouts", config.mc_rollouts)] {
            if v == 0 {
                return Err(ConfigError::Invalid {
                    section: "eval".into(),
                    message: format!("eval.{key} must be at least 1"),
                });
            }
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
