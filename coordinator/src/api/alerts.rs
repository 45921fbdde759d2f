//! Agents, alerts and operator feedback.
//!
//! The handlers read the alert store and the fleet through two small traits,
//! [`AlertBackend`] and [`FleetBackend`], so they run against the sled store
//! and the heartbeat table in `serve` and against [`MemoryAlerts`] and
//! [`MemoryFleet`] in tests.
//!
//! - `GET /api/v1/agents`: every agent seen, with `online` and its last heartbeat.
//! - `GET /api/v1/alerts?since_ms&until_ms&agent&series&min_severity&limit&cursor`:
//!   newest first, at most [`MAX_LIMIT`] per page, `next_cursor` for the next page.
//! - `POST /api/v1/alerts/{id}/feedback` with `{"true_positive": bool}` or
//!   `{"label": "true_positive" | "false_positive"}`: stored on the alert and
//!   counted in precision (see [`crate::quality`]).

use std::collections::BTreeMap;
use std::sync::Mutex;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use sad_common::wire::{Alert, AlertRecord, Heartbeat};
use sad_common::{AlertId, Severity};

use super::{ApiError, AppState, parse_json};

/// Most alerts one page returns.
pub const MAX_LIMIT: usize = 1000;
/// Default page size.
pub const DEFAULT_LIMIT: usize = 100;

/// A stored alert as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertView {
    /// The alert in its JSON form.
    #[serde(flatten)]
    pub record: AlertRecord,
    /// When the coordinator stored it, ms since the epoch.
    pub received_ms: i64,
    /// Operator feedback: `true` = true positive.
    pub feedback: Option<bool>,
}

/// Filters of `GET /api/v1/alerts`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertFilter {
    /// Earliest event time (inclusive), ms.
    pub since_ms: Option<i64>,
    /// Latest event time (exclusive), ms.
    pub until_ms: Option<i64>,
    /// Only this agent.
    pub agent: Option<String>,
    /// Only this series.
    pub series: Option<String>,
    /// Only this severity or higher (`info`, `warning`, `critical`).
    pub min_severity: Option<String>,
    /// Page size (default 100, at most 1000).
    pub limit: Option<usize>,
    /// Opaque cursor from the previous page.
    pub cursor: Option<String>,
}

/// Failure of a backend (storage I/O).
#[derive(Debug, thiserror::Error)]
#[error("alert store: {0}")]
pub struct BackendError(pub String);

/// Read and feedback access to the alert store.
pub trait AlertBackend: Send + Sync {
    /// One page of alerts matching `filter`, newest first, and the next cursor.
    fn query(
        &self,
        filter: &AlertFilter,
        min_severity: Option<Severity>,
        limit: usize,
    ) -> Result<(Vec<AlertView>, Option<String>), BackendError>;
    /// The alert with `id`.
    fn get(&self, id: &str) -> Result<Option<AlertView>, BackendError>;
    /// Stores feedback; `false` when the alert does not exist.
    fn set_feedback(&self, id: &str, true_positive: bool) -> Result<bool, BackendError>;
    /// Alerts held.
    fn len(&self) -> usize;
    /// Whether no alert is held.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Agents seen through heartbeats.
pub trait FleetBackend: Send + Sync {
    /// Every agent as JSON (`agent_id`, `online`, `last_seen_ms`, its heartbeat fields).
    fn agents(&self) -> Vec<Value>;
    /// Agents online.
    fn online(&self) -> usize;
}

/// An in-memory alert store, bounded (oldest evicted); for tests and store-less runs.
pub struct MemoryAlerts {
    cap: usize,
    // key: (ts_ms, alert_id) so iteration in reverse is newest first
    alerts: Mutex<BTreeMap<(i64, String), AlertView>>,
}

impl MemoryAlerts {
    /// A store keeping at most `cap` alerts.
    pub fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            alerts: Mutex::new(BTreeMap::new()),
        }
    }

    /// Adds an alert (a duplicate id replaces nothing and returns `false`).
    pub fn insert(&self, alert: &Alert, received_ms: i64) -> bool {
        let mut g = self.alerts.lock().unwrap_or_else(|e| e.into_inner());
        let id = alert.alert_id();
        if g.values().any(|v| v.record.alert_id == id) {
            return false;
        }
        g.insert(
            (alert.ts_ms, id),
            AlertView {
                record: AlertRecord::from(alert),
                received_ms,
                feedback: None,
            },
        );
        while g.len() > self.cap {
            g.pop_first();
        }
        true
    }
}

fn severity_rank(s: &str) -> u8 {
    match s {
        "critical" => 2,
        "warning" => 1,
        _ => 0,
    }
}

impl AlertBackend for MemoryAlerts {
    fn query(
        &self,
        f: &AlertFilter,
        min_severity: Option<Severity>,
        limit: usize,
    ) -> Result<(Vec<AlertView>, Option<String>), BackendError> {
        let g = self.alerts.lock().unwrap_or_else(|e| e.into_inner());
        let cursor: Option<(i64, String)> = f.cursor.as_deref().and_then(|c| {
            let (ts, id) = c.split_once('|')?;
            Some((ts.parse().ok()?, id.to_string()))
        });
        let min_rank = min_severity.map_or(0, |s| severity_rank(s.as_str()));
        let mut out = Vec::new();
        let mut next = None;
        for (key, v) in g.iter().rev() {
            if cursor.as_ref().is_some_and(|c| key >= c) {
                continue;
            }
            let r = &v.record;
            if f.since_ms.is_some_and(|s| r.ts_ms < s)
                || f.until_ms.is_some_and(|u| r.ts_ms >= u)
                || f.agent.as_ref().is_some_and(|a| &r.agent_id != a)
                || f.series.as_ref().is_some_and(|s| &r.series != s)
                || severity_rank(&r.severity) < min_rank
            {
                continue;
            }
            if out.len() == limit {
                next = out
                    .last()
                    .map(|l: &AlertView| format!("{}|{}", l.record.ts_ms, l.record.alert_id));
                break;
            }
            out.push(v.clone());
        }
        Ok((out, next))
    }

    fn get(&self, id: &str) -> Result<Option<AlertView>, BackendError> {
        let g = self.alerts.lock().unwrap_or_else(|e| e.into_inner());
        Ok(g.values().find(|v| v.record.alert_id == id).cloned())
    }

    fn set_feedback(&self, id: &str, true_positive: bool) -> Result<bool, BackendError> {
        let mut g = self.alerts.lock().unwrap_or_else(|e| e.into_inner());
        Ok(match g.values_mut().find(|v| v.record.alert_id == id) {
            Some(v) => {
                v.feedback = Some(true_positive);
                true
            }
            None => false,
        })
    }

    fn len(&self) -> usize {
        self.alerts.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// An in-memory heartbeat table; for tests and until the fleet module serves.
#[derive(Default)]
pub struct MemoryFleet {
    agents: Mutex<BTreeMap<String, (Heartbeat, i64)>>,
}

impl MemoryFleet {
    /// Records a heartbeat received at `now_ms`.
    pub fn record(&self, hb: Heartbeat, now_ms: i64) {
        self.agents
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(hb.agent_id.clone(), (hb, now_ms));
    }
}

impl FleetBackend for MemoryFleet {
    fn agents(&self) -> Vec<Value> {
        self.agents
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|(hb, seen)| {
                let mut v = serde_json::to_value(hb).unwrap_or(Value::Null);
                if let Value::Object(o) = &mut v {
                    o.insert("last_seen_ms".into(), json!(seen));
                }
                v
            })
            .collect()
    }

    fn online(&self) -> usize {
        self.agents
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|(hb, _)| hb.online)
            .count()
    }
}

/// Handler of `GET /api/v1/agents`.
pub async fn list_agents(State(state): State<AppState>) -> Json<Value> {
    let agents = state.fleet.agents();
    Json(json!({"count": agents.len(), "online": state.fleet.online(), "agents": agents}))
}

/// Handler of `GET /api/v1/alerts`.
pub async fn list_alerts(
    State(state): State<AppState>,
    filter: Result<Query<AlertFilter>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(filter) =
        filter.map_err(|e| ApiError::invalid(format!("invalid query: {e}").to_lowercase()))?;
    let min_severity = match filter.min_severity.as_deref() {
        None => None,
        Some(s) => Some(
            Severity::ALL
                .into_iter()
                .find(|x| x.as_str() == s)
                .ok_or_else(|| {
                    ApiError::invalid("min_severity must be info, warning or critical")
                })?,
        ),
    };
    let limit = filter.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    let backend = state.alerts.clone();
    let (alerts, next) =
        tokio::task::spawn_blocking(move || backend.query(&filter, min_severity, limit))
            .await
            .map_err(|e| ApiError::internal(format!("query task failed: {e}")))?
            .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(Json(
        json!({"count": alerts.len(), "alerts": alerts, "next_cursor": next}),
    ))
}

/// Body of `POST /api/v1/alerts/{id}/feedback`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedbackRequest {
    /// Whether the alert was a real anomaly.
    pub true_positive: Option<bool>,
    /// `true_positive` or `false_positive`.
    pub label: Option<String>,
    /// Free-text note (logged, not stored).
    pub note: Option<String>,
}

impl FeedbackRequest {
    /// The judgement, or why there is none.
    pub fn verdict(&self) -> Result<bool, ApiError> {
        let from_label = match self.label.as_deref() {
            None => None,
            Some("true_positive") => Some(true),
            Some("false_positive") => Some(false),
            Some(_) => {
                return Err(ApiError::invalid(
                    "label must be true_positive or false_positive",
                ));
            }
        };
        match (self.true_positive, from_label) {
            (Some(a), Some(b)) if a != b => {
                Err(ApiError::invalid("true_positive and label disagree"))
            }
            (Some(a), _) | (None, Some(a)) => Ok(a),
            (None, None) => Err(ApiError::invalid(
                "give true_positive (bool) or label (true_positive | false_positive)",
            )),
        }
    }
}

/// Handler of `POST /api/v1/alerts/{id}/feedback`.
pub async fn feedback(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    AlertId::parse(&id).map_err(|e| ApiError::invalid(format!("invalid alert id: {e}")))?;
    let req: FeedbackRequest = parse_json(body)?;
    let tp = req.verdict()?;
    let backend = state.alerts.clone();
    let id2 = id.clone();
    let previous = tokio::task::spawn_blocking(move || -> Result<_, BackendError> {
        let Some(view) = backend.get(&id2)? else {
            return Ok(None);
        };
        backend.set_feedback(&id2, tp)?;
        Ok(Some(view))
    })
    .await
    .map_err(|e| ApiError::internal(format!("feedback task failed: {e}")))?
    .map_err(|e| ApiError::internal(e.to_string()))?
    .ok_or_else(|| ApiError::not_found(format!("alert {id} not found")))?;
    let model = previous.record.model.clone();
    state
        .quality
        .record_feedback(&model, previous.feedback.or(previous.record.label), tp);
    if let Some(note) = &req.note {
        tracing::info!(alert_id = %id, true_positive = tp, note = %note, "alert feedback");
    }
    let q = state.quality.get(&model).unwrap_or_default();
    Ok(Json(json!({
        "alert_id": id,
        "true_positive": tp,
        "model": model,
        "precision": q.precision(),
        "recall": q.recall(),
    })))
}
