//! Status the agent reports: counters the pipeline bumps, a rolling score
//! summary, a reservoir sample of recent feature rows for central retraining,
//! and the process's resident memory.
//!
//! Nothing here is persisted; counters restart at zero with the process.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sad_common::wire::{ScoreSummary, limits, validate_id};
use sad_common::{Heartbeat, LabelCounts, LabelledOutcomes, ModelStatus, Samples};

/// Event counters shared by the pipeline (which increments them) and the heartbeat.
#[derive(Clone, Default, Debug)]
pub struct Counters {
    /// Events scored.
    pub events: Arc<AtomicU64>,
    /// Alerts raised.
    pub anomalies: Arc<AtomicU64>,
    /// Inputs skipped as bad.
    pub bad_input: Arc<AtomicU64>,
    /// Outcomes on labelled events per model, published for fleet-wide recall.
    pub labelled: Arc<Mutex<BTreeMap<String, LabelledOutcomes>>>,
}

impl Counters {
    /// Counts one labelled event of `model`: whether it was anomalous and whether it was flagged.
    pub fn record_labelled(&self, model: &str, anomalous: bool, flagged: bool) {
        let mut m = self.labelled.lock().unwrap_or_else(|e| e.into_inner());
        if !m.contains_key(model) && m.len() >= limits::MAX_MODELS_PER_HEARTBEAT {
            return;
        }
        let o = m.entry(model.to_string()).or_insert(LabelledOutcomes {
            anomalies: 0,
            detected: 0,
            normal: 0,
            false_alarms: 0,
        });
        if anomalous {
            o.anomalies += 1;
            o.detected += u64::from(flagged);
        } else {
            o.normal += 1;
            o.false_alarms += u64::from(flagged);
        }
    }

    /// The labelled-event counters per model, by name.
    pub fn labelled_snapshot(&self) -> Vec<(String, LabelledOutcomes)> {
        let m = self.labelled.lock().unwrap_or_else(|e| e.into_inner());
        m.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    /// The labelled-event counters as a [`LabelCounts`] message, `None` before any labelled event.
    pub fn label_counts(&self, agent_id: &str, started_ms: i64) -> Option<LabelCounts> {
        let models = self.labelled_snapshot();
        (!models.is_empty()).then(|| LabelCounts {
            agent_id: agent_id.to_string(),
            started_ms,
            models,
        })
    }

    /// `(events, anomalies, bad_input)` now.
    pub fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.events.load(Ordering::Relaxed),
            self.anomalies.load(Ordering::Relaxed),
            self.bad_input.load(Ordering::Relaxed),
        )
    }
}

/// Rows sampled for one model.
#[derive(Debug, Clone)]
struct ModelSample {
    feature_names: Vec<String>,
    seen: u64,
    rows: Vec<Vec<f64>>,
}

/// Fixed-capacity reservoir sampling (Algorithm R, seeded) of feature rows, per model name.
///
/// Every row offered since the last [`Reservoir::drain`] has the same chance
/// `capacity / seen` to be in the sample. A model whose feature names change
/// (a new version) starts a fresh sample.
#[derive(Debug)]
pub struct Reservoir {
    capacity: usize,
    rng: StdRng,
    models: BTreeMap<String, ModelSample>,
}

/// Most models sampled at once (bounds memory when model names churn).
const MAX_SAMPLED_MODELS: usize = limits::MAX_MODELS_PER_HEARTBEAT;

impl Reservoir {
    /// A reservoir keeping up to `capacity` rows per model (capped at the wire limit).
    pub fn new(capacity: usize, seed: u64) -> Self {
        Reservoir {
            capacity: capacity.min(limits::MAX_SAMPLE_ROWS),
            rng: StdRng::seed_from_u64(seed),
            models: BTreeMap::new(),
        }
    }

    /// Offers one row of `model`; rows with non-finite values or the wrong width are ignored.
    pub fn offer(&mut self, model: &str, feature_names: &[String], row: &[f64]) {
        if self.capacity == 0
            || row.len() != feature_names.len()
            || row.is_empty()
            || row.iter().any(|v| !v.is_finite())
        {
            return;
        }
        let width_cap = (limits::MAX_SAMPLE_VALUES / row.len()).min(self.capacity);
        if width_cap == 0 {
            return;
        }
        if !self.models.contains_key(model) {
            if self.models.len() >= MAX_SAMPLED_MODELS || validate_id("model", model).is_err() {
                return;
            }
            self.models.insert(
                model.to_string(),
                ModelSample {
                    feature_names: feature_names.to_vec(),
                    seen: 0,
                    rows: Vec::new(),
                },
            );
        }
        let Some(s) = self.models.get_mut(model) else {
            return;
        };
        if s.feature_names != feature_names {
            s.feature_names = feature_names.to_vec();
            s.seen = 0;
            s.rows.clear();
        }
        s.seen += 1;
        if s.rows.len() < width_cap {
            s.rows.push(row.to_vec());
        } else {
            let j = self.rng.gen_range(0..s.seen);
            if let Ok(j) = usize::try_from(j)
                && j < s.rows.len()
            {
                s.rows[j].clear();
                s.rows[j].extend_from_slice(row);
            }
        }
    }

    /// Rows held across all models.
    pub fn len(&self) -> usize {
        self.models.values().map(|s| s.rows.len()).sum()
    }

    /// Whether no row is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes every model's sample as a [`Samples`] message and starts afresh.
    pub fn drain(&mut self, agent_id: &str) -> Vec<Samples> {
        std::mem::take(&mut self.models)
            .into_iter()
            .filter(|(_, s)| !s.rows.is_empty())
            .map(|(model, s)| Samples {
                agent_id: agent_id.to_string(),
                model,
                feature_names: s.feature_names,
                rows: s.rows,
            })
            .collect()
    }
}

/// Rolling summary of recent calibrated scores, for the heartbeat.
#[derive(Debug, Clone)]
pub struct ScoreStats {
    capacity: usize,
    recent: VecDeque<f64>,
    alerted: VecDeque<bool>,
    alerts_in_window: usize,
}

impl Default for ScoreStats {
    fn default() -> Self {
        ScoreStats::new(1024)
    }
}

impl ScoreStats {
    /// Keeps the last `capacity` scores (at least 1).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        ScoreStats {
            capacity,
            recent: VecDeque::with_capacity(capacity),
            alerted: VecDeque::with_capacity(capacity),
            alerts_in_window: 0,
        }
    }

    /// Records one scored event; non-finite scores are ignored.
    pub fn record(&mut self, score: f64, flagged: bool) {
        if !score.is_finite() {
            return;
        }
        if self.recent.len() == self.capacity {
            self.recent.pop_front();
            if self.alerted.pop_front() == Some(true) {
                self.alerts_in_window -= 1;
            }
        }
        self.recent.push_back(score);
        self.alerted.push_back(flagged);
        if flagged {
            self.alerts_in_window += 1;
        }
    }

    /// Count, mean, p50/p95/p99 and alert rate of the window; `None` when empty.
    pub fn summary(&self) -> Option<ScoreSummary> {
        if self.recent.is_empty() {
            return None;
        }
        let mut sorted: Vec<f64> = self.recent.iter().copied().collect();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let q = |p: f64| sad_models::detector::quantile_sorted(&sorted, p);
        Some(ScoreSummary {
            count: n as u64,
            mean: sorted.iter().sum::<f64>() / n as f64,
            p50: q(0.5),
            p95: q(0.95),
            p99: q(0.99),
            alert_rate: self.alerts_in_window as f64 / n as f64,
        })
    }
}

/// Resident memory of this process in bytes, from `/proc/self/status` (0 where unavailable).
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| parse_vm_rss(&s))
        .unwrap_or(0)
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// What a heartbeat reports besides the counters; see [`build_heartbeat`].
#[derive(Debug, Clone)]
pub struct StatusInputs {
    /// Agent id.
    pub agent_id: String,
    /// Canary group, if any.
    pub group: Option<String>,
    /// Send time in milliseconds since the Unix epoch.
    pub ts_ms: i64,
    /// Seconds since start.
    pub uptime_s: u64,
    /// Whether this is an online status (false for the last will and the final status).
    pub online: bool,
    /// Running models.
    pub models: Vec<ModelStatus>,
    /// Unacknowledged alerts.
    pub outbox_depth: u64,
    /// Outbox bytes.
    pub outbox_bytes: u64,
}

/// Assembles a [`Heartbeat`] from its inputs, the counters and the score summary.
pub fn build_heartbeat(
    inputs: StatusInputs,
    counters: &Counters,
    scores: Option<ScoreSummary>,
) -> Heartbeat {
    let (events, anomalies, bad_input) = counters.snapshot();
    let mut models = inputs.models;
    models.truncate(limits::MAX_MODELS_PER_HEARTBEAT);
    Heartbeat {
        agent_id: inputs.agent_id,
        ts_ms: inputs.ts_ms,
        online: inputs.online,
        uptime_s: inputs.uptime_s,
        models,
        events_processed: events,
        anomalies,
        bad_input,
        outbox_depth: inputs.outbox_depth,
        outbox_bytes: inputs.outbox_bytes,
        rss_bytes: rss_bytes(),
        group: inputs.group,
        score_summary: scores,
    }
}

/// When this process first asked, in ms since the epoch: the epoch of the
/// labelled-event counters, which restart with the process.
pub fn process_started_ms() -> i64 {
    static START: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *START.get_or_init(now_ms)
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("f{i}")).collect()
    }

    #[test]
    fn the_reservoir_keeps_every_row_until_full_then_stays_at_capacity() {
        let mut r = Reservoir::new(10, 1);
        let n = names(2);
        for i in 0..5 {
            r.offer("m", &n, &[i as f64, 0.0]);
        }
        assert_eq!(r.len(), 5);
        for i in 5..1000 {
            r.offer("m", &n, &[i as f64, 0.0]);
        }
        assert_eq!(r.len(), 10);
        let s = r.drain("edge-1");
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].rows.len(), 10);
        assert_eq!(s[0].feature_names, n);
        s[0].validate().unwrap();
        assert!(r.is_empty());
        assert!(r.drain("edge-1").is_empty());
    }

    #[test]
    fn the_reservoir_skips_bad_rows_and_restarts_when_features_change() {
        let mut r = Reservoir::new(10, 1);
        r.offer("m", &names(2), &[f64::NAN, 1.0]);
        r.offer("m", &names(2), &[1.0]);
        r.offer("bad/name", &names(1), &[1.0]);
        assert!(r.is_empty());
        r.offer("m", &names(2), &[1.0, 2.0]);
        r.offer("m", &names(3), &[1.0, 2.0, 3.0]);
        let s = r.drain("edge-1");
        assert_eq!(s[0].rows, vec![vec![1.0, 2.0, 3.0]]);
    }

    #[test]
    fn reservoir_sampling_is_roughly_uniform_over_the_stream() {
        // 20 runs x 100 slots over 1000 rows: the mean sampled index is near 500.
        let mut total = 0.0;
        let mut count = 0.0;
        for seed in 0..20 {
            let mut r = Reservoir::new(100, seed);
            for i in 0..1000 {
                r.offer("m", &names(1), &[i as f64]);
            }
            for row in &r.drain("a")[0].rows {
                total += row[0];
                count += 1.0;
            }
        }
        let mean = total / count;
        assert!((400.0..600.0).contains(&mean), "mean index {mean}");
    }

    #[test]
    fn score_stats_summarise_the_recent_window() {
        let mut s = ScoreStats::new(100);
        assert!(s.summary().is_none());
        for i in 0..200 {
            s.record(f64::from(i) / 200.0, i % 10 == 0);
        }
        s.record(f64::NAN, true);
        let sum = s.summary().unwrap();
        assert_eq!(sum.count, 100);
        assert!((sum.mean - 0.7475).abs() < 1e-9, "{sum:?}");
        assert!((sum.p50 - 0.7475).abs() < 1e-9);
        assert!(sum.p95 > sum.p50 && sum.p99 >= sum.p95);
        assert!((sum.alert_rate - 0.1).abs() < 1e-9);
        sum.validate().unwrap();
    }

    #[test]
    fn rss_is_read_from_proc_status() {
        assert_eq!(
            parse_vm_rss("Name:\tx\nVmRSS:\t  1234 kB\n"),
            Some(1234 * 1024)
        );
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
        if cfg!(target_os = "linux") {
            assert!(rss_bytes() > 0);
        }
    }

    #[test]
    fn a_heartbeat_carries_counters_and_validates() {
        let c = Counters::default();
        c.events.fetch_add(10, Ordering::Relaxed);
        c.bad_input.fetch_add(2, Ordering::Relaxed);
        let hb = build_heartbeat(
            StatusInputs {
                agent_id: "edge-1".into(),
                group: Some("canary".into()),
                ts_ms: now_ms(),
                uptime_s: 5,
                online: true,
                models: vec![],
                outbox_depth: 3,
                outbox_bytes: 300,
            },
            &c,
            ScoreStats::default().summary(),
        );
        assert_eq!(
            (hb.events_processed, hb.bad_input, hb.anomalies),
            (10, 2, 0)
        );
        hb.validate().unwrap();
    }

    proptest! {
        #[test]
        fn the_reservoir_never_exceeds_capacity_and_only_holds_offered_rows(
            cap in 0usize..20, rows in prop::collection::vec(-1e6f64..1e6, 0..300), seed in any::<u64>()
        ) {
            let mut r = Reservoir::new(cap, seed);
            let n = names(1);
            for v in &rows { r.offer("m", &n, &[*v]); }
            prop_assert!(r.len() <= cap);
            prop_assert_eq!(r.len(), cap.min(rows.len()));
            for s in r.drain("a") {
                for row in s.rows { prop_assert!(rows.contains(&row[0])); }
            }
        }
    }
}
