//! The NAB v1 scorer, following Numenta's code (numenta/NAB at ea702d75:
//! `nab/sweeper.py`, `nab/optimizer.py`, `nab/scorer.py`, `nab/runner.py`,
//! `config/profiles.json`) rule for rule.
//!
//! Per file (`Sweeper.calcSweepScore`):
//! - the first `min(floor(0.15 n), 0.15 * 5000)` rows are the probationary
//!   period: never scored, and a window that lies entirely inside it is
//!   neither found nor missed (it still counts towards the perfect score);
//! - a row inside a window, at relative position `y = -(right - i + 1) / width`
//!   (`-1` at the window's first row, `-1/width` at its last), is worth
//!   `S(y) * tp / S(-1)` if detected, with `S(y) = 2 / (1 + exp(5y)) - 1`;
//!   only the best, i.e. the earliest, detection of a window counts and an
//!   undetected window costs `-fn`;
//! - a detection outside every window costs `fp * S(|i - prev_right| / (prev_width - 1))`
//!   after a window (`S = -1` beyond 3 window widths), and `-fp` before the
//!   first window of the file;
//! - a row is a detection when its anomaly score is `>=` the threshold.
//!
//! Over the corpus (`Sweeper.calcScoreByThreshold`, `optimizeThreshold`):
//! the scored rows of all files are sorted by anomaly score (descending,
//! stable) and every distinct score is tried as the threshold, plus 1.1
//! (nothing detected); the first threshold with the maximal corpus score
//! wins. The reported raw score is the sum of the per-file scores at that
//! threshold (`scoreCorpus`'s "Totals" row), and
//! `normalized = 100 (raw - null) / (perfect - null)` (`Runner.normalize`)
//! where `perfect = tp * (number of windows)` and `null` is the null
//! detector's score, which with its optimised threshold detects nothing:
//! `-fn` per window that has at least one scored row.
//!
//! One deviation: after a window of a single row NAB divides by zero (a
//! Python exception); here such false positives get `S = -1`.

use serde::{Deserialize, Serialize};

use crate::data::NabSeries;
use crate::error::{ModelError, Result};

/// Share of each file that is the probationary period (NAB's default).
pub const PROBATIONARY_PERCENT: f64 = 0.15;

/// The threshold NAB's sweep starts at: above every score, nothing detected.
pub const NO_DETECTION_THRESHOLD: f64 = 1.1;

/// A NAB application profile (`config/profiles.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NabProfile {
    /// `standard`: TP 1, FP 0.11, FN 1.
    Standard,
    /// `reward_low_FP_rate`: TP 1, FP 0.22, FN 1.
    RewardLowFp,
    /// `reward_low_FN_rate`: TP 1, FP 0.11, FN 2.
    RewardLowFn,
}

/// A profile's cost matrix as in `profiles.json`: positive magnitudes; the
/// scorer adds `tp`-weighted rewards and subtracts `fp`/`fn` costs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct NabWeights {
    /// Reward of a window detected at its very first row.
    pub tp: f64,
    /// Cost of a false positive far from any window.
    pub fp: f64,
    /// Cost of a missed window.
    pub fn_: f64,
}

impl NabProfile {
    /// The three profiles in NAB's reporting order.
    pub const ALL: [NabProfile; 3] = [
        NabProfile::Standard,
        NabProfile::RewardLowFp,
        NabProfile::RewardLowFn,
    ];

    /// The profile's weights.
    pub fn weights(self) -> NabWeights {
        match self {
            NabProfile::Standard => NabWeights {
                tp: 1.0,
                fp: 0.11,
                fn_: 1.0,
            },
            NabProfile::RewardLowFp => NabWeights {
                tp: 1.0,
                fp: 0.22,
                fn_: 1.0,
            },
            NabProfile::RewardLowFn => NabWeights {
                tp: 1.0,
                fp: 0.11,
                fn_: 2.0,
            },
        }
    }

    /// NAB's name: `standard`, `reward_low_FP_rate`, `reward_low_FN_rate`.
    pub fn name(self) -> &'static str {
        match self {
            NabProfile::Standard => "standard",
            NabProfile::RewardLowFp => "reward_low_FP_rate",
            NabProfile::RewardLowFn => "reward_low_FN_rate",
        }
    }
}

/// Index of the first scored row: NAB's `getProbationaryLength`,
/// `min(floor(0.15 n), 0.15 * 5000)`, so at most 750 rows are skipped.
pub fn probationary_length(n_rows: usize) -> usize {
    let len = (PROBATIONARY_PERCENT * n_rows as f64)
        .floor()
        .min(PROBATIONARY_PERCENT * 5000.0);
    // Rows with index >= len are scored; len is a whole number here.
    len.ceil() as usize
}

/// NAB's scaled sigmoid `2 / (1 + exp(5y)) - 1`, and `-1` for `y > 3`.
pub fn scaled_sigmoid(y: f64) -> f64 {
    if y > 3.0 {
        -1.0
    } else {
        let x = -5.0 * y;
        2.0 * (1.0 / (1.0 + (-x).exp())) - 1.0
    }
}

/// Row and window counts behind a NAB score (scored rows only, as NAB's
/// `ThresholdScore`: rows, not windows, in `tp`..`fn_`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NabCounts {
    /// Detected rows inside windows.
    pub tp: usize,
    /// Undetected rows outside windows.
    pub tn: usize,
    /// Detected rows outside windows (each costs a weighted FP).
    pub fp: usize,
    /// Undetected rows inside windows.
    pub fn_: usize,
    /// Scored rows (after the probationary period).
    pub total: usize,
    /// Windows with at least one scored row.
    pub windows: usize,
    /// Windows with at least one detection (each earns its earliest one).
    pub windows_detected: usize,
    /// Windows without a detection (each costs `fn`).
    pub windows_missed: usize,
}

impl NabCounts {
    fn add(&mut self, o: &NabCounts) {
        self.tp += o.tp;
        self.tn += o.tn;
        self.fp += o.fp;
        self.fn_ += o.fn_;
        self.total += o.total;
        self.windows += o.windows;
        self.windows_detected += o.windows_detected;
        self.windows_missed += o.windows_missed;
    }
}

/// The NAB score of one file for one set of detections.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct NabFileScore {
    /// Raw (unnormalised) score of the file.
    pub raw_score: f64,
    /// Counts behind it.
    pub counts: NabCounts,
}

/// One file of a detector's output: its windows and one score per row.
#[derive(Debug, Clone, Copy)]
pub struct NabFileInput<'a> {
    /// Series name, e.g. `realKnownCause/nyc_taxi.csv`.
    pub name: &'a str,
    /// Rows in the series.
    pub n_rows: usize,
    /// Labelled windows, inclusive row ranges in order.
    pub windows: &'a [(usize, usize)],
    /// Anomaly scores in `[0, 1]`, one per row.
    pub scores: &'a [f64],
}

impl<'a> NabFileInput<'a> {
    /// Pairs a loaded series with the detector's scores for it.
    pub fn from_series(series: &'a NabSeries, scores: &'a [f64]) -> Self {
        NabFileInput {
            name: &series.name,
            n_rows: series.values.len(),
            windows: &series.windows,
            scores,
        }
    }
}

/// The corpus score at one threshold of the sweep.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct NabThresholdScore {
    /// Rows with a score `>=` this are detections.
    pub threshold: f64,
    /// Raw corpus score.
    pub raw_score: f64,
    /// Counts at this threshold.
    pub counts: NabCounts,
}

/// One file's part of a [`NabResult`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NabFileResult {
    /// Series name.
    pub name: String,
    /// Its score at the corpus threshold.
    pub score: NabFileScore,
}

/// A detector's NAB result for one profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NabResult {
    /// Profile scored.
    pub profile: NabProfile,
    /// Detection threshold (`score >= threshold`); 1.1 means nothing detected.
    pub threshold: f64,
    /// Sum of the per-file raw scores.
    pub raw_score: f64,
    /// `100 (raw - null) / (perfect - null)`: 0 for the null detector, 100 for a perfect one.
    pub normalized_score: f64,
    /// Raw score of the null detector (no detections).
    pub null_score: f64,
    /// Raw score of the perfect detector (`tp` weight times all windows).
    pub perfect_score: f64,
    /// Per-file scores in input order.
    pub per_file: Vec<NabFileResult>,
    /// Counts summed over files.
    pub counts: NabCounts,
}

/// NAB's normalisation: `100 (raw - null) / (perfect - null)`.
pub fn normalize(raw: f64, null: f64, perfect: f64) -> Result<f64> {
    let span = perfect - null;
    if span.is_nan() || span <= 0.0 {
        return Err(ModelError::Invalid(format!(
            "nab normalisation needs perfect ({perfect}) above null ({null}): no labelled windows?"
        )));
    }
    Ok(100.0 * (raw - null) / span)
}

// ---------------------------------------------------------------------------
// Per-row sweep scores (calcSweepScore).

/// A scored (post-probation) row.
#[derive(Debug, Clone, Copy)]
struct Point {
    score: f64,
    /// Weighted score of the row if detected.
    sweep: f64,
    /// Window (global index in the sweep) the row lies in.
    window: Option<usize>,
}

/// Rows of one file after the probationary period, in row order; windows
/// are numbered locally from 0.
struct Prepared {
    points: Vec<Point>,
    n_windows: usize,
}

fn check_windows(name: &str, n_rows: usize, windows: &[(usize, usize)]) -> Result<()> {
    let mut prev_end: Option<usize> = None;
    for &(s, e) in windows {
        if s > e || e >= n_rows {
            return Err(ModelError::Invalid(format!(
                "{name}: window ({s}, {e}) is not an inclusive row range within {n_rows} rows"
            )));
        }
        if prev_end.is_some_and(|p| s < p) {
            return Err(ModelError::Invalid(format!(
                "{name}: window ({s}, {e}) overlaps or precedes the previous window"
            )));
        }
        prev_end = Some(e);
    }
    Ok(())
}

fn prepare(
    name: &str,
    n_rows: usize,
    windows: &[(usize, usize)],
    scores: &[f64],
    w: NabWeights,
) -> Result<Prepared> {
    if scores.len() != n_rows {
        return Err(ModelError::Invalid(format!(
            "{name}: {} scores for {n_rows} rows",
            scores.len()
        )));
    }
    if let Some(i) = scores
        .iter()
        .position(|s| !(s.is_finite() && (0.0..=1.0).contains(s)))
    {
        return Err(ModelError::Invalid(format!(
            "{name}: score of row {i} is {}, expected a number in [0, 1]",
            scores[i]
        )));
    }
    check_windows(name, n_rows, windows)?;
    let max_tp = scaled_sigmoid(-1.0);
    let first_scored = probationary_length(n_rows);
    let mut points = Vec::with_capacity(n_rows.saturating_sub(first_scored));
    // The state machine of calcSweepScore, on row indices.
    let mut next = 0usize;
    let mut cur: Option<(usize, usize, f64)> = None; // (window, right, width)
    let mut prev: Option<(usize, f64)> = None; // (right, width)
    for (i, &score) in scores.iter().enumerate() {
        if let Some(&(start, end)) = windows.get(next)
            && start == i
        {
            cur = Some((next, end, (end - start + 1) as f64));
            next += 1;
        }
        let sweep = match (cur, prev) {
            (Some((_, right, width)), _) => {
                let position = -((right - i + 1) as f64) / width;
                scaled_sigmoid(position) * w.tp / max_tp
            }
            (None, None) => -w.fp,
            (None, Some((right, width))) => {
                let denominator = width - 1.0;
                let unweighted = if denominator > 0.0 {
                    scaled_sigmoid(i.abs_diff(right) as f64 / denominator)
                } else {
                    -1.0
                };
                unweighted * w.fp
            }
        };
        if i >= first_scored {
            points.push(Point {
                score,
                sweep,
                window: cur.map(|c| c.0),
            });
        }
        if let Some((_, right, width)) = cur
            && i == right
        {
            prev = Some((right, width));
            cur = None;
        }
    }
    Ok(Prepared {
        points,
        n_windows: windows.len(),
    })
}

// ---------------------------------------------------------------------------
// The threshold sweep (calcScoreByThreshold).

/// Sorts points by score, descending, keeping row order among equal scores
/// (Python's stable `sorted(..., reverse=True)`).
fn sort_points(points: &mut [Point]) {
    points.sort_by(|a, b| {
        b.score
            .partial_cmp(&a.score)
            .unwrap_or(std::cmp::Ordering::Equal)
    });
}

/// Runs NAB's sweep over sorted points and calls `record` for every
/// threshold, from 1.1 down to the lowest score.
fn sweep(
    sorted: &[Point],
    n_windows: usize,
    fn_weight: f64,
    mut record: impl FnMut(NabThresholdScore),
) {
    // scoreParts: "fp" first, then windows in order of first appearance.
    let mut part = vec![f64::NAN; n_windows];
    let mut order = Vec::new();
    let (mut tp, mut tn, mut fp, mut fn_) = (0usize, 0usize, 0usize, 0usize);
    for p in sorted {
        match p.window {
            Some(win) => {
                fn_ += 1;
                if part[win].is_nan() {
                    part[win] = -fn_weight;
                    order.push(win);
                }
            }
            None => tn += 1,
        }
    }
    let n_scorable = order.len();
    let mut detected = vec![false; n_windows];
    let mut windows_detected = 0usize;
    let mut fp_part = 0.0f64;
    let snapshot = |threshold: f64,
                    fp_part: f64,
                    part: &[f64],
                    counts: (usize, usize, usize, usize),
                    windows_detected: usize| {
        let mut total = fp_part;
        for &win in &order {
            total += part[win];
        }
        let (tp, tn, fp, fn_) = counts;
        NabThresholdScore {
            threshold,
            raw_score: total,
            counts: NabCounts {
                tp,
                tn,
                fp,
                fn_,
                total: tp + tn + fp + fn_,
                windows: n_scorable,
                windows_detected,
                windows_missed: n_scorable - windows_detected,
            },
        }
    };
    let mut threshold = NO_DETECTION_THRESHOLD;
    for p in sorted {
        if p.score != threshold {
            record(snapshot(
                threshold,
                fp_part,
                &part,
                (tp, tn, fp, fn_),
                windows_detected,
            ));
            threshold = p.score;
        }
        match p.window {
            Some(win) => {
                tp += 1;
                fn_ -= 1;
                part[win] = part[win].max(p.sweep);
                if !detected[win] {
                    detected[win] = true;
                    windows_detected += 1;
                }
            }
            None => {
                fp += 1;
                tn -= 1;
                fp_part += p.sweep;
            }
        }
    }
    record(snapshot(
        threshold,
        fp_part,
        &part,
        (tp, tn, fp, fn_),
        windows_detected,
    ));
}

/// One file's score at `threshold`, as `Sweeper.scoreDataSet` picks it from
/// the file's own sweep: the last sweep step whose threshold is `>=` it.
fn file_score_at(prepared: &Prepared, threshold: f64, fn_weight: f64) -> NabFileScore {
    let mut sorted = prepared.points.clone();
    sort_points(&mut sorted);
    let mut chosen: Option<NabThresholdScore> = None;
    let mut first: Option<NabThresholdScore> = None;
    sweep(&sorted, prepared.n_windows, fn_weight, |s| {
        if first.is_none() {
            first = Some(s);
        }
        if s.threshold >= threshold {
            chosen = Some(s);
        }
    });
    // The sweep always records at least the 1.1 step.
    let s = chosen.or(first).unwrap_or(NabThresholdScore {
        threshold,
        raw_score: 0.0,
        counts: NabCounts::default(),
    });
    NabFileScore {
        raw_score: s.raw_score,
        counts: s.counts,
    }
}

/// NAB score of one file for fixed detections (one flag per row), as NAB
/// scores a detector that outputs 1 for a detection and 0 otherwise.
pub fn score_detections(
    n_rows: usize,
    windows: &[(usize, usize)],
    detections: &[bool],
    profile: NabProfile,
) -> Result<NabFileScore> {
    let scores: Vec<f64> = detections
        .iter()
        .map(|&d| if d { 1.0 } else { 0.0 })
        .collect();
    let w = profile.weights();
    let prepared = prepare("detections", n_rows, windows, &scores, w)?;
    Ok(file_score_at(&prepared, 1.0, w.fn_))
}

fn prepare_all(files: &[NabFileInput<'_>], w: NabWeights) -> Result<Vec<Prepared>> {
    if files.is_empty() {
        return Err(ModelError::Invalid(
            "nab scoring needs at least one file".into(),
        ));
    }
    files
        .iter()
        .map(|f| prepare(f.name, f.n_rows, f.windows, f.scores, w))
        .collect()
}

/// Every step of NAB's corpus sweep: the raw corpus score at 1.1 (nothing
/// detected) and at every distinct anomaly score, from high to low.
pub fn sweep_thresholds(
    files: &[NabFileInput<'_>],
    profile: NabProfile,
) -> Result<Vec<NabThresholdScore>> {
    let w = profile.weights();
    let prepared = prepare_all(files, w)?;
    let mut out = Vec::new();
    corpus_sweep(&prepared, w.fn_, |s| out.push(s));
    Ok(out)
}

fn corpus_sweep(prepared: &[Prepared], fn_weight: f64, record: impl FnMut(NabThresholdScore)) {
    let mut all = Vec::with_capacity(prepared.iter().map(|p| p.points.len()).sum());
    let mut offset = 0;
    for p in prepared {
        all.extend(p.points.iter().map(|pt| Point {
            window: pt.window.map(|w| w + offset),
            ..*pt
        }));
        offset += p.n_windows;
    }
    sort_points(&mut all);
    sweep(&all, offset, fn_weight, record);
}

fn result_at(
    files: &[NabFileInput<'_>],
    prepared: &[Prepared],
    profile: NabProfile,
    threshold: f64,
) -> Result<NabResult> {
    let w = profile.weights();
    let mut per_file = Vec::with_capacity(files.len());
    let mut counts = NabCounts::default();
    let (mut raw_score, mut null_score) = (0.0, 0.0);
    for (f, p) in files.iter().zip(prepared) {
        let score = file_score_at(p, threshold, w.fn_);
        let null = file_score_at(p, NO_DETECTION_THRESHOLD, w.fn_);
        raw_score += score.raw_score;
        null_score += null.raw_score;
        counts.add(&score.counts);
        per_file.push(NabFileResult {
            name: f.name.to_string(),
            score,
        });
    }
    let n_windows: usize = files.iter().map(|f| f.windows.len()).sum();
    let perfect_score = n_windows as f64 * w.tp;
    Ok(NabResult {
        profile,
        threshold,
        raw_score,
        normalized_score: normalize(raw_score, null_score, perfect_score)?,
        null_score,
        perfect_score,
        per_file,
        counts,
    })
}

/// NAB's threshold optimisation and scoring: sweeps every distinct score
/// over the corpus, takes the first threshold with the best corpus score,
/// then scores each file at it and normalises the total.
pub fn optimize_threshold(files: &[NabFileInput<'_>], profile: NabProfile) -> Result<NabResult> {
    let w = profile.weights();
    let prepared = prepare_all(files, w)?;
    let mut best: Option<NabThresholdScore> = None;
    corpus_sweep(&prepared, w.fn_, |s| {
        if best.is_none_or(|b| s.raw_score > b.raw_score) {
            best = Some(s);
        }
    });
    let threshold = best.map_or(NO_DETECTION_THRESHOLD, |b| b.threshold);
    result_at(files, &prepared, profile, threshold)
}

/// NAB's scoring at a given threshold (`scoreCorpus`), e.g. a threshold
/// optimised on other data: rows with `score >= threshold` are detections.
pub fn score_at_threshold(
    files: &[NabFileInput<'_>],
    profile: NabProfile,
    threshold: f64,
) -> Result<NabResult> {
    if threshold.is_nan() {
        return Err(ModelError::Invalid("nab threshold is NaN".into()));
    }
    let prepared = prepare_all(files, profile.weights())?;
    result_at(files, &prepared, profile, threshold)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EPS: f64 = 1e-12;

    // S(-1) = 2 / (1 + e^-5) - 1 = 0.98661429815143...
    fn s(y: f64) -> f64 {
        2.0 / (1.0 + (5.0 * y).exp()) - 1.0
    }

    fn det(n: usize, rows: &[usize]) -> Vec<bool> {
        let mut d = vec![false; n];
        for &r in rows {
            d[r] = true;
        }
        d
    }

    #[test]
    fn scaled_sigmoid_has_nab_reference_values() {
        // Values from the sweeper.py docstring.
        assert!((scaled_sigmoid(-1.0) - 0.98661).abs() < 1e-5);
        assert!((scaled_sigmoid(-0.5) - 0.84828).abs() < 1e-5);
        assert_eq!(scaled_sigmoid(0.0), 0.0);
        assert!((scaled_sigmoid(1.0) + 0.98661).abs() < 1e-5);
        assert_eq!(scaled_sigmoid(3.5), -1.0);
    }

    #[test]
    fn probationary_length_is_15_percent_capped_at_750() {
        assert_eq!(probationary_length(100), 15);
        assert_eq!(probationary_length(99), 14); // floor(14.85)
        assert_eq!(probationary_length(5000), 750);
        assert_eq!(probationary_length(22695), 750);
        assert_eq!(probationary_length(0), 0);
    }

    #[test]
    fn profiles_carry_nab_weights_and_names() {
        let w = NabProfile::RewardLowFn.weights();
        assert_eq!((w.tp, w.fp, w.fn_), (1.0, 0.11, 2.0));
        assert_eq!(NabProfile::RewardLowFp.weights().fp, 0.22);
        assert_eq!(NabProfile::RewardLowFp.name(), "reward_low_FP_rate");
    }

    // 100 rows, probation 15, one window rows 40..=49 (width 10).
    const N: usize = 100;
    const WIN: [(usize, usize); 1] = [(40, 49)];

    #[test]
    fn detection_at_window_start_earns_the_full_tp_weight() {
        // y = -(49 - 40 + 1) / 10 = -1 -> S(-1) * 1 / S(-1) = 1.
        let r = score_detections(N, &WIN, &det(N, &[40]), NabProfile::Standard).unwrap();
        assert!((r.raw_score - 1.0).abs() < EPS);
        assert_eq!((r.counts.tp, r.counts.fn_, r.counts.fp), (1, 9, 0));
        assert_eq!(r.counts.windows_detected, 1);
    }

    #[test]
    fn detection_at_window_end_earns_little() {
        // y = -(49 - 49 + 1) / 10 = -0.1 -> S(-0.1) / S(-1) = 0.24491866 / 0.98661430.
        let r = score_detections(N, &WIN, &det(N, &[49]), NabProfile::Standard).unwrap();
        let want = s(-0.1) / s(-1.0);
        assert!((want - 0.248241).abs() < 1e-6);
        assert!((r.raw_score - want).abs() < EPS);
    }

    #[test]
    fn only_the_earliest_of_two_detections_in_a_window_counts() {
        // Rows 45 (y = -0.5) and 47 (y = -0.3): score S(-0.5)/S(-1), nothing for 47.
        let r = score_detections(N, &WIN, &det(N, &[45, 47]), NabProfile::Standard).unwrap();
        assert!((r.raw_score - s(-0.5) / s(-1.0)).abs() < EPS);
        assert_eq!(r.counts.tp, 2);
        assert_eq!(r.counts.windows_detected, 1);
    }

    #[test]
    fn missed_window_costs_the_fn_weight_of_the_profile() {
        let none = det(N, &[]);
        let std = score_detections(N, &WIN, &none, NabProfile::Standard).unwrap();
        let low_fn = score_detections(N, &WIN, &none, NabProfile::RewardLowFn).unwrap();
        assert_eq!(std.raw_score, -1.0);
        assert_eq!(low_fn.raw_score, -2.0);
        assert_eq!(std.counts.windows_missed, 1);
        assert_eq!(std.counts.total, 85);
    }

    #[test]
    fn false_positive_in_the_probationary_period_is_ignored() {
        // Row 10 < 15: not scored at all; the window is still missed: -1.
        let r = score_detections(N, &WIN, &det(N, &[10]), NabProfile::Standard).unwrap();
        assert_eq!(r.raw_score, -1.0);
        assert_eq!(r.counts.fp, 0);
    }

    #[test]
    fn false_positive_before_any_window_costs_the_plain_fp_weight() {
        // Row 20: no previous window -> -1 * 0.11; plus the missed window -1.
        let r = score_detections(N, &WIN, &det(N, &[20]), NabProfile::Standard).unwrap();
        assert!((r.raw_score - (-1.0 - 0.11)).abs() < EPS);
        let r = score_detections(N, &WIN, &det(N, &[20]), NabProfile::RewardLowFp).unwrap();
        assert!((r.raw_score - (-1.0 - 0.22)).abs() < EPS);
    }

    #[test]
    fn false_positive_right_after_a_window_costs_less_than_one_far_after() {
        // Detect at 40 (+1). Row 50: y = |49 - 50| / (10 - 1) = 1/9,
        // cost 0.11 * S(1/9) = 0.11 * -0.270847... Row 90: y = 41/9 > 3 -> -0.11.
        let near = score_detections(N, &WIN, &det(N, &[40, 50]), NabProfile::Standard).unwrap();
        let far = score_detections(N, &WIN, &det(N, &[40, 90]), NabProfile::Standard).unwrap();
        assert!((near.raw_score - (1.0 + 0.11 * s(1.0 / 9.0))).abs() < EPS);
        assert!((s(1.0 / 9.0) + 0.270_847).abs() < 1e-6);
        assert!((far.raw_score - (1.0 - 0.11)).abs() < EPS);
        // Row 58: y = 9/9 = 1 -> 0.11 * S(1) = 0.11 * -0.986614 = -0.108528.
        let mid = score_detections(N, &WIN, &det(N, &[40, 58]), NabProfile::Standard).unwrap();
        assert!((mid.raw_score - (1.0 + 0.11 * s(1.0))).abs() < EPS);
        assert!(near.raw_score > mid.raw_score && mid.raw_score > far.raw_score);
        assert_eq!(far.counts.fp, 1);
    }

    #[test]
    fn window_inside_the_probationary_period_is_neither_found_nor_missed() {
        // Window 2..=5 lies before row 15: no FN, no TP.
        let r = score_detections(N, &[(2, 5)], &det(N, &[]), NabProfile::Standard).unwrap();
        assert_eq!(r.raw_score, 0.0);
        assert_eq!(r.counts.windows, 0);
    }

    #[test]
    fn bad_windows_and_lengths_are_errors() {
        let d = det(N, &[]);
        assert!(score_detections(N, &[(50, 40)], &d, NabProfile::Standard).is_err());
        assert!(score_detections(N, &[(50, 100)], &d, NabProfile::Standard).is_err());
        assert!(score_detections(N, &[(50, 60), (55, 70)], &d, NabProfile::Standard).is_err());
        assert!(score_detections(N + 1, &WIN, &d, NabProfile::Standard).is_err());
        let scores = vec![1.5; N];
        let f = NabFileInput {
            name: "x",
            n_rows: N,
            windows: &WIN,
            scores: &scores,
        };
        assert!(optimize_threshold(&[f], NabProfile::Standard).is_err());
    }

    type Corpus = (Vec<Vec<f64>>, Vec<Vec<(usize, usize)>>);

    fn toy_corpus() -> Corpus {
        // Two files of 100 rows. File a: window 40..=49, scores 0.9 at 40,
        // 0.6 at 70 (an FP far after the window), 0.1 elsewhere.
        // File b: windows 30..=39 and 60..=69, scores 0.8 at 30 and 60,
        // 0.7 at 20 (FP before any window), 0.1 elsewhere.
        let mut a = vec![0.1; 100];
        a[40] = 0.9;
        a[70] = 0.6;
        let mut b = vec![0.1; 100];
        b[30] = 0.8;
        b[60] = 0.8;
        b[20] = 0.7;
        (vec![a, b], vec![vec![(40, 49)], vec![(30, 39), (60, 69)]])
    }

    #[test]
    fn threshold_optimisation_picks_the_obviously_best_threshold() {
        let (scores, windows) = toy_corpus();
        let files: Vec<NabFileInput> = ["a", "b"]
            .iter()
            .zip(scores.iter().zip(&windows))
            .map(|(name, (s, w))| NabFileInput {
                name,
                n_rows: 100,
                windows: w,
                scores: s,
            })
            .collect();
        // Thresholds: 1.1 -> -3; 0.9 -> -1; 0.8 -> +3 (all windows at their
        // first row); 0.7 -> 3 - 0.11; 0.6 -> 3 - 0.11 - 0.11 * S(21/9) (about
        // 3 - 0.22); 0.1 -> very negative.
        let sweep = sweep_thresholds(&files, NabProfile::Standard).unwrap();
        let got: Vec<(f64, f64)> = sweep.iter().map(|s| (s.threshold, s.raw_score)).collect();
        assert_eq!(got.len(), 6);
        assert_eq!(got[0], (1.1, -3.0));
        assert!((got[2].1 - 3.0).abs() < EPS && got[2].0 == 0.8);
        let r = optimize_threshold(&files, NabProfile::Standard).unwrap();
        assert_eq!(r.threshold, 0.8);
        assert!((r.raw_score - 3.0).abs() < EPS);
        assert_eq!(r.null_score, -3.0);
        assert_eq!(r.perfect_score, 3.0);
        assert!((r.normalized_score - 100.0).abs() < 1e-9);
        assert_eq!(r.counts.windows_detected, 3);
        assert_eq!(r.counts.fp, 0);
        assert_eq!(r.per_file[1].name, "b");
        assert!((r.per_file[1].score.raw_score - 2.0).abs() < EPS);
    }

    #[test]
    fn perfect_detector_scores_100_and_null_detector_scores_0() {
        let (_, windows) = toy_corpus();
        let perfect: Vec<Vec<f64>> = windows
            .iter()
            .map(|ws| {
                let mut s = vec![0.0; 100];
                for &(start, _) in ws {
                    s[start] = 1.0;
                }
                s
            })
            .collect();
        // NAB's null detector outputs a constant 0.5.
        let null = vec![vec![0.5; 100]; 2];
        for profile in NabProfile::ALL {
            let mk = |scores: &Vec<Vec<f64>>| {
                let inputs: Vec<NabFileInput> = scores
                    .iter()
                    .zip(&windows)
                    .map(|(s, w)| NabFileInput {
                        name: "f",
                        n_rows: 100,
                        windows: w,
                        scores: s,
                    })
                    .collect();
                optimize_threshold(&inputs, profile).unwrap()
            };
            let p = mk(&perfect);
            assert!((p.normalized_score - 100.0).abs() < 1e-9, "{profile:?}");
            let n = mk(&null);
            assert_eq!(n.normalized_score, 0.0, "{profile:?}");
            assert_eq!(n.threshold, NO_DETECTION_THRESHOLD);
        }
    }

    #[test]
    fn scoring_at_a_fixed_threshold_counts_scores_at_or_above_it() {
        let (scores, windows) = toy_corpus();
        let files: Vec<NabFileInput> = scores
            .iter()
            .zip(&windows)
            .map(|(s, w)| NabFileInput {
                name: "f",
                n_rows: 100,
                windows: w,
                scores: s,
            })
            .collect();
        // At 0.7 the FP at row 20 of file b (score 0.7) is included: 3 - 0.11.
        let r = score_at_threshold(&files, NabProfile::Standard, 0.7).unwrap();
        assert!((r.raw_score - (3.0 - 0.11)).abs() < EPS);
        // At 0.75 it is not.
        let r = score_at_threshold(&files, NabProfile::Standard, 0.75).unwrap();
        assert!((r.raw_score - 3.0).abs() < EPS);
        // Below every score everything is detected; above 1.1 nothing is.
        let r = score_at_threshold(&files, NabProfile::Standard, 2.0).unwrap();
        assert_eq!(r.normalized_score, 0.0);
    }
}
