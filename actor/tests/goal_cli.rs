//! `actor simulate --env riab-goal` as a process: it trains the policy into the workdir's cache,
//! records episodes with rewards, and reuses the cache on the next run.
//!
//! The budget is capped at 1,000 episodes; with seed 4 training converges well before that (634
//! episodes, under a second in release mode, when this was written). A policy stopped long before convergence is no use here: it tends to
//! park the agent against a wall, and recording has no timeout, so it might never reach the goal.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Instant;

use common::npz::read_npz;

const STEPS: usize = 3000;

fn simulate(workdir: &Path, out: &Path, extra: &[&str]) -> (Output, f64) {
    let mut args = vec![
        "simulate",
        "--env",
        "riab-goal",
        "--steps",
        "3000",
        "--seed",
        "4",
        "--set",
        "env.goal.policy.max_episodes=1000",
        "--workdir",
        workdir.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let start = Instant::now();
    let o = Command::new(env!("CARGO_BIN_EXE_actor")).args(&args).output().expect("run actor");
    (o, start.elapsed().as_secs_f64())
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn cache_files(workdir: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(workdir.join("policies")).unwrap().map(|e| e.unwrap().path()).collect()
}

#[test]
fn trains_records_rewards_and_reuses_the_cached_policy() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    let (first_out, second_out) = (dir.path().join("a.npz"), dir.path().join("b.npz"));

    let (o, first_secs) = simulate(&work, &first_out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let log = stderr(&o);
    // "policy: trained N episodes in S s, success rate 1.00 over the last 50; cached at PATH"
    let episodes: u64 = log
        .split("policy: trained ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no training summary in {log}"));
    assert!(episodes < 1000 && log.contains("success rate 1.00 over the last 50"), "{log}");
    let cache = cache_files(&work);
    assert_eq!(cache.len(), 1, "{cache:?}");
    assert_eq!(cache[0].extension().unwrap(), "json");
    let written = std::fs::metadata(&cache[0]).unwrap().modified().unwrap();

    let a = read_npz(&first_out).unwrap();
    assert_eq!(a["rewards"].shape, [1, STEPS]);
    let rewards = a["rewards"].as_f32().unwrap();
    let types = a["step_type"].as_u8().unwrap();
    assert_eq!(types[0], 0, "row 0 is the initial reset row");
    let lasts: Vec<usize> = (0..STEPS).filter(|&t| types[t] == 2).collect();
    assert!(!lasts.is_empty(), "the policy reaches the goal in 300 s");
    // Every episode: a FIRST reset row with reward 0, then MID rows, 10 rewarded rows (1 s at
    // dt = 0.1) and a LAST 10 steps after the arrival row.
    let mut start = 0;
    for &end in &lasts {
        assert_eq!(types[start], 0);
        assert_eq!(rewards[start], 0.0);
        assert!(types[start + 1..end].iter().all(|&t| t == 1));
        let rewarded: Vec<usize> = (start..=end).filter(|&t| rewards[t] > 0.0).collect();
        assert_eq!(rewarded.len(), 10, "episode {start}..={end}");
        assert!(rewards[rewarded[0]..rewarded[0] + 10].iter().all(|&r| r == 1.0));
        assert_eq!(rewarded[0] + 10, end);
        start = end + 1;
    }
    assert!(start >= STEPS || types[start] == 0, "a FIRST row follows every LAST");
    let meta: serde_json::Value = serde_json::from_str(a["meta"].as_str().unwrap()).unwrap();
    assert_eq!(meta["goal_policy"]["episodes"], episodes);

    let (o, second_secs) = simulate(&work, &second_out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let log = stderr(&o);
    assert!(log.contains("policy: loaded from cache") && log.contains(cache[0].to_str().unwrap()), "{log}");
    assert!(!log.contains("training the riab-goal policy"), "{log}");
    assert_eq!(std::fs::metadata(&cache[0]).unwrap().modified().unwrap(), written, "the cache is not rewritten");
    assert!(std::fs::read(&first_out).unwrap() == std::fs::read(&second_out).unwrap(), "same policy, same archive");
    // Not asserted (two cores shared with other work make wall time noisy), but shown on failure
    // of anything below and with --nocapture.
    eprintln!("first run {first_secs:.2} s (training), second {second_secs:.2} s (cache)");

    // A corrupt cache is reported, retrained and replaced.
    std::fs::write(&cache[0], b"{ not json").unwrap();
    let (o, _) = simulate(&work, &second_out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let log = stderr(&o);
    assert!(
        log.contains("warning: ignoring the policy cache") && log.contains(&format!("policy: trained {episodes} ")),
        "{log}"
    );
    // The same policy again (training is deterministic); only meta's training time differs.
    let b = read_npz(&second_out).unwrap();
    for k in ["observations", "positions", "rewards", "step_type"] {
        assert!(a[k] == b[k], "{k} differs after retraining");
    }
}

#[test]
fn a_policy_that_cannot_learn_is_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let (o, _) = simulate(dir.path(), &dir.path().join("x.npz"), &["--set", "env.goal.policy.action_noise_std=0"]);
    assert!(!o.status.success());
    let log = stderr(&o);
    assert!(log.contains("error:") && log.contains("env.goal.policy.action_noise_std"), "{log}");
    assert!(!dir.path().join("x.npz").exists());
}
