//! MQTT subscription on a local broker: sensors publish, the agent scores.
//!
//! The source subscribes its topic filters with QoS 1 on a persistent
//! session (`clean_session = false`, client id `{agent_id}-{name}`), so the
//! broker queues messages while the agent restarts. Payloads are a JSON
//! object with named fields, a JSON array or a CSV line (see
//! [`super::Mapping`]); the series key comes from a topic level, a field or
//! the source name. A full pipeline channel stops the polling of the
//! broker connection (backpressure); bad payloads are counted and skipped.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event as MqttEvent, MqttOptions, Packet, QoS};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio_util::sync::CancellationToken;

use super::{
    BadInput, BadInputReporter, Envelope, EventSender, MappingConfig, MappingError, SourceInfo,
};

/// Errors of the MQTT source.
#[derive(Debug, Error)]
pub enum MqttSourceError {
    /// The mapping is invalid.
    #[error("sources.{name}: {source}")]
    Mapping {
        /// Source name.
        name: String,
        /// What is wrong.
        source: MappingError,
    },
    /// A config value is invalid.
    #[error("sources.{name}.{key}: {reason}")]
    Invalid {
        /// Source name.
        name: String,
        /// The key.
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// `type = "mqtt"`: subscribe to topic filters on a broker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSourceConfig {
    /// Source name (unique).
    pub name: String,
    /// Broker URL, `mqtt://host:port` or `tcp://host:port` (default `mqtt://127.0.0.1:1883`).
    #[serde(default = "default_url")]
    pub url: String,
    /// Topic filters to subscribe (required, MQTT wildcards allowed).
    pub topics: Vec<String>,
    /// Client id (default `{agent_id}-{name}`).
    #[serde(default)]
    pub client_id: Option<String>,
    /// User name (default none).
    #[serde(default)]
    pub username: Option<String>,
    /// Password (default none).
    #[serde(default)]
    pub password: Option<String>,
    /// Keep-alive in seconds (default 30).
    #[serde(default = "default_keep_alive")]
    pub keep_alive_s: u64,
    /// Model that scores these events (default: the only installed model, else streaming).
    #[serde(default)]
    pub model: Option<String>,
    /// Field mapping.
    pub mapping: MappingConfig,
}

fn default_url() -> String {
    "mqtt://127.0.0.1:1883".into()
}

fn default_keep_alive() -> u64 {
    30
}

/// Splits `mqtt://host:port` (also `tcp://`, or a bare `host:port`) into host and port (default 1883).
pub fn parse_mqtt_url(url: &str) -> Option<(String, u16)> {
    let rest = url
        .strip_prefix("mqtt://")
        .or_else(|| url.strip_prefix("tcp://"))
        .unwrap_or(url);
    let rest = rest.split(['/', '?']).next()?;
    if rest.is_empty() || rest.contains("://") {
        return None;
    }
    match rest.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() => {
            Some((h.trim_matches(['[', ']']).to_string(), p.parse().ok()?))
        }
        Some(_) => None,
        None => Some((rest.to_string(), 1883)),
    }
}

impl MqttSourceConfig {
    /// Checks the values.
    pub fn validate(&self) -> Result<(), MqttSourceError> {
        let invalid = |key, reason: String| MqttSourceError::Invalid {
            name: self.name.clone(),
            key,
            reason,
        };
        if parse_mqtt_url(&self.url).is_none() {
            return Err(invalid(
                "url",
                format!("{:?} is not mqtt://host:port", self.url),
            ));
        }
        if self.topics.is_empty() {
            return Err(invalid("topics", "needs at least one topic filter".into()));
        }
        if let Some(t) = self
            .topics
            .iter()
            .find(|t| t.is_empty() || t.contains('\0'))
        {
            return Err(invalid("topics", format!("{t:?} is not a topic filter")));
        }
        if !(1..=65_535).contains(&self.keep_alive_s) {
            return Err(invalid("keep_alive_s", "must be 1..=65535".into()));
        }
        self.mapping
            .build(&self.name)
            .map(|_| ())
            .map_err(|source| MqttSourceError::Mapping {
                name: self.name.clone(),
                source,
            })
    }

    /// Runs the subscription until shutdown or until the pipeline is gone.
    pub async fn run(
        self,
        agent_id: String,
        tx: EventSender,
        reporter: BadInputReporter,
        shutdown: CancellationToken,
    ) -> Result<(), MqttSourceError> {
        self.validate()?;
        let mapping =
            self.mapping
                .build(&self.name)
                .map_err(|source| MqttSourceError::Mapping {
                    name: self.name.clone(),
                    source,
                })?;
        let (host, port) = parse_mqtt_url(&self.url).unwrap_or(("127.0.0.1".into(), 1883));
        let client_id = self
            .client_id
            .clone()
            .unwrap_or_else(|| format!("{agent_id}-{}", self.name));
        let mut opts = MqttOptions::new(client_id, host, port);
        opts.set_keep_alive(Duration::from_secs(self.keep_alive_s))
            .set_clean_session(false)
            .set_max_packet_size(mapping.max_payload_bytes() + 4096, 64 * 1024);
        if let Some(u) = &self.username {
            opts.set_credentials(u.clone(), self.password.clone().unwrap_or_default());
        }
        let info = Arc::new(SourceInfo {
            name: self.name.clone(),
            feature_names: mapping.fields().to_vec(),
            model: self.model.clone(),
            featurize_window: self.mapping.featurize_window,
        });
        let (client, mut eventloop) = AsyncClient::new(opts, 64);
        let mut backoff = Duration::from_millis(200);
        loop {
            let polled = tokio::select! {
                _ = shutdown.cancelled() => break,
                p = eventloop.poll() => p,
            };
            match polled {
                Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => {
                    backoff = Duration::from_millis(200);
                    tracing::info!(source = %self.name, url = %self.url, "mqtt source connected");
                    for t in &self.topics {
                        if let Err(e) = client.try_subscribe(t.clone(), QoS::AtLeastOnce) {
                            tracing::warn!(source = %self.name, topic = %t, error = %e, "cannot subscribe");
                        }
                    }
                }
                Ok(MqttEvent::Incoming(Packet::Publish(p))) => {
                    let parsed = if p.payload.len() > mapping.max_payload_bytes() {
                        Err(BadInput::Oversize {
                            len: p.payload.len(),
                            cap: mapping.max_payload_bytes(),
                        })
                    } else {
                        mapping.parse_payload(&p.payload, Some(&p.topic), super::now_ms())
                    };
                    match parsed {
                        Ok(event) => {
                            let env = Envelope {
                                source: info.clone(),
                                event,
                                mark: None,
                            };
                            let sent = tokio::select! {
                                _ = shutdown.cancelled() => break,
                                r = tx.send(env) => r,
                            };
                            if sent.is_err() {
                                break;
                            }
                        }
                        Err(bad) => reporter.report(&self.name, &bad),
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(source = %self.name, error = %e, retry_in_ms = backoff.as_millis() as u64, "mqtt source connection failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(jitter(backoff)) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
        let _ = client.try_disconnect();
        Ok(())
    }
}

/// `d` scaled by a random factor in [0.5, 1.5).
fn jitter(d: Duration) -> Duration {
    d.mul_f64(0.5 + rand::random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls_are_split_into_host_and_port() {
        assert_eq!(parse_mqtt_url("mqtt://h:1884"), Some(("h".into(), 1884)));
        assert_eq!(
            parse_mqtt_url("tcp://10.0.0.1:1"),
            Some(("10.0.0.1".into(), 1))
        );
        assert_eq!(parse_mqtt_url("broker"), Some(("broker".into(), 1883)));
        assert_eq!(parse_mqtt_url("mqtt://h:x"), None);
        assert_eq!(parse_mqtt_url("http://h:1"), None);
        assert_eq!(parse_mqtt_url(""), None);
    }
}
