//! Models, training jobs and alert-rule settings.
//!
//! - `GET /api/v1/models`: the registry, as in the seed (`models`, `count`, `supported_types`).
//! - `POST /api/v1/models/train`: the seed's body (`model_type`,
//!   `training_data` as a CSV path inside the data directory or inline rows,
//!   `parameters`, optional `model_id`, `label_column`); validated at once,
//!   then fitted on the blocking pool as a job: `202 {"job_id": ...}`.
//! - `GET /api/v1/jobs/{id}`: `status` (`queued`, `running`, `succeeded`,
//!   `failed`), `progress` in `[0, 1]`, `result` or `error`.
//! - `GET/PUT /api/v1/models/{name}/rules`: the agent's [`RulesConfig`]
//!   (threshold, hysteresis, min_duration, cooldown_ms, severity bands),
//!   saved in `{data_dir}/rules.json` and published retained as JSON on
//!   `{prefix}/config/{fleet}/{model}` through a [`RulesPublisher`], so
//!   agents subscribed to it apply the change without a restart.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use sad_agent::rules::RulesConfig;
use sad_common::ModelKind;
use sad_common::wire::validate_id;
use sad_models::iforest::{Contamination, IsolationForestParams, MaxSamples};

use super::registry::{ModelRegistry, fit_iforest, now_ms};
use super::{ApiError, AppState, parse_json};

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
    /// Creation time, ms since the epoch.
    pub created_ms: i64,
    /// End time, if finished.
    pub finished_ms: Option<i64>,
    /// Result on success.
    pub result: Option<Value>,
    /// Error on failure.
    pub error: Option<String>,
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
                    j.progress = 1.0;
                    j.result = Some(v);
                }
                Err(e) => {
                    j.status = "failed".into();
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
pub async fn list_models(State(state): State<AppState>) -> Json<Value> {
    let models: Vec<_> = state.registry.list().iter().map(|m| m.info()).collect();
    Json(json!({
        "count": models.len(),
        "models": models,
        "supported_types": ["isolation_forest"],
    }))
}

/// `training_data`: a CSV path or inline rows.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum TrainingData {
    /// CSV path, relative to the data directory.
    Path(String),
    /// Inline rows.
    Rows(Vec<Vec<f64>>),
}

/// Isolation Forest parameters of a training request (scikit-learn's names).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainParameters {
    /// Trees (default 100).
    pub n_estimators: Option<usize>,
    /// Rows per tree: a count, a fraction in (0, 1] or `"auto"` (default 256).
    pub max_samples: Option<Value>,
    /// Outlier share in (0, 0.5] or `"auto"` (default 0.1).
    pub contamination: Option<Value>,
    /// Feature fraction per tree (default 1.0).
    pub max_features: Option<f64>,
    /// Seed (default 42; `random_state` is accepted as well).
    pub random_state: Option<u64>,
}

/// The training request body.
#[derive(Debug, Clone, Deserialize)]
pub struct TrainRequest {
    /// Model kind (default `isolation_forest`).
    #[serde(default)]
    pub model_type: Option<String>,
    /// CSV path or inline rows.
    pub training_data: TrainingData,
    /// Fitting parameters.
    #[serde(default)]
    pub parameters: TrainParameters,
    /// Model name (default `{model_type}_{time}`).
    #[serde(default)]
    pub model_id: Option<String>,
    /// CSV column with 0/1 ground truth (default `label`).
    #[serde(default)]
    pub label_column: Option<String>,
}

impl TrainParameters {
    fn to_params(&self) -> Result<IsolationForestParams, ApiError> {
        let mut p = IsolationForestParams {
            n_estimators: 100,
            max_samples: MaxSamples::Count(256),
            contamination: Contamination::Fraction(0.1),
            seed: 42,
            ..IsolationForestParams::default()
        };
        if let Some(n) = self.n_estimators {
            if !(1..=10_000).contains(&n) {
                return Err(ApiError::invalid(
                    "n_estimators must be between 1 and 10000",
                ));
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
                return Err(ApiError::invalid(
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
                return Err(ApiError::invalid(
                    "contamination must be \"auto\" or a number in (0, 0.5]",
                ));
            }
        }
        if let Some(f) = self.max_features {
            if !(f > 0.0 && f <= 1.0) {
                return Err(ApiError::invalid("max_features must be in (0, 1]"));
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

struct Prepared {
    rows: Vec<f64>,
    width: usize,
    names: Vec<String>,
    labels: Option<Vec<bool>>,
    source: String,
}

fn load_csv(path: &Path, label_column: &str) -> Result<Prepared, String> {
    let csv = sad_models::data::load_numeric_csv(path, b',').map_err(|e| e.to_string())?;
    let label_idx = csv.column_names.iter().position(|c| c == label_column);
    let width = csv.n_columns - usize::from(label_idx.is_some());
    if width == 0 {
        return Err("training data needs at least 1 feature column".into());
    }
    let mut rows = Vec::with_capacity(csv.n_rows() * width);
    let mut labels = label_idx.map(|_| Vec::with_capacity(csv.n_rows()));
    for row in csv.values.chunks_exact(csv.n_columns) {
        for (i, v) in row.iter().enumerate() {
            if Some(i) == label_idx {
                if let Some(l) = labels.as_mut() {
                    l.push(*v != 0.0);
                }
            } else {
                rows.push(*v);
            }
        }
    }
    let names = csv
        .column_names
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != label_idx)
        .map(|(_, n)| n.clone())
        .collect();
    Ok(Prepared {
        rows,
        width,
        names,
        labels,
        source: format!(
            "csv {}",
            path.file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default()
        ),
    })
}

/// Handler of `POST /api/v1/models/train`: validates, then fits in the background.
pub async fn train(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let req: TrainRequest = parse_json(body)?;
    let kind = match &req.model_type {
        Some(s) => s
            .parse::<ModelKind>()
            .map_err(|_| ApiError::invalid(format!("unknown model_type {s:?}")))?,
        None => ModelKind::IsolationForest,
    };
    if kind != ModelKind::IsolationForest {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "training {kind} over the api is not supported yet; use `anomaly-coordinator train`"
            ),
        ));
    }
    let params = req.parameters.to_params()?;
    let name = match &req.model_id {
        Some(n) => {
            validate_id("model_id", n).map_err(|e| ApiError::invalid(e.to_string()))?;
            n.clone()
        }
        None => format!("{}_{}", kind.as_str(), now_ms()),
    };
    let label_column = req.label_column.clone().unwrap_or_else(|| "label".into());
    let input = match req.training_data {
        TrainingData::Path(p) => Err(resolve_in(&state.limits.data_dir, &p)?),
        TrainingData::Rows(rows) => {
            let width = rows.first().map_or(0, Vec::len);
            if rows.len() < 2 || width == 0 || rows.iter().any(|r| r.len() != width) {
                return Err(ApiError::invalid(
                    "inline training_data must be at least 2 rows of equal, non-zero length",
                ));
            }
            if rows.len().saturating_mul(width) > MAX_TRAIN_VALUES {
                return Err(ApiError::invalid("inline training_data is too large"));
            }
            if rows.iter().flatten().any(|v| !v.is_finite()) {
                return Err(ApiError::invalid(
                    "training_data contains non-finite values",
                ));
            }
            let n = rows.len();
            Ok(Prepared {
                rows: rows.into_iter().flatten().collect(),
                width,
                names: (0..width).map(|i| format!("f{i}")).collect(),
                labels: None,
                source: format!("inline {n} rows"),
            })
        }
    };
    let job = state.jobs.create("train");
    let st = state.clone();
    tokio::spawn(async move {
        st.jobs.update(job, |j| j.status = "running".into());
        let registry = st.registry.clone();
        let jobs = st.jobs.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            run_training(&registry, &jobs, job, &name, input, &label_column, params)
        })
        .await
        .unwrap_or_else(|e| Err(format!("training task failed: {e}")));
        st.jobs.finish(job, outcome);
    });
    Ok((
        StatusCode::ACCEPTED,
        Json(
            json!({"job_id": job, "status": "queued", "status_url": format!("/api/v1/jobs/{job}")}),
        ),
    ))
}

fn run_training(
    registry: &ModelRegistry,
    jobs: &Jobs,
    job: u64,
    name: &str,
    input: Result<Prepared, PathBuf>,
    label_column: &str,
    params: IsolationForestParams,
) -> Result<Value, String> {
    let data = match input {
        Ok(d) => d,
        Err(path) => load_csv(&path, label_column)?,
    };
    jobs.update(job, |j| j.progress = 0.2);
    let t0 = std::time::Instant::now();
    let version = registry.get(name).map_or(1, |m| m.manifest.version + 1);
    let (manifest, payload) = fit_iforest(
        name,
        version,
        &data.rows,
        data.width,
        data.names,
        params,
        None,
        data.source,
        BTreeMap::new(),
    )
    .map_err(|e| e.to_string())?;
    jobs.update(job, |j| j.progress = 0.8);
    let mut accuracy = None;
    let (manifest, payload) = match &data.labels {
        Some(labels) => {
            let det = sad_models::bundle::detector_from_parts(&manifest, &payload)
                .map_err(|e| e.to_string())?;
            let scores = det.score_batch(&data.rows).map_err(|e| e.to_string())?;
            let right = scores
                .iter()
                .zip(labels)
                .filter(|(s, l)| s.is_anomaly == **l)
                .count();
            let acc = right as f64 / labels.len().max(1) as f64;
            accuracy = Some(acc);
            let mut m = manifest;
            m.training.metrics.insert("accuracy".into(), acc);
            (m, payload)
        }
        None => (manifest, payload),
    };
    let entry = registry
        .save(manifest, payload)
        .map_err(|e| e.to_string())?;
    let mut info = serde_json::to_value(entry.info()).unwrap_or(Value::Null);
    if let Value::Object(o) = &mut info {
        o.insert("training_time_s".into(), json!(t0.elapsed().as_secs_f64()));
        o.insert("accuracy".into(), json!(accuracy));
    }
    Ok(info)
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
