//! The real `anomaly-agent` as a child process, replaying a generated CSV
//! stream through a resumable file source, with an HTTP push source for
//! probe events, and a locally installed Isolation Forest.
//!
//! What survives `kill -9` (the agent's contract, which the fault tests
//! check): its data directory (sled outbox with every alert `append`
//! returned a seq for, the file source's committed byte offset) and its
//! installed model. The temp dir holding them lives as long as the
//! [`AgentProc`], across any number of kills and restarts.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use sad_models::bundle::{ManifestSpec, iforest_bundle};
use sad_models::iforest::IsolationForestParams;

use crate::bins::{AGENT_BIN, bin_path};
use crate::coordinator::{http_get, http_request, log_tail};
use crate::process::{free_port, kill_slot, stop_slot, wait_until};

/// Event time of stream row 0; row `i` is at `STREAM_T0_MS + i * 1000`.
pub const STREAM_T0_MS: i64 = 1_700_000_000_000;
/// Event time of probe 0; probe `k` is at `PROBE_T0_MS + k` in series `probe-{k}`.
pub const PROBE_T0_MS: i64 = 1_900_000_000_000;
/// Feature value of a spike (normal values are uniform in [0, 1)).
pub const SPIKE: f64 = 20.0;

/// One row of a generated stream, as the agent parses it.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Event time (ms).
    pub ts_ms: i64,
    /// Series key.
    pub series: String,
    /// The four feature values, exactly as written (4 decimals).
    pub values: Vec<f64>,
}

/// A deterministic CSV stream with a spike every `spike_every` rows.
#[derive(Debug, Clone)]
pub struct Stream {
    /// The rows, in file order.
    pub rows: Vec<Row>,
    /// Rows per second the agent replays.
    pub rows_per_sec: f64,
}

impl Stream {
    /// `rows` rows over `series` series (round robin), a spike every `spike_every` rows.
    pub fn generate(
        rows: usize,
        series: usize,
        spike_every: usize,
        rows_per_sec: f64,
        seed: u64,
    ) -> Stream {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let rows = (0..rows)
            .map(|i| {
                let spike = i % spike_every == spike_every - 1;
                let values = (0..4)
                    .map(|_| {
                        let x: f64 = rng.r#gen::<f64>() + if spike { SPIKE } else { 0.0 };
                        format!("{x:.4}").parse().unwrap()
                    })
                    .collect();
                Row {
                    ts_ms: STREAM_T0_MS + i as i64 * 1000,
                    series: format!("m{}", i % series),
                    values,
                }
            })
            .collect();
        Stream { rows, rows_per_sec }
    }

    /// The row with event time `ts_ms`, if it is one of this stream's.
    pub fn row_at(&self, ts_ms: i64) -> Option<&Row> {
        let d = ts_ms.checked_sub(STREAM_T0_MS)?;
        if d % 1000 != 0 {
            return None;
        }
        self.rows.get(usize::try_from(d / 1000).ok()?)
    }

    /// Rows whose values are spikes.
    pub fn spikes(&self) -> usize {
        self.rows.iter().filter(|r| r.values[0] >= SPIKE).count()
    }

    fn write_csv(&self, path: &Path) -> u64 {
        let mut w = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
        writeln!(w, "ts,series,f0,f1,f2,f3").unwrap();
        for r in &self.rows {
            let v: Vec<String> = r.values.iter().map(|x| format!("{x:.4}")).collect();
            writeln!(w, "{},{},{}", r.ts_ms, r.series, v.join(",")).unwrap();
        }
        drop(w);
        std::fs::metadata(path).unwrap().len()
    }
}

/// Settings of one agent process.
#[derive(Debug, Clone)]
pub struct AgentSpec {
    /// `agent_id`.
    pub agent_id: String,
    /// Broker the uplink connects to (directly or through a proxy).
    pub mqtt_url: String,
    /// `outbox.max_bytes` (the agent accepts 65536 and more).
    pub outbox_max_bytes: u64,
    /// `uplink.resend_after` in seconds.
    pub resend_after_s: f64,
}

impl AgentSpec {
    /// An agent `agent_id` on `mqtt_url` with a 64 MiB outbox and a 5 s resend timeout.
    pub fn new(agent_id: &str, mqtt_url: &str) -> AgentSpec {
        AgentSpec {
            agent_id: agent_id.into(),
            mqtt_url: mqtt_url.into(),
            outbox_max_bytes: 64 << 20,
            resend_after_s: 5.0,
        }
    }
}

/// The outbox as `anomaly-agent outbox inspect` reports it after the agent stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxState {
    /// Unacknowledged alerts.
    pub depth: u64,
    /// Bytes held.
    pub bytes: u64,
    /// Highest seq ever assigned: alerts `1..=last_seq` were raised.
    pub last_seq: u64,
    /// Alerts dropped by the full-outbox policy.
    pub dropped: u64,
}

/// An agent process over a persistent data directory, killed on drop.
pub struct AgentProc {
    /// Its settings.
    pub spec: AgentSpec,
    /// Port of its HTTP endpoint (`/health`, `/ingest`).
    pub http_port: u16,
    dir: tempfile::TempDir,
    config: PathBuf,
    file_len: u64,
    child: Option<Child>,
    /// Starts so far.
    pub starts: u32,
}

impl AgentProc {
    /// Prepares the data directory (model installed with `anomaly-agent model
    /// install`, the stream's CSV, the config) without starting the agent.
    pub fn prepare(spec: AgentSpec, stream: &Stream) -> AgentProc {
        let dir = tempfile::tempdir().unwrap();
        install_model(dir.path());
        let csv = dir.path().join("stream.csv");
        let file_len = stream.write_csv(&csv);
        let http_port = free_port();
        let config = dir.path().join("agent.toml");
        std::fs::write(
            &config,
            agent_toml(&spec, dir.path(), &csv, http_port, stream.rows_per_sec),
        )
        .unwrap();
        AgentProc {
            spec,
            http_port,
            dir,
            config,
            file_len,
            child: None,
            starts: 0,
        }
    }

    /// Starts (or restarts) the agent; returns once its HTTP endpoint answers.
    pub fn start(&mut self) {
        self.spawn_only();
        let port = self.http_port;
        assert!(
            wait_until(Duration::from_secs(30), || http_get(port, "/health")
                .is_some()),
            "the agent's http endpoint did not answer; log:\n{}",
            self.log_tail()
        );
    }

    /// Starts the agent without waiting for anything (for kills at any moment of its start).
    pub fn spawn_only(&mut self) {
        self.kill();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("agent.log"))
            .unwrap();
        self.child = Some(
            Command::new(bin_path(AGENT_BIN))
                .args(["run", "--config"])
                .arg(&self.config)
                .current_dir(self.dir.path())
                .env_remove("MQTT_URL")
                .env_remove("THRESHOLD")
                .env_remove("MODEL_PATH")
                .env_remove("MODEL_TYPE")
                .env_remove("MQTT_TOPIC_PREFIX")
                .env_remove("LOG_LEVEL")
                .stdout(Stdio::null())
                .stderr(Stdio::from(log))
                .spawn()
                .expect("start anomaly-agent"),
        );
        self.starts += 1;
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        kill_slot(&mut self.child);
    }

    /// SIGTERM and wait (SIGKILL after 15 s); returns whether it exited cleanly on its own.
    pub fn stop(&mut self) -> bool {
        stop_slot(&mut self.child, Duration::from_secs(15))
    }

    /// The file source's committed byte offset (0 before the first commit).
    pub fn offset(&self) -> u64 {
        std::fs::read_to_string(self.dir.path().join("data/sources/replay.offset"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Whether the whole CSV has been replayed and committed.
    pub fn replay_done(&self) -> bool {
        self.offset() == self.file_len
    }

    /// `(outbox_depth, last_seq)` from the running agent's `/health`.
    pub fn health(&self) -> Option<(u64, u64)> {
        let (code, body) = http_get(self.http_port, "/health")?;
        if code != 200 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        Some((v["outbox_depth"].as_u64()?, v["last_seq"].as_u64()?))
    }

    /// Pushes probe `k` (a spike in its own series `probe-{k}`) to `POST /ingest`,
    /// retrying until the agent accepts it or `timeout` passes; returns whether it was accepted.
    pub fn push_probe(&self, k: u64, timeout: Duration) -> bool {
        let line = format!(
            r#"{{"series":"probe-{k}","ts":{},"f0":20.5,"f1":20.5,"f2":20.5,"f3":20.5}}"#,
            PROBE_T0_MS + k as i64
        );
        let port = self.http_port;
        wait_until(timeout, || {
            http_request(port, "POST", "/ingest", &line).is_some_and(|(c, _)| c == 200)
        })
    }

    /// The outbox's figures, read with `anomaly-agent outbox inspect` (the agent must be stopped).
    pub fn outbox_state(&self) -> OutboxState {
        assert!(
            self.child.is_none(),
            "stop the agent before inspecting its outbox"
        );
        inspect_outbox(&bin_path(AGENT_BIN), &self.dir.path().join("data"))
    }

    /// The last 40 lines of the agent's log.
    pub fn log_tail(&self) -> String {
        log_tail(&self.dir.path().join("agent.log"), 40)
    }

    /// Waits until the replay is committed to its end and the outbox is empty.
    pub fn wait_drained(&self, timeout: Duration) -> bool {
        wait_until(timeout, || {
            self.replay_done() && self.health().is_some_and(|(depth, _)| depth == 0)
        })
    }
}

/// The figures of the stopped agent's outbox under `data_dir`, from the
/// header line of `{agent_bin} outbox inspect --limit 0`.
pub fn inspect_outbox(agent_bin: &Path, data_dir: &Path) -> OutboxState {
    let out = Command::new(agent_bin)
        .args(["outbox", "inspect", "--limit", "0", "--data-dir"])
        .arg(data_dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let nums: Vec<u64> = text
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert_eq!(nums.len(), 4, "unexpected outbox inspect output: {text}");
    OutboxState {
        depth: nums[0],
        bytes: nums[1],
        last_seq: nums[2],
        dropped: nums[3],
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Fits a 4-feature Isolation Forest on uniform data and installs it in
/// `{dir}/models` with the agent's own `model install` command.
fn install_model(dir: &Path) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let rows: Vec<f64> = (0..2000 * 4).map(|_| rng.r#gen::<f64>()).collect();
    let forest = IsolationForestParams {
        n_estimators: 50,
        seed: 1,
        ..IsolationForestParams::default()
    }
    .fit(&rows, 4)
    .unwrap();
    let spec = ManifestSpec {
        name: "iforest".into(),
        version: 1,
        parent_version: None,
        feature_names: (0..4).map(|i| format!("f{i}")).collect(),
        window: 1,
        scaler: None,
        training_data: "fault tests: uniform".into(),
        training_rows: 2000,
        metrics: Default::default(),
        created_ms: 0,
    };
    let (manifest, payload) = iforest_bundle(spec, &forest);
    let m = dir.join("manifest.json");
    let p = dir.join("payload.bin");
    std::fs::write(&m, serde_json::to_vec(&manifest).unwrap()).unwrap();
    std::fs::write(&p, payload).unwrap();
    let out = Command::new(bin_path(AGENT_BIN))
        .args(["model", "install", "--model-path"])
        .arg(dir.join("models"))
        .arg("--manifest")
        .arg(&m)
        .arg("--payload")
        .arg(&p)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "model install failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn agent_toml(spec: &AgentSpec, dir: &Path, csv: &Path, http_port: u16, speed: f64) -> String {
    format!(
        r#"agent_id = "{id}"
data_dir = "{data}"
log_level = "{log}"
[outbox]
max_bytes = {max_bytes}
[model]
path = "{models}"
[uplink]
url = "{url}"
resend_after = {resend}
heartbeat_every = 1.0
batch_max = 50
[rules]
threshold = 0.6
cooldown_ms = 0
[http]
enabled = true
listen = "127.0.0.1:{http_port}"
[pipeline]
batch_max = 64
[[sources]]
type = "file"
name = "replay"
path = "{csv}"
speed = {speed}
resume = true
[sources.mapping]
fields = ["f0", "f1", "f2", "f3"]
series = {{ field = "series" }}
timestamp_field = "ts"
[[sources]]
type = "http"
name = "probe"
[sources.mapping]
fields = ["f0", "f1", "f2", "f3"]
series = {{ field = "series" }}
timestamp_field = "ts"
"#,
        id = spec.agent_id,
        data = dir.join("data").display(),
        max_bytes = spec.outbox_max_bytes,
        models = dir.join("models").display(),
        url = spec.mqtt_url,
        resend = spec.resend_after_s,
        csv = csv.display(),
        log = std::env::var("SAD_LOG_LEVEL").unwrap_or_else(|_| "info".into()),
    )
}
