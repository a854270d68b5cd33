//! The experiment file's outer layer.
//!
//! One TOML schema serves every binary, with the sections `[experiment] [env] [replay] [model]
//! [train] [eval]`. This module owns what they share: loading a file, checking its sections,
//! applying `--set section.key=value` overrides and laying a file over per-id defaults. The typed
//! contents of each section belong to the crate that uses it (the actor owns `[env]`, the learner
//! `[model]` and `[train]`), so a binary validates the sections it reads and carries the rest along
//! untouched, and one file can drive every role of an experiment.
//!
//! The order of precedence is: defaults for the env id, then the file, then `--set` (last wins).

use std::path::Path;

use serde::{Deserialize, Serialize};
use toml::{Table, Value};

/// The sections the schema knows. Anything else at the top level is a typo, and refused.
pub const SECTIONS: [&str; 6] = ["experiment", "env", "replay", "model", "train", "eval"];

/// Why a configuration was refused. Every message names the file, flag or `section.key` at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    // `cause`, not `source`: the message already holds it, and a source would print it twice in
    // an error chain.
    #[error("cannot read config file {path}: {cause}")]
    Read { path: String, cause: std::io::Error },
    #[error("config file {path} is not valid TOML: {message}")]
    Parse { path: String, message: String },
    #[error("unknown config section [{0}] (known sections: experiment, env, replay, model, train, eval)")]
    UnknownSection(String),
    #[error("--set {0}: expected section.key=value")]
    SetSyntax(String),
    #[error("--set {key}: {message}")]
    SetPath { key: String, message: String },
    #[error("invalid [{section}] config: {message}")]
    Invalid { section: String, message: String },
}

/// The `[experiment]` section: what every role of one experiment must agree on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentSection {
    /// Env id (`riab-random`, …, `pendulum`). `None` until a file, a flag or the first actor sets it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    /// The experiment seed every RNG stream derives from (see [`crate::rng`]).
    #[serde(default)]
    pub seed: u64,
}

/// A parsed configuration document: sections as raw TOML tables, before typing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConfigDoc {
    root: Table,
}

impl ConfigDoc {
    /// An empty document: every section takes its defaults.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Parses TOML text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let root: Table = text.parse().map_err(|e: toml::de::Error| ConfigError::Parse {
            path: origin.to_string(),
            message: e.message().to_string(),
        })?;
        for (name, value) in &root {
            if !SECTIONS.contains(&name.as_str()) {
                return Err(ConfigError::UnknownSection(name.clone()));
            }
            if !value.is_table() {
                return Err(ConfigError::Invalid {
                    section: name.clone(),
                    message: format!("`{name}` must be a table ([{name}])"),
                });
            }
        }
        Ok(Self { root })
    }

    /// Reads and parses a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|cause| ConfigError::Read { path: path.display().to_string(), cause })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Applies one `--set section.key[.subkey…]=value` override.
    ///
    /// The value is read as a TOML value (`0.5`, `true`, `[1, 2]`, `"text"`); if it does not parse
    /// as one, it is taken as a bare string, so `--set experiment.env=riab-walls` works unquoted.
    /// Whether the key exists is checked later, when the section is typed, because only the owning
    /// crate knows its fields.
    pub fn apply_set(&mut self, assignment: &str) -> Result<(), ConfigError> {
        let (key, raw) = assignment.split_once('=').ok_or_else(|| ConfigError::SetSyntax(assignment.to_string()))?;
        let key = key.trim();
        let parts: Vec<&str> = key.split('.').collect();
        if parts.len() < 2 || parts.iter().any(|p| p.is_empty()) {
            return Err(ConfigError::SetSyntax(assignment.to_string()));
        }
        if !SECTIONS.contains(&parts[0]) {
            return Err(ConfigError::SetPath {
                key: key.to_string(),
                message: format!("unknown section `{}`", parts[0]),
            });
        }
        let value = parse_value(raw.trim());
        let mut table = &mut self.root;
        for (depth, part) in parts[..parts.len() - 1].iter().enumerate() {
            let entry = table.entry(part.to_string()).or_insert_with(|| Value::Table(Table::new()));
            table = entry.as_table_mut().ok_or_else(|| ConfigError::SetPath {
                key: key.to_string(),
                message: format!("`{}` is not a table", parts[..=depth].join(".")),
            })?;
        }
        table.insert(parts[parts.len() - 1].to_string(), value);
        Ok(())
    }

    /// Applies every override in order.
    pub fn apply_sets<S: AsRef<str>>(&mut self, sets: &[S]) -> Result<(), ConfigError> {
        sets.iter().try_for_each(|s| self.apply_set(s.as_ref()))
    }

    /// The raw table of a section, empty when the document does not mention it.
    pub fn section(&self, name: &str) -> Table {
        self.root.get(name).and_then(Value::as_table).cloned().unwrap_or_default()
    }

    /// Replaces a section.
    pub fn set_section(&mut self, name: &str, table: Table) {
        self.root.insert(name.to_string(), Value::Table(table));
    }

    /// The typed `[experiment]` section.
    pub fn experiment(&self) -> Result<ExperimentSection, ConfigError> {
        typed("experiment", self.section("experiment"))
    }

    /// The whole document as TOML text (what a dataset's `meta` or a checkpoint records).
    pub fn to_toml(&self) -> String {
        toml::to_string(&self.root).expect("a TOML table always serialises")
    }
}

fn parse_value(raw: &str) -> Value {
    // Parse `v = <raw>` so every TOML value form is accepted; fall back to a string.
    match format!("v = {raw}").parse::<Table>() {
        Ok(mut t) => t.remove("v").unwrap_or_else(|| Value::String(raw.into())),
        Err(_) => Value::String(raw.to_string()),
    }
}

/// Lays `over` onto `base`: tables merge key by key, anything else is replaced.
pub fn merge(base: &mut Table, over: &Table) {
    for (k, v) in over {
        match (base.get_mut(k), v) {
            (Some(Value::Table(b)), Value::Table(o)) => merge(b, o),
            _ => {
                base.insert(k.clone(), v.clone());
            }
        }
    }
}

/// Deserialises a section into its typed form, with an error that names the section.
pub fn typed<T: serde::de::DeserializeOwned>(section: &str, table: Table) -> Result<T, ConfigError> {
    T::deserialize(Value::Table(table))
        .map_err(|e| ConfigError::Invalid { section: section.to_string(), message: e.message().to_string() })
}

/// Serialises a typed section back into a table (to lay a file over its defaults).
pub fn to_table<T: Serialize>(value: &T) -> Table {
    match Value::try_from(value) {
        Ok(Value::Table(t)) => t,
        _ => panic!("config sections serialise to tables"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_overrides_parse_toml_values_and_bare_strings() {
        let mut doc = ConfigDoc::parse("[env]\ndt = 0.05\n", "test").unwrap();
        doc.apply_sets(&[
            "env.dt=0.01",
            "env.cells.n=100",
            "experiment.env=riab-walls",
            "env.arena.walls=[[[0.4,0.0],[0.4,0.9]]]",
        ])
        .unwrap();
        let env = doc.section("env");
        assert_eq!(env["dt"].as_float(), Some(0.01));
        assert_eq!(env["cells"]["n"].as_integer(), Some(100));
        assert_eq!(env["arena"]["walls"].as_array().unwrap().len(), 1);
        assert_eq!(doc.experiment().unwrap().env.as_deref(), Some("riab-walls"));
    }

    #[test]
    fn bad_input_is_refused_with_the_key_named() {
        let err = ConfigDoc::parse("[enviroment]\nx = 1\n", "f.toml").unwrap_err();
        assert!(err.to_string().contains("[enviroment]"), "{err}");
        let err = ConfigDoc::parse("[env\n", "f.toml").unwrap_err();
        assert!(err.to_string().contains("f.toml"), "{err}");
        let mut doc = ConfigDoc::empty();
        assert!(doc.apply_set("env.dt").unwrap_err().to_string().contains("env.dt"));
        let err = doc.apply_set("nope.dt=1").unwrap_err();
        assert!(err.to_string().contains("nope.dt"), "{err}");
        doc.apply_set("env.dt=1").unwrap();
        let err = doc.apply_set("env.dt.x=1").unwrap_err();
        assert!(err.to_string().contains("env.dt"), "{err}");
        let err = ConfigDoc::parse("[experiment]\nsed = 1\n", "f").unwrap().experiment().unwrap_err();
        assert!(err.to_string().contains("sed"), "{err}");
    }

    #[test]
    fn merge_is_deep_for_tables_and_replaces_leaves() {
        let mut base: Table = "a = 1\n[t]\nx = 1\ny = [1, 2]\n".parse().unwrap();
        let over: Table = "[t]\ny = [3]\nz = 2\n".parse().unwrap();
        merge(&mut base, &over);
        assert_eq!(base["a"].as_integer(), Some(1));
        assert_eq!(base["t"]["x"].as_integer(), Some(1));
        assert_eq!(base["t"]["y"].as_array().unwrap().len(), 1);
        assert_eq!(base["t"]["z"].as_integer(), Some(2));
    }
}
