//! Precision and recall per model, in real time.
//!
//! Two sources feed the same counters:
//! - **labels** carried by the data: an alert whose `label` is set (a replayed
//!   benchmark marks each event) counts as a true or false positive, and a
//!   labelled event seen by central detection counts towards recall;
//! - **operator feedback** on an alert (`POST /api/v1/alerts/{id}/feedback`),
//!   which overrides the alert's own label; changing one's mind moves the
//!   alert from one column to the other instead of counting it twice.
//!
//! - **agents' labelled streams**: agents count their labelled events per
//!   model and publish the cumulative counters (`LabelCounts`, retained on
//!   `{p}/agents/{id}/quality`); the coordinator adds what changed since the
//!   agent's previous report (all of it after the agent restarted), so
//!   fleet-wide recall covers the edge too.
//!
//! precision = TP / (TP + FP) over judged alerts;
//! recall = labelled anomalies detected / labelled anomalies, known only when
//! labelled events were seen. Both are `None` until they have a denominator.
//! Models are bounded by [`MAX_MODELS`] so a hostile model name cannot grow
//! the map (or the Prometheus label set) without limit.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use sad_common::{LabelCounts, LabelledOutcomes};

use serde::Serialize;

use crate::metrics::CoordinatorMetrics;

/// Most models tracked; further names are counted under [`OTHER_MODEL`].
pub const MAX_MODELS: usize = 256;
/// Bucket of models past [`MAX_MODELS`].
pub const OTHER_MODEL: &str = "_other";

/// Counters of one model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ModelCounts {
    /// Judged alerts that were real anomalies.
    pub true_positives: u64,
    /// Judged alerts that were not.
    pub false_positives: u64,
    /// Labelled anomalous events seen (recall's denominator).
    pub labelled_anomalies: u64,
    /// Labelled anomalous events the model flagged.
    pub labelled_detected: u64,
    /// Labelled normal events seen.
    pub labelled_normal: u64,
    /// Labelled normal events the model flagged.
    pub labelled_false_alarms: u64,
}

impl ModelCounts {
    /// TP / (TP + FP), `None` without judged alerts.
    pub fn precision(&self) -> Option<f64> {
        let n = self.true_positives + self.false_positives;
        (n > 0).then(|| self.true_positives as f64 / n as f64)
    }

    /// Detected / labelled anomalies, `None` without labelled anomalies.
    pub fn recall(&self) -> Option<f64> {
        (self.labelled_anomalies > 0)
            .then(|| self.labelled_detected as f64 / self.labelled_anomalies as f64)
    }

    /// Share of labelled events decided correctly, `None` without labelled events.
    pub fn accuracy(&self) -> Option<f64> {
        let n = self.labelled_anomalies + self.labelled_normal;
        (n > 0).then(|| {
            let right =
                self.labelled_detected + (self.labelled_normal - self.labelled_false_alarms);
            right as f64 / n as f64
        })
    }
}

/// One model's quality as the JSON metrics show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelQuality {
    /// Model name.
    pub model: String,
    /// The raw counters.
    #[serde(flatten)]
    pub counts: ModelCounts,
    /// TP / (TP + FP).
    pub precision: Option<f64>,
    /// Detected / labelled anomalies.
    pub recall: Option<f64>,
    /// Correct decisions / labelled events.
    pub accuracy: Option<f64>,
}

/// Per-model precision and recall, exported to Prometheus as they change.
pub struct Quality {
    models: Mutex<BTreeMap<String, ModelCounts>>,
    metrics: Option<CoordinatorMetrics>,
    /// Last counters per (agent, model), with the agent's start time.
    agents: Mutex<HashMap<(String, String), (i64, LabelledOutcomes)>>,
}

impl Quality {
    /// A tracker that also sets the precision, recall and accuracy gauges of `metrics`.
    pub fn new(metrics: Option<CoordinatorMetrics>) -> Self {
        Self {
            models: Mutex::new(BTreeMap::new()),
            metrics,
            agents: Mutex::new(HashMap::new()),
        }
    }

    fn update(&self, model: &str, f: impl FnOnce(&mut ModelCounts)) {
        let mut map = self.models.lock().unwrap_or_else(|e| e.into_inner());
        let key = if map.contains_key(model) || map.len() < MAX_MODELS {
            model
        } else {
            OTHER_MODEL
        };
        let counts = map.entry(key.to_string()).or_default();
        f(counts);
        let c = *counts;
        drop(map);
        if let Some(m) = &self.metrics {
            if let Some(p) = c.precision() {
                m.precision.with_label_values(&[key]).set(p);
            }
            if let Some(r) = c.recall() {
                m.recall.with_label_values(&[key]).set(r);
            }
            if let Some(a) = c.accuracy().or(c.precision()) {
                m.model_accuracy.with_label_values(&[key]).set(a);
            }
        }
    }

    /// An alert arrived; its `label` (if any) judges it.
    pub fn record_alert(&self, model: &str, label: Option<bool>) {
        if let Some(l) = label {
            self.update(model, |c| {
                if l {
                    c.true_positives += 1
                } else {
                    c.false_positives += 1
                }
            });
        }
    }

    /// An operator judged an alert; `previous` is the judgement it had
    /// (its earlier feedback, else its label), which is undone first.
    pub fn record_feedback(&self, model: &str, previous: Option<bool>, true_positive: bool) {
        if previous == Some(true_positive) {
            return;
        }
        self.update(model, |c| {
            match previous {
                Some(true) => c.true_positives = c.true_positives.saturating_sub(1),
                Some(false) => c.false_positives = c.false_positives.saturating_sub(1),
                None => {}
            }
            if true_positive {
                c.true_positives += 1
            } else {
                c.false_positives += 1
            }
        });
    }

    /// A labelled event was scored (central detection or a replay).
    pub fn record_labelled_event(&self, model: &str, anomalous: bool, flagged: bool) {
        self.update(model, |c| {
            if anomalous {
                c.labelled_anomalies += 1;
                c.labelled_detected += u64::from(flagged);
            } else {
                c.labelled_normal += 1;
                c.labelled_false_alarms += u64::from(flagged);
            }
        });
    }

    /// An agent's cumulative labelled-event counters: adds what changed since
    /// its previous report (everything when it restarted or is new).
    pub fn record_agent_counts(&self, counts: &LabelCounts) {
        for (model, now) in &counts.models {
            let delta = {
                let mut agents = self.agents.lock().unwrap_or_else(|e| e.into_inner());
                let key = (counts.agent_id.clone(), model.clone());
                let prev = agents.insert(key, (counts.started_ms, *now));
                match prev {
                    Some((started, p))
                        if started == counts.started_ms
                            && now.anomalies >= p.anomalies
                            && now.detected >= p.detected
                            && now.normal >= p.normal
                            && now.false_alarms >= p.false_alarms =>
                    {
                        LabelledOutcomes {
                            anomalies: now.anomalies - p.anomalies,
                            detected: now.detected - p.detected,
                            normal: now.normal - p.normal,
                            false_alarms: now.false_alarms - p.false_alarms,
                        }
                    }
                    _ => *now,
                }
            };
            if delta
                == (LabelledOutcomes {
                    anomalies: 0,
                    detected: 0,
                    normal: 0,
                    false_alarms: 0,
                })
            {
                continue;
            }
            self.update(model, |c| {
                c.labelled_anomalies += delta.anomalies;
                c.labelled_detected += delta.detected;
                c.labelled_normal += delta.normal;
                c.labelled_false_alarms += delta.false_alarms;
            });
        }
    }

    /// The counters of one model.
    pub fn get(&self, model: &str) -> Option<ModelCounts> {
        self.models
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(model)
            .copied()
    }

    /// Every model's quality, by name.
    pub fn snapshot(&self) -> Vec<ModelQuality> {
        self.models
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(model, c)| ModelQuality {
                model: model.clone(),
                counts: *c,
                precision: c.precision(),
                recall: c.recall(),
                accuracy: c.accuracy(),
            })
            .collect()
    }

    /// Counters summed over every model.
    pub fn total(&self) -> ModelCounts {
        let map = self.models.lock().unwrap_or_else(|e| e.into_inner());
        map.values()
            .fold(ModelCounts::default(), |a, c| ModelCounts {
                true_positives: a.true_positives + c.true_positives,
                false_positives: a.false_positives + c.false_positives,
                labelled_anomalies: a.labelled_anomalies + c.labelled_anomalies,
                labelled_detected: a.labelled_detected + c.labelled_detected,
                labelled_normal: a.labelled_normal + c.labelled_normal,
                labelled_false_alarms: a.labelled_false_alarms + c.labelled_false_alarms,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labelled_alerts_give_precision_and_unlabelled_ones_are_not_judged() {
        let q = Quality::new(None);
        q.record_alert("m", Some(true));
        q.record_alert("m", Some(true));
        q.record_alert("m", Some(false));
        q.record_alert("m", None);
        let c = q.get("m").unwrap();
        assert_eq!((c.true_positives, c.false_positives), (2, 1));
        assert!((c.precision().unwrap() - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(c.recall(), None);
    }

    #[test]
    fn feedback_that_changes_its_mind_moves_the_alert_instead_of_counting_twice() {
        let q = Quality::new(None);
        q.record_feedback("m", None, false);
        q.record_feedback("m", Some(false), true);
        q.record_feedback("m", Some(true), true);
        let c = q.get("m").unwrap();
        assert_eq!((c.true_positives, c.false_positives), (1, 0));
        assert_eq!(c.precision(), Some(1.0));
    }

    #[test]
    fn labelled_events_give_recall_and_accuracy() {
        let q = Quality::new(None);
        for (anomalous, flagged) in [(true, true), (true, false), (false, false), (false, true)] {
            q.record_labelled_event("m", anomalous, flagged);
        }
        let c = q.get("m").unwrap();
        assert_eq!(c.recall(), Some(0.5));
        assert_eq!(c.accuracy(), Some(0.5));
    }

    #[test]
    fn gauges_follow_the_counters_and_model_names_are_bounded() {
        let m = CoordinatorMetrics::new().unwrap();
        let q = Quality::new(Some(m.clone()));
        q.record_alert("m", Some(true));
        q.record_labelled_event("m", true, false);
        assert_eq!(m.precision.with_label_values(&["m"]).get(), 1.0);
        assert_eq!(m.recall.with_label_values(&["m"]).get(), 0.0);
        for i in 0..MAX_MODELS + 10 {
            q.record_alert(&format!("x{i}"), Some(false));
        }
        assert!(q.snapshot().len() <= MAX_MODELS + 1);
        assert!(q.get(OTHER_MODEL).unwrap().false_positives >= 10);
    }

    #[test]
    fn agent_counters_add_their_increase_and_restart_from_zero_after_a_restart() {
        let q = Quality::new(None);
        let report = |started_ms, anomalies, detected, normal, false_alarms| LabelCounts {
            agent_id: "a1".into(),
            started_ms,
            models: vec![(
                "m".into(),
                LabelledOutcomes {
                    anomalies,
                    detected,
                    normal,
                    false_alarms,
                },
            )],
        };
        q.record_agent_counts(&report(1, 4, 2, 100, 5));
        q.record_agent_counts(&report(1, 4, 2, 100, 5)); // a repeat adds nothing
        q.record_agent_counts(&report(1, 10, 6, 200, 7));
        let c = q.get("m").unwrap();
        assert_eq!((c.labelled_anomalies, c.labelled_detected), (10, 6));
        assert_eq!((c.labelled_normal, c.labelled_false_alarms), (200, 7));
        // the agent restarted: its counters start again and add in full
        q.record_agent_counts(&report(2, 2, 2, 10, 0));
        let c = q.get("m").unwrap();
        assert_eq!((c.labelled_anomalies, c.labelled_detected), (12, 8));
        assert!((c.recall().unwrap() - 8.0 / 12.0).abs() < 1e-12);
    }
}
