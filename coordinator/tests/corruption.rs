//! Damaged files on the coordinator's disk: the sled alert store and the
//! model registry's `{name}.v{version}.bundle` files are truncated, zeroed
//! and bit-flipped, then opened. Nothing may panic, the damage is named in
//! an error or a log line, and what can be read is kept.

use std::path::{Path, PathBuf};

use sad_common::wire::Severity;
use sad_common::{Alert, ModelBundle, ModelKind, frame};
use sad_coordinator::api::registry::ModelRegistry;
use sad_coordinator::store::{AlertQuery, AlertStore, StoreConfig};
use sad_models::bundle::{ManifestSpec, iforest_bundle};
use sad_models::iforest::IsolationForestParams;
use sad_tests::damage::{copy_dir, damages, files};

const N: u64 = 100;

fn alert(seq: u64) -> Alert {
    Alert {
        agent_id: "edge-1".into(),
        seq,
        series: format!("s{seq}"),
        ts_ms: 1_700_000_000_000 + seq as i64,
        model: "iforest".into(),
        model_kind: ModelKind::IsolationForest,
        model_version: 1,
        score: 0.9,
        raw_score: 0.7,
        threshold: 0.5,
        severity: Severity::Warning,
        episode_id: seq,
        explanation: vec![],
        values: vec![1.0, 2.0],
        label: None,
    }
}

#[test]
fn a_damaged_alert_store_opens_and_keeps_every_alert_sled_can_read() {
    let base = tempfile::tempdir().unwrap();
    let template = base.path().join("template");
    {
        let s = AlertStore::open(&StoreConfig::at(&template)).unwrap();
        let alerts: Vec<Alert> = (1..=N).map(alert).collect();
        assert_eq!(s.insert_batch(&alerts).unwrap().new, N as usize);
    }
    let mut case = 0;
    let mut moved_aside = 0;
    for f in files(&template) {
        let rel = f.strip_prefix(&template).unwrap().to_path_buf();
        let len = std::fs::metadata(&f).unwrap().len() as usize;
        for (what, damage) in damages(len) {
            case += 1;
            let parent = base.path().join(format!("case{case}"));
            let dir = parent.join("store");
            copy_dir(&template, &dir);
            let mut b = std::fs::read(dir.join(&rel)).unwrap();
            damage(&mut b);
            std::fs::write(dir.join(&rel), &b).unwrap();
            let label = format!("{} {what}", rel.display());

            let s = AlertStore::open(&StoreConfig::at(&dir))
                .unwrap_or_else(|e| panic!("{label}: open failed: {e}"));
            let all = s
                .query(&AlertQuery {
                    limit: Some(10_000),
                    ..Default::default()
                })
                .unwrap_or_else(|e| panic!("{label}: query failed: {e}"));
            for a in &all {
                assert_eq!(a.alert, alert(a.alert.seq), "{label}: an alert changed");
            }
            assert_eq!(all.len() as u64, s.len(), "{label}");
            // The store keeps working: a new alert is stored, a kept one is a duplicate.
            let out = s.insert_batch(&[alert(N + 1)]).unwrap();
            assert_eq!(out.new, 1, "{label}");
            if let Some(kept) = all.first() {
                assert!(s.set_feedback(&kept.alert.alert_id(), true).unwrap());
            }
            let aside: Vec<PathBuf> = std::fs::read_dir(&parent)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.to_string_lossy().contains("store.corrupt-"))
                .collect();
            if !aside.is_empty() {
                moved_aside += 1;
                assert!(aside[0].join(&rel).exists(), "{label}: damaged files kept");
                if rel == Path::new("conf") {
                    assert_eq!(all.len() as u64, N, "{label}: a bad conf loses nothing");
                }
            }
        }
    }
    println!("{case} damaged stores opened, {moved_aside} moved aside and salvaged");
    assert!(moved_aside > 0);
}

fn bundle_file(dir: &Path, name: &str, version: u64, seed: u64) -> PathBuf {
    let rows: Vec<f64> = (0..64 * 2)
        .map(|i| ((i * 37 + seed as usize) % 23) as f64)
        .collect();
    let forest = IsolationForestParams {
        n_estimators: 10,
        seed,
        ..Default::default()
    }
    .fit(&rows, 2)
    .unwrap();
    let (manifest, payload) = iforest_bundle(
        ManifestSpec {
            name: name.into(),
            version,
            parent_version: None,
            feature_names: vec!["a".into(), "b".into()],
            window: 1,
            scaler: None,
            training_data: "test".into(),
            training_rows: 64,
            metrics: Default::default(),
            created_ms: 1_700_000_000_000 + version as i64,
        },
        &forest,
    );
    let bytes = frame::encode(&ModelBundle {
        manifest,
        payload,
        signature: Vec::new(),
    })
    .unwrap();
    let path = dir.join(format!("{name}.v{version}.bundle"));
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn a_damaged_registry_file_is_skipped_and_every_other_model_loads() {
    let base = tempfile::tempdir().unwrap();
    let template = base.path().join("template");
    std::fs::create_dir_all(&template).unwrap();
    bundle_file(&template, "alpha", 1, 1);
    let bad = bundle_file(&template, "beta", 1, 2);
    bundle_file(&template, "gamma", 3, 3);
    let len = std::fs::metadata(&bad).unwrap().len() as usize;
    let mut skipped = 0;
    for (i, (what, damage)) in damages(len).into_iter().enumerate() {
        let dir = base.path().join(format!("case{i}"));
        copy_dir(&template, &dir);
        let path = dir.join("beta.v1.bundle");
        let mut b = std::fs::read(&path).unwrap();
        damage(&mut b);
        std::fs::write(&path, &b).unwrap();
        let reg = ModelRegistry::open(&dir).unwrap_or_else(|e| panic!("beta {what}: {e}"));
        assert_eq!(
            reg.get("alpha").map(|m| m.manifest.version),
            Some(1),
            "{what}"
        );
        assert_eq!(
            reg.get("gamma").map(|m| m.manifest.version),
            Some(3),
            "{what}"
        );
        match reg.get("beta") {
            Some(m) => {
                m.detector.score(&[1.0, 2.0]).unwrap();
            }
            None => skipped += 1,
        }
    }
    assert!(
        skipped >= 9,
        "zero-length, truncated and payload flips are refused ({skipped})"
    );
}
