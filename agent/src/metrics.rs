//! The agent's Prometheus metrics, registered in one registry served on `/metrics`.
//!
//! Names come from [`sad_common::metrics`]; labels are bounded (model type,
//! severity, reason, result), never a series key or an alert id.

use prometheus::{
    GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};
use sad_common::metrics as m;

/// Every metric the agent exports.
#[derive(Clone)]
pub struct AgentMetrics {
    /// The registry `/metrics` encodes.
    pub registry: Registry,
    /// Events scored, by model type.
    pub events_processed: IntCounterVec,
    /// Events flagged anomalous, by model type and severity.
    pub anomalies_detected: IntCounterVec,
    /// Share of labelled events classified correctly, by model.
    pub model_accuracy: GaugeVec,
    /// Scoring time per batch, by model type.
    pub processing_duration: HistogramVec,
    /// Latest calibrated score, by model type.
    pub confidence: GaugeVec,
    /// Inputs skipped, by reason (`parse`, `missing_field`, `non_finite`, `dimension`, `oversize`).
    pub bad_input: IntCounterVec,
    /// Alerts in the outbox not yet acknowledged.
    pub outbox_depth: IntGauge,
    /// Bytes the outbox holds.
    pub outbox_bytes: IntGauge,
    /// Alerts dropped because the outbox was full, by severity.
    pub outbox_dropped: IntCounterVec,
    /// Alerts published to the broker (resends included).
    pub alerts_sent: IntCounter,
    /// Alerts removed from the outbox after an ack.
    pub alerts_acked: IntCounter,
    /// Model updates received, by result (`accepted`, `rejected`).
    pub model_updates: IntCounterVec,
    /// Running model version, by model.
    pub model_version: IntGaugeVec,
    /// Time from an alert's creation to its ack, in seconds.
    pub ack_latency: Histogram,
}

impl AgentMetrics {
    /// Creates and registers every metric in a fresh registry.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let help = |name: &str| m::help(name).to_string();
        let counter_vec =
            |name: &str, labels: &[&str]| -> Result<IntCounterVec, prometheus::Error> {
                let c = IntCounterVec::new(Opts::new(name, help(name)), labels)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let events_processed = counter_vec(m::EVENTS_PROCESSED_TOTAL, &[m::LABEL_MODEL_TYPE])?;
        let anomalies_detected = counter_vec(
            m::ANOMALIES_DETECTED_TOTAL,
            &[m::LABEL_MODEL_TYPE, m::LABEL_SEVERITY],
        )?;
        let bad_input = counter_vec(m::BAD_INPUT_TOTAL, &[m::LABEL_REASON])?;
        let outbox_dropped = counter_vec(m::OUTBOX_DROPPED_TOTAL, &[m::LABEL_SEVERITY])?;
        let model_updates = counter_vec(m::MODEL_UPDATES_TOTAL, &[m::LABEL_RESULT])?;

        let model_accuracy = GaugeVec::new(
            Opts::new(m::MODEL_ACCURACY, help(m::MODEL_ACCURACY)),
            &[m::LABEL_MODEL],
        )?;
        registry.register(Box::new(model_accuracy.clone()))?;
        let confidence = GaugeVec::new(
            Opts::new(m::MODEL_CONFIDENCE_SCORE, help(m::MODEL_CONFIDENCE_SCORE)),
            &[m::LABEL_MODEL_TYPE],
        )?;
        registry.register(Box::new(confidence.clone()))?;
        let processing_duration = HistogramVec::new(
            HistogramOpts::new(
                m::PROCESSING_DURATION_SECONDS,
                help(m::PROCESSING_DURATION_SECONDS),
            )
            .buckets(vec![
                1e-6, 5e-6, 1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.05, 0.1, 0.5, 1.0,
            ]),
            &[m::LABEL_MODEL_TYPE],
        )?;
        registry.register(Box::new(processing_duration.clone()))?;
        let outbox_depth = IntGauge::new(m::OUTBOX_DEPTH, help(m::OUTBOX_DEPTH))?;
        registry.register(Box::new(outbox_depth.clone()))?;
        let outbox_bytes = IntGauge::new(m::OUTBOX_BYTES, help(m::OUTBOX_BYTES))?;
        registry.register(Box::new(outbox_bytes.clone()))?;
        let alerts_sent = IntCounter::new(m::ALERTS_SENT_TOTAL, help(m::ALERTS_SENT_TOTAL))?;
        registry.register(Box::new(alerts_sent.clone()))?;
        let alerts_acked = IntCounter::new(m::ALERTS_ACKED_TOTAL, help(m::ALERTS_ACKED_TOTAL))?;
        registry.register(Box::new(alerts_acked.clone()))?;
        let model_version = IntGaugeVec::new(
            Opts::new(m::MODEL_VERSION, help(m::MODEL_VERSION)),
            &[m::LABEL_MODEL],
        )?;
        registry.register(Box::new(model_version.clone()))?;
        let ack_latency = Histogram::with_opts(
            HistogramOpts::new(
                "anomaly_detector_alert_ack_latency_seconds",
                "Time from an alert being raised to the coordinator's ack covering it",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ]),
        )?;
        registry.register(Box::new(ack_latency.clone()))?;
        Ok(Self {
            registry,
            events_processed,
            anomalies_detected,
            model_accuracy,
            processing_duration,
            confidence,
            bad_input,
            outbox_depth,
            outbox_bytes,
            outbox_dropped,
            alerts_sent,
            alerts_acked,
            model_updates,
            model_version,
            ack_latency,
        })
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut buf = String::new();
        let enc = prometheus::TextEncoder::new();
        if enc.encode_utf8(&self.registry.gather(), &mut buf).is_err() {
            buf.clear();
        }
        buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_registers_and_the_seed_names_are_exported() {
        let m = AgentMetrics::new().unwrap();
        m.events_processed
            .with_label_values(&["isolation_forest"])
            .inc();
        m.anomalies_detected
            .with_label_values(&["isolation_forest", "critical"])
            .inc();
        m.processing_duration
            .with_label_values(&["isolation_forest"])
            .observe(0.001);
        m.confidence
            .with_label_values(&["isolation_forest"])
            .set(0.7);
        m.model_accuracy.with_label_values(&["default"]).set(0.9);
        let text = m.encode();
        for name in [
            "anomaly_detector_events_processed_total",
            "anomaly_detector_anomalies_detected_total",
            "anomaly_detector_model_accuracy",
            "anomaly_detector_processing_duration_seconds",
            "anomaly_detector_model_confidence_score",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
    }
}
