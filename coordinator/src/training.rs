//! Training of every model kind, the quality gate around it, and retraining
//! from fleet samples.
//!
//! [`train_model`] is the one path: a [`Dataset`] (CSV, inline rows, fleet
//! samples or a Kafka topic range) is split into training rows and a holdout
//! (the last [`GateConfig::holdout_fraction`] of the rows, in order, unless a
//! holdout is given), the model is fitted on the training rows (Isolation
//! Forest and the streaming kinds on standardised rows, the scaler going into
//! the manifest so drift has a reference; the neural kinds with their own
//! scaler), the [`gate`] judges it on the holdout against the active version
//! (`registry.get(name)`), the verdict goes into the manifest, and only then
//! is the bundle saved. Blocking: run it on the blocking pool.
//!
//! Hyper-parameters are recorded in `training.metrics` as `param_*` keys, so
//! [`retrain_loop`] can train version + 1 of a model with the same kind and
//! parameters from the fleet's fresh samples and hand it, with its verdict,
//! to a [`CandidateSink`] (rollout).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};
use thiserror::Error;
use tokio_util::sync::CancellationToken;

use sad_common::{ModelKind, ModelManifest, Samples};
use sad_models::Detector;
use sad_models::bundle::{ManifestSpec, detector_from_parts, iforest_bundle, manifest_for};
use sad_models::iforest::{Contamination, IsolationForestParams, MaxSamples};
use sad_models::scaler::fit_standard_scaler;
use sad_models::streaming::{EwmaParams, EwmaZScore, HalfSpaceTrees, HstParams};

use crate::api::registry::{ModelEntry, ModelRegistry, RegistryError, now_ms};
use crate::fleet::Fleet;
use crate::gate::{self, ActiveScored, GateConfig, GateVerdict, ScoredHoldout};
use crate::kafka::KafkaConfig;

/// Fewest rows a training set may have.
pub const MIN_ROWS: usize = 4;
/// Fewest rows for a held-back split; smaller sets are judged on their training rows.
pub const MIN_SPLIT_ROWS: usize = 10;

/// Why training failed.
#[derive(Debug, Error)]
pub enum TrainError {
    /// The data or the parameters do not allow training.
    #[error("{0}")]
    Input(String),
    /// Fitting the model failed.
    #[error("fit failed: {0}")]
    Fit(String),
    /// Reading a Kafka range failed.
    #[error("kafka: {0}")]
    Kafka(String),
    /// The registry could not save the model.
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// Row-major training data with its feature names, optional labels and a description.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// Values, `rows * width`.
    pub rows: Vec<f64>,
    /// Features per row.
    pub width: usize,
    /// Feature names (`width` of them).
    pub names: Vec<String>,
    /// 0/1 ground truth per row, if known.
    pub labels: Option<Vec<bool>>,
    /// Where the data came from, for the manifest.
    pub source: String,
}

impl Dataset {
    /// Rows in the set.
    pub fn n_rows(&self) -> usize {
        self.rows.len() / self.width.max(1)
    }

    /// A set from rows of equal width (names `f0..`), checked for finiteness.
    pub fn from_rows(rows: Vec<Vec<f64>>, source: String) -> Result<Self, TrainError> {
        let width = rows.first().map_or(0, Vec::len);
        if width == 0 || rows.iter().any(|r| r.len() != width) {
            return Err(TrainError::Input(
                "rows must be of equal, non-zero length".into(),
            ));
        }
        if rows.iter().flatten().any(|v| !v.is_finite()) {
            return Err(TrainError::Input("rows contain non-finite values".into()));
        }
        Ok(Self {
            rows: rows.into_iter().flatten().collect(),
            width,
            names: (0..width).map(|i| format!("f{i}")).collect(),
            labels: None,
            source,
        })
    }

    /// A numeric CSV with a header; the column `label_column`, if present, holds 0/1 labels.
    pub fn load_csv(path: &Path, label_column: &str) -> Result<Self, TrainError> {
        let csv = sad_models::data::load_numeric_csv(path, b',')
            .map_err(|e| TrainError::Input(e.to_string()))?;
        let label_idx = csv.column_names.iter().position(|c| c == label_column);
        let width = csv.n_columns - usize::from(label_idx.is_some());
        if width == 0 {
            return Err(TrainError::Input(
                "training data needs at least 1 feature column".into(),
            ));
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
        Ok(Self {
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

    /// The rows of fleet samples for `model` (oldest first per agent), keeping
    /// the newest `max_rows`. Messages whose feature names differ from
    /// `feature_names` (or, when `None`, from the first message) are left out.
    pub fn from_samples(
        model: &str,
        samples: &[Samples],
        feature_names: Option<&[String]>,
        max_rows: usize,
    ) -> Result<Self, TrainError> {
        let names: Vec<String> = match feature_names {
            Some(n) => n.to_vec(),
            None => samples
                .first()
                .map(|s| s.feature_names.clone())
                .ok_or_else(|| {
                    TrainError::Input(format!("no fleet samples held for model {model:?}"))
                })?,
        };
        let mut rows: Vec<&Vec<f64>> = samples
            .iter()
            .filter(|s| s.feature_names == names)
            .flat_map(|s| s.rows.iter())
            .filter(|r| r.len() == names.len() && r.iter().all(|v| v.is_finite()))
            .collect();
        if rows.is_empty() {
            return Err(TrainError::Input(format!(
                "no fleet samples for model {model:?} with its {} features",
                names.len()
            )));
        }
        let agents: BTreeSet<&str> = samples.iter().map(|s| s.agent_id.as_str()).collect();
        if max_rows > 0 && rows.len() > max_rows {
            rows.drain(..rows.len() - max_rows);
        }
        Ok(Self {
            width: names.len(),
            rows: rows.iter().flat_map(|r| r.iter().copied()).collect(),
            source: format!(
                "fleet samples of {model}: {} rows from {} agents",
                rows.len(),
                agents.len()
            ),
            names,
            labels: None,
        })
    }

    /// Splits off the last `fraction` of the rows (at least `min_hold` rows);
    /// returns `(training, holdout)`.
    fn split(&self, fraction: f64, min_hold: usize) -> (Dataset, Dataset) {
        let n = self.n_rows();
        let hold = ((n as f64 * fraction).ceil() as usize).max(min_hold).min(n);
        let cut = n - hold;
        let part = |a: usize, b: usize, what: &str| Dataset {
            rows: self.rows[a * self.width..b * self.width].to_vec(),
            width: self.width,
            names: self.names.clone(),
            labels: self.labels.as_ref().map(|l| l[a..b].to_vec()),
            source: format!("{} ({what})", self.source),
        };
        (part(0, cut, "training"), part(cut, n, "holdout"))
    }
}

/// Hyper-parameters of the neural kinds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NeuralParams {
    /// Maximum epochs (default 30).
    pub epochs: usize,
    /// AdamW learning rate (default 2e-3).
    pub learning_rate: f64,
    /// Mini-batch size (default 64).
    pub batch_size: usize,
    /// Epochs without validation improvement before stopping (default 5).
    pub patience: usize,
    /// Seed of initialisation and shuffling (default 42).
    pub seed: u64,
    /// Share of training samples above the threshold, in (0, 0.5) (default 0.01).
    pub contamination: f64,
    /// Window of the LSTM in rows (default 32; 1 for the dense kinds).
    pub window: usize,
    /// Hidden width (default: from the feature count).
    pub hidden: Option<usize>,
    /// Latent width (default: from the feature count).
    pub latent: Option<usize>,
}

impl Default for NeuralParams {
    fn default() -> Self {
        Self {
            epochs: 30,
            learning_rate: 2e-3,
            batch_size: 64,
            patience: 5,
            seed: 42,
            contamination: 0.01,
            window: 32,
            hidden: None,
            latent: None,
        }
    }
}

/// The fitting parameters of one model kind.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelParams {
    /// Isolation Forest.
    IsolationForest(IsolationForestParams),
    /// Dense autoencoder, LSTM autoencoder or VAE.
    Neural(ModelKind, NeuralParams),
    /// Half-Space Trees, learnt over the training rows.
    HalfSpaceTrees(HstParams),
    /// EWMA z-score, learnt over the training rows.
    Ewma(EwmaParams),
}

/// The API's Isolation Forest defaults (100 trees, 256 samples, contamination 0.1, seed 42).
pub fn default_iforest_params() -> IsolationForestParams {
    IsolationForestParams {
        n_estimators: 100,
        max_samples: MaxSamples::Count(256),
        contamination: Contamination::Fraction(0.1),
        seed: 42,
        ..IsolationForestParams::default()
    }
}

impl ModelParams {
    /// The default parameters of `kind`.
    pub fn defaults(kind: ModelKind) -> Self {
        match kind {
            ModelKind::IsolationForest => Self::IsolationForest(default_iforest_params()),
            ModelKind::HalfSpaceTrees => Self::HalfSpaceTrees(HstParams::default()),
            ModelKind::Ewma => Self::Ewma(EwmaParams::default()),
            k => Self::Neural(
                k,
                NeuralParams {
                    window: if k == ModelKind::Lstm { 32 } else { 1 },
                    ..NeuralParams::default()
                },
            ),
        }
    }

    /// The kind these parameters fit.
    pub fn kind(&self) -> ModelKind {
        match self {
            Self::IsolationForest(_) => ModelKind::IsolationForest,
            Self::Neural(k, _) => *k,
            Self::HalfSpaceTrees(_) => ModelKind::HalfSpaceTrees,
            Self::Ewma(_) => ModelKind::Ewma,
        }
    }

    /// Rows per scored sample (the LSTM's window, else 1).
    pub fn window(&self) -> usize {
        match self {
            Self::Neural(ModelKind::Lstm, p) => p.window.max(1),
            _ => 1,
        }
    }

    /// Records the parameters as `param_*` metrics.
    pub fn write_metrics(&self, m: &mut BTreeMap<String, f64>) {
        let mut put = |k: &str, v: f64| {
            m.insert(format!("param_{k}"), v);
        };
        match self {
            Self::IsolationForest(p) => {
                put("n_estimators", p.n_estimators as f64);
                put(
                    "max_samples",
                    match p.max_samples {
                        MaxSamples::Auto => 0.0,
                        MaxSamples::Count(n) => n as f64,
                        MaxSamples::Fraction(f) => f,
                    },
                );
                put(
                    "contamination",
                    match p.contamination {
                        Contamination::Auto => 0.0,
                        Contamination::Fraction(f) => f,
                    },
                );
                put("max_features", p.max_features);
                put("seed", p.seed as f64);
            }
            Self::Neural(_, p) => {
                put("epochs", p.epochs as f64);
                put("learning_rate", p.learning_rate);
                put("batch_size", p.batch_size as f64);
                put("patience", p.patience as f64);
                put("seed", p.seed as f64);
                put("contamination", p.contamination);
                put("window", p.window as f64);
                if let Some(h) = p.hidden {
                    put("hidden", h as f64);
                }
                if let Some(l) = p.latent {
                    put("latent", l as f64);
                }
            }
            Self::HalfSpaceTrees(p) => {
                put("n_trees", p.n_trees as f64);
                put("height", p.height as f64);
                put("window_size", p.window_size as f64);
                put("seed", p.seed as f64);
            }
            Self::Ewma(p) => {
                put("alpha", p.alpha);
                put("warmup", p.warmup as f64);
                put("z_threshold", p.z_threshold);
            }
        }
    }

    /// The parameters a manifest was trained with (`param_*`), defaults for the missing ones.
    pub fn from_manifest(m: &ModelManifest) -> Self {
        let g = |k: &str| m.training.metrics.get(&format!("param_{k}")).copied();
        let gu = |k: &str, d: usize| g(k).map_or(d, |v| v as usize);
        match Self::defaults(m.kind) {
            Self::IsolationForest(d) => Self::IsolationForest(IsolationForestParams {
                n_estimators: gu("n_estimators", d.n_estimators),
                max_samples: match g("max_samples") {
                    None => d.max_samples,
                    Some(0.0) => MaxSamples::Auto,
                    Some(v) if v > 1.0 => MaxSamples::Count(v as usize),
                    Some(v) => MaxSamples::Fraction(v),
                },
                contamination: match g("contamination") {
                    None => d.contamination,
                    Some(0.0) => Contamination::Auto,
                    Some(v) => Contamination::Fraction(v),
                },
                max_features: g("max_features").unwrap_or(d.max_features),
                seed: g("seed").map_or(d.seed, |v| v as u64),
            }),
            Self::Neural(k, d) => Self::Neural(
                k,
                NeuralParams {
                    epochs: gu("epochs", d.epochs),
                    learning_rate: g("learning_rate").unwrap_or(d.learning_rate),
                    batch_size: gu("batch_size", d.batch_size),
                    patience: gu("patience", d.patience),
                    seed: g("seed").map_or(d.seed, |v| v as u64),
                    contamination: g("contamination").unwrap_or(d.contamination),
                    window: if k == ModelKind::Lstm {
                        (m.window as usize).max(1)
                    } else {
                        1
                    },
                    hidden: g("hidden").map(|v| v as usize),
                    latent: g("latent").map(|v| v as usize),
                },
            ),
            Self::HalfSpaceTrees(d) => Self::HalfSpaceTrees(HstParams {
                n_trees: gu("n_trees", d.n_trees),
                height: gu("height", d.height),
                window_size: gu("window_size", d.window_size),
                seed: g("seed").map_or(d.seed, |v| v as u64),
                limits: None,
            }),
            Self::Ewma(d) => Self::Ewma(EwmaParams {
                alpha: g("alpha").unwrap_or(d.alpha),
                warmup: gu("warmup", d.warmup),
                z_threshold: g("z_threshold").unwrap_or(d.z_threshold),
            }),
        }
    }

    /// Fewest training rows these parameters need.
    pub fn min_training_rows(&self) -> usize {
        match self {
            Self::Neural(ModelKind::Lstm, p) => p.window + 1,
            Self::HalfSpaceTrees(p) => p.window_size.max(MIN_ROWS),
            Self::Ewma(p) => p.warmup.max(MIN_ROWS),
            _ => MIN_ROWS,
        }
    }
}

/// What to train.
#[derive(Debug, Clone)]
pub struct TrainSpec {
    /// Model name.
    pub name: String,
    /// Kind and hyper-parameters.
    pub params: ModelParams,
    /// Calibrated threshold to use instead of the fitted one.
    pub threshold: Option<f64>,
    /// Whether to run the quality gate (`false` records that it was skipped).
    pub gate: bool,
    /// Version this one derives from (retraining).
    pub parent_version: Option<u64>,
}

/// Where a training run is, for the job view and the CLI.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Progress {
    /// Share done, in `[0, 1]`.
    pub fraction: f64,
    /// What is happening (`loading data`, `training`, `quality gate`, `saving`).
    pub phase: String,
    /// Current epoch of a neural model.
    pub epoch: Option<usize>,
    /// Maximum epochs of a neural model.
    pub epochs: Option<usize>,
    /// Training loss of the last epoch.
    pub loss: Option<f64>,
    /// Validation loss of the last epoch.
    pub val_loss: Option<f64>,
}

impl Progress {
    /// A phase without epoch figures.
    pub fn phase(fraction: f64, phase: &str) -> Self {
        Self {
            fraction,
            phase: phase.to_string(),
            epoch: None,
            epochs: None,
            loss: None,
            val_loss: None,
        }
    }
}

/// A saved model version with its gate verdict.
#[derive(Clone)]
pub struct Trained {
    /// The registry entry as saved.
    pub entry: Arc<ModelEntry>,
    /// The quality gate's verdict (also in the manifest).
    pub verdict: GateVerdict,
    /// Seconds spent.
    pub training_time_s: f64,
    /// Share of labelled rows classified right, when labels exist.
    pub accuracy: Option<f64>,
}

impl Trained {
    /// The job result: the model listing plus version, parent, timing and the verdict.
    pub fn result_json(&self) -> Value {
        let mut info = serde_json::to_value(self.entry.info()).unwrap_or(Value::Null);
        if let Value::Object(o) = &mut info {
            let m = &self.entry.manifest;
            o.insert("parent_version".into(), json!(m.parent_version));
            o.insert("notes".into(), json!(m.notes));
            o.insert("training_time_s".into(), json!(self.training_time_s));
            o.insert("accuracy".into(), json!(self.accuracy));
            o.insert("publishable".into(), json!(self.verdict.publishable));
            o.insert("gate".into(), json!(self.verdict));
        }
        info
    }
}

/// The next free version of `name`: above every saved version, serving or not.
pub fn next_version(registry: &ModelRegistry, name: &str) -> u64 {
    registry.next_version(name)
}

/// Scores `data` with `det`, one sample per `window` rows (non-overlapping
/// windows for the LSTM; a window is anomalous in truth when any row is).
pub fn score_holdout(
    det: &dyn Detector,
    window: usize,
    data: &Dataset,
) -> Result<ScoredHoldout, TrainError> {
    let w = window.max(1);
    let n = data.n_rows() / w * w;
    if n == 0 {
        return Err(TrainError::Input(format!(
            "holdout of {} rows is shorter than a window of {w}",
            data.n_rows()
        )));
    }
    let scores = det
        .score_batch(&data.rows[..n * data.width])
        .map_err(|e| TrainError::Fit(format!("scoring the holdout: {e}")))?;
    Ok(ScoredHoldout {
        flagged: scores.iter().map(|s| s.is_anomaly).collect(),
        scores: scores.iter().map(|s| s.score).collect(),
        labels: data
            .labels
            .as_ref()
            .map(|l| l[..n].chunks(w).map(|c| c.iter().any(|x| *x)).collect()),
    })
}

fn spec_for(spec: &TrainSpec, version: u64, data: &Dataset) -> ManifestSpec {
    ManifestSpec {
        name: spec.name.clone(),
        version,
        parent_version: spec.parent_version,
        feature_names: data.names.clone(),
        window: 1,
        scaler: None,
        training_data: data.source.clone(),
        training_rows: data.n_rows() as u64,
        metrics: BTreeMap::new(),
        created_ms: now_ms(),
    }
}

/// Fits the model of `spec` on `train`; returns manifest and payload.
fn fit(
    spec: &TrainSpec,
    version: u64,
    train: &Dataset,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<(ModelManifest, Vec<u8>), TrainError> {
    let fit_err = |e: sad_models::ModelError| TrainError::Fit(e.to_string());
    let w = train.width;
    let scaled = |d: &Dataset| -> Result<_, TrainError> {
        let scaler = fit_standard_scaler(&d.rows, w).map_err(fit_err)?;
        let rows = scaler.transform(&d.rows);
        Ok((scaler, rows))
    };
    let (mut manifest, payload) = match &spec.params {
        ModelParams::IsolationForest(p) => {
            let (scaler, rows) = scaled(train)?;
            let mut forest = p.fit(&rows, w).map_err(fit_err)?;
            if let Some(t) = spec.threshold {
                forest = forest.with_threshold(t);
            }
            let mut s = spec_for(spec, version, train);
            s.scaler = Some(scaler);
            iforest_bundle(s, &forest)
        }
        ModelParams::HalfSpaceTrees(p) => {
            let (scaler, rows) = scaled(train)?;
            let mut d = HalfSpaceTrees::new(p.clone(), w).map_err(fit_err)?;
            for r in rows.chunks_exact(w) {
                d.learn(r).map_err(fit_err)?;
            }
            if let Some(t) = spec.threshold {
                d = d.with_threshold(t);
            }
            let payload = d.to_bytes();
            let mut s = spec_for(spec, version, train);
            s.scaler = Some(scaler);
            (manifest_for(s, &d, &payload), payload)
        }
        ModelParams::Ewma(p) => {
            let (scaler, rows) = scaled(train)?;
            let mut d = EwmaZScore::new(*p, w).map_err(fit_err)?;
            for r in rows.chunks_exact(w) {
                d.learn(r).map_err(fit_err)?;
            }
            if let Some(t) = spec.threshold {
                d = d.with_threshold(t);
            }
            let payload = d.to_bytes();
            let mut s = spec_for(spec, version, train);
            s.scaler = Some(scaler);
            (manifest_for(s, &d, &payload), payload)
        }
        ModelParams::Neural(kind, p) => {
            let (mut m, payload) = fit_neural(spec, *kind, p, version, train, progress)?;
            if let Some(t) = spec.threshold {
                m.threshold = t;
            }
            (m, payload)
        }
    };
    spec.params.write_metrics(&mut manifest.training.metrics);
    if let Some(t) = spec.threshold {
        manifest
            .training
            .metrics
            .insert("threshold_override".into(), t);
    }
    Ok((manifest, payload))
}

#[cfg(feature = "train")]
fn fit_neural(
    spec: &TrainSpec,
    kind: ModelKind,
    p: &NeuralParams,
    version: u64,
    train: &Dataset,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<(ModelManifest, Vec<u8>), TrainError> {
    use sad_models::nn::Architecture;
    use sad_models::nn::experiments::NnKind;
    use sad_models::nn::fit::{FitOptions, fit};
    use sad_models::nn::pretrained::{TrainingRecord, nn_files};
    use sad_models::nn::train::TrainConfig;

    let nn_kind = match kind {
        ModelKind::Autoencoder => NnKind::Dense,
        ModelKind::Vae => NnKind::Vae,
        ModelKind::Lstm => NnKind::Lstm,
        other => return Err(TrainError::Input(format!("{other} is not a neural kind"))),
    };
    let mut arch = nn_kind.arch(train.width, p.window.max(1));
    match &mut arch {
        Architecture::Dense { hidden, latent, .. } | Architecture::Vae { hidden, latent, .. } => {
            if let Some(h) = p.hidden {
                *hidden = vec![h];
            }
            if let Some(l) = p.latent {
                *latent = l;
            }
        }
        Architecture::Lstm { hidden, latent, .. } => {
            if let Some(h) = p.hidden {
                *hidden = h;
            }
            if let Some(l) = p.latent {
                *latent = l;
            }
        }
    }
    let opts = FitOptions {
        train: TrainConfig {
            epochs: p.epochs,
            batch_size: p.batch_size,
            learning_rate: p.learning_rate,
            patience: p.patience,
            seed: p.seed,
            ..TrainConfig::default()
        },
        batch: 16,
        contamination: p.contamination,
        window_stride: 1,
        max_samples: 0,
    };
    let fitted = fit(&arch, &train.rows, &opts, &mut |r| {
        progress(Progress {
            fraction: 0.1 + 0.7 * r.epoch as f64 / r.epochs.max(1) as f64,
            phase: "training".into(),
            epoch: Some(r.epoch),
            epochs: Some(r.epochs),
            loss: Some(r.train_loss),
            val_loss: r.val_loss,
        })
    })
    .map_err(|e| TrainError::Fit(e.to_string()))?;
    let mut metrics = fitted.outcome.metrics();
    if let Some(last) = fitted.outcome.history.last() {
        metrics.insert("train_loss".into(), last.train_loss);
    }
    metrics.insert("export_max_abs_diff".into(), fitted.exported.max_abs_diff);
    let rec = TrainingRecord {
        name: spec.name.clone(),
        version,
        parent_version: spec.parent_version,
        feature_names: train.names.clone(),
        data: train.source.clone(),
        rows: train.n_rows() as u64,
        metrics,
        notes: Some(format!("{arch:?}")),
    };
    let (m, payload, _) = nn_files(&fitted, &rec).map_err(|e| TrainError::Fit(e.to_string()))?;
    Ok((m, payload))
}

#[cfg(not(feature = "train"))]
fn fit_neural(
    _: &TrainSpec,
    kind: ModelKind,
    _: &NeuralParams,
    _: u64,
    _: &Dataset,
    _: &mut (dyn FnMut(Progress) + Send),
) -> Result<(ModelManifest, Vec<u8>), TrainError> {
    Err(TrainError::Input(format!(
        "training {kind} needs the coordinator's train feature"
    )))
}

/// Splits, fits, gates and saves one model version (see the module docs).
/// `holdout` replaces the held-back split when given. Blocking.
pub fn train_model(
    registry: &ModelRegistry,
    spec: &TrainSpec,
    data: Dataset,
    holdout: Option<Dataset>,
    gate_cfg: &GateConfig,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<Trained, TrainError> {
    let t0 = Instant::now();
    let window = spec.params.window();
    if data.n_rows() < MIN_ROWS {
        return Err(TrainError::Input(format!(
            "training data has {} rows; at least {MIN_ROWS} are needed",
            data.n_rows()
        )));
    }
    if let Some(h) = &holdout
        && h.width != data.width
    {
        return Err(TrainError::Input(format!(
            "holdout has {} features, training data {}",
            h.width, data.width
        )));
    }
    // The holdout: given, or the last rows (at least one window); tiny sets are judged in-sample.
    let (train, hold, in_sample) = match holdout {
        Some(h) => (data, h, false),
        None if data.n_rows() >= MIN_SPLIT_ROWS.max(spec.params.min_training_rows() + window) => {
            let (t, h) = data.split(gate_cfg.holdout_fraction, window);
            (t, h, false)
        }
        None => {
            let h = data.clone();
            (data, h, true)
        }
    };
    if train.n_rows() < spec.params.min_training_rows() {
        return Err(TrainError::Input(format!(
            "{} needs at least {} training rows, got {}",
            spec.params.kind(),
            spec.params.min_training_rows(),
            train.n_rows()
        )));
    }
    progress(Progress::phase(0.1, "training"));
    let active = registry.get(&spec.name);
    let version = next_version(registry, &spec.name);
    let (mut manifest, payload) = fit(spec, version, &train, progress)?;
    progress(Progress::phase(0.85, "quality gate"));
    let candidate =
        detector_from_parts(&manifest, &payload).map_err(|e| TrainError::Fit(e.to_string()))?;
    let scored = score_holdout(candidate.as_ref(), window, &hold)?;
    let verdict = if !spec.gate {
        GateVerdict::skipped("\"gate\": false in the request")
    } else {
        let active_scored = active.as_ref().and_then(|a| {
            if a.detector.n_features() != train.width {
                return None;
            }
            let w = if a.manifest.kind == ModelKind::Lstm {
                a.manifest.window as usize
            } else {
                1
            };
            score_holdout(a.detector.as_ref(), w, &hold)
                .ok()
                .map(|h| ActiveScored {
                    version: a.manifest.version,
                    holdout: h,
                })
        });
        let mut v = gate::evaluate(gate_cfg, &scored, active_scored.as_ref());
        if active.is_some() && active_scored.is_none() {
            v.note
                .push_str(" (the active version has other features: not compared)");
        }
        if in_sample {
            v.note.push_str(" (in-sample: too few rows to hold back)");
        }
        v
    };
    verdict.apply(&mut manifest);
    let accuracy = scored.prf().map(|_| {
        let l = scored.labels.as_deref().unwrap_or_default();
        let right = scored.flagged.iter().zip(l).filter(|(f, l)| f == l).count();
        right as f64 / l.len().max(1) as f64
    });
    if let Some(a) = accuracy {
        manifest.training.metrics.insert("accuracy".into(), a);
    }
    progress(Progress::phase(0.95, "saving"));
    let entry = registry.save(manifest, payload)?;
    Ok(Trained {
        entry,
        verdict,
        training_time_s: t0.elapsed().as_secs_f64(),
        accuracy,
    })
}

/// A range of a Kafka topic to train on.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct KafkaRange {
    /// Topic.
    pub topic: String,
    /// Partitions (default: all).
    pub partitions: Option<Vec<i32>>,
    /// First offset per partition (default: the earliest, or `start_ms`).
    pub start_offset: Option<i64>,
    /// Offset to stop before, per partition (default: the end, or `end_ms`).
    pub end_offset: Option<i64>,
    /// First record time, ms since the epoch.
    pub start_ms: Option<i64>,
    /// Record time to stop before, ms since the epoch.
    pub end_ms: Option<i64>,
    /// Most rows read (the first ones in the range).
    pub max_rows: usize,
    /// How long the whole read may take.
    pub timeout: Duration,
}

/// Reads `range` with a group-less consumer (assign at the start offsets,
/// no commits), decoding records as central detection does
/// ([`crate::central::parse_event`]); rows are ordered by event time. Blocking.
pub fn read_kafka_range(cfg: &KafkaConfig, range: &KafkaRange) -> Result<Dataset, TrainError> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    use rdkafka::{Offset, TopicPartitionList};

    let kerr =
        |what: &str, e: rdkafka::error::KafkaError| TrainError::Kafka(format!("{what}: {e}"));
    let deadline = Instant::now() + range.timeout;
    let left = || deadline.saturating_duration_since(Instant::now());
    let consumer: BaseConsumer = cfg
        .client_config()
        .set("group.id", format!("sad-train-{}", now_ms()))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .map_err(|e| kerr("create consumer", e))?;
    let md = consumer
        .fetch_metadata(Some(&range.topic), left())
        .map_err(|e| {
            kerr(
                &format!("metadata of {} at {}", range.topic, cfg.brokers),
                e,
            )
        })?;
    let topic = md
        .topics()
        .iter()
        .find(|t| t.name() == range.topic)
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        .ok_or_else(|| TrainError::Kafka(format!("topic {:?} does not exist", range.topic)))?;
    let all: Vec<i32> = topic.partitions().iter().map(|p| p.id()).collect();
    let parts = match &range.partitions {
        Some(p) => {
            if let Some(bad) = p.iter().find(|p| !all.contains(p)) {
                return Err(TrainError::Kafka(format!(
                    "topic {:?} has no partition {bad} (it has {all:?})",
                    range.topic
                )));
            }
            p.clone()
        }
        None => all,
    };
    let by_time = |ms: i64| -> Result<HashMap<i32, i64>, TrainError> {
        let mut tpl = TopicPartitionList::new();
        for p in &parts {
            tpl.add_partition_offset(&range.topic, *p, Offset::Offset(ms))
                .map_err(|e| kerr("offsets for times", e))?;
        }
        let r = consumer
            .offsets_for_times(tpl, left())
            .map_err(|e| kerr("offsets for times", e))?;
        Ok(r.elements()
            .iter()
            .map(|e| {
                (
                    e.partition(),
                    match e.offset() {
                        Offset::Offset(o) => o,
                        _ => i64::MAX,
                    },
                )
            })
            .collect())
    };
    let starts = range.start_ms.map(by_time).transpose()?;
    let ends = range.end_ms.map(by_time).transpose()?;
    let mut bounds: HashMap<i32, (i64, i64)> = HashMap::new();
    let mut assign = TopicPartitionList::new();
    for p in &parts {
        let (low, high) = consumer
            .fetch_watermarks(&range.topic, *p, left())
            .map_err(|e| kerr(&format!("watermarks of partition {p}"), e))?;
        let mut start = range.start_offset.unwrap_or(low).max(low);
        if let Some(s) = starts.as_ref().and_then(|m| m.get(p)) {
            start = start.max(*s);
        }
        let mut end = range.end_offset.unwrap_or(high).min(high);
        if let Some(e) = ends.as_ref().and_then(|m| m.get(p)) {
            end = end.min(*e);
        }
        if start < end {
            bounds.insert(*p, (start, end));
            assign
                .add_partition_offset(&range.topic, *p, Offset::Offset(start))
                .map_err(|e| kerr("assign", e))?;
        }
    }
    if bounds.is_empty() {
        return Err(TrainError::Input(format!(
            "the range of topic {:?} holds no records",
            range.topic
        )));
    }
    consumer.assign(&assign).map_err(|e| kerr("assign", e))?;
    let mut events = Vec::new();
    let mut rejected = 0usize;
    let mut done: HashSet<i32> = HashSet::new();
    while done.len() < bounds.len() && (range.max_rows == 0 || events.len() < range.max_rows) {
        if left().is_zero() {
            return Err(TrainError::Kafka(format!(
                "timed out after {:?} reading {:?} ({} records so far)",
                range.timeout,
                range.topic,
                events.len()
            )));
        }
        let Some(msg) = consumer.poll(left().min(Duration::from_millis(200))) else {
            continue;
        };
        let msg = msg.map_err(|e| kerr("read", e))?;
        let p = msg.partition();
        let Some(&(_, end)) = bounds.get(&p) else {
            continue;
        };
        if msg.offset() >= end {
            done.insert(p);
            continue;
        }
        if msg.offset() + 1 >= end {
            done.insert(p);
        }
        match crate::central::parse_event(
            msg.payload().unwrap_or_default(),
            msg.key(),
            msg.timestamp().to_millis(),
        ) {
            Ok(ev) => events.push((ev.ts_ms, p, msg.offset(), ev)),
            Err(_) => rejected += 1,
        }
    }
    events.sort_by_key(|(ts, p, o, _)| (*ts, *p, *o));
    let Some(width) = events.first().map(|e| e.3.values.len()) else {
        return Err(TrainError::Input(format!(
            "no record of topic {:?} in the range could be decoded ({rejected} rejected)",
            range.topic
        )));
    };
    let mut rows = Vec::new();
    let mut labels = Vec::new();
    let mut any_label = false;
    let mut n = 0usize;
    for (_, _, _, ev) in &events {
        if ev.values.len() != width {
            rejected += 1;
            continue;
        }
        rows.extend_from_slice(&ev.values);
        any_label |= ev.label.is_some();
        labels.push(ev.label.unwrap_or(false));
        n += 1;
    }
    Ok(Dataset {
        rows,
        width,
        names: (0..width).map(|i| format!("f{i}")).collect(),
        labels: any_label.then_some(labels),
        source: format!(
            "kafka {} partitions {:?}: {n} records ({rejected} skipped)",
            range.topic,
            {
                let mut v: Vec<_> = bounds.keys().copied().collect();
                v.sort();
                v
            }
        ),
    })
}

/// Receives every retrained version with its verdict (rollout decides what to publish).
pub trait CandidateSink: Send + Sync {
    /// A new version was saved; `verdict.publishable` says whether the gate let it through.
    fn candidate(&self, entry: Arc<ModelEntry>, verdict: &GateVerdict);
}

/// Models whose retraining was asked for (drift), taken by the retrain loop.
#[derive(Debug, Default)]
pub struct RetrainQueue(Mutex<BTreeSet<String>>);

impl RetrainQueue {
    /// Asks for `model` to be retrained at the next round.
    pub fn request(&self, model: &str) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(model.to_string());
    }

    /// Takes the requested models.
    pub fn take(&self) -> BTreeSet<String> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Settings of [`retrain_loop`].
#[derive(Debug, Clone, PartialEq)]
pub struct RetrainSettings {
    /// Time between rounds (`RETRAIN_INTERVAL`).
    pub interval: Duration,
    /// Fewest sample rows not trained on before that start a retraining (default 200).
    pub min_fresh_rows: usize,
    /// Most rows trained on, the newest (default 20 000).
    pub max_rows: usize,
    /// Retrain only models in the [`RetrainQueue`] (drift), not every model with fresh rows.
    pub only_requested: bool,
    /// The quality gate.
    pub gate: GateConfig,
}

impl RetrainSettings {
    /// Defaults at `interval`.
    pub fn every(interval: Duration) -> Self {
        Self {
            interval,
            min_fresh_rows: 200,
            max_rows: 20_000,
            only_requested: false,
            gate: GateConfig::default(),
        }
    }
}

/// What one model's retraining came to.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RetrainReport {
    /// Model name.
    pub model: String,
    /// Version trained from.
    pub parent_version: u64,
    /// New version, when saved.
    pub version: Option<u64>,
    /// Rows trained and judged on.
    pub rows: usize,
    /// Gate verdict, when saved.
    pub verdict: Option<GateVerdict>,
    /// Error, when it failed.
    pub error: Option<String>,
}

/// Samples messages already trained on, per model (by content hash).
#[derive(Debug, Default)]
pub struct SeenSamples(HashMap<String, HashSet<u64>>);

fn sample_hash(s: &Samples) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    s.agent_id.hash(&mut h);
    for r in &s.rows {
        for v in r {
            v.to_bits().hash(&mut h);
        }
    }
    h.finish()
}

/// One retraining round (blocking): every registered model (or only the
/// requested ones) whose fleet samples hold at least `min_fresh_rows` rows
/// not trained on before is trained again on the held samples as version +
/// 1 with `parent_version` set, same kind and `param_*` parameters, gated,
/// saved, and handed to `sink`.
pub fn retrain_once(
    registry: &ModelRegistry,
    fleet: &Fleet,
    settings: &RetrainSettings,
    seen: &mut SeenSamples,
    requested: &BTreeSet<String>,
    sink: &dyn CandidateSink,
) -> Vec<RetrainReport> {
    let mut reports = Vec::new();
    for active in registry.list() {
        let m = &active.manifest;
        if settings.only_requested && !requested.contains(&m.name) {
            continue;
        }
        let held: Vec<Samples> = fleet
            .samples(&m.name)
            .into_iter()
            .filter(|s| s.feature_names == m.feature_names)
            .collect();
        let known = seen.0.entry(m.name.clone()).or_default();
        let hashes: Vec<u64> = held.iter().map(sample_hash).collect();
        let fresh: usize = held
            .iter()
            .zip(&hashes)
            .filter(|(_, h)| !known.contains(h))
            .map(|(s, _)| s.rows.len())
            .sum();
        // Keep memory bounded: forget messages the fleet no longer holds.
        known.retain(|h| hashes.contains(h));
        if fresh < settings.min_fresh_rows.max(1) {
            continue;
        }
        known.extend(hashes.iter().copied());
        let mut report = RetrainReport {
            model: m.name.clone(),
            parent_version: m.version,
            version: None,
            rows: 0,
            verdict: None,
            error: None,
        };
        let spec = TrainSpec {
            name: m.name.clone(),
            params: ModelParams::from_manifest(m),
            threshold: None,
            gate: true,
            parent_version: Some(m.version),
        };
        let outcome =
            Dataset::from_samples(&m.name, &held, Some(&m.feature_names), settings.max_rows)
                .and_then(|data| {
                    report.rows = data.n_rows();
                    train_model(registry, &spec, data, None, &settings.gate, &mut |_| {})
                });
        match outcome {
            Ok(t) => {
                tracing::info!(
                    model = %m.name,
                    version = t.entry.manifest.version,
                    passed = t.verdict.passed,
                    "retrained from fleet samples"
                );
                report.version = Some(t.entry.manifest.version);
                report.verdict = Some(t.verdict.clone());
                sink.candidate(t.entry.clone(), &t.verdict);
            }
            Err(e) => {
                tracing::warn!(model = %m.name, error = %e, "retraining failed");
                report.error = Some(e.to_string());
            }
        }
        reports.push(report);
    }
    reports
}

/// Every `settings.interval` until `shutdown`, runs [`retrain_once`] on the
/// blocking pool (`RETRAIN_INTERVAL`); `queue` carries drift's retraining requests.
pub async fn retrain_loop(
    registry: Arc<ModelRegistry>,
    fleet: Fleet,
    settings: RetrainSettings,
    sink: Arc<dyn CandidateSink>,
    queue: Option<Arc<RetrainQueue>>,
    shutdown: CancellationToken,
) {
    let seen = Arc::new(Mutex::new(SeenSamples::default()));
    let mut tick = tokio::time::interval(settings.interval.max(Duration::from_secs(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is immediate; wait one interval first
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let requested = queue.as_ref().map(|q| q.take()).unwrap_or_default();
        let (reg, fl, st, sk, sn) = (
            registry.clone(),
            fleet.clone(),
            settings.clone(),
            sink.clone(),
            seen.clone(),
        );
        let r = tokio::task::spawn_blocking(move || {
            let mut seen = sn.lock().unwrap_or_else(|e| e.into_inner());
            retrain_once(&reg, &fl, &st, &mut seen, &requested, sk.as_ref())
        })
        .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "retraining round panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(n: usize, seed: u64) -> Vec<Vec<f64>> {
        use rand::{Rng, SeedableRng};
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n)
            .map(|_| vec![r.gen_range(-1.0..1.0), 5.0 + r.gen_range(-1.0..1.0)])
            .collect()
    }

    fn spec(name: &str, params: ModelParams) -> TrainSpec {
        TrainSpec {
            name: name.into(),
            params,
            threshold: None,
            gate: true,
            parent_version: None,
        }
    }

    fn small_forest() -> ModelParams {
        ModelParams::IsolationForest(IsolationForestParams {
            n_estimators: 20,
            ..default_iforest_params()
        })
    }

    #[derive(Default)]
    struct Collect(Mutex<Vec<(u64, bool)>>);
    impl CandidateSink for Collect {
        fn candidate(&self, entry: Arc<ModelEntry>, verdict: &GateVerdict) {
            self.0
                .lock()
                .unwrap()
                .push((entry.manifest.version, verdict.passed));
        }
    }

    #[test]
    fn a_forest_is_gated_and_saved_with_its_verdict_and_parameters() {
        let dir = tempfile::tempdir().unwrap();
        let reg = ModelRegistry::empty(dir.path());
        let data = Dataset::from_rows(rows(300, 1), "test".into()).unwrap();
        let t = train_model(
            &reg,
            &spec("m", small_forest()),
            data.clone(),
            None,
            &GateConfig::default(),
            &mut |_| {},
        )
        .unwrap();
        let m = &t.entry.manifest;
        assert_eq!(m.version, 1);
        assert!(t.verdict.passed && t.verdict.first_version);
        assert_eq!(t.verdict.holdout_samples, 60);
        assert_eq!(m.training.rows, 240);
        assert_eq!(m.training.metrics["gate_passed"], 1.0);
        assert_eq!(m.training.metrics["param_n_estimators"], 20.0);
        assert!(m.scaler.is_some());
        assert!(m.notes.as_deref().unwrap().contains("first version"));
        assert_eq!(ModelParams::from_manifest(m), small_forest());
        // A second version with a threshold that flags everything fails against v1.
        let mut bad = spec("m", small_forest());
        bad.threshold = Some(0.0);
        let t2 = train_model(&reg, &bad, data, None, &GateConfig::default(), &mut |_| {}).unwrap();
        assert_eq!(t2.entry.manifest.version, 2);
        assert!(!t2.verdict.passed && !gate::publishable(&t2.entry.manifest));
        assert_eq!(t2.verdict.active_version, Some(1));
        assert_eq!(next_version(&reg, "m"), 3);
    }

    #[test]
    fn streaming_kinds_learn_their_state_from_the_rows() {
        let dir = tempfile::tempdir().unwrap();
        let reg = ModelRegistry::empty(dir.path());
        let data = Dataset::from_rows(rows(200, 2), "test".into()).unwrap();
        let ewma = ModelParams::defaults(ModelKind::Ewma);
        let t = train_model(
            &reg,
            &spec("e", ewma),
            data,
            None,
            &GateConfig::default(),
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(t.entry.manifest.kind, ModelKind::Ewma);
        assert!(t.verdict.passed, "{:?}", t.verdict);
        let few = Dataset::from_rows(rows(20, 2), "test".into()).unwrap();
        let hst = ModelParams::defaults(ModelKind::HalfSpaceTrees);
        let e = train_model(
            &reg,
            &spec("h", hst),
            few,
            None,
            &GateConfig::default(),
            &mut |_| {},
        )
        .err()
        .unwrap();
        assert!(e.to_string().contains("at least 250"), "{e}");
    }

    #[test]
    fn retraining_needs_fresh_samples_and_records_the_parent() {
        let dir = tempfile::tempdir().unwrap();
        let reg = ModelRegistry::empty(dir.path());
        let data = Dataset::from_rows(rows(300, 3), "test".into()).unwrap();
        train_model(
            &reg,
            &spec("m", small_forest()),
            data,
            None,
            &GateConfig::default(),
            &mut |_| {},
        )
        .unwrap();
        let fleet = Fleet::new(None);
        let settings = RetrainSettings {
            min_fresh_rows: 100,
            ..RetrainSettings::every(Duration::from_secs(60))
        };
        let sink = Collect::default();
        let mut seen = SeenSamples::default();
        let none = BTreeSet::new();
        let send = |agent: &str, seed: u64| {
            fleet.record_samples(Samples {
                agent_id: agent.into(),
                model: "m".into(),
                feature_names: vec!["f0".into(), "f1".into()],
                rows: rows(80, seed),
            })
        };
        send("a", 10);
        assert!(retrain_once(&reg, &fleet, &settings, &mut seen, &none, &sink).is_empty());
        send("b", 11);
        let r = retrain_once(&reg, &fleet, &settings, &mut seen, &none, &sink);
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(r[0].version, Some(2));
        assert_eq!(r[0].rows, 160);
        let m = reg.get("m").unwrap();
        assert_eq!(m.manifest.parent_version, Some(1));
        assert_eq!(m.manifest.training.metrics["param_n_estimators"], 20.0);
        assert_eq!(*sink.0.lock().unwrap(), vec![(2, true)]);
        // The same samples do not trigger another round.
        assert!(retrain_once(&reg, &fleet, &settings, &mut seen, &none, &sink).is_empty());
        // Only requested models when so configured.
        send("c", 12);
        send("d", 13);
        let only = RetrainSettings {
            only_requested: true,
            ..settings.clone()
        };
        assert!(retrain_once(&reg, &fleet, &only, &mut seen, &none, &sink).is_empty());
        let q = RetrainQueue::default();
        q.request("m");
        let r = retrain_once(&reg, &fleet, &only, &mut seen, &q.take(), &sink);
        assert_eq!(r[0].version, Some(3));
    }

    #[cfg(feature = "train")]
    #[test]
    fn a_tiny_dense_autoencoder_trains_with_epoch_progress() {
        let dir = tempfile::tempdir().unwrap();
        let reg = ModelRegistry::empty(dir.path());
        let data = Dataset::from_rows(rows(60, 4), "test".into()).unwrap();
        let params = ModelParams::Neural(
            ModelKind::Autoencoder,
            NeuralParams {
                epochs: 2,
                window: 1,
                batch_size: 16,
                ..NeuralParams::default()
            },
        );
        let mut epochs = Vec::new();
        let t = train_model(
            &reg,
            &spec("ae", params),
            data,
            None,
            &GateConfig::default(),
            &mut |p| {
                if let Some(e) = p.epoch {
                    epochs.push((e, p.loss.is_some()));
                }
            },
        )
        .unwrap();
        assert_eq!(t.entry.manifest.kind, ModelKind::Autoencoder);
        assert_eq!(epochs, vec![(1, true), (2, true)]);
        assert_eq!(t.entry.manifest.training.metrics["param_epochs"], 2.0);
    }
}
