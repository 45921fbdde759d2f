//! Shared helpers of the fuzz targets: model templates and a panic hook
//! that lets the code's own `catch_unwind` guards work under libFuzzer.
//!
//! libfuzzer-sys installs a panic hook that aborts at once, so a panic that
//! production code catches on purpose (tract behind `catch_unwind`) would be
//! reported as a crash. [`quiet_panics`] replaces it with a silent hook: a
//! caught panic is then harmless, and an uncaught one still unwinds to
//! libfuzzer-sys, which aborts and records the input.

use std::sync::{Once, OnceLock};

use sad_common::wire::sha256_hex;
use sad_common::ModelManifest;
use sad_models::Detector;
use sad_models::bundle::{ManifestSpec, iforest_bundle, manifest_for};
use sad_models::iforest::IsolationForestParams;
use sad_models::streaming::{EwmaParams, EwmaZScore, HalfSpaceTrees, HstParams};

/// Replaces libfuzzer-sys's aborting panic hook with a silent one (once).
pub fn quiet_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| std::panic::set_hook(Box::new(|_| {})));
}

/// A valid manifest and payload of one model kind.
pub struct Template {
    /// The manifest (sha256 and length of `payload`).
    pub manifest: ModelManifest,
    /// The payload.
    pub payload: Vec<u8>,
}

fn spec(name: &str, n: usize) -> ManifestSpec {
    ManifestSpec {
        name: name.into(),
        version: 1,
        parent_version: None,
        feature_names: (0..n).map(|i| format!("f{i}")).collect(),
        window: 1,
        scaler: None,
        training_data: "fuzz".into(),
        training_rows: 64,
        metrics: Default::default(),
        created_ms: 0,
    }
}

fn rows(n_rows: usize, n: usize) -> Vec<f64> {
    (0..n_rows * n)
        .map(|i| ((i * 7919) % 101) as f64 / 10.0)
        .collect()
}

/// One template per model kind: a small forest, Half-Space Trees and EWMA
/// made here, and the shipped dense and LSTM autoencoders.
pub fn templates() -> &'static [Template] {
    static T: OnceLock<Vec<Template>> = OnceLock::new();
    T.get_or_init(|| {
        let mut out = Vec::new();
        let forest = IsolationForestParams {
            n_estimators: 8,
            ..Default::default()
        }
        .fit(&rows(64, 3), 3)
        .expect("fit forest");
        let (manifest, payload) = iforest_bundle(spec("forest", 3), &forest);
        out.push(Template { manifest, payload });

        let mut hst = HalfSpaceTrees::new(HstParams::default(), 3).expect("hst");
        for r in rows(64, 3).chunks(3) {
            let _ = hst.learn(r);
        }
        let payload = hst.to_bytes();
        let manifest = manifest_for(spec("hst", 3), &hst, &payload);
        out.push(Template { manifest, payload });

        let mut ewma = EwmaZScore::new(EwmaParams::default(), 3).expect("ewma");
        for r in rows(64, 3).chunks(3) {
            let _ = ewma.learn(r);
        }
        let payload = ewma.to_bytes();
        let manifest = manifest_for(spec("ewma", 3), &ewma, &payload);
        out.push(Template { manifest, payload });

        for (m, p) in [
            (
                &include_bytes!("../../models/pretrained/dense_ae_nab.manifest.json")[..],
                &include_bytes!("../../models/pretrained/dense_ae_nab.payload")[..],
            ),
            (
                &include_bytes!("../../models/pretrained/lstm_ae_nab.manifest.json")[..],
                &include_bytes!("../../models/pretrained/lstm_ae_nab.payload")[..],
            ),
        ] {
            let manifest: ModelManifest = serde_json::from_slice(m).expect("pretrained manifest");
            out.push(Template {
                manifest,
                payload: p.to_vec(),
            });
        }
        out
    })
}

/// `manifest` with its payload hash and length set for `payload`.
pub fn fit_manifest(manifest: &ModelManifest, payload: &[u8]) -> ModelManifest {
    let mut m = manifest.clone();
    m.payload_sha256 = sha256_hex(payload);
    m.payload_len = payload.len() as u64;
    m
}

/// Builds the detector as the agent does and, if that works, scores and
/// explains a few rows (good, extreme and non-finite): nothing may panic
/// outside the model library's own guards.
pub fn build_and_score(manifest: &ModelManifest, payload: &[u8]) {
    let Ok(mut det) = sad_models::bundle::detector_from_parts(manifest, payload) else {
        return;
    };
    let n = det.n_features();
    if n == 0 || n > 4096 {
        return;
    }
    let window = manifest.window.max(1) as usize;
    let mut batch = Vec::new();
    for v in [0.0, 1.0, -3.5, 1e6, f64::MAX, f64::NAN] {
        let row = vec![v; n];
        let _ = det.score(&row);
        let _ = det.explain(&row, 3);
        if det.is_streaming() {
            let _ = det.update_and_score(&row);
        }
        batch.extend_from_slice(&row);
    }
    let _ = det.score_batch(&batch);
    let _ = det.score_batch(&batch[..n * window.min(6)]);
}
