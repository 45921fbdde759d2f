//! The model registry: every version of every model, and the one that serves.
//!
//! Every version is a file `{name}.v{version}.bundle` under the model
//! directory (`MODEL_PATH`): an unsigned [`ModelBundle`] framed by
//! [`sad_common::frame`] (bundles are signed when published, by
//! [`crate::rollout`]). Versions of a name only grow and are never
//! overwritten, so the directory is the full history. In memory the registry
//! holds every manifest and, per name, the serving [`Detector`] (detect and
//! the JSON listing use it): the highest version, or the version the rollout
//! pinned as the fleet's active one. At start every bundle in the directory
//! is read (unreadable files are logged and skipped); if no Isolation Forest
//! exists, the seed's default is trained and saved as [`DEFAULT_MODEL`].
//!
//! What survives `kill -9`: each file is written to a temporary file,
//! fsynced, renamed and the directory fsynced, so a crash leaves a version
//! either fully saved or absent (a stray `.bundle.tmp` is ignored).

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

/// Models by name, backed by bundle files, with every version kept.
///
/// One version per name *serves* (detect, the JSON listing): the highest,
/// unless the rollout pinned another with [`ModelRegistry::serve_version`]
/// (the fleet's active version while a newer one is only a candidate).
pub struct ModelRegistry {
    dir: PathBuf,
    models: RwLock<HashMap<String, Arc<ModelEntry>>>,
    history: RwLock<HashMap<String, BTreeMap<u64, ModelManifest>>>,
    pinned: RwLock<HashMap<String, u64>>,
    /// Highest version per name seen in file names, readable or not.
    reserved: RwLock<HashMap<String, u64>>,
}

impl ModelRegistry {
    /// An empty registry saving into `dir` (nothing is read).
    pub fn empty(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            models: RwLock::new(HashMap::new()),
            history: RwLock::new(HashMap::new()),
            pinned: RwLock::new(HashMap::new()),
            reserved: RwLock::new(HashMap::new()),
        }
    }

    /// Loads every bundle in `dir` (created if missing) and trains the default
    /// model when no Isolation Forest exists. Blocking: call from `spawn_blocking`.
    ///
    /// Every readable version enters the history; the highest version of each
    /// name is built and serves. An unreadable file is logged and skipped.
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
        // Every readable version, by name; the highest that builds serves.
        let mut found: HashMap<String, BTreeMap<u64, (ModelBundle, PathBuf)>> = HashMap::new();
        for e in rd.flatten() {
            let path = e.path();
            if path.extension().and_then(|s| s.to_str()) != Some("bundle") {
                continue;
            }
            if let Some((name, v)) = parse_version_file(&path) {
                reg.reserve(&name, v);
            }
            match read_bundle(&path) {
                Ok(bundle) => {
                    let m = &bundle.manifest;
                    reg.record_history(m.clone());
                    found
                        .entry(m.name.clone())
                        .or_default()
                        .insert(m.version, (bundle, path));
                }
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "skipping model file"),
            }
        }
        for (_, versions) in found {
            for (_, (bundle, path)) in versions.into_iter().rev() {
                match detector_from_parts(&bundle.manifest, &bundle.payload) {
                    Ok(d) => {
                        reg.insert(ModelEntry::new(bundle.manifest, Arc::from(d)));
                        break;
                    }
                    Err(e) => tracing::warn!(
                        path = %path.display(),
                        error = %e,
                        "model file does not build; trying the version before it"
                    ),
                }
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

    fn record_history(&self, manifest: ModelManifest) {
        self.history
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(manifest.name.clone())
            .or_default()
            .insert(manifest.version, manifest);
    }

    /// Adds or replaces the serving model in memory: a lower version never
    /// replaces a higher one, and a pinned name keeps its pinned version.
    pub fn insert(&self, entry: ModelEntry) {
        self.insert_arc(Arc::new(entry));
    }

    fn reserve(&self, name: &str, version: u64) {
        let mut r = self.reserved.write().unwrap_or_else(|e| e.into_inner());
        let v = r.entry(name.to_string()).or_default();
        *v = (*v).max(version);
    }

    /// The next unused version of `name` (1 for a new name): above every
    /// version saved, and above every version file found, even unreadable ones.
    pub fn next_version(&self, name: &str) -> u64 {
        let saved = self
            .history
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .and_then(|v| v.keys().next_back().copied())
            .unwrap_or(0);
        let seen = self
            .reserved
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .copied()
            .unwrap_or(0);
        saved.max(seen) + 1
    }

    /// Builds the detector, writes the bundle file and registers the version. Blocking.
    ///
    /// A version that already exists (as a readable or unreadable file) is
    /// never overwritten: the manifest is renumbered to the next free version
    /// first. The new version serves unless the name is pinned to another one
    /// or it failed its quality gate while another version serves. Returns
    /// the saved version's entry.
    pub fn save(
        &self,
        mut manifest: ModelManifest,
        payload: Vec<u8>,
    ) -> Result<Arc<ModelEntry>, RegistryError> {
        let name = manifest.name.clone();
        let model_err = |reason: String| RegistryError::Model {
            name: name.clone(),
            reason,
        };
        let mut next = self.next_version(&name);
        while self.version_path(&name, next).exists() {
            next += 1;
        }
        if manifest.version < next || self.version_path(&name, manifest.version).exists() {
            tracing::info!(model = %name, asked = manifest.version, version = next, "version taken; saving as the next one");
            manifest.version = next;
        }
        manifest
            .validate()
            .map_err(|e| model_err(format!("invalid manifest: {e}")))?;
        let detector =
            detector_from_parts(&manifest, &payload).map_err(|e| model_err(e.to_string()))?;
        let bundle = ModelBundle {
            manifest,
            payload,
            signature: Vec::new(),
        };
        let bytes = frame::encode_checked(&bundle).map_err(|e| model_err(e.to_string()))?;
        let path = self.version_path(&name, bundle.manifest.version);
        write_file_atomic(&self.dir, &path, &bytes)?;
        self.reserve(&name, bundle.manifest.version);
        self.record_history(bundle.manifest.clone());
        let publishable = crate::gate::publishable(&bundle.manifest);
        let entry = Arc::new(ModelEntry::new(bundle.manifest, Arc::from(detector)));
        // A version that failed its quality gate is kept in the history but
        // does not replace a serving version.
        if publishable || self.get(&name).is_none() {
            self.insert_arc(entry.clone());
        }
        Ok(entry)
    }

    fn insert_arc(&self, entry: Arc<ModelEntry>) {
        let pinned = self
            .pinned
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&entry.manifest.name)
            .copied();
        let mut map = self.models.write().unwrap_or_else(|e| e.into_inner());
        let replace = match pinned {
            Some(v) => v == entry.manifest.version,
            None => map
                .get(&entry.manifest.name)
                .is_none_or(|old| old.manifest.version <= entry.manifest.version),
        };
        if replace {
            map.insert(entry.manifest.name.clone(), entry);
        }
    }

    fn version_path(&self, name: &str, version: u64) -> PathBuf {
        self.dir.join(format!("{name}.v{version}.bundle"))
    }

    /// Every version of `name`, oldest first (empty for an unknown name).
    pub fn versions(&self, name: &str) -> Vec<ModelManifest> {
        self.history
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .map(|v| v.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The manifest of one version.
    pub fn manifest(&self, name: &str, version: u64) -> Option<ModelManifest> {
        self.history
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .and_then(|v| v.get(&version))
            .cloned()
    }

    /// Reads one version's manifest and payload from its file. Blocking.
    pub fn load_version(
        &self,
        name: &str,
        version: u64,
    ) -> Result<(ModelManifest, Vec<u8>), RegistryError> {
        let bundle = read_bundle(&self.version_path(name, version))?;
        if bundle.manifest.name != name || bundle.manifest.version != version {
            return Err(RegistryError::Model {
                name: name.to_string(),
                reason: format!(
                    "file of version {version} holds {} v{}",
                    bundle.manifest.name, bundle.manifest.version
                ),
            });
        }
        Ok((bundle.manifest, bundle.payload))
    }

    /// Makes `version` of `name` the one that serves, and keeps it serving
    /// over newer versions until pinned again. Blocking (builds the detector).
    pub fn serve_version(&self, name: &str, version: u64) -> Result<(), RegistryError> {
        let current = self.get(name);
        let entry = match current {
            Some(e) if e.manifest.version == version => e,
            _ => {
                let (manifest, payload) = self.load_version(name, version)?;
                let detector =
                    detector_from_parts(&manifest, &payload).map_err(|e| RegistryError::Model {
                        name: name.to_string(),
                        reason: e.to_string(),
                    })?;
                Arc::new(ModelEntry::new(manifest, Arc::from(detector)))
            }
        };
        self.pinned
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), version);
        self.models
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), entry);
        Ok(())
    }

    /// The serving version of the model called `name`.
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

    /// Every serving model, by name.
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

    /// Number of model names.
    pub fn len(&self) -> usize {
        self.models.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether no model is loaded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Writes `bytes` to `path` through a temporary file, fsync and rename, so a
/// crash leaves the old file or the new one, never a partial one.
fn write_file_atomic(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), RegistryError> {
    use std::io::Write;
    let io = |source| RegistryError::Io {
        path: path.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let tmp = path.with_extension("bundle.tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// `(name, version)` of a `{name}.v{version}.bundle` file name.
fn parse_version_file(path: &Path) -> Option<(String, u64)> {
    let stem = path.file_name()?.to_str()?.strip_suffix(".bundle")?;
    let (name, v) = stem.rsplit_once(".v")?;
    Some((name.to_string(), v.parse().ok()?))
}

fn read_bundle(path: &Path) -> Result<ModelBundle, RegistryError> {
    let bytes = std::fs::read(path).map_err(|source| RegistryError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    frame::decode(&bytes).map_err(|e| RegistryError::Model {
        name: path.display().to_string(),
        reason: e.to_string(),
    })
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

    #[test]
    fn every_version_is_kept_taken_versions_are_renumbered_and_pins_hold() {
        let dir = tempfile::tempdir().unwrap();
        let reg = ModelRegistry::open(dir.path()).unwrap();
        let (m1, p1) = train_default().unwrap();
        assert_eq!(m1.version, 1);
        // version 1 exists already: the save becomes version 2
        let e2 = reg.save(m1.clone(), p1.clone()).unwrap();
        assert_eq!(e2.manifest.version, 2);
        assert_eq!(reg.get(DEFAULT_MODEL).unwrap().manifest.version, 2);
        reg.serve_version(DEFAULT_MODEL, 1).unwrap();
        assert_eq!(reg.get(DEFAULT_MODEL).unwrap().manifest.version, 1);
        let e3 = reg.save(m1, p1).unwrap();
        assert_eq!(e3.manifest.version, 3);
        // pinned: the new version is kept but does not serve
        assert_eq!(reg.get(DEFAULT_MODEL).unwrap().manifest.version, 1);
        let versions: Vec<u64> = reg
            .versions(DEFAULT_MODEL)
            .iter()
            .map(|m| m.version)
            .collect();
        assert_eq!(versions, vec![1, 2, 3]);
        assert_eq!(reg.next_version(DEFAULT_MODEL), 4);
        let (m, _) = reg.load_version(DEFAULT_MODEL, 2).unwrap();
        assert_eq!(m.version, 2);
        // a restart reads the whole history back; the highest serves again
        let again = ModelRegistry::open(dir.path()).unwrap();
        assert_eq!(again.versions(DEFAULT_MODEL).len(), 3);
        assert_eq!(again.get(DEFAULT_MODEL).unwrap().manifest.version, 3);
        assert!(again.load_version(DEFAULT_MODEL, 9).is_err());
    }

    #[test]
    fn an_unreadable_newest_file_is_never_overwritten_and_an_older_version_serves() {
        let dir = tempfile::tempdir().unwrap();
        let reg = ModelRegistry::open(dir.path()).unwrap();
        let (m, p) = train_default().unwrap();
        reg.save(m.clone(), p.clone()).unwrap(); // v2
        let v2 = dir.path().join(format!("{DEFAULT_MODEL}.v2.bundle"));
        std::fs::write(&v2, b"damaged").unwrap();
        let again = ModelRegistry::open(dir.path()).unwrap();
        assert_eq!(again.get(DEFAULT_MODEL).unwrap().manifest.version, 1);
        assert_eq!(again.next_version(DEFAULT_MODEL), 3);
        assert_eq!(again.save(m, p).unwrap().manifest.version, 3);
        assert_eq!(std::fs::read(&v2).unwrap(), b"damaged");
    }

    #[test]
    fn a_version_that_failed_its_gate_is_kept_but_does_not_serve() {
        let dir = tempfile::tempdir().unwrap();
        let reg = ModelRegistry::open(dir.path()).unwrap();
        let (mut m, p) = train_default().unwrap();
        m.training.metrics.insert("gate_publishable".into(), 0.0);
        let e = reg.save(m, p).unwrap();
        assert_eq!(e.manifest.version, 2);
        assert_eq!(reg.get(DEFAULT_MODEL).unwrap().manifest.version, 1);
        assert_eq!(reg.versions(DEFAULT_MODEL).len(), 2);
    }
}
