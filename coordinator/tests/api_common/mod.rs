//! Shared helpers of the API tests: an API on a loopback port with in-memory
//! alerts and fleet, and a minimal HTTP/1.1 client.
#![allow(dead_code, missing_docs)]

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use sad_coordinator::api::alerts::{MemoryAlerts, MemoryFleet};
use sad_coordinator::api::models::{Jobs, RulesStore};
use sad_coordinator::api::registry::ModelRegistry;
use sad_coordinator::api::{ApiLimits, ApiState, AppState, HealthBoard, router};
use sad_coordinator::metrics::CoordinatorMetrics;
use sad_coordinator::quality::Quality;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub struct Api {
    pub addr: SocketAddr,
    pub state: AppState,
    pub alerts: Arc<MemoryAlerts>,
    pub fleet: Arc<MemoryFleet>,
    pub dir: tempfile::TempDir,
}

/// The default model trained once per test binary and copied for each test.
fn model_dir() -> &'static tempfile::TempDir {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        ModelRegistry::open(d.path()).unwrap();
        d
    })
}

pub async fn start(token: Option<&str>, limits: Option<ApiLimits>) -> Api {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    for e in std::fs::read_dir(model_dir().path()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), models.join(e.file_name())).unwrap();
    }
    let registry = Arc::new(ModelRegistry::open(&models).unwrap());
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let metrics = CoordinatorMetrics::new().unwrap();
    let alerts = Arc::new(MemoryAlerts::new(10_000));
    let fleet = Arc::new(MemoryFleet::default());
    let mut limits = limits.unwrap_or_default();
    limits.data_dir = data;
    let state: AppState = Arc::new(ApiState {
        registry,
        metrics: metrics.clone(),
        quality: Arc::new(Quality::new(Some(metrics))),
        alerts: alerts.clone(),
        fleet: fleet.clone(),
        rules: Arc::new(RulesStore::open(dir.path()).unwrap()),
        jobs: Arc::new(Jobs::default()),
        rollout: None,
        health: Arc::new(HealthBoard::default()),
        limits,
        token: token.map(str::to_string),
        default_threshold: None,
        default_kind: sad_common::ModelKind::IsolationForest,
        prometheus_port: 0,
        started: Instant::now(),
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = router(state.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Api {
        addr,
        state,
        alerts,
        fleet,
        dir,
    }
}

pub struct Reply {
    pub status: u16,
    pub headers: String,
    pub body: Value,
}

/// Sends one request (Connection: close) and parses the JSON reply.
pub async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> Reply {
    call_bytes(addr, method, path, body.unwrap_or("").as_bytes(), headers).await
}

/// [`call`] with raw body bytes; a server that closes the connection early
/// (before the body is written) gives whatever it answered, status 0 if nothing.
pub async fn call_bytes(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
    headers: &[(&str, &str)],
) -> Reply {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let _ = s.write_all(body).await;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out).to_string();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let rest = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Reply {
        status,
        headers: head.to_string(),
        body: serde_json::from_str(&rest).unwrap_or(Value::String(rest)),
    }
}

fn dechunk(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}
