//! What `dsm up` runs: every role's binary, arguments, directory, log, metrics address and how it
//! shows that it is up, decided before anything starts, so that a bad config or a missing binary
//! fails in one line with nothing started.
//!
//! The roles and their order: the coordinator (with no shard in-process), K standalone `replay`
//! shards, N actors, the learner (fed by the replay store), one evaluator. Each has its own
//! directory `DIR/<role>/` and its log `DIR/logs/<role>.log`.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::process::Launch;

/// The binaries `dsm up` starts, all expected beside `dsm` itself.
pub const ROLE_BINARIES: [&str; 5] = ["coordinator", "replay", "actor", "learner", "evaluator"];

/// What the user asked for (the `dsm up` flags, resolved).
#[derive(Debug, Clone)]
pub struct UpOptions {
    pub config: PathBuf,
    pub sets: Vec<String>,
    pub workdir: PathBuf,
    /// Learner iterations in all (a resumed run continues up to this).
    pub steps: u64,
    pub actors: u32,
    pub envs: u32,
    /// Env steps to simulate over all actors and envs together; 0: stream until stopped.
    pub env_steps: u64,
    pub shards: Option<u32>,
    pub listen: SocketAddr,
    /// First metrics port (roles take consecutive ports); 0: any free port per role.
    pub metrics_port: u16,
    pub restart: bool,
    pub plain: bool,
    /// Where the role binaries are (beside `dsm`).
    pub bin_dir: PathBuf,
}

/// The kinds of role, in start order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Coordinator,
    Replay,
    Actor,
    Learner,
    Evaluator,
}

impl Kind {
    /// The order in which roles stop: data producers first, so that nothing is lost; the store
    /// and the control plane last, because the others report to them while they stop.
    pub const STOP_ORDER: [Kind; 5] = [Kind::Actor, Kind::Learner, Kind::Evaluator, Kind::Replay, Kind::Coordinator];
}

/// How a started role shows that it is up.
#[derive(Debug, Clone, Copy)]
pub enum Ready {
    /// It answers `grpc.health.v1` SERVING at this address (the roles that serve gRPC).
    Health(SocketAddr),
    /// It serves `/metrics` at this address (actors and the evaluator serve no gRPC).
    Metrics(SocketAddr),
}

/// One role, ready to start.
#[derive(Debug, Clone)]
pub struct RoleSpec {
    /// `coordinator`, `replay-0`, `actor-0`, `learner`, `evaluator`.
    pub name: String,
    pub kind: Kind,
    pub launch: Launch,
    pub ready: Ready,
    pub metrics: SocketAddr,
    /// How long it may take to stop after SIGTERM before it is killed.
    pub stop_within: Duration,
}

/// The whole plan.
#[derive(Debug, Clone)]
pub struct Plan {
    pub env: String,
    pub coordinator: SocketAddr,
    pub roles: Vec<RoleSpec>,
    /// Actor i's metrics address and directory; their `--max-steps` is decided once the shards
    /// have said how much of the recording they already hold (a resumed run).
    actor_slots: Vec<(SocketAddr, PathBuf)>,
    options: UpOptions,
}

impl Plan {
    /// Checks the binaries and the config and chooses every address. Nothing is started.
    pub fn new(options: &UpOptions) -> Result<Plan> {
        for name in ROLE_BINARIES {
            let path = options.bin_dir.join(name);
            if !path.is_file() {
                bail!(
                    "role binary `{name}` not found beside dsm (looked for {}); build every role with `cargo build --release`",
                    path.display()
                );
            }
        }
        anyhow::ensure!(options.actors >= 1, "--actors must be at least 1");
        anyhow::ensure!(options.envs >= 1, "--envs must be at least 1");
        anyhow::ensure!(options.steps >= 1, "--steps must be at least 1");
        let mut doc = common::config::ConfigDoc::load(&options.config)?;
        doc.apply_sets(&options.sets)?;
        let env = doc
            .experiment()?
            .env
            .with_context(|| format!("--config {}: dsm up needs experiment.env", options.config.display()))?
            .to_string();
        let config_shards = doc.section("replay").get("shards").and_then(|v| v.as_integer());
        let shards = match (options.shards, config_shards) {
            (Some(k), _) => k,
            (None, Some(k)) if k >= 1 => k as u32,
            (None, Some(k)) => bail!("replay.shards = {k}: must be at least 1"),
            (None, None) => 2,
        };
        anyhow::ensure!(shards >= 1, "--shards must be at least 1");

        let dir = &options.workdir;
        let mut metrics = MetricsPorts::new(options.metrics_port, 3 + shards as usize + options.actors as usize)?;
        let bin = |name: &str| options.bin_dir.join(name);
        let log = |role: &str| dir.join("logs").join(format!("{role}.log"));
        let path = |p: &Path| p.display().to_string();
        let config = path(&options.config);
        let coordinator = options.listen;
        let with_sets = |mut args: Vec<String>, sets: &mut dyn Iterator<Item = &String>| {
            for s in sets {
                args.push("--set".into());
                args.push(s.clone());
            }
            args
        };

        let mut roles = Vec::new();
        let m = metrics.next()?;
        let args = vec![
            "--config".into(),
            config.clone(),
            "--listen".into(),
            coordinator.to_string(),
            "--shards".into(),
            shards.to_string(),
            "--hosted-shards".into(),
            "0".into(),
            "--workdir".into(),
            path(&dir.join("coordinator")),
            "--metrics-addr".into(),
            m.to_string(),
        ];
        roles.push(RoleSpec {
            name: "coordinator".into(),
            kind: Kind::Coordinator,
            launch: Launch {
                binary: bin("coordinator"),
                args: with_sets(args, &mut options.sets.iter()),
                log: log("coordinator"),
            },
            ready: Ready::Health(coordinator),
            metrics: m,
            stop_within: Duration::from_secs(30),
        });
        for i in 0..shards {
            let name = format!("replay-{i}");
            let m = metrics.next()?;
            let listen = metrics.free()?;
            let args = vec![
                "--coordinator".into(),
                coordinator.to_string(),
                "--listen".into(),
                listen.to_string(),
                "--workdir".into(),
                path(&dir.join(&name)),
                "--metrics-addr".into(),
                m.to_string(),
            ];
            roles.push(RoleSpec {
                name: name.clone(),
                kind: Kind::Replay,
                launch: Launch { binary: bin("replay"), args, log: log(&name) },
                ready: Ready::Health(listen),
                metrics: m,
                // A full shard's checkpoint (1M riab steps, 202 MB) takes about half a second.
                stop_within: Duration::from_secs(60),
            });
        }
        let mut actor_slots = Vec::new();
        for i in 0..options.actors {
            actor_slots.push((metrics.next()?, dir.join(format!("actor-{i}"))));
        }
        let m = metrics.next()?;
        let listen = metrics.free()?;
        let args = vec![
            "--config".into(),
            config.clone(),
            "--coordinator".into(),
            coordinator.to_string(),
            "--listen".into(),
            listen.to_string(),
            "--steps".into(),
            options.steps.to_string(),
            "--workdir".into(),
            path(&dir.join("learner")),
            "--metrics-addr".into(),
            m.to_string(),
        ];
        roles.push(RoleSpec {
            name: "learner".into(),
            kind: Kind::Learner,
            launch: Launch {
                binary: bin("learner"),
                args: with_sets(args, &mut options.sets.iter()),
                log: log("learner"),
            },
            ready: Ready::Health(listen),
            metrics: m,
            // Finish the iteration, write a checkpoint, wait up to 10 s for its publication.
            stop_within: Duration::from_secs(120),
        });
        let m = metrics.next()?;
        let args = vec![
            "--coordinator".into(),
            coordinator.to_string(),
            "--workdir".into(),
            path(&dir.join("evaluator")),
            "--metrics-addr".into(),
            m.to_string(),
        ];
        let mut eval_sets = options.sets.iter().filter(|s| s.starts_with("eval."));
        roles.push(RoleSpec {
            name: "evaluator".into(),
            kind: Kind::Evaluator,
            launch: Launch { binary: bin("evaluator"), args: with_sets(args, &mut eval_sets), log: log("evaluator") },
            ready: Ready::Metrics(m),
            metrics: m,
            stop_within: Duration::from_secs(30),
        });
        Ok(Plan { env, coordinator, roles, actor_slots, options: options.clone() })
    }

    pub fn options(&self) -> &UpOptions {
        &self.options
    }

    /// The actors, each simulating `max_steps_per_env` steps per env (None: until stopped).
    pub fn actors(&self, max_steps_per_env: Option<u64>) -> Vec<RoleSpec> {
        let o = &self.options;
        self.actor_slots
            .iter()
            .enumerate()
            .map(|(i, (metrics, dir))| {
                let name = format!("actor-{i}");
                let mut args = vec![
                    "--env".into(),
                    self.env.clone(),
                    "--coordinator".into(),
                    self.coordinator.to_string(),
                    "--envs".into(),
                    o.envs.to_string(),
                    "--actor-id".into(),
                    i.to_string(),
                    "--workdir".into(),
                    dir.display().to_string(),
                    "--metrics-addr".into(),
                    metrics.to_string(),
                ];
                if let Some(n) = max_steps_per_env {
                    args.push("--max-steps".into());
                    args.push(n.to_string());
                }
                RoleSpec {
                    name: name.clone(),
                    kind: Kind::Actor,
                    launch: Launch {
                        binary: o.bin_dir.join("actor"),
                        args,
                        log: o.workdir.join("logs").join(format!("{name}.log")),
                    },
                    ready: Ready::Metrics(*metrics),
                    metrics: *metrics,
                    // Drain: up to --drain-seconds (10) for the last acknowledgements.
                    stop_within: Duration::from_secs(30),
                }
            })
            .collect()
    }

    /// Steps per env for each actor so that, with `stored` steps already in the store, the
    /// recording reaches `--env-steps` (None: unbounded; Some(0): nothing left to simulate).
    pub fn steps_per_env(&self, stored: u64) -> Option<u64> {
        let o = &self.options;
        if o.env_steps == 0 {
            return None;
        }
        let streams = u64::from(o.actors) * u64::from(o.envs);
        Some(o.env_steps.saturating_sub(stored).div_ceil(streams))
    }

    /// Every role's metrics address, actors included.
    pub fn all_metrics(&self) -> Vec<(String, SocketAddr)> {
        let mut all: Vec<(Kind, String, SocketAddr)> =
            self.roles.iter().map(|r| (r.kind, r.name.clone(), r.metrics)).collect();
        all.extend(self.actor_slots.iter().enumerate().map(|(i, (m, _))| (Kind::Actor, format!("actor-{i}"), *m)));
        // Start order; the sort is stable, so replicas of a kind keep their numbering.
        all.sort_by_key(|(kind, _, _)| *kind);
        all.into_iter().map(|(_, name, m)| (name, m)).collect()
    }
}

/// Loopback addresses for the roles: metrics on consecutive ports from a base (or free ones), and
/// free ports for the servers. Every free port stays bound until the plan is made, so no two
/// roles are given the same one.
struct MetricsPorts {
    base: u16,
    taken: u16,
    count: usize,
    held: Vec<TcpListener>,
}

impl MetricsPorts {
    fn new(base: u16, count: usize) -> Result<MetricsPorts> {
        if base != 0 && usize::from(base) + count > usize::from(u16::MAX) {
            bail!("--metrics-port {base}: the {count} roles need ports up to {}", usize::from(base) + count);
        }
        Ok(MetricsPorts { base, taken: 0, count, held: Vec::new() })
    }

    fn next(&mut self) -> Result<SocketAddr> {
        debug_assert!(usize::from(self.taken) < self.count);
        let addr =
            if self.base == 0 { self.free()? } else { SocketAddr::from(([127, 0, 0, 1], self.base + self.taken)) };
        self.taken += 1;
        Ok(addr)
    }
}

impl MetricsPorts {
    /// A loopback port the kernel chose for port 0, held until the plan is made. The role binds
    /// it itself a little later; on a shared machine another process could take it in between,
    /// and the role then fails at start, saying so in its log.
    fn free(&mut self) -> Result<SocketAddr> {
        let listener = TcpListener::bind("127.0.0.1:0").context("finding a free loopback port")?;
        let addr = listener.local_addr()?;
        self.held.push(listener);
        Ok(addr)
    }
}
