//! The actor process: `actor --env <id> --coordinator host:port`.
//!
//! 1. Register with the coordinator (retrying with backoff while it is not up, for at most
//!    `connect_timeout`) and heartbeat. A coordinator that forgot this actor (it restarted) gets
//!    the same registration again; one that is unreachable is retried with backoff, never fatal.
//! 2. Fetch the experiment (env config, seed, chunk size) and the shard map.
//! 3. Step E envs on a simulation thread; each env's chunks go to the shard its stream hashes to,
//!    through a bounded queue per shard and one writer per shard. A writer whose stream breaks
//!    re-resolves its slot through the shared [`ShardResolver`], reconnects and resends what was
//!    not acknowledged; meanwhile its full queue holds the simulation back.
//! 4. On shutdown: stop stepping, send the partial chunks, wait up to `drain` for their
//!    acknowledgements (reconnecting if needed), and report what is still unacknowledged.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use client::connect::{status_line, RPC_DEADLINE};
use client::coordinator::{CoordinatorHandle, Registration, Role};
use tokio::sync::{mpsc, watch};

use super::chunker::{Chunk, Chunker};
use super::resolver::ShardResolver;
use super::writer::{ShardWriter, WriterReport};
use crate::envs::{EnvConfig, EnvId, VecEnv};

#[derive(Debug, Clone)]
pub struct ActorOptions {
    pub env: EnvId,
    pub coordinator: String,
    pub envs: usize,
    pub actor_id: u64,
    /// How long to wait for acknowledgements after a shutdown signal.
    pub drain: Duration,
    /// How long to keep retrying an unreachable coordinator at start.
    pub connect_timeout: Duration,
    /// Stop after this many steps per env (tests, benchmarks); `None` runs until shutdown.
    pub max_steps: Option<u64>,
    /// Where `riab-goal`'s trained policy is cached (`<workdir>/policies/`).
    pub workdir: PathBuf,
}

impl ActorOptions {
    /// The command line's defaults: 16 envs, actor 0, a 10 s drain, 60 s to reach the
    /// coordinator, no step limit.
    pub fn new(env: EnvId, coordinator: impl Into<String>) -> ActorOptions {
        ActorOptions {
            env,
            coordinator: coordinator.into(),
            envs: 16,
            actor_id: 0,
            drain: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(60),
            max_steps: None,
            workdir: PathBuf::from("dsm-work"),
        }
    }
}

/// What an actor did.
#[derive(Debug, Clone, Default)]
pub struct ActorReport {
    pub steps: u64,
    pub incarnation: u64,
    pub writers: Vec<WriterReport>,
    /// (env index, seq) of chunks the simulation could not hand to a writer (it had stopped).
    pub unsent: Vec<(u32, u64)>,
    /// Times the actor registered again with a coordinator that had forgotten it.
    pub reregistrations: u64,
}

impl ActorReport {
    /// Chunks produced and never acknowledged: sent or queued ones, and ones never handed over.
    pub fn unacknowledged(&self) -> usize {
        self.writers.iter().map(|w| w.unacknowledged.len()).sum::<usize>() + self.unsent.len()
    }

    /// Steps acknowledged by the shards, duplicate acknowledgements included.
    pub fn acked_steps(&self) -> u64 {
        self.writers.iter().map(|w| w.acked_steps).sum()
    }

    pub fn resent_chunks(&self) -> u64 {
        self.writers.iter().map(|w| w.resent_chunks).sum()
    }

    pub fn reconnects(&self) -> u64 {
        self.writers.iter().map(|w| w.reconnects).sum()
    }
}

pub async fn run(opts: ActorOptions, shutdown: impl Future<Output = ()> + Send) -> Result<ActorReport> {
    let incarnation = common::incarnation::new_incarnation();
    let coordinator =
        CoordinatorHandle::connect(&opts.coordinator, opts.connect_timeout).await.context("--coordinator")?;
    let registration = Registration {
        env_id: opts.env.to_string(),
        actor_id: opts.actor_id,
        ..Registration::new(Role::Actor, incarnation)
    };
    let lease = coordinator
        .register(&registration)
        .await
        .map_err(|s| anyhow::anyhow!(status_line("registering with the coordinator", &s)))?;
    // Registering fixed the experiment's env if nothing had, so there is one now.
    let Some(experiment) = coordinator.experiment().await? else {
        bail!("the coordinator has no experiment although this actor registered");
    };
    let env_config = EnvConfig::resolve(opts.env, &experiment.config.section("env"))?;
    let map = coordinator.shard_map(RPC_DEADLINE).await?;
    if map.num_slots() == 0 {
        bail!("the coordinator's shard map has no slots");
    }
    let k = map.num_slots();
    eprintln!(
        "actor {} (incarnation {incarnation:016x}): {} × {} into {k} shards, chunks of {} steps",
        opts.actor_id, opts.envs, opts.env, experiment.chunk_steps
    );

    // Heartbeats keep the lease (registering again with a coordinator that forgot this actor);
    // they stop when the keeper is dropped.
    let lease = coordinator.keep_lease(registration, lease);

    // Streams → shards, one writer per shard used.
    let mut by_shard: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for e in 0..opts.envs as u32 {
        by_shard.entry(common::shard::shard_of(opts.actor_id, incarnation, e, k)).or_default().push(e);
    }
    // riab-goal's policy: trained once per experiment and cached under the workdir, off the async
    // threads (the heartbeats keep the lease meanwhile).
    let (config, workdir, policy_seed) = (env_config.clone(), opts.workdir.clone(), experiment.seed);
    let policy = tokio::task::spawn_blocking(move || {
        crate::goal_policy::for_env(&config, policy_seed, &workdir, crate::goal_policy::log_event)
    })
    .await
    .context("training the goal policy")??
    .map(|(policy, report)| {
        eprintln!("{}", report.summary());
        policy
    });
    let env = VecEnv::new(&env_config, policy_seed, opts.actor_id, opts.envs, policy)?;
    let shape = env.shape();
    let max_in_flight = experiment.max_in_flight_chunks.max(1) as usize;
    let mut senders: BTreeMap<u32, mpsc::Sender<Chunk>> = BTreeMap::new();
    let mut writers = Vec::new();
    let resolver = Arc::new(ShardResolver::new(coordinator.clone(), map));
    // Turns true on shutdown or when the simulation ends: each writer's drain clock starts then,
    // even while it is reconnecting and cannot see its queue close.
    let (drain_tx, drain_rx) = watch::channel(false);
    for (&shard, envs) in &by_shard {
        let (tx, rx) = mpsc::channel(max_in_flight);
        senders.insert(shard, tx);
        let writer = ShardWriter {
            shard_id: shard,
            actor_id: opts.actor_id,
            incarnation,
            env_id: opts.env.to_string(),
            obs_dim: shape.obs_dim as u32,
            action_dim: shape.action_dim as u32,
            has_rewards: shape.has_rewards,
            max_in_flight,
        };
        writers.push(tokio::spawn(writer.run(resolver.clone(), envs.clone(), rx, drain_rx.clone(), opts.drain)));
    }

    // The simulation thread: blocking sends into bounded queues are the back-pressure.
    let stop = Arc::new(AtomicBool::new(false));
    let sim_stop = stop.clone();
    let (envs, actor_id, chunk_steps, max_steps) =
        (opts.envs, opts.actor_id, experiment.chunk_steps.max(1) as usize, opts.max_steps);
    let shard_of_env: Vec<u32> =
        (0..envs as u32).map(|e| common::shard::shard_of(actor_id, incarnation, e, k)).collect();
    let sim = tokio::task::spawn_blocking(move || -> (u64, Vec<(u32, u64)>) {
        let mut env = env;
        let mut frame = env.new_frame();
        let mut chunker = Chunker::new(envs, env.shape(), chunk_steps);
        let mut steps = 0u64;
        let mut alive = true;
        let mut unsent = Vec::new();
        let mut send = |c: Chunk, alive: &mut bool| {
            if let Err(mpsc::error::SendError(c)) = senders[&shard_of_env[c.env_index as usize]].blocking_send(c) {
                unsent.push((c.env_index, c.seq));
                *alive = false; // a writer ended; stop stepping
            }
        };
        while alive && !sim_stop.load(Ordering::Relaxed) && max_steps.is_none_or(|m| steps < m) {
            env.step(&mut frame);
            steps += 1;
            metrics::counter!("dsm_actor_env_steps_total").increment(envs as u64);
            chunker.push(&frame, |c| send(c, &mut alive));
        }
        if alive {
            chunker.flush(|c| send(c, &mut alive));
        }
        (steps, unsent)
    });

    tokio::pin!(shutdown);
    let sim_result = {
        let mut sim = sim;
        tokio::select! {
            r = &mut sim => r,
            () = &mut shutdown => {
                eprintln!("shutting down: draining for at most {:?}", opts.drain);
                stop.store(true, Ordering::Relaxed);
                let _ = drain_tx.send(true);
                sim.await
            }
        }
    };
    // The simulation has ended: whatever the writers hold is all there will be.
    let _ = drain_tx.send(true);
    let (steps, unsent) = sim_result.context("the simulation thread panicked")?;
    let mut report = ActorReport { steps, incarnation, writers: Vec::new(), unsent, reregistrations: 0 };
    let mut first_error = None;
    for w in writers {
        match w.await.context("a writer task panicked")? {
            Ok(r) => report.writers.push(r),
            Err(e) => {
                eprintln!("error: {e}");
                first_error.get_or_insert(e);
            }
        }
    }
    report.reregistrations = lease.reregistrations();
    drop(lease);
    let unacked = report.unacknowledged();
    if unacked > 0 {
        let list: Vec<String> = report
            .writers
            .iter()
            .flat_map(|w| w.unacknowledged.iter().map(move |(e, s)| format!("shard {} env {e} seq {s}", w.shard_id)))
            .chain(report.unsent.iter().map(|(e, s)| format!("env {e} seq {s} (never sent)")))
            .collect();
        eprintln!("{unacked} chunks still unacknowledged at exit: {}", list.join(", "));
    }
    eprintln!(
        "acknowledged {} steps, resent {} chunks after {} reconnects",
        report.acked_steps(),
        report.resent_chunks(),
        report.reconnects()
    );
    if let Some(e) = first_error {
        return Err(e.into());
    }
    Ok(report)
}
