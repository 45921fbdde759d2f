//! Kafka bridge and central detection against a real Kafka-protocol broker
//! (tansu) and Mosquitto. Without the tansu binary these tests fail, unless
//! `SAD_SKIP_KAFKA=1`.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sad_common::AlertRecord;
use sad_coordinator::central::{CentralPipeline, run_central_detection};
use sad_coordinator::fleet::Fleet;
use sad_coordinator::intake::{IntakeConfig, run_intake};
use sad_coordinator::kafka::{AlertSink, KafkaConfig, ensure_topics};
use sad_coordinator::metrics::CoordinatorMetrics;
use support::*;
use tokio_util::sync::CancellationToken;

fn kafka_config(t: &Tansu, tag: &str) -> KafkaConfig {
    KafkaConfig {
        brokers: t.brokers(),
        output_topic: format!("alerts-{tag}"),
        input_topic: format!("events-{tag}"),
        group_id: format!("group-{tag}"),
        partitions: 3,
        replication: 1,
    }
}

/// One output record as read back.
#[derive(Debug)]
struct Read {
    key: String,
    alert_id_header: String,
    record: AlertRecord,
}

/// Reads the topic from the start until `until(records)` holds or `timeout` passes.
async fn read_topic(
    cfg: &KafkaConfig,
    topic: &str,
    timeout: Duration,
    mut until: impl FnMut(&[Read]) -> bool,
) -> Vec<Read> {
    let consumer: StreamConsumer = cfg
        .client_config()
        .set("group.id", format!("reader-{}", free_port()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut out = Vec::new();
    let end = Instant::now() + timeout;
    while Instant::now() < end && !until(&out) {
        if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await {
            let record: AlertRecord =
                serde_json::from_slice(m.payload().unwrap()).expect("readable json value");
            let alert_id_header = m
                .headers()
                .and_then(|h| h.iter().find(|h| h.key == "alert_id"))
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default();
            out.push(Read {
                key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                alert_id_header,
                record,
            });
        }
    }
    out
}

struct Bridge {
    store: sad_coordinator::store::AlertStore,
    metrics: CoordinatorMetrics,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

async fn start_bridge(mqtt: &Mosquitto, cfg: &KafkaConfig) -> Bridge {
    ensure_topics(cfg).await.expect("topics created");
    let (dir, store) = temp_store();
    let metrics = CoordinatorMetrics::new().unwrap();
    let sink = Arc::new(AlertSink::kafka(cfg, Some(metrics.clone())).unwrap());
    let shutdown = CancellationToken::new();
    tokio::spawn({
        let cfg = IntakeConfig {
            mqtt_url: mqtt.url(),
            topic_prefix: "sad/v1".into(),
            share_group: Some("coord".into()),
            client_id: format!("coordinator-{}", free_port()),
        };
        let (store, metrics, shutdown) = (store.clone(), metrics.clone(), shutdown.clone());
        async move {
            run_intake(cfg, store, sink, Fleet::new(None), metrics, shutdown)
                .await
                .unwrap()
        }
    });
    Bridge {
        store,
        metrics,
        shutdown,
        _dir: dir,
    }
}

async fn until_intake_listens(agent: &FakeAgent) {
    for _ in 0..100 {
        agent.send([1]).await;
        if wait_until_async(Duration::from_millis(500), || agent.acked() >= 1).await {
            return;
        }
    }
    panic!("the intake never acked the probe alert");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_from_an_agent_arrive_in_kafka_once_per_alert_id_keyed_by_series() {
    if skip_kafka() {
        return;
    }
    let kafka = Tansu::start();
    let mqtt = Mosquitto::start();
    let cfg = kafka_config(&kafka, "bridge");
    let bridge = start_bridge(&mqtt, &cfg).await;
    let agent = FakeAgent::connect(mqtt.port, "edge-1").await;
    until_intake_listens(&agent).await;
    for first in (1..=300u64).step_by(25) {
        agent.send(first..first + 25).await;
    }
    agent.send(100..150).await; // a re-send after a pretend timeout
    assert!(
        wait_until_async(Duration::from_secs(60), || agent.acked() >= 300).await,
        "acked only up to {}",
        agent.acked()
    );
    let records = read_topic(&cfg, &cfg.output_topic, Duration::from_secs(60), |r| {
        let ids: std::collections::BTreeSet<_> = r.iter().map(|x| &x.record.alert_id).collect();
        ids.len() >= 300
    })
    .await;
    let mut per_id: BTreeMap<String, usize> = BTreeMap::new();
    for r in &records {
        *per_id.entry(r.record.alert_id.clone()).or_default() += 1;
        assert_eq!(r.key, r.record.series, "key = series");
        assert_eq!(r.alert_id_header, r.record.alert_id);
        assert_eq!(r.record.schema, AlertRecord::SCHEMA);
    }
    println!(
        "{} records in kafka, {} distinct alert ids, {} stored, {} duplicates dropped by the store",
        records.len(),
        per_id.len(),
        bridge.store.len(),
        bridge.metrics.alerts_duplicate.get()
    );
    assert_eq!(
        per_id.len(),
        300,
        "every alert once after dedupe by alert_id"
    );
    for seq in 1..=300 {
        assert!(
            per_id.contains_key(&format!("edge-1:{seq}")),
            "edge-1:{seq} missing"
        );
    }
    assert_eq!(bridge.store.len(), 300);
    bridge.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_ack_is_published_while_kafka_is_down_and_acks_resume_when_it_is_back() {
    if skip_kafka() {
        return;
    }
    let mut kafka = Tansu::start();
    let mqtt = Mosquitto::start();
    let cfg = kafka_config(&kafka, "outage");
    let bridge = start_bridge(&mqtt, &cfg).await;
    let agent = FakeAgent::connect(mqtt.port, "edge-1").await;
    until_intake_listens(&agent).await;
    agent.send(1..=10).await;
    assert!(wait_until_async(Duration::from_secs(30), || agent.acked() >= 10).await);

    kafka.stop();
    agent.send(11..=20).await;
    // The store has the alerts, but Kafka does not: no ack.
    assert!(wait_until_async(Duration::from_secs(10), || bridge.store.len() >= 20).await);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = agent.acked();
    println!(
        "during the outage: stored {}, acked up to {during}, delivery errors {}",
        bridge.store.len(),
        bridge.metrics.kafka_delivery_errors.get()
    );
    assert_eq!(during, 10, "an ack was published while kafka was down");

    kafka.restart();
    ensure_topics(&cfg).await.expect("topics re-created");
    let back = wait_until_async(Duration::from_secs(90), || agent.acked() >= 20).await;
    println!("after the restart: acked up to {}", agent.acked());
    assert!(back, "acks did not resume after kafka came back");
    // Wait for every alert of the outage batch: they sit in several
    // partitions, so seeing one of them says nothing about the others.
    let has = |r: &[Read], seq: u64| {
        let id = format!("edge-1:{seq}");
        r.iter().any(|x: &Read| x.record.alert_id == id)
    };
    let records = read_topic(&cfg, &cfg.output_topic, Duration::from_secs(60), |r| {
        (11..=20).all(|seq| has(r, seq))
    })
    .await;
    for seq in 11..=20 {
        assert!(has(&records, seq), "edge-1:{seq} acked but not in kafka");
    }
    bridge.shutdown.cancel();
}

/// Produces `payloads` (then one undecodable record) to the input topic,
/// keyed `pump-1`, on `partition` if given.
async fn produce_input(cfg: &KafkaConfig, partition: Option<i32>, payloads: Vec<String>) {
    let producer: FutureProducer = cfg.client_config().create().unwrap();
    for payload in payloads.iter().map(String::as_str).chain(["garbage"]) {
        let mut record = FutureRecord::to(&cfg.input_topic)
            .key("pump-1")
            .payload(payload);
        if let Some(p) = partition {
            record = record.partition(p);
        }
        producer
            .send(record, Duration::from_secs(10))
            .await
            .expect("input produced");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn central_detection_turns_a_spike_in_the_input_topic_into_a_stored_and_published_alert() {
    if skip_kafka() {
        return;
    }
    let kafka = Tansu::start();
    let cfg = kafka_config(&kafka, "central");
    ensure_topics(&cfg).await.expect("topics created");
    let payloads = (0..200i64)
        .map(|i| {
            let v = if i == 150 {
                500.0
            } else {
                20.0 + (i % 7) as f64 * 0.2
            };
            let ts = 1_700_000_000_000 + i * 1000;
            if i % 2 == 0 {
                format!(r#"{{"series":"pump-1","ts_ms":{ts},"values":[{v}]}}"#)
            } else {
                format!(r#"{{"series":"pump-1","timestamp":{ts},"value":{v}}}"#)
            }
        })
        .collect();
    produce_input(&cfg, None, payloads).await;

    let (_dir, store) = temp_store();
    let metrics = CoordinatorMetrics::new().unwrap();
    let sink = Arc::new(AlertSink::kafka(&cfg, Some(metrics.clone())).unwrap());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn({
        let (cfg, store, metrics, shutdown) = (
            cfg.clone(),
            store.clone(),
            metrics.clone(),
            shutdown.clone(),
        );
        async move {
            run_central_detection(
                &cfg,
                CentralPipeline::streaming(),
                store,
                sink,
                metrics,
                shutdown,
            )
            .await
            .unwrap()
        }
    });
    assert!(
        wait_until_async(Duration::from_secs(60), || !store.is_empty()).await,
        "no alert stored"
    );
    let stored = store.query(&Default::default()).unwrap();
    let spike = stored
        .iter()
        .find(|s| s.alert.values == vec![500.0])
        .expect("the spike raised an alert");
    let records = read_topic(&cfg, &cfg.output_topic, Duration::from_secs(30), |r| {
        r.iter()
            .any(|x| x.record.alert_id == spike.alert.alert_id())
    })
    .await;
    assert!(
        records
            .iter()
            .any(|x| x.record.alert_id == spike.alert.alert_id())
    );

    // Offsets are committed up to the end of the input (201 records over 3 partitions).
    let consumer: rdkafka::consumer::BaseConsumer = cfg
        .client_config()
        .set("group.id", &cfg.group_id)
        .create()
        .unwrap();
    let topic = cfg.input_topic.clone();
    let mut committed_total = 0i64;
    for _ in 0..60 {
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in 0..cfg.partitions {
            tpl.add_partition(&topic, p);
        }
        let c = consumer
            .committed_offsets(tpl, Duration::from_secs(5))
            .unwrap();
        committed_total = c
            .elements()
            .iter()
            .map(|e| match e.offset() {
                rdkafka::Offset::Offset(o) => o,
                _ => 0,
            })
            .sum();
        if committed_total >= 201 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "{} alerts stored, spike alert {} (score {:.3}), {} output records, committed offsets sum {committed_total}, rejected inputs {}",
        store.len(),
        spike.alert.alert_id(),
        spike.alert.score,
        records.len(),
        metrics
            .frames_rejected
            .with_label_values(&["central_input"])
            .get()
    );
    assert_eq!(committed_total, 201);
    assert_eq!(
        metrics
            .frames_rejected
            .with_label_values(&["central_input"])
            .get(),
        1
    );
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
}

/// Measurement (run explicitly): intake rate MQTT → Kafka with acks, and the
/// agent-to-Kafka latency at an offered 1,000 alerts/s.
///
/// `cargo test --release -p sad-coordinator --test kafka_bridge -- --ignored --nocapture measure`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; prints alerts/s and p99 latency"]
async fn measure_intake_rate_and_agent_to_kafka_latency() {
    if skip_kafka() {
        return;
    }
    let kafka = Tansu::start();
    let mqtt = Mosquitto::start();
    let cfg = kafka_config(&kafka, "measure");
    let bridge = start_bridge(&mqtt, &cfg).await;
    let agent = FakeAgent::connect(mqtt.port, "edge-1").await;
    until_intake_listens(&agent).await;

    // 1. Paced: 1,000 alerts/s for 10 s in batches of 10 every 10 ms; the
    // alert's ts_ms is its publish time, the reader's receive time closes it.
    let total = 10_000u64;
    let start = Instant::now();
    let mut seq = 2u64;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while seq < 2 + total {
        tick.tick().await;
        agent.send(seq..seq + 10).await;
        seq += 10;
    }
    let last = seq - 1;
    assert!(wait_until_async(Duration::from_secs(120), || agent.acked() >= last).await);
    let paced_secs = start.elapsed().as_secs_f64();
    // Agent-to-Kafka latency, bounded above by publish-to-ack: the ack is
    // published only after Kafka's delivery report for the whole batch.
    let acks = agent.acks.lock().unwrap().clone();
    // Publish instant of each batch is reconstructed from the pacing (10 ms apart).
    let mut lat_ms: Vec<f64> = Vec::new();
    for b in 0..(total / 10) {
        let batch_last = 2 + b * 10 + 9;
        let sent = start + Duration::from_millis(10 * b);
        if let Some((at, _)) = acks.iter().find(|(_, s)| *s >= batch_last) {
            lat_ms.push(at.saturating_duration_since(sent).as_secs_f64() * 1000.0);
        }
    }
    lat_ms.sort_by(f64::total_cmp);
    let pct = |p: f64| lat_ms[((lat_ms.len() as f64 - 1.0) * p).round() as usize];

    // 2. Flat out: 20,000 alerts in batches of 100, as fast as acks allow.
    let first = last + 1;
    let n = 20_000u64;
    let t0 = Instant::now();
    let mut s = first;
    while s < first + n {
        agent.send(s..s + 100).await;
        s += 100;
    }
    assert!(wait_until_async(Duration::from_secs(300), || agent.acked() >= first + n - 1).await);
    let rate = n as f64 / t0.elapsed().as_secs_f64();
    println!(
        "paced 1000 alerts/s: {total} alerts in {paced_secs:.1} s, publish-to-ack (after kafka delivery) latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms over {} batches",
        pct(0.5),
        pct(0.99),
        pct(1.0),
        lat_ms.len()
    );
    println!(
        "flat out: {n} alerts in batches of 100 acked after kafka delivery at {rate:.0} alerts/s; stored {}",
        bridge.store.len()
    );
    bridge.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn training_data_from_kafka_is_exactly_the_offset_range_asked_for() {
    use sad_coordinator::training::{KafkaRange, read_kafka_range};
    if skip_kafka() {
        return;
    }
    let kafka = Tansu::start();
    let cfg = kafka_config(&kafka, "train");
    ensure_topics(&cfg).await.expect("topics created");
    // 300 events of 3 values on partition 0 (offsets 0..300) and one undecodable record
    let payloads = (0..300i64)
        .map(|i| {
            format!(
                r#"{{"series":"pump-1","ts_ms":{},"values":[{},{},{}]}}"#,
                1_700_000_000_000 + i * 1000,
                i as f64,
                (i % 5) as f64,
                1.0
            )
        })
        .collect();
    produce_input(&cfg, Some(0), payloads).await;
    let range = KafkaRange {
        topic: cfg.input_topic.clone(),
        partitions: Some(vec![0]),
        start_offset: Some(100),
        end_offset: Some(250),
        max_rows: 0,
        timeout: Duration::from_secs(60),
        ..KafkaRange::default()
    };
    let (c, r) = (cfg.clone(), range.clone());
    let data = tokio::task::spawn_blocking(move || read_kafka_range(&c, &r))
        .await
        .unwrap()
        .expect("range read");
    assert_eq!((data.n_rows(), data.width), (150, 3));
    // offsets 100..250 carry values 100..249 in their first column, in order
    let firsts: Vec<f64> = data.rows.chunks_exact(3).map(|r| r[0]).collect();
    assert_eq!(firsts.first(), Some(&100.0));
    assert_eq!(firsts.last(), Some(&249.0));
    // the whole partition: 300 decodable records, the garbage one skipped
    let all = KafkaRange {
        start_offset: None,
        end_offset: None,
        ..range.clone()
    };
    let c = cfg.clone();
    let data = tokio::task::spawn_blocking(move || read_kafka_range(&c, &all))
        .await
        .unwrap()
        .expect("whole partition read");
    assert_eq!(data.n_rows(), 300);
    // an unknown topic is a clear error
    let missing = KafkaRange {
        topic: "no-such-topic".into(),
        partitions: None,
        ..range
    };
    let c = cfg.clone();
    let err = tokio::task::spawn_blocking(move || read_kafka_range(&c, &missing))
        .await
        .unwrap()
        .unwrap_err()
        .to_string();
    assert!(err.contains("no-such-topic"), "{err}");
}
