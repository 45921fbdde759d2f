//! `anomaly-coordinator`: the coordinator binary.
//!
//! Subcommands:
//! - `demo`: replay bundled labelled NAB series through the detectors and
//!   print alerts, explanations, precision and recall.
//! - `eval tabular|nab|skab`: the evaluation harness behind `docs/QUALITY.md`.

use anyhow::Result;
use clap::{Parser, Subcommand};

use sad_coordinator::{demo, evaluate};

/// Coordinator of the stream anomaly detector.
#[derive(Debug, Parser)]
#[command(name = "anomaly-coordinator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Replay bundled labelled data through the detectors and show alerts and precision/recall.
    Demo(demo::DemoArgs),
    /// Measure detection quality on labelled data (ROC-AUC, SKAB F1, NAB score).
    #[command(subcommand)]
    Eval(evaluate::EvalCommand),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Demo(args) => demo::run(&args),
        Command::Eval(cmd) => evaluate::run(&cmd),
    }
}
