//! `learner`: trains a δ-model on an offline dataset written by `actor simulate`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use burn::backend::{Autodiff, NdArray};
use clap::Parser;

use common::config::ConfigDoc;
use learner::train::run::run;

/// Train a δ-model (distributional successor measure) on an offline `.npz` dataset, with
/// checkpoints and resume. Runs on the CPU (burn's ndarray backend).
#[derive(Debug, Parser)]
#[command(name = "learner", version, about)]
struct Cli {
    /// Experiment file with [experiment], [model] and [train] sections (see configs/).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Dataset written by `actor simulate` (observations and step_type are used).
    #[arg(long)]
    dataset: PathBuf,
    /// Total iterations (one discriminator step + one generator step each); overrides
    /// train.steps. A resumed run continues up to this count.
    #[arg(long)]
    steps: Option<u64>,
    /// Where checkpoints go; a rerun with the same directory resumes from its newest one.
    #[arg(long, default_value = "dsm-work")]
    workdir: PathBuf,
    /// Override one config value, e.g. `--set model.num_outer=1`. Repeatable.
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    sets: Vec<String>,
}

fn main() -> ExitCode {
    match main_inner(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn main_inner(cli: Cli) -> Result<()> {
    let mut doc = match &cli.config {
        Some(path) => ConfigDoc::load(path)?,
        None => ConfigDoc::empty(),
    };
    doc.apply_sets(&cli.sets)?;
    if let Some(steps) = cli.steps {
        doc.apply_set(&format!("train.steps={steps}"))?;
    }
    run::<Autodiff<NdArray>>(doc, &cli.dataset, &cli.workdir, Default::default())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }
}
