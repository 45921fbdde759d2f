//! `anomaly-coordinator`: the coordinator binary.
//!
//! Subcommands:
//! - `serve`: the REST API (8001), Prometheus (9091), embedded broker, alert store.
//! - `demo`: replay bundled labelled NAB series through the detectors and
//!   print alerts, explanations, precision and recall.
//! - `eval tabular|nab|skab`: the evaluation harness behind `docs/QUALITY.md`.
//! - `train` is not wired yet: `train_cmd.rs` needs `sad_models::nn::pretrained`, not committed.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use sad_coordinator::config::CoordinatorConfig;
use sad_coordinator::{app, demo, evaluate};

/// Coordinator of the stream anomaly detector.
#[derive(Debug, Parser)]
#[command(name = "anomaly-coordinator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the REST API, Prometheus metrics, the embedded broker and the alert store.
    Serve(ServeArgs),
    /// Replay bundled labelled data through the detectors and show alerts and precision/recall.
    Demo(demo::DemoArgs),
    /// Measure detection quality on labelled data (ROC-AUC, SKAB F1, NAB score).
    #[command(subcommand)]
    Eval(evaluate::EvalCommand),
}

/// Arguments of `serve`.
#[derive(Debug, Args)]
struct ServeArgs {
    /// Optional TOML file (api_listen, data_dir, api_token, caps, broker_listen, fleet).
    #[arg(long)]
    config: Option<PathBuf>,
}

fn init_tracing(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).try_init();
}

fn serve(args: &ServeArgs) -> Result<()> {
    let cfg = CoordinatorConfig::load(args.config.as_deref()).context("configuration")?;
    init_tracing(&cfg.env.log_level);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the tokio runtime")?;
    rt.block_on(async move {
        let shutdown = CancellationToken::new();
        let running = app::serve(cfg, shutdown.clone()).await?;
        println!(
            "api http://{}/api/v1  metrics http://{}/metrics  mqtt {}",
            running.api_addr, running.metrics_addr, running.mqtt_url
        );
        tokio::signal::ctrl_c().await.context("wait for ctrl-c")?;
        shutdown.cancel();
        running.wait().await;
        Ok(())
    })
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(&args),
        Command::Demo(args) => demo::run(&args),
        Command::Eval(cmd) => evaluate::run(&cmd),
    }
}
