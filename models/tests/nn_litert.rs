//! Exported models open in the official LiteRT runtime (`ai-edge-litert`
//! from PyPI) and give tract's outputs. Runs when a Python with the runtime
//! is found (`SAD_PYTHON`, else `/opt/sad-venv/bin/python`, else `python3`);
//! otherwise it says so and passes.
#![cfg(feature = "train")]

use std::path::{Path, PathBuf};
use std::process::Command;

use sad_models::nn::rng::SeededRng;
use sad_models::nn::tflite::TflitePlan;
use sad_models::nn::{Architecture, Params, export};

fn python() -> Option<String> {
    let candidates = [
        std::env::var("SAD_PYTHON").ok(),
        Some("/opt/sad-venv/bin/python".to_string()),
        Some("python3".to_string()),
    ];
    candidates.into_iter().flatten().find(|py| {
        Command::new(py)
            .args(["-c", "import numpy, ai_edge_litert.interpreter"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    })
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/litert_check.py")
}

fn check(py: &str, dir: &Path, name: &str, arch: &Architecture, batch: usize) -> String {
    let params = Params::init(arch, 11).unwrap();
    let mut r = SeededRng::new(5);
    let probe: Vec<f32> = (0..arch.sample_len() * batch)
        .map(|_| r.normal() as f32)
        .collect();
    let (bytes, _) = export::export_variant(arch, &params, batch, &probe).unwrap();
    let (score, pf) = TflitePlan::load(&bytes, arch).unwrap().run(&probe).unwrap();
    let model = dir.join(format!("{name}.tflite"));
    std::fs::write(&model, &bytes).unwrap();
    let mut shape = vec![batch];
    if arch.window() > 1 {
        shape.push(arch.window());
    }
    shape.push(arch.n_features());
    let spec = serde_json::json!({
        "model": model,
        "input_shape": shape,
        "input": probe,
        "outputs": [score, pf],
    });
    let spec_path = dir.join(format!("{name}.json"));
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    let out = Command::new(py)
        .arg(script())
        .arg(&spec_path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{name}: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn exported_models_run_in_litert_with_the_outputs_of_tract() {
    let Some(py) = python() else {
        eprintln!("skipped: no python with ai-edge-litert (pip install ai-edge-litert)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let dense = Architecture::Dense {
        n_features: 6,
        hidden: vec![8],
        latent: 3,
    };
    let lstm = Architecture::Lstm {
        n_features: 4,
        window: 32,
        hidden: 16,
        latent: 4,
    };
    for (name, arch, batch) in [
        ("dense_b1", &dense, 1),
        ("dense_b8", &dense, 8),
        ("lstm_b4", &lstm, 4),
    ] {
        let out = check(&py, dir.path(), name, arch, batch);
        eprintln!("{name}: {}", out.trim());
    }
}
