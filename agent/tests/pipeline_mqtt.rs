//! The MQTT source against a real Mosquitto: JSON objects, JSON arrays and
//! CSV lines become events keyed by a topic level; bad payloads are counted
//! by reason and skipped while the source keeps running.

mod support;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use rumqttc::{AsyncClient, MqttOptions, QoS};
use sad_agent::sources::mqtt::MqttSourceConfig;
use sad_agent::sources::{BadInputReporter, MappingConfig, SeriesKey};
use support::Mosquitto;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_payloads_of_every_format_become_events_and_bad_ones_are_skipped() {
    let broker = Mosquitto::start();
    let mut mapping = MappingConfig::new(&["temp", "rpm"]);
    mapping.series = Some(SeriesKey {
        field: None,
        topic_level: Some(1),
        fixed: None,
    });
    let cfg = MqttSourceConfig {
        name: "sensors".into(),
        url: format!("mqtt://127.0.0.1:{}", broker.port),
        topics: vec!["plant/+/telemetry".into()],
        client_id: None,
        username: None,
        password: None,
        keep_alive_s: 30,
        model: None,
        mapping,
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let bad = Arc::new(AtomicU64::new(0));
    let reporter = BadInputReporter::new(None, bad.clone());
    let stop = CancellationToken::new();
    let task = tokio::spawn(cfg.run("edge-1".into(), tx, reporter.clone(), stop.clone()));

    let mut opts = MqttOptions::new("publisher", "127.0.0.1", broker.port);
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(opts, 64);
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });

    let payloads: [(&str, &str); 6] = [
        ("plant/m1/telemetry", r#"{"temp": 71.5, "rpm": 1200}"#),
        ("plant/m2/telemetry", "[20.0, 900]"),
        ("plant/m3/telemetry", "19.5,1000"),
        ("plant/m1/telemetry", "not a payload"),
        ("plant/m1/telemetry", r#"{"temp": 70.0}"#),
        ("plant/m4/telemetry", r#"{"temp": 1e999, "rpm": 1}"#),
    ];
    // The subscription may not be in place yet: publish until the first event comes.
    let first = loop {
        let (topic, body) = payloads[0];
        client
            .publish(topic, QoS::AtLeastOnce, false, body)
            .await
            .unwrap();
        if let Ok(Some(env)) = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await {
            break env;
        }
    };
    assert_eq!(first.event.series, "m1");
    assert_eq!(first.event.values, vec![71.5, 1200.0]);
    assert_eq!(first.source.feature_names, vec!["temp", "rpm"]);
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await {}

    for (topic, body) in &payloads[1..] {
        client
            .publish(*topic, QoS::AtLeastOnce, false, *body)
            .await
            .unwrap();
    }
    let mut got = Vec::new();
    while got.len() < 2 {
        let env = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("events within 10 s")
            .expect("the source is running");
        got.push((env.event.series, env.event.values));
    }
    assert_eq!(got[0], ("m2".to_string(), vec![20.0, 900.0]));
    assert_eq!(got[1], ("m3".to_string(), vec![19.5, 1000.0]));
    // the three bad payloads (unparsable, missing field, non-finite) are counted, not delivered
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while reporter.total() < 3 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(reporter.total(), 3, "bad payloads counted");
    assert!(
        tokio::time::timeout(Duration::from_millis(500), rx.recv())
            .await
            .is_err(),
        "no event from a bad payload"
    );
    assert!(
        !task.is_finished(),
        "the source keeps running after bad input"
    );
    stop.cancel();
    task.await.unwrap().unwrap();
}
