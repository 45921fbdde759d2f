//! The quality gate: may a newly trained model version replace the active one?
//!
//! Pure and synchronous: the caller scores the same held-back rows with the
//! candidate and (when a comparable one exists) the active version and hands
//! the calibrated scores, the decisions and any labels to [`evaluate`]. The
//! gate compares
//! - the **alert rate** (share of holdout samples above each model's own
//!   threshold): the candidate may not exceed
//!   `max(active * alert_rate_factor, active + alert_rate_margin)`, nor
//!   [`GateConfig::max_alert_rate`] in any case (unless the labels say that
//!   many samples are anomalous), so a model that alerts on everything fails
//!   even as a first version;
//! - the **score distribution** (two-sample Kolmogorov–Smirnov statistic of the
//!   calibrated scores), reported, and failing only above [`GateConfig::max_ks`];
//! - **precision, recall and F1** where labels exist: F1 may not drop more
//!   than [`GateConfig::max_f1_drop`] below the active one.
//!
//! The [`GateVerdict`] goes into the manifest (`training.metrics` keys
//! `gate_*`, see [`GateVerdict::write_metrics`], and a one-line `notes`)
//! before the bundle is saved, so it travels with the model; [`publishable`]
//! reads it back. A version that fails is still saved (history) but is not
//! publishable unless forced.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use sad_common::ModelManifest;

/// Margins of the gate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GateConfig {
    /// Candidate alert rate may reach `active * alert_rate_factor` (default 2.0).
    pub alert_rate_factor: f64,
    /// ... or `active + alert_rate_margin`, whichever is larger (default 0.05).
    pub alert_rate_margin: f64,
    /// Alert rate no model may exceed, first versions included, unless the
    /// labelled anomaly share is higher (default 0.5).
    pub max_alert_rate: f64,
    /// Largest F1 drop against the active version when labels exist (default 0.05).
    pub max_f1_drop: f64,
    /// KS statistic between candidate and active scores above which the
    /// candidate fails; `None` only reports it (default `None`).
    pub max_ks: Option<f64>,
    /// Share of the training rows held back for the gate (default 0.2).
    pub holdout_fraction: f64,
}

impl Default for GateConfig {
    fn default() -> Self {
        Self {
            alert_rate_factor: 2.0,
            alert_rate_margin: 0.05,
            max_alert_rate: 0.5,
            max_f1_drop: 0.05,
            max_ks: None,
            holdout_fraction: 0.2,
        }
    }
}

impl GateConfig {
    /// Checks that every margin is finite and in range.
    pub fn validate(&self) -> Result<(), String> {
        let unit = |v: f64| v.is_finite() && (0.0..=1.0).contains(&v);
        if !(self.alert_rate_factor.is_finite() && self.alert_rate_factor >= 1.0) {
            return Err("alert_rate_factor must be at least 1".into());
        }
        if !unit(self.alert_rate_margin) || !unit(self.max_alert_rate) || !unit(self.max_f1_drop) {
            return Err(
                "alert_rate_margin, max_alert_rate and max_f1_drop must be in [0, 1]".into(),
            );
        }
        if self.max_ks.is_some_and(|k| !unit(k)) {
            return Err("max_ks must be in [0, 1]".into());
        }
        if !(self.holdout_fraction > 0.0 && self.holdout_fraction < 0.9) {
            return Err("holdout_fraction must be in (0, 0.9)".into());
        }
        Ok(())
    }
}

/// One model's view of the holdout: calibrated scores, decisions and labels (same length).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScoredHoldout {
    /// Calibrated scores in `[0, 1]`.
    pub scores: Vec<f64>,
    /// Whether each score is above the model's own threshold.
    pub flagged: Vec<bool>,
    /// Ground truth per sample, if known.
    pub labels: Option<Vec<bool>>,
}

impl ScoredHoldout {
    /// Share of flagged samples (0 when empty).
    pub fn alert_rate(&self) -> f64 {
        rate(&self.flagged)
    }

    /// Precision, recall and F1 against the labels, if any.
    pub fn prf(&self) -> Option<(f64, f64, f64)> {
        let labels = self.labels.as_ref()?;
        let (mut tp, mut fp, mut fneg) = (0usize, 0usize, 0usize);
        for (f, l) in self.flagged.iter().zip(labels) {
            match (*f, *l) {
                (true, true) => tp += 1,
                (true, false) => fp += 1,
                (false, true) => fneg += 1,
                _ => {}
            }
        }
        let p = if tp + fp == 0 {
            0.0
        } else {
            tp as f64 / (tp + fp) as f64
        };
        let r = if tp + fneg == 0 {
            0.0
        } else {
            tp as f64 / (tp + fneg) as f64
        };
        let f1 = if p + r == 0.0 {
            0.0
        } else {
            2.0 * p * r / (p + r)
        };
        Some((p, r, f1))
    }
}

fn rate(flags: &[bool]) -> f64 {
    if flags.is_empty() {
        0.0
    } else {
        flags.iter().filter(|f| **f).count() as f64 / flags.len() as f64
    }
}

/// The active version as scored on the holdout.
#[derive(Debug, Clone, PartialEq)]
pub struct ActiveScored {
    /// Its version.
    pub version: u64,
    /// Its scores on the holdout.
    pub holdout: ScoredHoldout,
}

/// The gate's decision and the figures behind it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateVerdict {
    /// Whether the candidate passed (false when skipped).
    pub passed: bool,
    /// Whether the gate was skipped on request (`"gate": false`).
    pub skipped: bool,
    /// Whether rollout may publish it without forcing: passed or skipped.
    pub publishable: bool,
    /// Whether no comparable active version existed.
    pub first_version: bool,
    /// Holdout samples scored.
    pub holdout_samples: usize,
    /// Candidate alert rate on the holdout.
    pub alert_rate: Option<f64>,
    /// Active alert rate on the holdout.
    pub active_alert_rate: Option<f64>,
    /// Alert rate the candidate was allowed.
    pub allowed_alert_rate: Option<f64>,
    /// KS statistic between candidate and active calibrated scores.
    pub ks: Option<f64>,
    /// Candidate precision (labels only).
    pub precision: Option<f64>,
    /// Candidate recall (labels only).
    pub recall: Option<f64>,
    /// Candidate F1 (labels only).
    pub f1: Option<f64>,
    /// Active F1 (labels only).
    pub active_f1: Option<f64>,
    /// Version compared against.
    pub active_version: Option<u64>,
    /// Median and 95th percentile of the candidate's holdout scores (the drift reference).
    pub score_p50: Option<f64>,
    /// See `score_p50`.
    pub score_p95: Option<f64>,
    /// Why it failed (empty when passed).
    pub reasons: Vec<String>,
    /// One line for the manifest's notes.
    pub note: String,
}

impl GateVerdict {
    /// The verdict of a skipped gate: publishable, with the reason recorded.
    pub fn skipped(reason: &str) -> Self {
        Self {
            passed: false,
            skipped: true,
            publishable: true,
            first_version: false,
            holdout_samples: 0,
            alert_rate: None,
            active_alert_rate: None,
            allowed_alert_rate: None,
            ks: None,
            precision: None,
            recall: None,
            f1: None,
            active_f1: None,
            active_version: None,
            score_p50: None,
            score_p95: None,
            reasons: Vec::new(),
            note: format!("quality gate skipped: {reason}"),
        }
    }

    /// Writes the `gate_*` keys into a manifest's training metrics.
    pub fn write_metrics(&self, m: &mut BTreeMap<String, f64>) {
        let b = |v: bool| if v { 1.0 } else { 0.0 };
        if self.skipped {
            m.insert("gate_skipped".into(), 1.0);
        } else {
            m.insert(GATE_PASSED.into(), b(self.passed));
            m.insert("gate_first_version".into(), b(self.first_version));
            m.insert("gate_holdout".into(), self.holdout_samples as f64);
        }
        m.insert(GATE_PUBLISHABLE.into(), b(self.publishable));
        let opt = [
            ("gate_alert_rate", self.alert_rate),
            ("gate_active_alert_rate", self.active_alert_rate),
            ("gate_allowed_alert_rate", self.allowed_alert_rate),
            ("gate_ks", self.ks),
            ("gate_precision", self.precision),
            ("gate_recall", self.recall),
            ("gate_f1", self.f1),
            ("gate_active_f1", self.active_f1),
            ("gate_active_version", self.active_version.map(|v| v as f64)),
            ("gate_score_p50", self.score_p50),
            ("gate_score_p95", self.score_p95),
        ];
        for (k, v) in opt {
            if let Some(v) = v {
                m.insert(k.into(), v);
            }
        }
    }

    /// Writes the metrics and the note into `manifest` (call before saving it).
    pub fn apply(&self, manifest: &mut ModelManifest) {
        self.write_metrics(&mut manifest.training.metrics);
        let mut notes = match manifest.notes.take() {
            Some(n) if !n.is_empty() => format!("{}; {n}", self.note),
            _ => self.note.clone(),
        };
        // Stay within the manifest's notes cap (4096 bytes).
        if notes.len() > 4000 {
            let mut cut = 4000;
            while !notes.is_char_boundary(cut) {
                cut -= 1;
            }
            notes.truncate(cut);
        }
        manifest.notes = Some(notes);
    }
}

/// Manifest metric of the verdict: 1 passed, 0 failed.
pub const GATE_PASSED: &str = "gate_passed";
/// Manifest metric: 1 when the version may be published, 0 when not.
pub const GATE_PUBLISHABLE: &str = "gate_publishable";

/// Whether a saved version may be published without forcing: its gate passed
/// or was skipped; versions from before the gate (no `gate_*` keys) are.
pub fn publishable(manifest: &ModelManifest) -> bool {
    let m = &manifest.training.metrics;
    match m.get(GATE_PUBLISHABLE) {
        Some(v) => *v != 0.0,
        None => m.get(GATE_PASSED).is_none_or(|v| *v != 0.0),
    }
}

/// Two-sample Kolmogorov–Smirnov statistic (largest gap between the empirical CDFs).
pub fn ks_statistic(a: &[f64], b: &[f64]) -> f64 {
    if a.is_empty() || b.is_empty() {
        return 0.0;
    }
    let mut a: Vec<f64> = a.to_vec();
    let mut b: Vec<f64> = b.to_vec();
    a.sort_by(f64::total_cmp);
    b.sort_by(f64::total_cmp);
    let (mut i, mut j, mut d) = (0usize, 0usize, 0f64);
    while i < a.len() && j < b.len() {
        let x = a[i].min(b[j]);
        while i < a.len() && a[i] <= x {
            i += 1;
        }
        while j < b.len() && b[j] <= x {
            j += 1;
        }
        d = d.max((i as f64 / a.len() as f64 - j as f64 / b.len() as f64).abs());
    }
    d
}

fn quantile(v: &[f64], q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    Some(sad_models::detector::quantile_sorted(&s, q))
}

/// Judges `candidate` against `active` (none: first version) with `cfg`.
pub fn evaluate(
    cfg: &GateConfig,
    candidate: &ScoredHoldout,
    active: Option<&ActiveScored>,
) -> GateVerdict {
    let mut reasons = Vec::new();
    let rate_c = candidate.alert_rate();
    let prf = candidate.prf();
    let label_rate = candidate.labels.as_deref().map(rate);
    // More alerts than the cap are fine only where the labels call that many samples anomalous.
    let mut allowed = cfg
        .max_alert_rate
        .max(label_rate.map_or(0.0, |l| l + cfg.alert_rate_margin));
    let mut active_rate = None;
    let mut ks = None;
    let mut active_f1 = None;
    if candidate.scores.is_empty() {
        reasons.push("no holdout sample could be scored".to_string());
    }
    if let Some(a) = active {
        let r = a.holdout.alert_rate();
        active_rate = Some(r);
        allowed = allowed.min((r * cfg.alert_rate_factor).max(r + cfg.alert_rate_margin));
        let k = ks_statistic(&candidate.scores, &a.holdout.scores);
        ks = Some(k);
        if let Some(max) = cfg.max_ks
            && k > max
        {
            reasons.push(format!("score distribution moved: ks {k:.3} > {max:.3}"));
        }
        active_f1 = a.holdout.prf().map(|(_, _, f)| f);
        if let (Some((_, _, f)), Some(af)) = (prf, active_f1)
            && f < af - cfg.max_f1_drop
        {
            reasons.push(format!(
                "f1 dropped from {af:.3} to {f:.3} (more than {:.3})",
                cfg.max_f1_drop
            ));
        }
    }
    if rate_c > allowed + 1e-12 {
        reasons.push(format!(
            "alert rate {rate_c:.3} above the allowed {allowed:.3}"
        ));
    }
    let passed = reasons.is_empty();
    let mut note = match (passed, active) {
        (true, None) => format!(
            "quality gate passed (first version, nothing to compare): alert rate {rate_c:.3} on {} holdout samples",
            candidate.scores.len()
        ),
        (true, Some(a)) => format!(
            "quality gate passed against v{}: alert rate {rate_c:.3} (active {:.3}), ks {:.3}",
            a.version,
            active_rate.unwrap_or(0.0),
            ks.unwrap_or(0.0)
        ),
        (false, _) => format!("quality gate failed: {}", reasons.join("; ")),
    };
    if let Some((_, _, f)) = prf {
        note.push_str(&format!(", f1 {f:.3}"));
    }
    GateVerdict {
        passed,
        skipped: false,
        publishable: passed,
        first_version: active.is_none(),
        holdout_samples: candidate.scores.len(),
        alert_rate: Some(rate_c),
        active_alert_rate: active_rate,
        allowed_alert_rate: Some(allowed),
        ks,
        precision: prf.map(|p| p.0),
        recall: prf.map(|p| p.1),
        f1: prf.map(|p| p.2),
        active_f1,
        active_version: active.map(|a| a.version),
        score_p50: quantile(&candidate.scores, 0.5),
        score_p95: quantile(&candidate.scores, 0.95),
        reasons,
        note,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` scores spread over `[lo, hi)`, flagged above `threshold`.
    fn scored(n: usize, lo: f64, hi: f64, threshold: f64) -> ScoredHoldout {
        let scores: Vec<f64> = (0..n)
            .map(|i| lo + (hi - lo) * i as f64 / n as f64)
            .collect();
        let flagged = scores.iter().map(|s| *s > threshold).collect();
        ScoredHoldout {
            scores,
            flagged,
            labels: None,
        }
    }

    fn active(h: ScoredHoldout) -> ActiveScored {
        ActiveScored {
            version: 3,
            holdout: h,
        }
    }

    #[test]
    fn a_candidate_like_the_active_one_passes() {
        let a = active(scored(100, 0.0, 0.6, 0.5)); // ~17% alerts
        let c = scored(100, 0.0, 0.58, 0.5);
        let v = evaluate(&GateConfig::default(), &c, Some(&a));
        assert!(v.passed && v.publishable, "{v:?}");
        assert!(v.ks.unwrap() < 0.1);
        assert_eq!(v.active_version, Some(3));
        assert!(v.note.starts_with("quality gate passed against v3"));
    }

    #[test]
    fn a_candidate_that_alerts_on_everything_fails_even_as_first_version() {
        let a = active(scored(100, 0.0, 0.55, 0.5));
        let c = scored(100, 0.0, 0.55, -1.0); // threshold below every score
        let v = evaluate(&GateConfig::default(), &c, Some(&a));
        assert!(!v.passed && !v.publishable);
        assert_eq!(v.alert_rate, Some(1.0));
        assert!(v.reasons[0].contains("alert rate 1.000"), "{v:?}");
        let first = evaluate(&GateConfig::default(), &c, None);
        assert!(!first.passed && first.first_version);
        let mut m = BTreeMap::new();
        v.write_metrics(&mut m);
        assert_eq!(m["gate_passed"], 0.0);
        assert_eq!(m["gate_publishable"], 0.0);
        assert_eq!(m["gate_alert_rate"], 1.0);
    }

    #[test]
    fn a_first_version_with_a_sane_alert_rate_passes_with_a_note() {
        let v = evaluate(&GateConfig::default(), &scored(50, 0.0, 0.6, 0.5), None);
        assert!(v.passed && v.first_version);
        assert!(v.note.contains("first version"));
    }

    #[test]
    fn doubling_a_small_alert_rate_within_the_margin_passes_but_more_fails() {
        let a = active(scored(100, 0.0, 0.52, 0.5)); // 3% alerts
        // allowed = max(2 * 0.03, 0.03 + 0.05) = 0.08
        let ok = scored(100, 0.0, 0.54, 0.5); // 7%
        assert!(evaluate(&GateConfig::default(), &ok, Some(&a)).passed);
        let bad = scored(100, 0.0, 0.6, 0.5); // ~17%
        let v = evaluate(&GateConfig::default(), &bad, Some(&a));
        assert!(!v.passed);
        assert!((v.allowed_alert_rate.unwrap() - 0.08).abs() < 1e-9);
    }

    #[test]
    fn labels_change_the_verdict() {
        // Anomalies are the last 30 samples; the active model finds them.
        let labels: Vec<bool> = (0..100).map(|i| i >= 70).collect();
        let mut a = scored(100, 0.0, 1.0, 0.695);
        a.labels = Some(labels.clone());
        // The candidate flags a similar number of samples, but the wrong ones.
        let scores: Vec<f64> = (0..100).map(|i| 1.0 - i as f64 / 100.0).collect();
        let flagged = scores.iter().map(|s| *s > 0.705).collect();
        let mut c = ScoredHoldout {
            scores,
            flagged,
            labels: None,
        };
        // Without labels the two look alike and the candidate passes...
        let mut a_unlabelled = a.clone();
        a_unlabelled.labels = None;
        assert!(evaluate(&GateConfig::default(), &c, Some(&active(a_unlabelled))).passed);
        // ...with labels its F1 collapses and it fails.
        c.labels = Some(labels);
        let v = evaluate(&GateConfig::default(), &c, Some(&active(a)));
        assert!(!v.passed, "{v:?}");
        assert_eq!(v.f1, Some(0.0));
        assert!(v.active_f1.unwrap() > 0.9);
        assert!(v.reasons.iter().any(|r| r.contains("f1 dropped")));
    }

    #[test]
    fn labels_allow_a_high_alert_rate_when_that_many_samples_are_anomalous() {
        let mut c = scored(100, 0.0, 1.0, 0.3); // 70% alerts
        c.labels = Some((0..100).map(|i| i >= 30).collect());
        let v = evaluate(&GateConfig::default(), &c, None);
        assert!(v.passed, "{v:?}");
        assert!(v.f1.unwrap() > 0.99);
    }

    #[test]
    fn the_ks_statistic_measures_the_gap_between_distributions() {
        let a: Vec<f64> = (0..100).map(|i| i as f64 / 100.0).collect();
        assert_eq!(ks_statistic(&a, &a), 0.0);
        let b: Vec<f64> = a.iter().map(|x| x + 2.0).collect();
        assert_eq!(ks_statistic(&a, &b), 1.0);
        let c: Vec<f64> = a.iter().map(|x| x + 0.5).collect();
        assert!((ks_statistic(&a, &c) - 0.5).abs() < 0.02);
        let cfg = GateConfig {
            max_ks: Some(0.3),
            ..GateConfig::default()
        };
        let v = evaluate(
            &cfg,
            &scored(100, 0.5, 1.0, 2.0),
            Some(&active(scored(100, 0.0, 0.5, 2.0))),
        );
        assert!(!v.passed && v.reasons[0].contains("ks"));
    }

    #[test]
    fn skipped_and_pre_gate_versions_are_publishable() {
        let s = GateVerdict::skipped("gate: false in the request");
        assert!(s.publishable && !s.passed);
        let mut m = BTreeMap::new();
        s.write_metrics(&mut m);
        assert_eq!(m["gate_skipped"], 1.0);
        assert!(!m.contains_key("gate_passed"));
        assert!(GateConfig::default().validate().is_ok());
        assert!(
            GateConfig {
                holdout_fraction: 0.0,
                ..GateConfig::default()
            }
            .validate()
            .is_err()
        );
    }
}
