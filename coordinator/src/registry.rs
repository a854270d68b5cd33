//! The checkpoint registry: versions a learner published, newest last.

/// One published checkpoint.
#[derive(Debug, Clone, PartialEq)]
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
}

#[derive(Debug, Default)]
pub struct Registry {
    entries: Vec<CheckpointRecord>,
}

impl Registry {
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
}
