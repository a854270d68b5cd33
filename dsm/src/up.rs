//! `dsm up`: starts the plan's roles in order, each once the one before answers, watches them,
//! shows the run, and stops them in order.
//!
//! The supervisor is one synchronous loop on the main thread (the thread that spawned the
//! children, which matters for `PR_SET_PDEATHSIG`): every quarter second it reaps children and
//! reads the signal count; every second it scrapes the roles' `/metrics` and the registry.
//!
//! How a run ends:
//! - the learner reaches `--steps` and exits 0: `dsm up` waits until the registry's newest version
//!   is evaluated (or skipped), stops the rest in order and prints the newest report;
//! - Ctrl-C or SIGTERM: stops every role in order and exits 0 (a second one kills them at once);
//! - a role dies: its status and the last lines of its log are printed; with `--restart` it is
//!   started again once, otherwise the rest stop in order and `dsm up` exits 1.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use proto::pb;

use crate::plan::{Kind, Plan, RoleSpec, UpOptions};
use crate::probe::Prober;
use crate::process::{describe, tail, RoleProcess};
use crate::prom_text;
use crate::signals;
use crate::view::{Progress, View};

/// How long a role may take to answer after it starts. The learner's includes fetching the
/// experiment and, for `riab-goal`, an actor's policy training.
const READY_WITHIN: Duration = Duration::from_secs(180);
/// Lines of a dead role's log that are printed.
const TAIL_LINES: usize = 20;
const TICK: Duration = Duration::from_millis(250);
const POLL_EVERY: Duration = Duration::from_secs(1);
const SCRAPE_TIMEOUT: Duration = Duration::from_millis(500);

/// How `dsm up` ended; the process exits 0 for the first two.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The learner reached `--steps` and its newest checkpoint was evaluated.
    Finished,
    /// Stopped by Ctrl-C or SIGTERM.
    Interrupted,
    /// A role died (and was not, or could not be, restarted), or a role did not stop cleanly.
    Failed,
}

/// Runs the whole pipeline; returns how it ended, with every role stopped.
pub fn up(options: &UpOptions) -> Result<Outcome> {
    let plan = Plan::new(options)?;
    signals::install().context("installing the Ctrl-C handler")?;
    std::fs::create_dir_all(&options.workdir)
        .with_context(|| format!("--workdir {}: cannot create it", options.workdir.display()))?;
    let mut sup = Supervisor::new(plan)?;
    sup.announce();
    let outcome = sup.run();
    let stopped_cleanly = sup.stop_all();
    sup.view.finish();
    sup.conclude(&outcome);
    Ok(if stopped_cleanly { outcome } else { Outcome::Failed })
}

struct Running {
    spec: RoleSpec,
    process: RoleProcess,
    restarts: u32,
    /// Ended as planned (an actor that simulated its share, the learner at `--steps`).
    finished: bool,
}

impl Running {
    /// An actor's env steps when it stops by itself (`--max-steps` × `--envs`).
    fn planned_env_steps(&self) -> Option<f64> {
        let args = &self.spec.launch.args;
        let value = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)?.parse::<f64>().ok());
        Some(value("--max-steps")? * value("--envs")?)
    }
}

/// Why the run loop returned early.
enum Interrupt {
    Signal,
    Death,
}

struct Supervisor {
    plan: Plan,
    prober: Prober,
    view: View,
    running: Vec<Running>,
    /// The last value scraped from each role, kept after it exits.
    last: BTreeMap<String, prom_text::Scrape>,
    env_rate: Rate,
    iteration_rate: Rate,
    progress: Progress,
    registry: Vec<pb::CheckpointEntry>,
    env_steps_target: u64,
    /// Whether the actors were started with a bound (an actor exiting 0 is then expected).
    actors_bounded: bool,
}

impl Supervisor {
    fn new(plan: Plan) -> Result<Supervisor> {
        let options = plan.options();
        let view = View::new(options.plain, options.steps);
        let env_steps_target = options.env_steps;
        Ok(Supervisor {
            prober: Prober::new().context("starting the probe runtime")?,
            view,
            running: Vec::new(),
            last: BTreeMap::new(),
            env_rate: Rate::default(),
            iteration_rate: Rate::default(),
            progress: Progress { learner_target: options.steps, env_steps_target, ..Default::default() },
            registry: Vec::new(),
            env_steps_target,
            actors_bounded: env_steps_target > 0,
            plan,
        })
    }

    fn announce(&self) {
        let o = self.plan.options();
        let actors = format!("{} actor{} × {} envs", o.actors, if o.actors == 1 { "" } else { "s" }, o.envs);
        let shards = self.plan.roles.iter().filter(|r| r.kind == Kind::Replay).count();
        let recording =
            if o.env_steps == 0 { "streaming until stopped".to_string() } else { format!("{} env steps", o.env_steps) };
        self.view.say(&format!(
            "dsm up: {} on the CPU — coordinator at {}, {shards} replay shards, {actors} ({recording}), learner to step {}, one evaluator; workdir {}",
            self.plan.env,
            self.plan.coordinator,
            o.steps,
            o.workdir.display()
        ));
        for (name, metrics) in self.plan.all_metrics() {
            let log = o.workdir.join("logs").join(format!("{name}.log"));
            self.view.say(&format!("  {name:<12} metrics http://{metrics}/metrics   log {}", log.display()));
        }
    }

    /// Starts every role in order, then watches until the run ends.
    fn run(&mut self) -> Outcome {
        match self.start_all() {
            Ok(()) => {}
            Err(Interrupt::Signal) => return Outcome::Interrupted,
            Err(Interrupt::Death) => return Outcome::Failed,
        }
        match self.watch() {
            Ok(()) => Outcome::Finished,
            Err(Interrupt::Signal) => Outcome::Interrupted,
            Err(Interrupt::Death) => Outcome::Failed,
        }
    }

    fn start_all(&mut self) -> Result<(), Interrupt> {
        let roles = self.plan.roles.clone();
        for spec in roles.iter().filter(|r| matches!(r.kind, Kind::Coordinator | Kind::Replay)) {
            self.start(spec.clone())?;
        }
        // A resumed run's shards restored their recording: simulate only what is missing.
        let stored = self.stored_steps()?;
        match self.plan.steps_per_env(stored) {
            Some(0) => self.view.say(&format!(
                "the replay store already holds {} steps (--env-steps {}): no actor started",
                stored, self.env_steps_target
            )),
            per_env => {
                if stored > 0 {
                    self.view.say(&format!("the replay store holds {stored} steps from an earlier run"));
                }
                for spec in self.plan.actors(per_env) {
                    self.start(spec)?;
                }
            }
        }
        for spec in roles.iter().filter(|r| matches!(r.kind, Kind::Learner | Kind::Evaluator)) {
            self.start(spec.clone())?;
        }
        Ok(())
    }

    /// Steps the store holds once every shard answers (bounded by [`READY_WITHIN`]).
    fn stored_steps(&mut self) -> Result<u64, Interrupt> {
        let since = Instant::now();
        loop {
            if let Some(n) = self.prober.stored_steps(self.plan.coordinator) {
                return Ok(n);
            }
            self.check_children()?;
            if since.elapsed() > READY_WITHIN {
                self.view.say("error: the shard map still has unserved slots; see logs/replay-*.log");
                return Err(Interrupt::Death);
            }
            std::thread::sleep(TICK);
        }
    }

    /// Spawns `spec` and waits until it answers.
    fn start(&mut self, spec: RoleSpec) -> Result<(), Interrupt> {
        let process = match RoleProcess::spawn(&spec.launch) {
            Ok(p) => p,
            Err(e) => {
                self.view.say(&format!("error: {}: {e:#}", spec.name));
                return Err(Interrupt::Death);
            }
        };
        self.running.push(Running { spec, process, restarts: 0, finished: false });
        let index = self.running.len() - 1;
        self.write_roles_file();
        self.wait_ready(index)
    }

    fn wait_ready(&mut self, index: usize) -> Result<(), Interrupt> {
        let since = Instant::now();
        loop {
            let (ready, name) = (self.running[index].spec.ready, self.running[index].spec.name.clone());
            if self.prober.ready(ready) {
                self.view.say(&format!("{name} up ({:.1} s)", since.elapsed().as_secs_f64()));
                return Ok(());
            }
            if signals::received() > 0 {
                return Err(Interrupt::Signal);
            }
            if let Some(status) = self.running[index].process.try_wait() {
                return self.on_exit(index, status);
            }
            if since.elapsed() > READY_WITHIN {
                self.view.say(&format!(
                    "error: {name} did not come up within {} s; last lines of its log:",
                    READY_WITHIN.as_secs()
                ));
                self.print_tail(index);
                return Err(Interrupt::Death);
            }
            std::thread::sleep(TICK);
        }
    }

    /// Watches the running roles until the run ends.
    fn watch(&mut self) -> Result<(), Interrupt> {
        let mut last_poll: Option<Instant> = None;
        loop {
            if signals::received() > 0 {
                return Err(Interrupt::Signal);
            }
            self.check_children()?;
            if last_poll.is_none_or(|t| t.elapsed() >= POLL_EVERY) {
                last_poll = Some(Instant::now());
                self.poll();
                if self.learner_finished() && self.newest_is_final() {
                    return Ok(());
                }
            }
            std::thread::sleep(TICK);
        }
    }

    /// Reaps every child that ended and decides what its end means.
    fn check_children(&mut self) -> Result<(), Interrupt> {
        for i in 0..self.running.len() {
            if self.running[i].finished {
                continue;
            }
            if let Some(status) = self.running[i].process.try_wait() {
                self.on_exit(i, status)?;
            }
        }
        Ok(())
    }

    fn on_exit(&mut self, index: usize, status: ExitStatus) -> Result<(), Interrupt> {
        let r = &mut self.running[index];
        let planned = status.success()
            && match r.spec.kind {
                Kind::Actor => self.actors_bounded,
                Kind::Learner => true,
                _ => false,
            };
        if planned {
            r.finished = true;
            let message = match r.spec.kind {
                Kind::Learner => format!(
                    "learner reached step {}; waiting for the evaluation of its last checkpoint",
                    self.plan.options().steps
                ),
                _ => format!("{} finished its share of the recording", r.spec.name),
            };
            self.view.say(&message);
            return Ok(());
        }
        let name = r.spec.name.clone();
        self.view.say(&format!("error: {name} exited unexpectedly ({}); last lines of its log:", describe(status)));
        self.print_tail(index);
        let r = &mut self.running[index];
        if self.plan.options().restart && r.restarts == 0 {
            self.view.say(&format!("restarting {name} (--restart: once)"));
            match RoleProcess::spawn(&r.spec.launch) {
                Ok(p) => {
                    r.process = p;
                    r.restarts += 1;
                }
                Err(e) => {
                    self.view.say(&format!("error: restarting {name}: {e:#}"));
                    return Err(Interrupt::Death);
                }
            }
            self.write_roles_file();
            return self.wait_ready(index);
        }
        if self.plan.options().restart {
            self.view.say(&format!("{name} was already restarted once; stopping the run"));
        } else {
            self.view.say("stopping the run (pass --restart to restart a role that dies, once)");
        }
        Err(Interrupt::Death)
    }

    fn print_tail(&self, index: usize) {
        let log = &self.running[index].spec.launch.log;
        for line in tail(log, TAIL_LINES) {
            self.view.say(&format!("  | {line}"));
        }
        self.view.say(&format!("  (the whole log: {})", log.display()));
    }

    fn learner_finished(&self) -> bool {
        self.running.iter().any(|r| r.spec.kind == Kind::Learner && r.finished)
    }

    /// Whether the registry's newest version has its evaluation (done or skipped), or there is
    /// no version at all.
    fn newest_is_final(&self) -> bool {
        use pb::evaluation::State;
        self.registry.last().is_none_or(|newest| {
            let state = newest.evaluation.as_ref().map(|e| e.state()).unwrap_or(State::Pending);
            matches!(state, State::Done | State::Skipped)
        })
    }

    /// Scrapes every live role and the registry into the view.
    fn poll(&mut self) {
        let now = Instant::now();
        for r in &mut self.running {
            if r.process.try_wait().is_none() {
                if let Some(s) = prom_text::scrape(r.spec.metrics, SCRAPE_TIMEOUT) {
                    self.last.insert(r.spec.name.clone(), s);
                }
            }
        }
        if let Some(entries) = self.prober.checkpoints(self.plan.coordinator) {
            self.registry = entries;
        }
        let of = |kind: Kind, name: &str, last: &BTreeMap<String, prom_text::Scrape>, running: &[Running]| {
            running
                .iter()
                .filter(|r| r.spec.kind == kind)
                .filter_map(|r| last.get(&r.spec.name).and_then(|s| s.sum(name)))
                .collect::<Vec<f64>>()
        };
        let learner_finished = self.learner_finished();
        let p = &mut self.progress;
        // An actor that finished before a scrape saw it simulated exactly its share.
        let env_steps: f64 = self
            .running
            .iter()
            .filter(|r| r.spec.kind == Kind::Actor)
            .filter_map(|r| {
                match (r.finished, self.last.get(&r.spec.name).and_then(|s| s.sum("dsm_actor_env_steps_total"))) {
                    (true, _) => r.planned_env_steps(),
                    (false, scraped) => scraped,
                }
            })
            .sum();
        p.env_steps = env_steps;
        p.env_steps_per_second = self.env_rate.push(now, env_steps);
        let shards = of(Kind::Replay, "dsm_replay_size_steps", &self.last, &self.running);
        p.replay_steps = shards.iter().sum();
        p.replay_shards = shards.len();
        if let Some(learner) =
            self.running.iter().find(|r| r.spec.kind == Kind::Learner).and_then(|r| self.last.get(&r.spec.name))
        {
            p.learner_step = learner.sum("dsm_learner_step").unwrap_or(0.0);
            let iterations = learner.sum("dsm_learner_iterations_total").unwrap_or(0.0);
            p.iterations_per_second = self.iteration_rate.push(now, iterations);
            p.discriminator_loss = learner.sum("dsm_learner_discriminator_loss");
            p.generator_loss = learner.sum("dsm_learner_generator_loss");
        }
        if learner_finished {
            p.iterations_per_second = 0.0;
            p.learner_step = p.learner_target as f64;
        }
        p.checkpoint = self.registry.last().map(|e| (e.version, e.step));
        p.evaluation =
            newest_report(&self.registry).map(|(v, headline, report)| (v, short_headline(&headline), report));
        self.view.update(&self.progress);
    }

    /// Stops every role still running, in [`Kind::STOP_ORDER`]; true if all stopped cleanly.
    fn stop_all(&mut self) -> bool {
        let mut clean = true;
        let mut announced = false;
        // A signal that arrives while the roles stop means "now": kill what is left.
        let signals_before = signals::received();
        self.prober.disconnect();
        for kind in Kind::STOP_ORDER {
            if kind == Kind::Coordinator {
                // The evaluator has stopped: the registry is final now.
                if let Some(entries) = self.prober.checkpoints(self.plan.coordinator) {
                    self.registry = entries;
                }
                self.prober.disconnect();
            }
            let group: Vec<usize> = (0..self.running.len())
                .filter(|&i| self.running[i].spec.kind == kind && self.running[i].process.try_wait().is_none())
                .collect();
            if group.is_empty() {
                continue;
            }
            if !announced {
                self.view
                    .say("stopping: actors, learner, evaluator, shards, coordinator (Ctrl-C again to kill them now)");
                announced = true;
            }
            for &i in &group {
                self.running[i].process.terminate();
            }
            for &i in &group {
                let bound = self.running[i].spec.stop_within;
                let since = Instant::now();
                let status = loop {
                    if let Some(s) = self.running[i].process.wait_for(TICK) {
                        break Some(s);
                    }
                    if signals::received() > signals_before || since.elapsed() > bound {
                        break None;
                    }
                };
                let name = self.running[i].spec.name.clone();
                match status {
                    Some(s) if s.success() => self.view.say(&format!("{name} stopped")),
                    Some(s) => {
                        clean = false;
                        self.view.say(&format!("error: {name} stopped with {}; last lines of its log:", describe(s)));
                        self.print_tail(i);
                    }
                    None => {
                        clean = false;
                        self.running[i].process.kill();
                        self.view.say(&format!("error: {name} did not stop within {} s; killed", bound.as_secs()));
                    }
                }
            }
        }
        clean
    }

    /// The last words: where the report is, how to go on.
    fn conclude(&self, outcome: &Outcome) {
        let newest_checkpoint = self.registry.last();
        match newest_report(&self.registry) {
            Some((v, headline, report)) => {
                let text: Vec<String> = headline.iter().map(|(k, v)| format!("{k} {v:.4}")).collect();
                eprintln!("evaluation of version {v}: {}", text.join(", "));
                eprintln!("newest report: {report}");
            }
            None => eprintln!("no report yet"),
        }
        if *outcome != Outcome::Finished {
            if let Some(c) = newest_checkpoint {
                eprintln!("newest checkpoint: step {} ({})", c.step, c.uri.trim_start_matches("file://"));
            }
            if *outcome == Outcome::Interrupted || newest_checkpoint.is_some() {
                eprintln!("rerun the same command to resume");
            }
        }
    }

    /// `DIR/up.json`: the coordinator's address and every role's pid, metrics address and log, for
    /// scripts (and the tests) that want to look at a running `dsm up`.
    fn write_roles_file(&self) {
        let roles: Vec<serde_json::Value> = self
            .running
            .iter()
            .map(|r| {
                serde_json::json!({
                    "name": r.spec.name,
                    "pid": r.process.pid(),
                    "metrics": r.spec.metrics.to_string(),
                    "log": r.spec.launch.log,
                    "restarts": r.restarts,
                })
            })
            .collect();
        let doc = serde_json::json!({ "coordinator": self.plan.coordinator.to_string(), "dsm_pid": std::process::id(), "roles": roles });
        let path = self.plan.options().workdir.join("up.json");
        let tmp = path.with_extension("json.tmp");
        let written = std::fs::write(&tmp, serde_json::to_vec_pretty(&doc).unwrap_or_default())
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            self.view.say(&format!("warning: writing {}: {e}", path.display()));
        }
    }
}

/// A version's headline numbers, sorted by name.
type Headline = Vec<(String, f64)>;

/// The newest evaluated version: (version, headline, path of its report.md).
fn newest_report(entries: &[pb::CheckpointEntry]) -> Option<(u64, Headline, String)> {
    entries.iter().rev().find_map(|e| {
        let ev = e.evaluation.as_ref()?;
        (ev.state() == pb::evaluation::State::Done).then(|| {
            let mut headline: Vec<(String, f64)> = ev.headline.iter().map(|(k, v)| (k.clone(), *v)).collect();
            headline.sort_by(|a, b| a.0.cmp(&b.0));
            let dir = PathBuf::from(ev.report_uri.trim_start_matches("file://"));
            (e.version, headline, dir.join("report.md").display().to_string())
        })
    })
}

/// At most three headline numbers, for one screen line.
fn short_headline(headline: &[(String, f64)]) -> String {
    headline.iter().take(3).map(|(k, v)| format!("{k} {v:.3}")).collect::<Vec<_>>().join(", ")
}

/// A per-second rate over the last few seconds of a growing count.
#[derive(Debug, Default)]
struct Rate {
    points: VecDeque<(Instant, f64)>,
}

impl Rate {
    const WINDOW: Duration = Duration::from_secs(5);

    fn push(&mut self, at: Instant, value: f64) -> f64 {
        self.points.push_back((at, value));
        while self.points.len() > 2 && at.duration_since(self.points[0].0) > Self::WINDOW {
            self.points.pop_front();
        }
        let (t0, v0) = self.points[0];
        let dt = at.duration_since(t0).as_secs_f64();
        if dt <= 0.0 {
            0.0
        } else {
            ((value - v0) / dt).max(0.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_follows_the_last_seconds() {
        let mut r = Rate::default();
        let t = Instant::now();
        assert_eq!(r.push(t, 0.0), 0.0);
        assert_eq!(r.push(t + Duration::from_secs(1), 100.0), 100.0);
        assert_eq!(r.push(t + Duration::from_secs(2), 300.0), 150.0);
        // Old points leave the window: only the last 5 s count.
        for s in 3..=10 {
            r.push(t + Duration::from_secs(s), 300.0 + 10.0 * (s - 2) as f64);
        }
        assert!((r.push(t + Duration::from_secs(11), 390.0) - 10.0).abs() < 1e-9);
    }

    #[test]
    fn the_newest_report_is_the_newest_done_version() {
        let entry = |version: u64, state: pb::evaluation::State| pb::CheckpointEntry {
            version,
            step: version * 100,
            evaluation: Some(pb::Evaluation {
                state: state as i32,
                report_uri: format!("file:///w/eval/{version:012}"),
                headline: [("b".to_string(), 2.0), ("a".to_string(), 1.0)].into_iter().collect(),
                ..Default::default()
            }),
            ..Default::default()
        };
        use pb::evaluation::State;
        let entries = vec![entry(1, State::Done), entry(2, State::Done), entry(3, State::Claimed)];
        let (v, headline, report) = newest_report(&entries).unwrap();
        assert_eq!(v, 2);
        assert_eq!(headline, vec![("a".to_string(), 1.0), ("b".to_string(), 2.0)]);
        assert_eq!(report, "/w/eval/000000000002/report.md");
        assert!(newest_report(&entries[2..]).is_none());
    }
}
