//! The evaluator node: every published model version evaluated exactly once, backlog first.
//!
//! It registers with the coordinator (role evaluator, its lease kept by heartbeat), watches the
//! registry from version 1 (so a restarted evaluator sees the backlog), and keeps the versions
//! that are not final yet. In version order it claims each one (`ClaimEvaluation`); a granted
//! claim is renewed every third of its lease while the report is computed on a blocking thread,
//! then completed with the headline numbers and the report's URI (`PublishEvaluation`). A version
//! another evaluator holds is tried again every half lease, so when that evaluator dies its
//! version is picked up once its lease runs out.
//!
//! The checkpoint is read where the registry entry's `file://` URI points when that directory
//! exists and passes its checksums; otherwise it is fetched from the learner's checkpoint store
//! (`fetch_address`) into `<workdir>/fetched/`. A version whose evaluation fails is retried up to
//! [`MAX_ATTEMPTS`] times by this process (its claim lapses, so another evaluator may try too).

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use client::coordinator::{CoordinatorHandle, Registration, Role};
use proto::pb;
use proto::pb::coordinator_client::CoordinatorClient;
use tonic::transport::Channel;
use tonic::Code;

use actor::envs::EnvId;

use super::checkpoint_store;
use crate::eval::evaluate::{self, Written};
use crate::eval::model::TrainedModel;

/// Evaluation attempts per version in one process.
pub const MAX_ATTEMPTS: u32 = 3;

#[derive(Debug, Clone)]
pub struct EvaluatorOptions {
    /// The coordinator's HOST:PORT.
    pub coordinator: String,
    /// Reports go to `<workdir>/eval/<version>/`; fetched checkpoints to `<workdir>/fetched/`.
    pub workdir: PathBuf,
    /// `eval.*` overrides.
    pub sets: Vec<String>,
    /// How long to keep retrying an unreachable coordinator at start.
    pub connect_timeout: Duration,
    /// The longest a checkpoint fetch may take.
    pub fetch_timeout: Duration,
    /// Stop after this many reports (None: until shutdown).
    pub max_reports: Option<usize>,
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct EvaluatorSummary {
    /// Versions this process evaluated and published, in order.
    pub evaluated: Vec<u64>,
}

/// A version not final yet, as the registry last described it.
#[derive(Debug, Clone)]
struct Pending {
    entry: pb::CheckpointEntry,
    attempts: u32,
}

fn deadline<T>(message: T) -> tonic::Request<T> {
    client::connect::request(message)
}

fn is_final(e: &pb::CheckpointEntry) -> bool {
    use pb::evaluation::State;
    matches!(e.evaluation.as_ref().map(|e| e.state()), Some(State::Done | State::Skipped))
}

/// Runs until `shutdown` resolves (or `max_reports` reports are written).
pub async fn run(options: EvaluatorOptions, shutdown: impl Future<Output = ()>) -> Result<EvaluatorSummary> {
    let coordinator = CoordinatorHandle::connect(&options.coordinator, options.connect_timeout)
        .await
        .with_context(|| format!("--coordinator {}", options.coordinator))?;
    // A coordinator without an experiment yet is fine: checkpoints name their own env.
    if let Some(experiment) = coordinator.experiment().await.context("the coordinator's experiment")? {
        let _: EnvId = experiment.env_id.parse().map_err(|e| anyhow::anyhow!("the coordinator's experiment: {e}"))?;
    }
    let incarnation = common::incarnation::new_incarnation();
    let registration = Registration::new(Role::Evaluator, incarnation);
    let lease = coordinator
        .register(&registration)
        .await
        .map_err(|s| anyhow::anyhow!("registering with the coordinator at {}: {}", options.coordinator, s.message()))?;
    let node_id = lease.node_id;
    let _lease = coordinator.keep_lease(registration, lease);
    let claimant = format!("evaluator node {node_id} ({incarnation:016x})");
    eprintln!("evaluator: registered as {claimant}; watching the registry of {}", options.coordinator);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<pb::CheckpointEntry>(256);
    tokio::spawn(coordinator.clone().follow_checkpoints(pb::CheckpointKind::Model, 1, tx));
    let mut client = coordinator.rpc();
    let mut pending: BTreeMap<u64, Pending> = BTreeMap::new();
    let mut summary = EvaluatorSummary::default();
    let mut retry_every = Duration::from_secs(5);
    tokio::pin!(shutdown);
    loop {
        // Claim the oldest version that is free.
        let mut worked = false;
        let versions: Vec<u64> = pending.keys().copied().collect();
        metrics::gauge!("dsm_evaluator_lag_versions").set(versions.len() as f64);
        for version in versions {
            let p = pending[&version].clone();
            let claim = pb::ClaimEvaluationRequest {
                kind: pb::CheckpointKind::Model as i32,
                version,
                claimant: claimant.clone(),
            };
            let answer = match client.claim_evaluation(deadline(claim)).await {
                Ok(a) => a.into_inner(),
                Err(s) if s.code() == Code::NotFound => {
                    pending.remove(&version);
                    continue;
                }
                Err(s) => {
                    eprintln!("warning: claiming version {version}: {}", s.message());
                    break;
                }
            };
            use pb::claim_evaluation_response::Outcome;
            match answer.outcome() {
                Outcome::Granted => {}
                Outcome::Held => continue,
                _ => {
                    pending.remove(&version);
                    continue;
                }
            }
            retry_every = Duration::from_millis(answer.lease_ms / 2).max(Duration::from_millis(200));
            let lease = Duration::from_millis(answer.lease_ms.max(300));
            let outcome = tokio::select! {
                r = evaluate_claimed(&mut client, &claimant, &p.entry, &options, lease) => Some(r),
                _ = &mut shutdown => None,
            };
            let Some(outcome) = outcome else { return Ok(summary) };
            worked = true;
            match outcome {
                Ok(Some(written)) => {
                    pending.remove(&version);
                    summary.evaluated.push(version);
                    record(version, &written);
                    eprintln!(
                        "evaluator: version {version} in {:.1} s: {} → {}",
                        written.seconds,
                        headline_text(&written.headline),
                        written.dir.join("report.md").display()
                    );
                    if options.max_reports.is_some_and(|m| summary.evaluated.len() >= m) {
                        return Ok(summary);
                    }
                }
                Ok(None) => {
                    pending.remove(&version);
                }
                Err(e) if e.downcast_ref::<Unsupported>().is_some() => {
                    let reason = e.to_string();
                    eprintln!("evaluator: version {version} skipped: {reason}");
                    let skip = pb::SkipEvaluationRequest {
                        kind: pb::CheckpointKind::Model as i32,
                        version,
                        reason,
                        claimant: claimant.clone(),
                    };
                    if let Err(s) = client.skip_evaluation(deadline(skip)).await {
                        eprintln!("warning: marking version {version} skipped: {}", s.message());
                    }
                    pending.remove(&version);
                }
                Err(e) => {
                    eprintln!("error: evaluating version {version}: {e:#}");
                    metrics::counter!("dsm_evaluator_failures_total").increment(1);
                    let p = pending.get_mut(&version).expect("still pending");
                    p.attempts += 1;
                    if p.attempts >= MAX_ATTEMPTS {
                        eprintln!("evaluator: giving up on version {version} after {MAX_ATTEMPTS} attempts");
                        pending.remove(&version);
                    }
                }
            }
            break; // the registry may have changed while we worked: start again from the oldest
        }
        if worked {
            continue;
        }
        tokio::select! {
            _ = &mut shutdown => return Ok(summary),
            e = rx.recv() => match e {
                Some(e) => add(&mut pending, e),
                None => bail!("the registry watch ended"),
            },
            _ = tokio::time::sleep(retry_every) => {}
        }
        while let Ok(e) = rx.try_recv() {
            add(&mut pending, e);
        }
    }
}

fn add(pending: &mut BTreeMap<u64, Pending>, entry: pb::CheckpointEntry) {
    if is_final(&entry) {
        pending.remove(&entry.version);
    } else {
        pending.entry(entry.version).or_insert(Pending { entry, attempts: 0 });
    }
}

/// A checkpoint no evaluator can report on (its model does not read the states its env
/// produces): the same answer from every evaluator and every attempt, so the version is marked
/// skipped, with this reason, not retried.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Unsupported(String);

/// Evaluates one claimed version while renewing the claim; publishes the result. `Ok(None)`: the
/// claim was lost to another evaluator (its report, if written, stays on disk unpublished).
async fn evaluate_claimed(
    client: &mut CoordinatorClient<Channel>,
    claimant: &str,
    entry: &pb::CheckpointEntry,
    options: &EvaluatorOptions,
    lease: Duration,
) -> Result<Option<Written>> {
    let version = entry.version;
    let renew = {
        let mut c = client.clone();
        let claimant = claimant.to_string();
        async move {
            let mut tick = tokio::time::interval(lease / 3);
            tick.tick().await;
            loop {
                tick.tick().await;
                let r = pb::RenewEvaluationRequest {
                    kind: pb::CheckpointKind::Model as i32,
                    version,
                    claimant: claimant.clone(),
                };
                if let Err(s) = c.renew_evaluation(deadline(r)).await {
                    if s.code() == Code::FailedPrecondition {
                        return s.message().to_string();
                    }
                }
            }
        }
    };
    let work = async {
        let dir = locate(entry, options).await?;
        let workdir = options.workdir.clone();
        let sets = options.sets.clone();
        let name = format!("{version:012}");
        tokio::task::spawn_blocking(move || {
            let model = TrainedModel::load(&dir)?;
            let on = evaluate::TrainedOn::of(&model)?;
            evaluate::compatible(&model, &on).map_err(|e| Unsupported(format!("{e:#}")))?;
            drop(model);
            evaluate::evaluate(&dir, None, &workdir, &name, &sets)
        })
        .await
        .context("the evaluation thread panicked")?
    };
    let written = tokio::select! {
        w = work => w?,
        lost = renew => {
            eprintln!("warning: version {version}: the claim was lost ({lost}); another evaluator has it");
            return Ok(None);
        }
    };
    let report_uri = format!("file://{}", written.dir.canonicalize().unwrap_or(written.dir.clone()).display());
    let publish = pb::PublishEvaluationRequest {
        kind: pb::CheckpointKind::Model as i32,
        version,
        claimant: claimant.to_string(),
        headline: written.headline.iter().cloned().collect(),
        report_uri,
    };
    match client.publish_evaluation(deadline(publish)).await {
        Ok(_) => Ok(Some(written)),
        Err(s) if matches!(s.code(), Code::FailedPrecondition | Code::AlreadyExists) => {
            eprintln!(
                "warning: version {version}: {}; the report stays unpublished in {}",
                s.message(),
                written.dir.display()
            );
            Ok(None)
        }
        Err(s) => bail!("publishing the evaluation of version {version}: {}", s.message()),
    }
}

/// The checkpoint's directory: the entry's local path when it is there and intact, else a copy
/// fetched from the learner's checkpoint store.
async fn locate(entry: &pb::CheckpointEntry, options: &EvaluatorOptions) -> Result<PathBuf> {
    let local = PathBuf::from(entry.uri.strip_prefix("file://").unwrap_or(&entry.uri));
    let checked = local.clone();
    let intact = tokio::task::spawn_blocking(move || TrainedModel::load(&checked).map(|_| ()))
        .await
        .context("checking the local checkpoint")?;
    match intact {
        Ok(()) => return Ok(local),
        Err(e) if local.exists() => eprintln!("note: {}: {e:#}; fetching it from the learner", local.display()),
        Err(_) => {}
    }
    if entry.fetch_address.is_empty() {
        bail!("{} is not readable here and its publisher serves no checkpoint store", local.display());
    }
    let name = local.file_name().and_then(|n| n.to_str()).map_or_else(|| format!("v{}", entry.version), str::to_string);
    let dest = options.workdir.join("fetched").join(&name);
    if TrainedModel::load(&dest).is_ok() {
        return Ok(dest);
    }
    if dest.exists() {
        std::fs::remove_dir_all(&dest)?;
    }
    std::fs::create_dir_all(options.workdir.join("fetched"))?;
    checkpoint_store::fetch(&entry.fetch_address, &entry.uri, &dest, options.fetch_timeout).await?;
    Ok(dest)
}

/// Every series the evaluator serves from its start; the headline numbers follow as
/// `dsm_evaluator_headline{key=…}` once there is a report (the keys are a fixed set per env).
pub const METRICS: [common::telemetry::Metric; 5] = [
    common::telemetry::Metric::counter("dsm_evaluator_evaluations_total", "reports written"),
    common::telemetry::Metric::gauge("dsm_evaluator_checkpoint_version", "version of the newest report"),
    common::telemetry::Metric::gauge("dsm_evaluator_report_seconds", "seconds the newest report took"),
    common::telemetry::Metric::gauge("dsm_evaluator_lag_versions", "versions waiting for an evaluation"),
    common::telemetry::Metric::counter(
        "dsm_evaluator_failures_total",
        "evaluations that failed (retried up to 3 times)",
    ),
];
pub const HEADLINE: &str = "dsm_evaluator_headline";

/// Once, when the exporter is installed.
pub fn register_metrics() {
    common::telemetry::register(&METRICS, &[]);
}

/// The report's numbers as gauges: the version is a value, never a label.
pub fn record(version: u64, written: &Written) {
    metrics::counter!("dsm_evaluator_evaluations_total").increment(1);
    metrics::gauge!("dsm_evaluator_checkpoint_version").set(version as f64);
    metrics::gauge!("dsm_evaluator_report_seconds").set(written.seconds);
    for (k, v) in &written.headline {
        metrics::gauge!(HEADLINE, "key" => k.clone()).set(*v);
    }
}

pub fn headline_text(headline: &[(String, f64)]) -> String {
    headline.iter().map(|(k, v)| format!("{k} {v:.4}")).collect::<Vec<_>>().join(", ")
}
