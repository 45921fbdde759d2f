//! The wiring of `anomaly-coordinator serve`.
//!
//! [`serve`] starts, in order: the model registry (training the seed's
//! default model at first start), the embedded MQTT broker when `MQTT_URL`
//! is unset, the sled alert store under `{data_dir}/alerts`, the fleet
//! table, the rules publisher (retained JSON on `{prefix}/config/{fleet}/{model}`),
//! the REST API and the Prometheus listener. Every listener is bound before
//! `serve` returns, so port 0 works and the returned addresses are real.
//! Cancelling the token stops the listeners gracefully.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use rumqttc::{AsyncClient, MqttOptions, QoS};
use serde_json::Value;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use sad_agent::rules::RulesConfig;
use sad_common::Severity;

use crate::api::alerts::{AlertBackend, AlertFilter, AlertView, BackendError, FleetBackend};
use crate::api::models::{Jobs, RulesPublisher, RulesStore};
use crate::api::registry::ModelEntry;
use crate::api::registry::ModelRegistry;
use crate::api::{ApiLimits, ApiState, AppState, HealthBoard};
use crate::broker::start_embedded_broker;
use crate::central::{CentralPipeline, run_central_detection};
use crate::config::CoordinatorConfig;
use crate::drift::{DriftConfig, DriftTracker};
use crate::fleet::Fleet;
use crate::gate::GateVerdict;
use crate::intake::{IntakeConfig, run_intake_with_quality};
use crate::kafka::{AlertSink, KafkaConfig, ensure_topics};
use crate::metrics::CoordinatorMetrics;
use crate::quality::Quality;
use crate::rollout::{BundlePublisher, PublishOptions, Rollout};
use crate::signing::Signer25519;
use crate::store::{AlertQuery, AlertStore, StoreConfig};
use crate::training::{CandidateSink, RetrainQueue, RetrainSettings, retrain_loop};

/// Why `serve` could not start.
#[derive(Debug, Error)]
pub enum ServeError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr} for {what}: {source}")]
    Bind {
        /// What the listener is for.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The embedded broker's port is taken.
    #[error(
        "the embedded mqtt broker cannot listen on {0}: the port is taken (another broker?); set MQTT_URL to use it, or choose another broker_listen"
    )]
    BrokerPortTaken(SocketAddr),
    /// Another component failed to start.
    #[error("{what}: {reason}")]
    Start {
        /// The component.
        what: &'static str,
        /// Why.
        reason: String,
    },
}

fn start_err(what: &'static str, e: impl std::fmt::Display) -> ServeError {
    ServeError::Start {
        what,
        reason: e.to_string(),
    }
}

/// A running coordinator: its bound addresses and shared state.
pub struct RunningCoordinator {
    /// REST API address.
    pub api_addr: SocketAddr,
    /// Prometheus `/metrics` address.
    pub metrics_addr: SocketAddr,
    /// MQTT broker URL in use (embedded or `MQTT_URL`).
    pub mqtt_url: String,
    /// The API's state (registry, quality, alerts, fleet).
    pub state: AppState,
    /// The alert store.
    pub store: AlertStore,
    /// The fleet table.
    pub fleet: Fleet,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningCoordinator {
    /// Waits until every listener has stopped (after the shutdown token fires).
    pub async fn wait(self) {
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// The sled store seen through the API's trait.
struct StoreBackend(AlertStore);

impl AlertBackend for StoreBackend {
    fn query(
        &self,
        f: &AlertFilter,
        min_severity: Option<Severity>,
        limit: usize,
    ) -> Result<(Vec<AlertView>, Option<String>), BackendError> {
        let q = AlertQuery {
            since_ms: f.since_ms,
            until_ms: f.until_ms,
            agent: f.agent.clone(),
            series: f.series.clone(),
            min_severity,
            limit: Some(limit),
            cursor: f.cursor.clone(),
        };
        let rows = self.0.query(&q).map_err(|e| BackendError(e.to_string()))?;
        let next = (rows.len() == limit)
            .then(|| rows.last().map(|r| r.cursor()))
            .flatten();
        Ok((rows.iter().map(view).collect(), next))
    }

    fn get(&self, id: &str) -> Result<Option<AlertView>, BackendError> {
        Ok(self
            .0
            .get(id)
            .map_err(|e| BackendError(e.to_string()))?
            .as_ref()
            .map(view))
    }

    fn set_feedback(&self, id: &str, true_positive: bool) -> Result<bool, BackendError> {
        self.0
            .set_feedback(id, true_positive)
            .map_err(|e| BackendError(e.to_string()))
    }

    fn len(&self) -> usize {
        self.0.len() as usize
    }
}

fn view(s: &crate::store::StoredAlert) -> AlertView {
    AlertView {
        record: (&s.alert).into(),
        received_ms: s.received_ms,
        feedback: s.feedback,
    }
}

struct FleetView(Fleet);

impl FleetBackend for FleetView {
    fn agents(&self) -> Vec<Value> {
        self.0
            .agents()
            .iter()
            .map(|a| serde_json::to_value(a).unwrap_or(Value::Null))
            .collect()
    }

    fn online(&self) -> usize {
        self.0.online()
    }
}

/// Publishes rules retained over MQTT.
struct MqttRules {
    client: AsyncClient,
    prefix: String,
    fleet: String,
}

impl RulesPublisher for MqttRules {
    fn publish(&self, model: &str, rules: &RulesConfig) -> Result<(), String> {
        let topic = rules_topic(&self.prefix, &self.fleet, model);
        let body = serde_json::to_vec(rules).map_err(|e| e.to_string())?;
        self.client
            .try_publish(topic, QoS::AtLeastOnce, true, body)
            .map_err(|e| e.to_string())
    }
}

/// Publishes signed model bundles retained over MQTT (QoS 1).
struct MqttBundles {
    client: AsyncClient,
}

impl BundlePublisher for MqttBundles {
    fn publish_retained(&self, topic: &str, bytes: Vec<u8>) -> Result<(), String> {
        self.client
            .try_publish(topic, QoS::AtLeastOnce, true, bytes)
            .map_err(|e| e.to_string())
    }
}

/// Hands versions from periodic retraining to the rollout: a version that
/// passed its gate goes out (to the configured canary group first, if any)
/// when the model is published to the fleet at all; the others stay in the
/// registry's history.
struct RetrainToRollout {
    rollout: Arc<Rollout>,
    canary_group: Option<String>,
    metrics: CoordinatorMetrics,
}

impl CandidateSink for RetrainToRollout {
    fn candidate(&self, entry: Arc<ModelEntry>, verdict: &GateVerdict) {
        let name = &entry.manifest.name;
        let result = if !verdict.publishable {
            tracing::warn!(model = %name, version = entry.manifest.version, note = %verdict.note, "retrained version failed its quality gate; kept, not published");
            "rejected"
        } else if self.rollout.status(name).active.is_none() {
            "saved"
        } else {
            let opts = PublishOptions {
                version: Some(entry.manifest.version),
                canary_group: self.canary_group.clone(),
                force: false,
            };
            match self.rollout.publish(name, &opts) {
                Ok(_) => "published",
                Err(e) => {
                    tracing::warn!(model = %name, error = %e, "retrained version not published");
                    "failed"
                }
            }
        };
        self.metrics.retrains.with_label_values(&[result]).inc();
    }
}

/// The retained topic of a model's rules: `{prefix}/config/{fleet}/{model}`.
pub fn rules_topic(prefix: &str, fleet: &str, model: &str) -> String {
    format!("{prefix}/config/{fleet}/{model}")
}

/// Host and port of an `mqtt://host:port` (or `tcp://`) URL.
pub fn mqtt_host_port(url: &str) -> Option<(String, u16)> {
    let rest = url
        .strip_prefix("mqtt://")
        .or_else(|| url.strip_prefix("tcp://"))
        .unwrap_or(url);
    let rest = rest.split(['/', '?']).next()?;
    let (host, port) = rest.rsplit_once(':')?;
    Some((
        host.trim_matches(['[', ']']).to_string(),
        port.parse().ok()?,
    ))
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { what, addr, source })
}

/// Starts the coordinator; returns once every listener is bound.
pub async fn serve(
    cfg: CoordinatorConfig,
    shutdown: CancellationToken,
) -> Result<RunningCoordinator, ServeError> {
    let started = Instant::now();
    let data_dir = cfg.data_dir.clone();
    std::fs::create_dir_all(&data_dir).map_err(|e| start_err("data directory", e))?;
    let metrics = CoordinatorMetrics::new().map_err(|e| start_err("metrics", e))?;
    let health = Arc::new(HealthBoard::default());

    let model_dir = cfg.model_dir().to_path_buf();
    let registry = tokio::task::spawn_blocking(move || ModelRegistry::open(model_dir))
        .await
        .map_err(|e| start_err("model registry", e))?
        .map_err(|e| start_err("model registry", e))?;
    let registry = Arc::new(registry);
    let rollout = {
        let (dir, reg) = (data_dir.clone(), registry.clone());
        let rcfg = cfg
            .rollout
            .to_config(&cfg.fleet, &cfg.env.mqtt_topic_prefix);
        tokio::task::spawn_blocking(move || -> Result<Rollout, String> {
            let signer = Signer25519::load_or_generate(&dir).map_err(|e| e.to_string())?;
            Rollout::open(&dir, rcfg, reg, Arc::new(signer)).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| start_err("model rollout", e))?
        .map_err(|e| start_err("model rollout", e))?
    };
    let rollout = Arc::new(rollout.with_metrics(metrics.clone()));

    let mqtt_url = match &cfg.env.mqtt_url {
        Some(u) => u.clone(),
        None => {
            let listen = cfg.broker_listen;
            if listen.port() != 0 && std::net::TcpListener::bind(listen).is_err() {
                return Err(ServeError::BrokerPortTaken(listen));
            }
            let dir: PathBuf = data_dir.join("broker");
            let b = tokio::task::spawn_blocking(move || start_embedded_broker(listen, &dir))
                .await
                .map_err(|e| start_err("embedded broker", e))?
                .map_err(|e| start_err("embedded broker", e))?;
            b.url.clone()
        }
    };
    health.set("mqtt", "ok", mqtt_url.clone());

    let store_cfg = StoreConfig::at(data_dir.join("alerts"));
    let store = tokio::task::spawn_blocking(move || AlertStore::open(&store_cfg))
        .await
        .map_err(|e| start_err("alert store", e))?
        .map_err(|e| start_err("alert store", e))?;
    health.set(
        "storage",
        "ok",
        data_dir.join("alerts").display().to_string(),
    );
    match &cfg.env.kafka_brokers {
        Some(b) => health.set("kafka", "configured", b.clone()),
        None => health.set(
            "kafka",
            "disabled",
            "KAFKA_BROKERS unset: alerts stay in the store",
        ),
    }
    let fleet = Fleet::new(Some(metrics.clone()));
    let quality = Arc::new(Quality::new(Some(metrics.clone())));

    let rules = Arc::new(RulesStore::open(&data_dir).map_err(|e| start_err("rules", e))?);
    let mut tasks = Vec::new();

    // Alerts: intake from the agents, Kafka bridge when KAFKA_BROKERS is set,
    // central detection on the input topic, retention in the background.
    let kafka_cfg = KafkaConfig::from_env(&cfg.env);
    let training_kafka = kafka_cfg.clone();
    let sink = match &kafka_cfg {
        Some(k) => {
            if let Err(e) = ensure_topics(k).await {
                // Deliveries retry until the broker answers; the intake acks nothing meanwhile.
                tracing::warn!(error = %e, "could not create the kafka topics yet");
            }
            Arc::new(AlertSink::kafka(k, Some(metrics.clone())).map_err(|e| start_err("kafka", e))?)
        }
        None => Arc::new(AlertSink::store_only()),
    };
    let intake_cfg = IntakeConfig {
        mqtt_url: mqtt_url.clone(),
        topic_prefix: cfg.env.mqtt_topic_prefix.clone(),
        share_group: Some("sad-coordinators".into()),
        client_id: format!("sad-coordinator-intake-{}", replica_id()),
    };
    {
        let (store, sink, fleet, m, stop) = (
            store.clone(),
            sink.clone(),
            fleet.clone(),
            metrics.clone(),
            shutdown.clone(),
        );
        let q = quality.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(e) =
                run_intake_with_quality(intake_cfg, store, sink, fleet, m, Some(q), stop).await
            {
                tracing::error!(error = %e, "alert intake stopped");
            }
        }));
    }
    if let Some(k) = kafka_cfg {
        let central = CentralPipeline::streaming().with_quality(quality.clone());
        let (store, sink, m, stop) = (
            store.clone(),
            sink.clone(),
            metrics.clone(),
            shutdown.clone(),
        );
        tasks.push(tokio::spawn(async move {
            if let Err(e) = run_central_detection(&k, central, store, sink, m, stop).await {
                tracing::error!(error = %e, "central detection stopped");
            }
        }));
    }
    {
        let (store, fleet, stop) = (store.clone(), fleet.clone(), shutdown.clone());
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let now = sad_agent::heartbeat::now_ms();
                fleet.expire(now, Duration::from_secs(120));
                let st = store.clone();
                match tokio::task::spawn_blocking(move || st.enforce_retention(now)).await {
                    Ok(Err(e)) => tracing::warn!(error = %e, "alert retention failed"),
                    Err(e) => tracing::warn!(error = %e, "alert retention task failed"),
                    Ok(Ok(_)) => {}
                }
            }
        }));
    }
    if let Some((host, port)) = mqtt_host_port(&mqtt_url) {
        let mut opts = MqttOptions::new(
            format!("sad-coordinator-api-{}", std::process::id()),
            host,
            port,
        );
        opts.set_keep_alive(Duration::from_secs(30))
            .set_max_packet_size(
                1 << 20,
                sad_common::wire::limits::MAX_BUNDLE_FRAME_BYTES + 64 * 1024,
            );
        let (client, mut eventloop) = AsyncClient::new(opts, 1024);
        let stop = shutdown.clone();
        let h = health.clone();
        let url = mqtt_url.clone();
        let r = rollout.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    ev = eventloop.poll() => {
                        match ev {
                            Err(e) => {
                                h.set("mqtt", "down", format!("{url}: {e}"));
                                tokio::time::sleep(Duration::from_secs(1)).await;
                            }
                            Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                                h.set("mqtt", "ok", url.clone());
                                // Every (re)connection publishes the active and canary
                                // bundles again: a restarted broker may have lost them.
                                let r = r.clone();
                                tokio::task::spawn_blocking(move || match r.reconcile() {
                                    Ok(n) => tracing::info!(bundles = n, "model bundles republished"),
                                    Err(e) => tracing::warn!(error = %e, "could not republish model bundles"),
                                });
                            }
                            Ok(_) => h.set("mqtt", "ok", url.clone()),
                        }
                    }
                }
            }
        }));
        rollout.set_publisher(Arc::new(MqttBundles {
            client: client.clone(),
        }));
        {
            let (r, fleet, stop) = (rollout.clone(), fleet.clone(), shutdown.clone());
            let every = r.config().check_every;
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tick.tick() => {}
                    }
                    let (r, agents) = (r.clone(), fleet.agents());
                    let now = sad_agent::heartbeat::now_ms();
                    if let Err(e) = tokio::task::spawn_blocking(move || r.tick(&agents, now)).await
                    {
                        tracing::warn!(error = %e, "canary health check failed");
                    }
                }
            }));
        }
        rules.set_publisher(Arc::new(MqttRules {
            client,
            prefix: cfg.env.mqtt_topic_prefix.clone(),
            fleet: cfg.fleet.clone(),
        }));
    }

    // Retraining on RETRAIN_INTERVAL, and drift of deployed models.
    let retrain_queue = Arc::new(RetrainQueue::default());
    if let Some(every) = cfg.env.retrain_interval() {
        let sink = Arc::new(RetrainToRollout {
            rollout: rollout.clone(),
            canary_group: cfg.rollout.retrain_canary_group.clone(),
            metrics: metrics.clone(),
        });
        tasks.push(tokio::spawn(retrain_loop(
            registry.clone(),
            fleet.clone(),
            RetrainSettings::every(every),
            sink,
            Some(retrain_queue.clone()),
            shutdown.clone(),
        )));
    }
    {
        let mut tracker = DriftTracker::new(DriftConfig {
            retrain_on_drift: cfg.rollout.retrain_on_drift,
            ..DriftConfig::default()
        });
        let (reg, fleet, m, q, stop) = (
            registry.clone(),
            fleet.clone(),
            metrics.clone(),
            retrain_queue.clone(),
            shutdown.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(30));
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => {}
                }
                for s in tracker.assess(&reg, &fleet) {
                    for (signal, v) in [("score", s.score_shift), ("feature", s.feature_shift)] {
                        if let Some(v) = v {
                            m.model_drift.with_label_values(&[&s.model, signal]).set(v);
                        }
                    }
                    if s.drifted {
                        tracing::warn!(model = %s.model, version = s.version, score_shift = ?s.score_shift, feature_shift = ?s.feature_shift, "model drift");
                    }
                    if s.retrain {
                        q.request(&s.model);
                    }
                }
            }
        }));
    }
    let training_sources = Arc::new(crate::api::models::TrainingSources {
        fleet: Some(fleet.clone()),
        kafka: training_kafka,
        gate: crate::gate::GateConfig::default(),
    });

    let state: AppState = Arc::new(ApiState {
        registry,
        metrics: metrics.clone(),
        quality,
        alerts: Arc::new(StoreBackend(store.clone())),
        fleet: Arc::new(FleetView(fleet.clone())),
        rules,
        jobs: Arc::new(Jobs::default()),
        rollout: Some(rollout),
        health,
        limits: ApiLimits {
            max_body_bytes: cfg.max_body_bytes,
            max_batch_rows: cfg.max_batch_rows,
            data_dir: data_dir.clone(),
        },
        token: cfg.api_token.clone(),
        default_threshold: cfg.env.threshold,
        default_kind: cfg.env.model_type,
        prometheus_port: cfg.prometheus_listen.port(),
        started,
    });

    let api_listener = bind("the rest api", cfg.api_listen).await?;
    let metrics_listener = bind("prometheus", cfg.prometheus_listen).await?;
    let api_addr = api_listener
        .local_addr()
        .map_err(|e| start_err("the rest api", e))?;
    let metrics_addr = metrics_listener
        .local_addr()
        .map_err(|e| start_err("prometheus", e))?;

    let router = crate::api::router(state.clone()).layer(axum::Extension(training_sources));
    let stop = shutdown.clone();
    tasks.push(tokio::spawn(async move {
        if let Err(e) = axum::serve(api_listener, router)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
        {
            tracing::error!(error = %e, "rest api stopped");
        }
    }));
    let m = metrics.clone();
    let prom = Router::new().route(
        "/metrics",
        get(move || {
            let m = m.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4",
                    )],
                    m.encode(),
                )
            }
        }),
    );
    let stop = shutdown.clone();
    tasks.push(tokio::spawn(async move {
        if let Err(e) = axum::serve(metrics_listener, prom)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
        {
            tracing::error!(error = %e, "prometheus listener stopped");
        }
    }));
    tracing::info!(%api_addr, %metrics_addr, mqtt = %mqtt_url, "coordinator serving");
    Ok(RunningCoordinator {
        api_addr,
        metrics_addr,
        mqtt_url,
        state,
        store,
        fleet,
        tasks,
    })
}

/// A stable id for this replica's persistent MQTT session: `COORDINATOR_ID`,
/// else the host name, else `local`.
fn replica_id() -> String {
    let raw = std::env::var("COORDINATOR_ID")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .unwrap_or_default();
    let id: String = raw
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(48)
        .collect();
    if id.is_empty() { "local".into() } else { id }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_ids_are_topic_and_client_id_safe() {
        let id = replica_id();
        assert!(!id.is_empty() && id.len() <= 48);
        assert!(
            id.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        );
    }

    #[test]
    fn mqtt_urls_give_host_and_port() {
        assert_eq!(
            mqtt_host_port("mqtt://127.0.0.1:1883"),
            Some(("127.0.0.1".into(), 1883))
        );
        assert_eq!(
            mqtt_host_port("tcp://broker:1884/x"),
            Some(("broker".into(), 1884))
        );
        assert_eq!(mqtt_host_port("mqtt://nohost"), None);
    }

    #[test]
    fn rules_topics_follow_the_prefix_fleet_and_model() {
        assert_eq!(
            rules_topic("sad/v1", "default", "m1"),
            "sad/v1/config/default/m1"
        );
    }
}
