//! `GET /openapi.json`: an OpenAPI 3.1 document built from the route table
//! ([`super::routes`]), so it lists exactly the routes the router serves.

use axum::Json;
use serde_json::{Map, Value, json};

use super::{RouteSpec, route_specs};

fn schemas() -> Value {
    json!({
        "DetectRequest": {
            "type": "object",
            "required": ["data"],
            "properties": {
                "data": {"oneOf": [
                    {"type": "array", "items": {"type": "number"}, "description": "one sample (row of features)"},
                    {"type": "array", "items": {"type": "array", "items": {"type": "number"}}, "description": "a batch of rows"}
                ]},
                "model_type": {"type": "string", "default": "isolation_forest"},
                "model_id": {"type": "string"},
                "threshold": {"type": "number", "minimum": 0, "maximum": 1, "description": "calibrated threshold"}
            },
            "example": {"data": [1.2, 3.4, 5.6, 7.8], "model_type": "isolation_forest", "threshold": 0.1}
        },
        "TrainRequest": {
            "type": "object",
            "required": ["training_data"],
            "properties": {
                "model_type": {"type": "string", "default": "isolation_forest", "enum": ["isolation_forest", "autoencoder", "lstm", "vae", "half_space_trees", "ewma"]},
                "training_data": {"oneOf": [
                    {"type": "string", "description": "csv path inside the data directory"},
                    {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
                    {"type": "object", "description": "{\"source\": \"csv\" | \"rows\" | \"fleet_samples\" | \"kafka\", ...}"}
                ]},
                "holdout": {"description": "held-back data for the quality gate (same forms); default the last 20% of the training data"},
                "parameters": {"type": "object", "description": "per kind: n_estimators, max_samples, contamination, ... or epochs, lr, window, seed"},
                "model_id": {"type": "string"},
                "label_column": {"type": "string", "default": "label"},
                "threshold": {"type": "number", "minimum": 0, "maximum": 1, "description": "calibrated threshold instead of the fitted one"},
                "gate": {"type": "boolean", "default": true, "description": "run the quality gate against the serving version"}
            }
        },
        "RulesConfig": {
            "type": "object",
            "properties": {
                "threshold": {"type": ["number", "null"]},
                "hysteresis": {"type": "number", "default": 0.05},
                "min_duration": {"type": "integer", "default": 1},
                "cooldown_ms": {"type": "integer", "default": 10000},
                "severity": {"type": "object", "properties": {"warning": {"type": "number"}, "critical": {"type": "number"}}},
                "top_k": {"type": "integer", "default": 3}
            }
        },
        "PublishOptions": {
            "type": "object",
            "properties": {
                "version": {"type": "integer", "description": "default: the newest version"},
                "canary_group": {"type": "string", "description": "publish to this group first; promoted or rolled back by health checks"},
                "force": {"type": "boolean", "default": false, "description": "publish even if the version failed its quality gate"}
            }
        },
        "RollbackRequest": {
            "type": "object",
            "properties": {
                "to_version": {"type": "integer", "description": "default: the canary's baseline or the previous active version"},
                "reason": {"type": "string"}
            }
        },
        "FeedbackRequest": {
            "type": "object",
            "properties": {
                "true_positive": {"type": "boolean"},
                "label": {"type": "string", "enum": ["true_positive", "false_positive"]},
                "note": {"type": "string"}
            }
        },
        "Error": {
            "type": "object",
            "properties": {"detail": {"type": "string"}, "status": {"type": "integer"}}
        }
    })
}

fn operation(spec: &RouteSpec) -> Value {
    let mut op = Map::new();
    op.insert("summary".into(), json!(spec.summary));
    let op_id: String = format!("{} {}", spec.method, spec.path)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    op.insert("operationId".into(), json!(op_id));
    let params: Vec<Value> = spec
        .path
        .split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
        .collect();
    if !params.is_empty() {
        op.insert("parameters".into(), json!(params));
    }
    if let Some(schema) = spec.request {
        op.insert(
            "requestBody".into(),
            json!({"required": true, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}}),
        );
    }
    let mut responses = json!({
        "200": {"description": "ok", "content": {"application/json": {}}},
        "default": {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    });
    if spec.path == "/api/v1/models/train" {
        responses["202"] = json!({"description": "job accepted"});
    }
    op.insert("responses".into(), responses);
    if spec.mutating {
        op.insert("security".into(), json!([{"bearer": []}]));
    }
    Value::Object(op)
}

/// The OpenAPI document of every route in the table.
pub fn document() -> Value {
    let mut paths = Map::new();
    for spec in route_specs() {
        let entry = paths
            .entry(spec.path.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(o) = entry {
            o.insert(spec.method.to_ascii_lowercase(), operation(&spec));
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Stream Anomaly Detector coordinator",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "anomaly_score and threshold are calibrated to [0, 1]; raw_score is the model's own score"
        },
        "paths": paths,
        "components": {
            "schemas": schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}
        }
    })
}

/// Handler of `GET /openapi.json`.
pub async fn serve_openapi() -> Json<Value> {
    Json(document())
}
