//! `anomaly-coordinator`: the coordinator binary.
//!
//! Subcommands:
//! - `serve`: the REST API (8001), Prometheus (9091), embedded broker, alert store.
//! - `demo`: replay bundled labelled NAB series through the detectors and
//!   print alerts, explanations, precision and recall.
//! - `eval tabular|nab|skab`: the evaluation harness behind `docs/QUALITY.md`.
//! - `train`: train, fine-tune and export models (neural ones with the `train` feature).

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
    /// Train, fine-tune and export models, or rebuild the pre-trained ones.
    #[cfg(feature = "train")]
    Train(sad_coordinator::train_cmd::TrainArgs),
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

/// Resolves on SIGINT (Ctrl-C) or SIGTERM (systemd, docker stop).
async fn wait_for_signal() -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("install the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("wait for ctrl-c")?,
        _ = term.recv() => {}
    }
    Ok(())
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
        wait_for_signal().await?;
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
        #[cfg(feature = "train")]
        Command::Train(args) => sad_coordinator::train_cmd::run(&args),
    }
}
