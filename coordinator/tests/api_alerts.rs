//! Agents, alerts, feedback, JSON metrics, health and the OpenAPI document.

mod api_common;

use api_common::{call, start};
use sad_common::wire::{Alert, Heartbeat};
use sad_common::{ModelKind, Severity};

fn alert(agent: &str, seq: u64, label: Option<bool>, severity: Severity) -> Alert {
    Alert {
        agent_id: agent.into(),
        seq,
        series: "s1".into(),
        ts_ms: 1_000 + seq as i64,
        model: "m1".into(),
        model_kind: ModelKind::IsolationForest,
        model_version: 1,
        score: 0.9,
        raw_score: 0.7,
        threshold: 0.5,
        severity,
        episode_id: seq,
        explanation: vec![],
        values: vec![1.0],
        label,
    }
}

#[tokio::test]
async fn feedback_is_stored_on_the_alert_and_moves_precision() {
    let api = start(None, None).await;
    for seq in 1..=3 {
        let a = alert("a1", seq, Some(true), Severity::Warning);
        api.alerts.insert(&a, 5);
        api.state.quality.record_alert(&a.model, a.label);
    }
    let r = call(
        api.addr,
        "POST",
        "/api/v1/alerts/a1:2/feedback",
        Some(r#"{"label": "false_positive"}"#),
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!((r.body["precision"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-9);
    let r = call(
        api.addr,
        "POST",
        "/api/v1/alerts/a1:2/feedback",
        Some(r#"{"true_positive": false}"#),
        &[],
    )
    .await;
    assert!(
        (r.body["precision"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-9,
        "judging twice counts once"
    );
    let list = call(api.addr, "GET", "/api/v1/alerts?agent=a1", None, &[]).await;
    let alerts = list.body["alerts"].as_array().unwrap();
    assert_eq!(alerts.len(), 3);
    let judged = alerts.iter().find(|a| a["alert_id"] == "a1:2").unwrap();
    assert_eq!(judged["feedback"], false);
    let m = call(api.addr, "GET", "/api/v1/metrics", None, &[]).await;
    assert!((m.body["precision"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-9);
    assert!(
        m.body["metrics"]
            .as_object()
            .unwrap()
            .keys()
            .any(|k| k.starts_with("anomaly_detector_model_precision"))
    );
}

#[tokio::test]
async fn feedback_on_unknown_or_malformed_ids_and_bodies_is_refused() {
    let api = start(None, None).await;
    let r = call(
        api.addr,
        "POST",
        "/api/v1/alerts/a1:9/feedback",
        Some(r#"{"true_positive": true}"#),
        &[],
    )
    .await;
    assert_eq!(r.status, 404);
    let r = call(
        api.addr,
        "POST",
        "/api/v1/alerts/nocolon/feedback",
        Some(r#"{"true_positive": true}"#),
        &[],
    )
    .await;
    assert_eq!(r.status, 422);
    api.alerts.insert(&alert("a1", 1, None, Severity::Info), 5);
    for body in [
        r#"{}"#,
        r#"{"label": "maybe"}"#,
        r#"{"true_positive": true, "label": "false_positive"}"#,
    ] {
        let r = call(
            api.addr,
            "POST",
            "/api/v1/alerts/a1:1/feedback",
            Some(body),
            &[],
        )
        .await;
        assert_eq!(r.status, 422, "{body}");
    }
}

#[tokio::test]
async fn alerts_are_filtered_by_severity_and_paged_with_a_cursor() {
    let api = start(None, None).await;
    for seq in 1..=5 {
        let sev = if seq % 2 == 0 {
            Severity::Critical
        } else {
            Severity::Info
        };
        api.alerts.insert(&alert("a1", seq, None, sev), 5);
    }
    let r = call(
        api.addr,
        "GET",
        "/api/v1/alerts?min_severity=critical",
        None,
        &[],
    )
    .await;
    assert_eq!(r.body["count"], 2);
    let p1 = call(api.addr, "GET", "/api/v1/alerts?limit=3", None, &[]).await;
    assert_eq!(p1.body["count"], 3);
    assert_eq!(p1.body["alerts"][0]["alert_id"], "a1:5", "newest first");
    let cursor = p1.body["next_cursor"].as_str().unwrap().to_string();
    let p2 = call(
        api.addr,
        "GET",
        &format!("/api/v1/alerts?limit=3&cursor={cursor}"),
        None,
        &[],
    )
    .await;
    assert_eq!(p2.body["count"], 2);
    let r = call(
        api.addr,
        "GET",
        "/api/v1/alerts?min_severity=loud",
        None,
        &[],
    )
    .await;
    assert_eq!(r.status, 422);
}

#[tokio::test]
async fn agents_and_health_report_what_is_known() {
    let api = start(None, None).await;
    api.fleet.record(
        Heartbeat {
            agent_id: "edge-1".into(),
            ts_ms: 1,
            online: true,
            uptime_s: 3,
            models: vec![],
            events_processed: 10,
            anomalies: 1,
            bad_input: 0,
            outbox_depth: 0,
            outbox_bytes: 0,
            rss_bytes: 0,
            group: None,
            score_summary: None,
        },
        2,
    );
    let r = call(api.addr, "GET", "/api/v1/agents", None, &[]).await;
    assert_eq!(r.body["online"], 1);
    assert_eq!(r.body["agents"][0]["agent_id"], "edge-1");
    api.state.health.set("kafka", "down", "no broker");
    let h = call(api.addr, "GET", "/api/v1/health", None, &[]).await;
    assert_eq!(h.body["status"], "degraded");
    assert_eq!(h.body["components"]["kafka"]["status"], "down");
    assert_eq!(h.body["models_loaded"], 1);
}

#[tokio::test]
async fn the_openapi_document_lists_every_route_the_router_serves() {
    let api = start(None, None).await;
    let doc = call(api.addr, "GET", "/openapi.json", None, &[]).await.body;
    let specs = sad_coordinator::api::route_specs();
    for s in &specs {
        let op = &doc["paths"][s.path][s.method.to_ascii_lowercase()];
        assert!(
            op.is_object(),
            "{} {} missing from openapi",
            s.method,
            s.path
        );
        assert_eq!(
            op["security"].is_array(),
            s.mutating,
            "{} {}",
            s.method,
            s.path
        );
        // the route is served: whatever it answers, it is not the router's 404/405
        let path = s
            .path
            .replace("{id}", "a1:1")
            .replace("{name}", "isolation_forest_default");
        let r = call(api.addr, s.method, &path, Some("{}"), &[]).await;
        assert!(
            r.status != 405 && !(r.status == 404 && r.body["detail"] == "no such route"),
            "{} {} -> {}",
            s.method,
            s.path,
            r.status
        );
    }
    let n_ops: usize = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|p| p.as_object().unwrap().len())
        .sum();
    assert_eq!(n_ops, specs.len());
}
