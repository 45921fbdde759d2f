//! Wire types exchanged between agents and the coordinator.
//!
//! Every type derives serde and is framed with [`crate::frame`] (postcard
//! behind a version byte) between agent and coordinator. Every type has a
//! `validate` method that enforces the caps in [`limits`]; [`crate::frame::decode`]
//! runs it on everything it decodes, so a decoded value is always within caps.
//!
//! Delivery contract: every alert has `alert_id = {agent_id}:{seq}` with `seq`
//! monotonic per agent (agents start at 1, so an [`Ack`] with `up_to_seq = 0`
//! acknowledges nothing). An [`Ack`] means every `seq <= up_to_seq` of that
//! agent is durable on the coordinator side.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::calibration::{Calibration, StandardScaler};
use crate::model_kind::ModelKind;

/// Caps enforced by the `validate` methods and by frame decoding.
pub mod limits {
    /// Longest id (agent, fleet, group, model name), in bytes.
    pub const MAX_ID_BYTES: usize = 128;
    /// Longest series key, in bytes.
    pub const MAX_SERIES_BYTES: usize = 256;
    /// Longest feature or metric name, in bytes.
    pub const MAX_NAME_BYTES: usize = 128;
    /// Most values in one event, alert or feature vector; most features of a model.
    pub const MAX_VALUES: usize = 4096;
    /// Most feature contributions in one alert's explanation.
    pub const MAX_EXPLANATION: usize = 64;
    /// Most alerts in one [`super::AlertBatch`].
    pub const MAX_ALERTS_PER_BATCH: usize = 10_000;
    /// Most model statuses in one heartbeat.
    pub const MAX_MODELS_PER_HEARTBEAT: usize = 64;
    /// Most rows in one [`super::Samples`] message.
    pub const MAX_SAMPLE_ROWS: usize = 10_000;
    /// Most numbers (rows × features) in one [`super::Samples`] message.
    pub const MAX_SAMPLE_VALUES: usize = 1_000_000;
    /// Largest model payload, in bytes (64 MiB).
    pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024 * 1024;
    /// Largest bundle signature, in bytes (ed25519 needs 64).
    pub const MAX_SIGNATURE_BYTES: usize = 512;
    /// Longest window of a windowed model, in events.
    pub const MAX_WINDOW: u32 = 4096;
    /// Most training metrics in a manifest.
    pub const MAX_METRICS: usize = 64;
    /// Longest training data description in a manifest, in bytes.
    pub const MAX_TRAINING_DATA_BYTES: usize = 1024;
    /// Longest free-text notes in a manifest, in bytes.
    pub const MAX_NOTES_BYTES: usize = 4096;

    /// Largest encoded [`super::Event`] frame.
    pub const MAX_EVENT_FRAME_BYTES: usize = 64 * 1024;
    /// Largest encoded [`super::FeatureVector`] frame.
    pub const MAX_FEATURE_VECTOR_FRAME_BYTES: usize = 1024 * 1024;
    /// Largest encoded [`super::Alert`] frame (a maximal alert is about 43 KiB).
    pub const MAX_ALERT_FRAME_BYTES: usize = 64 * 1024;
    /// Largest encoded [`super::AlertBatch`] frame; agents split batches by bytes too.
    pub const MAX_ALERT_BATCH_FRAME_BYTES: usize = 16 * 1024 * 1024;
    /// Largest encoded [`super::Ack`] frame.
    pub const MAX_ACK_FRAME_BYTES: usize = 256;
    /// Largest encoded [`super::Heartbeat`] frame.
    pub const MAX_HEARTBEAT_FRAME_BYTES: usize = 64 * 1024;
    /// Largest encoded [`super::Samples`] frame.
    pub const MAX_SAMPLES_FRAME_BYTES: usize = 16 * 1024 * 1024;
    /// Largest encoded [`super::ModelManifest`] frame.
    pub const MAX_MANIFEST_FRAME_BYTES: usize = 1024 * 1024;
    /// Largest encoded [`super::ModelBundle`] frame: payload, manifest and slack.
    pub const MAX_BUNDLE_FRAME_BYTES: usize =
        MAX_PAYLOAD_BYTES + MAX_MANIFEST_FRAME_BYTES + 64 * 1024;
}

/// A wire value that breaks the contract; `field` is a path such as `alerts[3].score`.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum WireError {
    /// A required string is empty.
    #[error("{field} is empty")]
    Empty {
        /// Path of the offending field.
        field: String,
    },
    /// A string or collection is longer than its cap.
    #[error("{field} has {len} {unit}, more than the cap of {cap}")]
    TooLong {
        /// Path of the offending field.
        field: String,
        /// Actual length.
        len: usize,
        /// The cap from [`limits`].
        cap: usize,
        /// What is counted (bytes, items, ...).
        unit: &'static str,
    },
    /// An id contains a character outside `[A-Za-z0-9_.-]`.
    #[error("{field} {value:?} contains {ch:?}: ids may only use A-Z a-z 0-9 _ . -")]
    BadIdChar {
        /// Path of the offending field.
        field: String,
        /// The rejected id.
        value: String,
        /// First offending character.
        ch: char,
    },
    /// A name or series key contains a control character.
    #[error("{field} contains a control character")]
    ControlChar {
        /// Path of the offending field.
        field: String,
    },
    /// A measurement is NaN or infinite.
    #[error("{field} is not finite")]
    NotFinite {
        /// Path of the offending field.
        field: String,
    },
    /// A number lies outside its allowed range.
    #[error("{field} = {value} is outside [{min}, {max}]")]
    OutOfRange {
        /// Path of the offending field.
        field: String,
        /// The rejected value.
        value: f64,
        /// Smallest allowed value.
        min: f64,
        /// Largest allowed value.
        max: f64,
    },
    /// Any other broken rule, described in words.
    #[error("{field}: {reason}")]
    Invalid {
        /// Path of the offending field.
        field: String,
        /// What is wrong.
        reason: String,
    },
}

impl WireError {
    /// Prefixes the field path, e.g. `score` becomes `alerts[3].score`.
    pub fn within(mut self, prefix: &str) -> Self {
        let field = match &mut self {
            WireError::Empty { field }
            | WireError::TooLong { field, .. }
            | WireError::BadIdChar { field, .. }
            | WireError::ControlChar { field }
            | WireError::NotFinite { field }
            | WireError::OutOfRange { field, .. }
            | WireError::Invalid { field, .. } => field,
        };
        *field = format!("{prefix}.{field}");
        self
    }

    fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        WireError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

// ---------------------------------------------------------------- checks

/// Checks an id (agent, fleet, group, model name): non-empty, at most
/// [`limits::MAX_ID_BYTES`], only `[A-Za-z0-9_.-]` (ids become MQTT topic levels).
pub fn validate_id(field: &str, id: &str) -> Result<(), WireError> {
    if id.is_empty() {
        return Err(WireError::Empty {
            field: field.into(),
        });
    }
    check_len(field, id.len(), limits::MAX_ID_BYTES, "bytes")?;
    if let Some(ch) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(WireError::BadIdChar {
            field: field.into(),
            value: id.into(),
            ch,
        });
    }
    Ok(())
}

/// Checks a series key: non-empty, at most [`limits::MAX_SERIES_BYTES`], no control characters.
pub fn validate_series(field: &str, series: &str) -> Result<(), WireError> {
    validate_text(field, series, limits::MAX_SERIES_BYTES)
}

/// Checks a feature or metric name: non-empty, at most [`limits::MAX_NAME_BYTES`], no control characters.
pub fn validate_name(field: &str, name: &str) -> Result<(), WireError> {
    validate_text(field, name, limits::MAX_NAME_BYTES)
}

fn validate_text(field: &str, s: &str, cap: usize) -> Result<(), WireError> {
    if s.is_empty() {
        return Err(WireError::Empty {
            field: field.into(),
        });
    }
    check_len(field, s.len(), cap, "bytes")?;
    if s.chars().any(char::is_control) {
        return Err(WireError::ControlChar {
            field: field.into(),
        });
    }
    Ok(())
}

fn check_len(field: &str, len: usize, cap: usize, unit: &'static str) -> Result<(), WireError> {
    if len > cap {
        return Err(WireError::TooLong {
            field: field.into(),
            len,
            cap,
            unit,
        });
    }
    Ok(())
}

fn check_finite(field: &str, x: f64) -> Result<(), WireError> {
    if x.is_finite() {
        Ok(())
    } else {
        Err(WireError::NotFinite {
            field: field.into(),
        })
    }
}

fn check_unit_interval(field: &str, x: f64) -> Result<(), WireError> {
    check_finite(field, x)?;
    if !(0.0..=1.0).contains(&x) {
        return Err(WireError::OutOfRange {
            field: field.into(),
            value: x,
            min: 0.0,
            max: 1.0,
        });
    }
    Ok(())
}

fn check_values(field: &str, values: &[f64]) -> Result<(), WireError> {
    check_len(field, values.len(), limits::MAX_VALUES, "values")?;
    match values.iter().position(|v| !v.is_finite()) {
        Some(i) => Err(WireError::NotFinite {
            field: format!("{field}[{i}]"),
        }),
        None => Ok(()),
    }
}

fn check_feature_names(field: &str, names: &[String]) -> Result<(), WireError> {
    check_len(field, names.len(), limits::MAX_VALUES, "names")?;
    for (i, n) in names.iter().enumerate() {
        validate_name(&format!("{field}[{i}]"), n)?;
    }
    Ok(())
}

// ---------------------------------------------------------------- events

/// One reading of a series, as the agent's sources produce it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Series key (sensor, machine, node); any UTF-8 without control characters.
    pub series: String,
    /// Event time in milliseconds since the Unix epoch.
    pub ts_ms: i64,
    /// The measurements, all finite.
    #[serde(deserialize_with = "capped::vec::<_, _, { limits::MAX_VALUES }>")]
    pub values: Vec<f64>,
    /// Ground truth on labelled benchmark streams (`true` = anomaly).
    #[serde(default)]
    pub label: Option<bool>,
}

impl Event {
    /// Checks the series key and that the values are finite and within [`limits::MAX_VALUES`].
    pub fn validate(&self) -> Result<(), WireError> {
        validate_series("series", &self.series)?;
        check_values("values", &self.values)
    }
}

/// Named features computed from one or more events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureVector {
    /// Feature names, one per value.
    #[serde(deserialize_with = "capped::vec::<_, _, { limits::MAX_VALUES }>")]
    pub names: Vec<String>,
    /// Feature values, all finite.
    #[serde(deserialize_with = "capped::vec::<_, _, { limits::MAX_VALUES }>")]
    pub values: Vec<f64>,
}

impl FeatureVector {
    /// Checks names, finiteness and that there is one name per value.
    pub fn validate(&self) -> Result<(), WireError> {
        check_feature_names("names", &self.names)?;
        check_values("values", &self.values)?;
        if self.names.len() != self.values.len() {
            return Err(WireError::invalid(
                "values",
                format!(
                    "{} values for {} names",
                    self.values.len(),
                    self.names.len()
                ),
            ));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- alerts

/// How urgent an alert is; ordered `Info < Warning < Critical`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Worth a look.
    Info,
    /// Likely anomalous.
    Warning,
    /// Clearly anomalous.
    Critical,
}

impl Severity {
    /// All severities, lowest first.
    pub const ALL: [Severity; 3] = [Severity::Info, Severity::Warning, Severity::Critical];

    /// Lowercase name, as in JSON and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How much one feature contributed to an anomaly score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureContribution {
    /// Feature name.
    pub feature: String,
    /// Contribution weight (larger = more responsible), finite.
    pub weight: f64,
}

/// An anomaly raised by an agent (or by central detection), explained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Agent that raised the alert.
    pub agent_id: String,
    /// Per-agent monotonic sequence number, persisted by the agent.
    pub seq: u64,
    /// Series the anomalous event belongs to.
    pub series: String,
    /// Event time in milliseconds since the Unix epoch.
    pub ts_ms: i64,
    /// Name of the model that scored the event.
    pub model: String,
    /// Kind of that model.
    pub model_kind: ModelKind,
    /// Version of that model.
    pub model_version: u64,
    /// Calibrated score in `[0, 1]`.
    pub score: f64,
    /// The detector's raw score.
    pub raw_score: f64,
    /// Threshold the score was compared with.
    pub threshold: f64,
    /// Severity assigned by the alert rules.
    pub severity: Severity,
    /// Consecutive alerts of one anomaly share an episode id.
    pub episode_id: u64,
    /// Top contributing features, most important first.
    #[serde(deserialize_with = "capped::vec::<_, _, { limits::MAX_EXPLANATION }>")]
    pub explanation: Vec<FeatureContribution>,
    /// The event's values.
    #[serde(deserialize_with = "capped::vec::<_, _, { limits::MAX_VALUES }>")]
    pub values: Vec<f64>,
    /// Ground truth when the stream is labelled.
    #[serde(default)]
    pub label: Option<bool>,
}

impl Alert {
    /// The globally unique id `{agent_id}:{seq}` downstream dedupes on.
    pub fn alert_id(&self) -> String {
        format!("{}:{}", self.agent_id, self.seq)
    }

    /// Checks ids, caps and that score, raw score and threshold are finite, score in `[0, 1]`.
    pub fn validate(&self) -> Result<(), WireError> {
        validate_id("agent_id", &self.agent_id)?;
        validate_series("series", &self.series)?;
        validate_id("model", &self.model)?;
        check_unit_interval("score", self.score)?;
        check_finite("raw_score", self.raw_score)?;
        check_finite("threshold", self.threshold)?;
        check_len(
            "explanation",
            self.explanation.len(),
            limits::MAX_EXPLANATION,
            "items",
        )?;
        for (i, c) in self.explanation.iter().enumerate() {
            validate_name(&format!("explanation[{i}].feature"), &c.feature)?;
            check_finite(&format!("explanation[{i}].weight"), c.weight)?;
        }
        check_values("values", &self.values)
    }

    /// A stable JSON record for people and other systems (Kafka, REST, logs).
    ///
    /// Field order and names follow [`AlertRecord`]; severity and model kind are strings.
    pub fn to_json(&self) -> String {
        // Serialising plain structs of strings and finite numbers cannot fail; a
        // non-finite number (only possible on an unvalidated alert) becomes `null`.
        serde_json::to_string(&AlertRecord::from(self)).unwrap_or_default()
    }
}

/// The JSON form of an [`Alert`] (`schema` = [`AlertRecord::SCHEMA`]), read by Kafka consumers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertRecord {
    /// Always [`AlertRecord::SCHEMA`]; bumped on incompatible changes.
    pub schema: String,
    /// `{agent_id}:{seq}`, the dedupe key.
    pub alert_id: String,
    /// Agent that raised the alert.
    pub agent_id: String,
    /// Per-agent sequence number.
    pub seq: u64,
    /// Series key.
    pub series: String,
    /// Event time in milliseconds since the Unix epoch.
    pub ts_ms: i64,
    /// Model name.
    pub model: String,
    /// Model kind as its `MODEL_TYPE` string.
    pub model_kind: String,
    /// Model version.
    pub model_version: u64,
    /// Calibrated score in `[0, 1]`.
    pub score: f64,
    /// Raw detector score.
    pub raw_score: f64,
    /// Threshold compared with the score.
    pub threshold: f64,
    /// `info`, `warning` or `critical`.
    pub severity: String,
    /// Episode id.
    pub episode_id: u64,
    /// Top contributing features.
    pub explanation: Vec<FeatureContribution>,
    /// The event's values.
    pub values: Vec<f64>,
    /// Ground truth when labelled, else `null`.
    pub label: Option<bool>,
}

impl AlertRecord {
    /// Schema tag of the current JSON record.
    pub const SCHEMA: &'static str = "sad.alert.v1";
}

impl From<&Alert> for AlertRecord {
    fn from(a: &Alert) -> Self {
        AlertRecord {
            schema: Self::SCHEMA.to_string(),
            alert_id: a.alert_id(),
            agent_id: a.agent_id.clone(),
            seq: a.seq,
            series: a.series.clone(),
            ts_ms: a.ts_ms,
            model: a.model.clone(),
            model_kind: a.model_kind.as_str().to_string(),
            model_version: a.model_version,
            score: a.score,
            raw_score: a.raw_score,
            threshold: a.threshold,
            severity: a.severity.as_str().to_string(),
            episode_id: a.episode_id,
            explanation: a.explanation.clone(),
            values: a.values.clone(),
            label: a.label,
        }
    }
}

/// A parsed `{agent_id}:{seq}` alert id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AlertId {
    /// Agent part (a valid id, never containing `:`).
    pub agent_id: String,
    /// Sequence part.
    pub seq: u64,
}

impl AlertId {
    /// Parses `agent:seq`; rejects a missing or extra `:`, an invalid agent id and a
    /// sequence that is not a canonical decimal `u64` (no sign, no leading zeros).
    pub fn parse(s: &str) -> Result<AlertId, WireError> {
        let (agent, seq) = s
            .split_once(':')
            .ok_or_else(|| WireError::invalid("alert_id", format!("{s:?} has no ':'")))?;
        validate_id("alert_id agent", agent)?;
        let canonical = !seq.is_empty()
            && seq.bytes().all(|b| b.is_ascii_digit())
            && (seq == "0" || !seq.starts_with('0'));
        let seq = seq
            .parse::<u64>()
            .ok()
            .filter(|_| canonical)
            .ok_or_else(|| {
                WireError::invalid(
                    "alert_id",
                    format!("{s:?}: sequence must be a decimal u64 without leading zeros"),
                )
            })?;
        Ok(AlertId {
            agent_id: agent.to_string(),
            seq,
        })
    }
}

impl fmt::Display for AlertId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.agent_id, self.seq)
    }
}

impl std::str::FromStr for AlertId {
    type Err = WireError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AlertId::parse(s)
    }
}

/// Alerts an agent publishes together on its alerts topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertBatch {
    /// Agent that sends the batch; every alert must carry the same id.
    pub agent_id: String,
    /// The alerts, usually in `seq` order.
    #[serde(deserialize_with = "capped::vec::<_, _, { limits::MAX_ALERTS_PER_BATCH }>")]
    pub alerts: Vec<Alert>,
}

impl AlertBatch {
    /// Checks the agent id, the batch cap, every alert and that all alerts are this agent's.
    pub fn validate(&self) -> Result<(), WireError> {
        validate_id("agent_id", &self.agent_id)?;
        check_len(
            "alerts",
            self.alerts.len(),
            limits::MAX_ALERTS_PER_BATCH,
            "items",
        )?;
        for (i, a) in self.alerts.iter().enumerate() {
            let at = format!("alerts[{i}]");
            a.validate().map_err(|e| e.within(&at))?;
            if a.agent_id != self.agent_id {
                return Err(WireError::invalid(
                    format!("{at}.agent_id"),
                    format!(
                        "{:?} differs from the batch's agent_id {:?}",
                        a.agent_id, self.agent_id
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Coordinator → agent: every `seq <= up_to_seq` of `agent_id` is durable on the coordinator side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// Agent whose alerts are acknowledged.
    pub agent_id: String,
    /// Highest sequence number now durable (cumulative).
    pub up_to_seq: u64,
}

impl Ack {
    /// Checks the agent id.
    pub fn validate(&self) -> Result<(), WireError> {
        validate_id("agent_id", &self.agent_id)
    }
}

// ---------------------------------------------------------------- status

/// A model an agent currently runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelStatus {
    /// Model name.
    pub name: String,
    /// Model kind.
    pub kind: ModelKind,
    /// Model version.
    pub version: u64,
}

/// Summary of recent calibrated scores of an agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreSummary {
    /// Scores summarised (0 means the other fields are 0).
    pub count: u64,
    /// Mean score.
    pub mean: f64,
    /// Median score.
    pub p50: f64,
    /// 95th percentile score.
    pub p95: f64,
    /// 99th percentile score.
    pub p99: f64,
    /// Fraction of recent scored events flagged anomalous (score above the
    /// enter threshold, before alert rules throttle them), in `[0, 1]`.
    pub alert_rate: f64,
}

impl ScoreSummary {
    /// Checks that every number is finite and `alert_rate` lies in `[0, 1]`.
    pub fn validate(&self) -> Result<(), WireError> {
        check_finite("mean", self.mean)?;
        check_finite("p50", self.p50)?;
        check_finite("p95", self.p95)?;
        check_finite("p99", self.p99)?;
        check_unit_interval("alert_rate", self.alert_rate)
    }
}

/// Periodic agent status; the agent's last will publishes one with `online = false`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Agent id.
    pub agent_id: String,
    /// Send time in milliseconds since the Unix epoch.
    pub ts_ms: i64,
    /// `false` in the last-will message.
    pub online: bool,
    /// Seconds since the agent started.
    pub uptime_s: u64,
    /// Models the agent runs.
    #[serde(deserialize_with = "capped::vec::<_, _, { limits::MAX_MODELS_PER_HEARTBEAT }>")]
    pub models: Vec<ModelStatus>,
    /// Events scored since start.
    pub events_processed: u64,
    /// Anomalies raised since start.
    pub anomalies: u64,
    /// Events rejected as bad input since start.
    pub bad_input: u64,
    /// Unacknowledged alerts in the outbox.
    pub outbox_depth: u64,
    /// Bytes held by the outbox.
    pub outbox_bytes: u64,
    /// Resident memory of the agent process.
    pub rss_bytes: u64,
    /// Canary group the agent belongs to, if any.
    pub group: Option<String>,
    /// Recent score distribution, if any event was scored.
    pub score_summary: Option<ScoreSummary>,
}

impl Heartbeat {
    /// Checks ids, the model list cap and the score summary.
    pub fn validate(&self) -> Result<(), WireError> {
        validate_id("agent_id", &self.agent_id)?;
        check_len(
            "models",
            self.models.len(),
            limits::MAX_MODELS_PER_HEARTBEAT,
            "items",
        )?;
        for (i, m) in self.models.iter().enumerate() {
            validate_id(&format!("models[{i}].name"), &m.name)?;
        }
        if let Some(g) = &self.group {
            validate_id("group", g)?;
        }
        if let Some(s) = &self.score_summary {
            s.validate().map_err(|e| e.within("score_summary"))?;
        }
        Ok(())
    }
}

/// Cumulative outcomes of one model on an agent's labelled events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelledOutcomes {
    /// Labelled anomalous events scored.
    pub anomalies: u64,
    /// Of those, flagged by the model.
    pub detected: u64,
    /// Labelled normal events scored.
    pub normal: u64,
    /// Of those, flagged by the model.
    pub false_alarms: u64,
}

/// An agent's labelled-event counters per model since it started, for fleet-wide recall
/// (`{p}/agents/{agent_id}/quality`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelCounts {
    /// Agent id.
    pub agent_id: String,
    /// Agent start time in ms since the epoch: counters restart when it changes.
    pub started_ms: i64,
    /// `(model name, outcomes)`.
    #[serde(deserialize_with = "capped::vec::<_, _, { limits::MAX_MODELS_PER_HEARTBEAT }>")]
    pub models: Vec<(String, LabelledOutcomes)>,
}

impl LabelCounts {
    /// Checks ids, the model cap and that detections never exceed their totals.
    pub fn validate(&self) -> Result<(), WireError> {
        validate_id("agent_id", &self.agent_id)?;
        check_len(
            "models",
            self.models.len(),
            limits::MAX_MODELS_PER_HEARTBEAT,
            "items",
        )?;
        for (name, o) in &self.models {
            validate_id("models.name", name)?;
            if o.detected > o.anomalies || o.false_alarms > o.normal {
                return Err(WireError::invalid(
                    "models",
                    "flagged events exceed the labelled events",
                ));
            }
        }
        Ok(())
    }
}

/// Reservoir samples of an agent's recent feature rows, for retraining.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Samples {
    /// Agent that sampled the rows.
    pub agent_id: String,
    /// Model whose features the rows are.
    pub model: String,
    /// Column names.
    #[serde(deserialize_with = "capped::vec::<_, _, { limits::MAX_VALUES }>")]
    pub feature_names: Vec<String>,
    /// Rows, each with one finite value per feature name.
    #[serde(deserialize_with = "capped::vec::<_, _, { limits::MAX_SAMPLE_ROWS }>")]
    pub rows: Vec<Vec<f64>>,
}

impl Samples {
    /// Checks ids, row and value caps, row widths and finiteness.
    pub fn validate(&self) -> Result<(), WireError> {
        validate_id("agent_id", &self.agent_id)?;
        validate_id("model", &self.model)?;
        check_feature_names("feature_names", &self.feature_names)?;
        check_len("rows", self.rows.len(), limits::MAX_SAMPLE_ROWS, "rows")?;
        let width = self.feature_names.len();
        check_len(
            "rows",
            self.rows.len().saturating_mul(width),
            limits::MAX_SAMPLE_VALUES,
            "values",
        )?;
        for (i, row) in self.rows.iter().enumerate() {
            let at = format!("rows[{i}]");
            if row.len() != width {
                return Err(WireError::invalid(
                    at,
                    format!("{} values for {width} feature names", row.len()),
                ));
            }
            check_values(&at, row)?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- models

/// How a model was trained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingInfo {
    /// Description of the training data (file, fleet samples, time range).
    pub data: String,
    /// Rows trained on.
    pub rows: u64,
    /// Evaluation metrics by name (`roc_auc`, `f1`, ...), all finite.
    pub metrics: BTreeMap<String, f64>,
}

impl TrainingInfo {
    /// Checks the description length and the metrics.
    pub fn validate(&self) -> Result<(), WireError> {
        check_len(
            "data",
            self.data.len(),
            limits::MAX_TRAINING_DATA_BYTES,
            "bytes",
        )?;
        if self.data.chars().any(char::is_control) {
            return Err(WireError::ControlChar {
                field: "data".into(),
            });
        }
        check_len("metrics", self.metrics.len(), limits::MAX_METRICS, "items")?;
        for (k, v) in &self.metrics {
            validate_name("metrics key", k)?;
            check_finite(&format!("metrics[{k:?}]"), *v)?;
        }
        Ok(())
    }
}

/// Everything about a model except its payload; the payload's sha256 ties them together.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelManifest {
    /// Model name (an id: it is a topic level).
    pub name: String,
    /// Model kind, which decides how the payload is parsed.
    pub kind: ModelKind,
    /// Version, ≥ 1; versions of one name only grow (a rollback is a new version).
    pub version: u64,
    /// Version this one was derived from (retraining), if any.
    pub parent_version: Option<u64>,
    /// Creation time in milliseconds since the Unix epoch.
    pub created_ms: i64,
    /// Input feature names, in order (per step for windowed models).
    #[serde(deserialize_with = "capped::vec::<_, _, { limits::MAX_VALUES }>")]
    pub feature_names: Vec<String>,
    /// Window length in events; 1 = no window.
    pub window: u32,
    /// Scaler applied before the model, if any.
    pub scaler: Option<StandardScaler>,
    /// Decision threshold on the calibrated score, in `[0, 1]` (a row is anomalous above it).
    pub threshold: f64,
    /// Map from raw score to `[0, 1]`.
    pub calibration: Calibration,
    /// Training data and metrics.
    pub training: TrainingInfo,
    /// sha256 of the payload, 64 lowercase hex digits.
    pub payload_sha256: String,
    /// Payload length in bytes.
    pub payload_len: u64,
    /// For a rollback: the version whose payload this one carries.
    pub restores: Option<u64>,
    /// Free-text notes.
    pub notes: Option<String>,
}

impl ModelManifest {
    /// Checks name, version ordering, features, window, scaler, threshold,
    /// calibration, training info, hash format and payload cap.
    pub fn validate(&self) -> Result<(), WireError> {
        validate_id("name", &self.name)?;
        if self.version == 0 {
            return Err(WireError::invalid("version", "must be at least 1"));
        }
        for (field, v) in [
            ("parent_version", self.parent_version),
            ("restores", self.restores),
        ] {
            if let Some(v) = v
                && v >= self.version
            {
                return Err(WireError::invalid(
                    field,
                    format!("{v} is not lower than version {}", self.version),
                ));
            }
        }
        if self.feature_names.is_empty() {
            return Err(WireError::Empty {
                field: "feature_names".into(),
            });
        }
        check_feature_names("feature_names", &self.feature_names)?;
        let mut sorted: Vec<&str> = self.feature_names.iter().map(String::as_str).collect();
        sorted.sort_unstable();
        if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
            return Err(WireError::invalid(
                "feature_names",
                format!("duplicate name {:?}", w[0]),
            ));
        }
        if self.window == 0 || self.window > limits::MAX_WINDOW {
            return Err(WireError::OutOfRange {
                field: "window".into(),
                value: f64::from(self.window),
                min: 1.0,
                max: f64::from(limits::MAX_WINDOW),
            });
        }
        if let Some(s) = &self.scaler {
            if !s.is_valid() {
                return Err(WireError::invalid(
                    "scaler",
                    "needs equal lengths, finite means and finite positive scales",
                ));
            }
            if s.n_features() != self.feature_names.len() {
                return Err(WireError::invalid(
                    "scaler",
                    format!(
                        "has {} features, the manifest names {}",
                        s.n_features(),
                        self.feature_names.len()
                    ),
                ));
            }
        }
        check_finite("threshold", self.threshold)?;
        if !(0.0..=1.0).contains(&self.threshold) {
            return Err(WireError::invalid(
                "threshold",
                "must be in [0, 1] (calibrated score)",
            ));
        }
        if !self.calibration.is_valid() {
            return Err(WireError::invalid(
                "calibration",
                "needs a finite center and a finite positive scale",
            ));
        }
        self.training.validate().map_err(|e| e.within("training"))?;
        if !is_sha256_hex(&self.payload_sha256) {
            return Err(WireError::invalid(
                "payload_sha256",
                "must be 64 lowercase hex digits",
            ));
        }
        check_len(
            "payload_len",
            usize::try_from(self.payload_len).unwrap_or(usize::MAX),
            limits::MAX_PAYLOAD_BYTES,
            "bytes",
        )?;
        if let Some(n) = &self.notes {
            check_len("notes", n.len(), limits::MAX_NOTES_BYTES, "bytes")?;
        }
        Ok(())
    }
}

/// A manifest, its payload (TFLite bytes or a postcard forest) and the coordinator's signature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelBundle {
    /// The manifest.
    pub manifest: ModelManifest,
    /// Model payload, parsed according to `manifest.kind` after verification.
    #[serde(with = "bytes")]
    pub payload: Vec<u8>,
    /// Signature over [`signed_bytes`] (ed25519; verified elsewhere).
    #[serde(with = "bytes")]
    pub signature: Vec<u8>,
}

impl ModelBundle {
    /// Checks the manifest, the caps and that payload length and sha256 match the manifest.
    ///
    /// Does not verify the signature.
    pub fn validate(&self) -> Result<(), WireError> {
        self.manifest.validate().map_err(|e| e.within("manifest"))?;
        check_len(
            "payload",
            self.payload.len(),
            limits::MAX_PAYLOAD_BYTES,
            "bytes",
        )?;
        check_len(
            "signature",
            self.signature.len(),
            limits::MAX_SIGNATURE_BYTES,
            "bytes",
        )?;
        if u64::try_from(self.payload.len()).ok() != Some(self.manifest.payload_len) {
            return Err(WireError::invalid(
                "payload",
                format!(
                    "has {} bytes, the manifest says {}",
                    self.payload.len(),
                    self.manifest.payload_len
                ),
            ));
        }
        if sha256_hex(&self.payload) != self.manifest.payload_sha256 {
            return Err(WireError::invalid(
                "payload",
                "sha256 differs from manifest.payload_sha256",
            ));
        }
        Ok(())
    }

    /// The bytes the bundle's signature covers; see [`signed_bytes`].
    pub fn signed_bytes(&self) -> Vec<u8> {
        signed_bytes(&self.manifest, &self.payload)
    }
}

/// Domain separation tag at the start of [`signed_bytes`].
pub const SIGNING_DOMAIN: &[u8] = b"sad/v1 model bundle\n";

/// The canonical bytes a bundle signature covers:
/// [`SIGNING_DOMAIN`] ++ manifest length (u64 little endian) ++ postcard(manifest) ++ sha256(payload) (32 raw bytes).
///
/// Postcard is deterministic, so a decoded manifest re-encodes to the same bytes.
pub fn signed_bytes(manifest: &ModelManifest, payload: &[u8]) -> Vec<u8> {
    // A manifest holds only structs, strings, numbers and a map with string
    // keys, all of which postcard serialises without error.
    let encoded = postcard::to_allocvec(manifest).unwrap_or_default();
    let mut out = Vec::with_capacity(SIGNING_DOMAIN.len() + 8 + encoded.len() + 32);
    out.extend_from_slice(SIGNING_DOMAIN);
    out.extend_from_slice(&(encoded.len() as u64).to_le_bytes());
    out.extend_from_slice(&encoded);
    out.extend_from_slice(&Sha256::digest(payload));
    out
}

/// Lowercase hex sha256 of `data` (64 characters).
pub fn sha256_hex(data: &[u8]) -> String {
    use std::fmt::Write;
    let digest = Sha256::digest(data);
    let mut s = String::with_capacity(64);
    for b in digest {
        // Writing to a String cannot fail.
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Whether `s` is 64 lowercase hex digits.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Deserialises a `Vec` but fails as soon as it would exceed `MAX` items, so a
/// hostile frame cannot build a huge collection of tiny items before `validate` runs.
mod capped {
    use serde::de::{Deserialize, Deserializer, SeqAccess, Visitor};
    use std::fmt;
    use std::marker::PhantomData;

    pub fn vec<'de, D, T, const MAX: usize>(d: D) -> Result<Vec<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: Deserialize<'de>,
    {
        d.deserialize_seq(CappedVisitor::<T, MAX>(PhantomData))
    }

    struct CappedVisitor<T, const MAX: usize>(PhantomData<T>);

    impl<'de, T: Deserialize<'de>, const MAX: usize> Visitor<'de> for CappedVisitor<T, MAX> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "a sequence of at most {MAX} items")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            if let Some(n) = seq.size_hint()
                && n > MAX
            {
                return Err(serde::de::Error::invalid_length(n, &self));
            }
            let mut out = Vec::new();
            while let Some(item) = seq.next_element()? {
                if out.len() == MAX {
                    return Err(serde::de::Error::invalid_length(MAX + 1, &self));
                }
                out.push(item);
            }
            Ok(out)
        }
    }
}

/// Serde for `Vec<u8>` as a byte string: postcard writes length + raw bytes
/// (instead of one element per byte), JSON reads and writes an array of numbers.
mod bytes {
    use serde::de::{SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};
    use std::fmt;

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_byte_buf(BytesVisitor)
    }

    struct BytesVisitor;

    impl<'de> Visitor<'de> for BytesVisitor {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a byte string")
        }

        fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }

        fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            // Never trust a claimed length for preallocation.
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64 * 1024));
            while let Some(b) = seq.next_element::<u8>()? {
                out.push(b);
            }
            Ok(out)
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample_alert(seq: u64) -> Alert {
        Alert {
            agent_id: "edge-01".into(),
            seq,
            series: "machine 7/temp °C".into(),
            ts_ms: 1_700_000_000_000,
            model: "iforest-main".into(),
            model_kind: ModelKind::IsolationForest,
            model_version: 3,
            score: 0.93,
            raw_score: 0.71,
            threshold: 0.62,
            severity: Severity::Critical,
            episode_id: 12,
            explanation: vec![
                FeatureContribution {
                    feature: "temp".into(),
                    weight: 0.8,
                },
                FeatureContribution {
                    feature: "vibration".into(),
                    weight: 0.2,
                },
            ],
            values: vec![81.5, 0.02],
            label: Some(true),
        }
    }

    pub(crate) fn sample_manifest(payload: &[u8]) -> ModelManifest {
        ModelManifest {
            name: "iforest-main".into(),
            kind: ModelKind::IsolationForest,
            version: 4,
            parent_version: Some(3),
            created_ms: 1_700_000_000_000,
            feature_names: vec!["temp".into(), "vibration".into()],
            window: 1,
            scaler: Some(StandardScaler {
                mean: vec![60.0, 0.01],
                scale: vec![5.0, 0.005],
            }),
            threshold: 0.62,
            calibration: Calibration::Logistic {
                center: 0.62,
                scale: 0.05,
            },
            training: TrainingInfo {
                data: "fleet samples 2024-01-01..2024-01-07".into(),
                rows: 50_000,
                metrics: BTreeMap::from([("roc_auc".to_string(), 0.97)]),
            },
            payload_sha256: sha256_hex(payload),
            payload_len: payload.len() as u64,
            restores: None,
            notes: Some("retrained after drift\non line 7".into()),
        }
    }

    #[test]
    fn alert_id_joins_agent_and_seq_and_parses_back() {
        let a = sample_alert(7);
        assert_eq!(a.alert_id(), "edge-01:7");
        let id = AlertId::parse(&a.alert_id()).unwrap();
        assert_eq!(
            id,
            AlertId {
                agent_id: "edge-01".into(),
                seq: 7
            }
        );
        assert_eq!(id.to_string(), "edge-01:7");
        assert_eq!("a:0".parse::<AlertId>().unwrap().seq, 0);
    }

    #[test]
    fn malformed_alert_ids_are_rejected() {
        for bad in [
            "",
            "a",
            ":7",
            "a:",
            "a:b:7",
            "a:-1",
            "a:+1",
            "a:007",
            "a: 7",
            "a/b:7",
            "a:18446744073709551616",
            "a:7 ",
        ] {
            assert!(AlertId::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn severity_orders_by_urgency_and_serialises_lowercase() {
        assert!(Severity::Info < Severity::Warning && Severity::Warning < Severity::Critical);
        for s in Severity::ALL {
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
    }

    #[test]
    fn a_well_formed_alert_validates() {
        sample_alert(1).validate().unwrap();
    }

    #[test]
    fn alert_scores_must_be_finite_and_the_score_calibrated() {
        let mut a = sample_alert(1);
        a.score = 1.5;
        let e = a.validate().unwrap_err().to_string();
        assert!(e.contains("score") && e.contains("outside [0, 1]"), "{e}");
        let mut a = sample_alert(1);
        a.raw_score = f64::NAN;
        assert_eq!(
            a.validate().unwrap_err().to_string(),
            "raw_score is not finite"
        );
        let mut a = sample_alert(1);
        a.values[1] = f64::INFINITY;
        assert_eq!(
            a.validate().unwrap_err().to_string(),
            "values[1] is not finite"
        );
    }

    #[test]
    fn oversize_collections_name_the_field_and_the_cap() {
        let mut a = sample_alert(1);
        a.values = vec![0.0; limits::MAX_VALUES + 1];
        let e = a.validate().unwrap_err().to_string();
        assert_eq!(e, "values has 4097 values, more than the cap of 4096");

        let mut a = sample_alert(1);
        a.explanation = vec![a.explanation[0].clone(); limits::MAX_EXPLANATION + 1];
        let e = a.validate().unwrap_err().to_string();
        assert_eq!(e, "explanation has 65 items, more than the cap of 64");

        let batch = AlertBatch {
            agent_id: "edge-01".into(),
            alerts: vec![sample_alert(1); limits::MAX_ALERTS_PER_BATCH + 1],
        };
        let e = batch.validate().unwrap_err().to_string();
        assert_eq!(e, "alerts has 10001 items, more than the cap of 10000");

        let samples = Samples {
            agent_id: "edge-01".into(),
            model: "m".into(),
            feature_names: vec!["x".into()],
            rows: vec![vec![1.0]; limits::MAX_SAMPLE_ROWS + 1],
        };
        let e = samples.validate().unwrap_err().to_string();
        assert_eq!(e, "rows has 10001 rows, more than the cap of 10000");

        let hb = Heartbeat {
            models: vec![
                ModelStatus {
                    name: "m".into(),
                    kind: ModelKind::Ewma,
                    version: 1
                };
                limits::MAX_MODELS_PER_HEARTBEAT + 1
            ],
            ..sample_heartbeat()
        };
        let e = hb.validate().unwrap_err().to_string();
        assert_eq!(e, "models has 65 items, more than the cap of 64");
    }

    #[test]
    fn a_batch_rejects_alerts_of_another_agent_and_names_the_index() {
        let mut other = sample_alert(2);
        other.agent_id = "edge-02".into();
        let batch = AlertBatch {
            agent_id: "edge-01".into(),
            alerts: vec![sample_alert(1), other],
        };
        let e = batch.validate().unwrap_err().to_string();
        assert!(e.starts_with("alerts[1].agent_id"), "{e}");

        let mut bad = sample_alert(3);
        bad.score = -0.1;
        let batch = AlertBatch {
            agent_id: "edge-01".into(),
            alerts: vec![bad],
        };
        let e = batch.validate().unwrap_err().to_string();
        assert!(e.starts_with("alerts[0].score"), "{e}");
    }

    #[test]
    fn ids_are_restricted_to_topic_safe_characters() {
        for bad in ["", "a/b", "a+b", "a#", "a:b", "a b", "é", "a\0"] {
            assert!(validate_id("agent_id", bad).is_err(), "{bad:?} accepted");
        }
        let long = "a".repeat(limits::MAX_ID_BYTES + 1);
        assert_eq!(
            validate_id("agent_id", &long).unwrap_err().to_string(),
            "agent_id has 129 bytes, more than the cap of 128"
        );
        validate_id("agent_id", "Edge_01.eu-west").unwrap();
        let e = validate_id("fleet", "a/b").unwrap_err().to_string();
        assert!(e.contains("'/'") && e.contains("fleet"), "{e}");
    }

    #[test]
    fn series_keys_allow_any_text_but_control_characters() {
        validate_series("series", "Maschine 7 / Temperatur °C: #1+").unwrap();
        assert!(validate_series("series", "a\nb").is_err());
        assert!(validate_series("series", "").is_err());
        assert!(validate_series("series", &"x".repeat(257)).is_err());
    }

    #[test]
    fn samples_rows_must_match_the_feature_names() {
        let s = Samples {
            agent_id: "edge-01".into(),
            model: "m".into(),
            feature_names: vec!["a".into(), "b".into()],
            rows: vec![vec![1.0, 2.0], vec![3.0]],
        };
        let e = s.validate().unwrap_err().to_string();
        assert_eq!(e, "rows[1]: 1 values for 2 feature names");
    }

    #[test]
    fn feature_vectors_need_one_name_per_value() {
        let fv = FeatureVector {
            names: vec!["a".into()],
            values: vec![1.0, 2.0],
        };
        assert!(fv.validate().is_err());
    }

    pub(crate) fn sample_heartbeat() -> Heartbeat {
        Heartbeat {
            agent_id: "edge-01".into(),
            ts_ms: 1_700_000_000_000,
            online: true,
            uptime_s: 3600,
            models: vec![ModelStatus {
                name: "iforest-main".into(),
                kind: ModelKind::IsolationForest,
                version: 3,
            }],
            events_processed: 10_000,
            anomalies: 12,
            bad_input: 1,
            outbox_depth: 2,
            outbox_bytes: 800,
            rss_bytes: 12 << 20,
            group: Some("canary".into()),
            score_summary: Some(ScoreSummary {
                count: 1000,
                mean: 0.2,
                p50: 0.18,
                p95: 0.5,
                p99: 0.7,
                alert_rate: 0.012,
            }),
        }
    }

    #[test]
    fn heartbeat_checks_group_and_alert_rate() {
        sample_heartbeat().validate().unwrap();
        let mut hb = sample_heartbeat();
        hb.group = Some("a/b".into());
        assert!(hb.validate().unwrap_err().to_string().starts_with("group"));
        let mut hb = sample_heartbeat();
        if let Some(s) = hb.score_summary.as_mut() {
            s.alert_rate = 2.0;
        }
        let e = hb.validate().unwrap_err().to_string();
        assert!(e.starts_with("score_summary.alert_rate"), "{e}");
    }

    #[test]
    fn manifest_rules_reject_inconsistent_models() {
        let payload = b"forest bytes".to_vec();
        sample_manifest(&payload).validate().unwrap();

        let mut m = sample_manifest(&payload);
        m.payload_sha256 = m.payload_sha256.to_uppercase();
        assert!(
            m.validate()
                .unwrap_err()
                .to_string()
                .contains("lowercase hex")
        );

        let mut m = sample_manifest(&payload);
        m.version = 0;
        assert!(m.validate().is_err());

        let mut m = sample_manifest(&payload);
        m.restores = Some(4);
        let e = m.validate().unwrap_err().to_string();
        assert!(e.starts_with("restores"), "{e}");

        let mut m = sample_manifest(&payload);
        m.window = 0;
        assert!(m.validate().unwrap_err().to_string().starts_with("window"));

        let mut m = sample_manifest(&payload);
        m.feature_names.push("temp".into());
        m.scaler = None;
        assert!(m.validate().unwrap_err().to_string().contains("duplicate"));

        let mut m = sample_manifest(&payload);
        m.feature_names.push("extra".into());
        assert!(m.validate().unwrap_err().to_string().starts_with("scaler"));

        let mut m = sample_manifest(&payload);
        m.training.metrics.insert("f1".into(), f64::NAN);
        let e = m.validate().unwrap_err().to_string();
        assert!(e.starts_with("training.metrics"), "{e}");

        let mut m = sample_manifest(&payload);
        m.payload_len = limits::MAX_PAYLOAD_BYTES as u64 + 1;
        let e = m.validate().unwrap_err().to_string();
        assert!(e.contains("cap of 67108864"), "{e}");
    }

    #[test]
    fn bundle_validation_checks_payload_length_and_hash() {
        let payload = b"forest bytes".to_vec();
        let bundle = ModelBundle {
            manifest: sample_manifest(&payload),
            payload: payload.clone(),
            signature: vec![7; 64],
        };
        bundle.validate().unwrap();

        let mut tampered = bundle.clone();
        tampered.payload[0] ^= 1;
        let e = tampered.validate().unwrap_err().to_string();
        assert!(e.contains("sha256"), "{e}");

        let mut short = bundle.clone();
        short.payload.pop();
        let e = short.validate().unwrap_err().to_string();
        assert!(e.contains("the manifest says 12"), "{e}");
    }

    #[test]
    fn sha256_hex_matches_the_known_digest() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(is_sha256_hex(&sha256_hex(b"")));
    }

    #[test]
    fn signed_bytes_cover_manifest_and_payload() {
        let payload = b"forest bytes".to_vec();
        let m = sample_manifest(&payload);
        let base = signed_bytes(&m, &payload);
        assert!(base.starts_with(SIGNING_DOMAIN));
        assert_eq!(base, signed_bytes(&m.clone(), &payload.clone()));
        assert_ne!(base, signed_bytes(&m, b"other bytes!"));
        let mut m2 = m.clone();
        m2.threshold = 0.63;
        assert_ne!(base, signed_bytes(&m2, &payload));
    }

    #[test]
    fn alert_json_is_a_stable_readable_record() {
        let a = sample_alert(7);
        let v: serde_json::Value = serde_json::from_str(&a.to_json()).unwrap();
        assert_eq!(v["schema"], "sad.alert.v1");
        assert_eq!(v["alert_id"], "edge-01:7");
        assert_eq!(v["severity"], "critical");
        assert_eq!(v["model_kind"], "isolation_forest");
        assert_eq!(v["explanation"][0]["feature"], "temp");
        assert_eq!(v["label"], true);
        let record: AlertRecord = serde_json::from_str(&a.to_json()).unwrap();
        assert_eq!(record, AlertRecord::from(&a));
        // Field order is part of the stable record.
        assert!(
            a.to_json()
                .starts_with(r#"{"schema":"sad.alert.v1","alert_id":"edge-01:7","#)
        );
    }

    #[test]
    fn bundle_bytes_round_trip_through_json_as_numbers() {
        let payload = vec![0u8, 1, 255];
        let bundle = ModelBundle {
            manifest: sample_manifest(&payload),
            payload,
            signature: vec![],
        };
        let json = serde_json::to_string(&bundle).unwrap();
        assert!(json.contains(r#""payload":[0,1,255]"#), "{json}");
        let back: ModelBundle = serde_json::from_str(&json).unwrap();
        assert_eq!(back, bundle);
    }
}
