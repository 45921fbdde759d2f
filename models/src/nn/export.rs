//! Export of trained weights to `.tflite`, verified before anything is saved.
//!
//! For each of the batch-1 and batch-N variants the graph is built, written
//! with tract's writer, read back with tract-tflite and run on probe samples;
//! its score and per-feature outputs must match the trainer's own candle
//! forward pass within [`MAX_ABS_DIFF`], and the weights read back from the
//! file must be the trained ones (fine-tuning starts from them). Any failure
//! is an error and no bytes are returned.

use super::tflite::{TflitePlan, extract_params, write};
use super::{Architecture, NnError, NnResult, Params, graph, train};

/// Largest accepted absolute difference between tract and the trainer.
pub const MAX_ABS_DIFF: f64 = 1e-5;

/// The two verified `.tflite` variants of one model.
#[derive(Debug, Clone)]
pub struct Exported {
    /// The batch-1 model (per-event scoring).
    pub batch1: Vec<u8>,
    /// The batch-N model.
    pub batch_n: Vec<u8>,
    /// N.
    pub batch: usize,
    /// Largest difference seen against the trainer, over both variants and outputs.
    pub max_abs_diff: f64,
}

fn max_diff(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).abs())
        .fold(
            if a.len() == b.len() {
                0.0
            } else {
                f64::INFINITY
            },
            f64::max,
        )
}

/// Writes one variant and checks it against the trainer on `probe`
/// (scaled samples; cycled to fill the batch). Returns the bytes and the
/// largest difference.
pub fn export_variant(
    arch: &Architecture,
    params: &Params,
    batch: usize,
    probe: &[f32],
) -> NnResult<(Vec<u8>, f64)> {
    let s = arch.sample_len();
    if probe.is_empty() || !probe.len().is_multiple_of(s) {
        return Err(NnError::Input(format!(
            "probe of {} values is not a whole number of samples of {s}",
            probe.len()
        )));
    }
    let model = graph::build(arch, params, batch)?;
    let bytes = write(&model)?;
    let plan = TflitePlan::load(&bytes, arch)?;
    let input: Vec<f32> = probe.iter().copied().cycle().take(batch * s).collect();
    let (score, per_feature) = plan.run(&input)?;
    let (want_score, want_pf) = train::forward(arch, params, &input)?;
    let mut worst = 0.0f64;
    for (name, got, want) in [
        ("score", &score, &want_score),
        ("per-feature error", &per_feature, &want_pf),
    ] {
        let d = max_diff(got, want);
        if d.is_nan() || d > MAX_ABS_DIFF {
            return Err(NnError::Mismatch {
                output: format!("{name} (batch {batch})"),
                max_abs_diff: d,
                limit: MAX_ABS_DIFF,
            });
        }
        worst = worst.max(d);
    }
    Ok((bytes, worst))
}

/// Exports and verifies the batch-1 and batch-`batch` variants of a trained model.
pub fn export(
    arch: &Architecture,
    params: &Params,
    batch: usize,
    probe: &[f32],
) -> NnResult<Exported> {
    let (batch1, d1) = export_variant(arch, params, 1, probe)?;
    let (batch_n, dn) = export_variant(arch, params, batch, probe)?;
    let back = extract_params(&batch1, arch, 0)?;
    for name in arch.exported_params() {
        if back.get(&name)? != params.get(&name)? {
            return Err(NnError::Decode(format!(
                "parameter {name} does not read back from the exported model"
            )));
        }
    }
    Ok(Exported {
        batch1,
        batch_n,
        batch,
        max_abs_diff: d1.max(dn),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::rng::SeededRng;

    fn probe(n: usize, r: &mut SeededRng) -> Vec<f32> {
        (0..n).map(|_| r.normal() as f32).collect()
    }

    #[test]
    fn every_architecture_exports_within_tolerance_of_the_trainer() {
        let mut r = SeededRng::new(9);
        for arch in [
            Architecture::Dense {
                n_features: 5,
                hidden: vec![8, 4],
                latent: 2,
            },
            Architecture::Vae {
                n_features: 5,
                hidden: vec![6],
                latent: 3,
            },
            Architecture::Lstm {
                n_features: 3,
                window: 6,
                hidden: 5,
                latent: 2,
            },
        ] {
            let params = Params::init(&arch, 3).unwrap();
            let p = probe(arch.sample_len() * 3, &mut r);
            let e = export(&arch, &params, 4, &p).unwrap();
            assert!(
                e.max_abs_diff <= MAX_ABS_DIFF,
                "{arch:?}: {}",
                e.max_abs_diff
            );
            assert!(!e.batch1.is_empty() && !e.batch_n.is_empty());
            assert_eq!(TflitePlan::load(&e.batch_n, &arch).unwrap().batch(), 4);
        }
    }

    #[test]
    fn a_probe_of_the_wrong_size_is_rejected_before_writing() {
        let arch = Architecture::Dense {
            n_features: 4,
            hidden: vec![],
            latent: 2,
        };
        let params = Params::init(&arch, 1).unwrap();
        assert!(matches!(
            export(&arch, &params, 2, &[0.0; 3]),
            Err(NnError::Input(_))
        ));
    }
}
