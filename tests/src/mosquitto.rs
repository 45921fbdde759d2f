//! A private Mosquitto (`/usr/sbin/mosquitto`, Debian's package) on a free
//! loopback port with its config in a temp dir, killed on drop.
//!
//! What survives a stop: with [`Mosquitto::start`] nothing (no persistence,
//! sessions and queued messages die with the process). With
//! [`Mosquitto::start_persistent`] Mosquitto writes its sessions, retained
//! and queued QoS 1 messages to `mosquitto.db` in the temp dir when stopped
//! gracefully ([`Mosquitto::stop_graceful`], SIGTERM) and reads them back at
//! restart; a SIGKILL keeps only what its last autosave wrote.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::process::{free_port, kill_slot, stop_slot, wait_port};

/// Path of the broker binary.
pub const MOSQUITTO_BIN: &str = "/usr/sbin/mosquitto";

/// A Mosquitto broker on a free local port, killed on drop.
pub struct Mosquitto {
    /// The port it listens on (kept across restarts).
    pub port: u16,
    conf: PathBuf,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    /// Starts a broker without persistence on a free port and waits until it accepts connections.
    pub fn start() -> Mosquitto {
        Mosquitto::start_with(|port, _dir| {
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        })
    }

    /// Starts a broker that persists sessions and queued messages in its temp
    /// dir (saved on graceful stop and every second with changes) and keeps up
    /// to 100 000 queued messages per offline persistent session.
    pub fn start_persistent() -> Mosquitto {
        Mosquitto::start_with(|port, dir| {
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n\
                 persistence_location {}/\nautosave_interval 1\nmax_queued_messages 100000\n",
                dir.display()
            )
        })
    }

    /// Starts a broker whose config `conf_text(port, dir)` writes; `port` is the one waited for.
    pub fn start_with(conf_text: impl FnOnce(u16, &Path) -> String) -> Mosquitto {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(&conf, conf_text(port, dir.path())).unwrap();
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
        let child = Command::new(MOSQUITTO_BIN)
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto (apt-get install mosquitto)");
        self.child = Some(child);
        assert!(
            wait_port(self.port, Duration::from_secs(20)),
            "mosquitto did not start on port {}",
            self.port
        );
    }

    /// Kills the broker (SIGKILL) and waits for it to exit.
    pub fn stop(&mut self) {
        kill_slot(&mut self.child);
    }

    /// Stops the broker with SIGTERM (it saves its persistence file) and waits for it to exit.
    pub fn stop_graceful(&mut self) {
        stop_slot(&mut self.child, Duration::from_secs(10));
    }

    /// Whether the broker process is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// `mqtt://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// The config file the broker runs with.
    pub fn conf(&self) -> &Path {
        &self.conf
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.stop();
    }
}
