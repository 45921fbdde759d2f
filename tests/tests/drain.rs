//! How fast one agent drains a backlog into Kafka through the real
//! coordinator: the figure that bounds how long a fresh alert waits behind a
//! backlog after an outage (see docs/RELIABILITY.md).
//!
//! `cargo test [--release] -p sad-tests --test drain -- --ignored --nocapture`
//! (`SAD_DRAIN_ROWS` sets the stream length).

use std::time::{Duration, Instant};

use sad_tests::{AgentProc, AgentSpec, Harness, HarnessOptions, Stream, TcpProxy, skip_kafka};

fn rows(default: usize) -> usize {
    std::env::var("SAD_DRAIN_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Cuts the link, lets `agent` build a backlog until `backlog_ready`, heals,
/// and prints how fast the outbox then empties (to `settled` alerts or fewer).
fn measure(name: &str, stream: &Stream, backlog_ready: impl Fn(&AgentProc) -> bool, settled: u64) {
    let h = Harness::start(HarnessOptions::default());
    let proxy = TcpProxy::start(h.mqtt.port);
    proxy.cut();
    let mut agent = AgentProc::prepare(AgentSpec::new(name, &proxy.mqtt_url()), stream);
    agent.start();
    let t = Instant::now();
    assert!(
        sad_tests::wait_until(Duration::from_secs(300), || backlog_ready(&agent)),
        "no backlog; agent log:\n{}",
        agent.log_tail()
    );
    let (backlog, seq_at_heal) = agent.health().expect("agent health");
    println!(
        "{name}: backlog {backlog} alerts raised in {:.1} s while cut",
        t.elapsed().as_secs_f64()
    );
    proxy.heal();
    let healed = Instant::now();
    // Delivery starts when the uplink's reconnect back-off (it grew during
    // the cut) lets it in: the rate is taken from the first ack on.
    let mut first_ack: Option<Instant> = None;
    let mut last_print = Instant::now();
    let (mut depth, mut seq) = (backlog, seq_at_heal);
    while depth > settled {
        if let Some((d, s)) = agent.health() {
            (depth, seq) = (d, s);
        }
        if first_ack.is_none() && depth < backlog {
            first_ack = Some(Instant::now());
        }
        if last_print.elapsed() > Duration::from_secs(5) {
            println!(
                "  {:.0} s: depth {depth}, last_seq {seq}",
                healed.elapsed().as_secs_f64()
            );
            last_print = Instant::now();
        }
        assert!(healed.elapsed() < Duration::from_secs(600), "did not drain");
        std::thread::sleep(Duration::from_millis(20));
    }
    let first = first_ack.unwrap_or(healed);
    let secs = first.elapsed().as_secs_f64();
    // Delivered = the backlog plus what was raised meanwhile, minus what is left.
    let delivered = backlog + (seq - seq_at_heal) - depth;
    println!(
        "{name}: reconnected {:.2} s after the heal; {delivered} alerts delivered in {secs:.2} s \
         from the first ack ({:.0} alerts/s), {} raised meanwhile",
        first.duration_since(healed).as_secs_f64(),
        delivered as f64 / secs,
        seq - seq_at_heal
    );
}

#[test]
#[ignore = "a measurement for docs/RELIABILITY.md"]
fn drain_rate_of_a_backlog() {
    if skip_kafka() {
        return;
    }
    // A spike every 4th row, replayed as fast as it goes while the link is cut.
    let stream = Stream::generate(rows(200_000), 4, 4, 20_000.0, 7);
    measure("edge-drain", &stream, AgentProc::replay_done, 0);
}

#[test]
#[ignore = "a measurement for docs/RELIABILITY.md"]
fn drain_rate_of_a_backlog_while_the_replay_goes_on() {
    if skip_kafka() {
        return;
    }
    // The fault tests' stream: 1,500 rows/s, a spike every 10th row; a 20 s cut.
    let stream = Stream::generate(rows(150_000), 4, 10, 1500.0, 7);
    let cut = Instant::now();
    measure(
        "edge-live",
        &stream,
        |_| cut.elapsed() > Duration::from_secs(20),
        100,
    );
}
