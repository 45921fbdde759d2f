//! The REST API (axum), on port 8001 by default, with the seed's endpoints
//! and request shapes plus the fleet's.
//!
//! Every route is one row of [`routes`]: method, path, summary, whether it
//! mutates (and so needs the bearer token when `API_TOKEN` is set) and its
//! handler. The router and `GET /openapi.json` are both built from that
//! table, so the document lists exactly what is served.
//!
//! Errors are JSON: `{"detail": "<lowercase message>", "status": <code>}`
//! (`detail` as in the seed's FastAPI). Bodies are capped
//! ([`ApiLimits::max_body_bytes`], 413) and so are detect batches
//! ([`ApiLimits::max_batch_rows`], 422).
//!
//! Score semantics of `POST /api/v1/detect`: see [`detect`].

pub mod alerts;
pub mod auth;
pub mod detect;
pub mod helper;
pub mod models;
pub mod openapi;
pub mod registry;
pub mod rollout;
pub mod status;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post, put};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::metrics::CoordinatorMetrics;
use crate::quality::Quality;
use alerts::{AlertBackend, FleetBackend};
use models::{Jobs, RulesStore};
use registry::ModelRegistry;

/// Caps and paths the handlers enforce.
#[derive(Debug, Clone)]
pub struct ApiLimits {
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// Largest detect batch in rows.
    pub max_batch_rows: usize,
    /// Directory training CSV paths must stay inside.
    pub data_dir: PathBuf,
}

impl Default for ApiLimits {
    fn default() -> Self {
        Self {
            max_body_bytes: 8 * 1024 * 1024,
            max_batch_rows: 10_000,
            data_dir: PathBuf::from("./data"),
        }
    }
}

/// Status of one dependency in `GET /api/v1/health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ComponentStatus {
    /// `ok`, `down`, `disabled` or `starting`.
    pub status: String,
    /// Address or error, for a person.
    pub detail: String,
}

/// Health of the coordinator's dependencies (`mqtt`, `kafka`, `storage`), set by whoever owns them.
#[derive(Default)]
pub struct HealthBoard {
    components: Mutex<BTreeMap<String, ComponentStatus>>,
}

impl HealthBoard {
    /// Records the status of `component`.
    pub fn set(&self, component: &str, status: &str, detail: impl Into<String>) {
        self.components
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                component.to_string(),
                ComponentStatus {
                    status: status.to_string(),
                    detail: detail.into(),
                },
            );
    }

    /// Every component's status.
    pub fn snapshot(&self) -> BTreeMap<String, ComponentStatus> {
        self.components
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Everything the handlers share.
pub struct ApiState {
    /// Models served by detect.
    pub registry: Arc<ModelRegistry>,
    /// Prometheus metrics.
    pub metrics: CoordinatorMetrics,
    /// Precision and recall.
    pub quality: Arc<Quality>,
    /// Alert store.
    pub alerts: Arc<dyn AlertBackend>,
    /// Agents seen through heartbeats.
    pub fleet: Arc<dyn FleetBackend>,
    /// Alert-rule settings per model.
    pub rules: Arc<RulesStore>,
    /// Background jobs (training).
    pub jobs: Arc<Jobs>,
    /// Signed rollout of model versions to the fleet (`None` without MQTT).
    pub rollout: Option<Arc<crate::rollout::Rollout>>,
    /// Dependency health.
    pub health: Arc<HealthBoard>,
    /// Caps.
    pub limits: ApiLimits,
    /// Bearer token of mutating endpoints.
    pub token: Option<String>,
    /// `THRESHOLD`: default calibrated threshold of detect, over the model's own.
    pub default_threshold: Option<f64>,
    /// `MODEL_TYPE`: default kind of detect.
    pub default_kind: sad_common::ModelKind,
    /// Port `/metrics` is served on, shown by the JSON metrics.
    pub prometheus_port: u16,
    /// Start time, for uptime.
    pub started: Instant,
}

/// The handlers' state.
pub type AppState = Arc<ApiState>;

/// An error answered as JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Lowercase message.
    pub message: String,
}

impl ApiError {
    /// An error with `status` and `message`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    /// 422: the request is well-formed JSON but invalid.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// 500, logged.
    pub fn internal(message: impl Into<String>) -> Self {
        let message = message.into();
        tracing::error!(error = %message, "api internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"detail": self.message, "status": self.status.as_u16()});
        (self.status, axum::Json(body)).into_response()
    }
}

/// Parses a JSON body, turning transport and syntax errors into JSON errors.
pub fn parse_json<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let bytes = body.map_err(|r| {
        let status = r.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(status, "request body is too large")
        } else {
            ApiError::new(
                status,
                format!("cannot read the request body: {r}").to_lowercase(),
            )
        }
    })?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::invalid(format!("invalid json body: {e}")))
}

/// One row of the route table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteSpec {
    /// HTTP method (`GET`, `POST`, `PUT`).
    pub method: &'static str,
    /// Path in axum and OpenAPI syntax (`/api/v1/jobs/{id}`).
    pub path: &'static str,
    /// One-line summary.
    pub summary: &'static str,
    /// Whether the route changes state (bearer token required when configured).
    pub mutating: bool,
    /// Name of the request body schema in the OpenAPI document, if any.
    pub request: Option<&'static str>,
}

const fn r(
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    request: Option<&'static str>,
) -> RouteSpec {
    RouteSpec {
        method,
        path,
        summary,
        mutating: matches!(method.as_bytes(), b"POST" | b"PUT" | b"DELETE" | b"PATCH"),
        request,
    }
}

/// The route table: every route the API serves, with its handler.
pub fn routes() -> Vec<(RouteSpec, MethodRouter<AppState>)> {
    vec![
        (
            r(
                "POST",
                "/api/v1/detect",
                "score one vector or a batch of vectors",
                Some("DetectRequest"),
            ),
            post(detect::detect),
        ),
        (
            r("GET", "/api/v1/models", "list the registered models", None),
            get(models::list_models),
        ),
        (
            r(
                "POST",
                "/api/v1/models/train",
                "train a model in the background; returns a job id",
                Some("TrainRequest"),
            ),
            post(models::train),
        ),
        (
            r(
                "GET",
                "/api/v1/models/public-key",
                "the ed25519 public key agents pin to verify model bundles",
                None,
            ),
            get(rollout::public_key),
        ),
        (
            r(
                "GET",
                "/api/v1/models/{name}",
                "versions, active and canary versions, rollout history and agents of a model",
                None,
            ),
            get(rollout::model_detail),
        ),
        (
            r(
                "POST",
                "/api/v1/models/{name}/publish",
                "sign and publish a version to the fleet or to a canary group",
                Some("PublishOptions"),
            ),
            post(rollout::publish),
        ),
        (
            r(
                "POST",
                "/api/v1/models/{name}/promote",
                "promote the running canary to the whole fleet",
                None,
            ),
            post(rollout::promote),
        ),
        (
            r(
                "POST",
                "/api/v1/models/{name}/rollback",
                "withdraw a canary or restore an earlier version, as a new higher version",
                Some("RollbackRequest"),
            ),
            post(rollout::rollback),
        ),
        (
            r(
                "GET",
                "/api/v1/models/{name}/rules",
                "alert-rule settings of a model",
                None,
            ),
            get(models::get_rules),
        ),
        (
            r(
                "PUT",
                "/api/v1/models/{name}/rules",
                "change a model's alert rules and publish them to the fleet",
                Some("RulesConfig"),
            ),
            put(models::put_rules),
        ),
        (
            r(
                "GET",
                "/api/v1/jobs/{id}",
                "status, progress and result of a job",
                None,
            ),
            get(models::get_job),
        ),
        (
            r(
                "GET",
                "/api/v1/metrics",
                "events, anomalies, precision and recall, per model",
                None,
            ),
            get(status::metrics_json),
        ),
        (
            r(
                "GET",
                "/api/v1/health",
                "status of mqtt, kafka and storage",
                None,
            ),
            get(status::health),
        ),
        (
            r(
                "GET",
                "/api/v1/agents",
                "agents seen through their heartbeats",
                None,
            ),
            get(alerts::list_agents),
        ),
        (
            r(
                "GET",
                "/api/v1/alerts",
                "stored alerts, newest first, filtered",
                None,
            ),
            get(alerts::list_alerts),
        ),
        (
            r(
                "POST",
                "/api/v1/alerts/{id}/feedback",
                "mark an alert a true or false positive",
                Some("FeedbackRequest"),
            ),
            post(alerts::feedback),
        ),
        (
            r("GET", "/openapi.json", "this document", None),
            get(openapi::serve_openapi),
        ),
    ]
}

/// The route specs alone.
pub fn route_specs() -> Vec<RouteSpec> {
    routes().into_iter().map(|(s, _)| s).collect()
}

/// The API router over `state`: routes, auth, body cap and a JSON 404.
pub fn router(state: AppState) -> Router {
    let mut router = Router::new();
    for (spec, handler) in routes() {
        router = router.route(spec.path, handler);
    }
    let limit = state.limits.max_body_bytes;
    router
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this route",
            )
        })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}
