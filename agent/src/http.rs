//! The agent's small local HTTP port: `GET /health`, `GET /metrics` and
//! `POST /ingest` (the HTTP push source).
//!
//! The router only reads shared state through [`HttpState`]; the listener is
//! injected (port 0 in tests) and [`serve`] stops on the shutdown token.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use sad_common::ModelStatus;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::metrics::AgentMetrics;
use crate::sources::http::HttpIngest;

/// `[http]`: the local endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Serve `/health`, `/metrics` and `/ingest` (default true).
    pub enabled: bool,
    /// Listen address (default `127.0.0.1:9102`; port 0 picks a free port).
    pub listen: SocketAddr,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 9102)),
        }
    }
}

/// The body of `GET /health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// `ok`.
    pub status: String,
    /// Agent id.
    pub agent_id: String,
    /// Running models and versions.
    pub models: Vec<ModelStatus>,
    /// Unacknowledged alerts in the outbox.
    pub outbox_depth: u64,
    /// Highest seq assigned so far.
    pub last_seq: u64,
    /// Seconds since start.
    pub uptime_s: u64,
}

/// Reads the live parts of [`Health`]: `(models, outbox_depth, last_seq)`.
pub type HealthProbe = Arc<dyn Fn() -> (Vec<ModelStatus>, u64, u64) + Send + Sync>;

/// Shared state of the router.
#[derive(Clone)]
pub struct HttpState {
    /// Agent id.
    pub agent_id: String,
    /// The metrics `/metrics` encodes.
    pub metrics: AgentMetrics,
    /// Live health figures.
    pub probe: HealthProbe,
    /// The HTTP push source, if one is configured.
    pub ingest: Option<HttpIngest>,
    /// Start time.
    pub started: Instant,
}

/// The router: `/health`, `/metrics`, `/ingest`.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/ingest", post(ingest))
        .with_state(state)
}

async fn health(State(s): State<HttpState>) -> Response {
    let (models, outbox_depth, last_seq) = (s.probe)();
    axum::Json(Health {
        status: "ok".into(),
        agent_id: s.agent_id.clone(),
        models,
        outbox_depth,
        last_seq,
        uptime_s: s.started.elapsed().as_secs(),
    })
    .into_response()
}

async fn metrics(State(s): State<HttpState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.encode(),
    )
        .into_response()
}

async fn ingest(State(s): State<HttpState>, body: Body) -> Response {
    let Some(ingest) = s.ingest else {
        return (StatusCode::NOT_FOUND, "no http source is configured\n").into_response();
    };
    let bytes = match axum::body::to_bytes(body, ingest.max_body_bytes).await {
        Ok(b) => b,
        Err(_) => {
            ingest.reject_oversize(ingest.max_body_bytes + 1);
            return (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body exceeds {} bytes\n", ingest.max_body_bytes),
            )
                .into_response();
        }
    };
    match ingest.ingest(&bytes).await {
        Ok(report) => axum::Json(report).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
    }
}

/// Serves `router` on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::BadInputReporter;
    use crate::sources::MappingConfig;
    use crate::sources::http::HttpSourceConfig;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn request(addr: SocketAddr, raw: String) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(raw.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn health_metrics_and_ingest_answer_on_a_free_port() {
        let metrics = AgentMetrics::new().unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let ingest = HttpSourceConfig {
            name: "push".into(),
            max_body_bytes: 64,
            model: None,
            mapping: MappingConfig::new(&["x"]),
        }
        .build(
            tx,
            BadInputReporter::new(Some(metrics.clone()), Default::default()),
        )
        .unwrap();
        let state = HttpState {
            agent_id: "edge-1".into(),
            metrics: metrics.clone(),
            probe: Arc::new(|| (vec![], 3, 9)),
            ingest: Some(ingest),
            started: Instant::now(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve(listener, router(state), stop.clone()));

        let h = request(
            addr,
            "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".into(),
        )
        .await;
        assert!(h.starts_with("HTTP/1.1 200"), "{h}");
        assert!(
            h.contains("\"agent_id\":\"edge-1\"") && h.contains("\"outbox_depth\":3"),
            "{h}"
        );

        let body = "{\"x\":1}\n{\"x\":\"bad\"}\n";
        let r = request(
            addr,
            format!("POST /ingest HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()),
        )
        .await;
        assert!(r.contains("{\"accepted\":1,\"rejected\":1}"), "{r}");
        assert_eq!(rx.recv().await.unwrap().event.values, vec![1.0]);

        let big = "x".repeat(100);
        let r = request(
            addr,
            format!("POST /ingest HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\nConnection: close\r\n\r\n{big}"),
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 413"), "{r}");

        let m = request(
            addr,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".into(),
        )
        .await;
        assert!(m.contains("text/plain; version=0.0.4"), "{m}");
        assert!(
            m.contains("anomaly_detector_bad_input_total{reason=\"not_number\"} 1"),
            "{m}"
        );
        assert!(
            m.contains("anomaly_detector_bad_input_total{reason=\"oversize\"} 1"),
            "{m}"
        );

        stop.cancel();
        server.await.unwrap().unwrap();
    }
}
