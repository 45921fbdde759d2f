//! Helpers of the coordinator's integration tests: a private Mosquitto, a
//! private tansu (Kafka protocol) broker, a fake agent and alerts.
#![allow(dead_code, missing_docs)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sad_common::wire::Severity;
use sad_common::{Alert, FeatureContribution, ModelKind};

/// A free TCP port on 127.0.0.1 (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_port(port: u16, timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Async polling: until `cond` holds or `timeout` passes; returns whether it held.
pub async fn wait_until_async(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < end {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

/// A Mosquitto broker on a free local port, killed on drop.
pub struct Mosquitto {
    pub port: u16,
    conf: PathBuf,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    /// Starts `/usr/sbin/mosquitto` on a free port and waits until it accepts connections.
    pub fn start() -> Mosquitto {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
        )
        .unwrap();
        let child = Command::new("/usr/sbin/mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto (apt-get install mosquitto)");
        assert!(
            wait_port(port, Duration::from_secs(20)),
            "mosquitto did not start on port {port}"
        );
        Mosquitto {
            port,
            conf,
            child: Some(child),
            _dir: dir,
        }
    }

    /// `mqtt://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The tansu binary: `$TANSU_BIN` or the test command's install location.
pub fn tansu_bin() -> PathBuf {
    std::env::var_os("TANSU_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root/.cache/sad-tools/bin/tansu"))
}

/// Whether Kafka tests should be skipped (`SAD_SKIP_KAFKA=1`); otherwise a
/// missing tansu binary fails the test with a clear message.
pub fn skip_kafka() -> bool {
    if std::env::var("SAD_SKIP_KAFKA").is_ok_and(|v| v == "1") {
        eprintln!("SAD_SKIP_KAFKA=1: skipping a Kafka test");
        return true;
    }
    let bin = tansu_bin();
    assert!(
        bin.exists(),
        "tansu binary not found at {} (set TANSU_BIN, install it with `cargo install tansu \
         --version 0.6.0 --locked --features dynostore,libsql --root /root/.cache/sad-tools`, \
         or set SAD_SKIP_KAFKA=1 to skip Kafka tests)",
        bin.display()
    );
    false
}

/// A tansu broker (Kafka protocol, in-memory storage) on a free port, killed on drop.
pub struct Tansu {
    pub port: u16,
    child: Option<Child>,
}

impl Tansu {
    /// Starts tansu and waits until it accepts connections.
    pub fn start() -> Tansu {
        let mut t = Tansu {
            port: free_port(),
            child: None,
        };
        t.restart();
        t
    }

    /// (Re)starts on the same port; memory storage starts empty.
    pub fn restart(&mut self) {
        self.stop();
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let child = Command::new(tansu_bin())
            .args([
                "broker",
                "--storage-engine",
                "memory://tansu/",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu");
        self.child = Some(child);
        assert!(
            wait_port(self.port, Duration::from_secs(20)),
            "tansu did not start on port {}",
            self.port
        );
    }

    /// Kills the broker (SIGKILL).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `127.0.0.1:<port>`.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.stop();
    }
}

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
