//! `dsm`: `dsm up` runs the whole pipeline on one machine (see the crate docs and the README).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use dsm::plan::UpOptions;
use dsm::up::{up, Outcome};

/// δ-models at scale: one command for the whole pipeline.
#[derive(Debug, Parser)]
#[command(name = "dsm", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole pipeline on this machine, on the CPU: a coordinator, its replay shards,
    /// actors, the learner and an evaluator, as processes of the role binaries beside `dsm`,
    /// started in order, watched, and stopped in order on Ctrl-C. Rerun the same command to
    /// resume.
    Up(UpArgs),
    /// Ask a role's `grpc.health.v1` whether it is SERVING: exit 0 if so, 1 with one line if
    /// not or if it does not answer in time. The probe of docker compose healthchecks (every role
    /// answers health: the coordinator, shards and learner on their service port, actors and
    /// evaluators on --health-addr).
    Health(HealthArgs),
    /// Draw the Grafana dashboard's panels as PNG files from a Prometheus server, with the same
    /// PromQL queries: OUT/dashboard.png (every panel with data) and OUT/NN-<panel>.png. For
    /// machines without Grafana, and for docs. These are plotters line charts, not Grafana.
    Dashboard(DashboardArgs),
}

#[derive(Debug, Args)]
struct DashboardArgs {
    /// The Prometheus server that scrapes the roles (HOST:PORT).
    #[arg(long, value_name = "HOST:PORT")]
    prometheus: String,
    /// A Grafana dashboard JSON (default: deploy/grafana/dashboards/dsm.json, built in).
    #[arg(long, value_name = "FILE")]
    dashboard: Option<PathBuf>,
    /// The folder for the PNG files (created if missing).
    #[arg(long, default_value = "dashboard", value_name = "DIR")]
    out: PathBuf,
    /// How far back the charts go from now (Prometheus's clock).
    #[arg(long, default_value_t = 900.0, value_name = "S")]
    range_seconds: f64,
    /// Seconds between points (default: the range over 240, at least 1).
    #[arg(long, value_name = "S")]
    step_seconds: Option<f64>,
}

#[derive(Debug, Args)]
struct HealthArgs {
    /// The role's gRPC HOST:PORT.
    address: String,
    /// The service to ask about (default: the whole server), e.g. dsm.v1.Coordinator.
    #[arg(long, default_value = "")]
    service: String,
    /// How long to wait for the answer, connecting included.
    #[arg(long, default_value_t = 2.0, value_name = "S")]
    timeout_seconds: f64,
}

#[derive(Debug, Args)]
struct UpArgs {
    /// Experiment file (see configs/); it must name experiment.env. Every role reads it.
    #[arg(long)]
    config: PathBuf,
    /// Override one config value for every role, e.g. `--set env.cells.n=100`,
    /// `--set train.checkpoint_every=1000`, `--set eval.mc_rollouts=1000`. Repeatable.
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    sets: Vec<String>,
    /// Each role gets DIR/<role>/ (checkpoints, shard checkpoints, reports) and DIR/logs/<role>.log;
    /// DIR/up.json lists the running roles. Rerunning with the same DIR resumes.
    #[arg(long, default_value = "dsm-work")]
    workdir: PathBuf,
    /// Learner iterations in all (a resumed run continues up to this); 500000 is the thesis's
    /// full run.
    #[arg(long, default_value_t = 10_000)]
    steps: u64,
    /// Actor processes.
    #[arg(long, default_value_t = 1)]
    actors: u32,
    /// Envs each actor steps together, one stream each.
    #[arg(long, default_value_t = 16)]
    envs: u32,
    /// Env steps to simulate over all actors and envs together, then the actors stop (24,000 at
    /// dt = 0.05 s is the thesis's 20-minute recording). A resumed run simulates only what the
    /// store lacks. 0: the actors stream until the run stops.
    #[arg(long, default_value_t = 24_000)]
    env_steps: u64,
    /// Replay shard processes (default: replay.shards of the config, else 2).
    #[arg(long)]
    shards: Option<u32>,
    /// The coordinator's address; other roles (more actors, evaluators) may join it.
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// First metrics port: the roles serve /metrics on consecutive loopback ports from here, in
    /// start order (all printed at start). 0: any free port for each.
    #[arg(long, default_value_t = 9100)]
    metrics_port: u16,
    /// Restart a role that dies, once; without it, a dead role stops the run.
    #[arg(long)]
    restart: bool,
    /// Plain progress lines every 10 s even on a terminal.
    #[arg(long)]
    plain: bool,
}

fn main() -> ExitCode {
    match main_inner(Cli::parse()) {
        Ok(Outcome::Finished | Outcome::Interrupted) => ExitCode::SUCCESS,
        Ok(Outcome::Failed) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn main_inner(cli: Cli) -> Result<Outcome> {
    match cli.command {
        Command::Health(a) => {
            anyhow::ensure!(
                a.timeout_seconds.is_finite() && a.timeout_seconds > 0.0,
                "--timeout-seconds must be a number > 0"
            );
            let prober = dsm::probe::Prober::new().context("starting the probe's runtime")?;
            let timeout = std::time::Duration::from_secs_f64(a.timeout_seconds);
            match prober.health(&a.address, &a.service, timeout) {
                Ok(()) => {
                    println!("{}: SERVING", a.address);
                    Ok(Outcome::Finished)
                }
                Err(why) => {
                    eprintln!("{}: {why}", a.address);
                    Ok(Outcome::Failed)
                }
            }
        }
        Command::Dashboard(a) => {
            dashboard(&a)?;
            Ok(Outcome::Finished)
        }
        Command::Up(a) => {
            let exe = std::env::current_exe().context("finding the dsm executable")?;
            let bin_dir = exe.parent().context("the dsm executable has no directory")?.to_path_buf();
            let options = UpOptions {
                config: a.config,
                sets: a.sets,
                workdir: a.workdir,
                steps: a.steps,
                actors: a.actors,
                envs: a.envs,
                env_steps: a.env_steps,
                shards: a.shards,
                listen: a.listen,
                metrics_port: a.metrics_port,
                restart: a.restart,
                plain: a.plain,
                bin_dir,
            };
            up(&options)
        }
    }
}

fn dashboard(a: &DashboardArgs) -> Result<()> {
    use dsm::dashboard;
    anyhow::ensure!(a.range_seconds.is_finite() && a.range_seconds > 0.0, "--range-seconds must be a number > 0");
    let step = a.step_seconds.unwrap_or((a.range_seconds / 240.0).max(1.0));
    anyhow::ensure!(step.is_finite() && step > 0.0, "--step-seconds must be a number > 0");
    let json = match &a.dashboard {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
        None => dashboard::BUILT_IN.to_string(),
    };
    let (title, panels) = dashboard::parse(&json)?;
    let api =
        dsm::prom_api::PromApi::new(&a.prometheus, std::time::Duration::from_secs(30)).map_err(anyhow::Error::msg)?;
    let end = api.now().map_err(anyhow::Error::msg)?;
    let window = dashboard::Window { end, range: a.range_seconds, step };
    eprintln!("querying {} panels over the last {} s every {step} s", panels.len(), a.range_seconds);
    let rendered = dashboard::render(&api, &title, &panels, &window, &a.out)?;
    for (panel, path) in &rendered.panels {
        println!("{}: {panel}", path.display());
    }
    if let Some(path) = &rendered.overview {
        println!("{}: all panels", path.display());
    }
    for panel in &rendered.empty {
        println!("no data in the range: {panel}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["dsm", "up", "--config", "c.toml"]).unwrap();
        let Command::Up(a) = cli.command else { panic!("parsed as up") };
        assert_eq!((a.steps, a.actors, a.envs, a.env_steps, a.metrics_port), (10_000, 1, 16, 24_000, 9100));
        assert!(Cli::try_parse_from(["dsm", "up"]).is_err(), "--config is required");
        let cli = Cli::try_parse_from(["dsm", "health", "127.0.0.1:50051"]).unwrap();
        let Command::Health(h) = cli.command else { panic!("parsed as health") };
        assert_eq!((h.address.as_str(), h.service.as_str(), h.timeout_seconds), ("127.0.0.1:50051", "", 2.0));
        let cli = Cli::try_parse_from(["dsm", "dashboard", "--prometheus", "127.0.0.1:9090"]).unwrap();
        let Command::Dashboard(d) = cli.command else { panic!("parsed as dashboard") };
        assert_eq!((d.range_seconds, d.step_seconds, d.out), (900.0, None, PathBuf::from("dashboard")));
        assert!(Cli::try_parse_from(["dsm", "dashboard"]).is_err(), "--prometheus is required");
    }
}
