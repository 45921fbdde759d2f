//! `POST /api/v1/detect`: the seed's request and response shapes.
//!
//! Request: `{"data": [...], "model_type": "isolation_forest", "model_id": "...", "threshold": 0.1}`.
//! - A bare vector (`[1.2, 3.4, 5.6, 7.8]`) is **one sample** (one row of
//!   features), as in the seed; a list of vectors is a batch (at most
//!   [`super::ApiLimits::max_batch_rows`] rows, all of the model's width).
//! - `model_id` (or `model`) names a model; without it the newest model of
//!   `model_type` (default `MODEL_TYPE`) serves, which at first start is the
//!   seed's default Isolation Forest on 4 features.
//!
//! Scores: `anomaly_score` is the **calibrated** score in `[0, 1]` (the
//! model's calibration, stored in its manifest; higher is more anomalous),
//! `raw_score` the model's own (for Isolation Forest `-score_samples`, as
//! in scikit-learn). `threshold` lives in the calibrated space: a row is an
//! anomaly when `anomaly_score > threshold`, so the seed's `threshold: 0.1`
//! flags scores above 0.1 (about half of normal traffic: the calibration puts
//! the training median at 0.1 and the contamination boundary at 0.5).
//! Without `threshold`: the model's rules, else `THRESHOLD`, else the
//! model's own. `confidence = clamp(2·|score − threshold|, 0, 1)`, as in the seed.
//!
//! Batches of more than [`INLINE_ROWS`] rows are scored on the blocking pool.
//! An Isolation Forest batch of at least [`SPLIT_ROWS`] rows that arrives while no other detect
//! request is being handled, nor overlapped another for [`QUIET_FOR`], is scored in two halves at once (one inline, one
//! on the [`Helper`] thread, which stays awake for a moment after each job so
//! a lone client's next batch does not wait for a thread wake-up), so a lone
//! client gets both cores; under concurrent load the cores are already busy
//! and batches are scored whole.

use std::fmt;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use sad_common::ModelKind;
use sad_common::wire::limits::MAX_VALUES;

use super::helper::Helper;
use super::{ApiError, AppState, parse_json};

/// Batches up to this many rows are scored on the async thread; larger ones on the blocking pool.
pub const INLINE_ROWS: usize = 1024;
/// Hard cap on rows while parsing, before the configured cap is known.
pub const PARSE_MAX_ROWS: usize = 1_000_000;
/// Batches from this many rows (up to [`INLINE_ROWS`]) are split in two
/// halves scored in parallel when no other detect request is in flight
/// (`DETECT_SPLIT_ROWS` overrides it, `0` turns splitting off).
pub const SPLIT_ROWS: usize = 128;

/// Detect requests being handled right now (all models).
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
/// When a detect request last arrived while another was in flight
/// (microseconds since [`clock`]'s start; 0 = never).
static LAST_OVERLAP_US: AtomicU64 = AtomicU64::new(0);
/// A lone request splits its batch only when no two requests overlapped for this long.
pub const QUIET_FOR: Duration = Duration::from_millis(50);

/// Microseconds since the first call (monotonic).
fn clock() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_micros() as u64 + 1
}

/// Smallest batch split across cores: [`SPLIT_ROWS`], or `DETECT_SPLIT_ROWS`
/// from the environment at first use (`0` never splits; for benchmarks).
fn split_rows() -> usize {
    static ROWS: OnceLock<usize> = OnceLock::new();
    *ROWS.get_or_init(|| match std::env::var("DETECT_SPLIT_ROWS") {
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(0) => usize::MAX,
            Ok(n) => n.max(2),
            Err(_) => SPLIT_ROWS,
        },
        Err(_) => SPLIT_ROWS,
    })
}

/// Counts one request in [`IN_FLIGHT`] while alive.
struct InFlight;

impl InFlight {
    /// Registers a request; returns the guard and whether it is alone: no
    /// other request in flight now, and none overlapping for [`QUIET_FOR`]
    /// (under concurrent load both cores are busy anyway, and a split would
    /// only keep the helper thread awake).
    fn enter() -> (Self, bool) {
        let before = IN_FLIGHT.fetch_add(1, Ordering::Relaxed);
        let now = clock();
        if before > 0 {
            LAST_OVERLAP_US.store(now, Ordering::Relaxed);
            return (Self, false);
        }
        let last = LAST_OVERLAP_US.load(Ordering::Relaxed);
        let quiet = last == 0 || now.saturating_sub(last) >= QUIET_FOR.as_micros() as u64;
        (Self, quiet)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `data`: one row or a batch, flattened row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Data {
    /// Row-major values.
    pub values: Vec<f64>,
    /// Values per row.
    pub width: usize,
    /// Whether `data` was a bare vector (one sample).
    pub single: bool,
}

impl Data {
    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.values.len().checked_div(self.width).unwrap_or(0)
    }
}

/// What one element of `data` was: a number (returned), or a row (its
/// values already appended to the shared buffer).
enum Elem {
    Num(f64),
    Row(usize),
}

/// Parses one element of `data`, appending a row's values straight to
/// `values` (no per-row allocation).
struct ElemSeed<'a> {
    values: &'a mut Vec<f64>,
}

impl<'de> de::DeserializeSeed<'de> for ElemSeed<'_> {
    type Value = Elem;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Elem, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ElemSeed<'_> {
    type Value = Elem;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a number or a list of numbers")
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Elem, E> {
        Ok(Elem::Num(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Elem, E> {
        Ok(Elem::Num(v as f64))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Elem, E> {
        Ok(Elem::Num(v as f64))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Elem, A::Error> {
        let mut len = 0;
        while let Some(v) = seq.next_element::<f64>()? {
            if len == MAX_VALUES {
                return Err(de::Error::custom(format!(
                    "a row has more than {MAX_VALUES} values"
                )));
            }
            self.values.push(v);
            len += 1;
        }
        Ok(Elem::Row(len))
    }
}

impl<'de> Deserialize<'de> for Data {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Data;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a vector of numbers or a list of equal-length vectors")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Data, A::Error> {
                let mut values = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
                let mut width = None;
                let mut single = None;
                let mut rows = 0usize;
                while let Some(e) = seq.next_element_seed(ElemSeed {
                    values: &mut values,
                })? {
                    match (e, single) {
                        (Elem::Num(v), None | Some(true)) => {
                            single = Some(true);
                            if values.len() == MAX_VALUES {
                                return Err(de::Error::custom(format!(
                                    "a vector has more than {MAX_VALUES} values"
                                )));
                            }
                            values.push(v);
                        }
                        (Elem::Row(len), None | Some(false)) => {
                            single = Some(false);
                            match width {
                                None => width = Some(len),
                                Some(w) if w != len => {
                                    return Err(de::Error::custom(format!(
                                        "row {rows} has {len} values, row 0 has {w}"
                                    )));
                                }
                                Some(_) => {}
                            }
                            rows += 1;
                            if rows > PARSE_MAX_ROWS {
                                return Err(de::Error::custom("too many rows"));
                            }
                        }
                        _ => {
                            return Err(de::Error::custom("data mixes numbers and vectors"));
                        }
                    }
                }
                let single = single.unwrap_or(true);
                let width = if single {
                    values.len()
                } else {
                    width.unwrap_or(0)
                };
                Ok(Data {
                    values,
                    width,
                    single,
                })
            }
        }
        d.deserialize_seq(V)
    }
}

/// The detect request body.
#[derive(Debug, Clone, Deserialize)]
pub struct DetectRequest {
    /// One sample or a batch.
    pub data: Data,
    /// Model kind (default `MODEL_TYPE`).
    #[serde(default)]
    pub model_type: Option<String>,
    /// Model name (the seed's name).
    #[serde(default)]
    pub model_id: Option<String>,
    /// Model name (alias of `model_id`).
    #[serde(default)]
    pub model: Option<String>,
    /// Calibrated threshold in `[0, 1]`.
    #[serde(default)]
    pub threshold: Option<f64>,
}

/// A scalar for one sample, a list for a batch.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    /// One sample.
    One(T),
    /// A batch.
    Many(Vec<T>),
}

/// The detect response (the seed's fields plus version and raw scores).
#[derive(Debug, Clone, Serialize)]
pub struct DetectResponse {
    /// Model name.
    pub model_id: String,
    /// Model kind.
    pub model_type: &'static str,
    /// Model version.
    pub model_version: u64,
    /// Threshold applied (calibrated space).
    pub threshold: f64,
    /// Rows scored.
    pub n_samples: usize,
    /// Calibrated scores in `[0, 1]`.
    pub anomaly_score: OneOrMany<f64>,
    /// Raw model scores.
    pub raw_score: OneOrMany<f64>,
    /// `anomaly_score > threshold`.
    pub is_anomaly: OneOrMany<bool>,
    /// `clamp(2·|score − threshold|, 0, 1)`.
    pub confidence: OneOrMany<f64>,
    /// Rows flagged.
    pub anomalies_detected: usize,
    /// Time to score, in milliseconds.
    pub processing_time_ms: f64,
}

/// Handler of `POST /api/v1/detect`.
pub async fn detect(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let t0 = Instant::now();
    let (_in_flight, alone) = InFlight::enter();
    let req: DetectRequest = parse_json(body)?;
    let kind = match &req.model_type {
        Some(s) => s
            .parse::<ModelKind>()
            .map_err(|_| ApiError::invalid(format!("unknown model_type {s:?}")))?,
        None => state.default_kind,
    };
    let entry = match req.model_id.as_deref().or(req.model.as_deref()) {
        Some(name) => {
            let e = state
                .registry
                .get(name)
                .ok_or_else(|| ApiError::not_found(format!("model {name:?} not found")))?;
            if req.model_type.is_some() && e.manifest.kind != kind {
                return Err(ApiError::invalid(format!(
                    "model {name:?} is a {}, not {kind}",
                    e.manifest.kind
                )));
            }
            e
        }
        None => state
            .registry
            .newest(kind)
            .ok_or_else(|| ApiError::not_found(format!("no trained model of type {kind}")))?,
    };
    let data = req.data;
    let n = data.rows();
    if data.values.is_empty() || n == 0 {
        return Err(ApiError::invalid(
            "data must be a non-empty vector or list of vectors",
        ));
    }
    if n > state.limits.max_batch_rows {
        return Err(ApiError::invalid(format!(
            "batch larger than {} rows",
            state.limits.max_batch_rows
        )));
    }
    let n_features = entry.detector.n_features();
    if data.width != n_features {
        return Err(ApiError::invalid(format!(
            "model expects {n_features} features, got {}",
            data.width
        )));
    }
    if data.values.iter().any(|v| !v.is_finite()) {
        return Err(ApiError::invalid("data contains non-finite values"));
    }
    let threshold = match req.threshold {
        Some(t) if !(0.0..=1.0).contains(&t) => {
            return Err(ApiError::invalid("threshold must be between 0 and 1"));
        }
        Some(t) => t,
        None => state
            .rules
            .get(&entry.manifest.name)
            .and_then(|r| r.threshold)
            .or(state.default_threshold)
            .unwrap_or(entry.manifest.threshold),
    };

    let score_start = Instant::now();
    let detector = entry.detector.clone();
    let failed =
        |e: tokio::task::JoinError| ApiError::internal(format!("scoring task failed: {e}"));
    let scores = if n > INLINE_ROWS {
        let values = data.values;
        tokio::task::spawn_blocking(move || detector.score_batch(&values))
            .await
            .map_err(failed)?
    } else if n >= split_rows() && alone && entry.manifest.kind == ModelKind::IsolationForest {
        // A forest scores every row on its own, so two halves give the same
        // scores (windowed models like the LSTM are never split).
        let mut head = data.values;
        let tail = head.split_off(n / 2 * n_features);
        let other = detector.clone();
        let (head, tail) = match Helper::global().try_run(move || other.score_batch(&tail)) {
            Ok(pending) => {
                let head = detector.score_batch(&head);
                let tail = pending
                    .wait()
                    .ok_or_else(|| ApiError::internal("scoring task failed"))?;
                (head, tail)
            }
            // The helper is busy: score the halves one after the other.
            Err(job) => (detector.score_batch(&head), job()),
        };
        head.and_then(|mut h| {
            h.extend(tail?);
            Ok(h)
        })
    } else {
        detector.score_batch(&data.values)
    }
    .map_err(|e| ApiError::invalid(e.to_string()))?;
    let scoring = score_start.elapsed();

    let mut calibrated = Vec::with_capacity(n);
    let mut raw = Vec::with_capacity(n);
    let mut flags = Vec::with_capacity(n);
    let mut confidence = Vec::with_capacity(n);
    let mut anomalies = 0usize;
    let mut conf_sum = 0.0;
    for s in &scores {
        let a = s.score > threshold;
        anomalies += usize::from(a);
        let c = (2.0 * (s.score - threshold).abs()).clamp(0.0, 1.0);
        conf_sum += c;
        calibrated.push(s.score);
        raw.push(s.raw);
        flags.push(a);
        confidence.push(c);
    }

    let kind_label = entry.manifest.kind.as_str();
    let m = &state.metrics;
    m.processing_duration
        .with_label_values(&[kind_label])
        .observe(scoring.as_secs_f64());
    m.events_processed
        .with_label_values(&[kind_label])
        .inc_by(n as u64);
    if anomalies > 0 {
        m.anomalies_detected
            .with_label_values(&[kind_label, "api"])
            .inc_by(anomalies as u64);
    }
    m.confidence
        .with_label_values(&[kind_label])
        .set(conf_sum / n as f64);
    entry.usage.record(n as u64, anomalies as u64);

    let pack = |v: Vec<f64>| {
        if data.single {
            OneOrMany::One(v[0])
        } else {
            OneOrMany::Many(v)
        }
    };
    let is_anomaly = if data.single {
        OneOrMany::One(flags[0])
    } else {
        OneOrMany::Many(flags)
    };
    let response = DetectResponse {
        model_id: entry.manifest.name.clone(),
        model_type: kind_label,
        model_version: entry.manifest.version,
        threshold,
        n_samples: n,
        anomaly_score: pack(calibrated),
        raw_score: pack(raw),
        is_anomaly,
        confidence: pack(confidence),
        anomalies_detected: anomalies,
        processing_time_ms: t0.elapsed().as_secs_f64() * 1e3,
    };
    // Sized for the three float lists (up to 24 bytes a number) and the flags
    // up front, so the body is written without regrowing.
    let mut body = Vec::with_capacity(320 + n * 80);
    serde_json::to_writer(&mut body, &response)
        .map_err(|e| ApiError::internal(format!("cannot write the response: {e}")))?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_alone_only_without_overlap_for_a_while() {
        // The only test here that touches the in-flight counter.
        let (a, _) = InFlight::enter();
        let (b, second) = InFlight::enter();
        assert!(!second, "two at once");
        drop((a, b));
        let (c, right_after) = InFlight::enter();
        assert!(!right_after, "an overlap just happened: not quiet yet");
        drop(c);
        std::thread::sleep(QUIET_FOR + Duration::from_millis(10));
        let (_d, later) = InFlight::enter();
        assert!(later, "quiet for {QUIET_FOR:?}: alone again");
    }

    fn data(s: &str) -> Result<Data, serde_json::Error> {
        serde_json::from_str(s)
    }

    #[test]
    fn a_bare_vector_is_one_sample_of_its_length() {
        let d = data("[1.2, 3.4, 5, 7.8]").unwrap();
        assert!(d.single);
        assert_eq!((d.width, d.rows()), (4, 1));
        assert_eq!(d.values, vec![1.2, 3.4, 5.0, 7.8]);
    }

    #[test]
    fn a_list_of_vectors_is_a_batch_flattened_row_major() {
        let d = data("[[1, 2], [3, 4], [5, 6]]").unwrap();
        assert!(!d.single);
        assert_eq!((d.width, d.rows()), (2, 3));
        assert_eq!(d.values, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    }

    #[test]
    fn ragged_mixed_and_non_numeric_data_is_rejected() {
        assert!(data("[[1, 2], [3]]").is_err());
        assert!(data("[1, [2, 3]]").is_err());
        assert!(data("[\"a\"]").is_err());
        assert!(data("{\"a\": 1}").is_err());
        assert!(data("[[1, \"x\"]]").is_err());
    }
}
