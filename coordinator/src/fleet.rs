//! The fleet as the coordinator sees it: agents by id, from their heartbeats
//! (status topic, the last will included), and their latest samples.
//!
//! Pure bookkeeping behind a mutex; the clock is passed in. Every update
//! refreshes the Prometheus fleet gauges (agents online, outbox depth and
//! model version per agent). Nothing here is persisted: after a restart the
//! retained status messages on the broker rebuild the view.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sad_common::{Heartbeat, Samples};
use serde::Serialize;

use crate::metrics::CoordinatorMetrics;

/// Samples messages kept per agent and model by default.
pub const DEFAULT_SAMPLES_PER_AGENT: usize = 8;

/// One agent, for the API and the dashboard.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentView {
    /// Agent id.
    pub agent_id: String,
    /// Whether its last status said online (and it has not gone silent).
    pub online: bool,
    /// When the coordinator last heard from it (ms since the epoch).
    pub last_seen_ms: i64,
    /// Its last heartbeat.
    pub heartbeat: Heartbeat,
}

#[derive(Default)]
struct State {
    agents: BTreeMap<String, AgentView>,
    /// Latest samples per (agent, model), newest last.
    samples: BTreeMap<(String, String), VecDeque<Samples>>,
}

/// Agents by id; cheap to clone (an `Arc` inside).
#[derive(Clone)]
pub struct Fleet {
    state: Arc<Mutex<State>>,
    metrics: Option<CoordinatorMetrics>,
    samples_per_agent: usize,
}

impl Fleet {
    /// An empty fleet that updates `metrics` (if any).
    pub fn new(metrics: Option<CoordinatorMetrics>) -> Self {
        Self {
            state: Arc::default(),
            metrics,
            samples_per_agent: DEFAULT_SAMPLES_PER_AGENT,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn refresh_online(&self, st: &State) {
        if let Some(m) = &self.metrics {
            m.agents_online
                .set(st.agents.values().filter(|a| a.online).count() as i64);
        }
    }

    /// Records a heartbeat received at `now_ms`; an older heartbeat than the one held is ignored.
    pub fn record(&self, hb: Heartbeat, now_ms: i64) {
        let mut st = self.lock();
        if let Some(prev) = st.agents.get(&hb.agent_id)
            && prev.heartbeat.ts_ms > hb.ts_ms
        {
            return;
        }
        if let Some(m) = &self.metrics {
            m.agent_outbox_depth
                .with_label_values(&[&hb.agent_id])
                .set(hb.outbox_depth as i64);
            for model in &hb.models {
                m.agent_model_version
                    .with_label_values(&[&hb.agent_id, &model.name])
                    .set(model.version as i64);
            }
        }
        st.agents.insert(
            hb.agent_id.clone(),
            AgentView {
                agent_id: hb.agent_id.clone(),
                online: hb.online,
                last_seen_ms: now_ms,
                heartbeat: hb,
            },
        );
        self.refresh_online(&st);
    }

    /// Marks agents silent for longer than `after` as offline; returns how many changed.
    pub fn expire(&self, now_ms: i64, after: Duration) -> usize {
        let mut st = self.lock();
        let cutoff = now_ms.saturating_sub(after.as_millis() as i64);
        let mut changed = 0;
        for a in st.agents.values_mut() {
            if a.online && a.last_seen_ms < cutoff {
                a.online = false;
                changed += 1;
            }
        }
        self.refresh_online(&st);
        changed
    }

    /// Every agent, by id.
    pub fn agents(&self) -> Vec<AgentView> {
        self.lock().agents.values().cloned().collect()
    }

    /// One agent.
    pub fn agent(&self, agent_id: &str) -> Option<AgentView> {
        self.lock().agents.get(agent_id).cloned()
    }

    /// Agents online now.
    pub fn online(&self) -> usize {
        self.lock().agents.values().filter(|a| a.online).count()
    }

    /// Keeps a samples message; only the latest few per agent and model are held.
    pub fn record_samples(&self, samples: Samples) {
        let cap = self.samples_per_agent;
        let mut st = self.lock();
        let q = st
            .samples
            .entry((samples.agent_id.clone(), samples.model.clone()))
            .or_default();
        q.push_back(samples);
        while q.len() > cap {
            q.pop_front();
        }
    }

    /// The samples held for `model`, from every agent, oldest first per agent.
    pub fn samples(&self, model: &str) -> Vec<Samples> {
        self.lock()
            .samples
            .iter()
            .filter(|((_, m), _)| m == model)
            .flat_map(|(_, q)| q.iter().cloned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sad_common::{ModelKind, ModelStatus};

    fn hb(agent: &str, ts_ms: i64, online: bool) -> Heartbeat {
        Heartbeat {
            agent_id: agent.into(),
            ts_ms,
            online,
            uptime_s: 1,
            models: vec![ModelStatus {
                name: "iforest".into(),
                kind: ModelKind::IsolationForest,
                version: 3,
            }],
            events_processed: 10,
            anomalies: 1,
            bad_input: 0,
            outbox_depth: 7,
            outbox_bytes: 700,
            rss_bytes: 1 << 20,
            group: None,
            score_summary: None,
        }
    }

    #[test]
    fn heartbeats_and_last_wills_drive_the_online_count_and_gauges() {
        let m = CoordinatorMetrics::new().unwrap();
        let f = Fleet::new(Some(m.clone()));
        f.record(hb("a", 1, true), 100);
        f.record(hb("b", 1, true), 100);
        assert_eq!(f.online(), 2);
        f.record(hb("b", 2, false), 200);
        assert_eq!(f.online(), 1);
        assert_eq!(m.agents_online.get(), 1);
        // A stale heartbeat does not resurrect the agent.
        f.record(hb("b", 1, true), 300);
        assert_eq!(f.online(), 1);
        let text = m.encode();
        assert!(text.contains("anomaly_detector_agent_outbox_depth{agent=\"a\"} 7"));
        assert!(
            text.contains("anomaly_detector_agent_model_version{agent=\"a\",model=\"iforest\"} 3")
        );
        assert_eq!(f.agents().len(), 2);
        assert!(!f.agent("b").unwrap().online);
    }

    #[test]
    fn silent_agents_expire_to_offline() {
        let f = Fleet::new(None);
        f.record(hb("a", 1, true), 1_000);
        f.record(hb("b", 1, true), 9_000);
        assert_eq!(f.expire(10_000, Duration::from_secs(5)), 1);
        assert_eq!(f.online(), 1);
        assert!(f.agent("b").unwrap().online);
    }

    #[test]
    fn only_the_latest_samples_are_kept() {
        let f = Fleet::new(None);
        for i in 0..20 {
            f.record_samples(Samples {
                agent_id: "a".into(),
                model: "m".into(),
                feature_names: vec!["x".into()],
                rows: vec![vec![i as f64]],
            });
        }
        let held = f.samples("m");
        assert_eq!(held.len(), DEFAULT_SAMPLES_PER_AGENT);
        assert_eq!(held.last().unwrap().rows[0][0], 19.0);
        assert!(f.samples("other").is_empty());
    }
}
