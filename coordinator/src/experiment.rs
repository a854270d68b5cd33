//! The one experiment a coordinator holds: env id, seed and the whole config every role reads.
//!
//! It comes from `--config` (plus `--set`), or, without an env there, from the first actor's
//! `--env` with that env's defaults. Once fixed it never changes: an actor whose env differs is
//! refused, naming both ids, so every actor of an experiment shares one state space.

use actor::envs::{EnvConfig, EnvId};
use common::config::{to_table, ConfigDoc, ConfigError};

use crate::replay_config::ReplayConfig;

#[derive(Debug, Clone)]
pub struct Experiment {
    doc: ConfigDoc,
    seed: u64,
    replay: ReplayConfig,
    /// Set once the env is known: the id and the full resolved config as TOML.
    fixed: Option<(EnvId, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExperimentError {
    #[error("env_id: this experiment runs {fixed}, not {requested}")]
    Mismatch { fixed: String, requested: String },
    #[error("env_id: {0}")]
    UnknownEnv(String),
    #[error("the experiment's [env] section does not fit {id}: {message}")]
    BadEnv { id: String, message: String },
}

impl Experiment {
    /// Validates the document: `[replay]` always; `[env]` too when the env id is known.
    pub fn new(doc: ConfigDoc) -> Result<Experiment, ConfigError> {
        let section = doc.experiment()?;
        let replay = ReplayConfig::resolve(&doc.section("replay"))?;
        let mut experiment = Experiment { doc, seed: section.seed, replay, fixed: None };
        if let Some(id) = section.env {
            let id: EnvId =
                id.parse().map_err(|message| ConfigError::Invalid { section: "experiment".into(), message })?;
            experiment.fix(id).map_err(|e| ConfigError::Invalid { section: "env".into(), message: e.to_string() })?;
        }
        Ok(experiment)
    }

    pub fn replay(&self) -> &ReplayConfig {
        &self.replay
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    pub fn env(&self) -> Option<EnvId> {
        self.fixed.as_ref().map(|(id, _)| *id)
    }

    /// The resolved config as TOML, once the env is known.
    pub fn config_toml(&self) -> Option<&str> {
        self.fixed.as_ref().map(|(_, t)| t.as_str())
    }

    /// Fixes the env (first actor) or checks that `requested` is the one fixed.
    pub fn admit(&mut self, requested: &str) -> Result<EnvId, ExperimentError> {
        let id: EnvId = requested.parse().map_err(ExperimentError::UnknownEnv)?;
        match self.env() {
            Some(fixed) if fixed == id => Ok(id),
            Some(fixed) => Err(ExperimentError::Mismatch { fixed: fixed.to_string(), requested: id.to_string() }),
            None => {
                self.fix(id)?;
                Ok(id)
            }
        }
    }

    fn fix(&mut self, id: EnvId) -> Result<(), ExperimentError> {
        let env = EnvConfig::resolve(id, &self.doc.section("env"))
            .map_err(|e| ExperimentError::BadEnv { id: id.to_string(), message: e.to_string() })?;
        let mut doc = self.doc.clone();
        let mut experiment = doc.section("experiment");
        experiment.insert("env".into(), toml::Value::String(id.to_string()));
        experiment.insert("seed".into(), toml::Value::Integer(self.seed as i64));
        doc.set_section("experiment", experiment);
        doc.set_section("env", env.to_table());
        doc.set_section("replay", to_table(&self.replay));
        self.fixed = Some((id, doc.to_toml()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_actor_fixes_the_env_and_others_must_match() {
        let mut e = Experiment::new(ConfigDoc::empty()).unwrap();
        assert!(e.env().is_none() && e.config_toml().is_none());
        assert_eq!(e.admit("riab-walls").unwrap(), EnvId::RiabWalls);
        assert_eq!(e.admit("riab-walls").unwrap(), EnvId::RiabWalls);
        let err = e.admit("pendulum").unwrap_err().to_string();
        assert!(err.contains("riab-walls") && err.contains("pendulum"), "{err}");
        assert!(e.admit("cartpole").unwrap_err().to_string().contains("cartpole"));
        let served = ConfigDoc::parse(e.config_toml().unwrap(), "served").unwrap();
        assert_eq!(served.experiment().unwrap().env.as_deref(), Some("riab-walls"));
        let env = EnvConfig::resolve(EnvId::RiabWalls, &served.section("env")).unwrap();
        assert_eq!(env, EnvConfig::defaults(EnvId::RiabWalls));
        assert_eq!(ReplayConfig::resolve(&served.section("replay")).unwrap(), ReplayConfig::default());
    }

    #[test]
    fn a_config_fixes_the_env_up_front_and_is_validated() {
        let doc = ConfigDoc::parse("[experiment]\nenv = \"pendulum\"\nseed = 5\n[replay]\nshards = 3\n", "t").unwrap();
        let e = Experiment::new(doc).unwrap();
        assert_eq!((e.env(), e.seed(), e.replay().shards), (Some(EnvId::Pendulum), 5, 3));
        let bad = ConfigDoc::parse("[experiment]\nenv = \"pendulum\"\n[env]\ndt = -1\n", "t").unwrap();
        assert!(Experiment::new(bad).unwrap_err().to_string().contains("env.dt"));
        let bad = ConfigDoc::parse("[replay]\nwindow_steps = 1\n", "t").unwrap();
        assert!(Experiment::new(bad).unwrap_err().to_string().contains("replay.window_steps"));
    }
}
