//! A real Prometheus scrapes a running `dsm up`: Debian's `prometheus` (installed by `.ci/run`
//! through `deploy/check`), on loopback, with a temporary config of the deploy/ shape (one job
//! per role, the same job names, `deploy/prometheus/alerts.yml` loaded), asked over its HTTP API
//! for one series of each role. Skips, saying so, where no `prometheus` binary is installed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dsm::prom_api::PromApi;

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
    let launched = Instant::now();
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
    let api = PromApi::new(&web, Duration::from_secs(10)).unwrap();
    let query = |q: &str| api.query(q).unwrap_or_default();
    let start = Instant::now();
    for (job, metric) in wanted {
        let q = format!("{metric}{{job=\"{job}\"}}");
        loop {
            let result = query(&q);
            if !result.is_empty() {
                let value = result[0].1;
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
    // (each target's first scrape comes at its own offset within the interval)
    let start = Instant::now();
    loop {
        let up_targets = query("up == 1");
        if up_targets.len() == roles.len() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "not every role's target is up: {up_targets:?} of {roles:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // The alert rules loaded and evaluated against the live series.
    let rules = api.get("/api/v1/rules").unwrap().to_string();
    for alert in ["DsmActorDown", "DsmLearnerStalled", "DsmEvaluatorLag", "DsmShardLostSteps"] {
        assert!(rules.contains(alert), "Prometheus did not load {alert}: {rules}");
    }
    assert!(!rules.contains("\"health\":\"err\""), "a rule failed to evaluate: {rules}");

    // The dashboard's panels drawn from this Prometheus (DSM_DASHBOARD_SECONDS longer first, and
    // kept in DSM_DASHBOARD_OUT: how docs/dashboard/ was made).
    let wait: u64 = std::env::var("DSM_DASHBOARD_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    std::thread::sleep(Duration::from_secs(wait));
    let out = std::env::var_os("DSM_DASHBOARD_OUT").map(PathBuf::from).unwrap_or_else(|| tmp.path().join("dashboard"));
    let range = (launched.elapsed().as_secs() + 1).to_string();
    let drawn = Command::new(env!("CARGO_BIN_EXE_dsm"))
        .args(["dashboard", "--prometheus", &web, "--range-seconds", &range, "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&drawn.stdout).to_string() + &String::from_utf8_lossy(&drawn.stderr);
    assert!(drawn.status.success(), "dsm dashboard failed:\n{said}");
    let (_, panels) = dsm::dashboard::parse(dsm::dashboard::BUILT_IN).unwrap();
    // What a minute of a tiny run gives every panel but the evaluator's headlines (a report
    // takes longer) and the limiter's waits (nothing waits at this rate) is data.
    let may_be_empty = ["Evaluation headlines", "Limiter blocked time"];
    for panel in &panels {
        let file = said.lines().find(|l| l.ends_with(&format!(": {}", panel.title)) && l.contains(".png"));
        match file {
            Some(line) => {
                let path = Path::new(line.split(".png:").next().unwrap()).with_extension("png");
                let bytes = std::fs::read(&path).unwrap();
                assert!(
                    bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 10_000,
                    "{}: not a drawn PNG",
                    path.display()
                );
            }
            None => assert!(
                may_be_empty.contains(&panel.title.as_str())
                    && said.contains(&format!("no data in the range: {}", panel.title)),
                "panel {:?} was not drawn:\n{said}",
                panel.title
            ),
        }
    }
    assert!(out.join("dashboard.png").is_file(), "{said}");
    drop(up);
}
