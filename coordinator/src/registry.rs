//! The checkpoint registry: the versions learners published, per kind, and the evaluation of each.
//!
//! Each entry has a [`Kind`] (`model` for δ-models, `policy` for learned data policies); versions
//! increase per kind, so watchers of one kind see a total order.
//!
//! **Evaluations, exactly once.** An evaluator claims a version ([`Registry::claim`]) and gets a
//! lease; it renews the lease while it works ([`Registry::renew`]) and completes the claim with
//! its headline metrics and report URI ([`Registry::complete`]). A claim whose lease ran out can
//! be claimed by another evaluator, so a crashed evaluator's version is picked up; a completion is
//! accepted only from the current claimant, so a version has at most one result even when a slow
//! evaluator's lease lapsed. A version the learner deleted before anyone claimed it is recorded as
//! skipped ([`Registry::skip`]).
//!
//! With a file (the coordinator's `<workdir>/registry.jsonl`) every accepted record — a published
//! checkpoint, a claim, a result, a skip — is appended as one JSON line and fsynced before the
//! caller is answered, so a restarted coordinator loses none. Lease renewals are not written: a
//! claim restored from the file gets a fresh lease from the moment of the restart, which gives
//! its evaluator time to renew. A torn last line (a crash mid-append) is skipped with a warning;
//! any other bad line is an error, since silently dropping published versions would let a learner
//! publish one twice. Files written before kinds and claims existed load unchanged (their entries
//! are `model` checkpoints without evaluations).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What a registry entry holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A δ-model (or baseline) checkpoint.
    #[default]
    Model,
    /// A learned data policy.
    Policy,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Model => "model",
            Kind::Policy => "policy",
        }
    }
}

/// Limits on what a caller may store, so that a registry record stays one short line.
pub const MAX_METRICS: usize = 64;
pub const MAX_NAME_BYTES: usize = 128;
pub const MAX_URI_BYTES: usize = 4096;

/// One published checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointRecord {
    pub version: u64,
    pub step: u64,
    pub uri: String,
    pub metrics: Vec<(String, f64)>,
    pub published_unix_ms: i64,
    #[serde(default)]
    pub kind: Kind,
    /// HOST:PORT of the publisher's checkpoint-fetch service, for evaluators on other machines
    /// (empty if it serves none).
    #[serde(default)]
    pub fetch_address: String,
}

/// Where the evaluation of one version stands.
#[derive(Debug, Clone, PartialEq)]
pub enum Evaluation {
    /// Nobody has claimed it yet.
    Pending,
    /// `claimant` holds it until `expires_unix_ms` unless it renews.
    Claimed { claimant: String, expires_unix_ms: i64 },
    /// Evaluated: the claimant's headline numbers and where its report is.
    Done { claimant: String, headline: Vec<(String, f64)>, report_uri: String, finished_unix_ms: i64 },
    /// Deleted by its publisher before any evaluator claimed it.
    Skipped { reason: String },
}

impl Evaluation {
    /// Whether nobody will evaluate it again (done or skipped).
    pub fn is_final(&self) -> bool {
        matches!(self, Evaluation::Done { .. } | Evaluation::Skipped { .. })
    }
}

/// The answer to a claim.
#[derive(Debug, Clone, PartialEq)]
pub enum ClaimOutcome {
    /// The caller holds the version until `expires_unix_ms`. `reclaimed` names the claimant whose
    /// lease had run out, if there was one.
    Granted { expires_unix_ms: i64, reclaimed: Option<String> },
    /// Another evaluator holds a live lease.
    Held { claimant: String, expires_unix_ms: i64 },
    /// Already evaluated.
    Done,
    /// Deleted before evaluation.
    Skipped,
}

/// The answer to a skip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipOutcome {
    /// Recorded as skipped now.
    Skipped,
    /// It was skipped already, or evaluated already: nothing changed.
    AlreadyFinal,
    /// An evaluator holds a live claim: the publisher should keep the files until it is done.
    Held,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("version: {got} is not newer than the latest published {kind} version {latest}")]
    NotNewer { kind: &'static str, got: u64, latest: u64 },
    #[error("uri: must not be empty")]
    EmptyUri,
    #[error("{field}: {message}")]
    Invalid { field: &'static str, message: String },
    #[error("metrics: value of `{0}` is not finite")]
    NonFiniteMetric(String),
    #[error("version: no {kind} version {version} in the registry")]
    UnknownVersion { kind: &'static str, version: u64 },
    #[error("version: {kind} version {version} is not claimed by {claimant}{detail}")]
    NotClaimant { kind: &'static str, version: u64, claimant: String, detail: String },
    #[error("version: {kind} version {version} is already evaluated")]
    AlreadyDone { kind: &'static str, version: u64 },
    #[error("recording in {path}: {message}")]
    Io { path: String, message: String },
}

/// One line of the registry file: a checkpoint (the original format) or an evaluation event.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
enum Line {
    Event(Event),
    Checkpoint(CheckpointRecord),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum Event {
    Claim { kind: Kind, version: u64, claimant: String, unix_ms: i64 },
    Done { kind: Kind, version: u64, claimant: String, headline: Vec<(String, f64)>, report_uri: String, unix_ms: i64 },
    Skip { kind: Kind, version: u64, reason: String, unix_ms: i64 },
}

#[derive(Debug, Clone)]
struct Slot {
    record: CheckpointRecord,
    evaluation: Evaluation,
}

#[derive(Debug, Default)]
pub struct Registry {
    slots: BTreeMap<(Kind, u64), Slot>,
    /// Where accepted records are appended, if anywhere.
    file: Option<(PathBuf, File)>,
}

fn check_name(field: &'static str, s: &str) -> Result<(), RegistryError> {
    if s.is_empty() || s.len() > MAX_NAME_BYTES {
        return Err(RegistryError::Invalid { field, message: format!("must be 1 to {MAX_NAME_BYTES} bytes") });
    }
    Ok(())
}

fn check_metrics(field: &'static str, metrics: &[(String, f64)]) -> Result<(), RegistryError> {
    if metrics.len() > MAX_METRICS {
        return Err(RegistryError::Invalid { field, message: format!("at most {MAX_METRICS} values") });
    }
    for (k, v) in metrics {
        check_name(field, k)?;
        if !v.is_finite() {
            return Err(RegistryError::NonFiniteMetric(k.clone()));
        }
    }
    Ok(())
}

fn check_uri(field: &'static str, uri: &str) -> Result<(), RegistryError> {
    if uri.len() > MAX_URI_BYTES {
        return Err(RegistryError::Invalid { field, message: format!("longer than {MAX_URI_BYTES} bytes") });
    }
    Ok(())
}

impl Registry {
    /// The registry persisted at `path`: loads the records it holds (creating the file if it does
    /// not exist) and appends new ones to it. Claims found in the file expire `lease_ms` after
    /// `now_unix_ms` unless renewed.
    pub fn open(path: &Path, now_unix_ms: i64, lease_ms: i64) -> anyhow::Result<Registry> {
        let mut registry = Registry::default();
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
                let parsed = serde_json::from_str::<Line>(line)
                    .map_err(|e| anyhow::anyhow!("{}:{line_no}: not a registry record: {e}", path.display()))?;
                registry
                    .replay(parsed, now_unix_ms + lease_ms)
                    .map_err(|e| anyhow::anyhow!("{}:{line_no}: {e}", path.display()))?;
            }
            good += line.len() + 1;
            rest = &rest[line.len() + 1..];
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        if good < text.len() {
            file.set_len(good as u64)?;
        }
        registry.file = Some((path.to_path_buf(), file));
        Ok(registry)
    }

    /// Applies one line of the file.
    fn replay(&mut self, line: Line, restored_expiry: i64) -> Result<(), RegistryError> {
        match line {
            Line::Checkpoint(record) => {
                let key = (record.kind, record.version);
                self.slots.insert(key, Slot { record, evaluation: Evaluation::Pending });
            }
            Line::Event(event) => {
                let (kind, version) = match &event {
                    Event::Claim { kind, version, .. }
                    | Event::Done { kind, version, .. }
                    | Event::Skip { kind, version, .. } => (*kind, *version),
                };
                let slot = self
                    .slots
                    .get_mut(&(kind, version))
                    .ok_or(RegistryError::UnknownVersion { kind: kind.as_str(), version })?;
                slot.evaluation = match event {
                    Event::Claim { claimant, .. } => Evaluation::Claimed { claimant, expires_unix_ms: restored_expiry },
                    Event::Done { claimant, headline, report_uri, unix_ms, .. } => {
                        Evaluation::Done { claimant, headline, report_uri, finished_unix_ms: unix_ms }
                    }
                    Event::Skip { reason, .. } => Evaluation::Skipped { reason },
                };
            }
        }
        Ok(())
    }

    /// Appends one line and fsyncs it (a no-op without a file).
    fn append(&mut self, line: &Line) -> Result<(), RegistryError> {
        if let Some((path, file)) = &mut self.file {
            let io = |e: std::io::Error| RegistryError::Io { path: path.display().to_string(), message: e.to_string() };
            let mut text = serde_json::to_string(line).expect("a registry line serialises");
            text.push('\n');
            file.write_all(text.as_bytes()).map_err(io)?;
            file.sync_data().map_err(io)?;
        }
        Ok(())
    }

    /// Records a checkpoint. Versions must increase per kind, so watchers see a total order.
    pub fn publish(&mut self, record: CheckpointRecord) -> Result<(), RegistryError> {
        if record.uri.is_empty() {
            return Err(RegistryError::EmptyUri);
        }
        check_uri("uri", &record.uri)?;
        check_uri("fetch_address", &record.fetch_address)?;
        check_metrics("metrics", &record.metrics)?;
        if let Some(latest) = self.latest(record.kind) {
            if record.version <= latest.version {
                return Err(RegistryError::NotNewer {
                    kind: record.kind.as_str(),
                    got: record.version,
                    latest: latest.version,
                });
            }
        }
        self.append(&Line::Checkpoint(record.clone()))?;
        self.slots.insert((record.kind, record.version), Slot { record, evaluation: Evaluation::Pending });
        Ok(())
    }

    /// The newest entry of `kind`.
    pub fn latest(&self, kind: Kind) -> Option<&CheckpointRecord> {
        self.slots.range((kind, 0)..=(kind, u64::MAX)).next_back().map(|(_, s)| &s.record)
    }

    /// Entries of `kind` from `from_version` on, oldest first, with their evaluations.
    pub fn entries(&self, kind: Kind, from_version: u64) -> impl Iterator<Item = (&CheckpointRecord, &Evaluation)> {
        self.slots.range((kind, from_version)..=(kind, u64::MAX)).map(|(_, s)| (&s.record, &s.evaluation))
    }

    /// The evaluation of one version.
    pub fn evaluation(&self, kind: Kind, version: u64) -> Option<&Evaluation> {
        self.slots.get(&(kind, version)).map(|s| &s.evaluation)
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    fn slot(&mut self, kind: Kind, version: u64) -> Result<&mut Slot, RegistryError> {
        self.slots.get_mut(&(kind, version)).ok_or(RegistryError::UnknownVersion { kind: kind.as_str(), version })
    }

    /// Claims the evaluation of `version` for `claimant` until `now + lease_ms`. A claim whose
    /// lease has run out is granted to the new claimant. The claimant that already holds it gets
    /// its lease renewed.
    pub fn claim(
        &mut self,
        kind: Kind,
        version: u64,
        claimant: &str,
        now_unix_ms: i64,
        lease_ms: i64,
    ) -> Result<ClaimOutcome, RegistryError> {
        check_name("claimant", claimant)?;
        let expires_unix_ms = now_unix_ms.saturating_add(lease_ms);
        let reclaimed = match &self.slot(kind, version)?.evaluation {
            Evaluation::Done { .. } => return Ok(ClaimOutcome::Done),
            Evaluation::Skipped { .. } => return Ok(ClaimOutcome::Skipped),
            Evaluation::Claimed { claimant: holder, expires_unix_ms: until } => {
                if holder == claimant {
                    self.slot(kind, version)?.evaluation =
                        Evaluation::Claimed { claimant: claimant.to_string(), expires_unix_ms };
                    return Ok(ClaimOutcome::Granted { expires_unix_ms, reclaimed: None });
                }
                if *until > now_unix_ms {
                    return Ok(ClaimOutcome::Held { claimant: holder.clone(), expires_unix_ms: *until });
                }
                Some(holder.clone())
            }
            Evaluation::Pending => None,
        };
        self.append(&Line::Event(Event::Claim {
            kind,
            version,
            claimant: claimant.to_string(),
            unix_ms: now_unix_ms,
        }))?;
        self.slot(kind, version)?.evaluation = Evaluation::Claimed { claimant: claimant.to_string(), expires_unix_ms };
        Ok(ClaimOutcome::Granted { expires_unix_ms, reclaimed })
    }

    /// Extends `claimant`'s lease on `version` to `now + lease_ms`. Fails if it no longer holds
    /// the claim (another evaluator took it over after the lease ran out, or it is final). A
    /// lapsed lease that nobody took over is renewed.
    pub fn renew(
        &mut self,
        kind: Kind,
        version: u64,
        claimant: &str,
        now_unix_ms: i64,
        lease_ms: i64,
    ) -> Result<i64, RegistryError> {
        let slot = self.slot(kind, version)?;
        match &mut slot.evaluation {
            Evaluation::Claimed { claimant: holder, expires_unix_ms } if holder == claimant => {
                *expires_unix_ms = now_unix_ms.saturating_add(lease_ms);
                Ok(*expires_unix_ms)
            }
            other => Err(not_claimant(kind, version, claimant, other)),
        }
    }

    /// Completes `claimant`'s claim on `version` with its headline numbers and report. Only the
    /// current claimant may complete (a lapsed lease that nobody took over still counts), so each
    /// version gets at most one result.
    pub fn complete(
        &mut self,
        kind: Kind,
        version: u64,
        claimant: &str,
        headline: Vec<(String, f64)>,
        report_uri: &str,
        now_unix_ms: i64,
    ) -> Result<(), RegistryError> {
        check_metrics("headline", &headline)?;
        if report_uri.is_empty() {
            return Err(RegistryError::Invalid { field: "report_uri", message: "must not be empty".into() });
        }
        check_uri("report_uri", report_uri)?;
        match &self.slot(kind, version)?.evaluation {
            Evaluation::Claimed { claimant: holder, .. } if holder == claimant => {}
            Evaluation::Done { .. } => return Err(RegistryError::AlreadyDone { kind: kind.as_str(), version }),
            other => return Err(not_claimant(kind, version, claimant, other)),
        }
        self.append(&Line::Event(Event::Done {
            kind,
            version,
            claimant: claimant.to_string(),
            headline: headline.clone(),
            report_uri: report_uri.to_string(),
            unix_ms: now_unix_ms,
        }))?;
        self.slot(kind, version)?.evaluation = Evaluation::Done {
            claimant: claimant.to_string(),
            headline,
            report_uri: report_uri.to_string(),
            finished_unix_ms: now_unix_ms,
        };
        Ok(())
    }

    /// Records that `version` will not be evaluated: by the publisher (`claimant` empty), which
    /// deleted it unevaluated, unless an evaluator holds a live claim (then the publisher should
    /// keep its files); or by the evaluator holding the claim, which cannot evaluate it. Nothing
    /// changes when it is final already.
    pub fn skip(
        &mut self,
        kind: Kind,
        version: u64,
        reason: &str,
        claimant: &str,
        now_unix_ms: i64,
    ) -> Result<SkipOutcome, RegistryError> {
        check_uri("reason", reason)?;
        match &self.slot(kind, version)?.evaluation {
            Evaluation::Done { .. } | Evaluation::Skipped { .. } => return Ok(SkipOutcome::AlreadyFinal),
            Evaluation::Claimed { claimant: holder, expires_unix_ms }
                if *expires_unix_ms > now_unix_ms && (claimant.is_empty() || holder != claimant) =>
            {
                return Ok(SkipOutcome::Held)
            }
            _ => {}
        }
        self.append(&Line::Event(Event::Skip { kind, version, reason: reason.to_string(), unix_ms: now_unix_ms }))?;
        self.slot(kind, version)?.evaluation = Evaluation::Skipped { reason: reason.to_string() };
        Ok(SkipOutcome::Skipped)
    }
}

fn not_claimant(kind: Kind, version: u64, claimant: &str, state: &Evaluation) -> RegistryError {
    let detail = match state {
        Evaluation::Pending => " (nobody has claimed it)".to_string(),
        Evaluation::Claimed { claimant: holder, .. } => format!(" (its lease lapsed and {holder} holds it now)"),
        Evaluation::Done { .. } => " (it is evaluated already)".to_string(),
        Evaluation::Skipped { .. } => " (it was skipped: its files were deleted)".to_string(),
    };
    RegistryError::NotClaimant { kind: kind.as_str(), version, claimant: claimant.to_string(), detail }
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
            kind: Kind::Model,
            fetch_address: String::new(),
        }
    }

    fn policy(version: u64) -> CheckpointRecord {
        CheckpointRecord { kind: Kind::Policy, ..rec(version) }
    }

    const LEASE: i64 = 10_000;

    #[test]
    fn versions_must_increase_per_kind() {
        let mut r = Registry::default();
        assert!(r.latest(Kind::Model).is_none());
        r.publish(rec(1)).unwrap();
        r.publish(rec(3)).unwrap();
        assert_eq!(r.publish(rec(3)), Err(RegistryError::NotNewer { kind: "model", got: 3, latest: 3 }));
        // Policies count on their own.
        r.publish(policy(1)).unwrap();
        assert_eq!(r.latest(Kind::Model).unwrap().version, 3);
        assert_eq!(r.latest(Kind::Policy).unwrap().version, 1);
        assert_eq!(r.entries(Kind::Model, 2).map(|(e, _)| e.version).collect::<Vec<_>>(), [3]);
        assert_eq!(r.entries(Kind::Model, 0).count(), 2);
        let mut bad = rec(4);
        bad.uri.clear();
        assert_eq!(r.publish(bad), Err(RegistryError::EmptyUri));
        let mut bad = rec(4);
        bad.metrics.push(("loss".into(), f64::NAN));
        assert!(r.publish(bad).unwrap_err().to_string().contains("loss"));
        let mut bad = rec(4);
        bad.metrics = (0..MAX_METRICS + 1).map(|i| (format!("m{i}"), 0.0)).collect();
        assert!(r.publish(bad).unwrap_err().to_string().starts_with("metrics:"));
    }

    #[test]
    fn a_version_is_evaluated_once_and_a_lapsed_claim_moves_on() {
        let mut r = Registry::default();
        r.publish(rec(1)).unwrap();
        r.publish(rec(2)).unwrap();
        assert!(matches!(r.claim(Kind::Model, 9, "a", 0, LEASE), Err(RegistryError::UnknownVersion { .. })));
        assert_eq!(
            r.claim(Kind::Model, 1, "a", 0, LEASE),
            Ok(ClaimOutcome::Granted { expires_unix_ms: LEASE, reclaimed: None })
        );
        // b is turned away while a's lease lives; a renews.
        assert_eq!(
            r.claim(Kind::Model, 1, "b", 5_000, LEASE),
            Ok(ClaimOutcome::Held { claimant: "a".into(), expires_unix_ms: LEASE })
        );
        assert_eq!(r.renew(Kind::Model, 1, "a", 8_000, LEASE), Ok(18_000));
        assert!(matches!(r.claim(Kind::Model, 1, "b", 17_999, LEASE), Ok(ClaimOutcome::Held { .. })));
        // a goes silent: after its lease, b takes over and a may neither renew nor complete.
        assert_eq!(
            r.claim(Kind::Model, 1, "b", 18_000, LEASE),
            Ok(ClaimOutcome::Granted { expires_unix_ms: 28_000, reclaimed: Some("a".into()) })
        );
        let err = r.complete(Kind::Model, 1, "a", vec![], "file:///r/1", 19_000).unwrap_err();
        assert!(err.to_string().contains("b holds it now"), "{err}");
        assert!(r.renew(Kind::Model, 1, "a", 19_000, LEASE).is_err());
        r.complete(Kind::Model, 1, "b", vec![("w1".into(), 0.5)], "file:///r/1", 20_000).unwrap();
        assert_eq!(r.claim(Kind::Model, 1, "c", 20_000, LEASE), Ok(ClaimOutcome::Done));
        assert!(matches!(
            r.complete(Kind::Model, 1, "b", vec![], "file:///r/1", 21_000),
            Err(RegistryError::AlreadyDone { .. })
        ));
        // Completing without a claim, or with a NaN headline, is refused.
        assert!(r.complete(Kind::Model, 2, "b", vec![], "file:///r/2", 0).unwrap_err().to_string().contains("nobody"));
        r.claim(Kind::Model, 2, "b", 0, LEASE).unwrap();
        assert!(matches!(
            r.complete(Kind::Model, 2, "b", vec![("w1".into(), f64::NAN)], "file:///r/2", 0),
            Err(RegistryError::NonFiniteMetric(_))
        ));
        // A lapsed lease that nobody took over still completes.
        r.complete(Kind::Model, 2, "b", vec![], "file:///r/2", 50_000).unwrap();
        assert!(matches!(r.evaluation(Kind::Model, 2), Some(Evaluation::Done { .. })));
    }

    #[test]
    fn only_unclaimed_versions_are_skipped() {
        let mut r = Registry::default();
        for v in 1..=3 {
            r.publish(rec(v)).unwrap();
        }
        r.claim(Kind::Model, 2, "a", 0, LEASE).unwrap();
        assert_eq!(r.skip(Kind::Model, 1, "deleted", "", 0), Ok(SkipOutcome::Skipped));
        assert_eq!(r.skip(Kind::Model, 1, "deleted", "", 0), Ok(SkipOutcome::AlreadyFinal));
        assert_eq!(r.skip(Kind::Model, 2, "deleted", "", 1), Ok(SkipOutcome::Held));
        // Another evaluator may not skip a's version; a, which holds it, may (tested on 3 below).
        assert_eq!(r.skip(Kind::Model, 2, "another env", "b", 1), Ok(SkipOutcome::Held));
        // Once a's lease is over, 2 can be skipped too.
        assert_eq!(r.skip(Kind::Model, 2, "deleted", "", LEASE), Ok(SkipOutcome::Skipped));
        assert_eq!(r.claim(Kind::Model, 1, "b", 0, LEASE), Ok(ClaimOutcome::Skipped));
        assert!(r.evaluation(Kind::Model, 3) == Some(&Evaluation::Pending));
        r.claim(Kind::Model, 3, "c", 0, LEASE).unwrap();
        assert_eq!(r.skip(Kind::Model, 3, "another env", "c", 1), Ok(SkipOutcome::Skipped));
        assert_eq!(r.evaluation(Kind::Model, 3), Some(&Evaluation::Skipped { reason: "another env".into() }));
    }

    #[test]
    fn a_persisted_registry_keeps_claims_and_results_and_survives_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.jsonl");
        {
            let mut r = Registry::open(&path, 0, LEASE).unwrap();
            r.publish(rec(1)).unwrap();
            let mut with_metrics = rec(2);
            with_metrics.metrics.push(("loss".into(), 0.5));
            r.publish(with_metrics).unwrap();
            r.publish(policy(1)).unwrap();
            r.claim(Kind::Model, 1, "a", 0, LEASE).unwrap();
            r.complete(Kind::Model, 1, "a", vec![("w1".into(), 0.25)], "file:///r/1", 1).unwrap();
            r.claim(Kind::Model, 2, "b", 2, LEASE).unwrap();
        }
        // A crash in the middle of an append leaves half a line.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"version\":3,\"st").unwrap();
        drop(f);
        let mut r = Registry::open(&path, 100_000, LEASE).unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(r.latest(Kind::Model).unwrap().metrics, [("loss".to_string(), 0.5)]);
        assert!(
            matches!(r.evaluation(Kind::Model, 1), Some(Evaluation::Done { headline, .. }) if headline[0].1 == 0.25)
        );
        // The restored claim has a fresh lease from the restart.
        assert_eq!(
            r.evaluation(Kind::Model, 2),
            Some(&Evaluation::Claimed { claimant: "b".into(), expires_unix_ms: 100_000 + LEASE })
        );
        assert!(matches!(r.publish(rec(2)), Err(RegistryError::NotNewer { .. })));
        // The torn line must not glue itself to the next record.
        r.publish(rec(3)).unwrap();
        r.skip(Kind::Model, 3, "deleted", "", 0).unwrap();
        drop(r);
        let r = Registry::open(&path, 0, LEASE).unwrap();
        assert_eq!(r.latest(Kind::Model).unwrap().version, 3);
        assert_eq!(r.len(), 4);
        assert!(matches!(r.evaluation(Kind::Model, 3), Some(Evaluation::Skipped { .. })));
    }

    #[test]
    fn a_registry_file_from_before_kinds_and_claims_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.jsonl");
        std::fs::write(
            &path,
            "{\"version\":5,\"step\":5,\"uri\":\"file:///c/5\",\"metrics\":[[\"loss\",1.0]],\"published_unix_ms\":7}\n",
        )
        .unwrap();
        let r = Registry::open(&path, 0, LEASE).unwrap();
        let latest = r.latest(Kind::Model).unwrap();
        assert_eq!((latest.version, latest.kind, latest.fetch_address.as_str()), (5, Kind::Model, ""));
        assert_eq!(r.evaluation(Kind::Model, 5), Some(&Evaluation::Pending));
    }

    #[test]
    fn an_event_for_an_unknown_version_is_an_error_naming_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.jsonl");
        std::fs::write(&path, "{\"event\":\"skip\",\"kind\":\"model\",\"version\":4,\"reason\":\"x\",\"unix_ms\":0}\n")
            .unwrap();
        let err = Registry::open(&path, 0, LEASE).unwrap_err().to_string();
        assert!(err.contains("registry.jsonl:1") && err.contains("version 4"), "{err}");
    }
}
