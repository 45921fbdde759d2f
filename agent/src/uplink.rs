//! The uplink: publishes the outbox to the coordinator's broker over MQTT and
//! deletes alerts only when the coordinator's ack covers them.
//!
//! - Alerts go out as [`AlertBatch`] frames on `{p}/agents/{id}/alerts`, QoS 1,
//!   at most `batch_max` alerts and [`MAX_PUBLISH_BYTES`] per publish. Which
//!   alerts to send (and when to re-send) is decided by the pure
//!   [`AckTracker`]: everything unacknowledged is re-sent after every
//!   (re)connect and after `resend_after` without an ack (doubling while no
//!   ack comes, see [`crate::ack`]).
//! - Acks arrive on `{p}/agents/{id}/acks`; the session is persistent
//!   (`clean_session = false`, client id = agent id) so acks published while
//!   the agent was briefly away are still delivered. An ack deletes from the
//!   outbox (see [`crate::outbox`]); nothing else does.
//! - Models arrive retained on `{p}/models/{fleet}/+` and, with a group,
//!   `{p}/models/{group}/+`; they go to [`ModelManager::offer`]. While the
//!   group has a bundle for a model, the fleet's bundle of that model is
//!   ignored (tracked by topic); when the group's retained bundle is cleared
//!   the fleet filter is subscribed again so the broker re-sends the fleet's.
//! - Status: an online [`Heartbeat`] (retained) on connect and every
//!   `heartbeat_every`; the last will is an offline heartbeat (retained); on
//!   shutdown a final offline heartbeat is published before a clean disconnect.
//! - Samples: the reservoir is drained to `{p}/agents/{id}/samples` every `samples_every`.
//! - Reconnects back off from 200 ms, doubling to 30 s, with ±20 % jitter.
//!
//! Nothing here is persisted; the outbox is the only durable state.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use rumqttc::{
    AsyncClient, ConnectionError, Event, Incoming, LastWill, MqttOptions, Outgoing, QoS, Request,
};
use sad_common::wire::limits;
use sad_common::{Ack, AlertBatch, Heartbeat, TopicKind, Topics, frame};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::ack::{AckConfig, AckTracker, Next};
use crate::heartbeat::{Counters, Reservoir, ScoreStats, StatusInputs, build_heartbeat, now_ms};
use crate::metrics::AgentMetrics;
use crate::model_manager::{ModelManager, OfferOutcome};
use crate::outbox::{Outbox, OutboxError};

/// Largest alert publish in bytes; batches are split to stay under it.
pub const MAX_PUBLISH_BYTES: usize = 1024 * 1024;
/// First reconnect delay.
pub const BACKOFF_MIN: Duration = Duration::from_millis(200);
/// Longest reconnect delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Durations as (fractional) seconds in TOML.
mod secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let v = f64::deserialize(d)?;
        Duration::try_from_secs_f64(v)
            .map_err(|_| serde::de::Error::custom(format!("{v} is not a valid number of seconds")))
    }
}

/// Where and how the agent talks to the coordinator's broker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UplinkConfig {
    /// Broker URL: `mqtt://host:port` (default `mqtt://127.0.0.1:1883`) or `mqtts://host:port`.
    pub url: String,
    /// MQTT username, if the broker needs one.
    pub username: Option<String>,
    /// MQTT password (with `username`).
    pub password: Option<String>,
    /// PEM CA bundle to verify the broker with; required for `mqtts://` (system roots are not used).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain for mutual TLS.
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert`.
    pub client_key: Option<PathBuf>,
    /// Topic prefix (default `sad/v1`).
    pub topic_prefix: String,
    /// Fleet whose models this agent runs (default `default`).
    pub fleet: String,
    /// Canary group, whose models win over the fleet's while they exist.
    pub group: Option<String>,
    /// Most alerts per publish (default 500).
    pub batch_max: usize,
    /// Re-send unacknowledged alerts after this long without an ack (seconds,
    /// default 10); doubles after each re-send without an ack, up to 8 times.
    #[serde(with = "secs")]
    pub resend_after: Duration,
    /// Heartbeat period (seconds, default 10).
    #[serde(with = "secs")]
    pub heartbeat_every: Duration,
    /// Samples period (seconds, default 60).
    #[serde(with = "secs")]
    pub samples_every: Duration,
    /// MQTT keep-alive (seconds, default 30).
    #[serde(with = "secs")]
    pub keep_alive: Duration,
}

impl Default for UplinkConfig {
    fn default() -> Self {
        UplinkConfig {
            url: "mqtt://127.0.0.1:1883".into(),
            username: None,
            password: None,
            ca_file: None,
            client_cert: None,
            client_key: None,
            topic_prefix: sad_common::topics::DEFAULT_PREFIX.into(),
            fleet: "default".into(),
            group: None,
            batch_max: 500,
            resend_after: Duration::from_secs(10),
            heartbeat_every: Duration::from_secs(10),
            samples_every: Duration::from_secs(60),
            keep_alive: Duration::from_secs(30),
        }
    }
}

/// Everything the uplink reads or updates, shared with the pipeline.
#[derive(Clone)]
pub struct UplinkShared {
    /// The durable outbox.
    pub outbox: Outbox,
    /// Model manager fed by the model topics.
    pub models: ModelManager,
    /// Agent metrics.
    pub metrics: AgentMetrics,
    /// Pipeline counters for the heartbeat.
    pub counters: Counters,
    /// Reservoir of recent feature rows, drained into samples.
    pub reservoir: Arc<Mutex<Reservoir>>,
    /// Score summary for the heartbeat.
    pub scores: Arc<Mutex<ScoreStats>>,
    /// This agent's id (MQTT client id and topic level).
    pub agent_id: String,
    /// Rule settings pushed by the coordinator, applied by the pipeline.
    pub rules: crate::rules::RulesUpdates,
}

/// Why the uplink could not start or had to stop.
#[derive(Debug, Error)]
pub enum UplinkError {
    /// The configuration is invalid.
    #[error("invalid uplink config: {0}")]
    Config(String),
    /// TLS files could not be loaded or used.
    #[error("uplink tls: {0}")]
    Tls(String),
    /// The outbox failed (permanent: the agent cannot deliver without it).
    #[error(transparent)]
    Outbox(#[from] OutboxError),
}

/// Broker address parsed from [`UplinkConfig::url`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddr {
    /// Host name or IP.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Whether TLS is used.
    pub tls: bool,
}

/// Parses `mqtt://host:port`, `tcp://`, `mqtts://`, `ssl://` or a bare `host:port`.
pub fn parse_url(url: &str) -> Result<BrokerAddr, UplinkError> {
    let bad = |why: &str| UplinkError::Config(format!("url {url:?}: {why}"));
    let (tls, rest) = match url.split_once("://") {
        Some(("mqtt" | "tcp", rest)) => (false, rest),
        Some(("mqtts" | "ssl" | "tls", rest)) => (true, rest),
        Some((scheme, _)) => return Err(bad(&format!("unknown scheme {scheme:?}"))),
        None => (false, url),
    };
    let rest = rest.trim_end_matches('/');
    let default_port = if tls { 8883 } else { 1883 };
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
        match after.strip_prefix(':') {
            Some(p) => (h, Some(p)),
            None if after.is_empty() => (h, None),
            None => return Err(bad("junk after ']'")),
        }
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    if host.is_empty() || host.contains(['/', '?', '#', '@']) {
        return Err(bad("expected scheme://host:port"));
    }
    let port = match port {
        Some(p) => p.parse::<u16>().map_err(|_| bad("invalid port"))?,
        None => default_port,
    };
    Ok(BrokerAddr {
        host: host.to_string(),
        port,
        tls,
    })
}

/// Reconnect delays: from [`BACKOFF_MIN`] doubling to [`BACKOFF_MAX`], ±20 % jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: BACKOFF_MIN }
    }
}

impl Backoff {
    /// The next delay, with jitter from `rng`.
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        base.mul_f64(rng.gen_range(0.8..=1.2))
    }

    /// Back to the shortest delay (after a successful connect).
    pub fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }
}

/// What the network task reports to the uplink loop.
enum NetEvent {
    Connected,
    Disconnected(String),
    Message { topic: String, payload: Vec<u8> },
}

struct TopicSet {
    topics: Topics,
    alerts: String,
    acks: String,
    status: String,
    samples: String,
    quality: String,
    fleet_filter: String,
    group_filter: Option<String>,
    /// `{prefix}/config/{fleet}/` (+ model): rule settings from the coordinator.
    config_prefix: String,
}

fn topic_set(cfg: &UplinkConfig, agent_id: &str) -> Result<TopicSet, UplinkError> {
    let c = |e: sad_common::TopicError| UplinkError::Config(e.to_string());
    let topics = Topics::new(&cfg.topic_prefix).map_err(c)?;
    Ok(TopicSet {
        alerts: topics.alerts(agent_id).map_err(c)?,
        acks: topics.acks(agent_id).map_err(c)?,
        status: topics.status(agent_id).map_err(c)?,
        samples: topics.samples(agent_id).map_err(c)?,
        quality: topics.quality(agent_id).map_err(c)?,
        fleet_filter: topics.model_filter(&cfg.fleet).map_err(c)?,
        config_prefix: format!(
            "{}/config/{}/",
            cfg.topic_prefix.trim_end_matches('/'),
            cfg.fleet
        ),
        group_filter: cfg
            .group
            .as_deref()
            .map(|g| topics.model_filter(g))
            .transpose()
            .map_err(c)?,
        topics,
    })
}

fn mqtt_options(
    cfg: &UplinkConfig,
    agent_id: &str,
    addr: &BrokerAddr,
    will: Vec<u8>,
    status_topic: &str,
) -> Result<MqttOptions, UplinkError> {
    let mut o = MqttOptions::new(agent_id, addr.host.clone(), addr.port);
    o.set_keep_alive(cfg.keep_alive.max(Duration::from_secs(1)))
        .set_clean_session(false)
        .set_max_packet_size(
            limits::MAX_BUNDLE_FRAME_BYTES + 64 * 1024,
            limits::MAX_SAMPLES_FRAME_BYTES.max(limits::MAX_ALERT_BATCH_FRAME_BYTES) + 64 * 1024,
        )
        .set_last_will(LastWill::new(status_topic, will, QoS::AtLeastOnce, true));
    match (&cfg.username, &cfg.password) {
        (Some(u), p) => {
            o.set_credentials(u.clone(), p.clone().unwrap_or_default());
        }
        (None, Some(_)) => {
            return Err(UplinkError::Config(
                "password given without username".into(),
            ));
        }
        (None, None) => {}
    }
    if addr.tls {
        o.set_transport(tls::transport(cfg)?);
    } else if cfg.ca_file.is_some() || cfg.client_cert.is_some() {
        return Err(UplinkError::Config(
            "ca_file/client_cert need an mqtts:// url".into(),
        ));
    }
    Ok(o)
}

mod tls {
    use std::path::Path;
    use std::sync::Arc;

    use rumqttc::{TlsConfiguration, Transport};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    use super::{UplinkConfig, UplinkError};

    fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, UplinkError> {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| {
                UplinkError::Tls(format!(
                    "cannot read certificates from {}: {e}",
                    path.display()
                ))
            })?;
        if certs.is_empty() {
            return Err(UplinkError::Tls(format!(
                "no certificate in {}",
                path.display()
            )));
        }
        Ok(certs)
    }

    /// A rustls client config (ring provider, TLS 1.2/1.3) trusting `ca_file`,
    /// with a client certificate when `client_cert` and `client_key` are set.
    pub fn transport(cfg: &UplinkConfig) -> Result<Transport, UplinkError> {
        let ca = cfg.ca_file.as_deref().ok_or_else(|| {
            UplinkError::Config(
                "mqtts:// needs ca_file (the CA that signed the broker's certificate)".into(),
            )
        })?;
        let mut roots = rustls::RootCertStore::empty();
        for c in certs(ca)? {
            roots.add(c).map_err(|e| {
                UplinkError::Tls(format!("bad CA certificate in {}: {e}", ca.display()))
            })?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| UplinkError::Tls(e.to_string()))?
        .with_root_certificates(roots);
        let config = match (&cfg.client_cert, &cfg.client_key) {
            (Some(cert), Some(key)) => {
                let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                    UplinkError::Tls(format!(
                        "cannot read private key from {}: {e}",
                        key.display()
                    ))
                })?;
                builder
                    .with_client_auth_cert(certs(cert)?, key)
                    .map_err(|e| UplinkError::Tls(format!("client certificate: {e}")))?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => {
                return Err(UplinkError::Config(
                    "client_cert and client_key go together".into(),
                ));
            }
        };
        Ok(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(config),
        )))
    }
}

/// Splits alerts into batches of at most `batch_max` alerts and [`MAX_PUBLISH_BYTES`] encoded.
/// Returns each batch's frame and its seqs. An alert that alone exceeds the byte bound
/// travels alone (its frame is still under the wire cap).
pub fn encode_batches(
    agent_id: &str,
    alerts: Vec<sad_common::Alert>,
    batch_max: usize,
) -> Vec<(Vec<u8>, Vec<u64>)> {
    let mut out = Vec::new();
    let mut cur: Vec<sad_common::Alert> = Vec::new();
    let mut cur_bytes = 0usize;
    let flush = |cur: &mut Vec<sad_common::Alert>, out: &mut Vec<(Vec<u8>, Vec<u64>)>| {
        if cur.is_empty() {
            return;
        }
        let seqs = cur.iter().map(|a| a.seq).collect();
        let batch = AlertBatch {
            agent_id: agent_id.to_string(),
            alerts: std::mem::take(cur),
        };
        match frame::encode(&batch) {
            Ok(bytes) => out.push((bytes, seqs)),
            Err(e) => tracing::error!(error = %e, "cannot encode alert batch"),
        }
    };
    for a in alerts {
        // Postcard size of one alert: a cheap upper bound is its own frame.
        let size = frame::encode(&a).map(|b| b.len()).unwrap_or(0);
        if !cur.is_empty()
            && (cur.len() >= batch_max.max(1) || cur_bytes + size > MAX_PUBLISH_BYTES)
        {
            flush(&mut cur, &mut out);
            cur_bytes = 0;
        }
        cur_bytes += size;
        cur.push(a);
    }
    flush(&mut cur, &mut out);
    out
}

/// Runs the uplink until `shutdown` is cancelled; then publishes a final
/// offline status, disconnects cleanly and returns.
pub async fn run_uplink(
    cfg: UplinkConfig,
    shared: UplinkShared,
    shutdown: CancellationToken,
) -> Result<(), UplinkError> {
    let agent_id = shared.agent_id.clone();
    let addr = parse_url(&cfg.url)?;
    let topics = topic_set(&cfg, &agent_id)?;
    if let Some(g) = &cfg.group
        && *g == cfg.fleet
    {
        return Err(UplinkError::Config("group must differ from fleet".into()));
    }
    let started = Instant::now();
    let started_ms = crate::heartbeat::process_started_ms();
    let mut last_counts: Option<sad_common::LabelCounts> = None;
    let status = |online: bool| -> Heartbeat {
        let scores = shared
            .scores
            .lock()
            .map(|s| s.summary())
            .unwrap_or_default();
        build_heartbeat(
            StatusInputs {
                agent_id: agent_id.clone(),
                group: cfg.group.clone(),
                ts_ms: now_ms(),
                uptime_s: started.elapsed().as_secs(),
                online,
                models: shared.models.statuses(),
                outbox_depth: shared.outbox.depth(),
                outbox_bytes: shared.outbox.bytes(),
            },
            &shared.counters,
            scores,
        )
    };
    let encode_status = |hb: &Heartbeat| frame::encode_checked(hb).unwrap_or_default();
    let will = encode_status(&status(false));
    let opts = mqtt_options(&cfg, &agent_id, &addr, will, &topics.status)?;
    let (client, mut eventloop) = AsyncClient::new(opts, 64);

    let (net_tx, mut net_rx) = mpsc::unbounded_channel::<NetEvent>();
    let net_task = tokio::spawn(async move {
        let mut backoff = Backoff::default();
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                    backoff.reset();
                    if net_tx.send(NetEvent::Connected).is_err() {
                        return;
                    }
                }
                Ok(Event::Incoming(Incoming::Publish(p))) => {
                    let msg = NetEvent::Message {
                        topic: p.topic,
                        payload: p.payload.to_vec(),
                    };
                    if net_tx.send(msg).is_err() {
                        return;
                    }
                }
                Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
                Ok(_) => {}
                Err(ConnectionError::RequestsDone) => return,
                Err(e) => {
                    // The tracker re-sends every unacked alert after the reconnect,
                    // so rumqttc's own copies of in-flight publishes are dropped.
                    eventloop
                        .pending
                        .retain(|r| !matches!(r, Request::Publish(_)));
                    if net_tx.send(NetEvent::Disconnected(e.to_string())).is_err() {
                        return;
                    }
                    let delay = backoff.next_delay(&mut rand::thread_rng());
                    tokio::time::sleep(delay).await;
                }
            }
        }
    });

    let acked_floor = match shared.outbox.first_seq()? {
        Some(first) => first - 1,
        None => shared.outbox.last_seq(),
    };
    let batch_max = cfg.batch_max.max(1);
    let mut tracker = AckTracker::new(
        AckConfig {
            batch_max,
            window: batch_max.saturating_mul(10),
            resend_after: cfg.resend_after,
        },
        acked_floor,
        shared.outbox.last_seq(),
    );
    // First publish time of each publish's last seq, for the ack latency histogram.
    let mut first_sent: BTreeMap<u64, Instant> = BTreeMap::new();
    let mut group_models: BTreeSet<String> = BTreeSet::new();
    let mut heartbeat = tokio::time::interval(cfg.heartbeat_every.max(Duration::from_millis(10)));
    let mut samples = tokio::time::interval(cfg.samples_every.max(Duration::from_millis(10)));
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    samples.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    samples.tick().await;
    let mut connected = false;
    let mut result = Ok(());

    'main: loop {
        let appended = shared.outbox.notified();
        // Send what the tracker allows.
        while let Next::Send { after, max } = tracker.next(Instant::now()) {
            let alerts = match shared.outbox.pending(after, max) {
                Ok(a) => a,
                Err(e) => {
                    result = Err(e.into());
                    break 'main;
                }
            };
            if alerts.is_empty() {
                break;
            }
            for (bytes, seqs) in encode_batches(&agent_id, alerts, batch_max) {
                let n = seqs.len() as u64;
                tokio::select! {
                    r = client.publish(topics.alerts.clone(), QoS::AtLeastOnce, false, bytes) => {
                        if let Err(e) = r {
                            tracing::warn!(error = %e, "cannot queue alert batch");
                            break 'main;
                        }
                    }
                    _ = shutdown.cancelled() => break 'main,
                }
                let now = Instant::now();
                if let Some(&last) = seqs.last()
                    && first_sent.last_key_value().is_none_or(|(k, _)| *k < last)
                {
                    first_sent.insert(last, now);
                }
                tracker.on_sent(&seqs, now);
                shared.metrics.alerts_sent.inc_by(n);
                tracing::debug!(first = seqs[0], count = n, "published alert batch");
            }
        }
        let deadline = tracker.deadline();
        tokio::select! {
            _ = shutdown.cancelled() => break 'main,
            _ = appended => {}
            _ = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            } => {}
            ev = net_rx.recv() => match ev {
                None => {
                    tracing::error!("mqtt event loop stopped");
                    break 'main;
                }
                Some(NetEvent::Connected) => {
                    tracing::info!(url = %cfg.url, "uplink connected");
                    connected = true;
                    tracker.on_connected();
                    let mut subs = vec![
                        topics.acks.clone(),
                        topics.fleet_filter.clone(),
                        format!("{}+", topics.config_prefix),
                    ];
                    subs.extend(topics.group_filter.clone());
                    for t in subs {
                        if let Err(e) = client.subscribe(t, QoS::AtLeastOnce).await {
                            tracing::warn!(error = %e, "cannot subscribe");
                        }
                    }
                    let hb = encode_status(&status(true));
                    let _ = client.try_publish(topics.status.clone(), QoS::AtLeastOnce, true, hb);
                }
                Some(NetEvent::Disconnected(why)) => {
                    if connected {
                        tracing::warn!(error = %why, "uplink disconnected; reconnecting with backoff");
                    } else {
                        tracing::debug!(error = %why, "uplink cannot connect");
                    }
                    connected = false;
                    tracker.on_disconnected();
                }
                Some(NetEvent::Message { topic, payload }) => {
                    if topic == topics.acks {
                        if let Err(e) = handle_ack(&payload, &agent_id, &mut tracker, &shared, &mut first_sent).await {
                            result = Err(e);
                            break 'main;
                        }
                    } else if let Some(model) = topic.strip_prefix(&topics.config_prefix) {
                        handle_rules(model, &payload, &shared);
                    } else {
                        handle_model(&topic, payload, &cfg, &topics, &client, &shared, &mut group_models).await;
                    }
                }
            },
            _ = heartbeat.tick() => {
                if connected {
                    let hb = encode_status(&status(true));
                    let _ = client.try_publish(topics.status.clone(), QoS::AtLeastOnce, true, hb);
                    // Cumulative labelled-event counters, retained, when they changed.
                    if let Some(c) = shared.counters.label_counts(&agent_id, started_ms)
                        && Some(&c) != last_counts.as_ref()
                    {
                        match frame::encode_checked(&c) {
                            Ok(bytes) => {
                                if client.try_publish(topics.quality.clone(), QoS::AtLeastOnce, true, bytes).is_ok() {
                                    last_counts = Some(c);
                                }
                            }
                            Err(e) => tracing::warn!(error = %e, "dropping unencodable label counts"),
                        }
                    }
                }
            }
            _ = samples.tick() => {
                if connected {
                    let drained = shared
                        .reservoir
                        .lock()
                        .map(|mut r| r.drain(&agent_id))
                        .unwrap_or_default();
                    for s in drained {
                        match frame::encode_checked(&s) {
                            Ok(bytes) => {
                                let _ = client.try_publish(topics.samples.clone(), QoS::AtLeastOnce, false, bytes);
                            }
                            Err(e) => tracing::warn!(error = %e, "dropping unencodable samples"),
                        }
                    }
                }
            }
        }
    }

    // Final status, then a clean disconnect (which suppresses the last will).
    if connected {
        let hb = encode_status(&status(false));
        let _ = client.try_publish(topics.status.clone(), QoS::AtLeastOnce, true, hb);
        let _ = client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_secs(3), net_task).await;
    } else {
        net_task.abort();
    }
    if let Err(e) = shared.outbox.flush() {
        tracing::warn!(error = %e, "cannot flush the outbox on shutdown");
    }
    tracing::info!("uplink stopped");
    result
}

async fn handle_ack(
    payload: &[u8],
    agent_id: &str,
    tracker: &mut AckTracker,
    shared: &UplinkShared,
    first_sent: &mut BTreeMap<u64, Instant>,
) -> Result<(), UplinkError> {
    let ack: Ack = match frame::decode(payload) {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e, "ignoring undecodable ack");
            return Ok(());
        }
    };
    if ack.agent_id != agent_id {
        tracing::warn!(agent = %ack.agent_id, "ignoring an ack for another agent");
        return Ok(());
    }
    let Some(up_to) = tracker.on_ack(ack.up_to_seq) else {
        return Ok(());
    };
    let outbox = shared.outbox.clone();
    let removed = tokio::task::spawn_blocking(move || outbox.ack(up_to))
        .await
        .map_err(|e| UplinkError::Config(format!("ack task failed: {e}")))??;
    let now = Instant::now();
    while let Some(entry) = first_sent.first_entry() {
        if *entry.key() > up_to {
            break;
        }
        let sent = entry.remove();
        shared
            .metrics
            .ack_latency
            .observe(now.saturating_duration_since(sent).as_secs_f64());
    }
    tracing::debug!(up_to, removed, "coordinator acked alerts");
    Ok(())
}

/// Applies rule settings the coordinator published for `model` (JSON of
/// [`crate::rules::RulesConfig`]; an empty payload clears them). Invalid
/// settings are logged and ignored: the agent keeps its current rules.
fn handle_rules(model: &str, payload: &[u8], shared: &UplinkShared) {
    if payload.is_empty() {
        tracing::info!(%model, "coordinator cleared the rule settings");
        shared.rules.set(model, None);
        return;
    }
    let parsed = serde_json::from_slice::<crate::rules::RulesConfig>(payload)
        .map_err(|e| e.to_string())
        .and_then(|c| c.validate().map(|()| c).map_err(|e| e.to_string()));
    match parsed {
        Ok(c) => {
            tracing::info!(%model, "applying rule settings from the coordinator");
            shared.rules.set(model, Some(c));
        }
        Err(e) => tracing::warn!(%model, error = %e, "ignoring invalid rule settings"),
    }
}

async fn handle_model(
    topic: &str,
    payload: Vec<u8>,
    cfg: &UplinkConfig,
    topics: &TopicSet,
    client: &AsyncClient,
    shared: &UplinkShared,
    group_models: &mut BTreeSet<String>,
) {
    let Ok(TopicKind::Model { fleet, model }) = topics.topics.parse(topic) else {
        tracing::warn!(%topic, "ignoring a message on an unexpected topic");
        return;
    };
    let from_group = cfg.group.as_deref() == Some(fleet.as_str());
    if payload.is_empty() {
        // A cleared retained bundle.
        if from_group && group_models.remove(&model) {
            tracing::info!(%model, "group bundle withdrawn; asking for the fleet's again");
            let _ = client
                .subscribe(topics.fleet_filter.clone(), QoS::AtLeastOnce)
                .await;
        }
        return;
    }
    if from_group {
        group_models.insert(model.clone());
    } else if group_models.contains(&model) {
        tracing::debug!(%model, "the group's bundle wins over the fleet's");
        return;
    }
    let models = shared.models.clone();
    let outcome = tokio::task::spawn_blocking(move || models.offer(&payload)).await;
    match outcome {
        Ok(Ok(OfferOutcome::Installed {
            name,
            version,
            previous,
        })) => tracing::info!(%name, version, ?previous, %topic, "model updated"),
        Ok(Ok(OfferOutcome::AlreadyCurrent { .. })) => {}
        // The manager logs and counts rejections; the running model stays.
        Ok(Err(_)) => {}
        Err(e) => tracing::error!(error = %e, "model offer task failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn broker_urls_parse_with_default_ports_and_tls_schemes() {
        let p = |u: &str| parse_url(u).unwrap();
        assert_eq!(
            p("mqtt://broker:1884"),
            BrokerAddr {
                host: "broker".into(),
                port: 1884,
                tls: false
            }
        );
        assert_eq!(p("mqtt://broker").port, 1883);
        assert!(p("mqtts://broker").tls);
        assert_eq!(p("mqtts://broker").port, 8883);
        assert_eq!(p("localhost:1999").port, 1999);
        assert_eq!(p("tcp://[::1]:1885").host, "::1");
        for bad in [
            "http://x:1",
            "mqtt://",
            "mqtt://x:port",
            "mqtt://x:99999",
            "mqtt://u@x:1",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn backoff_doubles_to_the_cap_with_bounded_jitter_and_resets() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut b = Backoff::default();
        let mut nominal = BACKOFF_MIN;
        for _ in 0..12 {
            let d = b.next_delay(&mut rng);
            assert!(
                d >= nominal.mul_f64(0.8) && d <= nominal.mul_f64(1.2),
                "{d:?}"
            );
            nominal = (nominal * 2).min(BACKOFF_MAX);
        }
        assert!(b.next_delay(&mut rng) >= BACKOFF_MAX.mul_f64(0.8));
        b.reset();
        assert!(b.next_delay(&mut rng) <= BACKOFF_MIN.mul_f64(1.2));
    }

    #[test]
    fn batches_split_by_count_and_by_bytes() {
        let a = |seq: u64, values: usize| sad_common::Alert {
            agent_id: "edge-1".into(),
            seq,
            values: vec![1.0; values],
            ..crate::outbox::tests::alert(sad_common::wire::Severity::Info, "s")
        };
        let b = encode_batches("edge-1", (1..=7).map(|s| a(s, 1)).collect(), 3);
        let seqs: Vec<Vec<u64>> = b.iter().map(|(_, s)| s.clone()).collect();
        assert_eq!(seqs, vec![vec![1, 2, 3], vec![4, 5, 6], vec![7]]);
        let back: AlertBatch = frame::decode(&b[0].0).unwrap();
        assert_eq!(back.alerts.len(), 3);
        // ~36 KB per alert: a 1 MiB publish holds fewer than 30.
        let big = encode_batches("edge-1", (1..=60).map(|s| a(s, 4096)).collect(), 500);
        assert!(big.len() >= 2);
        assert!(
            big.iter()
                .all(|(bytes, _)| bytes.len() <= MAX_PUBLISH_BYTES)
        );
        assert_eq!(big.iter().map(|(_, s)| s.len()).sum::<usize>(), 60);
    }

    #[test]
    fn the_config_reads_durations_as_seconds_and_rejects_unknown_fields() {
        let c: UplinkConfig =
            serde_json::from_str(r#"{"url":"mqtt://h:1","resend_after":0.5,"fleet":"f1"}"#)
                .unwrap();
        assert_eq!(c.resend_after, Duration::from_millis(500));
        assert_eq!(c.batch_max, 500);
        assert!(serde_json::from_str::<UplinkConfig>(r#"{"nope":1}"#).is_err());
        assert!(serde_json::from_str::<UplinkConfig>(r#"{"resend_after":-1}"#).is_err());
    }
}
