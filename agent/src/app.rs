//! Wiring: sources → pipeline → outbox, the uplink, the model manager and
//! the local HTTP port, with an orderly shutdown.
//!
//! Shutdown order when the token is cancelled (SIGTERM/SIGINT in `main`):
//! 1. sources stop reading (the file source at the next line, MQTT and the
//!    scraper at their next poll) and the HTTP server stops accepting, which
//!    drops every sender of the pipeline's channel;
//! 2. the pipeline drains what is left in the channel, appending the last
//!    alerts to the outbox (each append is flushed before it returns);
//! 3. the outbox is flushed once more;
//! 4. the uplink gets a few seconds to send what is pending, then publishes
//!    its offline status and disconnects.
//!
//! Whatever is in the outbox survives `kill -9` at any point; see
//! [`crate::outbox`].

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{AgentConfig, AgentConfigError, SourceConfig};
use crate::heartbeat::{Counters, Reservoir, ScoreStats};
use crate::http::{HttpState, router, serve};
use crate::metrics::AgentMetrics;
use crate::model_manager::{ModelManager, ModelManagerError};
use crate::outbox::{Outbox, OutboxError};
use crate::pipeline::{HeartbeatObserver, ManagedModels, Pipeline, PipelineError, run_pipeline};
use crate::sources::BadInputReporter;
use crate::uplink::{UplinkShared, run_uplink};

/// Why the agent could not start or stopped with an error.
#[derive(Debug, Error)]
pub enum AppError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] AgentConfigError),
    /// The outbox cannot be opened.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    /// The model directory cannot be opened.
    #[error(transparent)]
    Models(#[from] ModelManagerError),
    /// The pipeline stopped with an error.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    /// Metrics could not be registered.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// A socket or directory could not be set up.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A source failed to start.
    #[error("{0}")]
    Source(String),
    /// A background task panicked.
    #[error("task failed: {0}")]
    Task(String),
}

/// A started agent.
pub struct RunningAgent {
    /// Where `/health`, `/metrics` and `/ingest` are served, if enabled.
    pub http_addr: Option<SocketAddr>,
    /// The outbox (for inspection in tests).
    pub outbox: Outbox,
    /// The model manager.
    pub models: ModelManager,
    /// Completes when the agent has stopped.
    pub done: JoinHandle<Result<(), AppError>>,
}

/// Runs the agent until `shutdown` is cancelled (or the pipeline fails).
pub async fn run(config: AgentConfig, shutdown: CancellationToken) -> Result<(), AppError> {
    let agent = start(config, shutdown).await?;
    agent
        .done
        .await
        .map_err(|e| AppError::Task(e.to_string()))?
}

/// Starts every part of the agent and returns once it is serving.
pub async fn start(
    config: AgentConfig,
    shutdown: CancellationToken,
) -> Result<RunningAgent, AppError> {
    config.validate()?;
    let io = |context: String| move |source| AppError::Io { context, source };
    std::fs::create_dir_all(&config.data_dir)
        .map_err(io(format!("cannot create {}", config.data_dir.display())))?;
    let metrics = AgentMetrics::new()?;
    let counters = Counters::default();
    let agent_id = config.agent_id.clone();

    let outbox_cfg = config.outbox_config();
    let (outbox, models) = {
        let (m1, m2) = (metrics.clone(), metrics.clone());
        let id = agent_id.clone();
        let model_dir = config.model.path.clone();
        let data_dir = config.data_dir.clone();
        let key = config.model.pinned_key()?;
        tokio::task::spawn_blocking(move || -> Result<(Outbox, ModelManager), AppError> {
            let outbox = Outbox::open(&outbox_cfg, &id, Some(m1))?;
            // Source positions stored with the alerts win over older offset files.
            crate::sources::file::reconcile_offsets(&data_dir, &outbox.marks()?);
            let models = ModelManager::open(&model_dir, key, Some(m2))?;
            Ok((outbox, models))
        })
        .await
        .map_err(|e| AppError::Task(e.to_string()))??
    };
    let statuses = models.statuses();
    tracing::info!(
        agent_id = %agent_id,
        models = ?statuses.iter().map(|m| format!("{}@{}", m.name, m.version)).collect::<Vec<_>>(),
        outbox_depth = outbox.depth(),
        last_seq = outbox.last_seq(),
        model_type = ?config.model.model_type,
        "agent starting"
    );

    let reporter = BadInputReporter::new(Some(metrics.clone()), counters.bad_input.clone());
    let reservoir = Arc::new(Mutex::new(Reservoir::new(1000, rand::random())));
    let scores = Arc::new(Mutex::new(ScoreStats::default()));
    let episode_base = (crate::sources::now_ms().max(0) as u64).saturating_mul(1000);
    let rules_updates = crate::rules::RulesUpdates::default();
    let pipeline = Pipeline::new(
        config.pipeline.clone(),
        config.rules.clone(),
        episode_base,
        Arc::new(outbox.clone()),
        Arc::new(ManagedModels::new(models.clone())),
        reporter.clone(),
    )
    .with_rules_updates(rules_updates.clone())
    .with_metrics(metrics.clone())
    .with_counters(counters.clone())
    .with_observer(Box::new(HeartbeatObserver {
        reservoir: reservoir.clone(),
        scores: scores.clone(),
    }));
    let (tx, rx) = tokio::sync::mpsc::channel(config.pipeline.channel_capacity);

    // sources
    let sources_stop = shutdown.child_token();
    let mut source_tasks: Vec<JoinHandle<()>> = Vec::new();
    let mut ingest = None;
    for s in config.sources.clone() {
        let name = s.name().to_string();
        match s {
            SourceConfig::File(c) => {
                let h = c
                    .spawn(
                        &config.data_dir,
                        tx.clone(),
                        reporter.clone(),
                        sources_stop.clone(),
                    )
                    .map_err(|e| AppError::Source(e.to_string()))?;
                source_tasks.push(tokio::spawn(async move {
                    match h.await {
                        Ok(Ok(n)) => {
                            tracing::info!(source = %name, events = n, "file source finished")
                        }
                        Ok(Err(e)) => {
                            tracing::error!(source = %name, error = %e, "file source failed")
                        }
                        Err(e) => {
                            tracing::error!(source = %name, error = %e, "file source panicked")
                        }
                    }
                }));
            }
            SourceConfig::Mqtt(c) => {
                let fut = c.run(
                    agent_id.clone(),
                    tx.clone(),
                    reporter.clone(),
                    sources_stop.clone(),
                );
                source_tasks.push(tokio::spawn(async move {
                    if let Err(e) = fut.await {
                        tracing::error!(source = %name, error = %e, "mqtt source failed");
                    }
                }));
            }
            SourceConfig::Prometheus(c) => {
                let fut = c.run(tx.clone(), reporter.clone(), sources_stop.clone());
                source_tasks.push(tokio::spawn(async move {
                    if let Err(e) = fut.await {
                        tracing::error!(source = %name, error = %e, "prometheus source failed");
                    }
                }));
            }
            SourceConfig::Http(c) => {
                ingest = Some(
                    c.build(tx.clone(), reporter.clone())
                        .map_err(|e| AppError::Source(e.to_string()))?,
                );
            }
        }
    }
    drop(tx);

    // local http
    let mut http_addr = None;
    let http_task = if config.http.enabled {
        let listener = tokio::net::TcpListener::bind(config.http.listen)
            .await
            .map_err(io(format!("cannot listen on {}", config.http.listen)))?;
        http_addr = listener.local_addr().ok();
        let (m, o) = (models.clone(), outbox.clone());
        let state = HttpState {
            agent_id: agent_id.clone(),
            metrics: metrics.clone(),
            probe: Arc::new(move || (m.statuses(), o.depth(), o.last_seq())),
            ingest,
            started: Instant::now(),
        };
        let stop = sources_stop.clone();
        Some(tokio::spawn(async move {
            if let Err(e) = serve(listener, router(state), stop).await {
                tracing::error!(error = %e, "http server failed");
            }
        }))
    } else {
        drop(ingest);
        None
    };

    // pipeline and uplink
    let pipeline_task = tokio::spawn(run_pipeline(pipeline, rx));
    let uplink_stop = CancellationToken::new();
    let mut uplink_cfg = config.uplink.clone();
    uplink_cfg.fleet = config.fleet.clone();
    uplink_cfg.group = config.group.clone();
    let shared = UplinkShared {
        outbox: outbox.clone(),
        models: models.clone(),
        metrics: metrics.clone(),
        counters: counters.clone(),
        reservoir,
        scores,
        agent_id: agent_id.clone(),
        rules: rules_updates,
    };
    let uplink_task = tokio::spawn(run_uplink(uplink_cfg, shared, uplink_stop.clone()));

    let done_outbox = outbox.clone();
    let done = tokio::spawn(async move {
        let mut pipeline_task = pipeline_task;
        let mut uplink_task = uplink_task;
        let mut result: Result<(), AppError> = Ok(());
        let mut pipeline_done = false;
        let mut uplink_done = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                r = &mut pipeline_task, if !pipeline_done => {
                    pipeline_done = true;
                    match flatten(r) {
                        // Every source finished (e.g. a replay): keep delivering alerts.
                        Ok(()) => tracing::info!("all sources finished"),
                        Err(e) => {
                            tracing::error!(error = %e, "pipeline stopped");
                            result = Err(e);
                            break;
                        }
                    }
                }
                r = &mut uplink_task, if !uplink_done => {
                    uplink_done = true;
                    match r {
                        Ok(Err(e)) => tracing::error!(error = %e, "uplink stopped"),
                        Err(e) => tracing::error!(error = %e, "uplink panicked"),
                        Ok(Ok(())) => {}
                    }
                    break;
                }
            }
        }
        tracing::info!("shutting down");
        sources_stop.cancel();
        for t in source_tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
        if let Some(t) = http_task {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
        if !pipeline_done {
            match tokio::time::timeout(Duration::from_secs(30), pipeline_task).await {
                Ok(r) => {
                    if let Err(e) = flatten(r) {
                        tracing::error!(error = %e, "pipeline failed while draining");
                        result = Err(e);
                    }
                }
                Err(_) => tracing::warn!("pipeline did not drain within 30 s"),
            }
        }
        let o = done_outbox.clone();
        let _ = tokio::task::spawn_blocking(move || o.flush()).await;
        if !uplink_done {
            // Give the uplink a moment to send the last alerts, then stop it.
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while done_outbox.depth() > 0 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
            .await;
            uplink_stop.cancel();
            match tokio::time::timeout(Duration::from_secs(10), uplink_task).await {
                Ok(Ok(Err(e))) => tracing::warn!(error = %e, "uplink stopped with an error"),
                Ok(Err(e)) => tracing::warn!(error = %e, "uplink panicked"),
                Err(_) => tracing::warn!("uplink did not stop within 10 s"),
                Ok(Ok(Ok(()))) => {}
            }
        }
        tracing::info!(
            outbox_depth = done_outbox.depth(),
            last_seq = done_outbox.last_seq(),
            "agent stopped"
        );
        result
    });
    Ok(RunningAgent {
        http_addr,
        outbox,
        models,
        done,
    })
}

fn flatten(
    r: Result<Result<Pipeline, PipelineError>, tokio::task::JoinError>,
) -> Result<(), AppError> {
    match r {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(AppError::Pipeline(e)),
        Err(e) => Err(AppError::Task(e.to_string())),
    }
}
