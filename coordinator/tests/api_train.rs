//! Training jobs over the REST API: every model kind, the quality gate's
//! verdict in the job result and the manifest, fleet samples as a source,
//! request validation, and `anomaly-coordinator train submit` following a job.

mod api_common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use api_common::{Api, call, start};
use axum::Extension;
use sad_common::Samples;
use sad_coordinator::api::models::TrainingSources;
use sad_coordinator::api::router;
use sad_coordinator::fleet::Fleet;
use serde_json::{Value, json};

/// `n` rows of two correlated features, deterministic.
fn rows(n: usize, offset: f64) -> Vec<[f64; 2]> {
    (0..n)
        .map(|i| {
            let t = (i as f64 * 0.37).sin();
            [offset + t, 5.0 - 2.0 * t + 0.1 * ((i % 7) as f64)]
        })
        .collect()
}

async fn post(addr: SocketAddr, body: Value) -> api_common::Reply {
    call(
        addr,
        "POST",
        "/api/v1/models/train",
        Some(&body.to_string()),
        &[],
    )
    .await
}

/// Submits `body` and waits for the job; returns the final job.
async fn train(addr: SocketAddr, body: Value) -> Value {
    let r = post(addr, body).await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let id = r.body["job_id"].as_u64().unwrap();
    for _ in 0..3000 {
        let j = call(addr, "GET", &format!("/api/v1/jobs/{id}"), None, &[]).await;
        let s = j.body["status"].as_str().unwrap_or_default().to_string();
        if s == "succeeded" || s == "failed" {
            return j.body;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("job {id} did not finish");
}

/// The test API again, with fleet samples available to training.
async fn with_sources(api: &Api, fleet: Fleet) -> SocketAddr {
    let sources = Arc::new(TrainingSources {
        fleet: Some(fleet),
        ..TrainingSources::default()
    });
    let app = router(api.state.clone()).layer(Extension(sources));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

#[tokio::test]
async fn every_model_kind_trains_over_the_api_and_reports_its_gate() {
    let api = start(None, None).await;
    let data = rows(120, 0.0);
    let cases = [
        ("isolation_forest", json!({"n_estimators": 20})),
        ("ewma", json!({"warmup": 10})),
        ("half_space_trees", json!({"window_size": 20, "n_trees": 5})),
        (
            "autoencoder",
            json!({"epochs": 2, "batch_size": 16, "seed": 1}),
        ),
        ("vae", json!({"epochs": 1, "batch_size": 16})),
        ("lstm", json!({"epochs": 1, "window": 4, "hidden": 4})),
    ];
    for (kind, params) in cases {
        let job = train(
            api.addr,
            json!({"model_type": kind, "model_id": format!("m_{kind}"),
                   "training_data": data, "parameters": params}),
        )
        .await;
        assert_eq!(job["status"], "succeeded", "{kind}: {job}");
        let r = &job["result"];
        assert_eq!(r["model_type"], kind);
        assert_eq!(r["version"], 1);
        assert_eq!(r["gate"]["passed"], true, "{kind}: {r}");
        assert_eq!(r["gate"]["first_version"], true);
        assert_eq!(r["publishable"], true);
        assert_eq!(r["metrics"]["gate_passed"], 1.0);
        assert_eq!(job["phase"], "done");
        if matches!(kind, "autoencoder" | "vae" | "lstm") {
            assert!(job["epoch"].as_u64().unwrap() >= 1, "{job}");
            assert!(job["loss"].as_f64().is_some(), "{job}");
        }
    }
    let models = call(api.addr, "GET", "/api/v1/models", None, &[]).await;
    assert_eq!(models.body["count"], 7);
    assert_eq!(models.body["supported_types"].as_array().unwrap().len(), 6);
    // A trained neural model serves detect.
    let d = call(
        api.addr,
        "POST",
        "/api/v1/detect",
        Some(r#"{"data": [0.1, 4.9], "model_id": "m_autoencoder"}"#),
        &[],
    )
    .await;
    assert_eq!(d.status, 200, "{:?}", d.body);
}

#[tokio::test]
async fn a_model_that_alerts_on_everything_is_saved_but_not_publishable() {
    let api = start(None, None).await;
    let data = rows(200, 0.0);
    let good = train(
        api.addr,
        json!({"model_id": "gated", "training_data": data, "parameters": {"n_estimators": 20}}),
    )
    .await;
    assert_eq!(good["result"]["gate"]["passed"], true);
    let bad = train(
        api.addr,
        json!({"model_id": "gated", "training_data": data,
               "parameters": {"n_estimators": 20}, "threshold": 0.0}),
    )
    .await;
    assert_eq!(bad["status"], "succeeded", "{bad}");
    let r = &bad["result"];
    assert_eq!(r["version"], 2);
    assert_eq!(r["publishable"], false);
    assert_eq!(r["gate"]["passed"], false);
    assert_eq!(r["gate"]["active_version"], 1);
    assert_eq!(r["gate"]["alert_rate"], 1.0);
    assert!(
        r["gate"]["reasons"][0]
            .as_str()
            .unwrap()
            .contains("alert rate")
    );
    assert_eq!(r["metrics"]["gate_passed"], 0.0);
    assert_eq!(r["metrics"]["threshold_override"], 0.0);
    assert!(
        r["notes"]
            .as_str()
            .unwrap()
            .starts_with("quality gate failed")
    );
    // Skipping the gate is recorded and leaves the version publishable.
    let forced = train(
        api.addr,
        json!({"model_id": "gated", "training_data": data,
               "parameters": {"n_estimators": 20}, "threshold": 0.0, "gate": false}),
    )
    .await;
    let r = &forced["result"];
    assert_eq!(r["version"], 3);
    assert_eq!(r["gate"]["skipped"], true);
    assert_eq!(r["publishable"], true);
    assert_eq!(r["metrics"]["gate_skipped"], 1.0);
}

#[tokio::test]
async fn labelled_csv_holdouts_give_precision_recall_and_f1() {
    let api = start(None, None).await;
    let mut csv = String::from("a,b,label\n");
    for (i, [a, b]) in rows(300, 0.0).iter().enumerate() {
        if i >= 250 && i % 10 == 0 {
            csv.push_str(&format!("{},{},1\n", a + 8.0, b - 8.0));
        } else {
            csv.push_str(&format!("{a},{b},0\n"));
        }
    }
    std::fs::write(api.state.limits.data_dir.join("labelled.csv"), csv).unwrap();
    let job = train(
        api.addr,
        json!({"model_id": "lab", "training_data": {"source": "csv", "path": "labelled.csv"},
               "parameters": {"n_estimators": 30, "contamination": 0.05}}),
    )
    .await;
    let g = &job["result"]["gate"];
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(g["holdout_samples"], 60);
    assert_eq!(g["recall"], 1.0, "{g}");
    assert!(g["f1"].as_f64().unwrap() > 0.5, "{g}");
    assert_eq!(job["result"]["feature_names"], json!(["a", "b"]));
}

#[tokio::test]
async fn fleet_samples_train_a_model_when_training_has_the_fleet() {
    let api = start(None, None).await;
    let fleet = Fleet::new(None);
    for agent in ["a1", "a2"] {
        fleet.record_samples(Samples {
            agent_id: agent.into(),
            model: "edge".into(),
            feature_names: vec!["x".into(), "y".into()],
            rows: rows(60, 1.0).iter().map(|r| r.to_vec()).collect(),
        });
    }
    let body = json!({"model_id": "edge", "parameters": {"n_estimators": 10},
                      "training_data": {"source": "fleet_samples", "model": "edge", "max_rows": 100}});
    // The plain API has no fleet for training.
    let r = post(api.addr, body.clone()).await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert!(r.body["detail"].as_str().unwrap().contains("fleet samples"));
    let addr = with_sources(&api, fleet).await;
    let job = train(addr, body).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let r = &job["result"];
    assert_eq!(r["feature_names"], json!(["x", "y"]));
    assert_eq!(r["n_training_samples"], 80); // 100 newest rows, 20 held back
    assert!(
        r["training_data"]
            .as_str()
            .unwrap()
            .contains("fleet samples of edge")
    );
    let none = post(
        addr,
        json!({"training_data": {"source": "fleet_samples", "model": "other"}}),
    )
    .await;
    assert_eq!(none.status, 422);
    assert!(
        none.body["detail"]
            .as_str()
            .unwrap()
            .contains("no fleet samples")
    );
}

#[tokio::test]
async fn bad_requests_are_refused_with_a_message() {
    let api = start(None, None).await;
    let data = rows(50, 0.0);
    let cases = [
        (
            json!({"training_data": data, "model_type": "forest"}),
            422,
            "unknown model_type",
        ),
        (
            json!({"training_data": data, "model_type": "autoencoder", "parameters": {"n_estimators": 5}}),
            422,
            "does not apply",
        ),
        (
            json!({"training_data": data, "model_type": "lstm", "parameters": {"window": 1}}),
            422,
            "window must be between",
        ),
        (
            json!({"training_data": data, "model_type": "autoencoder", "parameters": {"epochs": 0}}),
            422,
            "epochs must be between",
        ),
        (
            json!({"training_data": data, "model_type": "lstm", "parameters": {"window": 64}}),
            422,
            "needs at least 65 rows",
        ),
        (
            json!({"training_data": data, "threshold": 1.5}),
            422,
            "threshold",
        ),
        (
            json!({"training_data": data, "model_id": "no spaces"}),
            422,
            "model_id",
        ),
        (
            json!({"training_data": {"source": "kafka", "topic": "events"}}),
            400,
            "kafka is not configured",
        ),
        (
            json!({"training_data": {"source": "ftp"}}),
            422,
            "unknown variant",
        ),
        (
            json!({"training_data": data, "holdout": {"source": "fleet_samples", "model": "m"}}),
            400,
            "holdout cannot come from fleet samples",
        ),
        (json!({"training_data": 5}), 422, "csv path"),
        (
            json!({"training_data": data, "epochs": 3}),
            422,
            "unknown field",
        ),
    ];
    for (body, status, needle) in cases {
        let r = post(api.addr, body.clone()).await;
        assert_eq!(r.status, status, "{body}: {:?}", r.body);
        let detail = r.body["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(needle), "{body}: {detail}");
    }
}

#[tokio::test]
async fn the_submit_command_follows_a_job_to_its_result() {
    let api = start(None, None).await;
    let mut csv = String::from("x,y\n");
    for [a, b] in rows(100, 0.0) {
        csv.push_str(&format!("{a},{b}\n"));
    }
    std::fs::write(api.state.limits.data_dir.join("train.csv"), csv).unwrap();
    let args = sad_coordinator::train_cmd::SubmitArgs {
        api: format!("http://{}", api.addr),
        token: None,
        model_type: "autoencoder".into(),
        name: Some("cli_ae".into()),
        csv: Some("train.csv".into()),
        fleet_samples: None,
        kafka_topic: None,
        partitions: Vec::new(),
        start_offset: None,
        end_offset: None,
        max_rows: None,
        params: r#"{"epochs": 2, "batch_size": 16}"#.into(),
        threshold: None,
        no_gate: false,
        timeout_s: 120,
    };
    let result = tokio::task::spawn_blocking(move || sad_coordinator::train_cmd::submit(&args))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(result["model_id"], "cli_ae");
    assert_eq!(result["model_type"], "autoencoder");
    assert_eq!(result["gate"]["passed"], true);
    // A refused request is an error that carries the API's message.
    let bad = sad_coordinator::train_cmd::SubmitArgs {
        api: format!("http://{}", api.addr),
        token: None,
        model_type: "ewma".into(),
        name: None,
        csv: Some("missing.csv".into()),
        fleet_samples: None,
        kafka_topic: None,
        partitions: Vec::new(),
        start_offset: None,
        end_offset: None,
        max_rows: None,
        params: "{}".into(),
        threshold: None,
        no_gate: false,
        timeout_s: 10,
    };
    let e = tokio::task::spawn_blocking(move || sad_coordinator::train_cmd::submit(&bad))
        .await
        .unwrap()
        .unwrap_err();
    assert!(e.to_string().contains("not found"), "{e}");
}
