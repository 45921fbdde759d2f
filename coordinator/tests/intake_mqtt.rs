//! Alert intake against a real Mosquitto (and the embedded rumqttd) with a fake agent.

mod support;

use std::sync::Arc;
use std::time::Duration;

use sad_common::{Heartbeat, Topics, frame};
use sad_coordinator::fleet::Fleet;
use sad_coordinator::intake::{IntakeConfig, run_intake};
use sad_coordinator::kafka::AlertSink;
use sad_coordinator::metrics::CoordinatorMetrics;
use sad_coordinator::store::AlertStore;
use support::*;
use tokio_util::sync::CancellationToken;

struct Running {
    store: AlertStore,
    fleet: Fleet,
    metrics: CoordinatorMetrics,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

fn start_intake(url: String, share_group: Option<&str>) -> Running {
    let (dir, store) = temp_store();
    let metrics = CoordinatorMetrics::new().unwrap();
    let fleet = Fleet::new(Some(metrics.clone()));
    let shutdown = CancellationToken::new();
    let cfg = IntakeConfig {
        mqtt_url: url,
        topic_prefix: "sad/v1".into(),
        share_group: share_group.map(str::to_string),
        client_id: format!("coordinator-{}", free_port()),
    };
    let task = tokio::spawn({
        let (store, fleet, metrics, shutdown) = (
            store.clone(),
            fleet.clone(),
            metrics.clone(),
            shutdown.clone(),
        );
        async move {
            run_intake(
                cfg,
                store,
                Arc::new(AlertSink::store_only()),
                fleet,
                metrics,
                shutdown,
            )
            .await
            .unwrap();
        }
    });
    Running {
        store,
        fleet,
        metrics,
        shutdown,
        task,
        _dir: dir,
    }
}

/// Re-sends seq 1 until the intake acks it (its subscription is then in place).
async fn until_intake_listens(agent: &FakeAgent) {
    for _ in 0..100 {
        agent.send([1]).await;
        if wait_until_async(Duration::from_millis(200), || agent.acked() >= 1).await {
            return;
        }
    }
    panic!("the intake never acked the probe alert");
}

async fn every_alert_is_stored_once_and_acked(url: String, port: u16, share: Option<&str>) {
    let run = start_intake(url, share);
    let agent = FakeAgent::connect(port, "edge-1").await;
    until_intake_listens(&agent).await;

    // 200 alerts in batches of 20, one batch re-sent, one garbage frame and one
    // frame of another agent on this agent's topic.
    for first in (1..=200u64).step_by(20) {
        agent.send(first..first + 20).await;
        if first == 101 {
            agent.send(41..61).await;
            agent.publish_raw(vec![1, 0xff, 0xfe, 0x00]).await;
            let other = sad_common::AlertBatch {
                agent_id: "edge-2".into(),
                alerts: vec![alert("edge-2", 1, "s", 1)],
            };
            agent.publish_raw(frame::encode(&other).unwrap()).await;
        }
    }
    assert!(
        wait_until_async(Duration::from_secs(30), || agent.acked() >= 200).await,
        "acked only up to {}",
        agent.acked()
    );
    let acks: Vec<u64> = agent.acks.lock().unwrap().iter().map(|(_, s)| *s).collect();
    let received = run.metrics.alerts_received.get();
    let duplicates = run.metrics.alerts_duplicate.get();
    let rejected_batch = run
        .metrics
        .frames_rejected
        .with_label_values(&["alert_batch"])
        .get();
    let rejected_agent = run
        .metrics
        .frames_rejected
        .with_label_values(&["agent_mismatch"])
        .get();
    println!(
        "stored {} alerts, received {received}, duplicates {duplicates}, rejected frames: \
         {rejected_batch} malformed + {rejected_agent} of another agent, {} acks, last {}",
        run.store.len(),
        acks.len(),
        acks.last().unwrap()
    );
    assert_eq!(run.store.len(), 200);
    for seq in 1..=200 {
        assert!(
            run.store.get(&format!("edge-1:{seq}")).unwrap().is_some(),
            "seq {seq} missing"
        );
    }
    assert!(run.store.get("edge-2:1").unwrap().is_none());
    assert!(
        acks.windows(2).all(|w| w[0] <= w[1]),
        "acks went back: {acks:?}"
    );
    assert_eq!(*acks.last().unwrap(), 200);
    assert!(duplicates >= 20, "{duplicates}");
    assert_eq!(received - duplicates, 200);
    assert_eq!(rejected_batch, 1);
    assert_eq!(rejected_agent, 1);

    // A heartbeat reaches the fleet view.
    let hb = Heartbeat {
        agent_id: "edge-1".into(),
        ts_ms: now_ms(),
        online: true,
        uptime_s: 3,
        models: vec![],
        events_processed: 1,
        anomalies: 0,
        bad_input: 0,
        outbox_depth: 4,
        outbox_bytes: 40,
        rss_bytes: 1,
        group: None,
        score_summary: None,
    };
    agent
        .client
        .publish(
            Topics::default().status("edge-1").unwrap(),
            rumqttc::QoS::AtLeastOnce,
            true,
            frame::encode(&hb).unwrap(),
        )
        .await
        .unwrap();
    assert!(wait_until_async(Duration::from_secs(10), || run.fleet.online() == 1).await);
    assert_eq!(run.fleet.agent("edge-1").unwrap().heartbeat.outbox_depth, 4);

    run.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), run.task)
        .await
        .expect("intake stops on shutdown")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_through_mosquitto_are_stored_once_and_acked_and_bad_frames_are_skipped() {
    let broker = Mosquitto::start();
    every_alert_is_stored_once_and_acked(broker.url(), broker.port, Some("coord")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_through_the_embedded_broker_with_a_shared_subscription_are_stored_and_acked() {
    let dir = tempfile::tempdir().unwrap();
    let broker = sad_coordinator::broker::start_embedded_broker(
        "127.0.0.1:0".parse().unwrap(),
        &dir.path().join("mqtt"),
    )
    .unwrap();
    println!("embedded broker at {}", broker.url);
    every_alert_is_stored_once_and_acked(broker.url.clone(), broker.addr.port(), Some("coord"))
        .await;
}
