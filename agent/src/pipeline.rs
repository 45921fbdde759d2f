//! The pipeline: events in, scored and explained alerts out to the outbox.
//!
//! [`Pipeline::process_batch`] is synchronous and does no I/O of its own
//! apart from the [`AlertSink`] append; [`run_pipeline`] is the thin async
//! shell that drains the source channel in batches (whatever is ready, up to
//! `batch_max`) and runs each batch on the blocking pool, so scoring and the
//! outbox flush never block the async runtime.
//!
//! Per batch:
//! 1. the model set is read once ([`ModelProvider::snapshot`]), so a model
//!    swap takes effect at the next batch and scoring never waits for it;
//! 2. each event becomes a feature row: its values, or `value, diff, dev,
//!    std` from a per-series [`SeriesFeaturizer`] when the mapping asks for
//!    it, or the last `window` rows of the series for a windowed model
//!    (nothing is scored until the window is full);
//! 3. rows for a trained model are scored together with
//!    [`Detector::score_batch`]; a source without a trained model gets a
//!    streaming detector per series (EWMA z-score or Half-Space Trees,
//!    `update_and_score`);
//! 4. the [`RulesEngine`] turns scores into alerts (top-k explanation from
//!    [`Detector::explain`], named after the features);
//! 5. all alerts of the batch go to the outbox in **one** append (one
//!    flush); only then are source positions committed.
//!
//! Series keys are global: two sources with the same series key share the
//! rules state of that series.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sad_common::{Alert, FeatureContribution, ModelKind};
use sad_models::Detector;
use sad_models::features::{SERIES_FEATURE_NAMES, SeriesFeaturizer};
use sad_models::streaming::{EwmaParams, EwmaZScore, HalfSpaceTrees, HstParams};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::heartbeat::{Counters, Reservoir, ScoreStats};
use crate::metrics::AgentMetrics;
use crate::model_manager::{ModelManager, ModelSet};
use crate::rules::{RulesConfig, RulesEngine, RulesUpdates};
use crate::sources::{BadInput, BadInputReporter, Committer, Envelope, EventReceiver};

/// Errors of the pipeline.
#[derive(Debug, Error)]
pub enum PipelineError {
    /// The outbox refused the batch's alerts; they were not raised.
    #[error("outbox append failed: {0}")]
    Sink(String),
    /// A config value is invalid.
    #[error("pipeline.{key}: {reason}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The blocking worker panicked or was cancelled.
    #[error("pipeline worker failed: {0}")]
    Worker(String),
}

/// Which streaming detector watches series without a trained model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamingKind {
    /// EWMA z-score (cheap, per feature).
    Ewma,
    /// Half-Space Trees (joint distribution; more memory per series).
    HalfSpaceTrees,
}

/// Streaming detector settings (`[pipeline.streaming]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamingConfig {
    /// Detector kind (default `ewma`).
    pub detector: StreamingKind,
    /// EWMA parameters (defaults of [`EwmaParams`]).
    pub ewma: EwmaParams,
    /// Half-Space Trees parameters (default: 25 trees of height 8, window 250,
    /// about 150 KB per series instead of 20 MB at height 15).
    pub hst: HstParams,
}

impl Default for StreamingConfig {
    fn default() -> Self {
        Self {
            detector: StreamingKind::Ewma,
            ewma: EwmaParams::default(),
            hst: HstParams {
                height: 8,
                ..HstParams::default()
            },
        }
    }
}

/// Pipeline settings (`[pipeline]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Most events scored in one batch (default 1024).
    pub batch_max: usize,
    /// Capacity of the channel from the sources, in events (default 8192).
    pub channel_capacity: usize,
    /// Most series with per-series state (featuriser, window, streaming
    /// detector); events of further series are counted as bad input
    /// `series` (default 100 000).
    pub max_series: usize,
    /// The streaming detector for series without a trained model.
    pub streaming: StreamingConfig,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            batch_max: 1024,
            channel_capacity: 8192,
            max_series: 100_000,
            streaming: StreamingConfig::default(),
        }
    }
}

impl PipelineConfig {
    /// Checks every value, naming the first invalid key.
    pub fn validate(&self) -> Result<(), PipelineError> {
        let invalid = |key, reason: String| Err(PipelineError::Invalid { key, reason });
        if !(1..=100_000).contains(&self.batch_max) {
            return invalid(
                "batch_max",
                format!("{} is not in 1..=100000", self.batch_max),
            );
        }
        if !(1..=10_000_000).contains(&self.channel_capacity) {
            return invalid(
                "channel_capacity",
                format!("{} is not in 1..=10000000", self.channel_capacity),
            );
        }
        if self.max_series == 0 {
            return invalid("max_series", "must be positive".into());
        }
        if let Err(e) = self.streaming.ewma.validate() {
            return invalid("streaming.ewma", e.to_string());
        }
        if let Err(e) = self.streaming.hst.validate(1) {
            return invalid("streaming.hst", e.to_string());
        }
        Ok(())
    }
}

/// A trained model as the pipeline sees it.
#[derive(Clone)]
pub struct ScoringModel {
    /// Model name.
    pub name: String,
    /// Kind.
    pub kind: ModelKind,
    /// Version.
    pub version: u64,
    /// Feature names, per step for windowed models.
    pub feature_names: Arc<Vec<String>>,
    /// Window length in events (1 = no window).
    pub window: usize,
    /// The detector.
    pub detector: Arc<dyn Detector>,
}

impl ScoringModel {
    /// Values the detector takes per scored row: the features of one event,
    /// or of `window` consecutive events for a windowed model.
    pub fn row_len(&self) -> usize {
        self.detector.n_features() * self.window.max(1)
    }
}

/// Where the pipeline reads the current models from (the model manager).
pub trait ModelProvider: Send + Sync {
    /// The models in use now; read once per batch.
    fn snapshot(&self) -> Vec<ScoringModel>;
}

/// A fixed set of models (tests, benchmarks).
pub struct StaticModels(pub Vec<ScoringModel>);

impl ModelProvider for StaticModels {
    fn snapshot(&self) -> Vec<ScoringModel> {
        self.0.clone()
    }
}

/// Where alerts go (the outbox): durable once `append` returns.
pub trait AlertSink: Send + Sync {
    /// Stores the alerts durably and returns their seqs.
    fn append(&self, alerts: Vec<Alert>) -> Result<Vec<u64>, String>;

    /// Stores the alerts and, atomically with them, the source positions
    /// after the events that raised them (default: the alerts only).
    fn append_marked(
        &self,
        alerts: Vec<Alert>,
        marks: &[(String, u64)],
    ) -> Result<Vec<u64>, String> {
        let _ = marks;
        self.append(alerts)
    }
}

impl AlertSink for crate::outbox::Outbox {
    fn append(&self, alerts: Vec<Alert>) -> Result<Vec<u64>, String> {
        crate::outbox::Outbox::append(self, alerts).map_err(|e| e.to_string())
    }

    fn append_marked(
        &self,
        alerts: Vec<Alert>,
        marks: &[(String, u64)],
    ) -> Result<Vec<u64>, String> {
        crate::outbox::Outbox::append_marked(self, alerts, marks).map_err(|e| e.to_string())
    }
}

/// The scored rows of one model in one batch, for reservoir sampling and score statistics.
pub struct BatchView<'a> {
    /// Model name.
    pub model: &'a str,
    /// Feature names of the rows.
    pub feature_names: &'a [String],
    /// Row-major feature rows.
    pub rows: &'a [f64],
    /// Calibrated score per row.
    pub scores: &'a [f64],
    /// Whether each row scored above the enter threshold (flagged, before rules throttle alerts).
    pub flagged: &'a [bool],
}

/// Gets every scored batch (the heartbeat's reservoir and score statistics).
pub trait BatchObserver: Send {
    /// Called once per model per batch.
    fn observe(&mut self, view: &BatchView<'_>);
}

/// Feeds the heartbeat: reservoir samples of scored rows and the rolling score summary.
pub struct HeartbeatObserver {
    /// Reservoir of recent feature rows per model.
    pub reservoir: Arc<Mutex<Reservoir>>,
    /// Rolling score summary.
    pub scores: Arc<Mutex<ScoreStats>>,
}

impl BatchObserver for HeartbeatObserver {
    fn observe(&mut self, view: &BatchView<'_>) {
        let width = view.feature_names.len().max(1);
        if let Ok(mut r) = self.reservoir.lock() {
            for row in view.rows.chunks_exact(width) {
                r.offer(view.model, view.feature_names, row);
            }
        }
        if let Ok(mut s) = self.scores.lock() {
            for (score, flagged) in view.scores.iter().zip(view.flagged) {
                s.record(*score, *flagged);
            }
        }
    }
}

/// The model manager as the pipeline's model provider; converts a model set
/// once per swap (compared by pointer), not once per batch.
pub struct ManagedModels {
    manager: ModelManager,
    cache: Mutex<(Option<Arc<ModelSet>>, Vec<ScoringModel>)>,
}

impl ManagedModels {
    /// Wraps the model manager.
    pub fn new(manager: ModelManager) -> Self {
        Self {
            manager,
            cache: Mutex::new((None, Vec::new())),
        }
    }
}

impl ModelProvider for ManagedModels {
    fn snapshot(&self) -> Vec<ScoringModel> {
        let set = self.manager.current();
        let Ok(mut cache) = self.cache.lock() else {
            return Vec::new();
        };
        if cache.0.as_ref().is_none_or(|c| !Arc::ptr_eq(c, &set)) {
            let models = set
                .models
                .values()
                .map(|m| ScoringModel {
                    name: m.manifest.name.clone(),
                    kind: m.manifest.kind,
                    version: m.manifest.version,
                    feature_names: Arc::new(m.manifest.feature_names.clone()),
                    window: m.manifest.window.max(1) as usize,
                    detector: m.detector.clone(),
                })
                .collect();
            *cache = (Some(set), models);
        }
        cache.1.clone()
    }
}

/// What one batch did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatchOutcome {
    /// Events in the batch.
    pub events: usize,
    /// Events scored (the rest were bad input or filling a window).
    pub scored: usize,
    /// Seqs of the alerts raised.
    pub seqs: Vec<u64>,
}

/// Per-series state, only for series that need it.
#[derive(Default)]
struct SeriesState {
    featurizer: Option<SeriesFeaturizer>,
    /// Flattened last rows for windowed models, oldest first.
    window: VecDeque<f64>,
    streaming: Option<Box<dyn Detector>>,
}

/// Where a row of the batch goes.
enum Route {
    /// Skip (bad input, window filling).
    None,
    /// Trained model `model`, row `row` of its group.
    Trained { model: usize, row: usize },
    /// Streaming detector: already scored; row stored in `stream_rows`.
    Streaming {
        score: sad_models::Score,
        row: usize,
    },
}

/// The synchronous pipeline core.
pub struct Pipeline {
    cfg: PipelineConfig,
    rules: RulesEngine,
    sink: Arc<dyn AlertSink>,
    models: Arc<dyn ModelProvider>,
    metrics: Option<AgentMetrics>,
    counters: Counters,
    reporter: BadInputReporter,
    observer: Option<Box<dyn BatchObserver>>,
    series: HashMap<String, SeriesState>,
    rules_updates: Option<(RulesUpdates, u64)>,
    label_hook: Option<LabelHook>,
}

/// Called for every scored event that carries a label: model name, whether
/// the event is a labelled anomaly, whether the model flagged it.
pub type LabelHook = Box<dyn FnMut(&str, bool, bool) + Send>;

impl Pipeline {
    /// A pipeline writing alerts to `sink`, scoring with `models`.
    pub fn new(
        cfg: PipelineConfig,
        rules: RulesConfig,
        episode_base: u64,
        sink: Arc<dyn AlertSink>,
        models: Arc<dyn ModelProvider>,
        reporter: BadInputReporter,
    ) -> Self {
        Self {
            cfg,
            rules: RulesEngine::new(rules, episode_base),
            sink,
            models,
            metrics: None,
            counters: Counters::default(),
            reporter,
            observer: None,
            series: HashMap::new(),
            rules_updates: None,
            label_hook: None,
        }
    }

    /// Reports every labelled event's outcome (for precision and recall where labels exist).
    pub fn with_label_hook(mut self, hook: LabelHook) -> Self {
        self.label_hook = Some(hook);
        self
    }

    /// Applies per-model rule settings pushed by the coordinator, from the next batch on.
    pub fn with_rules_updates(mut self, updates: RulesUpdates) -> Self {
        self.rules_updates = Some((updates, u64::MAX));
        self
    }

    /// Updates these Prometheus metrics.
    pub fn with_metrics(mut self, metrics: AgentMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Counts into these shared counters.
    pub fn with_counters(mut self, counters: Counters) -> Self {
        self.counters = counters;
        self
    }

    /// Reports every scored batch to `observer`.
    pub fn with_observer(mut self, observer: Box<dyn BatchObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// The pipeline's configuration.
    pub fn config(&self) -> &PipelineConfig {
        &self.cfg
    }

    /// The counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    fn new_streaming(&self, n_features: usize) -> Result<Box<dyn Detector>, BadInput> {
        let s = &self.cfg.streaming;
        let d: Box<dyn Detector> = match s.detector {
            StreamingKind::Ewma => {
                Box::new(
                    EwmaZScore::new(s.ewma, n_features).map_err(|_| BadInput::Dimension {
                        expected: 1,
                        got: n_features,
                    })?,
                )
            }
            StreamingKind::HalfSpaceTrees => {
                Box::new(HalfSpaceTrees::new(s.hst.clone(), n_features).map_err(|_| {
                    BadInput::Dimension {
                        expected: 1,
                        got: n_features,
                    }
                })?)
            }
        };
        Ok(d)
    }

    fn series_state(&mut self, series: &str) -> Result<&mut SeriesState, BadInput> {
        if !self.series.contains_key(series) {
            if self.series.len() >= self.cfg.max_series {
                return Err(BadInput::Series(format!(
                    "more than {} series with state",
                    self.cfg.max_series
                )));
            }
            self.series
                .insert(series.to_string(), SeriesState::default());
        }
        Ok(self.series.get_mut(series).expect("inserted above"))
    }

    /// Scores one batch, raises its alerts in one outbox append and commits source positions.
    pub fn process_batch(&mut self, batch: Vec<Envelope>) -> Result<BatchOutcome, PipelineError> {
        let started = Instant::now();
        if let Some((updates, seen)) = &mut self.rules_updates
            && updates.version() != *seen
        {
            let (version, map) = updates.snapshot();
            *seen = version;
            self.rules.set_overrides(map);
        }
        let models = self.models.snapshot();
        let by_name: HashMap<&str, usize> = models
            .iter()
            .enumerate()
            .map(|(i, m)| (m.name.as_str(), i))
            .collect();
        let mut groups: Vec<Vec<f64>> = vec![Vec::new(); models.len()];
        let mut group_rows: Vec<usize> = vec![0; models.len()];
        let mut stream_rows: Vec<f64> = Vec::new();
        let mut stream_widths: Vec<(usize, usize)> = Vec::new(); // (offset, len)
        let mut routes: Vec<Route> = Vec::with_capacity(batch.len());
        let mut row_buf: Vec<f64> = Vec::new();

        for env in &batch {
            let info = &env.source;
            let model_idx = match &info.model {
                Some(name) => by_name.get(name.as_str()).copied(),
                None if models.len() == 1 => Some(0),
                None => None,
            };
            // 1. the feature row of this event
            row_buf.clear();
            let ev = &env.event;
            let route = (|| -> Result<Route, BadInput> {
                if ev.values.len() != info.feature_names.len() {
                    return Err(BadInput::Dimension {
                        expected: info.feature_names.len(),
                        got: ev.values.len(),
                    });
                }
                if let Some(i) = ev.values.iter().position(|v| !v.is_finite()) {
                    return Err(BadInput::NonFinite(info.feature_names[i].clone()));
                }
                if let Some(w) = info.featurize_window {
                    let st = self.series_state(&ev.series)?;
                    let f = st
                        .featurizer
                        .get_or_insert_with(|| SeriesFeaturizer::new(w));
                    row_buf.extend_from_slice(&f.push(ev.values[0]));
                } else {
                    row_buf.extend_from_slice(&ev.values);
                }
                match model_idx {
                    Some(mi) => {
                        let m = &models[mi];
                        let width = row_buf.len();
                        if m.window > 1 {
                            let st = self.series_state(&ev.series)?;
                            st.window.extend(row_buf.iter().copied());
                            while st.window.len() > m.window * width {
                                st.window.pop_front();
                            }
                            if st.window.len() < m.window * width {
                                return Ok(Route::None);
                            }
                            row_buf.clear();
                            row_buf.extend(st.window.iter().copied());
                        }
                        if row_buf.len() != m.row_len() {
                            return Err(BadInput::Dimension {
                                expected: m.row_len(),
                                got: row_buf.len(),
                            });
                        }
                        groups[mi].extend_from_slice(&row_buf);
                        group_rows[mi] += 1;
                        Ok(Route::Trained {
                            model: mi,
                            row: group_rows[mi] - 1,
                        })
                    }
                    None => {
                        let n = row_buf.len();
                        let needs_new = self.series.get(&ev.series).is_none_or(|s| {
                            s.streaming.as_ref().is_none_or(|d| d.n_features() != n)
                        });
                        if needs_new {
                            let d = self.new_streaming(n)?;
                            self.series_state(&ev.series)?.streaming = Some(d);
                        }
                        let st = self.series_state(&ev.series)?;
                        let det = st.streaming.as_mut().expect("created above");
                        let score =
                            det.update_and_score(&row_buf)
                                .map_err(|_| BadInput::Dimension {
                                    expected: n,
                                    got: row_buf.len(),
                                })?;
                        let off = stream_rows.len();
                        stream_rows.extend_from_slice(&row_buf);
                        stream_widths.push((off, n));
                        Ok(Route::Streaming {
                            score,
                            row: stream_widths.len() - 1,
                        })
                    }
                }
            })();
            match route {
                Ok(r) => routes.push(r),
                Err(bad) => {
                    self.reporter.report(&info.name, &bad);
                    routes.push(Route::None);
                }
            }
        }

        // 2. batch scoring per trained model
        let mut group_scores: Vec<Vec<sad_models::Score>> = Vec::with_capacity(models.len());
        for (mi, m) in models.iter().enumerate() {
            if group_rows[mi] == 0 {
                group_scores.push(Vec::new());
                continue;
            }
            let t = Instant::now();
            match m.detector.score_batch(&groups[mi]) {
                Ok(s) => group_scores.push(s),
                Err(e) => {
                    tracing::warn!(model = %m.name, error = %e, "scoring failed, batch rows skipped");
                    self.reporter.report(
                        &m.name,
                        &BadInput::Dimension {
                            expected: m.row_len(),
                            got: 0,
                        },
                    );
                    group_scores.push(Vec::new());
                }
            }
            if let Some(metrics) = &self.metrics {
                metrics
                    .processing_duration
                    .with_label_values(&[m.kind.as_str()])
                    .observe(t.elapsed().as_secs_f64());
            }
        }

        // 3. rules, in event order
        let streaming_kind = match self.cfg.streaming.detector {
            StreamingKind::Ewma => ModelKind::Ewma,
            StreamingKind::HalfSpaceTrees => ModelKind::HalfSpaceTrees,
        };
        let top_k = self.rules.config().top_k;
        let mut alerts: Vec<Alert> = Vec::new();
        // Rows above the enter threshold, per trained model: the heartbeat's
        // flag rate, which canary health checks compare (alerts are throttled
        // by the rules, flags are not).
        let mut flagged_trained: Vec<Vec<bool>> =
            group_rows.iter().map(|&n| vec![false; n]).collect();
        let mut scored = 0usize;
        let mut streamed = 0u64;
        let mut last_conf: HashMap<ModelKind, f64> = HashMap::new();
        for (env, route) in batch.iter().zip(&routes) {
            let ev = &env.event;
            #[allow(clippy::type_complexity)]
            let (score, threshold, row, kind, name, version, names, detector): (
                sad_models::Score,
                f64,
                &[f64],
                ModelKind,
                &str,
                u64,
                Vec<String>,
                Option<&dyn Detector>,
            ) = match *route {
                Route::None => continue,
                Route::Trained { model, row } => {
                    let Some(s) = group_scores[model].get(row) else {
                        continue;
                    };
                    let m = &models[model];
                    let w = m.row_len();
                    (
                        *s,
                        m.detector.threshold(),
                        &groups[model][row * w..(row + 1) * w],
                        m.kind,
                        m.name.as_str(),
                        m.version,
                        Vec::new(),
                        Some(m.detector.as_ref()),
                    )
                }
                Route::Streaming { score, row } => {
                    let (off, n) = stream_widths[row];
                    streamed += 1;
                    (
                        score,
                        self.cfg_streaming_threshold(),
                        &stream_rows[off..off + n],
                        streaming_kind,
                        streaming_kind.as_str(),
                        0,
                        if env.source.featurize_window.is_some() {
                            SERIES_FEATURE_NAMES.iter().map(|s| s.to_string()).collect()
                        } else {
                            env.source.feature_names.clone()
                        },
                        None,
                    )
                }
            };
            scored += 1;
            last_conf.insert(kind, score.score);
            let enter = self.rules.config().enter_threshold(threshold);
            let flagged = score.score > enter;
            if let Route::Trained { model, row } = route {
                flagged_trained[*model][*row] = flagged;
            }
            if let Some(label) = ev.label {
                self.counters.record_labelled(name, label, flagged);
                if let Some(hook) = self.label_hook.as_mut() {
                    hook(name, label, flagged);
                }
            }
            let Some(em) =
                self.rules
                    .observe_model(name, &ev.series, ev.ts_ms, score.score, threshold)
            else {
                continue;
            };
            // explanation
            let contributions = match (detector, route) {
                (Some(d), _) => d.explain(row, top_k).unwrap_or_default(),
                (None, Route::Streaming { .. }) => {
                    let d = self
                        .series
                        .get(&ev.series)
                        .and_then(|s| s.streaming.as_ref());
                    d.and_then(|d| d.explain(row, top_k).ok())
                        .unwrap_or_default()
                }
                _ => Vec::new(),
            };
            let model_names: &[String] = match route {
                Route::Trained { model, .. } => models[*model].feature_names.as_slice(),
                _ => names.as_slice(),
            };
            let explanation = contributions
                .iter()
                .filter(|c| c.weight.is_finite())
                .map(|c| FeatureContribution {
                    feature: feature_name(model_names, row.len(), c.feature),
                    weight: c.weight,
                })
                .collect();
            alerts.push(Alert {
                agent_id: String::new(),
                seq: 0,
                series: ev.series.clone(),
                ts_ms: ev.ts_ms,
                model: name.to_string(),
                model_kind: kind,
                model_version: version,
                score: score.score.clamp(0.0, 1.0),
                raw_score: if score.raw.is_finite() {
                    score.raw
                } else {
                    0.0
                },
                threshold: enter,
                severity: em.severity,
                episode_id: em.episode_id,
                explanation,
                values: ev.values.clone(),
                label: ev.label,
            });
        }

        // 4. metrics and counters
        if let Some(metrics) = &self.metrics {
            for (mi, m) in models.iter().enumerate() {
                if group_rows[mi] > 0 {
                    metrics
                        .events_processed
                        .with_label_values(&[m.kind.as_str()])
                        .inc_by(group_rows[mi] as u64);
                }
            }
            if streamed > 0 {
                metrics
                    .events_processed
                    .with_label_values(&[streaming_kind.as_str()])
                    .inc_by(streamed);
            }
            for (kind, s) in &last_conf {
                metrics
                    .confidence
                    .with_label_values(&[kind.as_str()])
                    .set(*s);
            }
            for a in &alerts {
                metrics
                    .anomalies_detected
                    .with_label_values(&[a.model_kind.as_str(), a.severity.as_str()])
                    .inc();
            }
            for (name, o) in self.counters.labelled_snapshot() {
                let n = o.anomalies + o.normal;
                if n > 0 {
                    let right = o.detected + (o.normal - o.false_alarms);
                    metrics
                        .model_accuracy
                        .with_label_values(&[&name])
                        .set(right as f64 / n as f64);
                }
            }
        }
        self.counters
            .events
            .fetch_add(scored as u64, Ordering::Relaxed);

        // 5. one durable append, then source positions
        let n_alerts = alerts.len();
        let seqs = if alerts.is_empty() {
            Vec::new()
        } else {
            self.sink
                .append_marked(alerts, &durable_marks(&batch))
                .map_err(PipelineError::Sink)?
        };
        self.counters
            .anomalies
            .fetch_add(n_alerts as u64, Ordering::Relaxed);
        commit_marks(&batch, n_alerts > 0);

        // 6. observers
        if let Some(obs) = self.observer.as_mut() {
            for (mi, m) in models.iter().enumerate() {
                if group_scores[mi].is_empty() {
                    continue;
                }
                let scores: Vec<f64> = group_scores[mi].iter().map(|s| s.score).collect();
                obs.observe(&BatchView {
                    model: &m.name,
                    feature_names: &m.feature_names,
                    rows: &groups[mi],
                    scores: &scores,
                    flagged: &flagged_trained[mi],
                });
            }
        }
        tracing::trace!(
            events = batch.len(),
            scored,
            alerts = n_alerts,
            elapsed_us = started.elapsed().as_micros() as u64,
            "batch"
        );
        Ok(BatchOutcome {
            events: batch.len(),
            scored,
            seqs,
        })
    }

    fn cfg_streaming_threshold(&self) -> f64 {
        // Both streaming detectors use 0.5 as their calibrated decision boundary.
        0.5
    }
}

/// Name of feature `idx` of a row of `row_len` values, for windowed rows `name[t-k]`.
fn feature_name(names: &[String], row_len: usize, idx: usize) -> String {
    if names.is_empty() {
        return format!("f{idx}");
    }
    let per_step = names.len();
    if row_len > per_step && row_len.is_multiple_of(per_step) {
        let steps = row_len / per_step;
        let step = idx / per_step;
        format!("{}[t-{}]", names[idx % per_step], steps - 1 - step)
    } else {
        names.get(idx).cloned().unwrap_or_else(|| format!("f{idx}"))
    }
}

/// Commits, per committer, the position after the last event of the batch.
/// The highest position per keyed committer in `batch`, stored with the
/// batch's alerts so a restart never resumes before them.
fn durable_marks(batch: &[Envelope]) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = Vec::new();
    for env in batch {
        if let Some(m) = &env.mark
            && let Some(key) = m.committer.key()
        {
            match out.iter_mut().find(|(k, _)| *k == key) {
                Some(e) => e.1 = e.1.max(m.position),
                None => out.push((key, m.position)),
            }
        }
    }
    out
}

fn commit_marks(batch: &[Envelope], durable: bool) {
    let mut last: Vec<(Arc<dyn Committer>, u64)> = Vec::new();
    for env in batch {
        if let Some(m) = &env.mark {
            match last.iter_mut().find(|(c, _)| Arc::ptr_eq(c, &m.committer)) {
                Some(entry) => entry.1 = entry.1.max(m.position),
                None => last.push((m.committer.clone(), m.position)),
            }
        }
    }
    for (c, pos) in last {
        c.commit(pos, durable);
    }
}

/// Drains `rx` in batches until every sender is gone, scoring each batch on the blocking pool.
///
/// Returns the pipeline when the channel is closed and empty (every event
/// received was processed), or the first outbox error.
pub async fn run_pipeline(
    mut pipeline: Pipeline,
    mut rx: EventReceiver,
) -> Result<Pipeline, PipelineError> {
    let batch_max = pipeline.cfg.batch_max;
    let mut buf: Vec<Envelope> = Vec::with_capacity(batch_max);
    loop {
        let n = rx.recv_many(&mut buf, batch_max).await;
        if n == 0 {
            return Ok(pipeline);
        }
        let batch = std::mem::replace(&mut buf, Vec::with_capacity(batch_max));
        let (p, res) = tokio::task::spawn_blocking(move || {
            let r = pipeline.process_batch(batch);
            (pipeline, r)
        })
        .await
        .map_err(|e| PipelineError::Worker(e.to_string()))?;
        pipeline = p;
        res?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::{Mark, SourceInfo};
    use sad_common::{Event, Severity};

    #[derive(Default)]
    struct MemSink(Mutex<Vec<Alert>>);
    impl AlertSink for MemSink {
        fn append(&self, alerts: Vec<Alert>) -> Result<Vec<u64>, String> {
            let mut v = self.0.lock().unwrap();
            let start = v.len() as u64;
            let n = alerts.len() as u64;
            v.extend(alerts);
            Ok((start + 1..=start + n).collect())
        }
    }

    struct FailSink;
    impl AlertSink for FailSink {
        fn append(&self, _: Vec<Alert>) -> Result<Vec<u64>, String> {
            Err("disk full".into())
        }
    }

    fn forest() -> ScoringModel {
        let mut rows = Vec::new();
        for i in 0..512 {
            let x = (i % 17) as f64 / 17.0;
            let y = (i % 13) as f64 / 13.0;
            rows.extend_from_slice(&[x, y]);
        }
        let f = sad_models::iforest::IsolationForestParams::default()
            .fit(&rows, 2)
            .unwrap();
        ScoringModel {
            name: "iforest".into(),
            kind: ModelKind::IsolationForest,
            version: 3,
            feature_names: Arc::new(vec!["x".into(), "y".into()]),
            window: 1,
            detector: Arc::new(f),
        }
    }

    fn env(info: &Arc<SourceInfo>, series: &str, ts: i64, values: Vec<f64>) -> Envelope {
        Envelope {
            source: info.clone(),
            event: Event {
                series: series.into(),
                ts_ms: ts,
                values,
                label: None,
            },
            mark: None,
        }
    }

    fn info(model: Option<&str>, names: &[&str]) -> Arc<SourceInfo> {
        Arc::new(SourceInfo {
            name: "s".into(),
            feature_names: names.iter().map(|s| s.to_string()).collect(),
            model: model.map(String::from),
            featurize_window: None,
        })
    }

    fn rules() -> RulesConfig {
        RulesConfig {
            cooldown_ms: 0,
            ..RulesConfig::default()
        }
    }

    #[test]
    fn an_outlier_raises_one_explained_alert_through_the_trained_model() {
        let sink = Arc::new(MemSink::default());
        let cfg = RulesConfig {
            threshold: Some(0.7),
            ..rules()
        };
        let mut p = Pipeline::new(
            PipelineConfig::default(),
            cfg,
            0,
            sink.clone(),
            Arc::new(StaticModels(vec![forest()])),
            BadInputReporter::detached(),
        );
        let i = info(None, &["x", "y"]);
        let mut batch: Vec<Envelope> = (0..50)
            .map(|k| env(&i, "m1", k, vec![0.5 + (k % 3) as f64 * 0.01, 0.5]))
            .collect();
        batch.push(env(&i, "m1", 100, vec![0.5, 40.0]));
        let out = p.process_batch(batch).unwrap();
        assert_eq!(out.scored, 51);
        assert_eq!(out.seqs, vec![1]);
        let a = sink.0.lock().unwrap()[0].clone();
        assert_eq!(
            (
                a.series.as_str(),
                a.ts_ms,
                a.model.as_str(),
                a.model_version
            ),
            ("m1", 100, "iforest", 3)
        );
        assert_eq!(a.explanation[0].feature, "y");
        assert!(a.score > a.threshold);
        assert!(a.severity >= Severity::Info);
        assert_eq!(p.counters().events.load(Ordering::Relaxed), 51);
    }

    #[test]
    fn a_windowed_lstm_model_scores_each_series_once_its_window_is_full() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/pretrained");
        let text = std::fs::read_to_string(dir.join("lstm_ae_nab.manifest.json")).unwrap();
        let manifest: sad_common::ModelManifest = serde_json::from_str(&text).unwrap();
        let payload = std::fs::read(dir.join("lstm_ae_nab.payload")).unwrap();
        let detector = sad_models::bundle::detector_from_parts(&manifest, &payload).unwrap();
        let window = manifest.window as usize;
        let model = ScoringModel {
            name: manifest.name.clone(),
            kind: manifest.kind,
            version: manifest.version,
            feature_names: Arc::new(manifest.feature_names.clone()),
            window,
            detector: Arc::from(detector),
        };
        let sink = Arc::new(MemSink::default());
        let cfg = RulesConfig {
            threshold: Some(0.0),
            ..rules()
        };
        let mut p = Pipeline::new(
            PipelineConfig::default(),
            cfg,
            0,
            sink.clone(),
            Arc::new(StaticModels(vec![model])),
            BadInputReporter::detached(),
        );
        let i = info(None, &["value"]);
        // two interleaved series of 60 readings each
        let batch: Vec<Envelope> = (0..120)
            .map(|k| {
                let series = if k % 2 == 0 { "a" } else { "b" };
                env(&i, series, k, vec![80.0 + (k as f64 * 0.3).sin()])
            })
            .collect();
        let out = p.process_batch(batch).unwrap();
        // each series is scored from its window-th reading on
        assert_eq!(out.scored, 2 * (60 - (window - 1)));
        let alerts = sink.0.lock().unwrap().clone();
        assert!(
            !alerts.is_empty(),
            "threshold 0 alerts on the first scored window"
        );
        for a in &alerts {
            assert_eq!(a.model_kind, ModelKind::Lstm);
            assert!((0.0..=1.0).contains(&a.score), "{a:?}");
            assert!(!a.explanation.is_empty(), "{a:?}");
        }
    }

    #[test]
    fn labelled_events_report_their_outcome_to_the_label_hook() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let p = Pipeline::new(
            PipelineConfig::default(),
            RulesConfig {
                threshold: Some(0.7),
                ..rules()
            },
            0,
            Arc::new(MemSink::default()),
            Arc::new(StaticModels(vec![forest()])),
            BadInputReporter::detached(),
        )
        .with_label_hook(Box::new(move |m, anomalous, flagged| {
            s2.lock().unwrap().push((m.to_string(), anomalous, flagged))
        }));
        let metrics = crate::metrics::AgentMetrics::new().unwrap();
        let mut p = p.with_metrics(metrics.clone());
        let i = info(None, &["x", "y"]);
        let mut batch: Vec<Envelope> = (0..20)
            .map(|k| {
                let mut e = env(&i, "m1", k, vec![0.5, 0.5]);
                e.event.label = Some(false);
                e
            })
            .collect();
        let mut spike = env(&i, "m1", 100, vec![0.5, 40.0]);
        spike.event.label = Some(true);
        batch.push(spike);
        batch.push(env(&i, "m1", 101, vec![0.5, 0.5])); // unlabelled: not reported
        p.process_batch(batch).unwrap();
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 21);
        assert!(seen.iter().all(|(m, _, _)| m == "iforest"));
        assert_eq!(seen.last().unwrap(), &("iforest".to_string(), true, true));
        assert!(seen[..20].iter().all(|(_, a, f)| !a && !f), "{seen:?}");
        // the same outcomes in the counters the uplink publishes, and the accuracy gauge
        let counts = p.counters().labelled_snapshot();
        assert_eq!(counts.len(), 1);
        let o = counts[0].1;
        assert_eq!(
            (o.anomalies, o.detected, o.normal, o.false_alarms),
            (1, 1, 20, 0)
        );
        let acc = metrics.model_accuracy.with_label_values(&["iforest"]).get();
        assert_eq!(acc, 1.0);
    }

    #[test]
    fn a_series_without_a_trained_model_is_watched_by_a_streaming_detector() {
        let sink = Arc::new(MemSink::default());
        let mut p = Pipeline::new(
            PipelineConfig::default(),
            rules(),
            0,
            sink.clone(),
            Arc::new(StaticModels(vec![])),
            BadInputReporter::detached(),
        );
        let i = info(None, &["t"]);
        let mut batch: Vec<Envelope> = (0..100)
            .map(|k| env(&i, "a", k, vec![20.0 + (k % 5) as f64 * 0.1]))
            .collect();
        batch.push(env(&i, "a", 200, vec![90.0]));
        p.process_batch(batch).unwrap();
        let alerts = sink.0.lock().unwrap();
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].model_kind, ModelKind::Ewma);
        assert_eq!(alerts[0].explanation[0].feature, "t");
    }

    #[test]
    fn bad_rows_are_counted_and_skipped_without_stopping_the_batch() {
        let rep = BadInputReporter::detached();
        let mut p = Pipeline::new(
            PipelineConfig::default(),
            rules(),
            0,
            Arc::new(MemSink::default()),
            Arc::new(StaticModels(vec![forest()])),
            rep.clone(),
        );
        let i = info(None, &["x", "y"]);
        let i3 = info(None, &["x", "y", "z"]);
        let batch = vec![
            env(&i, "a", 0, vec![0.1]),
            env(&i, "a", 1, vec![0.1, f64::NAN]),
            env(&i3, "a", 2, vec![0.1, 0.1, 0.1]),
            env(&i, "a", 3, vec![0.1, 0.2]),
        ];
        let out = p.process_batch(batch).unwrap();
        assert_eq!((out.events, out.scored), (4, 1));
        assert_eq!(rep.total(), 3);
    }

    #[test]
    fn a_failing_outbox_fails_the_batch_and_commits_nothing() {
        struct Rec(Mutex<Vec<(u64, bool)>>);
        impl Committer for Rec {
            fn commit(&self, p: u64, d: bool) {
                self.0.lock().unwrap().push((p, d));
            }
        }
        let rec = Arc::new(Rec(Mutex::new(vec![])));
        let mut p = Pipeline::new(
            PipelineConfig::default(),
            rules(),
            0,
            Arc::new(FailSink),
            Arc::new(StaticModels(vec![forest()])),
            BadInputReporter::detached(),
        );
        let i = info(None, &["x", "y"]);
        let mut e = env(&i, "a", 0, vec![0.5, 99.0]);
        e.mark = Some(Mark {
            committer: rec.clone(),
            position: 10,
        });
        assert!(matches!(
            p.process_batch(vec![e.clone()]),
            Err(PipelineError::Sink(_))
        ));
        assert!(rec.0.lock().unwrap().is_empty());

        let mut p = Pipeline::new(
            PipelineConfig::default(),
            rules(),
            0,
            Arc::new(MemSink::default()),
            Arc::new(StaticModels(vec![forest()])),
            BadInputReporter::detached(),
        );
        let mut e2 = env(&i, "a", 1, vec![0.1, 0.1]);
        e2.mark = Some(Mark {
            committer: rec.clone(),
            position: 20,
        });
        p.process_batch(vec![e, e2]).unwrap();
        assert_eq!(*rec.0.lock().unwrap(), vec![(20, true)]);
    }

    #[test]
    fn windowed_rows_are_named_by_step() {
        let names = vec!["a".to_string(), "b".to_string()];
        assert_eq!(feature_name(&names, 6, 5), "b[t-0]");
        assert_eq!(feature_name(&names, 6, 0), "a[t-2]");
        assert_eq!(feature_name(&names, 2, 1), "b");
    }
}
