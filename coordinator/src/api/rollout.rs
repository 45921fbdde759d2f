//! Model versions and rollout over REST.
//!
//! - `GET /api/v1/models/public-key`: the ed25519 key agents pin.
//! - `GET /api/v1/models/{name}`: every version (manifest summary, quality
//!   gate verdict, what it restores), the serving and active versions, a
//!   running canary with its latest health check, the rollout history, and
//!   which agents run which version.
//! - `POST /api/v1/models/{name}/publish` `{"version"?, "canary_group"?, "force"?}`:
//!   sign and publish a version to the fleet, or to a canary group first.
//! - `POST /api/v1/models/{name}/promote`: promote the running canary.
//! - `POST /api/v1/models/{name}/rollback` `{"to_version"?, "reason"?}`:
//!   withdraw a canary, or restore an earlier active version, as a new
//!   higher version.
//!
//! Errors: 404 unknown model or version, 409 a canary runs / none runs,
//! 422 refused (not newer than the active version, failed quality gate),
//! 502 publishing failed, 503 when the coordinator has no rollout (no MQTT).

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, AppState, parse_json};
use crate::rollout::{PublishOptions, Rollout, RolloutError};

fn rollout(state: &AppState) -> Result<Arc<Rollout>, ApiError> {
    state.rollout.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "model rollout is not available on this coordinator",
        )
    })
}

fn map_err(e: RolloutError) -> ApiError {
    match e {
        RolloutError::NotFound(m) => ApiError::not_found(m),
        RolloutError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, m),
        RolloutError::Refused(m) => ApiError::invalid(m),
        RolloutError::Publish(m) => {
            ApiError::new(StatusCode::BAD_GATEWAY, format!("publish failed: {m}"))
        }
        e => ApiError::internal(e.to_string()),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RolloutError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("rollout task failed: {e}")))?
        .map_err(map_err)
}

/// Handler of `GET /api/v1/models/public-key`.
pub async fn public_key(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let r = rollout(&state)?;
    Ok(Json(json!({
        "algorithm": "ed25519",
        "public_key": r.public_key_hex(),
        "pin": "put this in the agent's [model] pinned_public_key",
    })))
}

/// Handler of `GET /api/v1/models/{name}`.
pub async fn model_detail(
    State(state): State<AppState>,
    UrlPath(name): UrlPath<String>,
) -> Result<Json<Value>, ApiError> {
    let versions = state.registry.versions(&name);
    if versions.is_empty() {
        return Err(ApiError::not_found(format!("model {name} not found")));
    }
    let serving = state.registry.get(&name).map(|e| e.manifest.version);
    let rollout = state.rollout.as_ref().map(|r| r.status(&name));
    let versions: Vec<Value> = versions
        .iter()
        .rev()
        .map(|m| {
            json!({
                "version": m.version,
                "model_type": m.kind.as_str(),
                "parent_version": m.parent_version,
                "restores": m.restores,
                "created_ms": m.created_ms,
                "threshold": m.threshold,
                "n_features": m.feature_names.len(),
                "window": m.window,
                "training_data": m.training.data,
                "n_training_samples": m.training.rows,
                "metrics": m.training.metrics,
                "gate_passed": m.training.metrics.get(crate::gate::GATE_PASSED).map(|v| *v != 0.0),
                "publishable": crate::gate::publishable(m),
                "notes": m.notes,
                "payload_sha256": m.payload_sha256,
            })
        })
        .collect();
    let mut agents = Vec::new();
    for a in state.fleet.agents() {
        let Some(models) = a.pointer("/heartbeat/models").and_then(Value::as_array) else {
            continue;
        };
        if let Some(m) = models
            .iter()
            .find(|m| m.get("name").and_then(Value::as_str) == Some(name.as_str()))
        {
            agents.push(json!({
                "agent_id": a.get("agent_id"),
                "online": a.get("online"),
                "group": a.pointer("/heartbeat/group"),
                "version": m.get("version"),
            }));
        }
    }
    Ok(Json(json!({
        "model_id": name,
        "serving_version": serving,
        "active_version": rollout.as_ref().and_then(|r| r.active),
        "canary": rollout.as_ref().and_then(|r| r.canary.clone()),
        "versions": versions,
        "agents": agents,
        "history": rollout.map(|r| r.history).unwrap_or_default(),
    })))
}

/// Handler of `POST /api/v1/models/{name}/publish`.
pub async fn publish(
    State(state): State<AppState>,
    UrlPath(name): UrlPath<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let r = rollout(&state)?;
    let opts: PublishOptions = match body {
        Ok(b) if b.iter().all(u8::is_ascii_whitespace) => PublishOptions::default(),
        other => parse_json(other)?,
    };
    let st = blocking(move || r.publish(&name, &opts)).await?;
    Ok(Json(json!(st)))
}

/// Handler of `POST /api/v1/models/{name}/promote`.
pub async fn promote(
    State(state): State<AppState>,
    UrlPath(name): UrlPath<String>,
) -> Result<Json<Value>, ApiError> {
    let r = rollout(&state)?;
    let st = blocking(move || r.promote(&name, "promoted by an operator")).await?;
    Ok(Json(json!(st)))
}

/// Body of `POST /api/v1/models/{name}/rollback`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// Version whose model to restore (default: the canary's baseline or the previous active).
    #[serde(default)]
    pub to_version: Option<u64>,
    /// Why, kept in the history and the new manifest.
    #[serde(default)]
    pub reason: Option<String>,
}

/// Handler of `POST /api/v1/models/{name}/rollback`.
pub async fn rollback(
    State(state): State<AppState>,
    UrlPath(name): UrlPath<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let r = rollout(&state)?;
    let req: RollbackRequest = match body {
        Ok(b) if b.iter().all(u8::is_ascii_whitespace) => RollbackRequest::default(),
        other => parse_json(other)?,
    };
    let reason = req
        .reason
        .unwrap_or_else(|| "rolled back by an operator".into());
    if reason.len() > 512 || reason.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "reason must be at most 512 characters without control characters",
        ));
    }
    let st = blocking(move || r.rollback(&name, req.to_version, &reason)).await?;
    Ok(Json(json!(st)))
}
