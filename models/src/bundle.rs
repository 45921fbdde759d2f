//! Model bundles: a manifest plus a payload becomes a running [`Detector`].
//!
//! The manifest (`sad_common::ModelManifest`) is the source of truth for what
//! travels with a model: the kind decides how the payload is parsed, the
//! scaler is applied to every row before the detector sees it, and the
//! calibration and threshold replace whatever the payload carries, so an
//! operator can change a threshold by publishing a new manifest.
//!
//! | kind | payload |
//! |---|---|
//! | `isolation_forest` | [`IsolationForest::to_bytes`] (postcard) |
//! | `half_space_trees` | [`HalfSpaceTrees::to_bytes`] (postcard, with its learnt state) |
//! | `ewma` | [`EwmaZScore::to_bytes`] (postcard, with its learnt state) |
//! | `autoencoder`, `lstm`, `vae` | `nn::bundle::NnPayload`: architecture plus batch-1 and batch-N `.tflite` files |

use std::collections::BTreeMap;

use sad_common::wire::{ModelManifest, TrainingInfo, sha256_hex};
use sad_common::{Calibration, ModelKind, StandardScaler};

use crate::detector::{Detector, check_batch, check_row};
use crate::error::{ModelError, Result};
use crate::iforest::IsolationForest;
use crate::streaming::{EwmaZScore, HalfSpaceTrees};

/// Builds the detector a bundle describes, after checking the payload hash
/// and that the payload agrees with the manifest (kind, feature count).
pub fn detector_from_parts(manifest: &ModelManifest, payload: &[u8]) -> Result<Box<dyn Detector>> {
    if sha256_hex(payload) != manifest.payload_sha256
        || payload.len() as u64 != manifest.payload_len
    {
        return Err(ModelError::Decode(
            "payload does not match the manifest's sha256 and length".into(),
        ));
    }
    if !manifest.calibration.is_valid() || !(0.0..=1.0).contains(&manifest.threshold) {
        return Err(ModelError::Invalid(
            "manifest calibration or threshold is out of range".into(),
        ));
    }
    let n = manifest.feature_names.len();
    let inner: Box<dyn Detector> = match manifest.kind {
        ModelKind::IsolationForest => Box::new(
            IsolationForest::from_bytes(payload)?
                .with_calibration(manifest.calibration)
                .with_threshold(manifest.threshold),
        ),
        ModelKind::HalfSpaceTrees => {
            Box::new(HalfSpaceTrees::from_bytes(payload)?.with_threshold(manifest.threshold))
        }
        ModelKind::Ewma => {
            Box::new(EwmaZScore::from_bytes(payload)?.with_threshold(manifest.threshold))
        }
        other => return neural_detector(other, manifest, payload),
    };
    if inner.n_features() != n {
        return Err(ModelError::Dimension {
            expected: n,
            got: inner.n_features(),
        });
    }
    Ok(match &manifest.scaler {
        Some(scaler) => {
            if !scaler.is_valid() || scaler.n_features() != n {
                return Err(ModelError::Invalid(
                    "manifest scaler does not fit the features".into(),
                ));
            }
            Box::new(Scaled {
                scaler: scaler.clone(),
                inner,
            })
        }
        None => inner,
    })
}

/// Neural kinds: the payload holds the architecture and the batch-1 and
/// batch-N `.tflite` files; the manifest's scaler, calibration and threshold
/// go into the detector (which scales rows itself).
#[cfg(feature = "tflite")]
fn neural_detector(
    kind: ModelKind,
    manifest: &ModelManifest,
    payload: &[u8],
) -> Result<Box<dyn Detector>> {
    use crate::nn::NnDetector;
    use crate::nn::bundle::NnPayload;
    let p = NnPayload::from_bytes(payload)?;
    if p.arch.kind() != kind {
        return Err(ModelError::Invalid(format!(
            "manifest says {kind} but the payload holds a {}",
            p.arch.kind()
        )));
    }
    let scaler = manifest
        .scaler
        .clone()
        .ok_or_else(|| ModelError::Invalid(format!("a {kind} manifest needs its scaler")))?;
    let det = NnDetector::load(
        p.arch,
        scaler,
        manifest.calibration,
        manifest.threshold,
        &p.tflite_batch1,
        Some(&p.tflite_batch_n),
    )?;
    Ok(Box::new(det))
}

/// Without the `tflite` feature neural bundles cannot be run.
#[cfg(not(feature = "tflite"))]
fn neural_detector(kind: ModelKind, _: &ModelManifest, _: &[u8]) -> Result<Box<dyn Detector>> {
    Err(ModelError::Invalid(format!(
        "model kind {kind} needs the tflite feature of sad-models"
    )))
}

/// Everything but the payload hash that a manifest needs; see [`manifest_for`].
#[derive(Debug, Clone)]
pub struct ManifestSpec {
    /// Model name (a topic-safe id).
    pub name: String,
    /// Version (≥ 1).
    pub version: u64,
    /// Version this one derives from, if any.
    pub parent_version: Option<u64>,
    /// Feature names in order.
    pub feature_names: Vec<String>,
    /// Window length in events (1 = none).
    pub window: u32,
    /// Scaler applied before the model.
    pub scaler: Option<StandardScaler>,
    /// Description of the training data.
    pub training_data: String,
    /// Rows trained on.
    pub training_rows: u64,
    /// Evaluation metrics by name.
    pub metrics: BTreeMap<String, f64>,
    /// Creation time in milliseconds since the Unix epoch.
    pub created_ms: i64,
}

/// A manifest for `detector` with `payload`, taking the detector's kind,
/// calibration and threshold.
pub fn manifest_for(spec: ManifestSpec, detector: &dyn Detector, payload: &[u8]) -> ModelManifest {
    ModelManifest {
        name: spec.name,
        kind: detector.kind(),
        version: spec.version,
        parent_version: spec.parent_version,
        created_ms: spec.created_ms,
        feature_names: spec.feature_names,
        window: spec.window,
        scaler: spec.scaler,
        threshold: detector.threshold(),
        calibration: *detector.calibration(),
        training: TrainingInfo {
            data: spec.training_data,
            rows: spec.training_rows,
            metrics: spec.metrics,
        },
        payload_sha256: sha256_hex(payload),
        payload_len: payload.len() as u64,
        restores: None,
        notes: None,
    }
}

/// An Isolation Forest as a manifest and payload ready to sign or install.
pub fn iforest_bundle(spec: ManifestSpec, forest: &IsolationForest) -> (ModelManifest, Vec<u8>) {
    let payload = forest.to_bytes();
    (manifest_for(spec, forest, &payload), payload)
}

/// A detector that standardises rows before passing them on.
struct Scaled {
    scaler: StandardScaler,
    inner: Box<dyn Detector>,
}

impl Detector for Scaled {
    fn kind(&self) -> ModelKind {
        self.inner.kind()
    }

    fn n_features(&self) -> usize {
        self.inner.n_features()
    }

    fn raw_score_batch(&self, rows: &[f64], out: &mut Vec<f64>) -> Result<()> {
        check_batch(rows, self.n_features())?;
        self.inner
            .raw_score_batch(&self.scaler.transform(rows), out)
    }

    fn raw_score(&self, row: &[f64]) -> Result<f64> {
        check_row(row, self.n_features())?;
        let mut r = row.to_vec();
        self.scaler.transform_in_place(&mut r);
        self.inner.raw_score(&r)
    }

    fn contributions(&self, row: &[f64]) -> Result<Vec<f64>> {
        check_row(row, self.n_features())?;
        let mut r = row.to_vec();
        self.scaler.transform_in_place(&mut r);
        self.inner.contributions(&r)
    }

    fn calibration(&self) -> &Calibration {
        self.inner.calibration()
    }

    fn threshold(&self) -> f64 {
        self.inner.threshold()
    }

    fn learn(&mut self, row: &[f64]) -> Result<()> {
        check_row(row, self.n_features())?;
        let mut r = row.to_vec();
        self.scaler.transform_in_place(&mut r);
        self.inner.learn(&r)
    }

    fn is_streaming(&self) -> bool {
        self.inner.is_streaming()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iforest::{Contamination, IsolationForestParams};
    use crate::scaler::fit_standard_scaler;
    use crate::streaming::EwmaParams;

    fn spec(n: usize) -> ManifestSpec {
        ManifestSpec {
            name: "test".into(),
            version: 3,
            parent_version: Some(2),
            feature_names: (0..n).map(|i| format!("f{i}")).collect(),
            window: 1,
            scaler: None,
            training_data: "generated".into(),
            training_rows: 500,
            metrics: BTreeMap::new(),
            created_ms: 0,
        }
    }

    fn rows(n: usize) -> Vec<f64> {
        (0..n)
            .flat_map(|i| [(i % 17) as f64 * 0.1, (i % 5) as f64 * 100.0])
            .collect()
    }

    fn forest() -> IsolationForest {
        let params = IsolationForestParams {
            n_estimators: 20,
            contamination: Contamination::Fraction(0.05),
            ..IsolationForestParams::default()
        };
        params.fit(&rows(500), 2).unwrap()
    }

    #[test]
    fn a_forest_bundle_scores_like_the_forest_it_came_from() {
        let f = forest();
        let (manifest, payload) = iforest_bundle(spec(2), &f);
        manifest.validate().unwrap();
        let d = detector_from_parts(&manifest, &payload).unwrap();
        let data = rows(50);
        assert_eq!(d.score_batch(&data).unwrap(), f.score_batch(&data).unwrap());
    }

    #[test]
    fn the_manifest_threshold_overrides_the_payload() {
        let f = forest();
        let (mut manifest, payload) = iforest_bundle(spec(2), &f);
        manifest.threshold = 0.99;
        let d = detector_from_parts(&manifest, &payload).unwrap();
        assert_eq!(d.threshold(), 0.99);
    }

    #[test]
    fn a_tampered_payload_or_wrong_feature_count_is_refused() {
        let f = forest();
        let (manifest, mut payload) = iforest_bundle(spec(2), &f);
        payload[10] ^= 1;
        assert!(detector_from_parts(&manifest, &payload).is_err());
        let (manifest, payload) = iforest_bundle(spec(3), &f);
        assert!(matches!(
            detector_from_parts(&manifest, &payload),
            Err(ModelError::Dimension {
                expected: 3,
                got: 2
            })
        ));
    }

    #[test]
    fn a_scaler_in_the_manifest_is_applied_before_scoring() {
        let data = rows(500);
        let scaler = fit_standard_scaler(&data, 2).unwrap();
        let scaled = scaler.transform(&data);
        let f = IsolationForestParams {
            n_estimators: 20,
            ..IsolationForestParams::default()
        }
        .fit(&scaled, 2)
        .unwrap();
        let mut s = spec(2);
        s.scaler = Some(scaler);
        let (manifest, payload) = iforest_bundle(s, &f);
        let d = detector_from_parts(&manifest, &payload).unwrap();
        let probe = rows(20);
        let direct = f
            .score_batch(&manifest.scaler.as_ref().unwrap().transform(&probe))
            .unwrap();
        assert_eq!(d.score_batch(&probe).unwrap(), direct);
    }

    #[cfg(feature = "tflite")]
    #[test]
    fn the_pretrained_neural_bundles_load_and_score() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pretrained");
        for name in ["dense_ae_nab", "lstm_ae_nab"] {
            let text = std::fs::read_to_string(dir.join(format!("{name}.manifest.json"))).unwrap();
            let manifest: ModelManifest = serde_json::from_str(&text).unwrap();
            let payload = std::fs::read(dir.join(format!("{name}.payload"))).unwrap();
            let d = detector_from_parts(&manifest, &payload).unwrap();
            assert_eq!(d.kind(), manifest.kind);
            // A windowed model scores whole windows of `manifest.window` steps.
            let rows = vec![0.5; d.n_features() * manifest.window.max(1) as usize];
            let scores = d.score_batch(&rows).unwrap();
            assert!(!scores.is_empty(), "{name}: no score");
            assert!(
                scores.iter().all(|s| (0.0..=1.0).contains(&s.score)),
                "{name}: {scores:?}"
            );
            let mut bad = payload.clone();
            bad.truncate(bad.len() / 2);
            assert!(
                detector_from_parts(&manifest, &bad).is_err(),
                "{name}: truncated payload loaded"
            );
        }
    }

    #[test]
    fn streaming_state_travels_in_the_payload() {
        let mut e = EwmaZScore::new(EwmaParams::default(), 2).unwrap();
        for r in rows(100).chunks(2) {
            e.learn(r).unwrap();
        }
        let payload = e.to_bytes();
        let manifest = manifest_for(spec(2), &e, &payload);
        let d = detector_from_parts(&manifest, &payload).unwrap();
        let probe = [50.0, 1e4];
        assert_eq!(d.score(&probe).unwrap(), e.score(&probe).unwrap());
    }
}
