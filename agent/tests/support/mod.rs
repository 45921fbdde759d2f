//! Shared helpers of the agent's durability tests: a private Mosquitto (from
//! the `sad-tests` harness), signed model bundles and alerts.
#![allow(dead_code, missing_docs)]

use std::time::Duration;

use ed25519_dalek::{Signer, SigningKey};
use sad_common::wire::{Severity, signed_bytes};
use sad_common::{Alert, FeatureContribution, ModelBundle, ModelKind, ModelManifest, frame};
use sad_models::bundle::{ManifestSpec, iforest_bundle};
use sad_models::iforest::IsolationForestParams;

/// The coordinator's signing key in tests (fixed seed).
pub fn signing_key() -> SigningKey {
    SigningKey::from_bytes(&[7u8; 32])
}

/// Some other key, for "wrong signer" tests.
pub fn other_key() -> SigningKey {
    SigningKey::from_bytes(&[9u8; 32])
}

/// A small Isolation Forest over `n_features` features as (manifest, payload).
pub fn forest(name: &str, version: u64, n_features: usize, seed: u64) -> (ModelManifest, Vec<u8>) {
    let rows: Vec<f64> = (0..256 * n_features)
        .map(|i| ((i * 7919 + seed as usize * 31) % 1000) as f64 / 1000.0)
        .collect();
    let params = IsolationForestParams {
        n_estimators: 20,
        seed,
        ..IsolationForestParams::default()
    };
    let f = params.fit(&rows, n_features).expect("fit");
    iforest_bundle(
        ManifestSpec {
            name: name.into(),
            version,
            parent_version: None,
            feature_names: (0..n_features).map(|i| format!("f{i}")).collect(),
            window: 1,
            scaler: None,
            training_data: "test rows".into(),
            training_rows: 256,
            metrics: Default::default(),
            created_ms: 1_700_000_000_000,
        },
        &f,
    )
}

/// A bundle signed by `key`.
pub fn signed(manifest: ModelManifest, payload: Vec<u8>, key: &SigningKey) -> ModelBundle {
    let sig = key.sign(&signed_bytes(&manifest, &payload));
    ModelBundle {
        manifest,
        payload,
        signature: sig.to_bytes().to_vec(),
    }
}

/// A framed, signed bundle of a fresh forest.
pub fn signed_frame(name: &str, version: u64, key: &SigningKey) -> Vec<u8> {
    let (m, p) = forest(name, version, 3, version);
    frame::encode(&signed(m, p, key)).unwrap()
}

/// An alert as the pipeline builds it (seq and agent filled by the outbox).
pub fn alert(severity: Severity, series: &str) -> Alert {
    Alert {
        agent_id: String::new(),
        seq: 0,
        series: series.into(),
        ts_ms: 1_700_000_000_000,
        model: "iforest".into(),
        model_kind: ModelKind::IsolationForest,
        model_version: 1,
        score: 0.9,
        raw_score: 0.7,
        threshold: 0.5,
        severity,
        episode_id: 1,
        explanation: vec![FeatureContribution {
            feature: "f0".into(),
            weight: 1.0,
        }],
        values: vec![1.0, 2.0, 3.0],
        label: None,
    }
}

// The process helpers live in the sad-tests harness, shared with the
// coordinator's tests and the cross-process fault tests.
#[allow(unused_imports)] // each test binary uses a different subset
pub use sad_tests::{Mosquitto, free_port, wait_until, wait_until_async};

/// What a [`FakeCoordinator`] saw.
#[derive(Default)]
pub struct Seen {
    /// Every alert seq received, duplicates included, in arrival order.
    pub seqs: Vec<u64>,
    /// Every status received (retained ones included).
    pub statuses: Vec<sad_common::Heartbeat>,
    /// Every samples message received.
    pub samples: Vec<sad_common::Samples>,
    /// Highest seq acked so far.
    pub acked: u64,
}

impl Seen {
    /// Distinct seqs received.
    pub fn distinct(&self) -> std::collections::BTreeSet<u64> {
        self.seqs.iter().copied().collect()
    }
}

/// A minimal coordinator: receives alert batches of every agent, records
/// them, and (while `acking` is set) acks the contiguous prefix it holds.
pub struct FakeCoordinator {
    pub seen: std::sync::Arc<std::sync::Mutex<Seen>>,
    pub acking: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pub client: rumqttc::AsyncClient,
    task: tokio::task::JoinHandle<()>,
}

impl FakeCoordinator {
    pub fn start(port: u16, prefix: &str) -> FakeCoordinator {
        use rumqttc::{Event, Incoming, MqttOptions, QoS};
        use sad_common::{Ack, AlertBatch, TopicKind, Topics};
        use std::sync::atomic::Ordering;

        let id = format!("fake-coordinator-{}", free_port());
        let mut opts = MqttOptions::new(id, "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(5))
            .set_max_packet_size(64 << 20, 64 << 20);
        let (client, mut eventloop) = rumqttc::AsyncClient::new(opts, 64);
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Seen::default()));
        let acking = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let topics = Topics::new(prefix).unwrap();
        let task = {
            let (client, seen, acking) = (client.clone(), seen.clone(), acking.clone());
            tokio::spawn(async move {
                // Everything received, per agent, to ack the contiguous prefix.
                let mut held: std::collections::BTreeMap<String, std::collections::BTreeSet<u64>> =
                    Default::default();
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                            for f in [
                                topics.all_alerts(),
                                topics.all_status(),
                                topics.all_samples(),
                            ] {
                                client.subscribe(f, QoS::AtLeastOnce).await.unwrap();
                            }
                        }
                        Ok(Event::Incoming(Incoming::Publish(p))) => match topics.parse(&p.topic) {
                            Ok(TopicKind::Alerts { agent_id }) => {
                                let batch: AlertBatch = frame::decode(&p.payload).unwrap();
                                let set = held.entry(agent_id.clone()).or_default();
                                let up_to = {
                                    let mut s = seen.lock().unwrap();
                                    for a in &batch.alerts {
                                        assert_eq!(a.alert_id(), format!("{agent_id}:{}", a.seq));
                                        s.seqs.push(a.seq);
                                        set.insert(a.seq);
                                    }
                                    // Contiguous prefix from the smallest seq held.
                                    let first = set.iter().next().copied().unwrap_or(1);
                                    let up_to = (first..)
                                        .zip(set.iter())
                                        .take_while(|(want, got)| want == *got)
                                        .last()
                                        .map_or(0, |(want, _)| want);
                                    if acking.load(Ordering::Relaxed) && up_to > 0 {
                                        s.acked = s.acked.max(up_to);
                                    }
                                    up_to
                                };
                                if acking.load(Ordering::Relaxed) && up_to > 0 {
                                    let ack = Ack {
                                        agent_id: agent_id.clone(),
                                        up_to_seq: up_to,
                                    };
                                    client
                                        .publish(
                                            topics.acks(&agent_id).unwrap(),
                                            QoS::AtLeastOnce,
                                            false,
                                            frame::encode(&ack).unwrap(),
                                        )
                                        .await
                                        .unwrap();
                                }
                            }
                            Ok(TopicKind::Status { .. }) => {
                                if let Ok(hb) = frame::decode(&p.payload) {
                                    seen.lock().unwrap().statuses.push(hb);
                                }
                            }
                            Ok(TopicKind::Samples { .. }) => {
                                seen.lock()
                                    .unwrap()
                                    .samples
                                    .push(frame::decode(&p.payload).unwrap());
                            }
                            _ => {}
                        },
                        Ok(_) => {}
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
            })
        };
        FakeCoordinator {
            seen,
            acking,
            client,
            task,
        }
    }

    /// The last status of `agent`, if any.
    pub fn last_status(&self, agent: &str) -> Option<sad_common::Heartbeat> {
        self.seen
            .lock()
            .unwrap()
            .statuses
            .iter()
            .rev()
            .find(|h| h.agent_id == agent)
            .cloned()
    }
}

impl Drop for FakeCoordinator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The agent-side pieces the uplink needs, in a temp dir.
pub struct AgentParts {
    pub dir: tempfile::TempDir,
    pub shared: sad_agent::uplink::UplinkShared,
}

impl AgentParts {
    pub fn new(agent_id: &str) -> AgentParts {
        use sad_agent::heartbeat::{Counters, Reservoir, ScoreStats};
        use sad_agent::metrics::AgentMetrics;
        use sad_agent::model_manager::ModelManager;
        use sad_agent::outbox::{Outbox, OutboxConfig};
        use std::sync::{Arc, Mutex};

        let dir = tempfile::tempdir().unwrap();
        let metrics = AgentMetrics::new().unwrap();
        let outbox = Outbox::open(
            &OutboxConfig {
                path: dir.path().join("outbox"),
                ..OutboxConfig::default()
            },
            agent_id,
            Some(metrics.clone()),
        )
        .unwrap();
        let models = ModelManager::open(
            &dir.path().join("models"),
            Some(signing_key().verifying_key()),
            Some(metrics.clone()),
        )
        .unwrap();
        AgentParts {
            dir,
            shared: sad_agent::uplink::UplinkShared {
                outbox,
                models,
                metrics,
                counters: Counters::default(),
                reservoir: Arc::new(Mutex::new(Reservoir::new(100, 1))),
                scores: Arc::new(Mutex::new(ScoreStats::default())),
                agent_id: agent_id.into(),
                rules: Default::default(),
            },
        }
    }

    /// Appends `n` alerts; returns their seqs.
    pub fn raise(&self, n: usize) -> Vec<u64> {
        self.shared
            .outbox
            .append(
                (0..n)
                    .map(|i| alert(Severity::Warning, &format!("s{i}")))
                    .collect(),
            )
            .unwrap()
    }
}

/// An uplink config for a test broker with short periods.
pub fn uplink_config(broker: &Mosquitto) -> sad_agent::uplink::UplinkConfig {
    sad_agent::uplink::UplinkConfig {
        url: broker.url(),
        fleet: "fleet1".into(),
        batch_max: 100,
        resend_after: Duration::from_secs(30),
        heartbeat_every: Duration::from_millis(300),
        samples_every: Duration::from_millis(300),
        keep_alive: Duration::from_secs(5),
        ..Default::default()
    }
}
