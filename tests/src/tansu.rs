//! A private tansu (a Kafka-protocol broker) on a free loopback port, killed on drop.
//!
//! Storage: [`Tansu::start`] keeps everything in memory (a restart starts
//! empty: no topics, no records); [`Tansu::start_persistent`] uses a SQLite
//! file in a temp dir, so topics, records and offsets survive `kill -9` and a
//! restart. Topics must exist before producing (create them with the
//! coordinator's `ensure_topics` or [`crate::oracle::create_topic`]).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::process::{free_port, kill_slot, wait_port};

/// The tansu binary: `$TANSU_BIN` or the test command's install location
/// (`~/.cache/sad-tools/bin/tansu`).
pub fn tansu_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TANSU_BIN") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".cache/sad-tools/bin/tansu")
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
         --version 0.6.0 --locked --features dynostore,libsql --root ~/.cache/sad-tools`, \
         or set SAD_SKIP_KAFKA=1 to skip Kafka tests)",
        bin.display()
    );
    false
}

/// A tansu broker on a free port, killed on drop.
pub struct Tansu {
    /// The port it listens on (kept across restarts).
    pub port: u16,
    storage: String,
    child: Option<Child>,
    dir: Option<tempfile::TempDir>,
}

impl Tansu {
    /// Starts tansu with in-memory storage and waits until it accepts connections.
    pub fn start() -> Tansu {
        Tansu::start_on("memory://tansu/".into(), None)
    }

    /// Starts tansu with SQLite storage in a temp dir: data survives [`Tansu::stop`] and restarts.
    pub fn start_persistent() -> Tansu {
        // tansu resolves the SQLite path against its working directory (the temp dir).
        Tansu::start_on(
            "sqlite://tansu.db".into(),
            Some(tempfile::tempdir().unwrap()),
        )
    }

    fn start_on(storage: String, dir: Option<tempfile::TempDir>) -> Tansu {
        let mut t = Tansu {
            port: free_port(),
            storage,
            child: None,
            dir,
        };
        t.restart();
        t
    }

    /// (Re)starts on the same port; memory storage starts empty, SQLite keeps its data.
    pub fn restart(&mut self) {
        self.stop();
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let mut cmd = Command::new(tansu_bin());
        if let Some(d) = &self.dir {
            cmd.current_dir(d.path());
        }
        let child = cmd
            .args([
                "broker",
                "--storage-engine",
                &self.storage,
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

    /// Kills the broker (SIGKILL) and waits for it to exit.
    pub fn stop(&mut self) {
        kill_slot(&mut self.child);
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
