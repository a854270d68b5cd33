//! Publishing checkpoints to the coordinator's registry, in the background.
//!
//! The run hands each complete checkpoint (DONE written) to [`Publisher::publish`], which only
//! queues it: training never waits on the coordinator. A task on the run's tokio runtime sends
//! the queue in order with `PublishCheckpoint`; while the coordinator is unreachable it retries
//! the oldest entry with exponential backoff and jitter, saying so on stderr. The queue is bounded
//! ([`MAX_PENDING`]): past it, the oldest unpublished entries are dropped, with a warning, since
//! a newer checkpoint supersedes them.
//!
//! Versions are checkpoint steps, so they increase within a run and across restarts. A restarted
//! learner does not publish a version twice: at start it reads the registry's latest version
//! (the first message of `WatchCheckpoints`) and skips every entry at or below it; an entry the
//! registry still refuses as not newer (FAILED_PRECONDITION: another publisher, or a latest
//! version the watch did not deliver in time) is counted as already there, not retried.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use client::backoff::Backoff;
use proto::pb;
use proto::pb::coordinator_client::CoordinatorClient;
use tokio::runtime::Handle;
use tokio::sync::Notify;
use tonic::transport::Channel;

use crate::train::checkpoint::CheckpointDir;
use crate::train::retention::{self, Evaluated, Fate};
use client::connect::RPC_DEADLINE;

/// Unpublished checkpoints kept while the coordinator is unreachable.
pub const MAX_PENDING: usize = 16;

/// How long the first message of `WatchCheckpoints` may take before the registry is taken to be
/// empty. A registry that answers later is still safe: its refusal of an old version is a skip.
const LATEST_WAIT: Duration = Duration::from_secs(1);

/// What the queue and the task share.
#[derive(Default)]
struct Queue {
    pending: VecDeque<pb::CheckpointEntry>,
    /// No more entries will come: the task exits once `pending` is empty.
    closed: bool,
    /// Versions the registry accepted from this run, in order.
    published: Vec<u64>,
    /// The newest version the registry is known to hold.
    latest: Option<u64>,
}

/// What publishing did over a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishReport {
    /// Versions the registry accepted from this run, in order.
    pub published: Vec<u64>,
    /// Versions still unpublished when the run ended (the coordinator was unreachable).
    pub unpublished: Vec<u64>,
}

pub struct Publisher {
    runtime: Handle,
    queue: Arc<Mutex<Queue>>,
    wake: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
    /// For the registry reads of [`Publisher::prune`].
    client: CoordinatorClient<Channel>,
    /// This learner's checkpoint store (HOST:PORT), published with every entry.
    fetch_address: String,
    /// The newest version whose evaluation has been reported in the log.
    evaluated_seen: Mutex<u64>,
}

fn lock(q: &Mutex<Queue>) -> std::sync::MutexGuard<'_, Queue> {
    q.lock().unwrap_or_else(|e| e.into_inner())
}

/// The registry's latest version, if it answers within [`LATEST_WAIT`].
async fn latest_version(client: &mut CoordinatorClient<Channel>) -> Option<u64> {
    let ask = async {
        let mut stream = client.watch_checkpoints(pb::WatchCheckpointsRequest::default()).await.ok()?.into_inner();
        stream.message().await.ok().flatten().map(|e| e.version)
    };
    tokio::time::timeout(LATEST_WAIT, ask).await.ok().flatten()
}

impl Publisher {
    /// Reads the registry's latest version, then starts the publishing task on `runtime`.
    pub fn start(runtime: Handle, mut client: CoordinatorClient<Channel>) -> Publisher {
        let latest = runtime.block_on(latest_version(&mut client));
        if let Some(v) = latest {
            eprintln!("checkpoint registry: latest published version {v}");
        }
        let queue = Arc::new(Mutex::new(Queue { latest, ..Queue::default() }));
        let wake = Arc::new(Notify::new());
        let task = runtime.spawn(publish_loop(client.clone(), queue.clone(), wake.clone()));
        Publisher { runtime, queue, wake, task, client, fetch_address: String::new(), evaluated_seen: Mutex::new(0) }
    }

    /// Publishes `address` (this learner's checkpoint store) with every entry, so evaluators on
    /// other machines can fetch the files.
    pub fn with_fetch_address(mut self, address: String) -> Publisher {
        self.fetch_address = address;
        self
    }

    /// Queues checkpoint `step` (its directory `dir`, complete on disk) for publishing as version
    /// `step`; returns at once. `metrics` with non-finite values are left out (the registry refuses them).
    pub fn publish(&self, step: u64, dir: &Path, metrics: &[(&str, f64)]) {
        let path = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
        let entry = pb::CheckpointEntry {
            version: step,
            step,
            uri: format!("file://{}", path.display()),
            metrics: metrics.iter().filter(|(_, v)| v.is_finite()).map(|(k, v)| (k.to_string(), *v)).collect(),
            fetch_address: self.fetch_address.clone(),
            ..Default::default()
        };
        let mut q = lock(&self.queue);
        if q.latest.is_some_and(|l| step <= l) {
            return; // already in the registry (a resumed run's first checkpoint)
        }
        q.pending.push_back(entry);
        if q.pending.len() > MAX_PENDING {
            let dropped = q.pending.pop_front().map(|e| e.version).unwrap_or_default();
            eprintln!("warning: checkpoint registry unreachable; version {dropped} will not be published (superseded)");
        }
        drop(q);
        self.wake.notify_one();
    }

    /// Keeps the checkpoints evaluators still need and deletes the rest ([`retention`]): the
    /// registry says which versions are evaluated, being evaluated or never will be; a version
    /// deleted unevaluated is first recorded as skipped (one an evaluator claimed meanwhile stays).
    /// Also logs, and exports as gauges, the evaluations finished since the last call. Without an
    /// answer from the registry every version counts as unevaluated.
    pub fn prune(&self, checkpoints: &CheckpointDir, keep_unevaluated: usize) {
        use pb::evaluation::State;
        let steps: Vec<u64> = checkpoints.complete().into_iter().map(|(s, _)| s).collect();
        let from = steps.first().copied().unwrap_or(0);
        let mut client = self.client.clone();
        let listed = self.runtime.block_on(async {
            let mut r = tonic::Request::new(pb::ListCheckpointsRequest {
                kind: pb::CheckpointKind::Model as i32,
                from_version: 0,
            });
            r.set_timeout(RPC_DEADLINE);
            client.list_checkpoints(r).await
        });
        let entries = match listed {
            Ok(r) => r.into_inner().entries,
            Err(s) => {
                eprintln!("warning: reading the checkpoint registry: {}; keeping unevaluated checkpoints", s.message());
                Vec::new()
            }
        };
        self.report_evaluations(&entries);
        let states: std::collections::HashMap<u64, Evaluated> = entries
            .iter()
            .filter(|e| e.version >= from)
            .map(|e| {
                let state = match e.evaluation.as_ref().map(|e| e.state()) {
                    Some(State::Done | State::Skipped) => Evaluated::Final,
                    Some(State::Claimed) => Evaluated::Claimed,
                    _ => Evaluated::No,
                };
                (e.version, state)
            })
            .collect();
        let fates = retention::fates(&steps, checkpoints.keep(), keep_unevaluated, |s| {
            states.get(&s).copied().unwrap_or(Evaluated::No)
        });
        for (&step, fate) in steps.iter().zip(fates) {
            match fate {
                Fate::Keep => continue,
                Fate::Delete => {}
                Fate::Skip => {
                    use pb::skip_evaluation_response::Outcome;
                    let request = pb::SkipEvaluationRequest {
                        kind: pb::CheckpointKind::Model as i32,
                        version: step,
                        reason: format!("deleted by the learner: more than train.keep_unevaluated = {keep_unevaluated} versions waited for an evaluator"),
                        claimant: String::new(),
                    };
                    let mut client = self.client.clone();
                    let answer = self.runtime.block_on(async {
                        let mut r = tonic::Request::new(request);
                        r.set_timeout(RPC_DEADLINE);
                        client.skip_evaluation(r).await
                    });
                    match answer.map(|a| a.into_inner().outcome()) {
                        Ok(Outcome::Held) => continue,
                        Ok(_) => {}
                        // Not in the registry (never published): nothing to record.
                        Err(s) if s.code() == tonic::Code::NotFound => {}
                        Err(s) => eprintln!("warning: recording version {step} as skipped: {}", s.message()),
                    }
                    metrics::counter!("dsm_learner_checkpoints_skipped_total").increment(1);
                    eprintln!("checkpoint {step}: deleted before any evaluator took it (skipped)");
                }
            }
            if let Err(e) = checkpoints.remove(step) {
                eprintln!("warning: removing checkpoint {step}: {e}");
            }
        }
    }

    /// Logs and exports evaluations finished since the last call (the registry's headline).
    fn report_evaluations(&self, entries: &[pb::CheckpointEntry]) {
        let mut seen = self.evaluated_seen.lock().unwrap_or_else(|e| e.into_inner());
        for e in entries {
            let Some(ev) = &e.evaluation else { continue };
            if ev.state() != pb::evaluation::State::Done || e.version <= *seen {
                continue;
            }
            *seen = e.version;
            let mut headline: Vec<(&String, &f64)> = ev.headline.iter().collect();
            headline.sort_by(|a, b| a.0.cmp(b.0));
            let text: Vec<String> = headline.iter().map(|(k, v)| format!("{k} {v:.4}")).collect();
            eprintln!("evaluation of version {}: {} ({})", e.version, text.join(", "), ev.report_uri);
            metrics::gauge!(super::metrics::EVALUATED_VERSION).set(e.version as f64);
            for (k, v) in headline {
                metrics::gauge!(super::metrics::EVALUATION_HEADLINE, "key" => k.clone()).set(*v);
            }
        }
    }

    /// Stops taking entries and waits up to `grace` for the queue to drain.
    pub fn finish(mut self, grace: Duration) -> PublishReport {
        lock(&self.queue).closed = true;
        self.wake.notify_one();
        let task = &mut self.task;
        let finished = self.runtime.block_on(async { tokio::time::timeout(grace, task).await.is_ok() });
        let q = lock(&self.queue);
        let unpublished: Vec<u64> = q.pending.iter().map(|e| e.version).collect();
        if !finished && !unpublished.is_empty() {
            eprintln!(
                "warning: the coordinator did not take checkpoint version(s) {unpublished:?} within {grace:?}; \
                 a rerun publishes the newest"
            );
        }
        PublishReport { published: q.published.clone(), unpublished }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Publishes the queue in order until it is closed and empty.
async fn publish_loop(mut client: CoordinatorClient<Channel>, queue: Arc<Mutex<Queue>>, wake: Arc<Notify>) {
    let mut backoff =
        Backoff::new(Duration::from_millis(200), Duration::from_secs(10), common::incarnation::new_incarnation());
    let mut failing = false;
    loop {
        let next = {
            let q = lock(&queue);
            match q.pending.front() {
                Some(e) => Some(e.clone()),
                None if q.closed => return,
                None => None,
            }
        };
        let Some(entry) = next else {
            wake.notified().await;
            continue;
        };
        let version = entry.version;
        let mut request = tonic::Request::new(entry);
        request.set_timeout(RPC_DEADLINE);
        let outcome = client.publish_checkpoint(request).await;
        let mut q = lock(&queue);
        match outcome {
            Ok(_) => {
                q.published.push(version);
                q.latest = Some(version);
                if failing {
                    eprintln!("checkpoint registry: reachable again; published version {version}");
                }
                failing = false;
                backoff.reset();
            }
            Err(s) if s.code() == tonic::Code::FailedPrecondition => {
                eprintln!(
                    "checkpoint registry already has version {version} or newer ({}); not publishing it again",
                    s.message()
                );
            }
            Err(s) if s.code() == tonic::Code::InvalidArgument => {
                eprintln!("warning: the checkpoint registry refused version {version}: {}", s.message());
            }
            Err(s) => {
                let delay = backoff.next_delay();
                if !failing || delay >= Duration::from_secs(5) {
                    eprintln!(
                        "warning: publishing checkpoint version {version} failed ({}: {}); training goes on, \
                         retrying in {delay:.1?}",
                        s.code(),
                        s.message()
                    );
                }
                failing = true;
                drop(q);
                tokio::time::sleep(delay).await;
                continue;
            }
        }
        // Published or refused for good: the entry is done (unless the queue dropped it meanwhile).
        if q.pending.front().is_some_and(|e| e.version == version) {
            q.pending.pop_front();
        }
    }
}
