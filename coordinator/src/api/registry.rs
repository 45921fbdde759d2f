//! A minimal model registry for the REST detect path.
//!
//! Models live in memory by name, each with its manifest and a shared
//! [`Detector`]; every model is also a file `{name}.v{version}.bundle` under
//! the model directory (`MODEL_PATH`): an unsigned [`ModelBundle`] framed by
//! [`sad_common::frame`], written to a temporary file and renamed, so a crash
//! leaves either the old or the new file. At start every bundle in the
//! directory is loaded (the highest version of each name wins; unreadable
//! files are logged and skipped); if no Isolation Forest exists, the seed's
//! default is trained and saved as [`DEFAULT_MODEL`].

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use sad_common::wire::{ModelBundle, ModelManifest};
use sad_common::{ModelKind, frame};
use sad_models::Detector;
use sad_models::bundle::{ManifestSpec, detector_from_parts, iforest_bundle};
use sad_models::iforest::{Contamination, IsolationForestParams, MaxSamples};
use serde::Serialize;
use thiserror::Error;

/// Name of the default model trained at first start, as in the seed.
pub const DEFAULT_MODEL: &str = "isolation_forest_default";
/// Mean of the seed's synthetic training data.
pub const DEFAULT_MEAN: [f64; 4] = [1.2, 3.4, 5.6, 7.8];

/// Why the registry failed.
#[derive(Debug, Error)]
pub enum RegistryError {
    /// Reading or writing a bundle file failed.
    #[error("model file {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A bundle could not be encoded, decoded or built.
    #[error("model {name}: {reason}")]
    Model {
        /// Model name.
        name: String,
        /// What went wrong.
        reason: String,
    },
}

/// A loaded model.
pub struct ModelEntry {
    /// The manifest (name, kind, version, threshold, training info).
    pub manifest: ModelManifest,
    /// The running detector.
    pub detector: Arc<dyn Detector>,
    /// Rows scored and flagged through the REST API.
    pub usage: ModelUsage,
}

/// Lock-free counters of a model's REST use.
#[derive(Debug, Default)]
pub struct ModelUsage {
    events: AtomicU64,
    anomalies: AtomicU64,
}

impl ModelUsage {
    /// Counts `events` rows scored of which `anomalies` were flagged.
    pub fn record(&self, events: u64, anomalies: u64) {
        self.events.fetch_add(events, Ordering::Relaxed);
        self.anomalies.fetch_add(anomalies, Ordering::Relaxed);
    }

    /// `(events, anomalies)` so far.
    pub fn get(&self) -> (u64, u64) {
        (
            self.events.load(Ordering::Relaxed),
            self.anomalies.load(Ordering::Relaxed),
        )
    }
}

impl ModelEntry {
    /// An entry with zeroed usage.
    pub fn new(manifest: ModelManifest, detector: Arc<dyn Detector>) -> Self {
        Self {
            manifest,
            detector,
            usage: ModelUsage::default(),
        }
    }
}

/// What `GET /api/v1/models` shows of a model.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    /// Model name (the seed's `model_id`).
    pub model_id: String,
    /// Kind (the seed's `model_type`).
    pub model_type: String,
    /// Version.
    pub version: u64,
    /// Features per row.
    pub n_features: usize,
    /// Feature names.
    pub feature_names: Vec<String>,
    /// Calibrated threshold of the model.
    pub threshold: f64,
    /// Creation time, ms since the epoch.
    pub created_ms: i64,
    /// Rows trained on.
    pub n_training_samples: u64,
    /// Description of the training data.
    pub training_data: String,
    /// Training metrics (`accuracy` when labels were given).
    pub metrics: BTreeMap<String, f64>,
}

impl ModelEntry {
    /// The listing view.
    pub fn info(&self) -> ModelInfo {
        let m = &self.manifest;
        ModelInfo {
            model_id: m.name.clone(),
            model_type: m.kind.as_str().to_string(),
            version: m.version,
            n_features: m.feature_names.len(),
            feature_names: m.feature_names.clone(),
            threshold: m.threshold,
            created_ms: m.created_ms,
            n_training_samples: m.training.rows,
            training_data: m.training.data.clone(),
            metrics: m.training.metrics.clone(),
        }
    }
}

/// Models by name, backed by bundle files.
pub struct ModelRegistry {
    dir: PathBuf,
    models: RwLock<HashMap<String, Arc<ModelEntry>>>,
}

impl ModelRegistry {
    /// An empty registry saving into `dir` (nothing is read).
    pub fn empty(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            models: RwLock::new(HashMap::new()),
        }
    }

    /// Loads every bundle in `dir` (created if missing) and trains the default
    /// model when no Isolation Forest exists. Blocking: call from `spawn_blocking`.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, RegistryError> {
        let reg = Self::empty(dir);
        std::fs::create_dir_all(&reg.dir).map_err(|source| RegistryError::Io {
            path: reg.dir.clone(),
            source,
        })?;
        let rd = std::fs::read_dir(&reg.dir).map_err(|source| RegistryError::Io {
            path: reg.dir.clone(),
            source,
        })?;
        for e in rd.flatten() {
            let path = e.path();
            if path.extension().and_then(|s| s.to_str()) != Some("bundle") {
                continue;
            }
            match load_bundle(&path) {
                Ok(entry) => reg.insert(entry),
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "skipping model file"),
            }
        }
        if !reg
            .list()
            .iter()
            .any(|m| m.manifest.kind == ModelKind::IsolationForest)
        {
            tracing::info!(
                model = DEFAULT_MODEL,
                "no isolation forest found, training the default"
            );
            let (manifest, payload) = train_default()?;
            reg.save(manifest, payload)?;
        }
        Ok(reg)
    }

    /// The model directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Adds or replaces a model in memory (a lower version never replaces a higher one).
    pub fn insert(&self, entry: ModelEntry) {
        let mut map = self.models.write().unwrap_or_else(|e| e.into_inner());
        let keep_old = map
            .get(&entry.manifest.name)
            .is_some_and(|old| old.manifest.version > entry.manifest.version);
        if !keep_old {
            map.insert(entry.manifest.name.clone(), Arc::new(entry));
        }
    }

    /// Builds the detector, writes the bundle file and registers it. Blocking.
    pub fn save(
        &self,
        manifest: ModelManifest,
        payload: Vec<u8>,
    ) -> Result<Arc<ModelEntry>, RegistryError> {
        let name = manifest.name.clone();
        let model_err = |reason: String| RegistryError::Model {
            name: name.clone(),
            reason,
        };
        let detector =
            detector_from_parts(&manifest, &payload).map_err(|e| model_err(e.to_string()))?;
        let bundle = ModelBundle {
            manifest,
            payload,
            signature: Vec::new(),
        };
        let bytes = frame::encode_checked(&bundle).map_err(|e| model_err(e.to_string()))?;
        let path = self.dir.join(format!(
            "{}.v{}.bundle",
            bundle.manifest.name, bundle.manifest.version
        ));
        let tmp = path.with_extension("bundle.tmp");
        let io = |source| RegistryError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&self.dir).map_err(io)?;
        std::fs::write(&tmp, &bytes).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
        self.insert(ModelEntry::new(bundle.manifest, Arc::from(detector)));
        self.get(&name)
            .ok_or_else(|| model_err("a higher version is already registered".into()))
    }

    /// The model called `name`.
    pub fn get(&self, name: &str) -> Option<Arc<ModelEntry>> {
        self.models
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// The newest model of `kind` (latest `created_ms`, then name).
    pub fn newest(&self, kind: ModelKind) -> Option<Arc<ModelEntry>> {
        self.models
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|m| m.manifest.kind == kind)
            .max_by(|a, b| {
                (a.manifest.created_ms, &a.manifest.name)
                    .cmp(&(b.manifest.created_ms, &b.manifest.name))
            })
            .cloned()
    }

    /// Every model, by name.
    pub fn list(&self) -> Vec<Arc<ModelEntry>> {
        let mut v: Vec<_> = self
            .models
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        v.sort_by(|a, b| a.manifest.name.cmp(&b.manifest.name));
        v
    }

    /// Number of models.
    pub fn len(&self) -> usize {
        self.models.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether no model is loaded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn load_bundle(path: &Path) -> Result<ModelEntry, RegistryError> {
    let bytes = std::fs::read(path).map_err(|source| RegistryError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let name = path.display().to_string();
    let bundle: ModelBundle = frame::decode(&bytes).map_err(|e| RegistryError::Model {
        name: name.clone(),
        reason: e.to_string(),
    })?;
    let detector = detector_from_parts(&bundle.manifest, &bundle.payload).map_err(|e| {
        RegistryError::Model {
            name,
            reason: e.to_string(),
        }
    })?;
    Ok(ModelEntry::new(bundle.manifest, Arc::from(detector)))
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The seed's training data: `n` rows of 4 features ~ N((1.2, 3.4, 5.6, 7.8), 1).
pub fn seed_training_rows(n: usize, seed: u64) -> Vec<f64> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(n * 4);
    for _ in 0..n {
        for mu in DEFAULT_MEAN {
            // Box-Muller
            let u1: f64 = rng.r#gen::<f64>().max(f64::MIN_POSITIVE);
            let u2: f64 = rng.r#gen();
            out.push(mu + (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos());
        }
    }
    out
}

/// Fits an Isolation Forest on row-major `rows` and returns its bundle parts.
#[allow(clippy::too_many_arguments)]
pub fn fit_iforest(
    name: &str,
    version: u64,
    rows: &[f64],
    n_features: usize,
    feature_names: Vec<String>,
    params: IsolationForestParams,
    threshold: Option<f64>,
    training_data: String,
    metrics: BTreeMap<String, f64>,
) -> Result<(ModelManifest, Vec<u8>), RegistryError> {
    let err = |reason: String| RegistryError::Model {
        name: name.to_string(),
        reason,
    };
    let mut forest = params
        .fit(rows, n_features)
        .map_err(|e| err(e.to_string()))?;
    if let Some(t) = threshold {
        forest = forest.with_threshold(t);
    }
    let spec = ManifestSpec {
        name: name.to_string(),
        version,
        parent_version: None,
        feature_names,
        window: 1,
        scaler: None,
        training_data,
        training_rows: (rows.len() / n_features.max(1)) as u64,
        metrics,
        created_ms: now_ms(),
    };
    Ok(iforest_bundle(spec, &forest))
}

/// The seed's default model: 10 000 synthetic rows, 100 trees, 256 samples, contamination 0.1, seed 42.
pub fn train_default() -> Result<(ModelManifest, Vec<u8>), RegistryError> {
    let rows = seed_training_rows(10_000, 42);
    fit_iforest(
        DEFAULT_MODEL,
        1,
        &rows,
        4,
        (0..4).map(|i| format!("f{i}")).collect(),
        IsolationForestParams {
            n_estimators: 100,
            max_samples: MaxSamples::Count(256),
            contamination: Contamination::Fraction(0.1),
            seed: 42,
            ..IsolationForestParams::default()
        },
        None,
        "synthetic: 10000 rows of 4 features ~ N((1.2, 3.4, 5.6, 7.8), 1), seed 42".into(),
        BTreeMap::new(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_directory_gets_the_default_model_and_a_restart_reuses_it() {
        let dir = tempfile::tempdir().unwrap();
        let reg = ModelRegistry::open(dir.path()).unwrap();
        let m = reg.get(DEFAULT_MODEL).unwrap();
        assert_eq!(m.detector.n_features(), 4);
        let created = m.manifest.created_ms;
        let again = ModelRegistry::open(dir.path()).unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(
            again.get(DEFAULT_MODEL).unwrap().manifest.created_ms,
            created
        );
        // the mean of the training data is normal, a far point is anomalous
        let d = &again.get(DEFAULT_MODEL).unwrap().detector;
        assert!(!d.score(&DEFAULT_MEAN).unwrap().is_anomaly);
        assert!(d.score(&[20.0, -20.0, 20.0, -20.0]).unwrap().is_anomaly);
    }

    #[test]
    fn a_corrupt_bundle_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("junk.v1.bundle"), b"not a bundle").unwrap();
        let reg = ModelRegistry::open(dir.path()).unwrap();
        assert!(reg.get(DEFAULT_MODEL).is_some());
        assert_eq!(reg.len(), 1);
    }
}
