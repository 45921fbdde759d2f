//! The whole training pipeline of a neural detector, and fine-tuning.
//!
//! [`fit`]: standard scaler on the raw rows → samples (rows, or sliding
//! windows for the LSTM) → [`train::train`] → verified [`export::export`] →
//! [`NnDetector`] loaded from the exported bytes → calibration fitted on the
//! training scores so that `contamination` of them lie above threshold 0.5.
//!
//! [`finetune`]: reads the weights back from a shipped batch-1 `.tflite`,
//! keeps the parent's scaler (the feature space must not move under a
//! deployed threshold), continues training on new data (typically fewer
//! epochs and a lower learning rate) and exports and recalibrates as above.

use super::bundle::NnPayload;
use super::detector::NnDetector;
use super::export::{self, Exported};
use super::tflite::extract_params;
use super::train::{self, EpochReport, TrainConfig, TrainOutcome};
use super::window::sliding_windows;
use super::{Architecture, NnError, NnResult, Params};
use crate::detector::fit_calibration;
use crate::scaler::{StandardScaler, fit_standard_scaler};

/// Options of [`fit`] and [`finetune`] beyond the network itself.
#[derive(Debug, Clone, PartialEq)]
pub struct FitOptions {
    /// Training hyper-parameters.
    pub train: TrainConfig,
    /// N of the batch-N variant.
    pub batch: usize,
    /// Share of training samples expected above the threshold, in (0, 0.5).
    pub contamination: f64,
    /// Step between training windows of the LSTM (1 = every window).
    pub window_stride: usize,
    /// Cap on training samples (evenly subsampled beyond it); 0 = no cap.
    pub max_samples: usize,
}

impl Default for FitOptions {
    fn default() -> Self {
        FitOptions {
            train: TrainConfig::default(),
            batch: 64,
            contamination: 0.05,
            window_stride: 1,
            max_samples: 0,
        }
    }
}

/// A trained, exported, loaded and calibrated neural detector.
#[derive(Debug, Clone)]
pub struct FittedNn {
    /// The network's shape.
    pub arch: Architecture,
    /// Scaler fitted on (or, after fine-tuning, inherited for) the training rows.
    pub scaler: StandardScaler,
    /// The trained weights.
    pub params: Params,
    /// The verified `.tflite` variants.
    pub exported: Exported,
    /// The detector, running the exported bytes in tract.
    pub detector: NnDetector,
    /// Training history.
    pub outcome: TrainOutcome,
    /// Raw scores of the training samples (from tract).
    pub train_scores: Vec<f64>,
}

impl FittedNn {
    /// The payload of a model bundle for this model.
    pub fn payload(&self) -> NnPayload {
        NnPayload {
            arch: self.arch.clone(),
            batch: self.exported.batch as u32,
            tflite_batch1: self.exported.batch1.clone(),
            tflite_batch_n: self.exported.batch_n.clone(),
        }
    }
}

/// Turns raw rows (`n_steps * F`) into scaled training samples.
pub fn samples(
    arch: &Architecture,
    scaler: &StandardScaler,
    rows: &[f64],
    stride: usize,
    max_samples: usize,
) -> NnResult<Vec<f32>> {
    let f = arch.n_features();
    if f == 0 || !rows.len().is_multiple_of(f) || rows.iter().any(|v| !v.is_finite()) {
        return Err(NnError::Input(format!(
            "{} values are not finite rows of {f} features",
            rows.len()
        )));
    }
    let scaled = scaler.transform(rows);
    let (windows, n) = match arch {
        Architecture::Lstm { window, .. } => sliding_windows(&scaled, f, *window, stride)?,
        _ => (scaled, rows.len() / f),
    };
    if n == 0 {
        return Err(NnError::Input(format!(
            "too few rows for one window of {}",
            arch.window()
        )));
    }
    let s = arch.sample_len();
    let keep: Vec<usize> = if max_samples > 0 && n > max_samples {
        (0..max_samples).map(|i| i * n / max_samples).collect()
    } else {
        (0..n).collect()
    };
    Ok(keep
        .into_iter()
        .flat_map(|i| windows[i * s..(i + 1) * s].iter().map(|&v| v as f32))
        .collect())
}

fn finish(
    arch: &Architecture,
    scaler: StandardScaler,
    samples: &[f32],
    outcome: TrainOutcome,
    opts: &FitOptions,
) -> NnResult<FittedNn> {
    let probe_len = arch.sample_len() * opts.batch.max(1);
    let probe = &samples[..probe_len.min(samples.len())];
    let exported = export::export(arch, &outcome.params, opts.batch, probe)?;
    let mut detector = NnDetector::load(
        arch.clone(),
        scaler.clone(),
        sad_common::Calibration::Identity,
        0.5,
        &exported.batch1,
        Some(&exported.batch_n),
    )?;
    let (train_scores, _) = detector.score_scaled(samples)?;
    let calibration = fit_calibration(&train_scores, opts.contamination)?;
    detector.set_calibration(calibration, 0.5)?;
    Ok(FittedNn {
        arch: arch.clone(),
        scaler,
        params: outcome.params.clone(),
        exported,
        detector,
        outcome,
        train_scores,
    })
}

/// Fits a scaler, trains, exports, loads and calibrates a detector on raw rows.
pub fn fit(
    arch: &Architecture,
    rows: &[f64],
    opts: &FitOptions,
    progress: &mut (dyn FnMut(&EpochReport) + Send),
) -> NnResult<FittedNn> {
    arch.validate()?;
    let scaler =
        fit_standard_scaler(rows, arch.n_features()).map_err(|e| NnError::Input(e.to_string()))?;
    let samples = samples(arch, &scaler, rows, opts.window_stride, opts.max_samples)?;
    let outcome = train::train(arch, &samples, None, &opts.train, progress)?;
    finish(arch, scaler, &samples, outcome, opts)
}

/// Continues training a shipped model (its batch-1 `.tflite` and scaler) on
/// new raw rows; returns the new model, exported and recalibrated.
pub fn finetune(
    arch: &Architecture,
    scaler: &StandardScaler,
    parent_batch1: &[u8],
    rows: &[f64],
    opts: &FitOptions,
    progress: &mut (dyn FnMut(&EpochReport) + Send),
) -> NnResult<FittedNn> {
    let init = extract_params(parent_batch1, arch, opts.train.seed)?;
    let samples = samples(arch, scaler, rows, opts.window_stride, opts.max_samples)?;
    let outcome = train::train(arch, &samples, Some(&init), &opts.train, progress)?;
    finish(arch, scaler.clone(), &samples, outcome, opts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detector::Detector;
    use crate::nn::rng::SeededRng;

    fn rows(n: usize, seed: u64) -> Vec<f64> {
        let mut r = SeededRng::new(seed);
        (0..n)
            .flat_map(|_| {
                let t = r.uniform(-1.0, 1.0);
                [10.0 + t, 5.0 - 2.0 * t, 3.0 * t * t]
            })
            .collect()
    }

    fn opts() -> FitOptions {
        FitOptions {
            train: TrainConfig {
                epochs: 12,
                batch_size: 32,
                learning_rate: 1e-2,
                ..TrainConfig::default()
            },
            batch: 8,
            ..FitOptions::default()
        }
    }

    #[test]
    fn a_fitted_dense_autoencoder_flags_rows_off_the_training_manifold() {
        let arch = Architecture::Dense {
            n_features: 3,
            hidden: vec![8],
            latent: 1,
        };
        let fitted = fit(&arch, &rows(300, 1), &opts(), &mut |_| {}).unwrap();
        let d = &fitted.detector;
        let normal = d.score(&[10.2, 4.6, 0.12]).unwrap();
        let odd = d.score(&[12.0, 9.0, -3.0]).unwrap();
        assert!(odd.raw > normal.raw);
        assert!(odd.is_anomaly, "{odd:?}");
        let c = d.contributions(&[10.0, 5.0, 9.0]).unwrap();
        assert_eq!(c.len(), 3);
        assert!(c[2] > c[0] && c[2] > c[1], "{c:?}");
        // batch scoring agrees with one-by-one scoring
        let batch = rows(21, 5);
        let mut out = Vec::new();
        d.raw_score_batch(&batch, &mut out).unwrap();
        for (row, s) in batch.chunks(3).zip(&out) {
            assert!((d.raw_score(row).unwrap() - s).abs() < 1e-6);
        }
    }

    #[test]
    fn finetuning_starts_from_the_shipped_weights() {
        let arch = Architecture::Dense {
            n_features: 3,
            hidden: vec![6],
            latent: 2,
        };
        let parent = fit(&arch, &rows(200, 2), &opts(), &mut |_| {}).unwrap();
        let mut o = opts();
        o.train.epochs = 1;
        o.train.learning_rate = 1e-9;
        let child = finetune(
            &arch,
            &parent.scaler,
            &parent.exported.batch1,
            &rows(100, 3),
            &o,
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(child.scaler, parent.scaler);
        let w0 = &parent.params.get("enc0.w").unwrap().data;
        let w1 = &child.params.get("enc0.w").unwrap().data;
        let moved = w0
            .iter()
            .zip(w1)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(moved < 1e-4, "weights moved by {moved}");
    }
}
