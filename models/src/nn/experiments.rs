//! Quality measurements of the neural detectors, shared by
//! `anomaly-coordinator train eval-*` and the opt-in `nn_quality` test:
//! ROC-AUC on tabular sets, F1 with the SKAB protocol, the NAB v1 score.

use std::path::Path;

use super::fit::{FitOptions, FittedNn, fit};
use super::train::TrainConfig;
use super::window::sliding_windows;
use super::{Architecture, NnError, NnResult};
use crate::data::{self, SkabFile};
use crate::detector::Detector;
use crate::eval::metrics::{BinaryCounts, roc_auc};
use crate::eval::nab::{self, NabFileInput, NabProfile, NabResult};
use crate::eval::skab;

/// Which neural detector an experiment trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NnKind {
    /// Dense autoencoder.
    Dense,
    /// Dense VAE.
    Vae,
    /// LSTM autoencoder over windows.
    Lstm,
}

impl NnKind {
    /// The default architecture of this kind for `f` features (LSTM: window `t`).
    pub fn arch(self, f: usize, t: usize) -> Architecture {
        let hidden = (2 * f).clamp(8, 32);
        let latent = (f / 3).clamp(2, 8);
        match self {
            NnKind::Dense => Architecture::Dense {
                n_features: f,
                hidden: vec![hidden],
                latent,
            },
            NnKind::Vae => Architecture::Vae {
                n_features: f,
                hidden: vec![hidden],
                latent,
            },
            NnKind::Lstm => Architecture::Lstm {
                n_features: f,
                window: t,
                hidden: 16,
                latent: latent.max(4),
            },
        }
    }
}

fn opts(epochs: usize, seed: u64, contamination: f64, max_samples: usize) -> FitOptions {
    FitOptions {
        train: TrainConfig {
            epochs,
            batch_size: 64,
            learning_rate: 2e-3,
            patience: 4,
            seed,
            ..TrainConfig::default()
        },
        batch: 64,
        contamination,
        window_stride: 1,
        max_samples,
    }
}

/// ROC-AUC of one tabular CSV (`x0..,label`): fit on all rows, score all rows.
pub fn tabular_auc(path: &Path, kind: NnKind, epochs: usize, seed: u64) -> NnResult<f64> {
    let t = data::load_tabular(path).map_err(|e| NnError::Input(e.to_string()))?;
    let arch = kind.arch(t.n_features, 1);
    let fitted = fit(&arch, &t.x, &opts(epochs, seed, 0.05, 10_000), &mut |_| {})?;
    let mut scores = Vec::new();
    fitted.detector.raw_score_batch(&t.x, &mut scores)?;
    Ok(roc_auc(&scores, &t.labels)?)
}

/// Raw per-step scores of `rows` (`n * F`) under a fitted model: per row for
/// the dense models; for the LSTM, each row gets the window ending at it,
/// with `history` (the rows just before, at least `T - 1` of them) completing
/// the first windows.
pub fn step_scores(fitted: &FittedNn, history: &[f64], rows: &[f64]) -> NnResult<Vec<f64>> {
    let f = fitted.arch.n_features();
    let t = fitted.arch.window();
    if t == 1 {
        let mut out = Vec::new();
        fitted.detector.raw_score_batch(rows, &mut out)?;
        return Ok(out);
    }
    let need = (t - 1) * f;
    if history.len() < need {
        return Err(NnError::Input(format!(
            "need {} rows of history for windows of {t}",
            t - 1
        )));
    }
    let mut series = history[history.len() - need..].to_vec();
    series.extend_from_slice(rows);
    let (windows, _) = sliding_windows(&series, f, t, 1)?;
    Ok(fitted.detector.score_windows(&windows)?.0)
}

/// Pooled SKAB counts of one detector kind: per file, fit on the first 400
/// rows, predict the rest at the model's calibrated threshold.
pub fn skab_counts(
    files: &[SkabFile],
    kind: NnKind,
    window: usize,
    epochs: usize,
    contamination: f64,
    seed: u64,
) -> NnResult<BinaryCounts> {
    let mut counts = BinaryCounts::default();
    for file in files {
        let s = skab::split(file)?;
        let arch = kind.arch(s.n_features, window);
        let fitted = fit(
            &arch,
            s.train,
            &opts(epochs, seed, contamination, 0),
            &mut |_| {},
        )?;
        let raw = step_scores(&fitted, s.train, s.test)?;
        let pred: Vec<bool> = raw
            .iter()
            .map(|&r| fitted.detector.finish(r).is_anomaly)
            .collect();
        counts.add(&BinaryCounts::from_predictions(&pred, s.test_labels)?);
    }
    Ok(counts)
}

/// Keeps a score only where it rises above every score of the previous
/// `span` steps (0 elsewhere): NAB rewards the earliest detection of a window
/// and charges every detection outside one, so a detector should report the
/// onset of high reconstruction error, not each step of it.
pub fn rising_edges(scores: &[f64], span: usize) -> Vec<f64> {
    (0..scores.len())
        .map(|t| {
            let past = &scores[t.saturating_sub(span)..t];
            if past.iter().all(|&p| scores[t] > p) {
                scores[t]
            } else {
                0.0
            }
        })
        .collect()
}

/// NAB v1 result (standard profile) of a univariate LSTM autoencoder with
/// windows of `window` steps trained on each series' probationary period;
/// with `edges`, only [`rising_edges`] over one window count as detections.
pub fn nab_lstm(
    nab_dir: &Path,
    window: usize,
    epochs: usize,
    seed: u64,
    edges: bool,
) -> NnResult<NabResult> {
    let corpus = data::load_nab_corpus(nab_dir).map_err(|e| NnError::Input(e.to_string()))?;
    let mut all_scores = Vec::with_capacity(corpus.series.len());
    for series in &corpus.series {
        let v = &series.values;
        let train = nab::probationary_length(v.len())
            .max(window + 16)
            .min(v.len());
        let arch = NnKind::Lstm.arch(1, window);
        let fitted = fit(
            &arch,
            &v[..train],
            &opts(epochs, seed, 0.01, 0),
            &mut |_| {},
        )?;
        let (windows, _) = sliding_windows(v, 1, window, 1)?;
        let (raw, _) = fitted.detector.score_windows(&windows)?;
        let steps = super::window::step_scores(&raw, v.len(), window);
        let cal = *fitted.detector.calibration();
        let calibrated: Vec<f64> = steps.into_iter().map(|r| cal.apply(r)).collect();
        all_scores.push(if edges {
            rising_edges(&calibrated, window)
        } else {
            calibrated
        });
    }
    let inputs: Vec<NabFileInput<'_>> = corpus
        .series
        .iter()
        .zip(&all_scores)
        .map(|(s, sc)| NabFileInput::from_series(s, sc))
        .collect();
    Ok(nab::optimize_threshold(&inputs, NabProfile::Standard)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_new_highs_over_the_span_survive() {
        let s = [0.1, 0.5, 0.6, 0.6, 0.2, 0.7, 0.3];
        assert_eq!(rising_edges(&s, 2), vec![0.1, 0.5, 0.6, 0.0, 0.0, 0.7, 0.0]);
    }
}
