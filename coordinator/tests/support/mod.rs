//! Helpers of the coordinator's integration tests: a private Mosquitto and a
//! private tansu (Kafka protocol) broker (from the `sad-tests` harness), a
//! fake agent and alerts.
#![allow(dead_code, missing_docs)]

use std::time::{Duration, Instant};

use sad_common::wire::Severity;
use sad_common::{Alert, FeatureContribution, ModelKind};

// The process helpers live in the sad-tests harness, shared with the
// agent's tests and the cross-process fault tests.
#[allow(unused_imports)] // each test binary uses a different subset
pub use sad_tests::{Mosquitto, Tansu, free_port, skip_kafka, tansu_bin, wait_until_async};

/// An alert of `agent` with `seq`.
pub fn alert(agent: &str, seq: u64, series: &str, ts_ms: i64) -> Alert {
    Alert {
        agent_id: agent.into(),
        seq,
        series: series.into(),
        ts_ms,
        model: "iforest".into(),
        model_kind: ModelKind::IsolationForest,
        model_version: 1,
        score: 0.9,
        raw_score: 0.7,
        threshold: 0.5,
        severity: Severity::Warning,
        episode_id: 1,
        explanation: vec![FeatureContribution {
            feature: "f0".into(),
            weight: 1.0,
        }],
        values: vec![1.0, 2.0, 3.0],
        label: None,
    }
}

/// Now in ms since the epoch.
pub fn now_ms() -> i64 {
    sad_agent::heartbeat::now_ms()
}

/// A fake agent: publishes AlertBatch frames and records the acks it gets.
pub struct FakeAgent {
    pub agent_id: String,
    pub client: rumqttc::AsyncClient,
    /// (time received, ack) in arrival order.
    pub acks: std::sync::Arc<std::sync::Mutex<Vec<(Instant, u64)>>>,
    topics: sad_common::Topics,
    task: tokio::task::JoinHandle<()>,
}

impl FakeAgent {
    /// Connects to the broker on `port` and subscribes to its acks topic; waits for the SUBACK.
    pub async fn connect(port: u16, agent_id: &str) -> FakeAgent {
        use rumqttc::{Event, Incoming, MqttOptions, QoS};
        let topics = sad_common::Topics::default();
        let mut opts = MqttOptions::new(format!("{agent_id}-{}", free_port()), "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(5))
            .set_max_packet_size(32 << 20, 32 << 20)
            .set_inflight(1000);
        let (client, mut eventloop) = rumqttc::AsyncClient::new(opts, 1000);
        let acks = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
        let task = {
            let (client, acks, topic) =
                (client.clone(), acks.clone(), topics.acks(agent_id).unwrap());
            tokio::spawn(async move {
                let mut subscribed_tx = Some(subscribed_tx);
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                            client
                                .subscribe(topic.clone(), QoS::AtLeastOnce)
                                .await
                                .unwrap();
                        }
                        Ok(Event::Incoming(Incoming::SubAck(_))) => {
                            if let Some(tx) = subscribed_tx.take() {
                                let _ = tx.send(());
                            }
                        }
                        Ok(Event::Incoming(Incoming::Publish(p))) => {
                            if let Ok(ack) =
                                sad_common::frame::decode::<sad_common::Ack>(&p.payload)
                            {
                                acks.lock().unwrap().push((Instant::now(), ack.up_to_seq));
                            }
                        }
                        Ok(_) => {}
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
            })
        };
        tokio::time::timeout(Duration::from_secs(10), subscribed_rx)
            .await
            .expect("fake agent subscribed")
            .unwrap();
        FakeAgent {
            agent_id: agent_id.into(),
            client,
            acks,
            topics,
            task,
        }
    }

    /// Publishes raw bytes on this agent's alerts topic (QoS 1).
    pub async fn publish_raw(&self, bytes: Vec<u8>) {
        self.client
            .publish(
                self.topics.alerts(&self.agent_id).unwrap(),
                rumqttc::QoS::AtLeastOnce,
                false,
                bytes,
            )
            .await
            .unwrap();
    }

    /// Publishes alerts `seqs` (series `s{seq % 7}`, event time now) as one batch.
    pub async fn send(&self, seqs: impl IntoIterator<Item = u64>) {
        let now = now_ms();
        let batch = sad_common::AlertBatch {
            agent_id: self.agent_id.clone(),
            alerts: seqs
                .into_iter()
                .map(|s| alert(&self.agent_id, s, &format!("s{}", s % 7), now))
                .collect(),
        };
        self.publish_raw(sad_common::frame::encode(&batch).unwrap())
            .await;
    }

    /// Highest ack received so far (0 = none).
    pub fn acked(&self) -> u64 {
        self.acks
            .lock()
            .unwrap()
            .iter()
            .map(|(_, s)| *s)
            .max()
            .unwrap_or(0)
    }
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A temp dir with a store in it.
pub fn temp_store() -> (tempfile::TempDir, sad_coordinator::store::AlertStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = sad_coordinator::store::AlertStore::open(&sad_coordinator::store::StoreConfig::at(
        dir.path().join("store"),
    ))
    .unwrap();
    (dir, store)
}
