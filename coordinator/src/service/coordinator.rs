//! The `Coordinator` gRPC service: membership, the experiment, the shard map, the registry.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::Stream;
use proto::pb::coordinator_server::Coordinator;
use proto::pb::{self, Role};
use tokio::sync::{broadcast, watch};
use tonic::{Request, Response, Status};

use crate::experiment::{Experiment, ExperimentError};
use crate::membership::{Membership, MembershipError, NodeRole};
use crate::registry::{CheckpointRecord, ClaimOutcome, Evaluation, Kind, Registry, RegistryError, SkipOutcome};
use crate::shard_map::{Server, ShardMap, ShardMapError};

/// Everything the coordinator knows, shared by its service and its lease reaper.
pub struct CoordinatorState {
    pub experiment: Mutex<Experiment>,
    pub membership: Mutex<Membership>,
    pub shard_map: Mutex<ShardMap>,
    pub registry: Mutex<Registry>,
    watchers: broadcast::Sender<CheckpointRecord>,
    heartbeat: Duration,
    /// How long an evaluation claim lives without a renewal (the node lease).
    claim_lease: Duration,
    /// Where an experiment fixed by the first actor is saved (`experiment.toml`), so a restarted
    /// coordinator serves the same one.
    experiment_file: Option<std::path::PathBuf>,
}

impl CoordinatorState {
    /// `registry` is the registry restored from the workdir (or empty).
    pub fn new(
        experiment: Experiment,
        shard_map: ShardMap,
        registry: Registry,
        experiment_file: Option<std::path::PathBuf>,
    ) -> Arc<Self> {
        let lease = Duration::from_secs_f64(experiment.replay().lease_seconds);
        let heartbeat = Duration::from_secs_f64(experiment.replay().heartbeat_seconds);
        let (watchers, _) = broadcast::channel(64);
        Arc::new(CoordinatorState {
            experiment: Mutex::new(experiment),
            membership: Mutex::new(Membership::with_first_id(lease, random_first_id())),
            shard_map: Mutex::new(shard_map),
            registry: Mutex::new(registry),
            watchers,
            heartbeat,
            claim_lease: lease,
            experiment_file,
        })
    }

    /// Drops nodes whose lease ran out, and frees the shard slots they served; returns how many
    /// nodes left.
    pub fn reap(&self, now: Instant) -> usize {
        let mut membership = lock(&self.membership);
        let gone = membership.expire(now);
        let mut map = lock(&self.shard_map);
        for node in &gone {
            let freed = map.release(node.id);
            if freed.is_empty() {
                eprintln!("lease expired: node {} ({:?}, {})", node.id, node.role, node.advertise);
            } else {
                eprintln!(
                    "lease expired: node {} ({:?}, {}); shard slot(s) {freed:?} unserved; {map}",
                    node.id, node.role, node.advertise
                );
            }
        }
        metrics::counter!("dsm_coordinator_expired_leases_total").increment(gone.len() as u64);
        metrics::gauge!("dsm_coordinator_nodes").set(membership.len() as f64);
        publish_map_gauges(&map);
        gone.len()
    }

    /// Renews leases every half heartbeat until the process ends.
    pub async fn run_reaper(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.heartbeat / 2);
        loop {
            tick.tick().await;
            self.reap(Instant::now());
        }
    }
}

/// Wall-clock milliseconds since the epoch: claim leases are persisted, so they are wall-clock.
pub fn unix_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// A random starting node id (53 bits, so ids print and parse everywhere), from the clock.
fn random_first_id() -> u64 {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    (common::rng::splitmix64(nanos ^ u64::from(std::process::id())) >> 11).max(1)
}

fn publish_map_gauges(map: &ShardMap) {
    metrics::gauge!("dsm_coordinator_shard_map_version").set(map.version() as f64);
    metrics::gauge!("dsm_coordinator_unserved_shards").set(map.unserved().count() as f64);
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Clone)]
pub struct CoordinatorService {
    state: Arc<CoordinatorState>,
    /// Turns true when the server shuts down, ending `WatchCheckpoints` streams.
    closing: watch::Receiver<bool>,
}

impl CoordinatorService {
    pub fn new(state: Arc<CoordinatorState>, closing: watch::Receiver<bool>) -> Self {
        Self { state, closing }
    }
}

fn to_pb(r: &CheckpointRecord, evaluation: Option<&Evaluation>) -> pb::CheckpointEntry {
    pb::CheckpointEntry {
        version: r.version,
        step: r.step,
        uri: r.uri.clone(),
        metrics: r.metrics.iter().cloned().collect(),
        published_unix_ms: r.published_unix_ms,
        kind: kind_to_pb(r.kind) as i32,
        fetch_address: r.fetch_address.clone(),
        evaluation: evaluation.map(evaluation_to_pb),
    }
}

fn evaluation_to_pb(e: &Evaluation) -> pb::Evaluation {
    use pb::evaluation::State;
    match e {
        Evaluation::Pending => pb::Evaluation { state: State::Pending as i32, ..Default::default() },
        Evaluation::Claimed { claimant, .. } => {
            pb::Evaluation { state: State::Claimed as i32, claimant: claimant.clone(), ..Default::default() }
        }
        Evaluation::Done { claimant, headline, report_uri, .. } => pb::Evaluation {
            state: State::Done as i32,
            claimant: claimant.clone(),
            headline: headline.iter().cloned().collect(),
            report_uri: report_uri.clone(),
            ..Default::default()
        },
        Evaluation::Skipped { reason } => {
            pb::Evaluation { state: State::Skipped as i32, skip_reason: reason.clone(), ..Default::default() }
        }
    }
}

fn kind_to_pb(k: Kind) -> pb::CheckpointKind {
    match k {
        Kind::Model => pb::CheckpointKind::Model,
        Kind::Policy => pb::CheckpointKind::Policy,
    }
}

fn kind_from_pb(k: i32) -> Result<Kind, Status> {
    match pb::CheckpointKind::try_from(k) {
        Ok(pb::CheckpointKind::Model) => Ok(Kind::Model),
        Ok(pb::CheckpointKind::Policy) => Ok(Kind::Policy),
        Err(_) => Err(Status::invalid_argument(format!("kind: unknown checkpoint kind {k}"))),
    }
}

fn registry_status(e: RegistryError) -> Status {
    match e {
        RegistryError::NotNewer { .. } | RegistryError::NotClaimant { .. } => {
            Status::failed_precondition(e.to_string())
        }
        RegistryError::UnknownVersion { .. } => Status::not_found(e.to_string()),
        RegistryError::AlreadyDone { .. } => Status::already_exists(e.to_string()),
        RegistryError::Io { .. } => Status::unavailable(e.to_string()),
        _ => Status::invalid_argument(e.to_string()),
    }
}

fn sorted(map: std::collections::HashMap<String, f64>) -> Vec<(String, f64)> {
    let mut v: Vec<(String, f64)> = map.into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

impl CoordinatorService {
    fn lease_ms(&self) -> i64 {
        self.state.claim_lease.as_millis() as i64
    }
}

#[tonic::async_trait]
impl Coordinator for CoordinatorService {
    async fn register(&self, request: Request<pb::RegisterRequest>) -> Result<Response<pb::RegisterResponse>, Status> {
        let req = request.into_inner();
        let role = match Role::try_from(req.role) {
            Ok(Role::Actor) => NodeRole::Actor,
            Ok(Role::Replay) => NodeRole::Replay,
            Ok(Role::Learner) => NodeRole::Learner,
            Ok(Role::Evaluator) => NodeRole::Evaluator,
            _ => return Err(Status::invalid_argument(format!("role: must be set to a known role, got {}", req.role))),
        };
        if role == NodeRole::Actor {
            if req.env_id.is_empty() {
                return Err(Status::invalid_argument("env_id: an actor must say which env it runs"));
            }
            let mut experiment = lock(&self.state.experiment);
            let was_open = experiment.env().is_none();
            experiment.admit(&req.env_id).map_err(|e| match e {
                ExperimentError::Mismatch { .. } | ExperimentError::BadEnv { .. } => {
                    Status::failed_precondition(e.to_string())
                }
                ExperimentError::UnknownEnv(_) => Status::invalid_argument(e.to_string()),
            })?;
            if let (true, Some(path), Some(toml)) = (was_open, &self.state.experiment_file, experiment.config_toml()) {
                if let Err(e) = std::fs::write(path, toml) {
                    eprintln!("warning: saving the experiment to {}: {e}", path.display());
                }
            }
        }
        if role == NodeRole::Replay && req.advertise.is_empty() {
            return Err(Status::invalid_argument("advertise: a replay node must say where it serves (HOST:PORT)"));
        }
        let actor_id = (role == NodeRole::Actor).then_some(req.actor_id);
        let mut m = lock(&self.state.membership);
        let mut map = lock(&self.state.shard_map);
        // A replay node that restarted at the same address replaces its previous registration at
        // once; a different node must wait until the holder's lease expires.
        if let (NodeRole::Replay, Some(wanted)) = (role, req.shard_id) {
            if let Some(Server::Node { id: old, address }) = map.slots().get(wanted as usize).cloned() {
                if address == req.advertise {
                    map.release(old);
                    m.remove(old);
                }
            }
        }
        let id = m.register(role, req.advertise.clone(), actor_id, req.incarnation, Instant::now());
        let mut shard_id = 0;
        if role == NodeRole::Replay {
            match map.assign(id, &req.advertise, req.shard_id) {
                Ok(slot) => {
                    shard_id = slot;
                    eprintln!("replay node {id} at {} serves shard slot {slot}; {map}", req.advertise);
                }
                Err(e) => {
                    m.remove(id);
                    return Err(match e {
                        ShardMapError::NoSuchSlot { .. } => Status::invalid_argument(e.to_string()),
                        ShardMapError::Hosted(_) => Status::failed_precondition(e.to_string()),
                        ShardMapError::Taken { .. } => Status::already_exists(e.to_string()),
                        ShardMapError::Full(_) => Status::resource_exhausted(e.to_string()),
                    });
                }
            }
            publish_map_gauges(&map);
        }
        metrics::counter!("dsm_coordinator_registrations_total").increment(1);
        metrics::gauge!("dsm_coordinator_nodes").set(m.len() as f64);
        Ok(Response::new(pb::RegisterResponse {
            node_id: id,
            lease_ms: m.lease().as_millis() as u64,
            heartbeat_ms: self.state.heartbeat.as_millis() as u64,
            shard_id,
            num_shards: map.num_slots(),
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let id = request.into_inner().node_id;
        let mut m = lock(&self.state.membership);
        m.heartbeat(id, Instant::now())
            .map_err(|e @ MembershipError::UnknownNode(_)| Status::not_found(e.to_string()))?;
        Ok(Response::new(pb::HeartbeatResponse { lease_ms: m.lease().as_millis() as u64 }))
    }

    async fn get_experiment(&self, _: Request<pb::GetExperimentRequest>) -> Result<Response<pb::Experiment>, Status> {
        let e = lock(&self.state.experiment);
        let (Some(id), Some(toml)) = (e.env(), e.config_toml()) else {
            return Err(Status::failed_precondition(
                "no experiment yet: start the coordinator with --config, or register an actor first",
            ));
        };
        Ok(Response::new(pb::Experiment {
            env_id: id.to_string(),
            seed: e.seed(),
            config_toml: toml.to_string(),
            window_steps: e.replay().window_steps,
            chunk_steps: e.replay().chunk_steps,
            max_in_flight_chunks: e.replay().max_in_flight_chunks,
        }))
    }

    async fn get_shard_map(&self, _: Request<pb::GetShardMapRequest>) -> Result<Response<pb::ShardMap>, Status> {
        let map = lock(&self.state.shard_map);
        Ok(Response::new(pb::ShardMap {
            version: map.version(),
            slots: map
                .slots()
                .iter()
                .enumerate()
                .map(|(i, s)| pb::ShardSlot {
                    shard_id: i as u32,
                    address: s.address().unwrap_or_default().to_string(),
                    node_id: s.node_id(),
                })
                .collect(),
        }))
    }

    async fn publish_checkpoint(
        &self,
        request: Request<pb::CheckpointEntry>,
    ) -> Result<Response<pb::PublishCheckpointResponse>, Status> {
        let e = request.into_inner();
        let kind = kind_from_pb(e.kind)?;
        let record = CheckpointRecord {
            version: e.version,
            step: e.step,
            uri: e.uri,
            metrics: sorted(e.metrics),
            published_unix_ms: unix_ms(),
            kind,
            fetch_address: e.fetch_address,
        };
        lock(&self.state.registry).publish(record.clone()).map_err(registry_status)?;
        metrics::counter!("dsm_coordinator_checkpoints_published_total", "kind" => kind.as_str()).increment(1);
        metrics::gauge!("dsm_coordinator_published_version", "kind" => kind.as_str()).set(record.version as f64);
        // No watcher is fine.
        let _ = self.state.watchers.send(record);
        Ok(Response::new(pb::PublishCheckpointResponse {}))
    }

    type WatchCheckpointsStream = Pin<Box<dyn Stream<Item = Result<pb::CheckpointEntry, Status>> + Send>>;

    async fn watch_checkpoints(
        &self,
        request: Request<pb::WatchCheckpointsRequest>,
    ) -> Result<Response<Self::WatchCheckpointsStream>, Status> {
        let req = request.into_inner();
        let kind = kind_from_pb(req.kind)?;
        // Subscribe before reading the backlog, so nothing published in between is missed; a
        // duplicate is filtered by version.
        let mut rx = self.state.watchers.subscribe();
        let backlog: Vec<pb::CheckpointEntry> = {
            let registry = lock(&self.state.registry);
            match req.from_version {
                Some(from) => registry.entries(kind, from).map(|(r, e)| to_pb(r, Some(e))).collect(),
                None => {
                    registry.latest(kind).map(|r| to_pb(r, registry.evaluation(kind, r.version))).into_iter().collect()
                }
            }
        };
        let state = self.state.clone();
        let mut closing = self.closing.clone();
        let stream = async_stream(move |tx| async move {
            let mut last = 0u64;
            for entry in backlog {
                last = entry.version;
                if tx.send(Ok(entry)).await.is_err() {
                    return;
                }
            }
            loop {
                let received = tokio::select! {
                    _ = closing.wait_for(|c| *c) => return,
                    r = rx.recv() => r,
                };
                // Entries to send now, with their evaluations as of now.
                let next: Vec<pb::CheckpointEntry> = match received {
                    Ok(r) if r.kind == kind && r.version > last => {
                        let registry = lock(&state.registry);
                        vec![to_pb(&r, registry.evaluation(kind, r.version))]
                    }
                    Ok(_) => continue,
                    // Too slow to keep up: every missed entry, from the registry.
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let registry = lock(&state.registry);
                        registry.entries(kind, last + 1).map(|(r, e)| to_pb(r, Some(e))).collect()
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                for entry in next {
                    last = entry.version;
                    if tx.send(Ok(entry)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(stream))
    }

    async fn list_checkpoints(
        &self,
        request: Request<pb::ListCheckpointsRequest>,
    ) -> Result<Response<pb::ListCheckpointsResponse>, Status> {
        let req = request.into_inner();
        let kind = kind_from_pb(req.kind)?;
        let registry = lock(&self.state.registry);
        let entries = registry.entries(kind, req.from_version).map(|(r, e)| to_pb(r, Some(e))).collect();
        Ok(Response::new(pb::ListCheckpointsResponse { entries }))
    }

    async fn claim_evaluation(
        &self,
        request: Request<pb::ClaimEvaluationRequest>,
    ) -> Result<Response<pb::ClaimEvaluationResponse>, Status> {
        use pb::claim_evaluation_response::Outcome;
        let req = request.into_inner();
        let kind = kind_from_pb(req.kind)?;
        let now = unix_ms();
        let outcome = lock(&self.state.registry)
            .claim(kind, req.version, &req.claimant, now, self.lease_ms())
            .map_err(registry_status)?;
        let lease_ms = self.lease_ms() as u64;
        let response = match outcome {
            ClaimOutcome::Granted { reclaimed, .. } => {
                metrics::counter!("dsm_coordinator_evaluations_claimed_total").increment(1);
                if let Some(old) = reclaimed {
                    metrics::counter!("dsm_coordinator_evaluation_leases_expired_total").increment(1);
                    eprintln!(
                        "evaluation of {} version {}: {old}'s lease ran out; {} takes it over",
                        kind.as_str(),
                        req.version,
                        req.claimant
                    );
                }
                pb::ClaimEvaluationResponse { outcome: Outcome::Granted as i32, lease_ms, holder: req.claimant }
            }
            ClaimOutcome::Held { claimant, .. } => {
                pb::ClaimEvaluationResponse { outcome: Outcome::Held as i32, lease_ms: 0, holder: claimant }
            }
            ClaimOutcome::Done => pb::ClaimEvaluationResponse { outcome: Outcome::Done as i32, ..Default::default() },
            ClaimOutcome::Skipped => {
                pb::ClaimEvaluationResponse { outcome: Outcome::Skipped as i32, ..Default::default() }
            }
        };
        Ok(Response::new(response))
    }

    async fn renew_evaluation(
        &self,
        request: Request<pb::RenewEvaluationRequest>,
    ) -> Result<Response<pb::RenewEvaluationResponse>, Status> {
        let req = request.into_inner();
        let kind = kind_from_pb(req.kind)?;
        lock(&self.state.registry)
            .renew(kind, req.version, &req.claimant, unix_ms(), self.lease_ms())
            .map_err(registry_status)?;
        Ok(Response::new(pb::RenewEvaluationResponse { lease_ms: self.lease_ms() as u64 }))
    }

    async fn publish_evaluation(
        &self,
        request: Request<pb::PublishEvaluationRequest>,
    ) -> Result<Response<pb::PublishEvaluationResponse>, Status> {
        let req = request.into_inner();
        let kind = kind_from_pb(req.kind)?;
        lock(&self.state.registry)
            .complete(kind, req.version, &req.claimant, sorted(req.headline), &req.report_uri, unix_ms())
            .map_err(registry_status)?;
        metrics::counter!("dsm_coordinator_evaluations_completed_total").increment(1);
        metrics::gauge!("dsm_coordinator_evaluated_version").set(req.version as f64);
        Ok(Response::new(pb::PublishEvaluationResponse {}))
    }

    async fn skip_evaluation(
        &self,
        request: Request<pb::SkipEvaluationRequest>,
    ) -> Result<Response<pb::SkipEvaluationResponse>, Status> {
        use pb::skip_evaluation_response::Outcome;
        let req = request.into_inner();
        let kind = kind_from_pb(req.kind)?;
        let outcome = lock(&self.state.registry)
            .skip(kind, req.version, &req.reason, &req.claimant, unix_ms())
            .map_err(registry_status)?;
        let outcome = match outcome {
            SkipOutcome::Skipped => {
                metrics::counter!("dsm_coordinator_evaluations_skipped_total").increment(1);
                Outcome::Skipped
            }
            SkipOutcome::AlreadyFinal => Outcome::AlreadyFinal,
            SkipOutcome::Held => Outcome::Held,
        };
        Ok(Response::new(pb::SkipEvaluationResponse { outcome: outcome as i32 }))
    }
}

/// A stream fed by a spawned task through a bounded channel.
fn async_stream<F, Fut>(f: F) -> Pin<Box<dyn Stream<Item = Result<pb::CheckpointEntry, Status>> + Send>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<pb::CheckpointEntry, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(f(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
