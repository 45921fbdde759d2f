//! Drift of a deployed model version: are its scores and its inputs still
//! what they were when it was trained?
//!
//! A pure tracker ([`DriftTracker`]) fed with what the fleet reports:
//! - **score drift**: the reference score distribution of a version (median,
//!   95th percentile and alert rate of its calibrated scores on the gate's
//!   holdout, read from the manifest's `gate_score_p50`, `gate_score_p95`,
//!   `gate_alert_rate`; without those, the first
//!   [`DriftConfig::reference_rounds`] assessments with heartbeats become the
//!   reference) against the [`ScoreSummary`] of recent heartbeats of agents
//!   running that version; the shift is the largest of the differences in
//!   p50, p95 and alert rate (count-weighted over agents);
//! - **feature drift**: the mean of fleet samples per feature against the
//!   manifest's scaler (the training mean and standard deviation): the mean
//!   absolute standardised shift of the feature means.
//!
//! A version has drifted when either shift exceeds its threshold in
//! [`DriftConfig`]; with `retrain_on_drift` the status asks for retraining,
//! which the caller passes on to the retrain loop
//! ([`crate::training::RetrainQueue`]). Nothing is persisted: after a restart
//! references come back from the manifests or are rebuilt from heartbeats.
//!
//! Heartbeats carry one score summary per agent, not per model, so only
//! agents that run just this one model contribute to its score drift.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use sad_common::{Heartbeat, ModelManifest, Samples, ScoreSummary, StandardScaler};

use crate::api::registry::ModelRegistry;
use crate::fleet::Fleet;

/// Thresholds of drift detection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DriftConfig {
    /// Largest shift of p50, p95 or alert rate (calibrated space) before drift (default 0.15).
    pub max_score_shift: f64,
    /// Largest mean absolute standardised shift of the feature means (default 0.5).
    pub max_feature_shift: f64,
    /// Fewest fleet sample rows for a feature-drift figure (default 50).
    pub min_sample_rows: usize,
    /// Fewest scores summed over heartbeats for a score-drift figure (default 100).
    pub min_scores: u64,
    /// Assessments with heartbeats that form the reference when the manifest has none (default 3).
    pub reference_rounds: usize,
    /// Whether a drifted model asks for retraining (default false).
    pub retrain_on_drift: bool,
}

impl Default for DriftConfig {
    fn default() -> Self {
        Self {
            max_score_shift: 0.15,
            max_feature_shift: 0.5,
            min_sample_rows: 50,
            min_scores: 100,
            reference_rounds: 3,
            retrain_on_drift: false,
        }
    }
}

/// A score distribution in calibrated space.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ScoreReference {
    /// Median score.
    pub p50: f64,
    /// 95th percentile score.
    pub p95: f64,
    /// Share of scores above the threshold.
    pub alert_rate: f64,
    /// Scores behind these figures.
    pub count: u64,
}

impl ScoreReference {
    /// The gate holdout's distribution recorded in a manifest, if any.
    pub fn from_manifest(m: &ModelManifest) -> Option<Self> {
        let g = |k: &str| m.training.metrics.get(k).copied();
        Some(Self {
            p50: g("gate_score_p50")?,
            p95: g("gate_score_p95")?,
            alert_rate: g("gate_alert_rate")?,
            count: g("gate_holdout").unwrap_or(0.0) as u64,
        })
    }

    /// The count-weighted mean of heartbeat summaries (`None` when no score is summarised).
    pub fn from_summaries(s: &[ScoreSummary]) -> Option<Self> {
        let count: u64 = s.iter().map(|x| x.count).sum();
        if count == 0 {
            return None;
        }
        let w = |f: fn(&ScoreSummary) -> f64| {
            s.iter().map(|x| f(x) * x.count as f64).sum::<f64>() / count as f64
        };
        Some(Self {
            p50: w(|x| x.p50),
            p95: w(|x| x.p95),
            alert_rate: w(|x| x.alert_rate),
            count,
        })
    }

    /// The largest absolute difference of p50, p95 and alert rate.
    pub fn shift(&self, other: &Self) -> f64 {
        (self.p50 - other.p50)
            .abs()
            .max((self.p95 - other.p95).abs())
            .max((self.alert_rate - other.alert_rate).abs())
    }
}

/// Mean absolute standardised shift of the per-feature means of `rows` from
/// the scaler's training means (`None` without rows or on a width mismatch).
pub fn feature_shift(scaler: &StandardScaler, rows: &[Vec<f64>]) -> Option<f64> {
    let n = scaler.n_features();
    if rows.is_empty() || n == 0 || rows.iter().any(|r| r.len() != n) {
        return None;
    }
    let total: f64 = (0..n)
        .map(|f| {
            let mean = rows.iter().map(|r| r[f]).sum::<f64>() / rows.len() as f64;
            let scale = if scaler.scale[f] > 0.0 {
                scaler.scale[f]
            } else {
                1.0
            };
            ((mean - scaler.mean[f]) / scale).abs()
        })
        .sum();
    Some(total / n as f64)
}

/// Drift of one model version.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DriftStatus {
    /// Model name.
    pub model: String,
    /// Version assessed.
    pub version: u64,
    /// Score shift against the reference (`None`: no reference or too few scores yet).
    pub score_shift: Option<f64>,
    /// Feature shift against the scaler (`None`: no scaler or too few sample rows).
    pub feature_shift: Option<f64>,
    /// Whether either shift is above its threshold.
    pub drifted: bool,
    /// Whether retraining is asked for (drifted and `retrain_on_drift`).
    pub retrain: bool,
    /// Agents whose heartbeats were used.
    pub agents: usize,
    /// Fleet sample rows used.
    pub sample_rows: usize,
    /// Where the score reference came from: `holdout`, `heartbeats`, or `none` yet.
    pub reference: &'static str,
}

#[derive(Debug, Clone, Default)]
struct Tracked {
    reference: Option<(ScoreReference, &'static str)>,
    warmup: Vec<ScoreSummary>,
    rounds: usize,
}

/// Score references per model version, and the assessment.
#[derive(Debug, Default)]
pub struct DriftTracker {
    cfg: DriftConfig,
    tracked: HashMap<(String, u64), Tracked>,
}

impl DriftTracker {
    /// A tracker with `cfg`.
    pub fn new(cfg: DriftConfig) -> Self {
        Self {
            cfg,
            tracked: HashMap::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &DriftConfig {
        &self.cfg
    }

    /// Sets the score reference of a version explicitly (e.g. from a gate holdout).
    pub fn set_reference(&mut self, model: &str, version: u64, r: ScoreReference) {
        self.tracked
            .entry((model.to_string(), version))
            .or_default()
            .reference = Some((r, "holdout"));
    }

    /// Assesses one version from its manifest, the score summaries of agents
    /// running it and fleet samples of its features.
    pub fn assess_model(
        &mut self,
        manifest: &ModelManifest,
        summaries: &[ScoreSummary],
        samples: &[Samples],
    ) -> DriftStatus {
        let cfg = self.cfg.clone();
        let t = self
            .tracked
            .entry((manifest.name.clone(), manifest.version))
            .or_default();
        if t.reference.is_none()
            && let Some(r) = ScoreReference::from_manifest(manifest)
        {
            t.reference = Some((r, "holdout"));
        }
        let recent = ScoreReference::from_summaries(summaries);
        let mut score_shift = None;
        match (&t.reference, recent) {
            (Some((r, _)), Some(now)) if now.count >= cfg.min_scores => {
                score_shift = Some(r.shift(&now));
            }
            (None, Some(_)) => {
                // No holdout reference: the first rounds after activation become it.
                t.warmup.extend_from_slice(summaries);
                t.rounds += 1;
                if t.rounds >= cfg.reference_rounds.max(1)
                    && let Some(r) = ScoreReference::from_summaries(&t.warmup)
                {
                    t.reference = Some((r, "heartbeats"));
                    t.warmup.clear();
                }
            }
            _ => {}
        }
        let rows: Vec<Vec<f64>> = samples
            .iter()
            .filter(|s| s.feature_names == manifest.feature_names)
            .flat_map(|s| s.rows.iter().cloned())
            .collect();
        let feature_shift = if rows.len() >= cfg.min_sample_rows {
            manifest
                .scaler
                .as_ref()
                .and_then(|sc| feature_shift(sc, &rows))
        } else {
            None
        };
        let drifted = score_shift.is_some_and(|s| s > cfg.max_score_shift)
            || feature_shift.is_some_and(|f| f > cfg.max_feature_shift);
        DriftStatus {
            model: manifest.name.clone(),
            version: manifest.version,
            score_shift,
            feature_shift,
            drifted,
            retrain: drifted && cfg.retrain_on_drift,
            agents: summaries.len(),
            sample_rows: rows.len(),
            reference: t.reference.as_ref().map_or("none", |(_, s)| s),
        }
    }

    /// Assesses every registered model from the fleet's current heartbeats
    /// (online agents running exactly that one model at that version) and its
    /// held samples. Call it from a periodic task; forgets versions no longer registered.
    pub fn assess(&mut self, registry: &ModelRegistry, fleet: &Fleet) -> Vec<DriftStatus> {
        let agents = fleet.agents();
        let models = registry.list();
        self.tracked.retain(|(name, version), _| {
            models
                .iter()
                .any(|m| &m.manifest.name == name && m.manifest.version == *version)
        });
        models
            .iter()
            .map(|m| {
                let summaries = summaries_for(
                    agents.iter().filter(|a| a.online).map(|a| &a.heartbeat),
                    &m.manifest.name,
                    m.manifest.version,
                );
                let samples = fleet.samples(&m.manifest.name);
                self.assess_model(&m.manifest, &summaries, &samples)
            })
            .collect()
    }
}

/// The score summaries of heartbeats that run only `model` at `version`.
pub fn summaries_for<'a>(
    heartbeats: impl Iterator<Item = &'a Heartbeat>,
    model: &str,
    version: u64,
) -> Vec<ScoreSummary> {
    heartbeats
        .filter(|hb| {
            hb.models.len() == 1 && hb.models[0].name == model && hb.models[0].version == version
        })
        .filter_map(|hb| hb.score_summary.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use sad_common::wire::TrainingInfo;
    use sad_common::{Calibration, ModelKind, ModelStatus};

    use super::*;

    fn manifest(metrics: &[(&str, f64)]) -> ModelManifest {
        ModelManifest {
            name: "m".into(),
            kind: ModelKind::IsolationForest,
            version: 2,
            parent_version: Some(1),
            created_ms: 0,
            feature_names: vec!["a".into(), "b".into()],
            window: 1,
            scaler: Some(StandardScaler {
                mean: vec![10.0, 0.0],
                scale: vec![2.0, 1.0],
            }),
            threshold: 0.5,
            calibration: Calibration::Identity,
            training: TrainingInfo {
                data: "x".into(),
                rows: 10,
                metrics: metrics
                    .iter()
                    .map(|(k, v)| (k.to_string(), *v))
                    .collect::<BTreeMap<_, _>>(),
            },
            payload_sha256: String::new(),
            payload_len: 0,
            restores: None,
            notes: None,
        }
    }

    fn summary(p50: f64, p95: f64, alert_rate: f64) -> ScoreSummary {
        ScoreSummary {
            count: 500,
            mean: p50,
            p50,
            p95,
            p99: p95,
            alert_rate,
        }
    }

    fn samples(rows: Vec<Vec<f64>>) -> Samples {
        Samples {
            agent_id: "a1".into(),
            model: "m".into(),
            feature_names: vec!["a".into(), "b".into()],
            rows,
        }
    }

    const HOLDOUT: [(&str, f64); 4] = [
        ("gate_score_p50", 0.1),
        ("gate_score_p95", 0.45),
        ("gate_alert_rate", 0.02),
        ("gate_holdout", 200.0),
    ];

    #[test]
    fn scores_like_the_holdout_are_not_drift_and_shifted_scores_are() {
        let m = manifest(&HOLDOUT);
        let mut t = DriftTracker::new(DriftConfig::default());
        let s = t.assess_model(&m, &[summary(0.12, 0.47, 0.03)], &[]);
        assert_eq!(s.reference, "holdout");
        assert!(s.score_shift.unwrap() < 0.05 && !s.drifted, "{s:?}");
        let s = t.assess_model(
            &m,
            &[summary(0.12, 0.47, 0.03), summary(0.5, 0.9, 0.4)],
            &[],
        );
        assert!(s.drifted && !s.retrain, "{s:?}");
        assert_eq!(s.agents, 2);
    }

    #[test]
    fn without_a_holdout_the_first_heartbeats_become_the_reference() {
        let m = manifest(&[]);
        let mut t = DriftTracker::new(DriftConfig {
            reference_rounds: 2,
            retrain_on_drift: true,
            ..DriftConfig::default()
        });
        for _ in 0..2 {
            let s = t.assess_model(&m, &[summary(0.1, 0.4, 0.01)], &[]);
            assert_eq!(s.score_shift, None);
        }
        let s = t.assess_model(&m, &[summary(0.1, 0.42, 0.01)], &[]);
        assert_eq!(s.reference, "heartbeats");
        assert!((s.score_shift.unwrap() - 0.02).abs() < 1e-9);
        let s = t.assess_model(&m, &[summary(0.4, 0.8, 0.3)], &[]);
        assert!(s.drifted && s.retrain);
    }

    #[test]
    fn feature_means_far_from_the_training_scaler_are_drift() {
        let m = manifest(&[]);
        let mut t = DriftTracker::new(DriftConfig::default());
        let near: Vec<Vec<f64>> = (0..60)
            .map(|i| vec![10.0 + (i % 3) as f64 - 1.0, 0.1])
            .collect();
        let s = t.assess_model(&m, &[], &[samples(near)]);
        assert!(s.feature_shift.unwrap() < 0.1 && !s.drifted, "{s:?}");
        let far: Vec<Vec<f64>> = (0..60).map(|_| vec![14.0, 1.0]).collect();
        let s = t.assess_model(&m, &[], &[samples(far.clone())]);
        // (|14-10|/2 + |1-0|/1) / 2 = 1.5
        assert!((s.feature_shift.unwrap() - 1.5).abs() < 1e-9);
        assert!(s.drifted);
        // Too few rows give no figure.
        let s = t.assess_model(&m, &[], &[samples(far[..10].to_vec())]);
        assert_eq!(s.feature_shift, None);
    }

    #[test]
    fn the_fleet_assessment_uses_single_model_agents_of_the_right_version() {
        let hb = |agent: &str, models: Vec<(&str, u64)>, p50: f64| Heartbeat {
            agent_id: agent.into(),
            ts_ms: 1,
            online: true,
            uptime_s: 1,
            models: models
                .into_iter()
                .map(|(n, v)| ModelStatus {
                    name: n.into(),
                    kind: ModelKind::IsolationForest,
                    version: v,
                })
                .collect(),
            events_processed: 0,
            anomalies: 0,
            bad_input: 0,
            outbox_depth: 0,
            outbox_bytes: 0,
            rss_bytes: 0,
            group: None,
            score_summary: Some(summary(p50, 0.5, 0.01)),
        };
        let hbs = [
            hb("a", vec![("m", 2)], 0.1),
            hb("b", vec![("m", 1)], 0.2),
            hb("c", vec![("m", 2), ("n", 1)], 0.3),
        ];
        let s = summaries_for(hbs.iter(), "m", 2);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].p50, 0.1);
    }
}
