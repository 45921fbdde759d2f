//! The uplink against a real Mosquitto and a fake coordinator: delivery,
//! acks, re-sends, broker restarts and the last will.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use sad_agent::uplink::run_uplink;
use support::{AgentParts, FakeCoordinator, Mosquitto, uplink_config, wait_until_async};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_reach_the_coordinator_and_the_outbox_empties_after_its_ack() {
    let broker = Mosquitto::start();
    let coord = FakeCoordinator::start(broker.port, "sad/v1");
    let agent = AgentParts::new("edge-1");
    let seqs = agent.raise(250);
    let stop = CancellationToken::new();
    let task = tokio::spawn(run_uplink(
        uplink_config(&broker),
        agent.shared.clone(),
        stop.clone(),
    ));

    let outbox = agent.shared.outbox.clone();
    assert!(
        wait_until_async(WAIT, || outbox.depth() == 0).await,
        "outbox never emptied"
    );
    // Alerts raised while connected go out too.
    let more = agent.raise(7);
    assert!(wait_until_async(WAIT, || outbox.depth() == 0).await);
    let distinct = coord.seen.lock().unwrap().distinct();
    let expected: std::collections::BTreeSet<u64> = seqs.iter().chain(&more).copied().collect();
    assert_eq!(distinct, expected);
    assert_eq!(agent.shared.metrics.alerts_acked.get(), 257);
    assert!(agent.shared.metrics.alerts_sent.get() >= 257);

    // Status: online with the outbox figures, then offline after shutdown.
    assert!(
        wait_until_async(WAIT, || coord
            .last_status("edge-1")
            .is_some_and(|h| h.online))
        .await
    );
    stop.cancel();
    tokio::time::timeout(WAIT, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        wait_until_async(WAIT, || coord
            .last_status("edge-1")
            .is_some_and(|h| !h.online))
        .await,
        "no offline status after a clean shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_alerts_are_resent_after_resend_after_until_an_ack_arrives() {
    let broker = Mosquitto::start();
    let coord = FakeCoordinator::start(broker.port, "sad/v1");
    coord.acking.store(false, Ordering::Relaxed);
    let agent = AgentParts::new("edge-2");
    agent.raise(3);
    let cfg = sad_agent::uplink::UplinkConfig {
        resend_after: Duration::from_millis(300),
        ..uplink_config(&broker)
    };
    let stop = CancellationToken::new();
    let task = tokio::spawn(run_uplink(cfg, agent.shared.clone(), stop.clone()));
    let seen = coord.seen.clone();
    assert!(
        wait_until_async(WAIT, || seen
            .lock()
            .unwrap()
            .seqs
            .iter()
            .filter(|&&s| s == 1)
            .count()
            >= 3)
        .await,
        "alert 1 was not re-sent"
    );
    assert_eq!(
        agent.shared.outbox.depth(),
        3,
        "nothing is deleted without an ack"
    );
    coord.acking.store(true, Ordering::Relaxed);
    let outbox = agent.shared.outbox.clone();
    assert!(wait_until_async(WAIT, || outbox.depth() == 0).await);
    assert_eq!(coord.seen.lock().unwrap().distinct().len(), 3);
    stop.cancel();
    tokio::time::timeout(WAIT, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_raised_while_the_broker_is_down_are_delivered_after_it_returns() {
    let mut broker = Mosquitto::start();
    let coord = FakeCoordinator::start(broker.port, "sad/v1");
    let agent = AgentParts::new("edge-3");
    agent.raise(5);
    let stop = CancellationToken::new();
    // The restarted broker has no sessions: alerts re-sent before the coordinator
    // has subscribed again are lost at the broker and come again after resend_after.
    let cfg = sad_agent::uplink::UplinkConfig {
        resend_after: Duration::from_secs(1),
        ..uplink_config(&broker)
    };
    let task = tokio::spawn(run_uplink(cfg, agent.shared.clone(), stop.clone()));
    let outbox = agent.shared.outbox.clone();
    assert!(wait_until_async(WAIT, || outbox.depth() == 0).await);

    tokio::task::block_in_place(|| broker.stop());
    let during = agent.raise(20);
    assert_eq!(outbox.depth(), 20);
    tokio::time::sleep(Duration::from_millis(500)).await;
    tokio::task::block_in_place(|| broker.restart());

    assert!(
        wait_until_async(WAIT, || outbox.depth() == 0).await,
        "alerts raised during the outage were not delivered"
    );
    let distinct = coord.seen.lock().unwrap().distinct();
    assert!(during.iter().all(|s| distinct.contains(s)));
    assert_eq!(distinct.len(), 25);
    stop.cancel();
    tokio::time::timeout(WAIT, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_dies_abruptly_is_marked_offline_by_its_last_will() {
    let broker = Mosquitto::start();
    let coord = FakeCoordinator::start(broker.port, "sad/v1");
    let agent = AgentParts::new("edge-4");
    // The agent runs on its own runtime so it can be torn down without any goodbye.
    let agent_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let never = CancellationToken::new();
    agent_rt.spawn(run_uplink(
        uplink_config(&broker),
        agent.shared.clone(),
        never.clone(),
    ));
    assert!(
        wait_until_async(WAIT, || coord
            .last_status("edge-4")
            .is_some_and(|h| h.online))
        .await
    );
    agent_rt.shutdown_background();
    assert!(
        wait_until_async(WAIT, || coord
            .last_status("edge-4")
            .is_some_and(|h| !h.online))
        .await,
        "the broker did not publish the last will"
    );
    let will = coord.last_status("edge-4").unwrap();
    assert_eq!(will.agent_id, "edge-4");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_report_counters_and_samples_are_published() {
    let broker = Mosquitto::start();
    let coord = FakeCoordinator::start(broker.port, "sad/v1");
    let agent = AgentParts::new("edge-5");
    agent
        .shared
        .counters
        .events
        .fetch_add(42, Ordering::Relaxed);
    {
        let mut r = agent.shared.reservoir.lock().unwrap();
        let names = vec!["a".to_string(), "b".to_string()];
        for i in 0..10 {
            r.offer("iforest", &names, &[f64::from(i), 1.0]);
        }
    }
    let stop = CancellationToken::new();
    let task = tokio::spawn(run_uplink(
        uplink_config(&broker),
        agent.shared.clone(),
        stop.clone(),
    ));
    assert!(
        wait_until_async(WAIT, || coord
            .last_status("edge-5")
            .is_some_and(|h| h.online && h.events_processed == 42 && h.rss_bytes > 0))
        .await
    );
    let seen = coord.seen.clone();
    assert!(wait_until_async(WAIT, || !seen.lock().unwrap().samples.is_empty()).await);
    let s = seen.lock().unwrap().samples[0].clone();
    assert_eq!(
        (s.agent_id.as_str(), s.model.as_str(), s.rows.len()),
        ("edge-5", "iforest", 10)
    );
    stop.cancel();
    tokio::time::timeout(WAIT, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// Measurement, not a check: `cargo test --release -p sad-agent --test uplink_delivery
/// -- --ignored --nocapture measure`. Prints the durable append rate (one fsync per
/// batch of 100) and the end-to-end delivery rate through Mosquitto with acks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement; run explicitly"]
async fn measure_append_and_delivery_rates() {
    let broker = Mosquitto::start();
    let coord = FakeCoordinator::start(broker.port, "sad/v1");
    let agent = AgentParts::new("edge-bench");
    let n_batches = 200;
    let t0 = std::time::Instant::now();
    let outbox = agent.shared.outbox.clone();
    tokio::task::spawn_blocking(move || {
        for _ in 0..n_batches {
            outbox
                .append(
                    (0..100)
                        .map(|i| {
                            support::alert(sad_common::wire::Severity::Warning, &format!("s{i}"))
                        })
                        .collect(),
                )
                .unwrap();
        }
    })
    .await
    .unwrap();
    let append_s = t0.elapsed().as_secs_f64();
    let n = (n_batches * 100) as f64;
    println!(
        "append: {n} alerts in {n_batches} flushed batches: {:.0} alerts/s, {:.2} ms per batch; outbox {} bytes",
        n / append_s,
        append_s * 1000.0 / n_batches as f64,
        agent.shared.outbox.bytes()
    );
    let cfg = sad_agent::uplink::UplinkConfig {
        batch_max: 500,
        ..uplink_config(&broker)
    };
    let stop = CancellationToken::new();
    let t1 = std::time::Instant::now();
    let task = tokio::spawn(run_uplink(cfg, agent.shared.clone(), stop.clone()));
    let outbox = agent.shared.outbox.clone();
    assert!(wait_until_async(Duration::from_secs(300), || outbox.depth() == 0).await);
    let deliver_s = t1.elapsed().as_secs_f64();
    println!(
        "delivery: {n} alerts published, acked and deleted in {deliver_s:.2} s: {:.0} alerts/s; distinct received {}",
        n / deliver_s,
        coord.seen.lock().unwrap().distinct().len()
    );
    stop.cancel();
    tokio::time::timeout(WAIT, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
