//! Every experiment file in `configs/` loads, names a known env, and resolves. The RatInABox and
//! Pendulum files spell out the defaults of their env id, so a change of default that is not
//! mirrored in the file (or the other way round) fails here.

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
        assert_eq!(path.file_stem().unwrap().to_str().unwrap(), id.as_str(), "file named after its env");
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
