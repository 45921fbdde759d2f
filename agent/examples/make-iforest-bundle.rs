//! Writes an unsigned Isolation Forest bundle (manifest JSON + payload) for
//! `anomaly-agent model install`: 100 trees on 8 standard-normal-ish features.
//!
//! `make-iforest-bundle MANIFEST.json PAYLOAD.bin [FEATURES]`

use rand::{Rng, SeedableRng};
use sad_models::bundle::{ManifestSpec, iforest_bundle};
use sad_models::iforest::IsolationForestParams;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(
        args.len() >= 3,
        "usage: make-iforest-bundle MANIFEST.json PAYLOAD.bin [FEATURES]"
    );
    let features: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(8);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let rows: Vec<f64> = (0..10_000 * features)
        .map(|_| (0..4).map(|_| rng.r#gen::<f64>()).sum::<f64>() - 2.0)
        .collect();
    let forest = IsolationForestParams::default().fit(&rows, features)?;
    let spec = ManifestSpec {
        name: "iforest".into(),
        version: 1,
        parent_version: None,
        feature_names: (0..features).map(|i| format!("f{i}")).collect(),
        window: 1,
        scaler: None,
        training_data: "synthetic standard-normal-ish rows".into(),
        training_rows: 10_000,
        metrics: Default::default(),
        created_ms: 0,
    };
    let (manifest, payload) = iforest_bundle(spec, &forest);
    std::fs::write(&args[1], serde_json::to_vec_pretty(&manifest)?)?;
    std::fs::write(&args[2], payload)?;
    Ok(())
}
