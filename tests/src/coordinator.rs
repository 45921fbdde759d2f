//! The real `anomaly-coordinator serve` as a child process on loopback ports.
//!
//! Its data directory (alert store, rules, registry) is a temp dir kept
//! across restarts, and its intake's MQTT client id is fixed
//! (`COORDINATOR_ID`), so a restart after `kill -9` finds the store the
//! killed process fsynced and the broker session (with un-PUBACKed alert
//! publishes) the killed process left. Its log goes to `coordinator.log` in
//! that directory (stdout and stderr).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::bins::{COORDINATOR_BIN, bin_path};
use crate::process::{free_port, kill_slot, stop_slot, wait_until};

/// How the coordinator reaches its brokers.
#[derive(Debug, Clone)]
pub struct CoordinatorSpec {
    /// `MQTT_URL` of the broker the agents use.
    pub mqtt_url: String,
    /// `KAFKA_BROKERS`; `None` = store only.
    pub kafka_brokers: Option<String>,
    /// `KAFKA_TOPIC_OUTPUT`.
    pub output_topic: String,
    /// `KAFKA_TOPIC_INPUT` (central detection reads it).
    pub input_topic: String,
}

/// A running (or stopped) coordinator process, killed on drop.
pub struct CoordinatorProc {
    spec: CoordinatorSpec,
    /// REST API address.
    pub api_port: u16,
    metrics_port: u16,
    replica: String,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Starts so far (1 after [`CoordinatorProc::start`]).
    pub starts: u32,
}

impl CoordinatorProc {
    /// Starts `serve` in a fresh data directory and waits until its API answers.
    pub fn start(spec: CoordinatorSpec) -> CoordinatorProc {
        let mut c = CoordinatorProc {
            spec,
            api_port: free_port(),
            metrics_port: free_port(),
            replica: format!("fault-coordinator-{}", free_port()),
            dir: tempfile::tempdir().unwrap(),
            child: None,
            starts: 0,
        };
        c.restart();
        c
    }

    /// The data directory (kept across restarts).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// (Re)starts on the same data directory and ports; waits until `/api/v1/health` answers.
    pub fn restart(&mut self) {
        self.kill();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("coordinator.log"))
            .unwrap();
        let mut cmd = Command::new(bin_path(COORDINATOR_BIN));
        cmd.arg("serve")
            .current_dir(self.dir.path())
            .env("MQTT_URL", &self.spec.mqtt_url)
            .env("KAFKA_TOPIC_OUTPUT", &self.spec.output_topic)
            .env("KAFKA_TOPIC_INPUT", &self.spec.input_topic)
            .env("KAFKA_GROUP_ID", format!("{}-central", self.replica))
            .env("DATA_DIR", self.data_dir())
            .env("MODEL_PATH", self.dir.path().join("models"))
            .env("API_LISTEN", format!("127.0.0.1:{}", self.api_port))
            .env("PROMETHEUS_PORT", self.metrics_port.to_string())
            .env("COORDINATOR_ID", &self.replica)
            .env(
                "LOG_LEVEL",
                std::env::var("SAD_LOG_LEVEL").unwrap_or_else(|_| "info".into()),
            )
            .env_remove("THRESHOLD")
            .env_remove("MQTT_TOPIC_PREFIX")
            // tracing writes to stdout: both streams go to the log
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log));
        match &self.spec.kafka_brokers {
            Some(b) => cmd.env("KAFKA_BROKERS", b),
            None => cmd.env_remove("KAFKA_BROKERS"),
        };
        self.child = Some(cmd.spawn().expect("start anomaly-coordinator"));
        self.starts += 1;
        let port = self.api_port;
        let up = wait_until(Duration::from_secs(60), || {
            http_get(port, "/api/v1/health").is_some_and(|(code, _)| code == 200)
        });
        assert!(
            up,
            "the coordinator's api did not answer on port {port}; log:\n{}",
            self.log_tail()
        );
    }

    /// SIGKILL and reap; nothing is flushed beyond what the coordinator already made durable.
    pub fn kill(&mut self) {
        kill_slot(&mut self.child);
    }

    /// SIGTERM (clean shutdown), SIGKILL after 15 s; returns whether it stopped on its own.
    pub fn stop(&mut self) -> bool {
        stop_slot(&mut self.child, Duration::from_secs(15))
    }

    /// The last 40 lines of the coordinator's log.
    pub fn log_tail(&self) -> String {
        log_tail(&self.dir.path().join("coordinator.log"), 40)
    }

    /// `GET path` on the REST API: (status code, body), `None` when it does not answer.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.api_port, path)
    }
}

impl Drop for CoordinatorProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last `n` lines of a log file, backtrace frames left out (empty when missing).
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let frame = |l: &str| {
        let t = l.trim_start();
        t.starts_with("at ")
            || t.split(':')
                .next()
                .is_some_and(|d| d.parse::<u32>().is_ok())
    };
    let lines: Vec<&str> = text.lines().filter(|l| !frame(l)).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A minimal HTTP/1.1 GET on loopback: (status code, body), `None` on connection errors.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    http_request(port, "GET", path, "")
}

/// A minimal HTTP/1.1 request with a body on loopback: (status code, body).
pub fn http_request(port: u16, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let code = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    Some((code, body))
}
