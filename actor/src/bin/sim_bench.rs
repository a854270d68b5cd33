//! `sim_bench`: env steps per second per core of the RatInABox simulator, against Python
//! RatInABox 1.15.3 measured in the same run.
//!
//! ```sh
//! cargo run --release -p actor --bin sim_bench -- --python /path/to/venv/bin/python
//! ```
//!
//! Configurations, each at dt = 0.05 and 0.01, with E = 1 and E = 1024 agents:
//! - `agent`: `Agents::step` only (no cells), `riab-random`'s defaults (thigmotaxis 0.2, the unit
//!   box, whose 4 edges are walls for the repulsion and collision tests);
//! - `cells`: `RiabEnv::step` of `riab-random` into a [`Frame`]: the agents plus 50 gaussian cells
//!   with geodesic distances (euclidean here, as the box has no internal wall), converted to f32;
//! - `wall`: the same for `riab-walls` (a wall from (0.4, 0) to (0.4, 0.9)): one more segment in
//!   the motion model's tests, and a line-of-sight test per cell for the geodesic distance.
//!
//! Everything runs on this one thread, so a rate is per core. An env-step is one agent advanced
//! one row (E × rows ÷ s). Each measurement warms up for a tenth of `--seconds` (at least 0.05 s),
//! then steps in batches of about 4096 env-steps until `--seconds` have passed; the result goes
//! through `std::hint::black_box` after every step.
//!
//! Rates are given per second of wall time and per second on a CPU: "on-CPU" is the share of the
//! wall time this thread was running (`/proc/thread-self/schedstat`; Python's `process_time`),
//! which is below 100% when other processes took the core. The ratios to Python, and the goal
//! line, use the CPU-time rates, which such sharing disturbs less; the wall-time ratio is printed
//! beside them.
//!
//! With `--python PY`, the bench first runs `actor/benches/riab_python.py` under PY (a venv with
//! `pip install ratinabox==1.15.3`), which times RatInABox on the same three configurations and
//! two dts for one agent (RatInABox has no vectorised agents), and every Rust row gets its ratio to
//! the Python row of the same configuration and dt. Without `--python` no ratio is printed.

use std::hint::black_box;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde::Deserialize;

use actor::envs::arena::Arena;
use actor::envs::config::RiabConfig;
use actor::envs::motion::{Agents, MotionParams};
use actor::envs::riab::RiabEnv;
use actor::envs::{EnvConfig, EnvId, Frame};
use common::rng::{self, StreamRng};

/// The issue's goal: this many times Python's steps/s per core, for E ≥ 256.
const GOAL_RATIO: f64 = 1000.0;
const GOAL_MIN_ENVS: usize = 256;

#[derive(Debug, Parser)]
#[command(
    name = "sim_bench",
    about = "Env steps per second per core of the RatInABox simulator, against Python RatInABox 1.15.3",
    after_help = "A Python reference venv: python3 -m venv V && V/bin/pip install ratinabox==1.15.3, \
                  then pass --python V/bin/python. The Markdown table goes to stdout, progress to stderr."
)]
struct Cli {
    /// Seconds timed per Rust measurement (after a warm-up of a tenth of it).
    #[arg(long, default_value_t = 1.0)]
    seconds: f64,
    /// Numbers of agents stepped together (E), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,1024")]
    envs: Vec<usize>,
    /// Time steps (s), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "0.05,0.01")]
    dt: Vec<f64>,
    /// Only these configurations (agent, cells, wall), comma-separated; e.g. one under a profiler.
    #[arg(long, value_delimiter = ',', value_parser = parse_config)]
    only: Vec<Config>,
    /// A Python interpreter with ratinabox 1.15.3 installed: measure it in the same run (E = 1)
    /// and print each Rust row's ratio to it. Without it, Python is not measured.
    #[arg(long, value_name = "PYTHON")]
    python: Option<PathBuf>,
    /// Timed steps per Python measurement (RatInABox manages about 1,300 a second).
    #[arg(long, default_value_t = 3000)]
    python_steps: u64,
    /// The Python timing script (default: actor/benches/riab_python.py of this source tree).
    #[arg(long, value_name = "FILE")]
    python_script: Option<PathBuf>,
    /// Experiment seed (cell centres and agent streams).
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Config {
    Agent,
    Cells,
    Wall,
}

impl Config {
    const ALL: [Config; 3] = [Config::Agent, Config::Cells, Config::Wall];

    /// Also the Python script's name for it.
    fn name(self) -> &'static str {
        match self {
            Config::Agent => "agent",
            Config::Cells => "cells",
            Config::Wall => "wall",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Config::Agent => "agent only",
            Config::Cells => "agent + 50 cells",
            Config::Wall => "agent + 50 cells + wall",
        }
    }

    fn env_id(self) -> EnvId {
        match self {
            Config::Agent | Config::Cells => EnvId::RiabRandom,
            Config::Wall => EnvId::RiabWalls,
        }
    }
}

fn parse_config(s: &str) -> Result<Config, String> {
    Config::ALL
        .into_iter()
        .find(|c| c.name() == s)
        .ok_or_else(|| format!("unknown configuration `{s}` (known: agent, cells, wall)"))
}

/// One timed measurement.
struct Measurement {
    env_steps: u64,
    seconds: f64,
    /// Seconds this thread was on a CPU, if the kernel says.
    cpu_seconds: Option<f64>,
}

impl Measurement {
    /// Env-steps per second of wall time.
    fn rate(&self) -> f64 {
        self.env_steps as f64 / self.seconds
    }

    /// Env-steps per second this thread spent on a CPU (the wall-time rate where unknown).
    fn cpu_rate(&self) -> f64 {
        self.env_steps as f64 / self.cpu_seconds.filter(|&c| c > 0.0).unwrap_or(self.seconds)
    }
}

struct RustRow {
    config: Config,
    dt: f64,
    envs: usize,
    m: Measurement,
}

#[derive(Debug, Deserialize)]
struct PythonReport {
    ratinabox: String,
    numpy: String,
    python: String,
    results: Vec<PythonRow>,
}

#[derive(Debug, Deserialize)]
struct PythonRow {
    config: String,
    dt: f64,
    steps: u64,
    seconds: f64,
    /// Process CPU time (`time.process_time`).
    cpu_seconds: f64,
}

impl PythonRow {
    fn measurement(&self) -> Measurement {
        Measurement { env_steps: self.steps, seconds: self.seconds, cpu_seconds: Some(self.cpu_seconds) }
    }
}

/// Nanoseconds this thread has spent on a CPU (the first field of schedstat).
fn thread_cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat").ok()?.split_whitespace().next()?.parse().ok()
}

/// Times `step` (one row of `envs` env-steps) for `seconds`, after a warm-up.
fn measure(envs: usize, seconds: f64, mut step: impl FnMut()) -> Measurement {
    let batch = (4096 / envs).max(1) as u64;
    let warmup = Instant::now();
    while warmup.elapsed().as_secs_f64() < (seconds / 10.0).max(0.05) {
        for _ in 0..batch {
            step();
        }
    }
    let cpu0 = thread_cpu_ns();
    let start = Instant::now();
    let mut rows = 0u64;
    loop {
        for _ in 0..batch {
            step();
        }
        rows += batch;
        if start.elapsed().as_secs_f64() >= seconds {
            break;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu_seconds = match (cpu0, thread_cpu_ns()) {
        // The two clocks are read at slightly different moments: cap the share at 100%.
        (Some(a), Some(b)) => Some((b.saturating_sub(a) as f64 * 1e-9).min(elapsed)),
        _ => None,
    };
    Measurement { env_steps: rows * envs as u64, seconds: elapsed, cpu_seconds }
}

fn riab_config(id: EnvId, dt: f64) -> RiabConfig {
    match EnvConfig::defaults(id) {
        EnvConfig::Riab(mut c) => {
            c.dt = dt;
            c
        }
        EnvConfig::Pendulum(_) => unreachable!("{id} is a riab env"),
    }
}

fn bench_rust(config: Config, dt: f64, envs: usize, seconds: f64, seed: u64) -> Measurement {
    let c = riab_config(config.env_id(), dt);
    match config {
        Config::Agent => {
            // As `RiabEnv::new` builds them, without the cells.
            let arena = Arena::new(&c.arena);
            let params = MotionParams::from_config(&c);
            let mut rngs: Vec<StreamRng> =
                (0..envs).map(|i| rng::stream(seed, &["actor".into(), 0u64.into(), i.into()])).collect();
            let mut agents = Agents::new(&arena, &params, &mut rngs);
            measure(envs, seconds, || {
                agents.step(&arena, &params, &mut rngs, None);
                black_box(&mut agents);
            })
        }
        Config::Cells | Config::Wall => {
            let mut env = RiabEnv::new(&c, seed, 0, envs);
            let mut frame = Frame::new(envs, env.obs_dim(), 0, true, false);
            measure(envs, seconds, || {
                env.step(&mut frame, None);
                black_box(&mut frame);
            })
        }
    }
}

fn run_python(python: &PathBuf, script: &PathBuf, steps: u64, dts: &[f64], configs: &[Config]) -> Result<PythonReport> {
    if !script.is_file() {
        bail!("--python-script: {} is not a file", script.display());
    }
    let mut cmd = Command::new(python);
    cmd.arg(script).arg("--steps").arg(steps.to_string()).arg("--dt");
    cmd.args(dts.iter().map(|d| d.to_string()));
    cmd.arg("--configs").args(configs.iter().map(|c| c.name()));
    // Progress lines pass straight through to our stderr.
    cmd.stderr(std::process::Stdio::inherit());
    let out = cmd.output().with_context(|| format!("--python: cannot run {}", python.display()))?;
    if !out.status.success() {
        bail!(
            "--python: `{} {}` failed ({}); is ratinabox 1.15.3 installed in it? (python3 -m venv V && V/bin/pip install ratinabox==1.15.3)",
            python.display(),
            script.display(),
            out.status
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().rev().find(|l| l.trim_start().starts_with('{')).unwrap_or("");
    let report: PythonReport = serde_json::from_str(line)
        .with_context(|| format!("--python: the script printed no JSON report on its last line: {stdout:?}"))?;
    if report.ratinabox != "1.15.3" {
        eprintln!("warning: the Python reference is ratinabox {}, not 1.15.3", report.ratinabox);
    }
    Ok(report)
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sim_bench: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    if !(cli.seconds.is_finite() && cli.seconds > 0.0) {
        bail!("--seconds must be a positive number, got {}", cli.seconds);
    }
    if cli.envs.is_empty() || cli.envs.contains(&0) {
        bail!("--envs must list numbers of agents ≥ 1, got {:?}", cli.envs);
    }
    if let Some(d) = cli.dt.iter().find(|d| !(d.is_finite() && **d > 0.0)) {
        bail!("--dt must list positive time steps, got {d}");
    }
    if cli.python_steps == 0 {
        bail!("--python-steps must be at least 1");
    }
    let configs: Vec<Config> = if cli.only.is_empty() { Config::ALL.to_vec() } else { cli.only.clone() };
    let load_before = load_average();

    let python = match &cli.python {
        Some(py) => {
            let script = cli
                .python_script
                .clone()
                .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/benches/riab_python.py")));
            eprintln!("python: {} {} ({} steps per measurement)", py.display(), script.display(), cli.python_steps);
            Some(run_python(py, &script, cli.python_steps, &cli.dt, &configs)?)
        }
        None => None,
    };

    let mut rows = Vec::new();
    for &config in &configs {
        for &dt in &cli.dt {
            for &envs in &cli.envs {
                let m = bench_rust(config, dt, envs, cli.seconds, cli.seed);
                eprintln!(
                    "rust {} dt={dt} E={envs}: {} env-steps/s, {} per CPU-s ({:.1} ns/env-step)",
                    config.name(),
                    thousands(m.rate()),
                    thousands(m.cpu_rate()),
                    1e9 / m.cpu_rate()
                );
                rows.push(RustRow { config, dt, envs, m });
            }
        }
    }

    print_report(&cli, &rows, python.as_ref(), &load_before);
    Ok(())
}

fn python_row(report: &PythonReport, config: Config, dt: f64) -> Option<&PythonRow> {
    report.results.iter().find(|r| r.config == config.name() && (r.dt - dt).abs() < 1e-12)
}

fn print_report(cli: &Cli, rows: &[RustRow], python: Option<&PythonReport>, load_before: &str) {
    println!();
    println!("machine: {}", machine());
    println!("commit:  {}", commit());
    println!("load average (1, 5, 15 min): {load_before} before, {} after", load_average());
    println!("seconds per Rust measurement: {}; one thread (per core)", cli.seconds);
    match python {
        Some(p) => println!(
            "python:  ratinabox {}, numpy {}, Python {} ({}), {} steps per measurement, E = 1 (RatInABox steps one agent at a time)",
            p.ratinabox,
            p.numpy,
            p.python,
            cli.python.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
            cli.python_steps
        ),
        None => println!("python:  not measured (pass --python PATH to time RatInABox 1.15.3 in the same run)"),
    }
    println!();
    println!(
        "| implementation | configuration | dt | E | env-steps/s | on-CPU | env-steps per CPU-s | ns per env-step (CPU) | × Python (CPU) | × Python (wall) |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let cells = |m: &Measurement| {
        let on_cpu = m.cpu_seconds.map_or("—".to_string(), |c| format!("{:.0}%", 100.0 * c / m.seconds));
        let ns = 1e9 / m.cpu_rate();
        let ns = if ns >= 10_000.0 { thousands(ns) } else { format!("{ns:.1}") };
        format!("{} | {on_cpu} | **{}** | {ns}", thousands(m.rate()), thousands(m.cpu_rate()))
    };
    if let Some(p) = python {
        for r in &p.results {
            let describe =
                Config::ALL.iter().find(|c| c.name() == r.config).map_or(r.config.as_str(), |c| c.describe());
            println!(
                "| Python RatInABox {} | {describe} | {} | 1 | {} | 1.00× | 1.00× |",
                p.ratinabox,
                r.dt,
                cells(&r.measurement())
            );
        }
    }
    for r in rows {
        let (cpu, wall) = match python.and_then(|p| python_row(p, r.config, r.dt)) {
            Some(py) => {
                let py = py.measurement();
                (ratio(r.m.cpu_rate() / py.cpu_rate()), ratio(r.m.rate() / py.rate()))
            }
            None => ("—".to_string(), "—".to_string()),
        };
        println!("| Rust | {} | {} | {} | {} | {cpu} | {wall} |", r.config.describe(), r.dt, r.envs, cells(&r.m));
    }
    println!();
    let Some(p) = python else {
        println!("× Python: not measured (no --python); no baseline is assumed.");
        return;
    };
    // The goal: ≥ 1000× per core for E ≥ 256, over every configuration and dt.
    let worst = rows
        .iter()
        .filter(|r| r.envs >= GOAL_MIN_ENVS)
        .filter_map(|r| python_row(p, r.config, r.dt).map(|py| (r, r.m.cpu_rate() / py.measurement().cpu_rate())))
        .min_by(|a, b| a.1.total_cmp(&b.1));
    match worst {
        Some((r, x)) => println!(
            "goal (≥ {GOAL_RATIO:.0}× Python per core with E ≥ {GOAL_MIN_ENVS}, on CPU time): {}; lowest ratio {} ({}, dt {}, E {}).",
            if x >= GOAL_RATIO { "met" } else { "NOT met" },
            ratio(x),
            r.config.describe(),
            r.dt,
            r.envs
        ),
        None => println!("goal (≥ {GOAL_RATIO:.0}× Python per core with E ≥ {GOAL_MIN_ENVS}): no row with E ≥ {GOAL_MIN_ENVS} was measured."),
    }
}

fn thousands(x: f64) -> String {
    let digits = format!("{:.0}", x.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn ratio(x: f64) -> String {
    if x >= 10.0 {
        format!("{}×", thousands(x))
    } else {
        format!("{x:.2}×")
    }
}

fn command_output(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let arch = command_output("uname", &["-m"]).unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().next().and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok()))
        .map(|kib| format!(", {:.0} GiB RAM", kib / 1024.0 / 1024.0))
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores (nproc), {arch}, {cpu}{mem}")
}

fn commit() -> String {
    let Some(head) = command_output("git", &["rev-parse", "--short", "HEAD"]) else { return "unknown".into() };
    match command_output("git", &["status", "--porcelain", "--untracked-files=no"]) {
        Some(s) if !s.is_empty() => format!("{head} (working tree modified)"),
        _ => head,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
        let cli =
            Cli::try_parse_from(["sim_bench", "--only", "cells,wall", "--envs", "1,256", "--dt", "0.05"]).unwrap();
        assert_eq!(cli.only, [Config::Cells, Config::Wall]);
        assert_eq!((cli.envs, cli.dt), (vec![1, 256], vec![0.05]));
        assert!(Cli::try_parse_from(["sim_bench", "--only", "teleport"]).is_err());
    }

    /// Every configuration steps and counts E × rows env-steps.
    #[test]
    fn every_configuration_runs() {
        for config in Config::ALL {
            let m = bench_rust(config, 0.05, 3, 0.01, 0);
            assert!(m.env_steps > 0 && m.env_steps.is_multiple_of(3) && m.seconds >= 0.01, "{config:?}");
        }
    }

    #[test]
    fn number_formats() {
        assert_eq!(thousands(1_234_567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(ratio(1297.6), "1,298×");
        assert_eq!(ratio(2.345), "2.35×");
    }
}
