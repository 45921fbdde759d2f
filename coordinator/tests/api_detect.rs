//! REST detect, models, training jobs and rules, over a loopback socket.

mod api_common;

use api_common::{call, start};
use proptest::prelude::*;
use serde_json::json;

const SEED: &str =
    r#"{"data": [1.2, 3.4, 5.6, 7.8], "model_type": "isolation_forest", "threshold": 0.1}"#;

#[tokio::test]
async fn the_seed_example_answers_with_scalar_scores_from_the_default_model() {
    let api = start(None, None).await;
    let r = call(api.addr, "POST", "/api/v1/detect", Some(SEED), &[]).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let b = &r.body;
    assert_eq!(b["model_id"], "isolation_forest_default");
    assert_eq!(b["model_type"], "isolation_forest");
    assert_eq!(b["n_samples"], 1);
    assert_eq!(b["threshold"], 0.1);
    let s = b["anomaly_score"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&s));
    assert_eq!(b["is_anomaly"].as_bool().unwrap(), s > 0.1);
    assert!(b["raw_score"].is_number() && b["confidence"].is_number());
}

#[tokio::test]
async fn a_batch_answers_with_lists_and_counts_its_anomalies() {
    let api = start(None, None).await;
    let body = json!({"data": [[1.2, 3.4, 5.6, 7.8], [50.0, -50.0, 50.0, -50.0]]}).to_string();
    let r = call(api.addr, "POST", "/api/v1/detect", Some(&body), &[]).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let flags = r.body["is_anomaly"].as_array().unwrap();
    assert_eq!(flags.len(), 2);
    assert_eq!(flags[1], true);
    assert_eq!(flags[0], false);
    assert_eq!(r.body["anomalies_detected"], 1);
    assert_eq!(r.body["anomaly_score"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn a_large_batch_is_scored_like_a_small_one() {
    let api = start(None, None).await;
    let rows: Vec<[f64; 4]> = (0..3000)
        .map(|i| [1.2 + (i % 7) as f64 * 0.1, 3.4, 5.6, 7.8])
        .collect();
    let body = json!({"data": rows}).to_string();
    let r = call(api.addr, "POST", "/api/v1/detect", Some(&body), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["n_samples"], 3000);
    let small = json!({"data": rows[..7].to_vec()}).to_string();
    let s = call(api.addr, "POST", "/api/v1/detect", Some(&small), &[]).await;
    assert_eq!(
        s.body["anomaly_score"].as_array().unwrap()[..],
        r.body["anomaly_score"].as_array().unwrap()[..7]
    );
}

#[tokio::test]
async fn a_mid_size_batch_scores_each_row_as_alone() {
    // 128..=1024 rows may be split in halves scored on two cores (when no
    // other detect request is in flight); the scores must not depend on it.
    let api = start(None, None).await;
    let rows: Vec<[f64; 4]> = (0..301)
        .map(|i| [1.2 + (i % 13) as f64 * 0.3, 3.4 - (i % 5) as f64, 5.6, 7.8])
        .collect();
    let body = json!({"data": rows}).to_string();
    let r = call(api.addr, "POST", "/api/v1/detect", Some(&body), &[]).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let batch = r.body["raw_score"].as_array().unwrap().clone();
    assert_eq!(batch.len(), 301);
    for (i, row) in rows
        .iter()
        .enumerate()
        .step_by(37)
        .chain([(300, &rows[300])])
    {
        let one = json!({"data": row}).to_string();
        let s = call(api.addr, "POST", "/api/v1/detect", Some(&one), &[]).await;
        assert_eq!(s.body["raw_score"], batch[i], "row {i}");
    }
}

#[tokio::test]
async fn bad_inputs_get_json_errors_with_a_message() {
    let api = start(
        None,
        Some(sad_coordinator::api::ApiLimits {
            max_body_bytes: 4096,
            max_batch_rows: 3,
            ..Default::default()
        }),
    )
    .await;
    for (body, status) in [
        (r#"{"data": [1, 2, 3]}"#.to_string(), 422),
        (r#"{"data": []}"#.to_string(), 422),
        (r#"{"data": [[1,2,3,4],[1,2,3]]}"#.to_string(), 422),
        (r#"{"data": [1,2,3,4], "threshold": 3}"#.to_string(), 422),
        (
            r#"{"data": [1,2,3,4], "model_type": "nope"}"#.to_string(),
            422,
        ),
        (
            r#"{"data": [1,2,3,4], "model_id": "missing"}"#.to_string(),
            404,
        ),
        (
            r#"{"data": [[1,2,3,4],[1,2,3,4],[1,2,3,4],[1,2,3,4]]}"#.to_string(),
            422,
        ),
        ("not json".to_string(), 422),
        (
            format!(r#"{{"data": [{}]}}"#, vec!["1.0"; 2000].join(",")),
            413,
        ),
    ] {
        let r = call(api.addr, "POST", "/api/v1/detect", Some(&body), &[]).await;
        assert_eq!(r.status, status, "{body:.80}: {:?}", r.body);
        assert!(
            r.body["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{:?}",
            r.body
        );
    }
    let r = call(api.addr, "GET", "/api/v1/nothing", None, &[]).await;
    assert_eq!(r.status, 404);
    assert!(r.body["detail"].is_string());
}

#[tokio::test]
async fn mutating_routes_need_the_bearer_token_when_one_is_set() {
    let api = start(Some("secret-token-1"), None).await;
    let r = call(api.addr, "POST", "/api/v1/detect", Some(SEED), &[]).await;
    assert_eq!(r.status, 401);
    assert!(r.body["detail"].is_string());
    let r = call(
        api.addr,
        "POST",
        "/api/v1/detect",
        Some(SEED),
        &[("Authorization", "Bearer wrong-token-1")],
    )
    .await;
    assert_eq!(r.status, 401);
    let r = call(
        api.addr,
        "POST",
        "/api/v1/detect",
        Some(SEED),
        &[("Authorization", "Bearer secret-token-1")],
    )
    .await;
    assert_eq!(r.status, 200);
    let r = call(api.addr, "GET", "/api/v1/models", None, &[]).await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn training_runs_as_a_job_and_the_new_model_serves_detect() {
    let api = start(None, None).await;
    let rows: Vec<[f64; 2]> = (0..200)
        .map(|i| [(i % 10) as f64, (i % 7) as f64])
        .collect();
    let body =
        json!({"training_data": rows, "model_id": "two_d", "parameters": {"n_estimators": 20}})
            .to_string();
    let r = call(api.addr, "POST", "/api/v1/models/train", Some(&body), &[]).await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let id = r.body["job_id"].as_u64().unwrap();
    let mut status = String::new();
    for _ in 0..500 {
        let j = call(api.addr, "GET", &format!("/api/v1/jobs/{id}"), None, &[]).await;
        status = j.body["status"].as_str().unwrap().to_string();
        if status == "succeeded" || status == "failed" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(status, "succeeded");
    let d = call(
        api.addr,
        "POST",
        "/api/v1/detect",
        Some(r#"{"data": [1, 2], "model_id": "two_d"}"#),
        &[],
    )
    .await;
    assert_eq!(d.status, 200, "{:?}", d.body);
    assert_eq!(d.body["model_id"], "two_d");
    let models = call(api.addr, "GET", "/api/v1/models", None, &[]).await;
    assert_eq!(models.body["count"], 2);
}

#[tokio::test]
async fn training_refuses_paths_outside_the_data_dir_and_too_little_data() {
    let api = start(None, None).await;
    let r = call(
        api.addr,
        "POST",
        "/api/v1/models/train",
        Some(r#"{"training_data": "../../etc/passwd"}"#),
        &[],
    )
    .await;
    assert!(r.status == 404 || r.status == 422, "{}", r.status);
    let r = call(
        api.addr,
        "POST",
        "/api/v1/models/train",
        Some(r#"{"training_data": [[1],[2]], "model_type": "lstm"}"#),
        &[],
    )
    .await;
    assert_eq!(r.status, 422);
    assert!(
        r.body["detail"]
            .as_str()
            .unwrap()
            .contains("needs at least")
    );
    let r = call(api.addr, "GET", "/api/v1/jobs/999", None, &[]).await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn rules_are_validated_stored_and_change_the_default_threshold() {
    let api = start(None, None).await;
    let r = call(
        api.addr,
        "GET",
        "/api/v1/models/isolation_forest_default/rules",
        None,
        &[],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["configured"], false);
    let bad = call(
        api.addr,
        "PUT",
        "/api/v1/models/isolation_forest_default/rules",
        Some(r#"{"hysteresis": 2}"#),
        &[],
    )
    .await;
    assert_eq!(bad.status, 422);
    let ok = call(
        api.addr,
        "PUT",
        "/api/v1/models/isolation_forest_default/rules",
        Some(r#"{"threshold": 0.99, "cooldown_ms": 5000}"#),
        &[],
    )
    .await;
    assert_eq!(ok.status, 200, "{:?}", ok.body);
    let r = call(
        api.addr,
        "GET",
        "/api/v1/models/isolation_forest_default/rules",
        None,
        &[],
    )
    .await;
    assert_eq!(r.body["rules"]["cooldown_ms"], 5000);
    let d = call(
        api.addr,
        "POST",
        "/api/v1/detect",
        Some(r#"{"data": [1.2, 3.4, 5.6, 7.8]}"#),
        &[],
    )
    .await;
    assert_eq!(d.body["threshold"], 0.99);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    /// Any body gets a JSON answer: 200 with scores, or an error with a message; never a crash.
    #[test]
    fn arbitrary_detect_bodies_get_a_json_answer(
        rows in prop::collection::vec(prop::collection::vec(prop::num::f64::ANY, 0..6), 0..5),
        single in any::<bool>(),
        threshold in prop::option::of(-1.0f64..2.0),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let api = start(None, None).await;
            let fmt = |v: &Vec<f64>| format!("[{}]", v.iter().map(|x| format!("{x:?}")).collect::<Vec<_>>().join(","));
            let data = if single {
                rows.first().map(fmt).unwrap_or_else(|| "[]".into())
            } else {
                format!("[{}]", rows.iter().map(fmt).collect::<Vec<_>>().join(","))
            };
            let mut body = format!(r#"{{"data": {data}"#);
            if let Some(t) = threshold { body.push_str(&format!(r#", "threshold": {t}"#)); }
            body.push('}');
            let r = call(api.addr, "POST", "/api/v1/detect", Some(&body), &[]).await;
            let valid_rows = if single { rows.first().map(|r| vec![r.clone()]).unwrap_or_default() } else { rows.clone() };
            let ok = !valid_rows.is_empty()
                && valid_rows.iter().all(|r| r.len() == 4 && r.iter().all(|x| x.is_finite()))
                && threshold.is_none_or(|t| (0.0..=1.0).contains(&t));
            if ok {
                prop_assert_eq!(r.status, 200, "{} -> {:?}", body, r.body);
                prop_assert_eq!(r.body["n_samples"].as_u64(), Some(valid_rows.len() as u64));
            } else {
                prop_assert!(r.status == 422 || r.status == 404, "{} -> {} {:?}", body, r.status, r.body);
                prop_assert!(r.body["detail"].is_string());
            }
            Ok(())
        })?;
    }
}
