//! A real Prometheus scrapes a running `dsm up`: Debian's `prometheus` (installed by `.ci/run`
//! through `deploy/check`), on loopback, with a temporary config of the deploy/ shape (one job
//! per role, the same job names, `deploy/prometheus/alerts.yml` loaded), asked over its HTTP API
//! for one series of each role. Skips, saying so, where no `prometheus` binary is installed.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod support;
use support::{free_port, EVAL_SETS, TINY};

/// Kills a child when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGTERM);
        }
        let start = Instant::now();
        while self.0.try_wait().ok().flatten().is_none() && start.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(name)).find(|p| p.is_file())
}

/// GET `path` from `addr` (HTTP/1.0, so the server closes the connection); the body.
fn get(addr: &str, path: &str) -> Option<String> {
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.0 200")
        .then(|| body.to_string())
        .or_else(|| head.starts_with("HTTP/1.1 200").then(|| body.to_string()))
}

fn encode(query: &str) -> String {
    query
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The instant query's result vector (empty when Prometheus has no such series yet).
fn query(prometheus: &str, q: &str) -> Vec<serde_json::Value> {
    let Some(body) = get(prometheus, &format!("/api/v1/query?query={}", encode(q))) else { return Vec::new() };
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["status"], "success", "{q}: {body}");
    doc["data"]["result"].as_array().cloned().unwrap_or_default()
}

#[test]
fn a_real_prometheus_scrapes_one_series_of_every_role() {
    let Some(prometheus_bin) = which("prometheus") else {
        eprintln!("SKIPPED: no `prometheus` on PATH (Debian's package; deploy/check installs it)");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("experiment.toml");
    std::fs::write(&config, TINY).unwrap();
    let workdir = tmp.path().join("run");
    // --env-steps 0: the actor streams until the run stops, so it is still there to be scraped.
    let up = Killed(
        Command::new(env!("CARGO_BIN_EXE_dsm"))
            .args(["up", "--config"])
            .arg(&config)
            .arg("--workdir")
            .arg(&workdir)
            .args(["--listen", &free_port(), "--metrics-port", "0", "--envs", "2", "--env-steps", "0"])
            .args(["--steps", "100000000", "--plain"])
            .args(EVAL_SETS.iter().flat_map(|s| ["--set", s]))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(tmp.path().join("up.err")).unwrap())
            .spawn()
            .unwrap(),
    );
    let dsm_said = || std::fs::read_to_string(tmp.path().join("up.err")).unwrap_or_default();
    // The roles and their metrics addresses, once all six are up.
    let start = Instant::now();
    let roles: Vec<(String, String)> = loop {
        let doc = std::fs::read_to_string(workdir.join("up.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
        if let Some(doc) = doc {
            let roles: Vec<(String, String)> = doc["roles"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| (r["name"].as_str().unwrap().to_string(), r["metrics"].as_str().unwrap().to_string()))
                .collect();
            if roles.iter().any(|(n, _)| n == "evaluator") {
                break roles;
            }
        }
        assert!(start.elapsed() < Duration::from_secs(120), "dsm up did not start every role:\n{}", dsm_said());
        std::thread::sleep(Duration::from_millis(200));
    };

    // The deploy/ shape: one job per role under the same names, the alert rules loaded.
    let prom_dir = tmp.path().join("prometheus");
    std::fs::create_dir(&prom_dir).unwrap();
    let alerts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus/alerts.yml");
    std::fs::copy(&alerts, prom_dir.join("alerts.yml")).unwrap();
    let mut scrape = String::from(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - alerts.yml\nscrape_configs:\n",
    );
    for job in ["coordinator", "replay", "actor", "learner", "evaluator"] {
        let targets: Vec<String> = roles
            .iter()
            .filter(|(n, _)| n.split('-').next() == Some(job))
            .map(|(_, addr)| format!("\"{addr}\""))
            .collect();
        assert!(!targets.is_empty(), "no {job} among {roles:?}");
        scrape += &format!("  - job_name: {job}\n    static_configs:\n      - targets: [{}]\n", targets.join(", "));
    }
    std::fs::write(prom_dir.join("prometheus.yml"), scrape).unwrap();
    let web = free_port();
    let _prometheus = Killed(
        Command::new(prometheus_bin)
            .arg(format!("--config.file={}", prom_dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", prom_dir.join("data").display()))
            .arg(format!("--web.listen-address={web}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(prom_dir.join("prometheus.log")).unwrap())
            .spawn()
            .unwrap(),
    );

    // One series of each role, as Prometheus stored it under that role's job.
    let wanted = [
        ("coordinator", "dsm_coordinator_nodes"),
        ("replay", "dsm_replay_size_steps"),
        ("actor", "dsm_actor_env_steps_total"),
        ("learner", "dsm_learner_iterations_total"),
        ("evaluator", "dsm_evaluator_evaluations_total"),
    ];
    let start = Instant::now();
    for (job, metric) in wanted {
        let q = format!("{metric}{{job=\"{job}\"}}");
        loop {
            let result = query(&web, &q);
            if !result.is_empty() {
                let value: f64 = result[0]["value"][1].as_str().unwrap().parse().unwrap();
                assert!(value.is_finite(), "{q} = {value}");
                break;
            }
            let log = std::fs::read_to_string(prom_dir.join("prometheus.log")).unwrap_or_default();
            assert!(
                start.elapsed() < Duration::from_secs(90),
                "Prometheus has no {q} after 90 s.\nPrometheus says:\n{log}\ndsm up says:\n{}",
                dsm_said()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    // Every target up, and the live figures moving: the actor streams, the learner trains.
    let up_targets = query(&web, "up == 1");
    assert_eq!(up_targets.len(), roles.len(), "not every role's target is up: {up_targets:?}");
    // The alert rules loaded and evaluated against the live series.
    let rules = get(&web, "/api/v1/rules").unwrap();
    for alert in ["DsmActorDown", "DsmLearnerStalled", "DsmEvaluatorLag", "DsmShardLostSteps"] {
        assert!(rules.contains(alert), "Prometheus did not load {alert}: {rules}");
    }
    assert!(!rules.contains("\"health\":\"err\""), "a rule failed to evaluate: {rules}");
    drop(up);
}
