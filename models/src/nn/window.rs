//! Windowing of multivariate series for the LSTM autoencoder.
//!
//! A series is row-major `n_steps * n_features`; a window is `T` consecutive
//! rows. The detector itself keeps no state: callers (the agent pipeline,
//! the evaluation) build windows here and map window scores back to steps.

use super::{NnError, NnResult};

/// Sliding windows of `window` steps every `stride` steps, concatenated
/// (`n_windows * window * n_features`). Returns the windows and their count.
pub fn sliding_windows(
    series: &[f64],
    n_features: usize,
    window: usize,
    stride: usize,
) -> NnResult<(Vec<f64>, usize)> {
    if n_features == 0 || window == 0 || stride == 0 || !series.len().is_multiple_of(n_features) {
        return Err(NnError::Input(format!(
            "series of {} values cannot be cut into windows of {window} x {n_features} every {stride}",
            series.len()
        )));
    }
    let steps = series.len() / n_features;
    if steps < window {
        return Ok((Vec::new(), 0));
    }
    let count = (steps - window) / stride + 1;
    let mut out = Vec::with_capacity(count * window * n_features);
    for w in 0..count {
        let start = w * stride * n_features;
        out.extend_from_slice(&series[start..start + window * n_features]);
    }
    Ok((out, count))
}

/// Per-step scores from the scores of stride-1 windows: step `t` gets the
/// score of the window that ends at `t`; the first `window - 1` steps, which
/// no full window ends at, get the first window's score.
pub fn step_scores(window_scores: &[f64], n_steps: usize, window: usize) -> Vec<f64> {
    if window_scores.is_empty() {
        return vec![0.0; n_steps];
    }
    (0..n_steps)
        .map(|t| {
            let w = t.saturating_sub(window - 1).min(window_scores.len() - 1);
            window_scores[w]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_consecutive_rows_every_stride() {
        let series: Vec<f64> = (0..10).map(f64::from).collect(); // 5 steps x 2 features
        let (w, n) = sliding_windows(&series, 2, 3, 1).unwrap();
        assert_eq!(n, 3);
        assert_eq!(&w[..6], &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(&w[12..], &[4.0, 5.0, 6.0, 7.0, 8.0, 9.0]);
        let (_, n2) = sliding_windows(&series, 2, 3, 2).unwrap();
        assert_eq!(n2, 2);
        assert_eq!(sliding_windows(&series, 2, 6, 1).unwrap().1, 0);
        assert!(sliding_windows(&series, 3, 2, 1).is_err());
    }

    #[test]
    fn each_step_takes_the_score_of_the_window_ending_there() {
        let s = step_scores(&[0.1, 0.2, 0.3], 5, 3);
        assert_eq!(s, vec![0.1, 0.1, 0.1, 0.2, 0.3]);
    }
}
