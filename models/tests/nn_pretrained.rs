//! Saved neural models: bundle files, fine-tuning into a new version, and
//! the shipped models of `models/pretrained/`.
#![cfg(feature = "train")]

use std::collections::BTreeMap;
use std::path::PathBuf;

use sad_common::ModelKind;
use sad_models::Detector;
use sad_models::iforest::IsolationForest;
use sad_models::nn::bundle::NnPayload;
use sad_models::nn::fit::{FitOptions, fit};
use sad_models::nn::pretrained::{self, TrainingRecord};
use sad_models::nn::train::TrainConfig;
use sad_models::nn::{Architecture, NnDetector};

fn rows(n: usize) -> Vec<f64> {
    (0..n)
        .flat_map(|i| {
            let t = (i as f64 * 0.37).sin();
            [t, 2.0 * t + 1.0, t * t]
        })
        .collect()
}

fn opts(epochs: usize, lr: f64) -> FitOptions {
    FitOptions {
        train: TrainConfig {
            epochs,
            learning_rate: lr,
            batch_size: 32,
            ..TrainConfig::default()
        },
        batch: 8,
        contamination: 0.05,
        ..FitOptions::default()
    }
}

#[test]
fn a_finetuned_model_is_a_new_version_that_names_its_parent() {
    let dir = tempfile::tempdir().unwrap();
    let arch = Architecture::Dense {
        n_features: 3,
        hidden: vec![6],
        latent: 2,
    };
    let fitted = fit(&arch, &rows(200), &opts(5, 1e-2), &mut |_| {}).unwrap();
    let rec = TrainingRecord {
        name: "toy".into(),
        version: 1,
        parent_version: None,
        feature_names: vec!["a".into(), "b".into(), "c".into()],
        data: "synthetic".into(),
        rows: 200,
        metrics: BTreeMap::new(),
        notes: None,
    };
    let (m, p, extra) = pretrained::nn_files(&fitted, &rec).unwrap();
    pretrained::save(dir.path(), &m, &p, &extra).unwrap();
    assert!(dir.path().join("toy.tflite").is_file());
    assert!(dir.path().join("toy.b8.tflite").is_file());

    let child = pretrained::finetune_saved(
        dir.path(),
        "toy",
        "toy",
        &rows(100),
        "more synthetic",
        &opts(2, 1e-4),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(child.version, 2);
    assert_eq!(child.parent_version, Some(1));
    assert_eq!(child.scaler, m.scaler);
    let (reloaded, payload) = pretrained::load(dir.path(), "toy").unwrap();
    assert_eq!(reloaded, child);
    assert_eq!(NnPayload::from_bytes(&payload).unwrap().arch, arch);

    // a payload that does not match its manifest is refused
    std::fs::write(dir.path().join("toy.payload"), b"tampered").unwrap();
    assert!(pretrained::load(dir.path(), "toy").is_err());
}

fn shipped() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("pretrained")
}

#[test]
fn every_shipped_model_loads_and_flags_an_outlier() {
    for name in ["iforest_nab", "dense_ae_nab", "lstm_ae_nab"] {
        let (m, payload) = pretrained::load(&shipped(), name).unwrap();
        assert!(
            m.training.data.contains("NAB"),
            "{name}: {}",
            m.training.data
        );
        assert!(!m.training.data.contains("SKAB"));
        assert!(m.training.metrics.contains_key("roc_auc_series"));
        let scaler = m.scaler.clone().unwrap();
        let det: Box<dyn Detector> = match m.kind {
            ModelKind::IsolationForest => {
                // the forest was fitted on scaled features
                Box::new(IsolationForest::from_bytes(&payload).unwrap())
            }
            _ => {
                let p = NnPayload::from_bytes(&payload).unwrap();
                assert_eq!(p.arch.window() as u32, m.window);
                Box::new(
                    NnDetector::load(
                        p.arch,
                        scaler.clone(),
                        m.calibration,
                        m.threshold,
                        &p.tflite_batch1,
                        Some(&p.tflite_batch_n),
                    )
                    .unwrap(),
                )
            }
        };
        let f = m.feature_names.len();
        let w = if m.kind == ModelKind::Lstm {
            m.window as usize
        } else {
            1
        };
        let normal: Vec<f64> = (0..w * f).map(|i| scaler.mean[i % f]).collect();
        let outlier: Vec<f64> = (0..w * f)
            .map(|i| {
                scaler.mean[i % f]
                    + 12.0 * scaler.scale[i % f] * if i % 2 == 0 { 1.0 } else { -1.0 }
            })
            .collect();
        let prep = |x: &[f64]| {
            if m.kind == ModelKind::IsolationForest {
                scaler.transform(x)
            } else {
                x.to_vec()
            }
        };
        let mut s = Vec::new();
        det.raw_score_batch(&prep(&normal), &mut s).unwrap();
        let mut o = Vec::new();
        det.raw_score_batch(&prep(&outlier), &mut o).unwrap();
        assert!(o[0] > s[0], "{name}: outlier {} vs normal {}", o[0], s[0]);
        assert!(det.finish(o[0]).is_anomaly, "{name}");
    }
}
