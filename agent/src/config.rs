//! The agent's configuration: a TOML file (see `agent/examples/agent.toml`)
//! with the seed's environment variables on top.
//!
//! Precedence: environment variable > TOML value > documented default.
//! Variables read: `MODEL_PATH` (`model.path`), `MODEL_TYPE`
//! (`model.model_type`), `THRESHOLD` (`rules.threshold`), `MQTT_URL`
//! (`uplink.url`), `MQTT_TOPIC_PREFIX` (`uplink.topic_prefix`) and
//! `LOG_LEVEL` (`log_level`). `PROMETHEUS_PORT` is the coordinator's; the
//! agent's own port is `http.listen`.
//!
//! [`AgentConfig::validate`] fails early, naming the key.

use std::path::{Path, PathBuf};

use sad_common::ModelKind;
use sad_common::config::{ConfigError, EnvSettings, env as envvars};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::http::HttpConfig;
use crate::outbox::OutboxConfig;
use crate::pipeline::PipelineConfig;
use crate::rules::RulesConfig;
use crate::sources::file::FileSourceConfig;
use crate::sources::http::HttpSourceConfig;
use crate::sources::mqtt::MqttSourceConfig;
use crate::sources::prometheus::PrometheusSourceConfig;
use crate::uplink::UplinkConfig;

/// Why a configuration cannot be used.
#[derive(Debug, Error)]
pub enum AgentConfigError {
    /// The file or an environment variable could not be read or parsed.
    #[error(transparent)]
    Load(#[from] ConfigError),
    /// A value is invalid.
    #[error("{key}: {reason}")]
    Invalid {
        /// The offending key, e.g. `sources[1].mapping.fields`.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

fn invalid(key: impl Into<String>, reason: impl ToString) -> AgentConfigError {
    AgentConfigError::Invalid {
        key: key.into(),
        reason: reason.to_string(),
    }
}

/// `[model]`: where models live and how they are trusted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Directory of accepted bundles (default `./models`; `MODEL_PATH`).
    pub path: PathBuf,
    /// ed25519 public key of the coordinator: 64 hex digits, or a file holding them (default none = unsigned local bundles only).
    pub pinned_public_key: Option<String>,
    /// Preferred model kind (`MODEL_TYPE`); informational, reported at start (default none).
    pub model_type: Option<ModelKind>,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from(envvars::DEFAULT_MODEL_PATH),
            pinned_public_key: None,
            model_type: None,
        }
    }
}

impl ModelConfig {
    /// Reads the pinned key (hex inline or from a file).
    pub fn pinned_key(&self) -> Result<Option<ed25519_dalek::VerifyingKey>, AgentConfigError> {
        let Some(spec) = &self.pinned_public_key else {
            return Ok(None);
        };
        let key = "model.pinned_public_key";
        let text = if is_hex64(spec.trim()) {
            spec.trim().to_string()
        } else {
            std::fs::read_to_string(spec)
                .map_err(|e| {
                    invalid(
                        key,
                        format!("neither 64 hex digits nor a readable file: {e}"),
                    )
                })?
                .trim()
                .to_string()
        };
        if !is_hex64(&text) {
            return Err(invalid(key, "the key must be 64 hex digits"));
        }
        let mut bytes = [0u8; 32];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|e| invalid(key, e))?;
        }
        ed25519_dalek::VerifyingKey::from_bytes(&bytes)
            .map(Some)
            .map_err(|e| invalid(key, format!("not an ed25519 public key: {e}")))
    }
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// One `[[sources]]` entry, tagged by `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SourceConfig {
    /// MQTT subscription.
    Mqtt(MqttSourceConfig),
    /// File / stdin replay.
    File(FileSourceConfig),
    /// `POST /ingest`.
    Http(HttpSourceConfig),
    /// Prometheus scrape.
    Prometheus(PrometheusSourceConfig),
}

impl SourceConfig {
    /// The source's name.
    pub fn name(&self) -> &str {
        match self {
            SourceConfig::Mqtt(c) => &c.name,
            SourceConfig::File(c) => &c.name,
            SourceConfig::Http(c) => &c.name,
            SourceConfig::Prometheus(c) => &c.name,
        }
    }
}

/// The whole agent configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Agent id, an MQTT topic level (default: the host name, cleaned).
    #[serde(default = "default_agent_id")]
    pub agent_id: String,
    /// Fleet whose models the agent follows (default `default`).
    #[serde(default = "default_fleet")]
    pub fleet: String,
    /// Canary group (default none).
    #[serde(default)]
    pub group: Option<String>,
    /// Directory of the agent's state; relative outbox paths live under it (default `./data`).
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Log filter (default `info`; `LOG_LEVEL`).
    #[serde(default = "default_log_level")]
    pub log_level: String,
    /// The outbox (default `{data_dir}/outbox`, 64 MiB).
    #[serde(default)]
    pub outbox: OutboxConfig,
    /// The uplink to the coordinator's broker (default `mqtt://127.0.0.1:1883`).
    #[serde(default)]
    pub uplink: UplinkConfig,
    /// Models.
    #[serde(default)]
    pub model: ModelConfig,
    /// Alert rules.
    #[serde(default)]
    pub rules: RulesConfig,
    /// Pipeline.
    #[serde(default)]
    pub pipeline: PipelineConfig,
    /// Local HTTP endpoint.
    #[serde(default)]
    pub http: HttpConfig,
    /// Event sources (default none).
    #[serde(default)]
    pub sources: Vec<SourceConfig>,
}

fn default_agent_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_default();
    let cleaned: String = host
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    if cleaned.is_empty() {
        "agent".into()
    } else {
        cleaned
    }
}
fn default_fleet() -> String {
    "default".into()
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("./data")
}
fn default_log_level() -> String {
    envvars::DEFAULT_LOG_LEVEL.into()
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            agent_id: default_agent_id(),
            fleet: default_fleet(),
            group: None,
            data_dir: default_data_dir(),
            log_level: default_log_level(),
            outbox: OutboxConfig::default(),
            uplink: UplinkConfig::default(),
            model: ModelConfig::default(),
            rules: RulesConfig::default(),
            pipeline: PipelineConfig::default(),
            http: HttpConfig::default(),
            sources: Vec::new(),
        }
    }
}

impl AgentConfig {
    /// Reads a TOML file, applies the process environment and validates.
    pub fn load(path: &Path) -> Result<AgentConfig, AgentConfigError> {
        let mut cfg: AgentConfig = sad_common::config::load_toml(path)?;
        cfg.apply_env(|k| std::env::var(k).ok())?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Applies the seed's variables found through `lookup` (unset or blank = keep the file's value).
    pub fn apply_env(
        &mut self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<(), AgentConfigError> {
        let env = EnvSettings::from_lookup(&lookup)?;
        let set = |k: &str| lookup(k).is_some_and(|v| !v.trim().is_empty());
        if set(envvars::MODEL_PATH) {
            self.model.path = env.model_path.clone();
        }
        if set(envvars::MODEL_TYPE) {
            self.model.model_type = Some(env.model_type);
        }
        if set(envvars::THRESHOLD) {
            self.rules.threshold = env.threshold;
        }
        if let Some(url) = env.mqtt_url.clone() {
            self.uplink.url = url;
        }
        if set(envvars::MQTT_TOPIC_PREFIX) {
            self.uplink.topic_prefix = env.mqtt_topic_prefix.clone();
        }
        if set(envvars::LOG_LEVEL) {
            self.log_level = env.log_level.clone();
        }
        Ok(())
    }

    /// Checks every value, naming the first invalid key.
    pub fn validate(&self) -> Result<(), AgentConfigError> {
        use sad_common::wire::validate_id;
        validate_id("agent_id", &self.agent_id).map_err(|e| invalid("agent_id", e))?;
        validate_id("fleet", &self.fleet).map_err(|e| invalid("fleet", e))?;
        if let Some(g) = &self.group {
            validate_id("group", g).map_err(|e| invalid("group", e))?;
        }
        if self.outbox.max_bytes < 64 * 1024 {
            return Err(invalid("outbox.max_bytes", "must be at least 65536"));
        }
        self.rules.validate().map_err(|e| invalid("rules", e))?;
        self.pipeline
            .validate()
            .map_err(|e| invalid("pipeline", e))?;
        self.model.pinned_key()?;
        let mut names: Vec<&str> = Vec::new();
        let mut http_sources = 0;
        for (i, s) in self.sources.iter().enumerate() {
            let at = format!("sources[{i}]");
            if names.contains(&s.name()) {
                return Err(invalid(
                    format!("{at}.name"),
                    format!("{:?} is used twice", s.name()),
                ));
            }
            sad_common::wire::validate_id("name", s.name())
                .map_err(|e| invalid(format!("{at}.name"), e))?;
            names.push(s.name());
            match s {
                SourceConfig::Mqtt(c) => c.validate().map_err(|e| invalid(&at, e))?,
                SourceConfig::File(c) => c.validate().map_err(|e| invalid(&at, e))?,
                SourceConfig::Prometheus(c) => c.validate().map_err(|e| invalid(&at, e))?,
                SourceConfig::Http(c) => {
                    http_sources += 1;
                    if http_sources > 1 {
                        return Err(invalid(at, "only one http source can serve /ingest"));
                    }
                    if !self.http.enabled {
                        return Err(invalid(at, "an http source needs http.enabled = true"));
                    }
                    c.mapping.build(&c.name).map_err(|e| invalid(&at, e))?;
                }
            }
        }
        Ok(())
    }

    /// The outbox config with a relative path resolved under `data_dir`.
    pub fn outbox_config(&self) -> OutboxConfig {
        let mut o = self.outbox.clone();
        if o.path.is_relative() {
            let rel = o.path.strip_prefix("./").unwrap_or(&o.path).to_path_buf();
            o.path = self.data_dir.join(rel);
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const EXAMPLE: &str = include_str!("../examples/agent.toml");

    fn parse(text: &str) -> Result<AgentConfig, AgentConfigError> {
        let cfg: AgentConfig = sad_common::config::parse_toml("agent.toml", text)?;
        cfg.validate()?;
        Ok(cfg)
    }

    #[test]
    fn the_example_config_parses_and_validates() {
        let cfg = parse(EXAMPLE).unwrap();
        assert_eq!(cfg.sources.len(), 4);
        assert_eq!(cfg.outbox_config().path, cfg.data_dir.join("outbox"));
    }

    #[test]
    fn an_empty_file_takes_the_defaults() {
        let cfg = parse("agent_id = \"e1\"").unwrap();
        assert_eq!(cfg.fleet, "default");
        assert_eq!(cfg.http.listen.port(), 9102);
        assert_eq!(cfg.outbox.max_bytes, 64 * 1024 * 1024);
        assert!(cfg.sources.is_empty());
    }

    #[test]
    fn unknown_keys_and_invalid_values_name_the_key() {
        let e = parse("agent_id = \"e1\"\ncolour = 1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("colour"), "{e}");
        let e = parse("agent_id = \"e 1\"").unwrap_err().to_string();
        assert!(e.starts_with("agent_id:"), "{e}");
        let e = parse("[rules]\nmin_duration = 0").unwrap_err().to_string();
        assert!(e.contains("min_duration"), "{e}");
        let e = parse(
            "[[sources]]\ntype = \"file\"\nname = \"f\"\npath = \"x.csv\"\nspeed = -1\n[sources.mapping]\nfields = [\"a\"]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("sources[0]") && e.contains("speed"), "{e}");
        let e = parse(
            "[[sources]]\ntype = \"file\"\nname = \"f\"\npath = \"x.csv\"\nbogus = 1\n[sources.mapping]\nfields = [\"a\"]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("bogus"), "{e}");
    }

    #[test]
    fn environment_variables_override_the_file() {
        let mut cfg = parse(EXAMPLE).unwrap();
        let vars: HashMap<&str, &str> = [
            ("THRESHOLD", "0.9"),
            ("MODEL_PATH", "/m"),
            ("MQTT_URL", "mqtt://c:1884"),
            ("MQTT_TOPIC_PREFIX", "x/y"),
            ("LOG_LEVEL", "debug"),
            ("MODEL_TYPE", "autoencoder"),
        ]
        .into_iter()
        .collect();
        cfg.apply_env(|k| vars.get(k).map(|v| v.to_string()))
            .unwrap();
        assert_eq!(cfg.rules.threshold, Some(0.9));
        assert_eq!(cfg.model.path, PathBuf::from("/m"));
        assert_eq!(cfg.uplink.url, "mqtt://c:1884");
        assert_eq!(cfg.uplink.topic_prefix, "x/y");
        assert_eq!(cfg.log_level, "debug");
        assert_eq!(cfg.model.model_type, Some(ModelKind::Autoencoder));
        let e = cfg
            .apply_env(|k| (k == "THRESHOLD").then(|| "2".to_string()))
            .unwrap_err();
        assert!(e.to_string().contains("THRESHOLD"));
    }

    #[test]
    fn a_pinned_key_is_read_inline_or_from_a_file() {
        let sk = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
        let hex: String = sk
            .verifying_key()
            .to_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let m = ModelConfig {
            pinned_public_key: Some(hex.clone()),
            ..Default::default()
        };
        assert_eq!(m.pinned_key().unwrap(), Some(sk.verifying_key()));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("key.hex");
        std::fs::write(&p, format!("{hex}\n")).unwrap();
        let m = ModelConfig {
            pinned_public_key: Some(p.display().to_string()),
            ..Default::default()
        };
        assert_eq!(m.pinned_key().unwrap(), Some(sk.verifying_key()));
        let m = ModelConfig {
            pinned_public_key: Some("zz".into()),
            ..Default::default()
        };
        assert!(
            m.pinned_key()
                .unwrap_err()
                .to_string()
                .starts_with("model.pinned_public_key")
        );
    }
}
