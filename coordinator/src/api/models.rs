//! Models, training jobs and alert-rule settings.
//!
//! - `GET /api/v1/models`: the registry, as in the seed (`models`, `count`, `supported_types`).
//! - `POST /api/v1/models/train`: the seed's body (`model_type`,
//!   `training_data`, `parameters`, optional `model_id`, `label_column`)
//!   plus `holdout`, `threshold` and `gate`. Every [`ModelKind`] trains;
//!   `training_data` is a CSV path inside the data directory, inline rows,
//!   or a [`SourceSpec`] object (`csv`, `rows`, `fleet_samples`, `kafka`).
//!   Validated at once, then read, fitted, gated and saved on the blocking
//!   pool as a job ([`crate::training::train_model`]): `202 {"job_id": ...}`.
//! - `GET /api/v1/jobs/{id}`: `status` (`queued`, `running`, `succeeded`,
//!   `failed`), `progress` in `[0, 1]`, `phase`, `epoch`/`epochs`/`loss`/
//!   `val_loss` of neural models, `result` (the model and the gate verdict) or `error`.
//! - `GET/PUT /api/v1/models/{name}/rules`: the agent's [`RulesConfig`]
//!   (threshold, hysteresis, min_duration, cooldown_ms, severity bands),
//!   saved in `{data_dir}/rules.json` and published retained as JSON on
//!   `{prefix}/config/{fleet}/{model}` through a [`RulesPublisher`], so
//!   agents subscribed to it apply the change without a restart.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use sad_agent::rules::RulesConfig;
use sad_common::ModelKind;
use sad_common::wire::validate_id;
use sad_models::iforest::{Contamination, IsolationForestParams, MaxSamples};

use super::registry::now_ms;
use super::{ApiError, AppState, parse_json};
use crate::fleet::Fleet;
use crate::gate::GateConfig;
use crate::kafka::KafkaConfig;
use crate::training::{
    Dataset, KafkaRange, MIN_ROWS, ModelParams, Progress, TrainError, TrainSpec,
    default_iforest_params, read_kafka_range, train_model,
};

/// Jobs kept for `GET /api/v1/jobs/{id}`; older finished ones are forgotten.
pub const MAX_JOBS: usize = 1000;
/// Largest inline training set in values.
pub const MAX_TRAIN_VALUES: usize = 10_000_000;

/// A background job as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Job {
    /// Job id.
    pub id: u64,
    /// What it does (`train`).
    pub kind: String,
    /// `queued`, `running`, `succeeded` or `failed`.
    pub status: String,
    /// Share done, in `[0, 1]`.
    pub progress: f64,
    /// What the job is doing now (`loading data`, `training`, `quality gate`, `saving`).
    pub phase: Option<String>,
    /// Current epoch of a neural model.
    pub epoch: Option<usize>,
    /// Maximum epochs of a neural model.
    pub epochs: Option<usize>,
    /// Training loss of the last epoch.
    pub loss: Option<f64>,
    /// Validation loss of the last epoch.
    pub val_loss: Option<f64>,
    /// Creation time, ms since the epoch.
    pub created_ms: i64,
    /// End time, if finished.
    pub finished_ms: Option<i64>,
    /// Result on success.
    pub result: Option<Value>,
    /// Error on failure.
    pub error: Option<String>,
}

impl Job {
    /// Takes a training run's progress (epoch figures stay until the next epoch).
    pub fn progress_to(&mut self, p: &Progress) {
        self.progress = p.fraction.clamp(0.0, 1.0);
        self.phase = Some(p.phase.clone());
        if p.epoch.is_some() {
            self.epoch = p.epoch;
            self.epochs = p.epochs;
            self.loss = p.loss;
            self.val_loss = p.val_loss;
        }
    }
}

/// The job table (bounded).
#[derive(Default)]
pub struct Jobs {
    next: AtomicU64,
    jobs: Mutex<(BTreeMap<u64, Job>, VecDeque<u64>)>,
}

impl Jobs {
    /// Registers a queued job and returns its id.
    pub fn create(&self, kind: &str) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let mut g = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        let (map, order) = &mut *g;
        map.insert(
            id,
            Job {
                id,
                kind: kind.into(),
                status: "queued".into(),
                progress: 0.0,
                phase: None,
                epoch: None,
                epochs: None,
                loss: None,
                val_loss: None,
                created_ms: now_ms(),
                finished_ms: None,
                result: None,
                error: None,
            },
        );
        order.push_back(id);
        while order.len() > MAX_JOBS {
            if let Some(old) = order.pop_front() {
                map.remove(&old);
            }
        }
        id
    }

    /// Changes a job in place (no-op if forgotten).
    pub fn update(&self, id: u64, f: impl FnOnce(&mut Job)) {
        let mut g = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(j) = g.0.get_mut(&id) {
            f(j);
        }
    }

    /// Marks a job finished with its outcome.
    pub fn finish(&self, id: u64, outcome: Result<Value, String>) {
        self.update(id, |j| {
            j.finished_ms = Some(now_ms());
            match outcome {
                Ok(v) => {
                    j.status = "succeeded".into();
                    j.phase = Some("done".into());
                    j.progress = 1.0;
                    j.result = Some(v);
                }
                Err(e) => {
                    j.status = "failed".into();
                    j.phase = Some("failed".into());
                    j.error = Some(e);
                }
            }
        });
    }

    /// A job by id.
    pub fn get(&self, id: u64) -> Option<Job> {
        self.jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .get(&id)
            .cloned()
    }
}

/// Publishes a model's rules to the fleet (retained MQTT in `serve`).
pub trait RulesPublisher: Send + Sync {
    /// Sends `rules` for `model`; errors are logged by the caller.
    fn publish(&self, model: &str, rules: &RulesConfig) -> Result<(), String>;
}

/// Why rule settings could not be kept.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    /// Reading or writing the rules file failed.
    #[error("rules file {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid JSON rules.
    #[error("rules file {}: {reason}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Rule settings per model, persisted as JSON.
pub struct RulesStore {
    path: Option<PathBuf>,
    rules: RwLock<BTreeMap<String, RulesConfig>>,
    publisher: RwLock<Option<Arc<dyn RulesPublisher>>>,
}

impl RulesStore {
    /// An in-memory store (tests).
    pub fn in_memory() -> Self {
        Self {
            path: None,
            rules: RwLock::new(BTreeMap::new()),
            publisher: RwLock::new(None),
        }
    }

    /// Opens (or starts) `{data_dir}/rules.json`.
    pub fn open(data_dir: &Path) -> Result<Self, RulesError> {
        let path = data_dir.join("rules.json");
        let rules = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| RulesError::Parse {
                path: path.clone(),
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => return Err(RulesError::Io { path, source }),
        };
        Ok(Self {
            path: Some(path),
            rules: RwLock::new(rules),
            publisher: RwLock::new(None),
        })
    }

    /// Sets who publishes changes to the fleet, and republishes every model's rules.
    pub fn set_publisher(&self, p: Arc<dyn RulesPublisher>) {
        for (model, r) in self.all() {
            if let Err(e) = p.publish(&model, &r) {
                tracing::warn!(model, error = %e, "cannot publish rules");
            }
        }
        *self.publisher.write().unwrap_or_else(|e| e.into_inner()) = Some(p);
    }

    /// The rules of `model`, if set.
    pub fn get(&self, model: &str) -> Option<RulesConfig> {
        self.rules
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(model)
            .cloned()
    }

    /// Every model's rules.
    pub fn all(&self) -> BTreeMap<String, RulesConfig> {
        self.rules.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Stores (atomically on disk) and publishes `rules` for `model`; returns whether it was published.
    pub fn set(&self, model: &str, rules: RulesConfig) -> Result<bool, RulesError> {
        let snapshot = {
            let mut g = self.rules.write().unwrap_or_else(|e| e.into_inner());
            g.insert(model.to_string(), rules.clone());
            g.clone()
        };
        if let Some(path) = &self.path {
            let io = |source| RulesError::Io {
                path: path.clone(),
                source,
            };
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(io)?;
            }
            let tmp = path.with_extension("json.tmp");
            let text = serde_json::to_vec_pretty(&snapshot).unwrap_or_default();
            std::fs::write(&tmp, text).map_err(io)?;
            std::fs::rename(&tmp, path).map_err(io)?;
        }
        let publisher = self
            .publisher
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        Ok(match publisher {
            Some(p) => match p.publish(model, &rules) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(model, error = %e, "cannot publish rules");
                    false
                }
            },
            None => false,
        })
    }
}

/// Handler of `GET /api/v1/models`.
///
/// Each model is its serving version's listing plus `versions` (every
/// version number), `active_version` (on the fleet topic) and
/// `canary_version`; `GET /api/v1/models/{name}` has the full history.
pub async fn list_models(State(state): State<AppState>) -> Json<Value> {
    let models: Vec<Value> = state
        .registry
        .list()
        .iter()
        .map(|m| {
            let name = &m.manifest.name;
            let mut v = serde_json::to_value(m.info()).unwrap_or(Value::Null);
            if let Value::Object(o) = &mut v {
                let versions: Vec<u64> = state
                    .registry
                    .versions(name)
                    .iter()
                    .map(|m| m.version)
                    .collect();
                o.insert("versions".into(), json!(versions));
                let r = state.rollout.as_ref().map(|r| r.status(name));
                o.insert(
                    "active_version".into(),
                    json!(r.as_ref().and_then(|r| r.active)),
                );
                o.insert(
                    "canary_version".into(),
                    json!(r.and_then(|r| r.canary.map(|c| c.version))),
                );
            }
            v
        })
        .collect();
    Json(json!({
        "count": models.len(),
        "models": models,
        "supported_types": supported_types(),
    }))
}

/// The `model_type` values `POST /api/v1/models/train` accepts.
pub fn supported_types() -> Vec<&'static str> {
    ModelKind::ALL
        .iter()
        .filter(|k| cfg!(feature = "train") || !is_neural(**k))
        .map(|k| k.as_str())
        .collect()
}

fn is_neural(k: ModelKind) -> bool {
    matches!(k, ModelKind::Autoencoder | ModelKind::Lstm | ModelKind::Vae)
}

/// What training can read besides files and inline rows: the fleet's
/// samples and Kafka, plus the gate's margins. Given to the router as an
/// `axum::Extension<Arc<TrainingSources>>`; without it those sources answer 400.
#[derive(Clone, Default)]
pub struct TrainingSources {
    /// The fleet whose uploaded samples `{"source": "fleet_samples"}` trains on.
    pub fleet: Option<Fleet>,
    /// Kafka for `{"source": "kafka"}` (`KAFKA_BROKERS`).
    pub kafka: Option<KafkaConfig>,
    /// Margins of the quality gate.
    pub gate: GateConfig,
}

/// `training_data` (and `holdout`) in object form; a string is a CSV path and an array inline rows.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "source", rename_all = "snake_case", deny_unknown_fields)]
pub enum SourceSpec {
    /// A CSV file inside the data directory.
    Csv {
        /// Path relative to the data directory.
        path: String,
    },
    /// Inline rows.
    Rows {
        /// The rows.
        rows: Vec<Vec<f64>>,
    },
    /// The latest samples agents uploaded for a model.
    FleetSamples {
        /// Model whose samples to use.
        model: String,
        /// Newest rows kept (default 20000).
        #[serde(default)]
        max_rows: Option<usize>,
    },
    /// A range of a Kafka topic, records decoded as central detection's input.
    Kafka {
        /// Topic.
        topic: String,
        /// One partition.
        #[serde(default)]
        partition: Option<i32>,
        /// Several partitions (default: all).
        #[serde(default)]
        partitions: Option<Vec<i32>>,
        /// First offset per partition.
        #[serde(default)]
        start_offset: Option<i64>,
        /// Offset to stop before, per partition.
        #[serde(default)]
        end_offset: Option<i64>,
        /// First record time, ms since the epoch.
        #[serde(default)]
        start_ms: Option<i64>,
        /// Record time to stop before, ms since the epoch.
        #[serde(default)]
        end_ms: Option<i64>,
        /// Most records read (default 100000).
        #[serde(default)]
        max_rows: Option<usize>,
        /// Time limit of the read in ms (default 30000).
        #[serde(default)]
        timeout_ms: Option<u64>,
    },
}

/// Fitting parameters of a training request; which apply depends on `model_type`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainParameters {
    /// Isolation Forest: trees (default 100).
    pub n_estimators: Option<usize>,
    /// Isolation Forest: rows per tree, a count, a fraction in (0, 1] or `"auto"` (default 256).
    pub max_samples: Option<Value>,
    /// Isolation Forest: outlier share in (0, 0.5] or `"auto"` (default 0.1);
    /// neural kinds: share of training samples above the threshold, in (0, 0.5) (default 0.01).
    pub contamination: Option<Value>,
    /// Isolation Forest: feature fraction per tree (default 1.0).
    pub max_features: Option<f64>,
    /// Seed of every kind (default 42; `seed` is accepted as well).
    #[serde(alias = "seed")]
    pub random_state: Option<u64>,
    /// Neural: maximum epochs, 1..=1000 (default 30).
    pub epochs: Option<usize>,
    /// Neural: AdamW learning rate in (0, 1] (default 0.002; `lr` is accepted as well).
    #[serde(alias = "lr")]
    pub learning_rate: Option<f64>,
    /// Neural: mini-batch size, 1..=4096 (default 64).
    pub batch_size: Option<usize>,
    /// Neural: epochs without improvement before stopping (default 5).
    pub patience: Option<usize>,
    /// LSTM: window in rows, 2..=512 (default 32).
    pub window: Option<usize>,
    /// Neural: hidden width, 1..=1024 (default from the feature count).
    pub hidden: Option<usize>,
    /// Neural: latent width, 1..=256 (default from the feature count).
    pub latent: Option<usize>,
    /// EWMA: weight of the newest event in (0, 1] (default 0.05).
    pub alpha: Option<f64>,
    /// EWMA: events before scores count, at least 2 (default 30).
    pub warmup: Option<usize>,
    /// EWMA: z-score that calibrates to 0.5 (default 4).
    pub z_threshold: Option<f64>,
    /// Half-Space Trees: trees (default 10).
    pub n_trees: Option<usize>,
    /// Half-Space Trees: depth, 1..=20 (default 8).
    pub height: Option<usize>,
    /// Half-Space Trees: events per mass window (default 250).
    pub window_size: Option<usize>,
}

/// The training request body.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainRequest {
    /// Model kind (default `isolation_forest`), see [`supported_types`].
    #[serde(default)]
    pub model_type: Option<String>,
    /// A CSV path, inline rows, or a [`SourceSpec`] object.
    pub training_data: Value,
    /// Held-back data for the quality gate (CSV path, rows or `csv`/`rows`
    /// object); default: the last 20% of the training data.
    #[serde(default)]
    pub holdout: Option<Value>,
    /// Fitting parameters.
    #[serde(default)]
    pub parameters: TrainParameters,
    /// Model name (default `{model_type}_{time}`).
    #[serde(default)]
    pub model_id: Option<String>,
    /// CSV column with 0/1 ground truth (default `label`).
    #[serde(default)]
    pub label_column: Option<String>,
    /// Calibrated threshold in [0, 1] instead of the fitted one.
    #[serde(default)]
    pub threshold: Option<f64>,
    /// Whether to run the quality gate (default true; `false` records that it was skipped).
    #[serde(default)]
    pub gate: Option<bool>,
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::invalid(msg)
}

impl TrainParameters {
    fn set_names(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        let mut f = |set: bool, n: &'static str| {
            if set {
                v.push(n)
            }
        };
        f(self.n_estimators.is_some(), "n_estimators");
        f(self.max_samples.is_some(), "max_samples");
        f(self.contamination.is_some(), "contamination");
        f(self.max_features.is_some(), "max_features");
        f(self.random_state.is_some(), "random_state");
        f(self.epochs.is_some(), "epochs");
        f(self.learning_rate.is_some(), "learning_rate");
        f(self.batch_size.is_some(), "batch_size");
        f(self.patience.is_some(), "patience");
        f(self.window.is_some(), "window");
        f(self.hidden.is_some(), "hidden");
        f(self.latent.is_some(), "latent");
        f(self.alpha.is_some(), "alpha");
        f(self.warmup.is_some(), "warmup");
        f(self.z_threshold.is_some(), "z_threshold");
        f(self.n_trees.is_some(), "n_trees");
        f(self.height.is_some(), "height");
        f(self.window_size.is_some(), "window_size");
        v
    }

    /// Checks the parameters against `kind` and builds them, with defaults.
    pub fn to_model_params(&self, kind: ModelKind) -> Result<ModelParams, ApiError> {
        let allowed: &[&str] = match kind {
            ModelKind::IsolationForest => &[
                "n_estimators",
                "max_samples",
                "contamination",
                "max_features",
                "random_state",
            ],
            ModelKind::Autoencoder | ModelKind::Vae => &[
                "epochs",
                "learning_rate",
                "batch_size",
                "patience",
                "hidden",
                "latent",
                "contamination",
                "random_state",
            ],
            ModelKind::Lstm => &[
                "epochs",
                "learning_rate",
                "batch_size",
                "patience",
                "window",
                "hidden",
                "latent",
                "contamination",
                "random_state",
            ],
            ModelKind::Ewma => &["alpha", "warmup", "z_threshold"],
            ModelKind::HalfSpaceTrees => &["n_trees", "height", "window_size", "random_state"],
        };
        if let Some(p) = self.set_names().into_iter().find(|p| !allowed.contains(p)) {
            return Err(bad(format!(
                "parameter {p} does not apply to model_type {kind} (it takes {})",
                allowed.join(", ")
            )));
        }
        let range = |name: &str, v: Option<usize>, lo: usize, hi: usize| match v {
            Some(x) if !(lo..=hi).contains(&x) => Err(bad(format!(
                "{name} must be between {lo} and {hi}, got {x}"
            ))),
            _ => Ok(()),
        };
        Ok(match ModelParams::defaults(kind) {
            ModelParams::IsolationForest(_) => ModelParams::IsolationForest(self.iforest()?),
            ModelParams::Neural(k, mut p) => {
                range("epochs", self.epochs, 1, 1000)?;
                range("batch_size", self.batch_size, 1, 4096)?;
                range("patience", self.patience, 0, 1000)?;
                range("window", self.window, 2, 512)?;
                range("hidden", self.hidden, 1, 1024)?;
                range("latent", self.latent, 1, 256)?;
                if let Some(lr) = self.learning_rate {
                    if !(lr.is_finite() && lr > 0.0 && lr <= 1.0) {
                        return Err(bad("learning_rate must be in (0, 1]"));
                    }
                    p.learning_rate = lr;
                }
                match &self.contamination {
                    None => {}
                    Some(Value::Number(n)) if n.as_f64().is_some_and(|f| f > 0.0 && f < 0.5) => {
                        p.contamination = n.as_f64().unwrap_or(0.01)
                    }
                    Some(_) => {
                        return Err(bad(format!(
                            "contamination of {kind} must be a number in (0, 0.5)"
                        )));
                    }
                }
                p.epochs = self.epochs.unwrap_or(p.epochs);
                p.batch_size = self.batch_size.unwrap_or(p.batch_size);
                p.patience = self.patience.unwrap_or(p.patience);
                p.window = self.window.unwrap_or(p.window);
                p.hidden = self.hidden;
                p.latent = self.latent;
                p.seed = self.random_state.unwrap_or(p.seed);
                ModelParams::Neural(k, p)
            }
            ModelParams::HalfSpaceTrees(mut p) => {
                range("n_trees", self.n_trees, 1, 1000)?;
                range("height", self.height, 1, 20)?;
                range("window_size", self.window_size, 1, 1_000_000)?;
                p.n_trees = self.n_trees.unwrap_or(p.n_trees);
                p.height = self.height.unwrap_or(p.height);
                p.window_size = self.window_size.unwrap_or(p.window_size);
                p.seed = self.random_state.unwrap_or(p.seed);
                ModelParams::HalfSpaceTrees(p)
            }
            ModelParams::Ewma(mut p) => {
                p.alpha = self.alpha.unwrap_or(p.alpha);
                p.warmup = self.warmup.unwrap_or(p.warmup);
                p.z_threshold = self.z_threshold.unwrap_or(p.z_threshold);
                p.validate().map_err(|e| bad(e.to_string()))?;
                ModelParams::Ewma(p)
            }
        })
    }

    fn iforest(&self) -> Result<IsolationForestParams, ApiError> {
        let mut p = default_iforest_params();
        if let Some(n) = self.n_estimators {
            if !(1..=10_000).contains(&n) {
                return Err(bad("n_estimators must be between 1 and 10000"));
            }
            p.n_estimators = n;
        }
        match &self.max_samples {
            None => {}
            Some(Value::String(s)) if s == "auto" => p.max_samples = MaxSamples::Auto,
            Some(Value::Number(n)) if n.is_u64() => {
                p.max_samples = MaxSamples::Count(n.as_u64().unwrap_or(256).max(2) as usize)
            }
            Some(Value::Number(n)) if n.as_f64().is_some_and(|f| f > 0.0 && f <= 1.0) => {
                p.max_samples = MaxSamples::Fraction(n.as_f64().unwrap_or(1.0))
            }
            Some(_) => {
                return Err(bad(
                    "max_samples must be \"auto\", a row count or a fraction in (0, 1]",
                ));
            }
        }
        match &self.contamination {
            None => {}
            Some(Value::String(s)) if s == "auto" => p.contamination = Contamination::Auto,
            Some(Value::Number(n)) if n.as_f64().is_some_and(|f| f > 0.0 && f <= 0.5) => {
                p.contamination = Contamination::Fraction(n.as_f64().unwrap_or(0.1))
            }
            Some(_) => {
                return Err(bad(
                    "contamination must be \"auto\" or a number in (0, 0.5]",
                ));
            }
        }
        if let Some(f) = self.max_features {
            if !(f > 0.0 && f <= 1.0) {
                return Err(bad("max_features must be in (0, 1]"));
            }
            p.max_features = f;
        }
        if let Some(s) = self.random_state {
            p.seed = s;
        }
        Ok(p)
    }
}

/// Resolves `rel` inside `data_dir`, refusing anything that leaves it.
pub fn resolve_in(data_dir: &Path, rel: &str) -> Result<PathBuf, ApiError> {
    let base = data_dir
        .canonicalize()
        .map_err(|_| ApiError::not_found("the data directory does not exist"))?;
    let p = Path::new(rel);
    let joined = if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    };
    let full = joined
        .canonicalize()
        .map_err(|_| ApiError::not_found(format!("training data file not found: {rel}")))?;
    if !full.starts_with(&base) {
        return Err(ApiError::invalid(
            "training_data must be inside the data directory",
        ));
    }
    if !full.is_file() {
        return Err(ApiError::not_found(format!(
            "training data file not found: {rel}"
        )));
    }
    Ok(full)
}

/// Training data as validated by the handler, read in the job.
enum Input {
    /// A CSV file (read on the blocking pool).
    Csv(PathBuf),
    /// Rows already at hand (inline, fleet samples).
    Ready(Dataset),
    /// A Kafka range (read on the blocking pool).
    Kafka(KafkaConfig, KafkaRange),
}

impl Input {
    fn load(self, label_column: &str) -> Result<Dataset, TrainError> {
        match self {
            Input::Csv(p) => Dataset::load_csv(&p, label_column),
            Input::Ready(d) => Ok(d),
            Input::Kafka(cfg, range) => read_kafka_range(&cfg, &range),
        }
    }
}

fn inline_rows(rows: Vec<Vec<f64>>, what: &str) -> Result<Dataset, ApiError> {
    let width = rows.first().map_or(0, Vec::len);
    if rows.len() < 2 || width == 0 || rows.iter().any(|r| r.len() != width) {
        return Err(bad(format!(
            "inline {what} must be at least 2 rows of equal, non-zero length"
        )));
    }
    if rows.len().saturating_mul(width) > MAX_TRAIN_VALUES {
        return Err(bad(format!("inline {what} is too large")));
    }
    let n = rows.len();
    Dataset::from_rows(rows, format!("inline {n} rows")).map_err(|e| bad(format!("{what} {e}")))
}

/// Turns `training_data` / `holdout` into an [`Input`], checking everything
/// that can be checked without reading files or Kafka.
fn parse_source(
    state: &AppState,
    sources: Option<&TrainingSources>,
    v: Value,
    what: &str,
    allow_remote: bool,
) -> Result<Input, ApiError> {
    let spec = match v {
        Value::String(p) => SourceSpec::Csv { path: p },
        Value::Array(_) => {
            let rows: Vec<Vec<f64>> = serde_json::from_value(v)
                .map_err(|e| bad(format!("{what} rows must be arrays of numbers: {e}")))?;
            SourceSpec::Rows { rows }
        }
        Value::Object(_) => serde_json::from_value(v).map_err(|e| bad(format!("{what}: {e}")))?,
        _ => {
            return Err(bad(format!(
                "{what} must be a csv path, an array of rows or an object with \"source\""
            )));
        }
    };
    let not_here = |s: &str| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("{what} cannot come from {s}; use a csv path or rows"),
        )
    };
    match spec {
        SourceSpec::Csv { path } => Ok(Input::Csv(resolve_in(&state.limits.data_dir, &path)?)),
        SourceSpec::Rows { rows } => Ok(Input::Ready(inline_rows(rows, what)?)),
        SourceSpec::FleetSamples { model, max_rows } => {
            if !allow_remote {
                return Err(not_here("fleet samples"));
            }
            validate_id("model", &model).map_err(|e| bad(e.to_string()))?;
            let fleet = sources.and_then(|s| s.fleet.as_ref()).ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "fleet samples are not available in this coordinator",
                )
            })?;
            let max_rows = max_rows.unwrap_or(20_000);
            if !(1..=1_000_000).contains(&max_rows) {
                return Err(bad("max_rows must be between 1 and 1000000"));
            }
            let names = state
                .registry
                .get(&model)
                .map(|m| m.manifest.feature_names.clone());
            let data =
                Dataset::from_samples(&model, &fleet.samples(&model), names.as_deref(), max_rows)
                    .map_err(|e| bad(e.to_string()))?;
            Ok(Input::Ready(data))
        }
        SourceSpec::Kafka {
            topic,
            partition,
            partitions,
            start_offset,
            end_offset,
            start_ms,
            end_ms,
            max_rows,
            timeout_ms,
        } => {
            if !allow_remote {
                return Err(not_here("kafka"));
            }
            let cfg = sources.and_then(|s| s.kafka.clone()).ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "kafka is not configured (set KAFKA_BROKERS)",
                )
            })?;
            if topic.is_empty() || topic.len() > 249 {
                return Err(bad("topic must be a kafka topic name"));
            }
            let partitions = match (partition, partitions) {
                (Some(_), Some(_)) => {
                    return Err(bad("give partition or partitions, not both"));
                }
                (Some(p), None) => Some(vec![p]),
                (None, p) => p,
            };
            if partitions
                .as_ref()
                .is_some_and(|p| p.is_empty() || p.iter().any(|x| *x < 0))
            {
                return Err(bad(
                    "partitions must be a non-empty list of partition numbers",
                ));
            }
            if start_offset.is_some_and(|o| o < 0) || end_offset.is_some_and(|o| o < 0) {
                return Err(bad("offsets must not be negative"));
            }
            if let (Some(a), Some(b)) = (start_offset, end_offset)
                && a >= b
            {
                return Err(bad("start_offset must be below end_offset"));
            }
            if let (Some(a), Some(b)) = (start_ms, end_ms)
                && a >= b
            {
                return Err(bad("start_ms must be below end_ms"));
            }
            let max_rows = max_rows.unwrap_or(100_000);
            if !(1..=1_000_000).contains(&max_rows) {
                return Err(bad("max_rows must be between 1 and 1000000"));
            }
            let timeout_ms = timeout_ms.unwrap_or(30_000);
            if !(100..=600_000).contains(&timeout_ms) {
                return Err(bad("timeout_ms must be between 100 and 600000"));
            }
            Ok(Input::Kafka(
                cfg,
                KafkaRange {
                    topic,
                    partitions,
                    start_offset,
                    end_offset,
                    start_ms,
                    end_ms,
                    max_rows,
                    timeout: std::time::Duration::from_millis(timeout_ms),
                },
            ))
        }
    }
}

/// Handler of `POST /api/v1/models/train`: validates, then trains, gates and saves in the background.
pub async fn train(
    State(state): State<AppState>,
    sources: Option<Extension<Arc<TrainingSources>>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let sources = sources.map(|Extension(s)| s);
    let req: TrainRequest = parse_json(body)?;
    let kind = match &req.model_type {
        Some(s) => s.parse::<ModelKind>().map_err(|_| {
            bad(format!(
                "unknown model_type {s:?}: expected one of {}",
                supported_types().join(", ")
            ))
        })?,
        None => ModelKind::IsolationForest,
    };
    if !supported_types().contains(&kind.as_str()) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("training {kind} needs a coordinator built with the train feature"),
        ));
    }
    let params = req.parameters.to_model_params(kind)?;
    let name = match &req.model_id {
        Some(n) => {
            validate_id("model_id", n).map_err(|e| bad(e.to_string()))?;
            n.clone()
        }
        None => format!("{}_{}", kind.as_str(), now_ms()),
    };
    if let Some(t) = req.threshold
        && !(t.is_finite() && (0.0..=1.0).contains(&t))
    {
        return Err(bad("threshold must be a number in [0, 1]"));
    }
    let label_column = req.label_column.clone().unwrap_or_else(|| "label".into());
    let input = parse_source(
        &state,
        sources.as_deref(),
        req.training_data,
        "training_data",
        true,
    )?;
    let holdout = req
        .holdout
        .map(|h| parse_source(&state, sources.as_deref(), h, "holdout", false))
        .transpose()?;
    if let Input::Ready(d) = &input
        && d.n_rows() < params.min_training_rows().max(MIN_ROWS)
    {
        return Err(bad(format!(
            "{kind} needs at least {} rows of training data, got {}",
            params.min_training_rows().max(MIN_ROWS),
            d.n_rows()
        )));
    }
    let spec = TrainSpec {
        name,
        params,
        threshold: req.threshold,
        gate: req.gate.unwrap_or(true),
        parent_version: None,
    };
    let gate_cfg = sources.as_ref().map(|s| s.gate.clone()).unwrap_or_default();
    let job = state.jobs.create("train");
    let st = state.clone();
    tokio::spawn(async move {
        st.jobs.update(job, |j| {
            j.status = "running".into();
            j.phase = Some("loading data".into());
        });
        let registry = st.registry.clone();
        let jobs = st.jobs.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let data = input.load(&label_column)?;
            let holdout = holdout.map(|h| h.load(&label_column)).transpose()?;
            train_model(&registry, &spec, data, holdout, &gate_cfg, &mut |p| {
                jobs.update(job, |j| j.progress_to(&p))
            })
            .map(|t| t.result_json())
        })
        .await
        .unwrap_or_else(|e| Err(TrainError::Fit(format!("training task failed: {e}"))));
        st.jobs.finish(job, outcome.map_err(|e| e.to_string()));
    });
    Ok((
        StatusCode::ACCEPTED,
        Json(
            json!({"job_id": job, "status": "queued", "status_url": format!("/api/v1/jobs/{job}")}),
        ),
    ))
}

/// Handler of `GET /api/v1/jobs/{id}`.
pub async fn get_job(
    State(state): State<AppState>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<Job>, ApiError> {
    let id: u64 = id
        .parse()
        .map_err(|_| ApiError::invalid("job id must be a number"))?;
    state
        .jobs
        .get(id)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("job {id} not found")))
}

fn check_model(state: &AppState, name: &str) -> Result<(), ApiError> {
    validate_id("model", name).map_err(|e| ApiError::invalid(e.to_string()))?;
    if state.registry.get(name).is_none() && state.rules.get(name).is_none() {
        return Err(ApiError::not_found(format!("model {name:?} not found")));
    }
    Ok(())
}

/// Handler of `GET /api/v1/models/{name}/rules`: the stored rules or the defaults.
pub async fn get_rules(
    State(state): State<AppState>,
    UrlPath(name): UrlPath<String>,
) -> Result<Json<Value>, ApiError> {
    check_model(&state, &name)?;
    let (rules, configured) = match state.rules.get(&name) {
        Some(r) => (r, true),
        None => (RulesConfig::default(), false),
    };
    Ok(Json(
        json!({"model": name, "configured": configured, "rules": rules}),
    ))
}

/// Handler of `PUT /api/v1/models/{name}/rules`: validates, stores and publishes.
pub async fn put_rules(
    State(state): State<AppState>,
    UrlPath(name): UrlPath<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    validate_id("model", &name).map_err(|e| ApiError::invalid(e.to_string()))?;
    if state.registry.get(&name).is_none() && state.rules.get(&name).is_none() {
        // Rules may be set for models that run only on agents; the name must still be an id.
        tracing::info!(model = %name, "rules set for a model the registry does not hold");
    }
    let rules: RulesConfig = parse_json(body)?;
    rules
        .validate()
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    let store = state.rules.clone();
    let (n, r) = (name.clone(), rules.clone());
    let published = tokio::task::spawn_blocking(move || store.set(&n, r))
        .await
        .map_err(|e| ApiError::internal(format!("rules task failed: {e}")))?
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(Json(
        json!({"model": name, "rules": rules, "published": published}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_outside_the_data_directory_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("a.csv"), "x\n1\n").unwrap();
        std::fs::write(dir.path().join("secret.csv"), "x\n1\n").unwrap();
        assert!(resolve_in(&data, "a.csv").is_ok());
        assert!(resolve_in(&data, "../secret.csv").is_err());
        assert!(resolve_in(&data, dir.path().join("secret.csv").to_str().unwrap()).is_err());
        assert!(resolve_in(&data, "missing.csv").is_err());
    }

    #[test]
    fn rules_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let s = RulesStore::open(dir.path()).unwrap();
        let r = RulesConfig {
            threshold: Some(0.7),
            ..RulesConfig::default()
        };
        assert!(!s.set("m", r.clone()).unwrap());
        assert_eq!(RulesStore::open(dir.path()).unwrap().get("m"), Some(r));
    }

    #[test]
    fn jobs_are_bounded_and_keep_their_outcome() {
        let jobs = Jobs::default();
        let first = jobs.create("train");
        jobs.finish(first, Ok(json!(1)));
        assert_eq!(jobs.get(first).unwrap().status, "succeeded");
        for _ in 0..MAX_JOBS {
            jobs.create("train");
        }
        assert!(jobs.get(first).is_none());
    }
}
