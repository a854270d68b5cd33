//! Every experiment file in `configs/` loads, names a known env, and resolves. The RatInABox and
//! Pendulum files spell out the defaults of their env id, so a change of default that is not
//! mirrored in the file (or the other way round) fails here. A file is named after its env id,
//! or `<env-id>-<variant>.toml` for a model variant trained on the same env's data.

use std::path::PathBuf;

use actor::envs::{EnvConfig, EnvId};
use common::config::ConfigDoc;

fn configs_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../configs")
}

#[test]
fn every_config_resolves_to_its_env_defaults() {
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(configs_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let doc = ConfigDoc::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let experiment = doc.experiment().unwrap();
        let id: EnvId = experiment.env.as_deref().expect("experiment.env").parse().unwrap();
        // `<env-id>.toml`, or `<env-id>-<variant>.toml` for a model variant on the same env (the SR baseline
        // `riab-random-sr.toml`); either way [env] is the env's defaults, spelled out.
        let stem = path.file_stem().unwrap().to_str().unwrap();
        let variant = stem.strip_prefix(id.as_str()).and_then(|rest| rest.strip_prefix('-'));
        assert!(
            stem == id.as_str() || variant.is_some_and(|v| !v.is_empty()),
            "{}: named after its env {id} (or {id}-<variant>)",
            path.display()
        );
        let resolved = EnvConfig::resolve(id, &doc.section("env")).unwrap();
        assert_eq!(resolved, EnvConfig::defaults(id), "{} differs from the defaults", path.display());
        // Every key the file sets is spelled out, not inherited.
        let table = doc.section("env");
        assert_eq!(
            toml::Value::Table(table),
            toml::Value::Table(EnvConfig::defaults(id).to_table()),
            "{} should list every [env] value",
            path.display()
        );
        seen.push(id);
    }
    for id in EnvId::ALL {
        assert!(seen.contains(&id), "configs/{id}.toml is missing");
    }
}
