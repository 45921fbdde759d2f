//! Model files on disk and the pre-trained models of `models/pretrained/`.
//!
//! A saved model is `{name}.manifest.json` (the common `ModelManifest`,
//! whose `payload_sha256` ties it to the payload) and `{name}.payload` (an
//! [`NnPayload`] or a postcard Isolation Forest). Neural models also get
//! `{name}.tflite` (batch 1) and `{name}.b{N}.tflite`, plain TFLite files for
//! other runtimes.
//!
//! [`build_pretrained`] trains the shipped models from the NAB series the
//! repository carries (MIT, `tests/data/nab`): an Isolation Forest and a dense
//! autoencoder over the online series features, and an LSTM autoencoder over
//! windows of the raw values, each on the rows before the first labelled
//! anomaly window. [`finetune_saved`] continues one of them on new rows and
//! saves version + 1 with its parent recorded.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use sad_common::wire::sha256_hex;
use sad_common::{ModelKind, ModelManifest, TrainingInfo};

use super::bundle::NnPayload;
use super::fit::{FitOptions, FittedNn, finetune, fit};
use super::train::{EpochReport, TrainConfig};
use super::window::{sliding_windows, step_scores};
use super::{NnError, NnResult};
use crate::detector::{Detector, fit_calibration};
use crate::eval::metrics::roc_auc;
use crate::features::{SERIES_FEATURE_NAMES, SeriesFeaturizer};
use crate::iforest::{Contamination, IsolationForestParams, MaxSamples};
use crate::scaler::fit_standard_scaler;

fn io(context: String) -> impl FnOnce(std::io::Error) -> NnError {
    move |e| NnError::Input(format!("{context}: {e}"))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Writes `{name}.manifest.json`, `{name}.payload` and any extra files into `dir`.
pub fn save(
    dir: &Path,
    manifest: &ModelManifest,
    payload: &[u8],
    extra: &[(String, Vec<u8>)],
) -> NnResult<()> {
    std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
    let name = &manifest.name;
    let json = serde_json::to_string_pretty(manifest)
        .map_err(|e| NnError::Decode(format!("manifest: {e}")))?;
    let write = |file: String, bytes: &[u8]| {
        let p = dir.join(&file);
        std::fs::write(&p, bytes).map_err(io(format!("write {}", p.display())))
    };
    write(
        format!("{name}.manifest.json"),
        format!("{json}\n").as_bytes(),
    )?;
    write(format!("{name}.payload"), payload)?;
    for (file, bytes) in extra {
        write(file.clone(), bytes)?;
    }
    Ok(())
}

/// Reads a saved model and checks the payload against the manifest's sha256 and length.
pub fn load(dir: &Path, name: &str) -> NnResult<(ModelManifest, Vec<u8>)> {
    let mp = dir.join(format!("{name}.manifest.json"));
    let text = std::fs::read_to_string(&mp).map_err(io(format!("read {}", mp.display())))?;
    let manifest: ModelManifest = serde_json::from_str(&text)
        .map_err(|e| NnError::Decode(format!("{}: {e}", mp.display())))?;
    let pp = dir.join(format!("{name}.payload"));
    let payload = std::fs::read(&pp).map_err(io(format!("read {}", pp.display())))?;
    if sha256_hex(&payload) != manifest.payload_sha256
        || payload.len() as u64 != manifest.payload_len
    {
        return Err(NnError::Decode(format!(
            "{} does not match its manifest's sha256 or length",
            pp.display()
        )));
    }
    Ok((manifest, payload))
}

/// Describes the training of a model for its manifest.
#[derive(Debug, Clone)]
pub struct TrainingRecord {
    /// Name of the model (a topic level: letters, digits, `_`, `-`).
    pub name: String,
    /// Version (≥ 1).
    pub version: u64,
    /// Version it was fine-tuned from.
    pub parent_version: Option<u64>,
    /// Feature names per row (per step).
    pub feature_names: Vec<String>,
    /// Training data description.
    pub data: String,
    /// Rows trained on.
    pub rows: u64,
    /// Metrics by name.
    pub metrics: BTreeMap<String, f64>,
    /// Free-text notes.
    pub notes: Option<String>,
}

/// `.tflite` side files of a model: file name and bytes.
pub type SideFiles = Vec<(String, Vec<u8>)>;

/// The manifest, payload and `.tflite` side files of a fitted neural model.
pub fn nn_files(
    fitted: &FittedNn,
    rec: &TrainingRecord,
) -> NnResult<(ModelManifest, Vec<u8>, SideFiles)> {
    let payload = fitted.payload().to_bytes()?;
    let d = &fitted.detector;
    let manifest = ModelManifest {
        name: rec.name.clone(),
        kind: fitted.arch.kind(),
        version: rec.version,
        parent_version: rec.parent_version,
        created_ms: now_ms(),
        feature_names: rec.feature_names.clone(),
        window: fitted.arch.window() as u32,
        scaler: Some(fitted.scaler.clone()),
        threshold: d.threshold(),
        calibration: *d.calibration(),
        training: TrainingInfo {
            data: rec.data.clone(),
            rows: rec.rows,
            metrics: rec.metrics.clone(),
        },
        payload_sha256: sha256_hex(&payload),
        payload_len: payload.len() as u64,
        restores: None,
        notes: rec.notes.clone(),
    };
    let extra = vec![
        (
            format!("{}.tflite", rec.name),
            fitted.exported.batch1.clone(),
        ),
        (
            format!("{}.b{}.tflite", rec.name, fitted.exported.batch),
            fitted.exported.batch_n.clone(),
        ),
    ];
    Ok((manifest, payload, extra))
}

/// Continues training the saved neural model `name` in `dir` on raw `rows`
/// and saves the result as `new_name` (may equal `name`) at version + 1,
/// recording its parent. Returns the new manifest.
pub fn finetune_saved(
    dir: &Path,
    name: &str,
    new_name: &str,
    rows: &[f64],
    data: &str,
    opts: &FitOptions,
    progress: &mut (dyn FnMut(&EpochReport) + Send),
) -> NnResult<ModelManifest> {
    let (parent, payload) = load(dir, name)?;
    if !matches!(
        parent.kind,
        ModelKind::Autoencoder | ModelKind::Lstm | ModelKind::Vae
    ) {
        return Err(NnError::Invalid(format!(
            "{name} is a {} model; only neural models are fine-tuned",
            parent.kind
        )));
    }
    let p = NnPayload::from_bytes(&payload)?;
    let scaler = parent
        .scaler
        .clone()
        .ok_or_else(|| NnError::Invalid(format!("{name} has no scaler")))?;
    let fitted = finetune(&p.arch, &scaler, &p.tflite_batch1, rows, opts, progress)?;
    let metrics = fitted.outcome.metrics();
    let rec = TrainingRecord {
        name: new_name.to_string(),
        version: parent.version + 1,
        parent_version: Some(parent.version),
        feature_names: parent.feature_names.clone(),
        data: data.to_string(),
        rows: (rows.len() / p.arch.n_features()) as u64,
        metrics,
        notes: Some(format!(
            "fine-tuned from {name} v{} (lr {}, {} epochs max)",
            parent.version, opts.train.learning_rate, opts.train.epochs
        )),
    };
    let (manifest, payload, extra) = nn_files(&fitted, &rec)?;
    save(dir, &manifest, &payload, &extra)?;
    Ok(manifest)
}

/// The NAB series the pre-trained models learn from, relative to the NAB folder.
pub const PRETRAIN_SERIES: &str = "realKnownCause/machine_temperature_system_failure.csv";

/// Window of the series featuriser used by the pre-trained vector models.
pub const FEATURE_WINDOW: usize = 32;

/// Window of the pre-trained LSTM autoencoder.
pub const LSTM_WINDOW: usize = 32;

/// Trains and saves the pre-trained Isolation Forest, dense autoencoder and
/// LSTM autoencoder from `nab_dir` (a NAB folder with `data/` and
/// `labels/combined_windows.json`) into `out`. Returns their manifests.
pub fn build_pretrained(
    nab_dir: &Path,
    out: &Path,
    progress: &mut (dyn FnMut(&str, &EpochReport) + Send),
) -> NnResult<Vec<ModelManifest>> {
    let corpus =
        crate::data::load_nab_corpus(nab_dir).map_err(|e| NnError::Input(e.to_string()))?;
    let series = corpus
        .series
        .iter()
        .find(|s| s.name == PRETRAIN_SERIES)
        .ok_or_else(|| NnError::Input(format!("{PRETRAIN_SERIES} not in {}", nab_dir.display())))?;
    let v = &series.values;
    let labels: Vec<bool> = (0..v.len())
        .map(|i| series.windows.iter().any(|&(a, b)| i >= a && i <= b))
        .collect();
    let train = series.windows.first().map(|w| w.0).unwrap_or(v.len());
    if train < 2 * LSTM_WINDOW {
        return Err(NnError::Input(
            "too few rows before the first anomaly window".into(),
        ));
    }
    let data = format!(
        "NAB (MIT) {PRETRAIN_SERIES}, rows 0..{train} (before the first labelled anomaly window)"
    );
    let names: Vec<String> = SERIES_FEATURE_NAMES.iter().map(|s| s.to_string()).collect();
    let d = names.len();
    let feats = SeriesFeaturizer::featurize(FEATURE_WINDOW, v);
    let mut manifests = Vec::new();
    let base_metrics = |auc: f64| {
        let mut m = BTreeMap::new();
        m.insert("roc_auc_series".to_string(), auc);
        m
    };

    // Isolation Forest over the series features.
    let scaler = fit_standard_scaler(&feats[..train * d], d)?;
    let forest = IsolationForestParams {
        n_estimators: 100,
        max_samples: MaxSamples::Count(256),
        contamination: Contamination::Fraction(0.01),
        max_features: 1.0,
        seed: 0,
    }
    .fit(&scaler.transform(&feats[..train * d]), d)?;
    let mut raw = Vec::new();
    forest.raw_score_batch(&scaler.transform(&feats), &mut raw)?;
    let auc = roc_auc(&raw, &labels)?;
    let payload = forest.to_bytes();
    let mut train_raw = Vec::new();
    forest.raw_score_batch(&scaler.transform(&feats[..train * d]), &mut train_raw)?;
    let calibration = fit_calibration(&train_raw, 0.01)?;
    let manifest = ModelManifest {
        name: "iforest_nab".into(),
        kind: ModelKind::IsolationForest,
        version: 1,
        parent_version: None,
        created_ms: now_ms(),
        feature_names: names.clone(),
        window: FEATURE_WINDOW as u32,
        scaler: Some(scaler),
        threshold: 0.5,
        calibration,
        training: TrainingInfo {
            data: data.clone(),
            rows: train as u64,
            metrics: base_metrics(auc),
        },
        payload_sha256: sha256_hex(&payload),
        payload_len: payload.len() as u64,
        restores: None,
        notes: Some(format!(
            "series features (window {FEATURE_WINDOW}) of one NAB series; 100 trees, 256 samples, contamination 0.01"
        )),
    };
    save(out, &manifest, &payload, &[])?;
    manifests.push(manifest);

    let opts = |epochs: usize| FitOptions {
        train: TrainConfig {
            epochs,
            batch_size: 64,
            learning_rate: 2e-3,
            patience: 5,
            seed: 0,
            ..TrainConfig::default()
        },
        batch: 64,
        contamination: 0.01,
        window_stride: 1,
        max_samples: 0,
    };

    // Dense autoencoder over the same features.
    let arch = super::experiments::NnKind::Dense.arch(d, 1);
    let fitted = fit(&arch, &feats[..train * d], &opts(60), &mut |r| {
        progress("dense_ae_nab", r)
    })?;
    let mut raw = Vec::new();
    fitted.detector.raw_score_batch(&feats, &mut raw)?;
    let rec = TrainingRecord {
        name: "dense_ae_nab".into(),
        version: 1,
        parent_version: None,
        feature_names: names.clone(),
        data: data.clone(),
        rows: train as u64,
        metrics: base_metrics(roc_auc(&raw, &labels)?),
        notes: Some(format!(
            "{arch:?}; series features, window {FEATURE_WINDOW}"
        )),
    };
    let (m, p, extra) = nn_files(&fitted, &rec)?;
    save(out, &m, &p, &extra)?;
    manifests.push(m);

    // LSTM autoencoder over windows of the raw values.
    let arch = super::experiments::NnKind::Lstm.arch(1, LSTM_WINDOW);
    let fitted = fit(&arch, &v[..train], &opts(30), &mut |r| {
        progress("lstm_ae_nab", r)
    })?;
    let (windows, _) = sliding_windows(v, 1, LSTM_WINDOW, 1)?;
    let (raw, _) = fitted.detector.score_windows(&windows)?;
    let steps = step_scores(&raw, v.len(), LSTM_WINDOW);
    let rec = TrainingRecord {
        name: "lstm_ae_nab".into(),
        version: 1,
        parent_version: None,
        feature_names: vec!["value".into()],
        data,
        rows: train as u64,
        metrics: base_metrics(roc_auc(&steps, &labels)?),
        notes: Some(format!("{arch:?}; raw values")),
    };
    let (m, p, extra) = nn_files(&fitted, &rec)?;
    save(out, &m, &p, &extra)?;
    manifests.push(m);
    Ok(manifests)
}
