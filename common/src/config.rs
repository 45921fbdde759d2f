//! Shared configuration: the seed's environment variables and TOML loading.
//!
//! [`EnvSettings`] reads the variables below; an unset or empty (whitespace
//! only) variable takes its default, an invalid one is an error naming the
//! variable, the value and what was expected.
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `KAFKA_BROKERS` | unset | Kafka bootstrap servers; unset = no Kafka |
//! | `KAFKA_TOPIC_INPUT` | `sensor-data` | topic central detection reads |
//! | `KAFKA_TOPIC_OUTPUT` | `anomaly-alerts` | topic alerts are bridged to |
//! | `KAFKA_GROUP_ID` | `anomaly-detector` | Kafka consumer group |
//! | `MODEL_PATH` | `./models` | directory of model bundles |
//! | `MODEL_TYPE` | `isolation_forest` | default detector kind |
//! | `THRESHOLD` | unset | calibrated alert threshold in `[0, 1]`; unset = from training |
//! | `RETRAIN_INTERVAL` | `0` | seconds between retrainings; 0 = off |
//! | `PROMETHEUS_PORT` | `9091` | port of `/metrics` |
//! | `LOG_LEVEL` | `info` | tracing filter |
//! | `MQTT_URL` | unset | broker URL; unset = embedded broker (coordinator), localhost:1883 (agent) |
//! | `MQTT_TOPIC_PREFIX` | `sad/v1` | topic prefix, see [`crate::topics`] |
//!
//! Components' own TOML structs (serde, `deny_unknown_fields`) are loaded with
//! [`load_toml`], whose errors name the file, line and column.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use thiserror::Error;

use crate::model_kind::ModelKind;
use crate::topics::Topics;

/// Why configuration could not be loaded.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// An environment variable holds an invalid value.
    #[error("invalid {var}={value:?}: expected {expected}")]
    InvalidEnv {
        /// Variable name.
        var: &'static str,
        /// The rejected value.
        value: String,
        /// What would have been accepted.
        expected: String,
    },
    /// A configuration file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A configuration file is not valid TOML or does not fit the expected structure.
    #[error("{}:{line}:{column}: {message}", path.display())]
    Toml {
        /// The file.
        path: PathBuf,
        /// 1-based line of the error (1 when toml gives no position).
        line: usize,
        /// 1-based column (in characters) of the error.
        column: usize,
        /// toml's description of the problem.
        message: String,
    },
}

/// Names and defaults of the environment variables.
pub mod env {
    /// Kafka bootstrap servers; unset = no Kafka.
    pub const KAFKA_BROKERS: &str = "KAFKA_BROKERS";
    /// Kafka input topic.
    pub const KAFKA_TOPIC_INPUT: &str = "KAFKA_TOPIC_INPUT";
    /// Kafka output (alert) topic.
    pub const KAFKA_TOPIC_OUTPUT: &str = "KAFKA_TOPIC_OUTPUT";
    /// Kafka consumer group id.
    pub const KAFKA_GROUP_ID: &str = "KAFKA_GROUP_ID";
    /// Model directory.
    pub const MODEL_PATH: &str = "MODEL_PATH";
    /// Default detector kind.
    pub const MODEL_TYPE: &str = "MODEL_TYPE";
    /// Calibrated alert threshold.
    pub const THRESHOLD: &str = "THRESHOLD";
    /// Seconds between retrainings.
    pub const RETRAIN_INTERVAL: &str = "RETRAIN_INTERVAL";
    /// Port of the Prometheus endpoint.
    pub const PROMETHEUS_PORT: &str = "PROMETHEUS_PORT";
    /// Tracing filter.
    pub const LOG_LEVEL: &str = "LOG_LEVEL";
    /// MQTT broker URL.
    pub const MQTT_URL: &str = "MQTT_URL";
    /// MQTT topic prefix.
    pub const MQTT_TOPIC_PREFIX: &str = "MQTT_TOPIC_PREFIX";

    /// Default of [`KAFKA_TOPIC_INPUT`].
    pub const DEFAULT_KAFKA_TOPIC_INPUT: &str = "sensor-data";
    /// Default of [`KAFKA_TOPIC_OUTPUT`].
    pub const DEFAULT_KAFKA_TOPIC_OUTPUT: &str = "anomaly-alerts";
    /// Default of [`KAFKA_GROUP_ID`].
    pub const DEFAULT_KAFKA_GROUP_ID: &str = "anomaly-detector";
    /// Default of [`MODEL_PATH`].
    pub const DEFAULT_MODEL_PATH: &str = "./models";
    /// Default of [`PROMETHEUS_PORT`].
    pub const DEFAULT_PROMETHEUS_PORT: u16 = 9091;
    /// Default of [`LOG_LEVEL`].
    pub const DEFAULT_LOG_LEVEL: &str = "info";
    /// Default of [`MQTT_TOPIC_PREFIX`].
    pub const DEFAULT_MQTT_TOPIC_PREFIX: &str = crate::topics::DEFAULT_PREFIX;
}

/// The seed's environment variables plus the MQTT ones, parsed and checked.
#[derive(Debug, Clone, PartialEq)]
pub struct EnvSettings {
    /// `KAFKA_BROKERS`: bootstrap servers, `None` = no Kafka.
    pub kafka_brokers: Option<String>,
    /// `KAFKA_TOPIC_INPUT` (default `sensor-data`).
    pub kafka_topic_input: String,
    /// `KAFKA_TOPIC_OUTPUT` (default `anomaly-alerts`).
    pub kafka_topic_output: String,
    /// `KAFKA_GROUP_ID` (default `anomaly-detector`).
    pub kafka_group_id: String,
    /// `MODEL_PATH` (default `./models`).
    pub model_path: PathBuf,
    /// `MODEL_TYPE` (default `isolation_forest`).
    pub model_type: ModelKind,
    /// `THRESHOLD` in `[0, 1]`; `None` = derive from training.
    pub threshold: Option<f64>,
    /// `RETRAIN_INTERVAL` in seconds; 0 = off.
    pub retrain_interval_s: u64,
    /// `PROMETHEUS_PORT` (default 9091).
    pub prometheus_port: u16,
    /// `LOG_LEVEL` (default `info`).
    pub log_level: String,
    /// `MQTT_URL`; `None` = embedded broker (coordinator) or localhost:1883 (agent).
    pub mqtt_url: Option<String>,
    /// `MQTT_TOPIC_PREFIX` (default `sad/v1`), already checked by [`Topics::new`].
    pub mqtt_topic_prefix: String,
}

impl Default for EnvSettings {
    fn default() -> Self {
        EnvSettings {
            kafka_brokers: None,
            kafka_topic_input: env::DEFAULT_KAFKA_TOPIC_INPUT.into(),
            kafka_topic_output: env::DEFAULT_KAFKA_TOPIC_OUTPUT.into(),
            kafka_group_id: env::DEFAULT_KAFKA_GROUP_ID.into(),
            model_path: PathBuf::from(env::DEFAULT_MODEL_PATH),
            model_type: ModelKind::IsolationForest,
            threshold: None,
            retrain_interval_s: 0,
            prometheus_port: env::DEFAULT_PROMETHEUS_PORT,
            log_level: env::DEFAULT_LOG_LEVEL.into(),
            mqtt_url: None,
            mqtt_topic_prefix: env::DEFAULT_MQTT_TOPIC_PREFIX.into(),
        }
    }
}

fn invalid(var: &'static str, value: &str, expected: impl Into<String>) -> ConfigError {
    ConfigError::InvalidEnv {
        var,
        value: value.to_string(),
        expected: expected.into(),
    }
}

/// Kafka topic names: 1..=249 characters of `[A-Za-z0-9._-]`, not `.` or `..`.
fn kafka_topic(var: &'static str, value: String) -> Result<String, ConfigError> {
    let ok = !value.is_empty()
        && value.len() <= 249
        && value != "."
        && value != ".."
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(value)
    } else {
        Err(invalid(
            var,
            &value,
            "a Kafka topic name of 1 to 249 characters from A-Z a-z 0-9 . _ -",
        ))
    }
}

fn no_whitespace(var: &'static str, value: String, what: &str) -> Result<String, ConfigError> {
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Err(invalid(var, &value, format!("{what} without whitespace")))
    } else {
        Ok(value)
    }
}

impl EnvSettings {
    /// Reads the process environment.
    pub fn from_env() -> Result<EnvSettings, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the variables through `lookup` (a map in tests); unset or blank values take defaults.
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<EnvSettings, ConfigError> {
        let get = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let mut s = EnvSettings::default();

        if let Some(v) = get(env::KAFKA_BROKERS) {
            s.kafka_brokers = Some(no_whitespace(
                env::KAFKA_BROKERS,
                v,
                "a comma-separated host:port list",
            )?);
        }
        if let Some(v) = get(env::KAFKA_TOPIC_INPUT) {
            s.kafka_topic_input = kafka_topic(env::KAFKA_TOPIC_INPUT, v)?;
        }
        if let Some(v) = get(env::KAFKA_TOPIC_OUTPUT) {
            s.kafka_topic_output = kafka_topic(env::KAFKA_TOPIC_OUTPUT, v)?;
        }
        if let Some(v) = get(env::KAFKA_GROUP_ID) {
            s.kafka_group_id = no_whitespace(env::KAFKA_GROUP_ID, v, "a consumer group id")?;
        }
        if let Some(v) = get(env::MODEL_PATH) {
            s.model_path = PathBuf::from(v);
        }
        if let Some(v) = get(env::MODEL_TYPE) {
            s.model_type = v.parse().map_err(|_| {
                let names: Vec<&str> = ModelKind::ALL.iter().map(|k| k.as_str()).collect();
                invalid(env::MODEL_TYPE, &v, format!("one of {}", names.join(", ")))
            })?;
        }
        if let Some(v) = get(env::THRESHOLD) {
            let t = v
                .parse::<f64>()
                .ok()
                .filter(|t| (0.0..=1.0).contains(t))
                .ok_or_else(|| invalid(env::THRESHOLD, &v, "a number between 0 and 1"))?;
            s.threshold = Some(t);
        }
        if let Some(v) = get(env::RETRAIN_INTERVAL) {
            s.retrain_interval_s = v.parse::<u64>().map_err(|_| {
                invalid(
                    env::RETRAIN_INTERVAL,
                    &v,
                    "a whole number of seconds (0 = off)",
                )
            })?;
        }
        if let Some(v) = get(env::PROMETHEUS_PORT) {
            s.prometheus_port = v
                .parse::<u16>()
                .map_err(|_| invalid(env::PROMETHEUS_PORT, &v, "a port number 0..=65535"))?;
        }
        if let Some(v) = get(env::LOG_LEVEL) {
            s.log_level = v;
        }
        if let Some(v) = get(env::MQTT_URL) {
            s.mqtt_url = Some(no_whitespace(
                env::MQTT_URL,
                v,
                "a broker URL such as mqtt://host:1883",
            )?);
        }
        if let Some(v) = get(env::MQTT_TOPIC_PREFIX) {
            Topics::new(&v).map_err(|e| invalid(env::MQTT_TOPIC_PREFIX, &v, e.to_string()))?;
            s.mqtt_topic_prefix = v;
        }
        Ok(s)
    }

    /// The retraining period, `None` when `RETRAIN_INTERVAL` is 0.
    pub fn retrain_interval(&self) -> Option<Duration> {
        (self.retrain_interval_s > 0).then(|| Duration::from_secs(self.retrain_interval_s))
    }

    /// The topic scheme under `MQTT_TOPIC_PREFIX`.
    pub fn topics(&self) -> Topics {
        // The prefix was checked when the settings were read; fall back to the
        // default for a hand-built invalid value.
        Topics::new(&self.mqtt_topic_prefix).unwrap_or_default()
    }
}

/// Reads and deserialises a TOML file; errors name the file, line and column.
pub fn load_toml<T: DeserializeOwned>(path: impl AsRef<Path>) -> Result<T, ConfigError> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_toml(path, &text)
}

/// Deserialises TOML text; `path` only labels errors.
pub fn parse_toml<T: DeserializeOwned>(
    path: impl AsRef<Path>,
    text: &str,
) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| {
        let (line, column) = e
            .span()
            .map(|span| line_column(text, span.start))
            .unwrap_or((1, 1));
        ConfigError::Toml {
            path: path.as_ref().to_path_buf(),
            line,
            column,
            message: e.message().trim().to_string(),
        }
    })
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::collections::HashMap;

    fn settings(vars: &[(&str, &str)]) -> Result<EnvSettings, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        EnvSettings::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn unset_variables_take_the_documented_defaults() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.kafka_brokers, None);
        assert_eq!(s.kafka_topic_input, "sensor-data");
        assert_eq!(s.kafka_topic_output, "anomaly-alerts");
        assert_eq!(s.kafka_group_id, "anomaly-detector");
        assert_eq!(s.model_path, PathBuf::from("./models"));
        assert_eq!(s.model_type, ModelKind::IsolationForest);
        assert_eq!(s.threshold, None);
        assert_eq!(s.retrain_interval(), None);
        assert_eq!(s.prometheus_port, 9091);
        assert_eq!(s.log_level, "info");
        assert_eq!(s.mqtt_url, None);
        assert_eq!(s.mqtt_topic_prefix, "sad/v1");
        assert_eq!(s.topics(), Topics::default());
        assert_eq!(s, EnvSettings::default());
    }

    #[test]
    fn blank_variables_count_as_unset() {
        let s = settings(&[("KAFKA_BROKERS", ""), ("THRESHOLD", "  ")]).unwrap();
        assert_eq!(s, EnvSettings::default());
    }

    #[test]
    fn set_variables_are_parsed() {
        let s = settings(&[
            ("KAFKA_BROKERS", "k1:9092,k2:9092"),
            ("KAFKA_TOPIC_INPUT", "in.topic"),
            ("KAFKA_TOPIC_OUTPUT", "out_topic"),
            ("KAFKA_GROUP_ID", "g1"),
            ("MODEL_PATH", "/var/lib/sad/models"),
            ("MODEL_TYPE", "lstm"),
            ("THRESHOLD", "0.8"),
            ("RETRAIN_INTERVAL", "3600"),
            ("PROMETHEUS_PORT", "9100"),
            ("LOG_LEVEL", "debug,rumqttc=warn"),
            ("MQTT_URL", "mqtt://broker:1883"),
            ("MQTT_TOPIC_PREFIX", "plant/sad"),
        ])
        .unwrap();
        assert_eq!(s.kafka_brokers.as_deref(), Some("k1:9092,k2:9092"));
        assert_eq!(s.kafka_topic_input, "in.topic");
        assert_eq!(s.kafka_topic_output, "out_topic");
        assert_eq!(s.kafka_group_id, "g1");
        assert_eq!(s.model_path, PathBuf::from("/var/lib/sad/models"));
        assert_eq!(s.model_type, ModelKind::Lstm);
        assert_eq!(s.threshold, Some(0.8));
        assert_eq!(s.retrain_interval(), Some(Duration::from_secs(3600)));
        assert_eq!(s.prometheus_port, 9100);
        assert_eq!(s.log_level, "debug,rumqttc=warn");
        assert_eq!(s.mqtt_url.as_deref(), Some("mqtt://broker:1883"));
        assert_eq!(s.topics().prefix(), "plant/sad");
    }

    #[test]
    fn each_bad_value_names_the_variable_and_the_value() {
        for (var, value) in [
            ("KAFKA_BROKERS", "a:1, b:2"),
            ("KAFKA_TOPIC_INPUT", "bad topic"),
            ("KAFKA_TOPIC_OUTPUT", ".."),
            ("KAFKA_GROUP_ID", "g 1"),
            ("MODEL_TYPE", "forest"),
            ("THRESHOLD", "1.5"),
            ("THRESHOLD", "NaN"),
            ("THRESHOLD", "high"),
            ("RETRAIN_INTERVAL", "-5"),
            ("RETRAIN_INTERVAL", "1h"),
            ("PROMETHEUS_PORT", "70000"),
            ("MQTT_URL", "mqtt://a b"),
            ("MQTT_TOPIC_PREFIX", "sad/#"),
        ] {
            let e = settings(&[(var, value)]).unwrap_err();
            let msg = e.to_string();
            assert!(
                msg.starts_with(&format!("invalid {var}={value:?}: expected ")),
                "{msg}"
            );
        }
        let msg = settings(&[("MODEL_TYPE", "forest")])
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("isolation_forest") && msg.contains("vae"),
            "{msg}"
        );
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Demo {
        name: String,
        #[serde(default)]
        port: u16,
    }

    #[test]
    fn load_toml_reads_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, "name = \"edge\"\nport = 7\n").unwrap();
        let d: Demo = load_toml(&path).unwrap();
        assert_eq!(
            d,
            Demo {
                name: "edge".into(),
                port: 7
            }
        );
    }

    #[test]
    fn load_toml_errors_name_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, "name = \"edge\"\n\n  colour = \"red\"\n").unwrap();
        let e = load_toml::<Demo>(&path).unwrap_err();
        match &e {
            ConfigError::Toml { line, column, .. } => assert_eq!((*line, *column), (3, 3)),
            other => panic!("unexpected error {other:?}"),
        }
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!("{}:3:3: ", path.display())) && msg.contains("colour"),
            "{msg}"
        );

        std::fs::write(&path, "name = \"edge\"\nport = \"x\"\n").unwrap();
        let msg = load_toml::<Demo>(&path).unwrap_err().to_string();
        assert!(msg.contains("agent.toml:2:"), "{msg}");

        std::fs::write(&path, "name = \"edge\nport = 1\n").unwrap();
        let msg = load_toml::<Demo>(&path).unwrap_err().to_string();
        assert!(msg.contains("agent.toml:1:"), "{msg}");
    }

    #[test]
    fn a_missing_file_is_named() {
        let e = load_toml::<Demo>("/nonexistent/sad.toml").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cannot read /nonexistent/sad.toml")
        );
    }

    #[test]
    fn line_column_counts_characters_from_one() {
        let text = "ab\né€x\n";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 3), (2, 1));
        assert_eq!(line_column(text, 3 + "é€".len()), (2, 3));
        assert_eq!(line_column(text, 4), (2, 1)); // inside 'é': snapped back
        assert_eq!(line_column(text, 999), (3, 1));
    }
}
