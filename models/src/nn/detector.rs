//! The neural detectors behind the common [`Detector`] interface.
//!
//! An [`NnDetector`] holds a batch-1 and (optionally) a batch-N tract plan of
//! the same model, the scaler and window length from the manifest, and the
//! calibration and threshold. Raw scores are the model's mean squared
//! reconstruction error on scaled inputs; contributions are the per-feature
//! squared errors.
//!
//! Windowing for the LSTM autoencoder (kind `lstm`): a row is the feature
//! vector of one time step, and the detector keeps no state. Its
//! [`Detector::raw_score_batch`] reads the rows as consecutive,
//! non-overlapping windows of `T` rows (the row count must be a multiple of
//! `T`) and returns one score per window; [`NnDetector::score_windows`] takes
//! already-cut windows (for sliding windows, see [`super::window`]);
//! [`Detector::contributions`] takes one whole window (`T * F` values).
//! The per-series window buffer lives in the caller.

use sad_common::{Calibration, ModelKind, StandardScaler};

use super::tflite::TflitePlan;
use super::{Architecture, NnError, NnResult};
use crate::detector::{Detector, check_batch};
use crate::error::{ModelError, Result};

/// A TFLite autoencoder (dense, LSTM or VAE) run with tract.
#[derive(Debug, Clone)]
pub struct NnDetector {
    arch: Architecture,
    scaler: StandardScaler,
    calibration: Calibration,
    threshold: f64,
    batch1: TflitePlan,
    batch_n: Option<TflitePlan>,
}

impl NnDetector {
    /// Loads the `.tflite` variants (batch 1 required, batch N optional) and
    /// checks them against the architecture and the scaler.
    pub fn load(
        arch: Architecture,
        scaler: StandardScaler,
        calibration: Calibration,
        threshold: f64,
        batch1: &[u8],
        batch_n: Option<&[u8]>,
    ) -> NnResult<NnDetector> {
        arch.validate()?;
        if !scaler.is_valid() || scaler.n_features() != arch.n_features() {
            return Err(NnError::Invalid(format!(
                "scaler for {} features does not fit a model of {}",
                scaler.n_features(),
                arch.n_features()
            )));
        }
        if !calibration.is_valid() || !(0.0..=1.0).contains(&threshold) {
            return Err(NnError::Invalid(format!(
                "bad calibration {calibration:?} or threshold {threshold}"
            )));
        }
        let b1 = TflitePlan::load(batch1, &arch)?;
        if b1.batch() != 1 {
            return Err(NnError::Invalid(format!(
                "the batch-1 model has batch {}",
                b1.batch()
            )));
        }
        let bn = batch_n.map(|b| TflitePlan::load(b, &arch)).transpose()?;
        Ok(NnDetector {
            arch,
            scaler,
            calibration,
            threshold,
            batch1: b1,
            batch_n: bn,
        })
    }

    /// The network's shape.
    pub fn architecture(&self) -> &Architecture {
        &self.arch
    }

    /// The feature scaler applied before the model.
    pub fn scaler(&self) -> &StandardScaler {
        &self.scaler
    }

    /// Time steps per window (1 for the dense models).
    pub fn window(&self) -> usize {
        self.arch.window()
    }

    /// Replaces the calibration and threshold (after fitting them on training scores).
    pub fn set_calibration(&mut self, calibration: Calibration, threshold: f64) -> Result<()> {
        if !calibration.is_valid() || !(0.0..=1.0).contains(&threshold) {
            return Err(ModelError::Invalid(format!(
                "bad calibration {calibration:?} or threshold {threshold}"
            )));
        }
        self.calibration = calibration;
        self.threshold = threshold;
        Ok(())
    }

    /// Scores samples that are already scaled (`n * T * F` `f32` values):
    /// raw scores (`n`) and per-feature errors (`n * F`). Full batches go to
    /// the batch-N model; a remainder of at least a quarter batch is padded
    /// into one more batch-N run, a smaller one runs sample by sample.
    pub fn score_scaled(&self, samples: &[f32]) -> NnResult<(Vec<f64>, Vec<f64>)> {
        let s = self.arch.sample_len();
        let f = self.arch.n_features();
        if !samples.len().is_multiple_of(s) {
            return Err(NnError::Input(format!(
                "{} values are not whole samples of {s}",
                samples.len()
            )));
        }
        let n = samples.len() / s;
        let mut scores = Vec::with_capacity(n);
        let mut per_feature = Vec::with_capacity(n * f);
        let mut push = |sc: &[f32], pf: &[f32]| {
            scores.extend(sc.iter().map(|&v| v as f64));
            per_feature.extend(pf.iter().map(|&v| v as f64));
        };
        let mut rest = samples;
        if let Some(bn) = &self.batch_n {
            let nb = bn.batch();
            while rest.len() >= nb * s {
                let (chunk, tail) = rest.split_at(nb * s);
                let (sc, pf) = bn.run(chunk)?;
                push(&sc, &pf);
                rest = tail;
            }
            let left = rest.len() / s;
            if left > 0 && left * 4 >= nb {
                let mut padded = rest.to_vec();
                padded.resize(nb * s, 0.0);
                let (sc, pf) = bn.run(&padded)?;
                push(&sc[..left], &pf[..left * f]);
                rest = &[];
            }
        }
        for one in rest.chunks_exact(s) {
            let (sc, pf) = self.batch1.run(one)?;
            push(&sc, &pf);
        }
        Ok((scores, per_feature))
    }

    fn scale(&self, raw: &[f64]) -> Vec<f32> {
        let f = self.arch.n_features();
        raw.chunks_exact(f)
            .flat_map(|row| {
                row.iter()
                    .zip(&self.scaler.mean)
                    .zip(&self.scaler.scale)
                    .map(|((x, m), sd)| ((x - m) / sd) as f32)
            })
            .collect()
    }

    /// Scores raw (unscaled) windows, `n_windows * T * F` values: raw scores
    /// and per-feature errors (`n_windows * F`). For the dense models a
    /// window is one row.
    pub fn score_windows(&self, windows: &[f64]) -> Result<(Vec<f64>, Vec<f64>)> {
        let rows = check_batch(windows, self.arch.n_features())?;
        if !rows.is_multiple_of(self.arch.window()) {
            return Err(ModelError::Invalid(format!(
                "{rows} rows are not whole windows of {} steps",
                self.arch.window()
            )));
        }
        Ok(self.score_scaled(&self.scale(windows))?)
    }
}

impl Detector for NnDetector {
    fn kind(&self) -> ModelKind {
        self.arch.kind()
    }

    fn n_features(&self) -> usize {
        self.arch.n_features()
    }

    /// One score per row for the dense models; one per consecutive window of
    /// `T` rows for the LSTM (see the module docs).
    fn raw_score_batch(&self, rows: &[f64], out: &mut Vec<f64>) -> Result<()> {
        out.clear();
        let (scores, _) = self.score_windows(rows)?;
        out.extend(scores);
        Ok(())
    }

    /// Squared reconstruction error per feature (window mean for the LSTM,
    /// whose `row` is one whole window of `T * F` values).
    fn contributions(&self, row: &[f64]) -> Result<Vec<f64>> {
        let need = self.arch.sample_len();
        if row.len() != need {
            return Err(ModelError::Dimension {
                expected: need,
                got: row.len(),
            });
        }
        Ok(self.score_windows(row)?.1)
    }

    fn calibration(&self) -> &Calibration {
        &self.calibration
    }

    fn threshold(&self) -> f64 {
        self.threshold
    }
}
