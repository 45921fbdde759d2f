//! Prometheus metric and label names shared by agent, coordinator and dashboards.
//!
//! The five seed names are kept exactly; the rest follow the same prefix and
//! Prometheus conventions (`_total` counters, base units). Labels are bounded
//! sets ([`LABEL_MODEL`], [`LABEL_MODEL_TYPE`], [`LABEL_SEVERITY`],
//! [`LABEL_AGENT`], [`LABEL_REASON`], [`LABEL_RESULT`]); never a series key or an alert id.

/// Prefix of every metric.
pub const PREFIX: &str = "anomaly_detector_";

// ---- seed names (kept exactly)

/// Counter: events scored (labels: `model`, `model_type`).
pub const EVENTS_PROCESSED_TOTAL: &str = "anomaly_detector_events_processed_total";
/// Counter: anomalies detected (labels: `model`, `model_type`, `severity`).
pub const ANOMALIES_DETECTED_TOTAL: &str = "anomaly_detector_anomalies_detected_total";
/// Gauge: accuracy of the model on labelled data, 0..1 (label: `model`).
pub const MODEL_ACCURACY: &str = "anomaly_detector_model_accuracy";
/// Histogram: seconds to score one event or batch (label: `model_type`).
pub const PROCESSING_DURATION_SECONDS: &str = "anomaly_detector_processing_duration_seconds";
/// Gauge: calibrated score of the most recent event, 0..1 (label: `model`).
pub const MODEL_CONFIDENCE_SCORE: &str = "anomaly_detector_model_confidence_score";

// ---- agent

/// Counter: events rejected as bad input (label: `reason`, e.g. `non_finite`, `parse`, `dimension`).
pub const BAD_INPUT_TOTAL: &str = "anomaly_detector_bad_input_total";
/// Gauge: unacknowledged alerts in the agent's outbox.
pub const OUTBOX_DEPTH: &str = "anomaly_detector_outbox_depth";
/// Gauge: bytes held by the agent's outbox.
pub const OUTBOX_BYTES: &str = "anomaly_detector_outbox_bytes";
/// Counter: alerts dropped because the outbox was full.
pub const OUTBOX_DROPPED_TOTAL: &str = "anomaly_detector_outbox_dropped_total";
/// Counter: alerts published to the broker, re-sends included.
pub const ALERTS_SENT_TOTAL: &str = "anomaly_detector_alerts_sent_total";
/// Counter: alerts acknowledged by the coordinator and removed from the outbox.
pub const ALERTS_ACKED_TOTAL: &str = "anomaly_detector_alerts_acked_total";
/// Counter: model bundles received (label: `result`: `accepted` or `rejected`).
pub const MODEL_UPDATES_TOTAL: &str = "anomaly_detector_model_updates_total";

// ---- coordinator

/// Counter: alerts received by the coordinator's intake (label: `agent`).
pub const ALERTS_RECEIVED_TOTAL: &str = "anomaly_detector_alerts_received_total";
/// Counter: alerts received again and dropped by `alert_id` dedupe.
pub const ALERTS_DUPLICATE_TOTAL: &str = "anomaly_detector_alerts_duplicate_total";
/// Counter: frames that failed to decode or validate (label: `reason`).
pub const FRAMES_REJECTED_TOTAL: &str = "anomaly_detector_frames_rejected_total";
/// Gauge: agents whose last heartbeat says online.
pub const AGENTS_ONLINE: &str = "anomaly_detector_agents_online";
/// Counter: Kafka delivery reports that failed.
pub const KAFKA_DELIVERY_ERRORS_TOTAL: &str = "anomaly_detector_kafka_delivery_errors_total";
/// Histogram: seconds from an alert's event time to its durable storage on the coordinator.
pub const INTAKE_LAG_SECONDS: &str = "anomaly_detector_intake_lag_seconds";
/// Gauge: precision of the model on labelled data, 0..1 (label: `model`).
pub const MODEL_PRECISION: &str = "anomaly_detector_model_precision";
/// Gauge: recall of the model on labelled data, 0..1 (label: `model`).
pub const MODEL_RECALL: &str = "anomaly_detector_model_recall";
/// Gauge: version of the model in use (labels: `model`, and `agent` on the coordinator).
pub const MODEL_VERSION: &str = "anomaly_detector_model_version";
/// Counter: retraining runs (label: `result`: `published`, `saved`, `rejected` or `failed`).
pub const RETRAINS_TOTAL: &str = "anomaly_detector_retrains_total";
/// Gauge: drift of a deployed model against its reference (labels: `model`, `signal`: `score` or `feature`).
pub const MODEL_DRIFT: &str = "anomaly_detector_model_drift";
/// Counter: rollout actions (label: `action`: `published`, `canary`, `promoted`, `rolled_back`).
pub const ROLLOUT_ACTIONS_TOTAL: &str = "anomaly_detector_rollout_actions_total";

// ---- labels

/// Label: model name.
pub const LABEL_MODEL: &str = "model";
/// Label: model kind (`MODEL_TYPE` string).
pub const LABEL_MODEL_TYPE: &str = "model_type";
/// Label: alert severity (`info`, `warning`, `critical`).
pub const LABEL_SEVERITY: &str = "severity";
/// Label: agent id (bounded by fleet size).
pub const LABEL_AGENT: &str = "agent";
/// Label: reason of a rejection (a small fixed set per metric).
pub const LABEL_REASON: &str = "reason";
/// Label: outcome of an operation (a small fixed set per metric).
pub const LABEL_RESULT: &str = "result";

/// Every metric name with its help text, for registration and for tests.
pub const ALL: &[(&str, &str)] = &[
    (EVENTS_PROCESSED_TOTAL, "Events scored"),
    (ANOMALIES_DETECTED_TOTAL, "Anomalies detected"),
    (MODEL_ACCURACY, "Model accuracy on labelled data"),
    (PROCESSING_DURATION_SECONDS, "Seconds to score an event"),
    (
        MODEL_CONFIDENCE_SCORE,
        "Calibrated score of the latest event",
    ),
    (BAD_INPUT_TOTAL, "Events rejected as bad input"),
    (OUTBOX_DEPTH, "Unacknowledged alerts in the outbox"),
    (OUTBOX_BYTES, "Bytes held by the outbox"),
    (
        OUTBOX_DROPPED_TOTAL,
        "Alerts dropped because the outbox was full",
    ),
    (ALERTS_SENT_TOTAL, "Alerts published, re-sends included"),
    (ALERTS_ACKED_TOTAL, "Alerts acknowledged by the coordinator"),
    (MODEL_UPDATES_TOTAL, "Model bundles received"),
    (ALERTS_RECEIVED_TOTAL, "Alerts received by the intake"),
    (
        ALERTS_DUPLICATE_TOTAL,
        "Duplicate alerts dropped by alert_id",
    ),
    (
        FRAMES_REJECTED_TOTAL,
        "Frames that failed to decode or validate",
    ),
    (AGENTS_ONLINE, "Agents currently online"),
    (KAFKA_DELIVERY_ERRORS_TOTAL, "Failed Kafka delivery reports"),
    (
        INTAKE_LAG_SECONDS,
        "Seconds from event time to durable storage",
    ),
    (MODEL_PRECISION, "Model precision on labelled data"),
    (MODEL_RECALL, "Model recall on labelled data"),
    (MODEL_VERSION, "Version of the model in use"),
    (RETRAINS_TOTAL, "Retraining runs"),
    (
        MODEL_DRIFT,
        "Drift of a deployed model against its reference",
    ),
    (ROLLOUT_ACTIONS_TOTAL, "Model rollout actions"),
];

/// The help text of a metric in [`ALL`], or its name when it is not listed.
pub fn help(name: &str) -> &str {
    ALL.iter()
        .find(|(n, _)| *n == name)
        .map_or(name, |(_, h)| *h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_text_comes_from_the_table_and_falls_back_to_the_name() {
        assert_eq!(help(EVENTS_PROCESSED_TOTAL), ALL[0].1);
        assert_eq!(
            help("anomaly_detector_unlisted"),
            "anomaly_detector_unlisted"
        );
    }
    use std::collections::HashSet;

    #[test]
    fn metric_names_share_the_prefix_and_are_unique_and_well_formed() {
        let mut seen = HashSet::new();
        for (name, help) in ALL {
            assert!(name.starts_with(PREFIX), "{name}");
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "{name}"
            );
            assert!(seen.insert(*name), "duplicate {name}");
            assert!(!help.is_empty());
        }
    }

    #[test]
    fn the_seed_names_are_kept_exactly() {
        let names: HashSet<&str> = ALL.iter().map(|(n, _)| *n).collect();
        for seed in [
            "anomaly_detector_events_processed_total",
            "anomaly_detector_anomalies_detected_total",
            "anomaly_detector_model_accuracy",
            "anomaly_detector_processing_duration_seconds",
            "anomaly_detector_model_confidence_score",
        ] {
            assert!(names.contains(seed), "{seed}");
        }
    }
}
