//! `anomaly-agent`: the edge agent binary.
//!
//! - `anomaly-agent run --config agent.toml` (the default command) runs the agent
//!   until SIGTERM/SIGINT;
//! - `anomaly-agent outbox inspect|verify --data-dir D` lists and checks the outbox;
//! - `anomaly-agent model install --model-path P --manifest m.json --payload p.bin`
//!   installs an unsigned local bundle;
//! - `anomaly-agent bench replay --rows N --features F` measures end-to-end replay
//!   throughput (file → pipeline → Isolation Forest → rules → outbox) on a
//!   current-thread runtime.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use sad_agent::config::AgentConfig;
use sad_agent::model_manager::ModelManager;
use sad_agent::outbox::{Outbox, OutboxConfig};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "anomaly-agent",
    version,
    about = "Edge agent of the stream anomaly detector"
)]
struct Cli {
    /// Configuration file (for `run`, the default command).
    #[arg(long, short, global = true, default_value = "agent.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent until SIGTERM or SIGINT.
    Run,
    /// Inspect or verify the outbox of a stopped agent.
    Outbox {
        #[command(subcommand)]
        op: OutboxOp,
    },
    /// Manage local models.
    Model {
        #[command(subcommand)]
        op: ModelOp,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        op: BenchOp,
    },
}

#[derive(Subcommand)]
enum OutboxOp {
    /// List the oldest pending alerts as JSON lines.
    Inspect {
        /// The agent's data directory (the outbox is `{data_dir}/outbox`).
        #[arg(long)]
        data_dir: PathBuf,
        /// Most alerts listed.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Decode every entry and check keys and sequence numbers; exit 1 on problems.
    Verify {
        /// The agent's data directory.
        #[arg(long)]
        data_dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum ModelOp {
    /// Install an unsigned bundle (refused when a public key is pinned).
    Install {
        /// The model directory (`MODEL_PATH`).
        #[arg(long, env = "MODEL_PATH")]
        model_path: PathBuf,
        /// Manifest as JSON.
        #[arg(long)]
        manifest: PathBuf,
        /// Payload file.
        #[arg(long)]
        payload: PathBuf,
    },
}

#[derive(Subcommand)]
enum BenchOp {
    /// End-to-end replay throughput through file source, pipeline, Isolation Forest, rules and outbox.
    Replay {
        /// Rows replayed.
        #[arg(long, default_value_t = 1_000_000)]
        rows: usize,
        /// Features per row.
        #[arg(long, default_value_t = 8)]
        features: usize,
        /// Trees of the Isolation Forest.
        #[arg(long, default_value_t = 100)]
        trees: usize,
        /// Events per pipeline batch.
        #[arg(long, default_value_t = 1024)]
        batch: usize,
        /// Expected share of anomalies the forest is calibrated for (0 = scikit-learn's
        /// `auto`); the generated data has 0.1 % outliers.
        #[arg(long, default_value_t = 0.001)]
        contamination: f64,
    },
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => run(&cli.config),
        Command::Outbox { op } => {
            init_logging(&std::env::var("LOG_LEVEL").unwrap_or_else(|_| "warn".into()));
            outbox(op)
        }
        Command::Model {
            op:
                ModelOp::Install {
                    model_path,
                    manifest,
                    payload,
                },
        } => {
            init_logging(&std::env::var("LOG_LEVEL").unwrap_or_else(|_| "warn".into()));
            let m: sad_common::ModelManifest = serde_json::from_slice(
                &std::fs::read(&manifest)
                    .with_context(|| format!("reading {}", manifest.display()))?,
            )
            .with_context(|| format!("parsing {}", manifest.display()))?;
            let p = std::fs::read(&payload)
                .with_context(|| format!("reading {}", payload.display()))?;
            let mgr = ModelManager::open(&model_path, None, None)?;
            let (name, version) = (m.name.clone(), m.version);
            mgr.install_local(m, p)?;
            println!(
                "installed {name} version {version} in {}",
                model_path.display()
            );
            Ok(())
        }
        Command::Bench {
            op:
                BenchOp::Replay {
                    rows,
                    features,
                    trees,
                    batch,
                    contamination,
                },
        } => {
            init_logging(&std::env::var("LOG_LEVEL").unwrap_or_else(|_| "warn".into()));
            bench::replay(rows, features, trees, batch, contamination)
        }
    }
}

fn run(config_path: &Path) -> Result<()> {
    let config = AgentConfig::load(config_path)?;
    init_logging(&config.log_level);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(8)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        let s = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("signal received");
            s.cancel();
        });
        sad_agent::app::run(config, shutdown).await?;
        Ok(())
    })
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn outbox(op: OutboxOp) -> Result<()> {
    let open = |dir: &Path| -> Result<Outbox> {
        let path = dir.join("outbox");
        if !path.exists() {
            bail!("no outbox at {}", path.display());
        }
        let cfg = OutboxConfig {
            path,
            ..OutboxConfig::default()
        };
        Ok(Outbox::open(&cfg, "inspect", None)?)
    };
    match op {
        OutboxOp::Inspect { data_dir, limit } => {
            let o = open(&data_dir)?;
            println!(
                "# depth {} bytes {} last_seq {} dropped {}",
                o.depth(),
                o.bytes(),
                o.last_seq(),
                o.dropped()
            );
            for a in o.inspect(limit)? {
                println!("{}", a.to_json());
            }
            Ok(())
        }
        OutboxOp::Verify { data_dir } => {
            let o = open(&data_dir)?;
            let report = o.verify()?;
            println!("{report}");
            if report.is_ok() {
                Ok(())
            } else {
                std::process::exit(1)
            }
        }
    }
}

mod bench {
    //! `bench replay`: throughput of the whole local path on one runtime thread.

    use super::*;
    use rand::{Rng, SeedableRng};
    use sad_agent::pipeline::{Pipeline, PipelineConfig, ScoringModel, StaticModels, run_pipeline};
    use sad_agent::rules::RulesConfig;
    use sad_agent::sources::file::FileSourceConfig;
    use sad_agent::sources::{BadInputReporter, MappingConfig};
    use sad_models::Detector;
    use sad_models::iforest::IsolationForestParams;
    use std::io::Write;

    fn normalish(rng: &mut impl Rng) -> f64 {
        (0..4).map(|_| rng.r#gen::<f64>()).sum::<f64>() - 2.0
    }

    pub fn replay(
        rows: usize,
        features: usize,
        trees: usize,
        batch: usize,
        contamination: f64,
    ) -> Result<()> {
        if features == 0 || rows == 0 {
            bail!("rows and features must be positive");
        }
        let dir = std::env::temp_dir().join(format!("sad-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let result = run_bench(&dir, rows, features, trees, batch, contamination);
        let _ = std::fs::remove_dir_all(&dir);
        result
    }

    fn run_bench(
        dir: &Path,
        rows: usize,
        features: usize,
        trees: usize,
        batch: usize,
        contamination: f64,
    ) -> Result<()> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let names: Vec<String> = (0..features).map(|i| format!("f{i}")).collect();
        // training data: the normal regime
        let train: Vec<f64> = (0..10_000 * features)
            .map(|_| normalish(&mut rng))
            .collect();
        let forest = IsolationForestParams {
            n_estimators: trees,
            contamination: if contamination > 0.0 {
                sad_models::iforest::Contamination::Fraction(contamination)
            } else {
                sad_models::iforest::Contamination::Auto
            },
            ..Default::default()
        }
        .fit(&train, features)?;
        // replay file: ts, series, features; 0.1 % of rows far out
        let path = dir.join("replay.csv");
        {
            let mut w = std::io::BufWriter::new(std::fs::File::create(&path)?);
            write!(w, "ts,series")?;
            for n in &names {
                write!(w, ",{n}")?;
            }
            writeln!(w)?;
            for i in 0..rows {
                write!(w, "{},m{}", i, i % 16)?;
                let outlier = rng.r#gen::<f64>() < 0.001;
                for _ in 0..features {
                    let v = normalish(&mut rng) + if outlier { 8.0 } else { 0.0 };
                    write!(w, ",{v:.4}")?;
                }
                writeln!(w)?;
            }
        }
        let file_bytes = std::fs::metadata(&path)?.len();
        let outbox = Outbox::open(
            &OutboxConfig {
                path: dir.join("outbox"),
                max_bytes: 1 << 30,
            },
            "bench",
            None,
        )?;
        let model = ScoringModel {
            name: "iforest".into(),
            kind: forest.kind(),
            version: 1,
            feature_names: Arc::new(names.clone()),
            window: 1,
            detector: Arc::new(forest),
        };
        let cfg = PipelineConfig {
            batch_max: batch,
            ..PipelineConfig::default()
        };
        let rules = RulesConfig {
            cooldown_ms: 100,
            ..RulesConfig::default()
        };
        let reporter = BadInputReporter::detached();
        let pipeline = Pipeline::new(
            cfg.clone(),
            rules,
            0,
            Arc::new(outbox.clone()),
            Arc::new(StaticModels(vec![model])),
            reporter.clone(),
        );
        let mut mapping = MappingConfig::new(&names.iter().map(String::as_str).collect::<Vec<_>>());
        mapping.series = Some(sad_agent::sources::SeriesKey {
            field: Some("series".into()),
            topic_level: None,
            fixed: None,
        });
        mapping.timestamp_field = Some("ts".into());
        let source = FileSourceConfig {
            name: "bench".into(),
            path: path.clone(),
            format: None,
            speed: 0.0,
            repeat: false,
            resume: false,
            model: None,
            mapping,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .max_blocking_threads(2)
            .build()?;
        let started = Instant::now();
        let pipeline = rt.block_on(async {
            let (tx, rx) = tokio::sync::mpsc::channel(cfg.channel_capacity);
            let reader = source.spawn(dir, tx, reporter.clone(), CancellationToken::new())?;
            let p = run_pipeline(pipeline, rx).await?;
            reader.await??;
            anyhow::Ok(p)
        })?;
        let secs = started.elapsed().as_secs_f64();
        let events = pipeline
            .counters()
            .events
            .load(std::sync::atomic::Ordering::Relaxed);
        println!(
            "replay: {rows} rows x {features} features ({:.1} MB CSV), isolation forest {trees} trees, batch {batch}",
            file_bytes as f64 / 1e6
        );
        println!(
            "scored {events} events in {secs:.3} s = {:.0} events/s; alerts raised {} (outbox last_seq), bad input {}",
            events as f64 / secs,
            outbox.last_seq(),
            reporter.total()
        );
        Ok(())
    }
}
