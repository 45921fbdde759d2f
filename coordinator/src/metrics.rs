//! The coordinator's Prometheus metrics, served on `PROMETHEUS_PORT` (9091).
//!
//! Names come from [`sad_common::metrics`]; the seed's five names are kept
//! exactly. Labels are bounded: model, model type, severity, reason, result,
//! and agent (bounded by the fleet size), never a series key or alert id.

use prometheus::{
    Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry,
};
use sad_common::metrics as m;

/// Every metric the coordinator exports.
#[derive(Clone)]
pub struct CoordinatorMetrics {
    /// The registry `/metrics` encodes.
    pub registry: Registry,
    /// Events scored (REST detect and central detection), by model type.
    pub events_processed: IntCounterVec,
    /// Anomalies found or received, by model type and severity.
    pub anomalies_detected: IntCounterVec,
    /// Precision-based accuracy per model, from labels and feedback.
    pub model_accuracy: GaugeVec,
    /// Scoring time per request or batch, by model type.
    pub processing_duration: HistogramVec,
    /// Latest calibrated score, by model type.
    pub confidence: GaugeVec,
    /// Precision per model from labelled alerts and operator feedback.
    pub precision: GaugeVec,
    /// Recall per model from labelled input.
    pub recall: GaugeVec,
    /// Alerts received from agents (duplicates included).
    pub alerts_received: IntCounter,
    /// Duplicate alerts dropped by id.
    pub alerts_duplicate: IntCounter,
    /// Frames that failed to decode or validate, by reason.
    pub frames_rejected: IntCounterVec,
    /// Agents whose last status says online.
    pub agents_online: IntGauge,
    /// Outbox depth per agent, from heartbeats.
    pub agent_outbox_depth: IntGaugeVec,
    /// Running model version per agent and model, from heartbeats.
    pub agent_model_version: IntGaugeVec,
    /// Kafka delivery failures.
    pub kafka_delivery_errors: IntCounter,
    /// Seconds from an alert being raised on its agent to its ack.
    pub intake_lag: HistogramVec,
    /// Alerts held in the store.
    pub stored_alerts: Gauge,
    /// Version active on the fleet topic, per model.
    pub active_model_version: IntGaugeVec,
    /// Drift per model and signal (`score`, `feature`).
    pub model_drift: GaugeVec,
    /// Rollout actions by action.
    pub rollout_actions: IntCounterVec,
    /// Retraining outcomes by result.
    pub retrains: IntCounterVec,
}

impl CoordinatorMetrics {
    /// Creates and registers every metric in a fresh registry.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let help = |name: &str| m::help(name).to_string();
        macro_rules! reg {
            ($e:expr) => {{
                let c = $e;
                registry.register(Box::new(c.clone()))?;
                c
            }};
        }
        let ms = m::LABEL_MODEL;
        let mt = m::LABEL_MODEL_TYPE;
        Ok(Self {
            events_processed: reg!(IntCounterVec::new(
                Opts::new(m::EVENTS_PROCESSED_TOTAL, help(m::EVENTS_PROCESSED_TOTAL)),
                &[mt]
            )?),
            anomalies_detected: reg!(IntCounterVec::new(
                Opts::new(
                    m::ANOMALIES_DETECTED_TOTAL,
                    help(m::ANOMALIES_DETECTED_TOTAL)
                ),
                &[mt, m::LABEL_SEVERITY]
            )?),
            model_accuracy: reg!(GaugeVec::new(
                Opts::new(m::MODEL_ACCURACY, help(m::MODEL_ACCURACY)),
                &[ms]
            )?),
            processing_duration: reg!(HistogramVec::new(
                HistogramOpts::new(
                    m::PROCESSING_DURATION_SECONDS,
                    help(m::PROCESSING_DURATION_SECONDS)
                )
                .buckets(vec![
                    1e-6, 1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.05, 0.1, 0.5, 1.0
                ]),
                &[mt]
            )?),
            confidence: reg!(GaugeVec::new(
                Opts::new(m::MODEL_CONFIDENCE_SCORE, help(m::MODEL_CONFIDENCE_SCORE)),
                &[mt]
            )?),
            precision: reg!(GaugeVec::new(
                Opts::new(m::MODEL_PRECISION, help(m::MODEL_PRECISION)),
                &[ms]
            )?),
            recall: reg!(GaugeVec::new(
                Opts::new(m::MODEL_RECALL, help(m::MODEL_RECALL)),
                &[ms]
            )?),
            alerts_received: reg!(IntCounter::new(
                m::ALERTS_RECEIVED_TOTAL,
                help(m::ALERTS_RECEIVED_TOTAL)
            )?),
            alerts_duplicate: reg!(IntCounter::new(
                m::ALERTS_DUPLICATE_TOTAL,
                help(m::ALERTS_DUPLICATE_TOTAL)
            )?),
            frames_rejected: reg!(IntCounterVec::new(
                Opts::new(m::FRAMES_REJECTED_TOTAL, help(m::FRAMES_REJECTED_TOTAL)),
                &[m::LABEL_REASON]
            )?),
            agents_online: reg!(IntGauge::new(m::AGENTS_ONLINE, help(m::AGENTS_ONLINE))?),
            agent_outbox_depth: reg!(IntGaugeVec::new(
                Opts::new(
                    "anomaly_detector_agent_outbox_depth",
                    "Outbox depth per agent, from heartbeats"
                ),
                &[m::LABEL_AGENT]
            )?),
            agent_model_version: reg!(IntGaugeVec::new(
                Opts::new(
                    "anomaly_detector_agent_model_version",
                    "Model version each agent runs, from heartbeats"
                ),
                &[m::LABEL_AGENT, ms]
            )?),
            kafka_delivery_errors: reg!(IntCounter::new(
                m::KAFKA_DELIVERY_ERRORS_TOTAL,
                help(m::KAFKA_DELIVERY_ERRORS_TOTAL)
            )?),
            intake_lag: reg!(HistogramVec::new(
                HistogramOpts::new(m::INTAKE_LAG_SECONDS, help(m::INTAKE_LAG_SECONDS)).buckets(
                    vec![
                        0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0
                    ]
                ),
                &[]
            )?),
            stored_alerts: reg!(Gauge::new(
                "anomaly_detector_stored_alerts",
                "Alerts held in the coordinator's store"
            )?),
            active_model_version: reg!(IntGaugeVec::new(
                Opts::new(m::MODEL_VERSION, help(m::MODEL_VERSION)),
                &[ms]
            )?),
            model_drift: reg!(GaugeVec::new(
                Opts::new(m::MODEL_DRIFT, help(m::MODEL_DRIFT)),
                &[ms, "signal"]
            )?),
            rollout_actions: reg!(IntCounterVec::new(
                Opts::new(m::ROLLOUT_ACTIONS_TOTAL, help(m::ROLLOUT_ACTIONS_TOTAL)),
                &["action"]
            )?),
            retrains: reg!(IntCounterVec::new(
                Opts::new(m::RETRAINS_TOTAL, help(m::RETRAINS_TOTAL)),
                &[m::LABEL_RESULT]
            )?),
            registry,
        })
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut buf = String::new();
        if prometheus::TextEncoder::new()
            .encode_utf8(&self.registry.gather(), &mut buf)
            .is_err()
        {
            buf.clear();
        }
        buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_metric_names_are_exported() {
        let m = CoordinatorMetrics::new().unwrap();
        m.events_processed
            .with_label_values(&["isolation_forest"])
            .inc();
        m.anomalies_detected
            .with_label_values(&["isolation_forest", "warning"])
            .inc();
        m.model_accuracy.with_label_values(&["default"]).set(0.5);
        m.processing_duration
            .with_label_values(&["isolation_forest"])
            .observe(0.01);
        m.confidence
            .with_label_values(&["isolation_forest"])
            .set(0.9);
        let text = m.encode();
        for name in [
            "anomaly_detector_events_processed_total",
            "anomaly_detector_anomalies_detected_total",
            "anomaly_detector_model_accuracy",
            "anomaly_detector_processing_duration_seconds",
            "anomaly_detector_model_confidence_score",
        ] {
            assert!(text.contains(name), "{name} missing");
        }
    }
}
