//! `serve` end to end on its embedded defaults: an agent's uplink delivers
//! alerts through the embedded broker into the store, gets its acks, the
//! alerts' labels feed real-time precision, and the agent
//! shows up in the fleet view; rule settings changed over the REST API reach
//! a running agent.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sad_agent::heartbeat::{Counters, Reservoir, ScoreStats};
use sad_agent::metrics::AgentMetrics;
use sad_agent::model_manager::ModelManager;
use sad_agent::outbox::{Outbox, OutboxConfig};
use sad_agent::uplink::{UplinkConfig, UplinkShared, run_uplink};
use sad_common::{Alert, FeatureContribution, ModelKind, Severity};
use sad_coordinator::app::serve;
use sad_coordinator::config::CoordinatorConfig;
use tokio_util::sync::CancellationToken;

fn alert(i: usize) -> Alert {
    Alert {
        agent_id: String::new(),
        seq: 0,
        series: format!("pump-{}", i % 3),
        ts_ms: 1_700_000_000_000 + i as i64,
        model: "iforest".into(),
        model_kind: ModelKind::IsolationForest,
        model_version: 1,
        score: 0.9,
        raw_score: 0.7,
        threshold: 0.5,
        severity: if i.is_multiple_of(2) {
            Severity::Warning
        } else {
            Severity::Critical
        },
        episode_id: i as u64,
        explanation: vec![FeatureContribution {
            feature: "f0".into(),
            weight: 1.0,
        }],
        values: vec![1.0, 2.0],
        // a replayed benchmark: every other alert is a real anomaly
        label: Some(i.is_multiple_of(2)),
    }
}

async fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `serve` on embedded defaults with every listener on a free loopback port.
async fn start_coordinator(
    dir: &std::path::Path,
) -> (sad_coordinator::app::RunningCoordinator, CancellationToken) {
    let mut cfg = CoordinatorConfig {
        api_listen: "127.0.0.1:0".parse().unwrap(),
        prometheus_listen: "127.0.0.1:0".parse().unwrap(),
        broker_listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.join("coordinator"),
        ..CoordinatorConfig::default()
    };
    cfg.env.model_path = dir.join("models");
    cfg.env.mqtt_url = None;
    cfg.env.kafka_brokers = None;
    let stop = CancellationToken::new();
    (serve(cfg, stop.clone()).await.unwrap(), stop)
}

/// What an agent's uplink needs, with its outbox and models under `dir/agent-{id}`.
fn agent_parts(dir: &std::path::Path, agent_id: &str) -> UplinkShared {
    let metrics = AgentMetrics::new().unwrap();
    let base = dir.join(format!("agent-{agent_id}"));
    let outbox = Outbox::open(
        &OutboxConfig {
            path: base.join("outbox"),
            ..OutboxConfig::default()
        },
        agent_id,
        Some(metrics.clone()),
    )
    .unwrap();
    UplinkShared {
        outbox,
        models: ModelManager::open(&base.join("models"), None, None).unwrap(),
        metrics,
        counters: Counters::default(),
        reservoir: Arc::new(Mutex::new(Reservoir::new(10, 1))),
        scores: Arc::new(Mutex::new(ScoreStats::default())),
        agent_id: agent_id.into(),
        rules: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_on_embedded_defaults_stores_and_acks_an_agents_alerts() {
    let dir = tempfile::tempdir().unwrap();
    let (running, stop) = start_coordinator(dir.path()).await;

    let shared = agent_parts(dir.path(), "edge-1");
    let outbox = shared.outbox.clone();
    // the agent's pipeline saw labelled events: 4 anomalies (3 flagged), 10 normal (1 flagged)
    let counters = shared.counters.clone();
    for (anomalous, flagged) in [(true, true), (true, true), (true, true), (true, false)] {
        counters.record_labelled("iforest", anomalous, flagged);
    }
    for i in 0..10 {
        counters.record_labelled("iforest", false, i == 0);
    }
    let seqs = outbox.append((0..40).map(alert).collect()).unwrap();
    assert_eq!(seqs, (1..=40).collect::<Vec<u64>>());
    let uplink_cfg = UplinkConfig {
        url: running.mqtt_url.clone(),
        resend_after: Duration::from_secs(2),
        heartbeat_every: Duration::from_millis(500),
        ..UplinkConfig::default()
    };
    let agent_stop = CancellationToken::new();
    let uplink = tokio::spawn(run_uplink(uplink_cfg, shared, agent_stop.clone()));

    wait_for("the outbox to drain", Duration::from_secs(60), || {
        outbox.depth() == 0
    })
    .await;
    assert_eq!(running.store.len(), 40, "every alert stored once");
    for seq in [1, 20, 40] {
        let stored = running.store.get(&format!("edge-1:{seq}")).unwrap();
        assert!(stored.is_some(), "edge-1:{seq} missing from the store");
    }
    // the labels judged each alert once: real-time precision 0.5
    let counts = running.state.quality.get("iforest").expect("judged alerts");
    assert_eq!((counts.true_positives, counts.false_positives), (20, 20));
    assert_eq!(counts.precision(), Some(0.5));
    let fleet = running.fleet.clone();
    wait_for("the agent's heartbeat", Duration::from_secs(30), || {
        fleet.agents().iter().any(|a| a.agent_id == "edge-1")
    })
    .await;
    // fleet-wide recall from the agent's labelled-event counters
    let quality = running.state.quality.clone();
    wait_for(
        "the agent's labelled counts",
        Duration::from_secs(30),
        || {
            quality
                .get("iforest")
                .is_some_and(|c| c.labelled_anomalies == 4)
        },
    )
    .await;
    counters.record_labelled("iforest", true, true);
    wait_for("the increase only", Duration::from_secs(30), || {
        quality
            .get("iforest")
            .is_some_and(|c| c.labelled_anomalies == 5)
    })
    .await;
    let c = quality.get("iforest").unwrap();
    assert_eq!(
        (
            c.labelled_detected,
            c.labelled_normal,
            c.labelled_false_alarms
        ),
        (4, 10, 1)
    );
    assert_eq!(c.recall(), Some(0.8));

    agent_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), uplink).await;
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), running.wait())
        .await
        .unwrap();
}

/// A minimal HTTP/1.1 request on loopback; returns the status code and body.
async fn http(addr: std::net::SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_changed_over_the_api_reach_a_running_agent_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (running, stop) = start_coordinator(dir.path()).await;

    let shared = agent_parts(dir.path(), "edge-2");
    let rules = shared.rules.clone();
    let uplink_cfg = UplinkConfig {
        url: running.mqtt_url.clone(),
        ..UplinkConfig::default()
    };
    let agent_stop = CancellationToken::new();
    let uplink = tokio::spawn(run_uplink(uplink_cfg, shared, agent_stop.clone()));

    let (status, body) = http(
        running.api_addr,
        "PUT",
        "/api/v1/models/pump_forest/rules",
        r#"{"threshold": 0.9, "hysteresis": 0.1, "cooldown_ms": 60000}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    wait_for(
        "the agent to receive the rules",
        Duration::from_secs(30),
        || rules.snapshot().1.contains_key("pump_forest"),
    )
    .await;
    let got = rules.snapshot().1["pump_forest"].clone();
    assert_eq!(
        (got.threshold, got.hysteresis, got.cooldown_ms),
        (Some(0.9), 0.1, 60_000)
    );

    // invalid settings are refused by the API and never reach the agent
    let (status, _) = http(
        running.api_addr,
        "PUT",
        "/api/v1/models/pump_forest/rules",
        r#"{"threshold": 7}"#,
    )
    .await;
    assert_eq!(status, 422, "out-of-range threshold is refused");
    assert_eq!(rules.snapshot().1["pump_forest"].threshold, Some(0.9));

    agent_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), uplink).await;
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), running.wait())
        .await
        .unwrap();
}
