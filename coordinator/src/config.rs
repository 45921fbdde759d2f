//! The coordinator's settings: the seed's environment variables
//! ([`EnvSettings`]) plus an optional TOML file for what variables express badly.
//!
//! Precedence: environment variable > TOML value > documented default.
//!
//! | TOML key | variable | default | meaning |
//! |---|---|---|---|
//! | `api_listen` | `API_LISTEN` | `127.0.0.1:8001` | REST API address (the seed's port) |
//! | `prometheus_listen` | `PROMETHEUS_PORT` | `127.0.0.1:9091` | `/metrics` address |
//! | `data_dir` | `DATA_DIR` | `./data` | alert store, rules, training CSVs |
//! | `api_token` | `API_TOKEN` | unset | bearer token mutating endpoints require |
//! | `max_body_bytes` | | 8 MiB | largest request body |
//! | `max_batch_rows` | | 10 000 | largest detect batch (the seed's cap) |
//! | `broker_listen` | | `127.0.0.1:1883` | embedded MQTT broker, used when `MQTT_URL` is unset |
//! | `fleet` | | `default` | fleet whose config topics rule changes are published on |
//! | `[rollout]` | | see [`RolloutSettings`] | canary health check and automatic promote/rollback |

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use sad_common::config::{ConfigError, EnvSettings, load_toml};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Why the coordinator's configuration cannot be used.
#[derive(Debug, Error)]
pub enum CoordinatorConfigError {
    /// A variable or the file could not be read or parsed.
    #[error(transparent)]
    Load(#[from] ConfigError),
    /// A value is invalid.
    #[error("invalid {key}: {reason}")]
    Invalid {
        /// The offending key or variable.
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// The optional TOML file; every key has a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    /// REST API address (default `127.0.0.1:8001`).
    pub api_listen: SocketAddr,
    /// Prometheus address; its port is overridden by `PROMETHEUS_PORT` (default `127.0.0.1:9091`).
    pub prometheus_listen: SocketAddr,
    /// Data directory (default `./data`).
    pub data_dir: PathBuf,
    /// Bearer token of mutating endpoints (default none: open).
    pub api_token: Option<String>,
    /// Largest request body in bytes (default 8 MiB).
    pub max_body_bytes: usize,
    /// Largest detect batch in rows (default 10 000).
    pub max_batch_rows: usize,
    /// Embedded broker address (default `127.0.0.1:1883`).
    pub broker_listen: SocketAddr,
    /// Fleet the rules and models are published to (default `default`).
    pub fleet: String,
    /// Canary and rollout settings (`[rollout]` table).
    pub rollout: RolloutSettings,
}

/// The `[rollout]` table: how canaries are judged. Durations in seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RolloutSettings {
    /// A canary healthy this long is promoted (default 300).
    pub promote_after_s: f64,
    /// A canary without a verdict after this long is rolled back (default 600).
    pub canary_timeout_s: f64,
    /// Period of the health check (default 5).
    pub check_every_s: f64,
    /// Unhealthy checks in a row before rolling back (default 2).
    pub unhealthy_checks: u32,
    /// Scores the canary agents must have summarised before a verdict (default 200).
    pub min_scores: u64,
    /// Canary flag rate bound as a multiple of the reference rate (default 3).
    pub max_rate_ratio: f64,
    /// Canary flag rate bound as reference rate + margin; the larger bound applies (default 0.05).
    pub rate_margin: f64,
    /// Largest shift of the median score against the reference (default 0.35).
    pub max_median_shift: f64,
    /// Promote and roll back automatically (default true); manual endpoints work either way.
    pub auto: bool,
    /// Group that versions from `RETRAIN_INTERVAL` retraining go to first
    /// (default none: a retrained version that passes its gate goes to the
    /// whole fleet, if the model is published at all).
    pub retrain_canary_group: Option<String>,
    /// Ask for retraining when a deployed model drifts (default false).
    pub retrain_on_drift: bool,
}

impl Default for RolloutSettings {
    fn default() -> Self {
        let d = crate::rollout::RolloutConfig::default();
        Self {
            promote_after_s: d.promote_after.as_secs_f64(),
            canary_timeout_s: d.canary_timeout.as_secs_f64(),
            check_every_s: d.check_every.as_secs_f64(),
            unhealthy_checks: d.unhealthy_checks,
            min_scores: d.min_scores,
            max_rate_ratio: d.max_rate_ratio,
            rate_margin: d.rate_margin,
            max_median_shift: d.max_median_shift,
            auto: d.auto,
            retrain_canary_group: None,
            retrain_on_drift: false,
        }
    }
}

impl RolloutSettings {
    /// Checks that durations are positive and finite and the bounds sane.
    pub fn validate(&self) -> Result<(), CoordinatorConfigError> {
        let bad = |key, reason: &str| {
            Err(CoordinatorConfigError::Invalid {
                key,
                reason: reason.to_string(),
            })
        };
        for (key, v) in [
            ("rollout.promote_after_s", self.promote_after_s),
            ("rollout.canary_timeout_s", self.canary_timeout_s),
            ("rollout.check_every_s", self.check_every_s),
        ] {
            if !(v.is_finite() && v > 0.0 && v < 1e9) {
                return bad(key, "must be a positive number of seconds");
            }
        }
        if self.unhealthy_checks == 0 {
            return bad("rollout.unhealthy_checks", "must be at least 1");
        }
        if !(self.max_rate_ratio.is_finite() && self.max_rate_ratio >= 1.0) {
            return bad("rollout.max_rate_ratio", "must be at least 1");
        }
        for (key, v) in [
            ("rollout.rate_margin", self.rate_margin),
            ("rollout.max_median_shift", self.max_median_shift),
        ] {
            if !(v.is_finite() && (0.0..=1.0).contains(&v)) {
                return bad(key, "must be in [0, 1]");
            }
        }
        if let Some(g) = &self.retrain_canary_group
            && sad_common::wire::validate_id("group", g).is_err()
        {
            return bad(
                "rollout.retrain_canary_group",
                "must be an id ([A-Za-z0-9_.-])",
            );
        }
        Ok(())
    }

    /// The rollout manager's settings for `fleet` under `prefix`.
    pub fn to_config(&self, fleet: &str, prefix: &str) -> crate::rollout::RolloutConfig {
        crate::rollout::RolloutConfig {
            fleet: fleet.to_string(),
            prefix: prefix.to_string(),
            promote_after: std::time::Duration::from_secs_f64(self.promote_after_s),
            canary_timeout: std::time::Duration::from_secs_f64(self.canary_timeout_s),
            unhealthy_checks: self.unhealthy_checks,
            min_scores: self.min_scores,
            max_rate_ratio: self.max_rate_ratio,
            rate_margin: self.rate_margin,
            max_median_shift: self.max_median_shift,
            auto: self.auto,
            check_every: std::time::Duration::from_secs_f64(self.check_every_s),
        }
    }
}

impl Default for FileConfig {
    fn default() -> Self {
        Self {
            api_listen: SocketAddr::from(([127, 0, 0, 1], 8001)),
            prometheus_listen: SocketAddr::from(([127, 0, 0, 1], 9091)),
            data_dir: PathBuf::from("./data"),
            api_token: None,
            max_body_bytes: 8 * 1024 * 1024,
            max_batch_rows: 10_000,
            broker_listen: SocketAddr::from(([127, 0, 0, 1], 1883)),
            fleet: "default".into(),
            rollout: RolloutSettings::default(),
        }
    }
}

/// Everything `serve` needs, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct CoordinatorConfig {
    /// The seed's variables (Kafka, model, threshold, MQTT, log level).
    pub env: EnvSettings,
    /// REST API address.
    pub api_listen: SocketAddr,
    /// Prometheus `/metrics` address.
    pub prometheus_listen: SocketAddr,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Bearer token of mutating endpoints, if any.
    pub api_token: Option<String>,
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// Largest detect batch in rows.
    pub max_batch_rows: usize,
    /// Embedded broker address (when `env.mqtt_url` is unset).
    pub broker_listen: SocketAddr,
    /// Fleet the rules and models are published to.
    pub fleet: String,
    /// Canary and rollout settings.
    pub rollout: RolloutSettings,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        Self::from_parts(EnvSettings::default(), FileConfig::default(), |_| None)
            .unwrap_or_else(|_| unreachable_default())
    }
}

// The defaults are valid; this keeps `Default` panic-free without an unwrap.
fn unreachable_default() -> CoordinatorConfig {
    let f = FileConfig::default();
    CoordinatorConfig {
        env: EnvSettings::default(),
        api_listen: f.api_listen,
        prometheus_listen: f.prometheus_listen,
        data_dir: f.data_dir,
        api_token: None,
        max_body_bytes: f.max_body_bytes,
        max_batch_rows: f.max_batch_rows,
        broker_listen: f.broker_listen,
        fleet: f.fleet,
        rollout: f.rollout,
    }
}

impl CoordinatorConfig {
    /// Reads the process environment and, if given, the TOML file.
    pub fn load(file: Option<&Path>) -> Result<Self, CoordinatorConfigError> {
        let env = EnvSettings::from_env()?;
        let file = match file {
            Some(p) => load_toml(p)?,
            None => FileConfig::default(),
        };
        Self::from_parts(env, file, |k| std::env::var(k).ok())
    }

    /// Combines parsed variables, the file and the coordinator's own variables
    /// (`API_LISTEN`, `API_TOKEN`, `DATA_DIR`, read through `lookup`).
    pub fn from_parts(
        env: EnvSettings,
        file: FileConfig,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, CoordinatorConfigError> {
        let get = |k: &str| {
            lookup(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let mut api_listen = file.api_listen;
        if let Some(v) = get("API_LISTEN") {
            api_listen = v.parse().map_err(|_| CoordinatorConfigError::Invalid {
                key: "API_LISTEN",
                reason: format!("{v:?} is not an address such as 127.0.0.1:8001"),
            })?;
        }
        let mut prometheus_listen = file.prometheus_listen;
        // PROMETHEUS_PORT keeps the seed's meaning; it wins over the file's port
        // only when it was set (its default equals the file default).
        if env.prometheus_port != sad_common::config::env::DEFAULT_PROMETHEUS_PORT
            || file.prometheus_listen.port() == sad_common::config::env::DEFAULT_PROMETHEUS_PORT
        {
            prometheus_listen.set_port(env.prometheus_port);
        }
        let data_dir = get("DATA_DIR").map(PathBuf::from).unwrap_or(file.data_dir);
        let api_token = get("API_TOKEN").or(file.api_token);
        let cfg = Self {
            env,
            api_listen,
            prometheus_listen,
            data_dir,
            api_token,
            max_body_bytes: file.max_body_bytes,
            max_batch_rows: file.max_batch_rows,
            broker_listen: file.broker_listen,
            fleet: file.fleet,
            rollout: file.rollout,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the caps, the token and the fleet id.
    pub fn validate(&self) -> Result<(), CoordinatorConfigError> {
        let bad = |key, reason: &str| {
            Err(CoordinatorConfigError::Invalid {
                key,
                reason: reason.to_string(),
            })
        };
        if self.max_body_bytes < 1024 {
            return bad("max_body_bytes", "must be at least 1024");
        }
        if self.max_batch_rows == 0 {
            return bad("max_batch_rows", "must be at least 1");
        }
        self.rollout.validate()?;
        if let Some(t) = &self.api_token
            && (t.len() < 8 || t.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return bad(
                "api_token",
                "must be at least 8 characters without whitespace",
            );
        }
        if sad_common::wire::validate_id("fleet", &self.fleet).is_err() {
            return bad("fleet", "must be 1-128 characters of A-Z a-z 0-9 _ . -");
        }
        Ok(())
    }

    /// Directory of model bundles (`MODEL_PATH`).
    pub fn model_dir(&self) -> &Path {
        &self.env.model_path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn with(
        vars: &[(&str, &str)],
        file: FileConfig,
    ) -> Result<CoordinatorConfig, CoordinatorConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let env = EnvSettings::from_lookup(|k| map.get(k).cloned())?;
        CoordinatorConfig::from_parts(env, file, |k| map.get(k).cloned())
    }

    #[test]
    fn defaults_use_the_seed_ports_and_caps() {
        let c = with(&[], FileConfig::default()).unwrap();
        assert_eq!(c.api_listen.port(), 8001);
        assert_eq!(c.prometheus_listen.port(), 9091);
        assert_eq!(c.max_batch_rows, 10_000);
        assert_eq!(c.max_body_bytes, 8 * 1024 * 1024);
        assert_eq!(c.api_token, None);
        assert_eq!(c, CoordinatorConfig::default());
    }

    #[test]
    fn variables_override_the_file() {
        let file = FileConfig {
            api_token: Some("file-token-123".into()),
            ..FileConfig::default()
        };
        let c = with(
            &[
                ("PROMETHEUS_PORT", "9200"),
                ("API_TOKEN", "env-token-123"),
                ("API_LISTEN", "0.0.0.0:8080"),
                ("DATA_DIR", "/tmp/x"),
            ],
            file,
        )
        .unwrap();
        assert_eq!(c.prometheus_listen.port(), 9200);
        assert_eq!(c.api_token.as_deref(), Some("env-token-123"));
        assert_eq!(c.api_listen.port(), 8080);
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
    }

    #[test]
    fn bad_values_are_named() {
        let e = with(&[("API_LISTEN", "nowhere")], FileConfig::default()).unwrap_err();
        assert!(e.to_string().contains("API_LISTEN"), "{e}");
        let e = with(&[("API_TOKEN", "short")], FileConfig::default()).unwrap_err();
        assert!(e.to_string().contains("api_token"), "{e}");
        let file = FileConfig {
            max_batch_rows: 0,
            ..FileConfig::default()
        };
        assert!(with(&[], file).is_err());
    }

    #[test]
    fn unknown_toml_keys_are_rejected() {
        let e = sad_common::config::parse_toml::<FileConfig>("c.toml", "api_port = 1\n");
        assert!(e.is_err());
        let f: FileConfig =
            sad_common::config::parse_toml("c.toml", "api_listen = \"127.0.0.1:0\"\n").unwrap();
        assert_eq!(f.api_listen.port(), 0);
    }
}
