//! The coordinator as every client sees it: one [`CoordinatorHandle`] per process, over one
//! channel, for registering, keeping the lease, fetching the experiment and the shard map, and
//! watching the checkpoint registry.
//!
//! Answers are converted to domain types here (through `proto::convert`), so the roles' own code
//! — the actor's env config, the learner's horizon check, a replay node's `[replay]` — takes an
//! [`ExperimentSpec`] or [`ShardAddresses`], never a prost message. Registry entries stay wire
//! messages for now ([`pb::CheckpointEntry`]): the registry's calls are used one for one by the
//! learner's publisher and the evaluator, and [`CoordinatorHandle::rpc`] hands them the client.
//!
//! Every unary call carries a deadline ([`crate::connect::RPC_DEADLINE`]); every retry backs off
//! with jitter. Waiting is bounded by a caller's patience at start (a coordinator that is not up
//! yet, an experiment no actor has fixed yet, a slot a dead node's lease still holds); later, a
//! lost coordinator is never fatal: [`CoordinatorHandle::keep_lease`] retries until it is back
//! and registers again if it forgot the node.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::experiment::ExperimentSpec;
use common::shard::ShardAddresses;
use proto::pb::coordinator_client::CoordinatorClient;
use proto::pb::{self};
use proto::FieldViolation;
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic::Code;

use crate::backoff::Backoff;
use crate::connect::{self, request, status_line, ConnectError};

/// First delay between attempts at start (connecting, waiting for the experiment).
const START_BASE: Duration = Duration::from_millis(100);
/// Longest delay between attempts at start.
const START_CAP: Duration = Duration::from_secs(5);
/// Longest delay between registrations refused because a slot is still held: a dead node's lease
/// frees it within one lease period (10 s by default), so retry often.
const REGISTER_CAP: Duration = Duration::from_secs(2);
/// First and longest delay between reconnections of a registry watch.
const WATCH_BASE: Duration = Duration::from_millis(200);
const WATCH_CAP: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("{}", status_line(what, status))]
    Rpc { what: &'static str, status: tonic::Status },
    #[error("the coordinator's experiment: {0}")]
    Malformed(#[from] FieldViolation),
    #[error("the coordinator at {address} has no experiment after {patience:?} ({why})")]
    NoExperiment { address: String, patience: Duration, why: String },
}

impl ClientError {
    /// The status of a failed call, if that is what this is.
    pub fn status(&self) -> Option<&tonic::Status> {
        match self {
            ClientError::Rpc { status, .. } => Some(status),
            _ => None,
        }
    }
}

/// A node's role, as the coordinator's membership records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Actor,
    Replay,
    Learner,
    Evaluator,
}

impl Role {
    /// The role's name in metric names (`dsm_<role>_…`).
    pub fn name(self) -> &'static str {
        match self {
            Role::Actor => "actor",
            Role::Replay => "replay",
            Role::Learner => "learner",
            Role::Evaluator => "evaluator",
        }
    }
}

impl From<Role> for pb::Role {
    fn from(r: Role) -> pb::Role {
        match r {
            Role::Actor => pb::Role::Actor,
            Role::Replay => pb::Role::Replay,
            Role::Learner => pb::Role::Learner,
            Role::Evaluator => pb::Role::Evaluator,
        }
    }
}

/// What a node tells the coordinator when it registers. A node that the coordinator forgot (it
/// restarted) registers again with the same registration, so its identity — actor id,
/// incarnation, shard slot — and with it its streams stay its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub role: Role,
    /// `HOST:PORT` others reach this node at; empty for nodes that serve nothing.
    pub advertise: String,
    /// Actors: the env they run (the first actor fixes the experiment's env when no config did).
    pub env_id: String,
    pub actor_id: u64,
    pub incarnation: u64,
    /// Replay nodes: the slot they want back (their newest checkpoint's); `None` takes the
    /// lowest free one.
    pub shard_id: Option<u32>,
}

impl Registration {
    /// A registration with only a role and an incarnation (learners, evaluators).
    pub fn new(role: Role, incarnation: u64) -> Registration {
        Registration { role, advertise: String::new(), env_id: String::new(), actor_id: 0, incarnation, shard_id: None }
    }
}

impl From<&Registration> for pb::RegisterRequest {
    fn from(r: &Registration) -> pb::RegisterRequest {
        pb::RegisterRequest {
            role: pb::Role::from(r.role) as i32,
            advertise: r.advertise.clone(),
            env_id: r.env_id.clone(),
            actor_id: r.actor_id,
            incarnation: r.incarnation,
            shard_id: r.shard_id,
        }
    }
}

/// What the coordinator granted a registered node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub node_id: u64,
    /// How long the node stays registered without a heartbeat.
    pub lease: Duration,
    /// How often to heartbeat (at least every 100 ms: a zero from the server is not a busy loop).
    pub heartbeat: Duration,
    /// Replay nodes: the slot they serve.
    pub shard_id: u32,
    /// K, the experiment's number of shard slots.
    pub num_shards: u32,
}

impl From<pb::RegisterResponse> for Lease {
    fn from(r: pb::RegisterResponse) -> Lease {
        Lease {
            node_id: r.node_id,
            lease: Duration::from_millis(r.lease_ms),
            heartbeat: Duration::from_millis(r.heartbeat_ms.max(100)),
            shard_id: r.shard_id,
            num_shards: r.num_shards,
        }
    }
}

/// What [`CoordinatorHandle::wait_for_experiment`] does while the coordinator answers but has no
/// experiment yet (it was started without `--config` and no actor has registered).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoExperimentYet {
    /// Give up when the patience runs out: a learner or an evaluator, which a person started
    /// against an experiment they expect to exist.
    GiveUp,
    /// Wait as long as it takes: a replay node, started before the actors that fix the
    /// experiment. The patience then bounds only the time the coordinator does not answer.
    KeepWaiting,
}

/// The coordinator at one address. Cheap to clone: clones share the channel.
#[derive(Debug, Clone)]
pub struct CoordinatorHandle {
    address: String,
    client: CoordinatorClient<Channel>,
}

impl CoordinatorHandle {
    /// Connects, retrying with backoff and jitter while the coordinator is not reachable, for at
    /// most `patience` (zero: one attempt). Later outages need no new handle: the channel
    /// reconnects by itself.
    pub async fn connect(address: &str, patience: Duration) -> Result<CoordinatorHandle, ClientError> {
        let mut backoff = Backoff::new(START_BASE, START_CAP, common::incarnation::new_incarnation());
        let channel = connect::connect_patiently("coordinator", address, patience, &mut backoff).await?;
        Ok(CoordinatorHandle { address: address.to_string(), client: connect::coordinator_client(channel) })
    }

    /// A handle whose channel connects on its first call (a coordinator that is down shows up as
    /// that call's error). Must be called within a tokio runtime.
    pub fn connect_lazy(address: &str) -> Result<CoordinatorHandle, ClientError> {
        let channel = connect::connect_lazy(address)?;
        Ok(CoordinatorHandle { address: address.to_string(), client: connect::coordinator_client(channel) })
    }

    /// Connects and fetches the experiment, waiting with backoff while the coordinator is not up
    /// (for at most `patience` since the call) or has no experiment yet (no actor has fixed its
    /// env; how long is `no_experiment`'s choice).
    pub async fn connect_for_experiment(
        address: &str,
        patience: Duration,
        no_experiment: NoExperimentYet,
    ) -> Result<(CoordinatorHandle, ExperimentSpec), ClientError> {
        let start = Instant::now();
        let handle = CoordinatorHandle::connect(address, patience).await?;
        let experiment = handle.wait_for_experiment(patience.saturating_sub(start.elapsed()), no_experiment).await?;
        Ok((handle, experiment))
    }

    /// The `HOST:PORT` this handle talks to.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The generated client (message limits set), for the registry calls this handle does not
    /// wrap (publish, list, claim, renew, skip). Give each call a deadline
    /// ([`connect::request`]).
    pub fn rpc(&self) -> CoordinatorClient<Channel> {
        self.client.clone()
    }

    /// Registers once.
    pub async fn register(&self, registration: &Registration) -> Result<Lease, tonic::Status> {
        let r = self.client.clone().register(request(pb::RegisterRequest::from(registration))).await?;
        Ok(r.into_inner().into())
    }

    /// Registers, retrying with backoff for at most `patience` while the wanted slot (or every
    /// slot) is held by a lease that has not expired yet — a SIGKILLed predecessor at another
    /// address — or the coordinator does not answer. Any other refusal is returned at once.
    pub async fn register_patiently(
        &self,
        registration: &Registration,
        patience: Duration,
    ) -> Result<Lease, ClientError> {
        let start = Instant::now();
        let mut backoff = Backoff::new(START_BASE, REGISTER_CAP, registration.incarnation ^ 2);
        loop {
            match self.register(registration).await {
                Ok(lease) => return Ok(lease),
                // Taken or full: a dead node's lease frees its slot within one lease period.
                Err(s)
                    if matches!(
                        s.code(),
                        Code::AlreadyExists | Code::ResourceExhausted | Code::Unavailable | Code::DeadlineExceeded
                    ) && start.elapsed() < patience =>
                {
                    let delay = backoff.next_delay();
                    eprintln!("{}; retrying in {delay:.1?}", status_line("registering", &s));
                    tokio::time::sleep(delay).await;
                }
                Err(status) => return Err(ClientError::Rpc { what: "registering with the coordinator", status }),
            }
        }
    }

    /// One heartbeat for `node_id`, with `deadline`. NOT_FOUND means the coordinator no longer
    /// knows the node (it restarted, or the lease expired).
    pub async fn heartbeat(&self, node_id: u64, deadline: Duration) -> Result<(), tonic::Status> {
        let r = connect::with_deadline(pb::HeartbeatRequest { node_id }, deadline);
        self.client.clone().heartbeat(r).await.map(|_| ())
    }

    /// Keeps `lease` (granted for `registration`) alive in a background task until the returned
    /// keeper is dropped: a heartbeat every `lease.heartbeat`. A coordinator that answers
    /// NOT_FOUND has forgotten the node (node ids are drawn afresh per coordinator start), so the
    /// node registers again with the same registration, and [`LeaseKeeper::node_id`] follows. An
    /// unreachable coordinator is retried with backoff (100 ms up to the heartbeat period) and
    /// logged once per outage; it never stops the node, whose data path does not need it.
    ///
    /// Counts `dsm_<role>_reregistrations_total` and `dsm_<role>_heartbeat_failures_total`.
    pub fn keep_lease(&self, registration: Registration, lease: Lease) -> LeaseKeeper {
        let node_id = Arc::new(AtomicU64::new(lease.node_id));
        let reregistrations = Arc::new(AtomicU64::new(0));
        let task =
            tokio::spawn(lease_loop(self.clone(), registration, lease, node_id.clone(), reregistrations.clone()));
        LeaseKeeper { node_id, reregistrations, task }
    }

    /// The experiment, or `None` while the coordinator has none (no `--config` and no actor
    /// registered yet).
    pub async fn experiment(&self) -> Result<Option<ExperimentSpec>, ClientError> {
        match self.client.clone().get_experiment(request(pb::GetExperimentRequest {})).await {
            Ok(e) => Ok(Some(ExperimentSpec::try_from(e.into_inner())?)),
            Err(s) if s.code() == Code::FailedPrecondition => Ok(None),
            Err(status) => Err(ClientError::Rpc { what: "fetching the experiment", status }),
        }
    }

    /// The experiment, waiting with backoff while the coordinator does not answer (for at most
    /// `patience` since the call) or has none yet (for at most `patience` too, or for as long as it
    /// takes: `no_experiment`). A refusal other than "none yet" or "not reachable", and a
    /// malformed experiment, are returned at once.
    pub async fn wait_for_experiment(
        &self,
        patience: Duration,
        no_experiment: NoExperimentYet,
    ) -> Result<ExperimentSpec, ClientError> {
        let start = Instant::now();
        let mut backoff = Backoff::new(START_BASE, START_CAP, common::incarnation::new_incarnation());
        let mut said_waiting = false;
        loop {
            let (why, bounded) = match self.experiment().await {
                Ok(Some(e)) => return Ok(e),
                Ok(None) => (
                    "no experiment yet: the coordinator has none until an actor registers".to_string(),
                    no_experiment == NoExperimentYet::GiveUp,
                ),
                Err(ClientError::Rpc { status, .. })
                    if matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded) =>
                {
                    (status_line("not reachable", &status), true)
                }
                Err(e) => return Err(e),
            };
            if bounded && start.elapsed() >= patience {
                return Err(ClientError::NoExperiment { address: self.address.clone(), patience, why });
            }
            let delay = backoff.next_delay();
            if !said_waiting || !why.starts_with("no experiment") {
                eprintln!("coordinator {}: {why}; retrying in {delay:.1?}", self.address);
                said_waiting = true;
            }
            tokio::time::sleep(delay).await;
        }
    }

    /// The shard map, with `deadline`.
    pub async fn shard_map(&self, deadline: Duration) -> Result<ShardAddresses, ClientError> {
        let r = connect::with_deadline(pb::GetShardMapRequest {}, deadline);
        match self.client.clone().get_shard_map(r).await {
            Ok(map) => Ok(ShardAddresses::try_from(map.into_inner())?),
            Err(status) => Err(ClientError::Rpc { what: "fetching the shard map", status }),
        }
    }

    /// Opens `WatchCheckpoints` for `kind`: with `from_version` unset, the latest entry first (if
    /// any), then every new one; set, every entry from that version on (the backlog, oldest
    /// first), then every new one. The stream is long-lived and has no deadline; HTTP/2 keepalive
    /// detects a dead coordinator.
    pub async fn watch_checkpoints(
        &self,
        kind: pb::CheckpointKind,
        from_version: Option<u64>,
    ) -> Result<tonic::Streaming<pb::CheckpointEntry>, tonic::Status> {
        let r = pb::WatchCheckpointsRequest { kind: kind as i32, from_version };
        Ok(self.client.clone().watch_checkpoints(r).await?.into_inner())
    }

    /// Follows `WatchCheckpoints` for `kind` from `from_version` into `tx` until `tx` closes,
    /// reopening the watch with backoff after an error or a coordinator restart, from the version
    /// after the last one seen (so nothing is missed and nothing repeats).
    pub async fn follow_checkpoints(
        self,
        kind: pb::CheckpointKind,
        mut from_version: u64,
        tx: mpsc::Sender<pb::CheckpointEntry>,
    ) {
        let mut backoff = Backoff::new(WATCH_BASE, WATCH_CAP, common::incarnation::new_incarnation());
        loop {
            if let Ok(mut stream) = self.watch_checkpoints(kind, Some(from_version)).await {
                backoff.reset();
                while let Ok(Some(entry)) = stream.message().await {
                    from_version = entry.version + 1;
                    if tx.send(entry).await.is_err() {
                        return;
                    }
                }
            }
            tokio::select! {
                () = tokio::time::sleep(backoff.next_delay()) => {}
                () = tx.closed() => return,
            }
        }
    }
}

/// A lease kept alive in the background ([`CoordinatorHandle::keep_lease`]); dropping it stops
/// the heartbeats (the lease then expires on its own).
pub struct LeaseKeeper {
    node_id: Arc<AtomicU64>,
    reregistrations: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl LeaseKeeper {
    /// The node's current id (it changes when the node registers again).
    pub fn node_id(&self) -> u64 {
        self.node_id.load(Ordering::Relaxed)
    }

    /// Times the node registered again with a coordinator that had forgotten it.
    pub fn reregistrations(&self) -> u64 {
        self.reregistrations.load(Ordering::Relaxed)
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The lease keeper's two counters, named for the role that keeps the lease, served at 0 from
/// the start.
pub fn register_lease_metrics(role: &str) {
    use common::telemetry::{register_one, Kind};
    register_one(
        format!("dsm_{role}_heartbeat_failures_total"),
        Kind::Counter,
        "heartbeats that failed (retried with backoff)",
        &[],
    );
    register_one(
        format!("dsm_{role}_reregistrations_total"),
        Kind::Counter,
        "registrations again after the coordinator forgot this node",
        &[],
    );
}

async fn lease_loop(
    coordinator: CoordinatorHandle,
    registration: Registration,
    lease: Lease,
    node_id: Arc<AtomicU64>,
    reregistrations: Arc<AtomicU64>,
) {
    let role = registration.role.name();
    register_lease_metrics(role);
    let mut every = lease.heartbeat;
    let seed = common::rng::derive_seed(registration.incarnation, &["lease".into()]);
    let mut backoff = Backoff::new(Duration::from_millis(100), every.max(Duration::from_millis(100)), seed);
    let mut failing_since: Option<Instant> = None;
    let mut delay = every;
    loop {
        tokio::time::sleep(delay).await;
        let id = node_id.load(Ordering::Relaxed);
        let result = match coordinator.heartbeat(id, every.max(Duration::from_secs(1))).await {
            Ok(()) => Ok(()),
            Err(s) if s.code() == Code::NotFound => match coordinator.register(&registration).await {
                Ok(granted) => {
                    let slot = registration.shard_id.map(|s| format!(" for shard slot {s}")).unwrap_or_default();
                    eprintln!(
                        "the coordinator no longer knew node {id} (did it restart?); registered again{slot} as node {}",
                        granted.node_id
                    );
                    if let Some(wanted) = registration.shard_id.filter(|&w| w != granted.shard_id) {
                        eprintln!("error: asked for shard slot {wanted} but was given {}", granted.shard_id);
                    }
                    node_id.store(granted.node_id, Ordering::Relaxed);
                    every = granted.heartbeat;
                    reregistrations.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!(format!("dsm_{role}_reregistrations_total")).increment(1);
                    Ok(())
                }
                Err(s) => Err(status_line("registering again", &s)),
            },
            Err(s) => Err(status_line("heartbeat failed", &s)),
        };
        match result {
            Ok(()) => {
                if let Some(t) = failing_since.take() {
                    eprintln!("coordinator reachable again after {:.1} s", t.elapsed().as_secs_f64());
                }
                backoff.reset();
                delay = every;
            }
            Err(why) => {
                if failing_since.is_none() {
                    eprintln!("{why}; retrying with backoff");
                    failing_since = Some(Instant::now());
                }
                metrics::counter!(format!("dsm_{role}_heartbeat_failures_total")).increment(1);
                delay = backoff.next_delay();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registration_and_its_answer_convert() {
        let r = Registration { shard_id: Some(3), advertise: "h:1".into(), ..Registration::new(Role::Replay, 9) };
        let wire = pb::RegisterRequest::from(&r);
        assert_eq!(
            (wire.role, wire.advertise.as_str(), wire.incarnation, wire.shard_id),
            (pb::Role::Replay as i32, "h:1", 9, Some(3))
        );
        let lease = Lease::from(pb::RegisterResponse {
            node_id: 4,
            lease_ms: 10_000,
            heartbeat_ms: 0,
            shard_id: 3,
            num_shards: 4,
        });
        assert_eq!(lease.heartbeat, Duration::from_millis(100), "a zero heartbeat period is not a busy loop");
        assert_eq!((lease.node_id, lease.lease, lease.shard_id, lease.num_shards), (4, Duration::from_secs(10), 3, 4));
    }

    #[tokio::test]
    async fn an_unreachable_coordinator_is_reported_after_the_patience() {
        let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
        let err = CoordinatorHandle::connect(&addr, Duration::ZERO).await.unwrap_err().to_string();
        assert!(err.contains("not reachable") && err.contains(&addr), "{err}");
    }
}
