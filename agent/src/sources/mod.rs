//! Event sources and the plumbing they share.
//!
//! Every source is a task that turns payloads into [`Envelope`]s (an
//! [`Event`] plus where it came from) and sends them into one bounded tokio
//! channel that the [`crate::pipeline`] drains in batches. A full channel
//! makes sources wait (backpressure), it never drops: the file source stops
//! reading, `/ingest` answers later, the MQTT source stops polling its broker.
//!
//! One folder per source, each with its config struct:
//! [`mqtt`] (subscription on a local broker), [`file`] (CSV / JSON lines
//! replay from a file or stdin), [`http`] (`POST /ingest`, served by
//! [`crate::http`]) and [`prometheus`] (scrape of a `/metrics` endpoint).
//!
//! Payload parsing ([`Mapping::parse_payload`] and friends) is pure and
//! never panics: a JSON object with named fields, a JSON array or a CSV line
//! becomes an [`Event`] or a [`BadInput`] reason, which [`BadInputReporter`]
//! counts in `anomaly_detector_bad_input_total{reason}` and logs at most once
//! per reason every 10 s.

pub mod file;
pub mod http;
pub mod mqtt;
pub mod prometheus;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sad_common::Event;
use sad_common::wire::limits;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::sync::mpsc;

use crate::metrics::AgentMetrics;

/// Default cap on one payload (a message, a line), in bytes.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 64 * 1024;

/// Why an input was skipped; the label value of `bad_input_total{reason}`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BadInput {
    /// The payload is not valid JSON / CSV / UTF-8.
    #[error("unparsable payload: {0}")]
    Parse(String),
    /// A mapped field (feature, series, timestamp) is absent.
    #[error("missing field {0:?}")]
    MissingField(String),
    /// A value is not a number.
    #[error("field {0:?} is not a number")]
    NotNumber(String),
    /// A value is NaN or infinite.
    #[error("field {0:?} is not finite")]
    NonFinite(String),
    /// The row has the wrong number of values.
    #[error("expected {expected} values, got {got}")]
    Dimension {
        /// Values the mapping or model needs.
        expected: usize,
        /// Values present.
        got: usize,
    },
    /// The payload exceeds the size cap.
    #[error("payload of {len} bytes exceeds the cap of {cap}")]
    Oversize {
        /// Payload length.
        len: usize,
        /// The cap.
        cap: usize,
    },
    /// The series key is empty, too long or has control characters.
    #[error("bad series key: {0}")]
    Series(String),
}

impl BadInput {
    /// The bounded `reason` label.
    pub fn reason(&self) -> &'static str {
        match self {
            BadInput::Parse(_) => "parse",
            BadInput::MissingField(_) => "missing_field",
            BadInput::NotNumber(_) => "not_number",
            BadInput::NonFinite(_) => "non_finite",
            BadInput::Dimension { .. } => "dimension",
            BadInput::Oversize { .. } => "oversize",
            BadInput::Series(_) => "series",
        }
    }
}

/// Counts bad inputs by reason and logs them at most once per reason per period.
#[derive(Clone)]
pub struct BadInputReporter {
    metrics: Option<AgentMetrics>,
    total: Arc<AtomicU64>,
    period: Duration,
    last: Arc<Mutex<HashMap<&'static str, (Instant, u64)>>>,
}

impl BadInputReporter {
    /// A reporter updating `metrics` (if any) and the `total` counter, logging once per 10 s per reason.
    pub fn new(metrics: Option<AgentMetrics>, total: Arc<AtomicU64>) -> Self {
        Self {
            metrics,
            total,
            period: Duration::from_secs(10),
            last: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// A reporter that only counts, into a fresh total (tests, benchmarks).
    pub fn detached() -> Self {
        Self::new(None, Arc::new(AtomicU64::new(0)))
    }

    /// Bad inputs reported so far.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Counts one bad input from `source` and logs it unless this reason was logged recently.
    pub fn report(&self, source: &str, bad: &BadInput) {
        let reason = bad.reason();
        self.total.fetch_add(1, Ordering::Relaxed);
        if let Some(m) = &self.metrics {
            m.bad_input.with_label_values(&[reason]).inc();
        }
        let now = Instant::now();
        let suppressed = {
            let Ok(mut last) = self.last.lock() else {
                return;
            };
            match last.get_mut(reason) {
                Some((at, skipped)) if now.duration_since(*at) < self.period => {
                    *skipped += 1;
                    return;
                }
                Some((at, skipped)) => {
                    let s = *skipped;
                    *at = now;
                    *skipped = 0;
                    s
                }
                None => {
                    last.insert(reason, (now, 0));
                    0
                }
            }
        };
        tracing::warn!(source, reason, suppressed, error = %bad, "skipping bad input");
    }
}

/// A commit hook: called with a source position once every event up to it is
/// fully processed (its alerts are in the outbox).
pub trait Committer: Send + Sync {
    /// Records that everything up to `position` is done; `durable` = persist
    /// it now (alerts were raised before it), else the source may defer the write.
    fn commit(&self, position: u64, durable: bool);

    /// A stable key under which the outbox also stores the position, in the
    /// same transaction as the alerts it covers (`None`: not stored there).
    fn key(&self) -> Option<String> {
        None
    }
}

/// A position in a source that can be committed after processing.
#[derive(Clone)]
pub struct Mark {
    /// Who records the position.
    pub committer: Arc<dyn Committer>,
    /// The position after this event (e.g. a byte offset).
    pub position: u64,
}

/// What the pipeline needs to know about the source of an event.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceInfo {
    /// Source name (config `name`).
    pub name: String,
    /// Names of the event's values, in order.
    pub feature_names: Vec<String>,
    /// Model that scores this source's events; `None` = the only model, else a streaming detector.
    pub model: Option<String>,
    /// Window of the univariate featuriser, when the mapping asks for it.
    pub featurize_window: Option<usize>,
}

/// An event on its way to the pipeline.
#[derive(Clone)]
pub struct Envelope {
    /// Where it came from.
    pub source: Arc<SourceInfo>,
    /// The event.
    pub event: Event,
    /// Position to commit once processed (file replay).
    pub mark: Option<Mark>,
}

/// The sending side of the pipeline's channel.
pub type EventSender = mpsc::Sender<Envelope>;
/// The receiving side of the pipeline's channel.
pub type EventReceiver = mpsc::Receiver<Envelope>;

/// Where an event's series key comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeriesKey {
    /// Take the key from this payload field (a string or a number).
    #[serde(default)]
    pub field: Option<String>,
    /// Take the key from this topic level (0-based, MQTT only).
    #[serde(default)]
    pub topic_level: Option<usize>,
    /// Fixed key (default: the source name).
    #[serde(default)]
    pub fixed: Option<String>,
}

/// Payload encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PayloadFormat {
    /// A JSON object with named fields, or a JSON array of numbers in `columns` order.
    Json,
    /// A CSV line in `columns` order.
    Csv,
}

/// How a payload's fields become an event (the `[sources.mapping]` table).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappingConfig {
    /// Feature fields, in model order (required, 1..=4096).
    pub fields: Vec<String>,
    /// Names of the positions of a JSON array or CSV line (default: `fields`).
    #[serde(default)]
    pub columns: Option<Vec<String>>,
    /// Where the series key comes from (default: the source name).
    #[serde(default)]
    pub series: Option<SeriesKey>,
    /// Field with the event time in ms since the epoch (default: none, the arrival time).
    #[serde(default)]
    pub timestamp_field: Option<String>,
    /// Field with a ground-truth label (`true`/`false`, `1`/`0`) (default: none).
    #[serde(default)]
    pub label_field: Option<String>,
    /// Turn a single field into `value, diff, dev, std` over this window (default: off).
    #[serde(default)]
    pub featurize_window: Option<usize>,
    /// Largest payload accepted, in bytes (default 65536).
    #[serde(default = "default_max_payload")]
    pub max_payload_bytes: usize,
}

fn default_max_payload() -> usize {
    DEFAULT_MAX_PAYLOAD_BYTES
}

/// An invalid mapping, naming the key.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{key}: {reason}")]
pub struct MappingError {
    /// The offending key, e.g. `mapping.fields`.
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

impl MappingConfig {
    /// A mapping of these fields with every other option at its default.
    pub fn new(fields: &[&str]) -> Self {
        Self {
            fields: fields.iter().map(|s| s.to_string()).collect(),
            columns: None,
            series: None,
            timestamp_field: None,
            label_field: None,
            featurize_window: None,
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
        }
    }

    /// Checks the mapping and builds the parser for source `source`.
    pub fn build(&self, source: &str) -> Result<Mapping, MappingError> {
        let err = |key: &str, reason: String| MappingError {
            key: format!("mapping.{key}"),
            reason,
        };
        if self.fields.is_empty() || self.fields.len() > limits::MAX_VALUES {
            return Err(err("fields", "needs 1 to 4096 field names".into()));
        }
        if let Some(w) = self.featurize_window {
            if self.fields.len() != 1 {
                return Err(err(
                    "featurize_window",
                    "needs exactly one field (a univariate series)".into(),
                ));
            }
            if !(2..=100_000).contains(&w) {
                return Err(err("featurize_window", format!("{w} is not in 2..=100000")));
            }
        }
        if self.max_payload_bytes == 0 {
            return Err(err("max_payload_bytes", "must be positive".into()));
        }
        let columns = self.columns.clone().unwrap_or_else(|| self.fields.clone());
        let pos = |name: &str| columns.iter().position(|c| c == name);
        let mut field_pos = Vec::with_capacity(self.fields.len());
        for f in &self.fields {
            let p = pos(f).ok_or_else(|| err("fields", format!("{f:?} is not one of columns")))?;
            field_pos.push(p);
        }
        let series = self.series.clone().unwrap_or(SeriesKey {
            field: None,
            topic_level: None,
            fixed: None,
        });
        let n_set = [
            series.field.is_some(),
            series.topic_level.is_some(),
            series.fixed.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if n_set > 1 {
            return Err(err(
                "series",
                "set at most one of field, topic_level, fixed".into(),
            ));
        }
        let fixed = series.fixed.clone().unwrap_or_else(|| source.to_string());
        sad_common::wire::validate_series("series", &fixed)
            .map_err(|e| err("series.fixed", e.to_string()))?;
        Ok(Mapping {
            fields: self.fields.clone(),
            field_pos,
            series_pos: series.field.as_deref().and_then(pos),
            ts_pos: self.timestamp_field.as_deref().and_then(pos),
            label_pos: self.label_field.as_deref().and_then(pos),
            columns,
            series,
            fixed_series: fixed,
            timestamp_field: self.timestamp_field.clone(),
            label_field: self.label_field.clone(),
            max_payload_bytes: self.max_payload_bytes,
        })
    }
}

/// A checked mapping: parses payloads into events.
#[derive(Debug, Clone)]
pub struct Mapping {
    fields: Vec<String>,
    columns: Vec<String>,
    field_pos: Vec<usize>,
    series: SeriesKey,
    series_pos: Option<usize>,
    ts_pos: Option<usize>,
    label_pos: Option<usize>,
    fixed_series: String,
    timestamp_field: Option<String>,
    label_field: Option<String>,
    max_payload_bytes: usize,
}

/// A parsed scalar of a payload.
enum Cell<'a> {
    Num(f64),
    Text(std::borrow::Cow<'a, str>),
    Bool(bool),
    Null,
}

impl Mapping {
    /// Feature names of the events this mapping produces.
    pub fn fields(&self) -> &[String] {
        &self.fields
    }

    /// Column names of positional payloads (CSV, JSON array).
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// Largest payload accepted.
    pub fn max_payload_bytes(&self) -> usize {
        self.max_payload_bytes
    }

    /// Parses a payload whose format is detected: `{` → JSON object, `[` → JSON array, else a CSV line.
    pub fn parse_payload(
        &self,
        payload: &[u8],
        topic: Option<&str>,
        now_ms: i64,
    ) -> Result<Event, BadInput> {
        if payload.len() > self.max_payload_bytes {
            return Err(BadInput::Oversize {
                len: payload.len(),
                cap: self.max_payload_bytes,
            });
        }
        let trimmed = payload.trim_ascii();
        match trimmed.first() {
            Some(b'{') => self.parse_json_object(trimmed, topic, now_ms),
            Some(b'[') => self.parse_json_array(trimmed, topic, now_ms),
            Some(_) => {
                let line = std::str::from_utf8(trimmed)
                    .map_err(|_| BadInput::Parse("payload is not UTF-8".into()))?;
                self.parse_csv_line(line, topic, now_ms)
            }
            None => Err(BadInput::Parse("empty payload".into())),
        }
    }

    /// Parses a JSON object with named fields.
    pub fn parse_json_object(
        &self,
        payload: &[u8],
        topic: Option<&str>,
        now_ms: i64,
    ) -> Result<Event, BadInput> {
        let map: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(payload).map_err(|e| BadInput::Parse(e.to_string()))?;
        let get = |name: &str| -> Option<Cell<'_>> { map.get(name).map(json_cell) };
        let values = self
            .fields
            .iter()
            .map(|f| number(f, get(f)))
            .collect::<Result<Vec<f64>, _>>()?;
        let series = match &self.series.field {
            Some(f) => series_from(f, get(f))?,
            None => self.series_default(topic)?,
        };
        let ts_ms = match &self.timestamp_field {
            Some(f) => timestamp(f, get(f))?,
            None => now_ms,
        };
        let label = match &self.label_field {
            Some(f) => label(get(f)),
            None => None,
        };
        Ok(Event {
            series,
            ts_ms,
            values,
            label,
        })
    }

    /// Parses a JSON array whose positions are named by `columns`.
    pub fn parse_json_array(
        &self,
        payload: &[u8],
        topic: Option<&str>,
        now_ms: i64,
    ) -> Result<Event, BadInput> {
        let arr: Vec<serde_json::Value> =
            serde_json::from_slice(payload).map_err(|e| BadInput::Parse(e.to_string()))?;
        self.event_from_cells(arr.iter().map(json_cell).collect(), topic, now_ms)
    }

    /// Parses a CSV line (comma-separated, optional double quotes) whose positions are named by `columns`.
    pub fn parse_csv_line(
        &self,
        line: &str,
        topic: Option<&str>,
        now_ms: i64,
    ) -> Result<Event, BadInput> {
        if line.len() > self.max_payload_bytes {
            return Err(BadInput::Oversize {
                len: line.len(),
                cap: self.max_payload_bytes,
            });
        }
        let cells = split_csv(line.trim_end_matches(['\r', '\n']))?
            .into_iter()
            .map(|s| {
                let t = s.trim();
                if t.is_empty() {
                    Cell::Null
                } else {
                    Cell::Text(std::borrow::Cow::Owned(t.to_string()))
                }
            })
            .collect();
        self.event_from_cells(cells, topic, now_ms)
    }

    fn event_from_cells(
        &self,
        cells: Vec<Cell<'_>>,
        topic: Option<&str>,
        now_ms: i64,
    ) -> Result<Event, BadInput> {
        if cells.len() != self.columns.len() {
            return Err(BadInput::Dimension {
                expected: self.columns.len(),
                got: cells.len(),
            });
        }
        let take = |p: usize| -> Option<Cell<'_>> {
            cells.get(p).map(|c| match c {
                Cell::Num(n) => Cell::Num(*n),
                Cell::Text(t) => Cell::Text(std::borrow::Cow::Borrowed(t.as_ref())),
                Cell::Bool(b) => Cell::Bool(*b),
                Cell::Null => Cell::Null,
            })
        };
        let values = self
            .fields
            .iter()
            .zip(&self.field_pos)
            .map(|(f, &p)| number(f, take(p)))
            .collect::<Result<Vec<f64>, _>>()?;
        let series = match (&self.series.field, self.series_pos) {
            (Some(f), p) => series_from(f, p.and_then(take))?,
            (None, _) => self.series_default(topic)?,
        };
        let ts_ms = match (&self.timestamp_field, self.ts_pos) {
            (Some(f), p) => timestamp(f, p.and_then(take))?,
            (None, _) => now_ms,
        };
        let label = self.label_pos.and_then(|p| label(take(p)));
        Ok(Event {
            series,
            ts_ms,
            values,
            label,
        })
    }

    fn series_default(&self, topic: Option<&str>) -> Result<String, BadInput> {
        match (self.series.topic_level, topic) {
            (Some(level), Some(t)) => {
                let s = t
                    .split('/')
                    .nth(level)
                    .ok_or_else(|| BadInput::Series(format!("topic {t:?} has no level {level}")))?;
                check_series(s.to_string())
            }
            _ => Ok(self.fixed_series.clone()),
        }
    }
}

fn check_series(s: String) -> Result<String, BadInput> {
    sad_common::wire::validate_series("series", &s).map_err(|e| BadInput::Series(e.to_string()))?;
    Ok(s)
}

fn json_cell(v: &serde_json::Value) -> Cell<'_> {
    match v {
        serde_json::Value::Number(n) => n.as_f64().map_or(Cell::Null, Cell::Num),
        serde_json::Value::String(s) => Cell::Text(std::borrow::Cow::Borrowed(s)),
        serde_json::Value::Bool(b) => Cell::Bool(*b),
        _ => Cell::Null,
    }
}

fn number(field: &str, cell: Option<Cell<'_>>) -> Result<f64, BadInput> {
    let v = match cell {
        None | Some(Cell::Null) => return Err(BadInput::MissingField(field.to_string())),
        Some(Cell::Num(n)) => n,
        Some(Cell::Bool(b)) => f64::from(u8::from(b)),
        Some(Cell::Text(t)) => t
            .trim()
            .parse::<f64>()
            .map_err(|_| BadInput::NotNumber(field.to_string()))?,
    };
    if v.is_finite() {
        Ok(v)
    } else {
        Err(BadInput::NonFinite(field.to_string()))
    }
}

fn series_from(field: &str, cell: Option<Cell<'_>>) -> Result<String, BadInput> {
    match cell {
        Some(Cell::Text(t)) => check_series(t.into_owned()),
        Some(Cell::Num(n)) => check_series(n.to_string()),
        Some(Cell::Bool(b)) => check_series(b.to_string()),
        None | Some(Cell::Null) => Err(BadInput::MissingField(field.to_string())),
    }
}

fn timestamp(field: &str, cell: Option<Cell<'_>>) -> Result<i64, BadInput> {
    let v = number(field, cell)?;
    if v.abs() > 9.0e15 {
        return Err(BadInput::NotNumber(field.to_string()));
    }
    Ok(v as i64)
}

fn label(cell: Option<Cell<'_>>) -> Option<bool> {
    match cell? {
        Cell::Bool(b) => Some(b),
        Cell::Num(n) => Some(n != 0.0),
        Cell::Text(t) => match t.trim() {
            "1" | "true" | "True" | "TRUE" | "1.0" => Some(true),
            "0" | "false" | "False" | "FALSE" | "0.0" => Some(false),
            _ => None,
        },
        Cell::Null => None,
    }
}

/// Splits one CSV line on commas; double-quoted fields may hold commas and `""`.
pub fn split_csv(line: &str) -> Result<Vec<std::borrow::Cow<'_, str>>, BadInput> {
    use std::borrow::Cow;
    if !line.contains('"') {
        return Ok(line.split(',').map(Cow::Borrowed).collect());
    }
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = line.chars().peekable();
    let mut in_quotes = false;
    while let Some(c) = chars.next() {
        match (c, in_quotes) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                cur.push('"');
            }
            ('"', true) => in_quotes = false,
            ('"', false) if cur.trim().is_empty() => {
                cur.clear();
                in_quotes = true;
            }
            (',', false) => out.push(Cow::Owned(std::mem::take(&mut cur))),
            (c, _) => cur.push(c),
        }
    }
    if in_quotes {
        return Err(BadInput::Parse("unterminated quote in CSV line".into()));
    }
    out.push(Cow::Owned(cur));
    Ok(out)
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn mapping() -> Mapping {
        let mut m = MappingConfig::new(&["temp", "rpm"]);
        m.columns = Some(vec![
            "ts".into(),
            "dev".into(),
            "temp".into(),
            "rpm".into(),
            "label".into(),
        ]);
        m.series = Some(SeriesKey {
            field: Some("dev".into()),
            topic_level: None,
            fixed: None,
        });
        m.timestamp_field = Some("ts".into());
        m.label_field = Some("label".into());
        m.build("src").unwrap()
    }

    #[test]
    fn a_json_object_with_named_fields_becomes_an_event() {
        let e = mapping()
            .parse_payload(
                br#"{"ts": 5, "dev": "m1", "temp": 20.5, "rpm": "1000", "label": 1}"#,
                None,
                0,
            )
            .unwrap();
        assert_eq!(
            e,
            Event {
                series: "m1".into(),
                ts_ms: 5,
                values: vec![20.5, 1000.0],
                label: Some(true)
            }
        );
    }

    #[test]
    fn a_json_array_and_a_csv_line_use_the_column_order() {
        let m = mapping();
        let a = m
            .parse_payload(b"[7, \"m2\", 1.5, 2.5, false]", None, 0)
            .unwrap();
        let c = m.parse_payload(b"7,m2,1.5,2.5,0\n", None, 0).unwrap();
        assert_eq!(a, c);
        assert_eq!(a.values, vec![1.5, 2.5]);
        assert_eq!(a.label, Some(false));
        let q = m.parse_payload(b"7,\"m,2\",1.5,2.5,0", None, 0).unwrap();
        assert_eq!(q.series, "m,2");
    }

    #[test]
    fn the_series_key_can_come_from_a_topic_level_or_the_source_name() {
        let mut cfg = MappingConfig::new(&["v"]);
        cfg.series = Some(SeriesKey {
            field: None,
            topic_level: Some(1),
            fixed: None,
        });
        let m = cfg.build("s").unwrap();
        assert_eq!(
            m.parse_payload(b"{\"v\":1}", Some("plant/pump-3/data"), 9)
                .unwrap()
                .series,
            "pump-3"
        );
        assert_eq!(
            m.parse_payload(b"{\"v\":1}", Some("x"), 9)
                .unwrap_err()
                .reason(),
            "series"
        );
        let m = MappingConfig::new(&["v"]).build("s").unwrap();
        let e = m.parse_payload(b"{\"v\":1}", Some("a/b"), 9).unwrap();
        assert_eq!((e.series.as_str(), e.ts_ms), ("s", 9));
    }

    #[test]
    fn each_kind_of_bad_payload_has_its_reason() {
        let m = mapping();
        let cases: [(&[u8], &str); 8] = [
            (b"{\"ts\":1,\"dev\":\"a\",\"temp\":1}", "missing_field"),
            (
                b"{\"ts\":1,\"dev\":\"a\",\"temp\":\"hot\",\"rpm\":1}",
                "not_number",
            ),
            (b"1,a,NaN,2,0", "non_finite"),
            (b"1,a,inf,2,0", "non_finite"),
            (b"1,a,2", "dimension"),
            (b"{not json", "parse"),
            (b"", "parse"),
            (b"1,,1,2,0", "missing_field"),
        ];
        for (payload, reason) in cases {
            let got = m.parse_payload(payload, None, 0).unwrap_err();
            assert_eq!(
                got.reason(),
                reason,
                "{:?}: {got}",
                String::from_utf8_lossy(payload)
            );
        }
        let mut small = MappingConfig::new(&["v"]);
        small.max_payload_bytes = 4;
        let m = small.build("s").unwrap();
        assert_eq!(
            m.parse_payload(b"{\"v\": 1}", None, 0)
                .unwrap_err()
                .reason(),
            "oversize"
        );
    }

    #[test]
    fn an_invalid_mapping_names_its_key() {
        let mut cfg = MappingConfig::new(&["a"]);
        cfg.columns = Some(vec!["b".into()]);
        assert_eq!(cfg.build("s").unwrap_err().key, "mapping.fields");
        let mut cfg = MappingConfig::new(&["a", "b"]);
        cfg.featurize_window = Some(10);
        assert_eq!(cfg.build("s").unwrap_err().key, "mapping.featurize_window");
        assert_eq!(
            MappingConfig::new(&[]).build("s").unwrap_err().key,
            "mapping.fields"
        );
    }

    #[test]
    fn the_reporter_counts_every_bad_input_but_logs_rarely() {
        let r = BadInputReporter::detached();
        for _ in 0..1000 {
            r.report("s", &BadInput::Parse("x".into()));
        }
        assert_eq!(r.total(), 1000);
        let last = r.last.lock().unwrap();
        assert_eq!(last.get("parse").unwrap().1, 999);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_the_parser(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let m = mapping();
            if let Ok(e) = m.parse_payload(&bytes, Some("a/b"), 0) {
                prop_assert!(e.values.iter().all(|v| v.is_finite()));
                prop_assert!(e.validate().is_ok());
            }
        }

        #[test]
        fn arbitrary_text_lines_never_panic_the_parser(line in "[0-9a-z,.\"{}\\[\\] -]{0,80}") {
            let m = mapping();
            let _ = m.parse_payload(line.as_bytes(), None, 0);
        }
    }
}
