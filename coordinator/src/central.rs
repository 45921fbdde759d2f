//! Central detection: events from `KAFKA_TOPIC_INPUT`, scored with the
//! agent's own pipeline ([`sad_agent::pipeline::Pipeline`]: featurisation,
//! trained or streaming detectors, alert rules, explanations), alerts into
//! the store and the output topic.
//!
//! # Delivery (at-least-once)
//!
//! The consumer is in group `KAFKA_GROUP_ID` with auto-commit off. For each
//! batch of consumed messages: score, [`AlertStore::insert_batch`] (fsynced),
//! [`AlertSink::deliver`] (every delivery report), and only then commit the
//! offsets after the batch. A crash before the commit re-reads the batch;
//! the alert ids are derived from the input position
//! (`agent_id = central.{topic}.p{partition}`, `seq = offset * 16 + i + 1`
//! for the `i`-th alert of the event, at most 16 per event), so a re-read
//! event that raises the same alert dedupes by id in the store and
//! downstream. Several coordinators in one group split the partitions.
//!
//! # Input records
//!
//! JSON objects: `{"series": "...", "ts_ms": 1700000000000, "values": [..],
//! "label": optional bool}` or `{"series": "...", "timestamp": ..,
//! "value": 1.5}` (`timestamp` in ms, or in seconds when below 10^11; the
//! Kafka key is the series when `series` is absent; the record time or now
//! when no time is given). A record that does not parse is counted in
//! `frames_rejected_total{reason="central_input"}` and skipped (its offset
//! is committed).
//!
//! Nothing is persisted here except the committed offsets in Kafka.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError as RdKafkaError;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use sad_agent::pipeline::{
    AlertSink as PipelineSink, ModelProvider, Pipeline, PipelineConfig, PipelineError,
    StaticModels, StreamingKind,
};
use sad_agent::rules::RulesConfig;
use sad_agent::sources::{BadInputReporter, Envelope, SourceInfo};
use sad_common::wire::limits;
use sad_common::{Alert, Event, ModelKind};
use serde_json::Value;
use thiserror::Error;
use tokio_util::sync::CancellationToken;

use crate::kafka::{AlertSink, KafkaConfig};
use crate::metrics::CoordinatorMetrics;
use crate::store::AlertStore;

/// Most alerts one input event may raise (the seq stride per offset).
pub const ALERTS_PER_EVENT: u64 = 16;
/// Most messages scored, stored and committed together.
pub const BATCH_MAX: usize = 500;

/// Errors of central detection.
#[derive(Debug, Error)]
pub enum CentralError {
    /// The consumer could not be created or subscribed.
    #[error("central detection kafka: {0}")]
    Kafka(#[from] RdKafkaError),
    /// The pipeline configuration is invalid.
    #[error("central detection pipeline: {0}")]
    Pipeline(#[from] PipelineError),
}

/// What central detection scores with: the agent's pipeline settings, rules and models.
pub struct CentralPipeline {
    /// Pipeline settings (streaming detector for series without a trained model).
    pub pipeline: PipelineConfig,
    /// Alert rules.
    pub rules: RulesConfig,
    /// Trained models (may be empty: every series gets a streaming detector).
    pub models: Arc<dyn ModelProvider>,
    /// Model that scores the events; `None` = the only model, else a streaming detector.
    pub model: Option<String>,
    /// Where labelled input events count toward recall and precision.
    pub quality: Option<Arc<crate::quality::Quality>>,
}

impl CentralPipeline {
    /// No trained model: every series is watched by the default streaming detector (EWMA z-score).
    pub fn streaming() -> Self {
        Self {
            pipeline: PipelineConfig::default(),
            rules: RulesConfig::default(),
            models: Arc::new(StaticModels(Vec::new())),
            model: None,
            quality: None,
        }
    }

    /// Counts labelled input events in `quality`.
    pub fn with_quality(mut self, quality: Arc<crate::quality::Quality>) -> Self {
        self.quality = Some(quality);
        self
    }
}

/// Parses one input record; `key` is the Kafka key, `record_ts_ms` the record time.
pub fn parse_event(
    payload: &[u8],
    key: Option<&[u8]>,
    record_ts_ms: Option<i64>,
) -> Result<Event, String> {
    if payload.len() > limits::MAX_EVENT_FRAME_BYTES {
        return Err(format!("record of {} bytes is too large", payload.len()));
    }
    let v: Value = serde_json::from_slice(payload).map_err(|e| format!("not json: {e}"))?;
    let obj = v.as_object().ok_or("not a json object")?;
    let series = match obj.get("series") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(_) => return Err("series is not a string".into()),
        None => key
            .and_then(|k| std::str::from_utf8(k).ok())
            .map(str::to_string)
            .ok_or("no series and no key")?,
    };
    let ts_ms = match obj.get("ts_ms").or_else(|| obj.get("timestamp")) {
        Some(t) => {
            let t = t.as_f64().ok_or("timestamp is not a number")?;
            if !t.is_finite() {
                return Err("timestamp is not finite".into());
            }
            (if t.abs() < 1e11 { t * 1000.0 } else { t }) as i64
        }
        None => record_ts_ms.unwrap_or_else(sad_agent::heartbeat::now_ms),
    };
    let values = match (obj.get("values"), obj.get("value")) {
        (Some(Value::Array(a)), _) => a
            .iter()
            .map(|x| x.as_f64().ok_or("values holds a non-number"))
            .collect::<Result<Vec<f64>, _>>()?,
        (None, Some(x)) => vec![x.as_f64().ok_or("value is not a number")?],
        _ => return Err("no values or value".into()),
    };
    let label = match obj.get("label") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(Value::Number(n)) => Some(n.as_f64() != Some(0.0)),
        Some(_) => return Err("label is not a bool".into()),
    };
    let e = Event {
        series,
        ts_ms,
        values,
        label,
    };
    e.validate().map_err(|e| e.to_string())?;
    if e.values.is_empty() {
        return Err("no values".into());
    }
    Ok(e)
}

/// The pipeline's sink: names alerts after the input position being scored.
#[derive(Default)]
struct PositionSink {
    at: Mutex<(String, u64)>,
    out: Mutex<Vec<Alert>>,
}

impl PipelineSink for PositionSink {
    fn append(&self, mut alerts: Vec<Alert>) -> Result<Vec<u64>, String> {
        let (agent, base) = self.at.lock().map_err(|e| e.to_string())?.clone();
        alerts.truncate(ALERTS_PER_EVENT as usize);
        let mut seqs = Vec::with_capacity(alerts.len());
        for (i, a) in alerts.iter_mut().enumerate() {
            a.agent_id = agent.clone();
            a.seq = base + i as u64 + 1;
            seqs.push(a.seq);
        }
        self.out.lock().map_err(|e| e.to_string())?.extend(alerts);
        Ok(seqs)
    }
}

fn central_agent_id(topic: &str, partition: i32) -> String {
    let id = format!("central.{topic}.p{partition}");
    if id.len() <= limits::MAX_ID_BYTES {
        id
    } else {
        format!("central.p{partition}")
    }
}

struct Scorer {
    pipeline: Pipeline,
    sink: Arc<PositionSink>,
    sources: HashMap<usize, Arc<SourceInfo>>,
    model: Option<String>,
}

impl Scorer {
    fn source(&mut self, width: usize) -> Arc<SourceInfo> {
        let model = self.model.clone();
        self.sources
            .entry(width)
            .or_insert_with(|| {
                Arc::new(SourceInfo {
                    name: "kafka".into(),
                    feature_names: if width == 1 {
                        vec!["value".into()]
                    } else {
                        (0..width).map(|i| format!("v{i}")).collect()
                    },
                    model,
                    featurize_window: None,
                })
            })
            .clone()
    }

    /// Scores the events (with their agent id and seq base) one by one; returns the alerts.
    fn score(&mut self, events: Vec<(String, u64, Event)>) -> Vec<Alert> {
        for (agent, base, event) in events {
            if let Ok(mut at) = self.sink.at.lock() {
                *at = (agent, base);
            }
            let source = self.source(event.values.len());
            if let Err(e) = self.pipeline.process_batch(vec![Envelope {
                source,
                event,
                mark: None,
            }]) {
                tracing::warn!(error = %e, "central detection could not score an event");
            }
        }
        self.sink
            .out
            .lock()
            .map(|mut o| std::mem::take(&mut *o))
            .unwrap_or_default()
    }
}

/// Waits out a retry delay; `false` when shutdown came first.
async fn backoff(delay: &mut Duration, shutdown: &CancellationToken) -> bool {
    let d = *delay;
    *delay = (*delay * 2).min(Duration::from_secs(5));
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

/// Consumes `cfg.input_topic` in group `cfg.group_id` until `shutdown`; see the module docs.
pub async fn run_central_detection(
    cfg: &KafkaConfig,
    pipeline: CentralPipeline,
    store: AlertStore,
    sink: Arc<AlertSink>,
    metrics: CoordinatorMetrics,
    shutdown: CancellationToken,
) -> Result<(), CentralError> {
    pipeline.pipeline.validate()?;
    let consumer: StreamConsumer = cfg
        .client_config()
        .set("group.id", &cfg.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .create()?;
    consumer.subscribe(&[cfg.input_topic.as_str()])?;
    let position_sink = Arc::new(PositionSink::default());
    let model_type = pipeline
        .models
        .snapshot()
        .first()
        .map_or(
            match pipeline.pipeline.streaming.detector {
                StreamingKind::Ewma => ModelKind::Ewma,
                StreamingKind::HalfSpaceTrees => ModelKind::HalfSpaceTrees,
            },
            |m| m.kind,
        )
        .as_str();
    let mut core = Pipeline::new(
        pipeline.pipeline,
        pipeline.rules,
        0,
        position_sink.clone(),
        pipeline.models,
        BadInputReporter::detached(),
    );
    if let Some(q) = pipeline.quality {
        core = core.with_label_hook(Box::new(move |model, anomalous, flagged| {
            q.record_labelled_event(model, anomalous, flagged)
        }));
    }
    let mut scorer = Some(Scorer {
        pipeline: core,
        sink: position_sink,
        sources: HashMap::new(),
        model: pipeline.model,
    });

    loop {
        // Gather a batch: wait for one message, then take what is ready.
        let mut batch: Vec<OwnedMessage> = Vec::new();
        let first = tokio::select! {
            _ = shutdown.cancelled() => break,
            m = consumer.recv() => m,
        };
        match first {
            Ok(m) => batch.push(m.detach()),
            Err(e) => {
                tracing::warn!(error = %e, "central detection consumer error");
                let mut d = Duration::from_millis(500);
                if !backoff(&mut d, &shutdown).await {
                    break;
                }
                continue;
            }
        }
        while batch.len() < BATCH_MAX {
            match tokio::time::timeout(Duration::from_millis(10), consumer.recv()).await {
                Ok(Ok(m)) => batch.push(m.detach()),
                _ => break,
            }
        }

        // Parse, then score on the blocking pool.
        let mut events = Vec::with_capacity(batch.len());
        let mut next: BTreeMap<(String, i32), i64> = BTreeMap::new();
        for m in &batch {
            let slot = next
                .entry((m.topic().to_string(), m.partition()))
                .or_default();
            *slot = (*slot).max(m.offset() + 1);
            match parse_event(
                m.payload().unwrap_or_default(),
                m.key(),
                m.timestamp().to_millis(),
            ) {
                Ok(e) => events.push((
                    central_agent_id(m.topic(), m.partition()),
                    (m.offset().max(0) as u64).saturating_mul(ALERTS_PER_EVENT),
                    e,
                )),
                Err(e) => {
                    metrics
                        .frames_rejected
                        .with_label_values(&["central_input"])
                        .inc();
                    tracing::warn!(error = %e, offset = m.offset(), "skipping input record");
                }
            }
        }
        let n_events = events.len();
        let Some(mut s) = scorer.take() else { break };
        let (s, alerts) = match tokio::task::spawn_blocking(move || {
            let alerts = s.score(events);
            (s, alerts)
        })
        .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "central detection scorer failed");
                break;
            }
        };
        scorer = Some(s);
        metrics
            .events_processed
            .with_label_values(&[model_type])
            .inc_by(n_events as u64);

        // Store, deliver, then commit.
        let alerts = Arc::new(alerts);
        if !alerts.is_empty() {
            let mut d = Duration::from_millis(100);
            let outcome = loop {
                let (st, a) = (store.clone(), alerts.clone());
                match tokio::task::spawn_blocking(move || st.insert_batch(&a)).await {
                    Ok(Ok(o)) => break Some(o),
                    Ok(Err(e)) => tracing::error!(error = %e, "cannot store central alerts"),
                    Err(e) => tracing::error!(error = %e, "store worker failed"),
                }
                if !backoff(&mut d, &shutdown).await {
                    break None;
                }
            };
            let Some(outcome) = outcome else { break };
            metrics.stored_alerts.set(store.len() as f64);
            let mut d = Duration::from_millis(100);
            let mut delivered = false;
            while !delivered {
                match sink.deliver(&alerts).await {
                    Ok(()) => delivered = true,
                    Err(e) => {
                        tracing::warn!(error = %e, "central alerts not delivered, retrying");
                        if !backoff(&mut d, &shutdown).await {
                            break;
                        }
                    }
                }
            }
            if !delivered {
                break;
            }
            if outcome.new > 0 {
                for a in alerts.iter() {
                    metrics
                        .anomalies_detected
                        .with_label_values(&[a.model_kind.as_str(), a.severity.as_str()])
                        .inc();
                }
            }
        }
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), offset) in &next {
            if let Err(e) = tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset)) {
                tracing::warn!(error = %e, "cannot build the offset commit");
            }
        }
        if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
            // A revoked partition: its new owner re-reads from the last commit.
            tracing::warn!(error = %e, "cannot commit central detection offsets");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_input_shapes_parse_into_events() {
        let e = parse_event(
            br#"{"series":"m1","ts_ms":1700000000000,"values":[1,2.5],"label":true}"#,
            None,
            None,
        )
        .unwrap();
        assert_eq!(e.series, "m1");
        assert_eq!(e.ts_ms, 1_700_000_000_000);
        assert_eq!(e.values, vec![1.0, 2.5]);
        assert_eq!(e.label, Some(true));
        let e = parse_event(br#"{"timestamp":1700000000,"value":3}"#, Some(b"k"), None).unwrap();
        assert_eq!(e.series, "k");
        assert_eq!(e.ts_ms, 1_700_000_000_000);
        assert_eq!(e.values, vec![3.0]);
        let e = parse_event(br#"{"series":"s","value":3}"#, None, Some(42)).unwrap();
        assert_eq!(e.ts_ms, 42);
    }

    #[test]
    fn malformed_input_records_are_errors_not_panics() {
        for bad in [
            &b"not json"[..],
            b"[1,2]",
            br#"{"series":"s"}"#,
            br#"{"series":"s","values":["x"]}"#,
            br#"{"series":"s","values":[]}"#,
            br#"{"series":"","value":1}"#,
            br#"{"series":"s","value":1,"timestamp":"soon"}"#,
            br#"{"value":1}"#,
        ] {
            assert!(
                parse_event(bad, None, None).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn a_spike_after_a_steady_series_raises_an_alert_named_after_its_offset() {
        let p = CentralPipeline::streaming();
        let sink = Arc::new(PositionSink::default());
        let mut s = Scorer {
            pipeline: Pipeline::new(
                p.pipeline,
                p.rules,
                0,
                sink.clone(),
                p.models,
                BadInputReporter::detached(),
            ),
            sink,
            sources: HashMap::new(),
            model: None,
        };
        let events: Vec<_> = (0..200u64)
            .map(|i| {
                let v = if i == 150 {
                    1000.0
                } else {
                    10.0 + (i % 5) as f64 * 0.1
                };
                (
                    central_agent_id("in", 0),
                    i * ALERTS_PER_EVENT,
                    Event {
                        series: "m1".into(),
                        ts_ms: 1_000 * i as i64,
                        values: vec![v],
                        label: None,
                    },
                )
            })
            .collect();
        let alerts = s.score(events);
        println!(
            "{} alerts: {:?}",
            alerts.len(),
            alerts.iter().map(|a| a.alert_id()).collect::<Vec<_>>()
        );
        assert!(!alerts.is_empty());
        assert_eq!(
            alerts[0].alert_id(),
            format!("central.in.p0:{}", 150 * ALERTS_PER_EVENT + 1)
        );
        assert_eq!(alerts[0].values, vec![1000.0]);
    }
}
