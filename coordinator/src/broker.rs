//! The embedded MQTT broker (rumqttd 0.20), started when no `MQTT_URL` is set
//! so that one machine needs zero setup.
//!
//! - MQTT 3.1.1 on one TCP listener; QoS 0/1, retained messages, last wills,
//!   persistent sessions (`clean_session = false`) and `$share/{group}/...`
//!   shared subscriptions (round robin) are supported by rumqttd 0.20, so the
//!   intake uses the same `$share/` filter as with Mosquitto.
//! - rumqttd runs in its own threads (each with a current-thread tokio
//!   runtime); it never blocks the coordinator's runtime.
//! - **Nothing survives a restart**: rumqttd keeps sessions and retained
//!   messages in memory only. `data_dir` is created (for a future on-disk
//!   broker) but holds nothing. Agents keep unacked alerts in their outbox and
//!   re-send them after reconnecting, so a broker restart loses no alert;
//!   retained model bundles are re-published by the registry.
//! - rumqttd 0.20 has no shutdown API: [`EmbeddedBroker::stop`] (and drop)
//!   only detach; the listener lives until the process exits. Binding to port
//!   0 is done by reserving a free port first (a short race with other
//!   processes binding the same port is possible).

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rumqttd::{Config, ConnectionSettings, RouterConfig, ServerSettings};
use thiserror::Error;

/// Largest publish the embedded broker accepts (a full samples frame plus slack).
pub const MAX_PAYLOAD_BYTES: usize = 17 * 1024 * 1024;

/// Why the embedded broker could not start.
#[derive(Debug, Error)]
pub enum BrokerError {
    /// The listen address or data directory could not be used.
    #[error("embedded broker on {addr}: {source}")]
    Io {
        /// Listen address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// rumqttd did not accept connections in time.
    #[error("embedded broker did not start listening on {0}")]
    NotListening(SocketAddr),
}

/// A running embedded broker.
#[derive(Debug)]
pub struct EmbeddedBroker {
    /// `mqtt://127.0.0.1:PORT` (the listen host, with the real port).
    pub url: String,
    /// The bound address.
    pub addr: SocketAddr,
    /// The data directory.
    pub data_dir: PathBuf,
}

impl EmbeddedBroker {
    /// Detaches from the broker (rumqttd 0.20 cannot be shut down; see the module docs).
    pub fn stop(self) {}
}

fn config(addr: SocketAddr) -> Config {
    let server = ServerSettings {
        name: "v4-embedded".into(),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 1,
        connections: ConnectionSettings {
            connection_timeout_ms: 60_000,
            max_payload_size: MAX_PAYLOAD_BYTES,
            max_inflight_count: 500,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    Config {
        id: 0,
        router: RouterConfig {
            max_connections: 10_010,
            max_outgoing_packet_count: 500,
            max_segment_size: 100 * 1024 * 1024,
            max_segment_count: 10,
            ..RouterConfig::default()
        },
        v4: Some(HashMap::from([("1".to_string(), server)])),
        ..Config::default()
    }
}

/// Starts rumqttd on `listen` (port 0 picks a free port) and waits until it accepts connections.
///
/// Blocks for at most a few seconds while the listener comes up.
pub fn start_embedded_broker(
    listen: SocketAddr,
    data_dir: &Path,
) -> Result<EmbeddedBroker, BrokerError> {
    let io = |addr, source| BrokerError::Io { addr, source };
    std::fs::create_dir_all(data_dir).map_err(|e| io(listen, e))?;
    let addr = if listen.port() == 0 {
        let probe = TcpListener::bind(listen).map_err(|e| io(listen, e))?;
        probe.local_addr().map_err(|e| io(listen, e))?
    } else {
        listen
    };
    let mut broker = rumqttd::Broker::new(config(addr));
    std::thread::Builder::new()
        .name("embedded-mqtt".into())
        .spawn(move || {
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded broker stopped");
            }
        })
        .map_err(|e| io(addr, e))?;
    let connect_to = if addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect_timeout(&connect_to, Duration::from_millis(200)).is_err() {
        if Instant::now() > deadline {
            return Err(BrokerError::NotListening(addr));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    tracing::info!(%addr, "embedded mqtt broker listening");
    Ok(EmbeddedBroker {
        url: format!("mqtt://{}:{}", connect_to.ip(), addr.port()),
        addr,
        data_dir: data_dir.to_path_buf(),
    })
}
