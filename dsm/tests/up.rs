//! `dsm up` as a user runs it: the real role binaries (built beside `dsm` by `cargo test
//! --workspace` / `cargo build --release`), a tiny riab-random experiment, loopback ports chosen
//! free. Each test checks that no role process outlives `dsm`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dsm::prom_text;

mod support;
use support::{free_port, EVAL_SETS, TINY};

fn bin_dir() -> PathBuf {
    let dsm = PathBuf::from(env!("CARGO_BIN_EXE_dsm"));
    let dir = dsm.parent().unwrap().to_path_buf();
    for role in dsm::plan::ROLE_BINARIES {
        assert!(
            dir.join(role).is_file(),
            "{role} is not built in {}: run `cargo build --release` (or the workspace's tests) first",
            dir.display()
        );
    }
    dir
}

/// A `dsm up` process with its stderr in a file (read while it runs).
struct Up {
    child: Child,
    workdir: PathBuf,
    stderr: PathBuf,
}

impl Up {
    fn start(dir: &Path, name: &str, extra: &[&str]) -> Up {
        bin_dir();
        let config = dir.join("tiny.toml");
        std::fs::write(&config, TINY).unwrap();
        let workdir = dir.join(name);
        let stderr = dir.join(format!("{name}-{}.err", std::process::id() ^ rand_suffix()));
        let coordinator = free_port();
        let mut args: Vec<String> = vec![
            "up".into(),
            "--config".into(),
            config.display().to_string(),
            "--workdir".into(),
            workdir.display().to_string(),
            "--listen".into(),
            coordinator,
            "--metrics-port".into(),
            "0".into(),
            "--envs".into(),
            "4".into(),
            "--env-steps".into(),
            "4000".into(),
            "--plain".into(),
        ];
        for s in EVAL_SETS {
            args.push("--set".into());
            args.push(s.into());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let child = Command::new(env!("CARGO_BIN_EXE_dsm"))
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        Up { child, workdir, stderr }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits for `dsm` to exit; returns its exit code.
    fn wait(&mut self, bound: Duration) -> i32 {
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code().unwrap_or(-1);
            }
            if start.elapsed() > bound {
                let _ = self.child.kill();
                panic!("dsm up did not exit within {bound:?}:\n{}", self.output());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn signal(&self, sig: i32) {
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// `DIR/up.json`'s roles: name → (pid, metrics address).
    fn roles(&self) -> BTreeMap<String, (i32, String)> {
        let Ok(text) = std::fs::read_to_string(self.workdir.join("up.json")) else { return BTreeMap::new() };
        let Ok(doc) = serde_json::from_str::<serde_json::Value>(&text) else { return BTreeMap::new() };
        doc["roles"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["name"].as_str().unwrap().to_string(),
                    (r["pid"].as_i64().unwrap() as i32, r["metrics"].as_str().unwrap().to_string()),
                )
            })
            .collect()
    }

    fn wait_until(&self, what: &str, bound: Duration, mut ok: impl FnMut() -> bool) {
        let start = Instant::now();
        while !ok() {
            assert!(start.elapsed() < bound, "{what}: not within {bound:?}; dsm says:\n{}", self.output());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Every pid `dsm` ever started must be gone (or be some other program that reused it).
    fn assert_no_role_left(&self, pids: &[i32]) {
        for &pid in pids {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            assert!(!cmdline.contains(&*self.workdir.to_string_lossy()), "process {pid} ({cmdline}) outlived dsm up");
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
        }
    }
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos()
}

fn reports(workdir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(workdir.join("evaluator/eval")) else { return vec![] };
    let mut done: Vec<PathBuf> = entries.flatten().map(|e| e.path()).filter(|p| p.join("DONE").is_file()).collect();
    done.sort();
    done
}

fn has_checkpoint(workdir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(workdir.join("learner/checkpoints")) else { return false };
    entries.flatten().any(|e| e.path().join("DONE").is_file())
}

fn scrape(addr: &str) -> Option<prom_text::Scrape> {
    prom_text::scrape(addr.parse().unwrap(), Duration::from_secs(2))
}

/// The README's list of metrics (the table between the `metrics:begin`/`metrics:end` markers),
/// with `<role>` expanded over every role.
fn readme_metrics() -> BTreeSet<String> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md")).unwrap();
    let begin = readme.find("<!-- metrics:begin -->").expect("README has a metrics:begin marker");
    let end = readme.find("<!-- metrics:end -->").expect("README has a metrics:end marker");
    let mut names = BTreeSet::new();
    for line in readme[begin..end].lines() {
        let Some(rest) = line.strip_prefix("| `") else { continue };
        let name = &rest[..rest.find('`').unwrap()];
        if name.contains("<role>") {
            for role in common::telemetry::ROLES {
                names.insert(name.replace("<role>", role));
            }
        } else {
            names.insert(name.to_string());
        }
    }
    names
}

/// Checks one scrape against the naming rule; returns its families.
fn check_rule(role: &str, scrape: &prom_text::Scrape) -> BTreeSet<String> {
    const LABELS: [&str; 10] =
        ["shard", "kind", "key", "engine", "threads", "replicas", "gpus", "env", "actor_id", "envs"];
    let mut families = BTreeSet::new();
    for s in &scrape.samples {
        let family = scrape.family_of(&s.name).to_string();
        let kind = scrape.types.get(&family).map(String::as_str).unwrap_or("untyped");
        assert_ne!(kind, "summary", "{role}: {family} is a summary; histograms need explicit buckets");
        common::telemetry::check_metric_name(&family, kind == "counter").unwrap_or_else(|e| panic!("{role}: {e}"));
        for key in s.labels.keys() {
            let allowed = LABELS.contains(&key.as_str()) || (key == "le" && kind == "histogram");
            assert!(allowed, "{role}: {family} has label {key}, which is not among the bounded ones {LABELS:?}");
        }
        families.insert(family);
    }
    for (family, kind) in &scrape.types {
        if kind == "histogram" && families.contains(family) {
            let bucket = format!("{family}_bucket");
            assert!(scrape.samples.iter().any(|s| s.name == bucket), "{role}: histogram {family} has no buckets");
        }
    }
    families
}

/// The whole pipeline trains, publishes and evaluates; every role serves metrics under the rule,
/// and exactly the README's list; SIGINT stops everything in order with exit 0.
#[test]
fn up_trains_evaluates_serves_metrics_and_stops_on_sigint() {
    let tmp = tempfile::tempdir().unwrap();
    let mut up = Up::start(tmp.path(), "run", &["--steps", "10000000"]);
    up.wait_until("an evaluated checkpoint", Duration::from_secs(240), || !reports(&up.workdir).is_empty());
    let roles = up.roles();
    let names: Vec<&str> = roles.keys().map(String::as_str).collect();
    assert_eq!(names, ["actor-0", "coordinator", "evaluator", "learner", "replay-0", "replay-1"]);

    // The learner exports the headline it reads back from the registry once it has one.
    let learner_metrics = roles["learner"].1.clone();
    up.wait_until("the learner's copy of the evaluation headline", Duration::from_secs(60), || {
        scrape(&learner_metrics).is_some_and(|s| s.sum("dsm_learner_evaluation_headline").is_some())
    });
    let mut served = BTreeSet::new();
    for (name, (_, addr)) in &roles {
        let role = name.split('-').next().unwrap();
        // The actor stops once it has simulated its share; its metrics went with it.
        let Some(scrape) = scrape(addr) else {
            assert_eq!(role, "actor", "{name} does not serve /metrics at {addr}");
            continue;
        };
        let families = check_rule(name, &scrape);
        for f in [format!("dsm_{role}_process_resident_memory_bytes"), format!("dsm_{role}_process_cpu_seconds")] {
            assert!(families.contains(&f), "{name} does not serve {f}");
        }
        assert!(
            families.iter().all(|f| f.starts_with(&format!("dsm_{role}_")) || (role == "learner" && f.starts_with("dsm_learner_"))),
            "{name} serves another role's metrics: {families:?}"
        );
        served.extend(families);
    }
    // The actor is gone: check its names from a second, unbounded actor-only run below.
    let actor = actor_metrics(tmp.path(), &up);
    served.extend(actor);
    let listed = readme_metrics();
    let missing: Vec<&String> = listed.difference(&served).collect();
    let unlisted: Vec<&String> = served.difference(&listed).collect();
    assert!(
        missing.is_empty() && unlisted.is_empty(),
        "README's metrics list and what the roles serve differ:\n  listed, not served: {missing:?}\n  served, not listed: {unlisted:?}"
    );

    let pids: Vec<i32> = roles.values().map(|(pid, _)| *pid).collect();
    up.signal(libc::SIGINT);
    let code = up.wait(Duration::from_secs(120));
    let out = up.output();
    assert_eq!(code, 0, "dsm up exits 0 on Ctrl-C:\n{out}");
    for line in ["learner stopped", "evaluator stopped", "replay-0 stopped", "replay-1 stopped", "coordinator stopped"]
    {
        assert!(out.contains(line), "{line:?} missing:\n{out}");
    }
    // In order: the learner before the shards before the coordinator.
    let at = |s: &str| out.find(s).unwrap();
    assert!(
        at("learner stopped") < at("replay-0 stopped") && at("replay-1 stopped") < at("coordinator stopped"),
        "{out}"
    );
    assert!(out.contains("rerun the same command to resume"), "{out}");
    up.assert_no_role_left(&pids);
    // The last checkpoint is complete.
    let checkpoints = up.workdir.join("learner/checkpoints");
    let newest = std::fs::read_dir(&checkpoints).unwrap().flatten().map(|e| e.path()).max().unwrap();
    assert!(newest.join("DONE").is_file(), "{}", newest.display());
}

/// An actor streaming until stopped, joined to the running coordinator, to scrape its metrics.
fn actor_metrics(dir: &Path, up: &Up) -> BTreeSet<String> {
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(up.workdir.join("up.json")).unwrap()).unwrap();
    let coordinator = doc["coordinator"].as_str().unwrap().to_string();
    let metrics = free_port();
    let mut actor = Command::new(bin_dir().join("actor"))
        .args(["--env", "riab-random", "--coordinator", &coordinator, "--envs", "1", "--actor-id", "9"])
        .args(["--max-steps", "100000000", "--metrics-addr", &metrics, "--workdir"])
        .arg(dir.join("extra-actor"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let families = loop {
        if let Some(s) = scrape(&metrics).filter(|s| s.sum("dsm_actor_heartbeat_failures_total").is_some()) {
            break check_rule("actor", &s);
        }
        assert!(start.elapsed() < Duration::from_secs(30), "the extra actor never served its metrics");
        std::thread::sleep(Duration::from_millis(100));
    };
    unsafe {
        libc::kill(actor.id() as i32, libc::SIGTERM);
    }
    assert!(actor.wait().unwrap().success());
    families
}

/// With the defaults of a short run, `dsm up` finishes by itself, prints the newest report, and
/// rerunning the same command resumes (nothing left to simulate or train).
#[test]
fn up_finishes_with_a_report_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let mut up = Up::start(tmp.path(), "short", &["--steps", "400"]);
    let code = up.wait(Duration::from_secs(240));
    let out = up.output();
    assert_eq!(code, 0, "{out}");
    let report = out.lines().find_map(|l| l.strip_prefix("newest report: ")).unwrap_or_else(|| panic!("{out}"));
    assert!(report.ends_with("evaluator/eval/000000000400/report.md"), "{report}");
    assert!(Path::new(report).is_file(), "{report}");
    assert!(out.contains("learner reached step 400"), "{out}");
    let pids: Vec<i32> = up.roles().values().map(|(p, _)| *p).collect();
    up.assert_no_role_left(&pids);

    let mut again = Up::start(tmp.path(), "short", &["--steps", "400"]);
    let code = again.wait(Duration::from_secs(240));
    let out = again.output();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("the replay store already holds 4000 steps"), "{out}");
    assert!(out.contains(&format!("newest report: {report}")), "{out}");
    let log = std::fs::read_to_string(again.workdir.join("logs/learner.log")).unwrap();
    assert!(log.contains("nothing to do: the newest checkpoint is at step 400"), "{log}");
}

/// A role killed under `dsm up` is reported with the last lines of its log, and the run stops
/// cleanly with exit 1; with `--restart` it is started again once and the run goes on.
#[test]
fn a_killed_role_is_reported_and_restarted_once_with_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let mut up = Up::start(tmp.path(), "kill", &["--steps", "10000000"]);
    up.wait_until("a checkpoint", Duration::from_secs(120), || has_checkpoint(&up.workdir));
    let roles = up.roles();
    let pids: Vec<i32> = roles.values().map(|(p, _)| *p).collect();
    unsafe {
        libc::kill(roles["learner"].0, libc::SIGKILL);
    }
    let code = up.wait(Duration::from_secs(120));
    let out = up.output();
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("error: learner exited unexpectedly (killed by SIGKILL (signal 9)); last lines of its log:"),
        "{out}"
    );
    // The log's last line is quoted.
    let log = std::fs::read_to_string(up.workdir.join("logs/learner.log")).unwrap();
    let last = log.lines().rev().find(|l| !l.trim().is_empty()).unwrap();
    assert!(out.contains(&format!("  | {last}")), "{last:?} not quoted:\n{out}");
    assert!(out.contains("coordinator stopped"), "{out}");
    up.assert_no_role_left(&pids);

    let mut up = Up::start(tmp.path(), "kill", &["--steps", "10000000", "--restart"]);
    up.wait_until("the evaluator up", Duration::from_secs(120), || up.output().contains("evaluator up"));
    let first = up.roles()["learner"].0;
    unsafe {
        libc::kill(first, libc::SIGKILL);
    }
    up.wait_until("the learner restarted", Duration::from_secs(120), || {
        up.output().contains("restarting learner")
            && up.roles()["learner"].0 != first
            && up.output().matches("learner up").count() >= 2
    });
    let pids: Vec<i32> = up.roles().values().map(|(p, _)| *p).collect();
    up.signal(libc::SIGTERM);
    let code = up.wait(Duration::from_secs(120));
    let out = up.output();
    assert_eq!(code, 0, "{out}");
    let log = std::fs::read_to_string(up.workdir.join("logs/learner.log")).unwrap();
    assert!(log.contains("resuming from checkpoint"), "the restarted learner resumes: {log}");
    up.assert_no_role_left(&pids);
}
