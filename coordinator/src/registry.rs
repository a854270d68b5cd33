//! The checkpoint registry: versions a learner published, newest last.
//!
//! With a file (the coordinator's `<workdir>/registry.jsonl`) every accepted record is appended
//! as one JSON line and fsynced before the publisher is answered, so a restarted coordinator
//! serves the same latest entry to `WatchCheckpoints`. A torn last line (a crash mid-append) is
//! skipped with a warning; any other bad line is an error, since silently dropping published
//! versions would let a learner publish one twice.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One published checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointRecord {
    pub version: u64,
    pub step: u64,
    pub uri: String,
    pub metrics: Vec<(String, f64)>,
    pub published_unix_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("version: {got} is not newer than the latest published version {latest}")]
    NotNewer { got: u64, latest: u64 },
    #[error("uri: must not be empty")]
    EmptyUri,
    #[error("metrics: value of `{0}` is not finite")]
    NonFiniteMetric(String),
    #[error("recording the checkpoint in {path}: {message}")]
    Io { path: String, message: String },
}

#[derive(Debug, Default)]
pub struct Registry {
    entries: Vec<CheckpointRecord>,
    /// Where accepted records are appended, if anywhere.
    file: Option<(PathBuf, File)>,
}

impl Registry {
    /// The registry persisted at `path`: loads the records it holds (creating the file if it does
    /// not exist) and appends new ones to it.
    pub fn open(path: &Path) -> anyhow::Result<Registry> {
        let mut entries: Vec<CheckpointRecord> = Vec::new();
        let text = if path.exists() { std::fs::read_to_string(path)? } else { String::new() };
        // Bytes up to the end of the last complete record; a torn tail is cut off, so the next
        // append starts on a fresh line.
        let mut good = 0;
        let mut rest = text.as_str();
        let mut line_no = 0;
        while !rest.is_empty() {
            line_no += 1;
            let (line, complete) = match rest.find('\n') {
                Some(i) => (&rest[..i], true),
                None => (rest, false),
            };
            if !complete {
                eprintln!("warning: {}: skipping a torn last line", path.display());
                break;
            }
            if !line.trim().is_empty() {
                let record = serde_json::from_str::<CheckpointRecord>(line)
                    .map_err(|e| anyhow::anyhow!("{}:{line_no}: not a checkpoint record: {e}", path.display()))?;
                entries.push(record);
            }
            good += line.len() + 1;
            rest = &rest[line.len() + 1..];
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        if good < text.len() {
            file.set_len(good as u64)?;
        }
        Ok(Registry { entries, file: Some((path.to_path_buf(), file)) })
    }

    /// Records a checkpoint. Versions must increase, so watchers see a total order.
    pub fn publish(&mut self, record: CheckpointRecord) -> Result<(), RegistryError> {
        if record.uri.is_empty() {
            return Err(RegistryError::EmptyUri);
        }
        if let Some((k, _)) = record.metrics.iter().find(|(_, v)| !v.is_finite()) {
            return Err(RegistryError::NonFiniteMetric(k.clone()));
        }
        if let Some(latest) = self.latest() {
            if record.version <= latest.version {
                return Err(RegistryError::NotNewer { got: record.version, latest: latest.version });
            }
        }
        if let Some((path, file)) = &mut self.file {
            let io = |e: std::io::Error| RegistryError::Io { path: path.display().to_string(), message: e.to_string() };
            let mut line = serde_json::to_string(&record).expect("a record serialises");
            line.push('\n');
            file.write_all(line.as_bytes()).map_err(io)?;
            file.sync_data().map_err(io)?;
        }
        self.entries.push(record);
        Ok(())
    }

    pub fn latest(&self) -> Option<&CheckpointRecord> {
        self.entries.last()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(version: u64) -> CheckpointRecord {
        CheckpointRecord {
            version,
            step: version * 10,
            uri: format!("file:///c/{version}"),
            metrics: vec![],
            published_unix_ms: 0,
        }
    }

    #[test]
    fn versions_must_increase() {
        let mut r = Registry::default();
        assert!(r.latest().is_none());
        r.publish(rec(1)).unwrap();
        r.publish(rec(3)).unwrap();
        assert_eq!(r.publish(rec(3)), Err(RegistryError::NotNewer { got: 3, latest: 3 }));
        assert_eq!(r.latest().unwrap().version, 3);
        let mut bad = rec(4);
        bad.uri.clear();
        assert_eq!(r.publish(bad), Err(RegistryError::EmptyUri));
        let mut bad = rec(4);
        bad.metrics.push(("loss".into(), f64::NAN));
        assert!(r.publish(bad).unwrap_err().to_string().contains("loss"));
    }

    #[test]
    fn a_persisted_registry_survives_a_restart_and_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.jsonl");
        {
            let mut r = Registry::open(&path).unwrap();
            r.publish(rec(1)).unwrap();
            let mut with_metrics = rec(2);
            with_metrics.metrics.push(("loss".into(), 0.5));
            r.publish(with_metrics).unwrap();
        }
        // A crash in the middle of an append leaves half a line.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"version\":3,\"st").unwrap();
        drop(f);
        let mut r = Registry::open(&path).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r.latest().unwrap().metrics, [("loss".to_string(), 0.5)]);
        assert_eq!(r.publish(rec(2)), Err(RegistryError::NotNewer { got: 2, latest: 2 }));
        // The torn line must not glue itself to the next record.
        r.publish(rec(3)).unwrap();
        drop(r);
        let r = Registry::open(&path).unwrap();
        assert_eq!(r.latest().unwrap().version, 3);
        assert_eq!(r.len(), 3);
    }
}
