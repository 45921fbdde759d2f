//! Shared helpers of the agent's durability tests: a private Mosquitto,
//! signed model bundles and alerts.
#![allow(dead_code, missing_docs)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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

/// Polls `cond` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// Async version of [`wait_until`].
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

/// A free TCP port on 127.0.0.1 (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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
        let mut m = Mosquitto {
            port,
            conf,
            child: None,
            _dir: dir,
        };
        m.restart();
        m
    }

    /// (Re)starts the broker on the same port (after [`Mosquitto::stop`]).
    pub fn restart(&mut self) {
        self.stop();
        let child = Command::new("/usr/sbin/mosquitto")
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto (apt-get install mosquitto)");
        self.child = Some(child);
        let port = self.port;
        assert!(
            wait_until(Duration::from_secs(20), || std::net::TcpStream::connect((
                "127.0.0.1",
                port
            ))
            .is_ok()),
            "mosquitto did not start on port {port}"
        );
    }

    /// Kills the broker (SIGKILL) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `mqtt://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    pub fn conf(&self) -> &Path {
        &self.conf
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.stop();
    }
}
