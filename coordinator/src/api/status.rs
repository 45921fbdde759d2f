//! `GET /api/v1/metrics` (a JSON summary) and `GET /api/v1/health`.

use axum::Json;
use axum::extract::State;
use prometheus::proto::MetricType;
use serde_json::{Map, Value, json};

use super::AppState;

/// Handler of `GET /api/v1/metrics`: totals, per-model events, anomalies,
/// precision and recall, and a flat copy of the Prometheus samples (as the seed).
pub async fn metrics_json(State(state): State<AppState>) -> Json<Value> {
    let m = &state.metrics;
    let mut flat = Map::new();
    let (mut events, mut anomalies) = (0.0, 0.0);
    for family in m.registry.gather() {
        let name = family.name().to_string();
        for metric in family.get_metric() {
            let labels: Vec<String> = metric
                .get_label()
                .iter()
                .map(|l| format!("{}=\"{}\"", l.name(), l.value()))
                .collect();
            let key = if labels.is_empty() {
                name.clone()
            } else {
                format!("{name}{{{}}}", labels.join(","))
            };
            let is_histogram = family.get_field_type() == MetricType::HISTOGRAM;
            let value = match family.get_field_type() {
                MetricType::COUNTER => metric.get_counter().get_value(),
                MetricType::GAUGE => metric.get_gauge().get_value(),
                MetricType::HISTOGRAM => {
                    let h = metric.get_histogram();
                    flat.insert(format!("{key}_sum"), json!(h.get_sample_sum()));
                    h.get_sample_count() as f64
                }
                _ => continue,
            };
            if name == sad_common::metrics::EVENTS_PROCESSED_TOTAL {
                events += value;
            } else if name == sad_common::metrics::ANOMALIES_DETECTED_TOTAL {
                anomalies += value;
            }
            let key = if is_histogram {
                format!("{key}_count")
            } else {
                key
            };
            flat.insert(key, json!(value));
        }
    }
    let quality = state.quality.snapshot();
    let mut models = Vec::new();
    for entry in state.registry.list() {
        let (ev, an) = entry.usage.get();
        let q = quality.iter().find(|q| q.model == entry.manifest.name);
        models.push(json!({
            "model": entry.manifest.name,
            "model_type": entry.manifest.kind.as_str(),
            "version": entry.manifest.version,
            "api_events": ev,
            "api_anomalies": an,
            "precision": q.and_then(|q| q.precision),
            "recall": q.and_then(|q| q.recall),
            "accuracy": q.and_then(|q| q.accuracy),
        }));
    }
    let total = state.quality.total();
    Json(json!({
        "events_processed": events,
        "anomalies_detected": anomalies,
        "precision": total.precision(),
        "recall": total.recall(),
        "models": models,
        "quality": quality,
        "alerts_stored": state.alerts.len(),
        "agents_online": state.fleet.online(),
        "metrics": flat,
        "prometheus_port": state.prometheus_port,
    }))
}

/// Handler of `GET /api/v1/health`: `healthy` when a model is loaded and no
/// dependency is `down`, else `degraded`; MQTT, Kafka and storage listed.
pub async fn health(State(state): State<AppState>) -> Json<Value> {
    let components = state.health.snapshot();
    let down = components.values().any(|c| c.status == "down");
    let healthy = !state.registry.is_empty() && !down;
    Json(json!({
        "status": if healthy { "healthy" } else { "degraded" },
        "version": env!("CARGO_PKG_VERSION"),
        "models_loaded": state.registry.len(),
        "uptime_seconds": state.started.elapsed().as_secs_f64(),
        "pid": std::process::id(),
        "components": components,
    }))
}
