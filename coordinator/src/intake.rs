//! MQTT alert intake: agents' alert batches in, acks out only for what is durable.
//!
//! # Per alert batch (`{p}/agents/{id}/alerts`, QoS 1)
//!
//! 1. decode and validate the frame ([`sad_common::frame::decode`]); a
//!    malformed frame, or one whose agent differs from its topic, is counted
//!    in `frames_rejected_total{reason}` and skipped;
//! 2. [`AlertStore::insert_batch`] (deduplicated by `alert_id`, fsynced) on
//!    the blocking pool, retried with backoff while it fails;
//! 3. [`AlertSink::deliver`] of **every** alert of the batch (new and
//!    duplicate: a duplicate may come from a crash between store and Kafka),
//!    waiting for every delivery report, retried with backoff while Kafka
//!    fails: intake slows down and acks wait, nothing is acked that is not
//!    durable in the store and, with Kafka, in Kafka;
//! 4. an [`Ack`] on `{p}/agents/{id}/acks` (QoS 1) when [`AckLedger`] says
//!    the cumulative `up_to_seq` is covered; only then
//! 5. the MQTT PUBACK (manual acks), so a coordinator killed mid-batch leaves
//!    the publish with the broker, which re-delivers it to the next session.
//!
//! Status frames update the [`Fleet`]; samples are kept in the fleet's small
//! in-memory buffer.
//!
//! # Group commit
//!
//! Publishes are taken from the queue in groups: whatever is queued when one
//! arrives, up to [`MAX_GROUP_PUBLISHES`]. The alert batches of a group go
//! through steps 2 and 3 together (one store write and fsync, one wait for
//! all delivery reports), then each agent gets one cumulative ack and every
//! publish of the group its PUBACK, in arrival order. An agent with many
//! batches in flight is thus drained at many batches per store and Kafka
//! round trip instead of one; a lone batch is handled as soon as it arrives.
//!
//! # Which ack is safe ([`AckLedger`])
//!
//! Acks are cumulative, so acking `up_to_seq = last seq of a batch` also
//! deletes every earlier unacked alert at the agent. The ledger acks a batch
//! `first..=last` when the alerts before `first` are known to be handled:
//! the batch continues (or overlaps) what this process already acked for
//! that agent, or the store already holds every seq in the gap, or the agent
//! sent a batch starting at `first` before (its go-back-N re-send starts at
//! its oldest unacked alert, so the gap holds only alerts it dropped).
//! The first batch of an agent after a coordinator start is trusted to start
//! at the agent's oldest unacked alert. With several replicas sharing a
//! `$share/` group, batches of one agent can be split across replicas; each
//! replica acks only what it stored, but a replica that crashed between
//! receiving and storing a batch relies on the agent's re-send after
//! `resend_after` (the broker re-delivers the un-PUBACKed publish too).
//!
//! Nothing here is persisted; the store is the durable state.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, Publish, QoS};
use sad_common::{
    Ack, Alert, AlertBatch, Heartbeat, LabelCounts, Samples, TopicError, TopicKind, Topics, frame,
};
use thiserror::Error;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::fleet::Fleet;
use crate::kafka::AlertSink;
use crate::metrics::CoordinatorMetrics;
use crate::store::AlertStore;

/// Largest gap the ledger checks against the store, seq by seq.
pub const MAX_GAP_CHECK: u64 = 10_000;

/// Most publishes handled as one group (one store write, one wait for Kafka).
pub const MAX_GROUP_PUBLISHES: usize = 64;

/// Where the intake connects and what it subscribes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntakeConfig {
    /// Broker URL, `mqtt://host:port` (TLS is not supported by the intake yet).
    pub mqtt_url: String,
    /// Topic prefix (default `sad/v1`).
    pub topic_prefix: String,
    /// Share group of replicas; `None` = plain subscriptions. The filters are
    /// `$share/{group}.alerts/...`, `$share/{group}.status/...`, `$share/{group}.samples/...`.
    pub share_group: Option<String>,
    /// MQTT client id; the session is persistent, so keep it stable per replica.
    pub client_id: String,
}

/// Why the intake could not run.
#[derive(Debug, Error)]
pub enum IntakeError {
    /// The broker URL is invalid or asks for TLS.
    #[error("intake broker url {url:?}: {reason}")]
    Url {
        /// The URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The topic prefix or share group is invalid.
    #[error("intake topics: {0}")]
    Topic(#[from] TopicError),
}

/// Decides the cumulative ack per agent; pure bookkeeping, see the module docs.
#[derive(Debug, Default)]
pub struct AckLedger {
    agents: HashMap<String, AgentLedger>,
}

#[derive(Debug, Default)]
struct AgentLedger {
    /// Highest seq acked (everything up to it is handled).
    high: u64,
    /// Starts of batches that arrived after a gap, to recognise re-sends.
    gap_starts: BTreeSet<u64>,
}

impl AckLedger {
    /// The ack for a stored batch `first..=last` of `agent`, if one is safe now.
    ///
    /// `stored(lo, hi)` answers whether the store holds every seq in `lo..=hi`.
    pub fn on_stored(
        &mut self,
        agent: &str,
        first: u64,
        last: u64,
        stored: impl FnOnce(u64, u64) -> bool,
    ) -> Option<u64> {
        let Some(l) = self.agents.get_mut(agent) else {
            self.agents.insert(
                agent.to_string(),
                AgentLedger {
                    high: last,
                    gap_starts: BTreeSet::new(),
                },
            );
            return Some(last);
        };
        let accept = first <= l.high.saturating_add(1)
            || (first - l.high - 1 <= MAX_GAP_CHECK && stored(l.high + 1, first - 1))
            || l.gap_starts.contains(&first);
        if accept {
            l.high = l.high.max(last);
            l.gap_starts.retain(|s| *s > l.high);
            Some(l.high)
        } else {
            l.gap_starts.insert(first);
            while l.gap_starts.len() > 64 {
                l.gap_starts.pop_first();
            }
            None
        }
    }

    /// The highest seq acked for `agent` so far.
    pub fn acked(&self, agent: &str) -> Option<u64> {
        self.agents.get(agent).map(|l| l.high)
    }
}

fn now_ms() -> i64 {
    sad_agent::heartbeat::now_ms()
}

/// Backoff for retries of the store and the sink: 100 ms doubling to 5 s.
struct Retry(Duration);

impl Retry {
    fn new() -> Self {
        Retry(Duration::from_millis(100))
    }
    async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let d = self.0;
        self.0 = (self.0 * 2).min(Duration::from_secs(5));
        tokio::select! {
            _ = shutdown.cancelled() => false,
            _ = tokio::time::sleep(d) => true,
        }
    }
}

struct Ctx {
    topics: Topics,
    store: AlertStore,
    sink: Arc<AlertSink>,
    fleet: Fleet,
    metrics: CoordinatorMetrics,
    client: AsyncClient,
    ledger: AckLedger,
    shutdown: CancellationToken,
    quality: Option<Arc<crate::quality::Quality>>,
}

impl Ctx {
    fn reject(&self, reason: &str, topic: &str, error: &dyn std::fmt::Display) {
        self.metrics
            .frames_rejected
            .with_label_values(&[reason])
            .inc();
        tracing::warn!(topic, reason, error = %error, "rejected frame");
    }

    /// Handles a group of publishes taken from the queue together; `false`
    /// when shutdown interrupted it (no PUBACK then). Status, quality and
    /// samples frames are applied one by one; the alert batches of the whole
    /// group share one store write and one wait for Kafka's delivery reports.
    async fn handle_group(&mut self, group: &[Publish]) -> bool {
        let mut batches: Vec<(String, Vec<Alert>)> = Vec::new();
        for p in group {
            let kind = match self.topics.parse(&p.topic) {
                Ok(k) => k,
                Err(e) => {
                    self.reject("topic", &p.topic, &e);
                    continue;
                }
            };
            match kind {
                TopicKind::Alerts { agent_id } => {
                    if let Some(alerts) = self.decode_alerts(&agent_id, p) {
                        batches.push((agent_id, alerts));
                    }
                }
                other => self.handle_other(other, p),
            }
        }
        if batches.is_empty() {
            return true;
        }
        self.alerts(batches).await
    }

    /// Applies a status, quality or samples frame.
    fn handle_other(&mut self, kind: TopicKind, p: &Publish) {
        match kind {
            TopicKind::Status { agent_id } => {
                if p.payload.is_empty() {
                    return; // a cleared retained status
                }
                match frame::decode::<Heartbeat>(&p.payload) {
                    Ok(hb) if hb.agent_id == agent_id => self.fleet.record(hb, now_ms()),
                    Ok(hb) => self.reject("agent_mismatch", &p.topic, &hb.agent_id),
                    Err(e) => self.reject("status", &p.topic, &e),
                }
            }
            TopicKind::Quality { agent_id } => {
                if p.payload.is_empty() {
                    return;
                }
                match frame::decode::<LabelCounts>(&p.payload) {
                    Ok(c) if c.agent_id == agent_id => {
                        if let Some(q) = &self.quality {
                            q.record_agent_counts(&c);
                        }
                    }
                    Ok(c) => self.reject("agent_mismatch", &p.topic, &c.agent_id),
                    Err(e) => self.reject("quality", &p.topic, &e),
                }
            }
            TopicKind::Samples { agent_id } => match frame::decode::<Samples>(&p.payload) {
                Ok(s) if s.agent_id == agent_id => self.fleet.record_samples(s),
                Ok(s) => self.reject("agent_mismatch", &p.topic, &s.agent_id),
                Err(e) => self.reject("samples", &p.topic, &e),
            },
            _ => {}
        }
    }

    /// Step 1: the alerts of a valid, non-empty batch frame from `agent_id`.
    fn decode_alerts(&self, agent_id: &str, p: &Publish) -> Option<Vec<Alert>> {
        match frame::decode::<AlertBatch>(&p.payload) {
            Ok(b) if b.agent_id == agent_id => {
                self.metrics.alerts_received.inc_by(b.alerts.len() as u64);
                (!b.alerts.is_empty()).then_some(b.alerts)
            }
            Ok(b) => {
                self.reject("agent_mismatch", &p.topic, &b.agent_id);
                None
            }
            Err(e) => {
                self.reject("alert_batch", &p.topic, &e);
                None
            }
        }
    }

    /// Steps 2-4 for the alert batches of one group, in arrival order.
    async fn alerts(&mut self, batches: Vec<(String, Vec<Alert>)>) -> bool {
        let spans: Vec<(String, u64, u64)> = batches
            .iter()
            .map(|(agent, a)| {
                let first = a.iter().map(|x| x.seq).min().unwrap_or(0);
                let last = a.iter().map(|x| x.seq).max().unwrap_or(0);
                (agent.clone(), first, last)
            })
            .collect();
        let alerts: Arc<Vec<Alert>> = Arc::new(batches.into_iter().flat_map(|(_, a)| a).collect());

        // 2. store, fsynced once for the group, on the blocking pool.
        let mut retry = Retry::new();
        let (outcome, fresh) = loop {
            let (store, a) = (self.store.clone(), alerts.clone());
            // Which alerts this write adds: they count as detected and their
            // labels judge the model once.
            let job = move || store.insert_batch_marked(&a);
            match tokio::task::spawn_blocking(job).await {
                Ok(Ok(o)) => break o,
                Ok(Err(e)) => tracing::error!(error = %e, "cannot store alerts"),
                Err(e) => tracing::error!(error = %e, "store worker failed"),
            }
            if !retry.wait(&self.shutdown).await {
                return false;
            }
        };
        self.metrics
            .alerts_duplicate
            .inc_by(outcome.duplicates as u64);
        self.metrics.stored_alerts.set(self.store.len() as f64);

        // 3. Kafka (or nothing), every delivery report, new and duplicate alerts alike.
        let mut retry = Retry::new();
        loop {
            match self.sink.deliver(&alerts).await {
                Ok(()) => break,
                Err(e) => tracing::warn!(error = %e, "alerts not delivered, retrying"),
            }
            if !retry.wait(&self.shutdown).await {
                return false;
            }
        }
        for (a, _) in alerts.iter().zip(&fresh).filter(|(_, f)| **f) {
            self.metrics
                .anomalies_detected
                .with_label_values(&[a.model_kind.as_str(), a.severity.as_str()])
                .inc();
            if let (Some(q), Some(label)) = (&self.quality, a.label) {
                q.record_alert(&a.model, Some(label));
            }
        }

        // 4. one cumulative ack per agent, as far as the ledger says is safe.
        let mut acks: Vec<(String, u64)> = Vec::new();
        for (agent_id, first, last) in &spans {
            let store = self.store.clone();
            let stored = |lo: u64, hi: u64| {
                (lo..=hi).all(|s| store.contains(&format!("{agent_id}:{s}")).unwrap_or(false))
            };
            match self.ledger.on_stored(agent_id, *first, *last, stored) {
                Some(up_to) => match acks.iter_mut().find(|(a, _)| a == agent_id) {
                    Some(slot) => slot.1 = slot.1.max(up_to),
                    None => acks.push((agent_id.clone(), up_to)),
                },
                None => {
                    tracing::debug!(agent_id, first, last, "batch after a gap: not acked yet")
                }
            }
        }
        for (agent_id, up_to_seq) in acks {
            let topic = match self.topics.acks(&agent_id) {
                Ok(t) => t,
                Err(e) => {
                    self.reject("topic", &agent_id, &e);
                    continue;
                }
            };
            let ack = Ack {
                agent_id: agent_id.clone(),
                up_to_seq,
            };
            match frame::encode(&ack) {
                Ok(bytes) => {
                    if let Err(e) = self
                        .client
                        .publish(topic, QoS::AtLeastOnce, false, bytes)
                        .await
                    {
                        tracing::warn!(error = %e, agent_id, "cannot publish ack");
                    }
                }
                Err(e) => tracing::error!(error = %e, "cannot encode ack"),
            }
        }
        let now = now_ms();
        let lag = self.metrics.intake_lag.with_label_values::<&str>(&[]);
        for a in alerts.iter() {
            lag.observe((now - a.ts_ms).max(0) as f64 / 1000.0);
        }
        true
    }
}

/// The MQTT options of the intake: persistent session, manual PUBACKs, large packets.
fn mqtt_options(cfg: &IntakeConfig) -> Result<MqttOptions, IntakeError> {
    let addr = sad_agent::uplink::parse_url(&cfg.mqtt_url).map_err(|e| IntakeError::Url {
        url: cfg.mqtt_url.clone(),
        reason: e.to_string(),
    })?;
    if addr.tls {
        return Err(IntakeError::Url {
            url: cfg.mqtt_url.clone(),
            reason: "tls is not supported by the intake yet".into(),
        });
    }
    let mut o = MqttOptions::new(cfg.client_id.clone(), addr.host, addr.port);
    o.set_keep_alive(Duration::from_secs(10))
        .set_clean_session(false)
        .set_manual_acks(true)
        .set_inflight(100)
        .set_max_packet_size(32 << 20, 32 << 20);
    Ok(o)
}

/// Runs the intake until `shutdown` is cancelled; reconnects by itself.
pub async fn run_intake(
    cfg: IntakeConfig,
    store: AlertStore,
    sink: Arc<AlertSink>,
    fleet: Fleet,
    metrics: CoordinatorMetrics,
    shutdown: CancellationToken,
) -> Result<(), IntakeError> {
    run_intake_with_quality(cfg, store, sink, fleet, metrics, None, shutdown).await
}

/// [`run_intake`] that also judges every newly stored alert that carries a
/// label (a replayed benchmark's ground truth) in `quality`, for real-time
/// precision per model.
pub async fn run_intake_with_quality(
    cfg: IntakeConfig,
    store: AlertStore,
    sink: Arc<AlertSink>,
    fleet: Fleet,
    metrics: CoordinatorMetrics,
    quality: Option<Arc<crate::quality::Quality>>,
    shutdown: CancellationToken,
) -> Result<(), IntakeError> {
    let topics = Topics::new(&cfg.topic_prefix)?;
    let filters = match &cfg.share_group {
        // One share group per filter: rumqttd 0.20 keeps one cursor per group
        // name, so a group spanning several filters loses messages there.
        Some(g) => vec![
            topics.shared_alerts(&format!("{g}.alerts"))?,
            topics.shared_status(&format!("{g}.status"))?,
            topics.shared_samples(&format!("{g}.samples"))?,
            // Cumulative counters, retained: every replica reads them all.
            topics.all_quality(),
        ],
        None => vec![
            topics.all_alerts(),
            topics.all_status(),
            topics.all_samples(),
            topics.all_quality(),
        ],
    };
    let opts = mqtt_options(&cfg)?;
    let (client, mut eventloop) = AsyncClient::new(opts, 256);
    let (tx, mut rx) = mpsc::channel::<Publish>(1024);

    let poller = {
        let (client, shutdown) = (client.clone(), shutdown.clone());
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(100);
            loop {
                let ev = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    ev = eventloop.poll() => ev,
                };
                match ev {
                    Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                        delay = Duration::from_millis(100);
                        tracing::info!("intake connected");
                        // Subscribe from another task: this one must keep polling,
                        // because the request queue the subscriptions go through
                        // may be full of acks queued during the outage, and only
                        // polling drains it (awaiting here deadlocked the intake
                        // after a broker restart).
                        let (client, filters) = (client.clone(), filters.clone());
                        tokio::spawn(async move {
                            for f in filters {
                                if let Err(e) = client.subscribe(f.clone(), QoS::AtLeastOnce).await
                                {
                                    tracing::warn!(error = %e, filter = %f, "cannot subscribe");
                                }
                            }
                        });
                    }
                    Ok(Event::Incoming(Incoming::Publish(p))) => {
                        if tx.send(p).await.is_err() {
                            break;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "intake connection lost");
                        tokio::select! {
                            _ = shutdown.cancelled() => break,
                            _ = tokio::time::sleep(delay) => {}
                        }
                        delay = (delay * 2).min(Duration::from_secs(5));
                    }
                }
            }
            // Best effort: let the disconnect go out.
            let _ = client.try_disconnect();
            let _ = tokio::time::timeout(Duration::from_millis(200), eventloop.poll()).await;
        })
    };

    let mut ctx = Ctx {
        topics,
        store,
        sink,
        fleet,
        metrics,
        client: client.clone(),
        ledger: AckLedger::default(),
        shutdown: shutdown.clone(),
        quality,
    };
    loop {
        let p = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = rx.recv() => match p { Some(p) => p, None => break },
        };
        // Group commit: whatever else is already queued goes in the same round.
        let mut group = vec![p];
        while group.len() < MAX_GROUP_PUBLISHES {
            match rx.try_recv() {
                Ok(p) => group.push(p),
                Err(_) => break,
            }
        }
        if !ctx.handle_group(&group).await {
            break;
        }
        for p in group.iter().filter(|p| p.qos != QoS::AtMostOnce) {
            if let Err(e) = client.ack(p).await {
                tracing::warn!(error = %e, "cannot puback");
            }
        }
    }
    shutdown.cancel();
    let _ = poller.await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_batch_of_an_agent_is_acked_to_its_last_seq() {
        let mut l = AckLedger::default();
        assert_eq!(l.on_stored("a", 5, 9, |_, _| false), Some(9));
        assert_eq!(l.acked("a"), Some(9));
    }

    #[test]
    fn contiguous_and_overlapping_batches_extend_the_ack() {
        let mut l = AckLedger::default();
        l.on_stored("a", 1, 10, |_, _| false);
        assert_eq!(l.on_stored("a", 11, 20, |_, _| false), Some(20));
        // A re-send of old alerts acks what is already acked, never less.
        assert_eq!(l.on_stored("a", 3, 8, |_, _| false), Some(20));
        assert_eq!(l.on_stored("b", 1, 1, |_, _| false), Some(1));
    }

    #[test]
    fn a_batch_after_a_lost_one_is_not_acked_until_the_gap_is_filled() {
        let mut l = AckLedger::default();
        l.on_stored("a", 1, 10, |_, _| false);
        assert_eq!(l.on_stored("a", 21, 30, |_, _| false), None);
        assert_eq!(l.acked("a"), Some(10));
        // The agent re-sends from its oldest unacked alert.
        assert_eq!(l.on_stored("a", 11, 20, |_, _| false), Some(20));
        assert_eq!(l.on_stored("a", 21, 30, |_, _| false), Some(30));
    }

    #[test]
    fn a_gap_already_in_the_store_does_not_block_the_ack() {
        let mut l = AckLedger::default();
        l.on_stored("a", 1, 10, |_, _| false);
        let mut asked = None;
        let got = l.on_stored("a", 21, 30, |lo, hi| {
            asked = Some((lo, hi));
            true
        });
        assert_eq!(asked, Some((11, 20)));
        assert_eq!(got, Some(30));
    }

    #[test]
    fn a_repeated_start_after_a_gap_means_the_agent_dropped_the_gap() {
        let mut l = AckLedger::default();
        l.on_stored("a", 1, 4, |_, _| false);
        assert_eq!(l.on_stored("a", 6, 10, |_, _| false), None);
        assert_eq!(l.on_stored("a", 6, 10, |_, _| false), Some(10));
    }
}
