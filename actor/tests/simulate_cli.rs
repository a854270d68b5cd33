//! `actor simulate` driven as a process: the archive it writes, read back with every array's
//! shape and dtype checked; reproducibility; and one-line errors for bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::npz::{read_npz, NpyArray, NpyData};

fn actor(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_actor")).args(args).output().expect("run actor")
}

fn simulate(dir: &Path, name: &str, args: &[&str]) -> PathBuf {
    let out = dir.join(name);
    let mut all = vec!["simulate", "--out", out.to_str().unwrap()];
    all.extend_from_slice(args);
    let o = actor(&all);
    assert!(o.status.success(), "actor {all:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    out
}

fn f32s(a: &NpyArray) -> &[f32] {
    match &a.data {
        NpyData::F32(v) => v,
        other => panic!("expected float32, got {:?}", std::mem::discriminant(other)),
    }
}

#[test]
fn riab_archive_has_every_array_with_its_shape_and_dtype() {
    let dir = tempfile::tempdir().unwrap();
    let path =
        simulate(dir.path(), "walls.npz", &["--env", "riab-walls", "--steps", "500", "--seed", "3", "--envs", "3"]);
    let a = read_npz(&path).unwrap();
    let names: Vec<&str> = a.keys().map(String::as_str).collect();
    assert_eq!(names, ["centres", "meta", "observations", "positions", "step_type", "widths"]);
    assert_eq!(a["observations"].shape, [3, 500, 50]);
    assert_eq!(a["positions"].shape, [3, 500, 2]);
    assert_eq!(a["centres"].shape, [50, 2]);
    assert_eq!(a["widths"].shape, [50]);
    assert_eq!(a["step_type"].shape, [3, 500]);
    for k in ["observations", "positions", "centres", "widths"] {
        assert_eq!(a[k].descr(), "<f4", "{k}");
    }
    assert_eq!(a["step_type"].descr(), "|u1");
    let types = a["step_type"].as_u8().unwrap();
    for e in 0..3 {
        let row = &types[e * 500..(e + 1) * 500];
        assert_eq!(row[0], 0);
        assert!(row[1..499].iter().all(|&t| t == 1));
        assert_eq!(row[499], 2);
    }
    let obs = f32s(&a["observations"]);
    assert!(obs.iter().all(|&r| (0.0..=1.0).contains(&r)));
    let pos = f32s(&a["positions"]);
    assert!(pos.iter().all(|&p| p > 0.0 && p < 1.0));
    // Where the straight line from a centre to the agent misses the wall, the rate is the
    // gaussian of the euclidean distance (w = 0.2); where it crosses, the geodesic detour is longer.
    assert!(f32s(&a["widths"]).iter().all(|&w| w == 0.2));
    let centres = f32s(&a["centres"]);
    let (mut clear, mut blocked) = (0, 0);
    for row in (0..3 * 500).step_by(7) {
        let (px, py) = (pos[2 * row] as f64, pos[2 * row + 1] as f64);
        for k in 0..50 {
            let (cx, cy) = (centres[2 * k] as f64, centres[2 * k + 1] as f64);
            let d2 = (px - cx).powi(2) + (py - cy).powi(2);
            let euclid = (-d2 / (2.0 * 0.04)).exp();
            let rate = obs[row * 50 + k] as f64;
            let crosses = (px - 0.4) * (cx - 0.4) < 0.0 && {
                let y = cy + (py - cy) * (0.4 - cx) / (px - cx);
                y > 0.0 && y < 0.9
            };
            if crosses {
                blocked += 1;
                assert!(rate <= euclid + 1e-6, "row {row} cell {k}: {rate} > {euclid}");
            } else {
                clear += 1;
                assert!((rate - euclid).abs() < 1e-5, "row {row} cell {k}: {rate} vs {euclid}");
            }
        }
    }
    assert!(clear > 0 && blocked > 0, "{clear} clear, {blocked} blocked");
    let meta: serde_json::Value = serde_json::from_str(a["meta"].as_str().unwrap()).unwrap();
    assert_eq!(meta["format_version"], 1);
    assert_eq!(meta["env"], "riab-walls");
    assert_eq!(meta["seed"], 3);
    assert_eq!(meta["dt"], 0.05);
    assert_eq!(meta["env_config"]["thigmotaxis"], 0.2);
    assert_eq!(meta["env_config"]["arena"]["walls"][0][1][1], 0.9);
}

#[test]
fn pendulum_archive_has_actions_and_rewards() {
    let dir = tempfile::tempdir().unwrap();
    let path = simulate(dir.path(), "p.npz", &["--env", "pendulum", "--steps", "450", "--seed", "1", "--envs", "2"]);
    let a = read_npz(&path).unwrap();
    let names: Vec<&str> = a.keys().map(String::as_str).collect();
    assert_eq!(names, ["actions", "meta", "observations", "rewards", "step_type"]);
    assert_eq!(a["observations"].shape, [2, 450, 3]);
    assert_eq!(a["actions"].shape, [2, 450, 1]);
    assert_eq!(a["rewards"].shape, [2, 450]);
    assert_eq!(a["step_type"].shape, [2, 450]);
    let types = a["step_type"].as_u8().unwrap();
    let rewards = f32s(&a["rewards"]);
    let actions = f32s(&a["actions"]);
    for e in 0..2 {
        let row = &types[e * 450..(e + 1) * 450];
        // Episodes of 201 rows: FIRST at 0 and 201, LAST at 200 and 401.
        for (t, &st) in row.iter().enumerate() {
            let want = match t {
                0 | 201 | 402 => 0,
                200 | 401 => 2,
                _ => 1,
            };
            assert_eq!(st, want, "env {e} row {t}");
            if want == 0 {
                assert_eq!((rewards[e * 450 + t], actions[e * 450 + t]), (0.0, 0.0));
            }
        }
    }
    assert!(actions.iter().all(|a| a.abs() <= 2.0));
    assert!(rewards.iter().all(|&r| r <= 0.0 && r > -17.0));
}

#[test]
fn same_seed_same_archive_and_streams_do_not_depend_on_batch_size() {
    let dir = tempfile::tempdir().unwrap();
    let one = simulate(dir.path(), "a.npz", &["--env", "riab-random", "--steps", "300", "--seed", "9"]);
    let again = simulate(dir.path(), "b.npz", &["--env", "riab-random", "--steps", "300", "--seed", "9"]);
    assert_eq!(std::fs::read(&one).unwrap(), std::fs::read(&again).unwrap());
    let four = simulate(dir.path(), "c.npz", &["--env", "riab-random", "--steps", "300", "--seed", "9", "--envs", "4"]);
    let (a, b) = (read_npz(&one).unwrap(), read_npz(&four).unwrap());
    let (oa, ob) = (f32s(&a["observations"]), f32s(&b["observations"]));
    assert_eq!(oa, &ob[..300 * 50], "env 0 is the same stream whatever E");
    assert_ne!(&ob[..300 * 50], &ob[300 * 50..600 * 50], "envs are independent streams");
    assert_eq!(a["centres"], b["centres"], "one experiment, one set of cells");
    let other_actor =
        simulate(dir.path(), "d.npz", &["--env", "riab-random", "--steps", "300", "--seed", "9", "--actor-id", "1"]);
    let c = read_npz(&other_actor).unwrap();
    assert_eq!(a["centres"], c["centres"]);
    assert_ne!(f32s(&a["observations"]), f32s(&c["observations"]));
    let other_seed = simulate(dir.path(), "e.npz", &["--env", "riab-random", "--steps", "10", "--seed", "10"]);
    assert_ne!(a["centres"], read_npz(&other_seed).unwrap()["centres"]);
}

#[test]
fn config_file_and_overrides_change_the_simulation() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("exp.toml");
    std::fs::write(&config, "[experiment]\nenv = \"riab-lowth\"\nseed = 4\n[env.cells]\nn = 7\n").unwrap();
    let path = simulate(
        dir.path(),
        "x.npz",
        &[
            "--config",
            config.to_str().unwrap(),
            "--steps",
            "20",
            "--set",
            "env.cells.widths=0.3",
            "--set",
            "env.dt=0.01",
        ],
    );
    let a = read_npz(&path).unwrap();
    assert_eq!(a["observations"].shape, [1, 20, 7]);
    assert!(f32s(&a["widths"]).iter().all(|&w| (w - 0.3).abs() < 1e-7));
    let meta: serde_json::Value = serde_json::from_str(a["meta"].as_str().unwrap()).unwrap();
    assert_eq!(
        (meta["env"].as_str(), meta["seed"].as_u64(), meta["dt"].as_f64()),
        (Some("riab-lowth"), Some(4), Some(0.01))
    );
}

/// Bad input: a non-zero exit, one readable line naming what was wrong, and no archive.
#[test]
fn bad_input_gets_one_line_and_a_nonzero_exit() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.npz");
    let out = out.to_str().unwrap();
    let missing_cfg = dir.path().join("nope.toml");
    let conflicting = dir.path().join("c.toml");
    std::fs::write(&conflicting, "[experiment]\nenv = \"pendulum\"\n").unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--env", "riab-wall", "--steps", "10", "--out", out], "unknown env id `riab-wall`"),
        (vec!["--steps", "10", "--out", out], "no env"),
        (vec!["--env", "riab-random", "--steps", "0", "--out", out], "--steps"),
        (vec!["--env", "riab-random", "--steps", "10", "--envs", "0", "--out", out], "--envs"),
        (vec!["--env", "riab-random", "--steps", "10", "--out", "/nonexistent/dir/x.npz"], "does not exist"),
        (vec!["--env", "riab-random", "--steps", "10", "--out", "x.csv"], ".npz"),
        (vec!["--env", "riab-random", "--steps", "10", "--set", "env.thigmotaxis=2", "--out", out], "env.thigmotaxis"),
        (vec!["--env", "riab-random", "--steps", "10", "--set", "env.thigmo=0.5", "--out", out], "thigmo"),
        (vec!["--env", "riab-random", "--steps", "10", "--set", "thigmotaxis", "--out", out], "--set thigmotaxis"),
        (
            vec!["--env", "riab-random", "--steps", "10", "--config", missing_cfg.to_str().unwrap(), "--out", out],
            "nope.toml",
        ),
        (
            vec!["--env", "riab-random", "--steps", "10", "--config", conflicting.to_str().unwrap(), "--out", out],
            "disagrees",
        ),
        (vec!["--env", "riab-random", "--steps", "ten", "--out", out], "ten"),
        (vec!["--env", "riab-random", "--steps", "100000000", "--envs", "1000", "--out", out], "GiB"),
    ];
    for (args, needle) in cases {
        let mut all = vec!["simulate"];
        all.extend(args.iter().copied());
        let o = actor(&all);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{all:?} succeeded");
        assert!(stderr.contains(needle), "{all:?}: stderr {stderr:?} lacks {needle:?}");
        if !needle.contains("ten") {
            assert_eq!(stderr.trim().lines().count(), 1, "{all:?}: {stderr}");
        }
        assert!(!Path::new(out).exists(), "{all:?} left an archive");
    }
}
