//! Fault tests: real Mosquitto, tansu, coordinator and agent processes on
//! loopback; each test injects one kind of fault while an agent replays a
//! stream full of spikes, then checks conservation against Kafka (every
//! alert raised is in Kafka with its payload intact, or was dropped by the
//! documented full-outbox policy; duplicates only share their alert id) and
//! that a fresh alert reaches Kafka after each heal, and prints its figures.
//!
//! `cargo test -p sad-tests --test faults -- --nocapture` (about 2 minutes);
//! `SAD_LONG=1` repeats the crash faults many more times for the report.
//! The tests run one at a time (a shared lock): they time faults and
//! recoveries, which other tests' load on two cores would distort.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use sad_tests::{
    AgentProc, AgentSpec, Conservation, FaultFigures, Harness, HarnessOptions, Raised, Stream,
    TcpProxy, conservation, long_mode, repetitions, skip_kafka,
};

/// One fault test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Bound on every wait for a fresh alert after a heal (the uplink's reconnect
/// back-off alone can reach 30 s; librdkafka's reconnect back-off 10 s).
const RECOVERY_BOUND: Duration = Duration::from_secs(90);

/// Recoveries slower than this print both processes' logs.
const SLOW_RECOVERY: Duration = Duration::from_secs(8);

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn rng() -> (u64, rand::rngs::StdRng) {
    let seed = std::env::var("SAD_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    (seed, rand::rngs::StdRng::seed_from_u64(seed))
}

/// Pushes probe `k` now and returns how long after `healed` its alert was read from Kafka.
fn recovery(h: &Harness, agent: &AgentProc, k: u64, healed: Instant) -> Duration {
    assert!(
        agent.push_probe(k, RECOVERY_BOUND),
        "the agent did not accept probe {k}; log:\n{}",
        agent.log_tail()
    );
    let seen = h
        .oracle
        .wait_probe(&agent.spec.agent_id, k, RECOVERY_BOUND)
        .unwrap_or_else(|| {
            panic!(
                "no fresh alert (probe {k}) in kafka within {RECOVERY_BOUND:?} after the heal; \
                 coordinator log:\n{}\nagent log:\n{}",
                h.coordinator.log_tail(),
                agent.log_tail()
            )
        });
    let took = seen.saturating_duration_since(healed);
    if took > SLOW_RECOVERY {
        // Diagnostics for the tail of the recovery times (see docs/RELIABILITY.md).
        println!(
            "slow recovery of probe {k}: {:.2} s; agent log:\n{}\ncoordinator log:\n{}",
            took.as_secs_f64(),
            agent.log_tail(),
            h.coordinator.log_tail()
        );
    }
    took
}

/// Lets `agent` finish its replay and drain its outbox, stops it, and checks
/// Kafka against what it raised.
fn settle(h: &Harness, agent: &mut AgentProc, stream: &Stream, timeout: Duration) -> Conservation {
    assert!(
        agent.wait_drained(timeout),
        "replay or delivery did not finish (offset done: {}, health {:?}); coordinator log:\n{}\nagent log:\n{}",
        agent.replay_done(),
        agent.health(),
        h.coordinator.log_tail(),
        agent.log_tail()
    );
    assert!(agent.stop(), "the agent did not stop cleanly on SIGTERM");
    let outbox = agent.outbox_state();
    assert_eq!(outbox.depth, 0, "every alert acked and removed");
    let records = h.read_all();
    let c = conservation(
        &records,
        &[Raised {
            agent_id: agent.spec.agent_id.clone(),
            last_seq: outbox.last_seq,
            dropped: outbox.dropped,
            stream,
        }],
    );
    assert!(
        records.len() >= h.oracle.len(),
        "the re-read found fewer records than the live reader"
    );
    c
}

/// The assertions every fault test makes on its figures.
fn check(f: &FaultFigures, min_raised: u64, heals: usize) {
    f.print();
    let c = &f.conservation;
    assert!(
        c.raised >= min_raised,
        "the stream should raise at least {min_raised} alerts, raised {}",
        c.raised
    );
    assert!(
        c.lost == 0 && c.corrupt == 0 && c.unknown == 0,
        "conservation violated: {c:#?}"
    );
    assert_eq!(
        c.reraised, 0,
        "events re-raised under a new alert id (not removable by id): {c:#?}"
    );
    assert_eq!(c.lost, 0, "lost alerts: {:?}", c.examples);
    assert_eq!(f.recovery.len(), heals, "a fresh alert after every heal");
}

#[test]
fn no_alert_is_lost_when_the_agent_is_killed_at_random_moments() {
    if skip_kafka() {
        return;
    }
    let _one = serial();
    let (seed, mut rng) = rng();
    let kills = repetitions(6, 1000);
    let stream = Stream::generate((kills * 1200).max(7200), 4, 10, 1500.0, seed);
    let h = Harness::start(HarnessOptions::default());
    let mut agent = AgentProc::prepare(AgentSpec::new("edge-kill", &h.mqtt.url()), &stream);
    let mut recovered = Vec::new();
    for i in 0..kills {
        agent.spawn_only();
        let started = Instant::now();
        if i % 2 == 0 {
            // measure recovery, then kill somewhere in the next half second
            recovered.push(recovery(&h, &agent, i as u64, started));
            std::thread::sleep(Duration::from_millis(rng.gen_range(0..500)));
        } else {
            // kill anywhere from start-up to well into the replay
            std::thread::sleep(Duration::from_millis(rng.gen_range(50..1500)));
        }
        agent.kill();
        if long_mode() && i % 100 == 99 {
            println!("{} kills", i + 1);
        }
    }
    agent.start();
    let remaining = stream.rows.len() as f64 / stream.rows_per_sec;
    let c = settle(
        &h,
        &mut agent,
        &stream,
        Duration::from_secs_f64(remaining + 120.0),
    );
    let f = FaultFigures {
        fault: "agent kill -9".into(),
        injected: format!("SIGKILL of anomaly-agent at random moments (seed {seed})"),
        times: kills,
        conservation: c,
        recovery: recovered,
    };
    // The file source's position is stored in the outbox's transaction with
    // the alerts it covers, so a restart never re-reads an event whose alert
    // is already raised: nothing may come back under a new alert id.
    // Recovery is measured on every other start only.
    check(&f, 100, kills.div_ceil(2));
}

#[test]
fn no_alert_is_lost_when_the_coordinator_is_killed_mid_stream() {
    if skip_kafka() {
        return;
    }
    let _one = serial();
    let (seed, mut rng) = rng();
    let kills = repetitions(3, 100);
    let stream = Stream::generate(kills * 4000, 4, 10, 1500.0, seed);
    let mut h = Harness::start(HarnessOptions::default());
    let mut agent = AgentProc::prepare(AgentSpec::new("edge-ck", &h.mqtt.url()), &stream);
    agent.start();
    let mut recovered = Vec::new();
    for k in 0..kills {
        std::thread::sleep(Duration::from_millis(rng.gen_range(300..1500)));
        h.coordinator.kill();
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..1000)));
        h.coordinator.restart();
        let healed = Instant::now();
        recovered.push(recovery(&h, &agent, k as u64, healed));
    }
    let c = settle(&h, &mut agent, &stream, Duration::from_secs(180));
    check(
        &FaultFigures {
            fault: "coordinator kill -9".into(),
            injected: format!(
                "SIGKILL of anomaly-coordinator mid-stream, down 0-1 s, restart on its data dir (seed {seed})"
            ),
            times: kills,
            conservation: c,
            recovery: recovered,
        },
        100,
        kills,
    );
}

fn broker_restart(persistent: bool) {
    let _one = serial();
    let (seed, mut rng) = rng();
    let restarts = repetitions(2, 20);
    let stream = Stream::generate(restarts * 6000, 4, 10, 1500.0, seed);
    let mut h = Harness::start(HarnessOptions {
        mqtt_persistent: persistent,
        kafka_persistent: false,
    });
    let id = if persistent { "edge-mqp" } else { "edge-mq" };
    let mut agent = AgentProc::prepare(AgentSpec::new(id, &h.mqtt.url()), &stream);
    agent.start();
    let mut recovered = Vec::new();
    for k in 0..restarts {
        std::thread::sleep(Duration::from_millis(rng.gen_range(500..1500)));
        if persistent {
            h.mqtt.stop_graceful();
        } else {
            h.mqtt.stop();
        }
        std::thread::sleep(Duration::from_secs(2));
        h.mqtt.restart();
        let healed = Instant::now();
        recovered.push(recovery(&h, &agent, k as u64, healed));
    }
    let c = settle(&h, &mut agent, &stream, Duration::from_secs(180));
    let (fault, how) = if persistent {
        (
            "MQTT broker restart, persistent",
            "SIGTERM of mosquitto (persistence on), down 2 s, restart",
        )
    } else {
        (
            "MQTT broker restart, no persistence",
            "SIGKILL of mosquitto (persistence off: sessions lost), down 2 s, restart",
        )
    };
    check(
        &FaultFigures {
            fault: fault.into(),
            injected: format!("{how} (seed {seed})"),
            times: restarts,
            conservation: c,
            recovery: recovered,
        },
        100,
        restarts,
    );
}

#[test]
fn no_alert_is_lost_when_a_broker_without_persistence_restarts() {
    if skip_kafka() {
        return;
    }
    broker_restart(false);
}

#[test]
fn no_alert_is_lost_when_a_persistent_broker_restarts() {
    if skip_kafka() {
        return;
    }
    broker_restart(true);
}

#[test]
fn no_alert_is_lost_when_kafka_is_down_for_a_while() {
    if skip_kafka() {
        return;
    }
    let _one = serial();
    let (seed, mut rng) = rng();
    let outages = repetitions(2, 10);
    let stream = Stream::generate(outages * 9000, 4, 10, 1500.0, seed);
    let mut h = Harness::start(HarnessOptions {
        mqtt_persistent: false,
        kafka_persistent: true,
    });
    let mut agent = AgentProc::prepare(AgentSpec::new("edge-kafka", &h.mqtt.url()), &stream);
    agent.start();
    let mut recovered = Vec::new();
    let mut downs = Vec::new();
    for k in 0..outages {
        std::thread::sleep(Duration::from_millis(rng.gen_range(500..1500)));
        // In the long mode every other outage outlasts the producer's 30 s message timeout.
        let down = if long_mode() && k % 2 == 1 {
            Duration::from_secs(35)
        } else {
            Duration::from_secs(4)
        };
        h.kafka.stop();
        std::thread::sleep(down);
        h.kafka.restart();
        downs.push(down.as_secs());
        let healed = Instant::now();
        recovered.push(recovery(&h, &agent, k as u64, healed));
    }
    let c = settle(&h, &mut agent, &stream, Duration::from_secs(240));
    check(
        &FaultFigures {
            fault: "Kafka broker outage".into(),
            injected: format!(
                "SIGKILL of tansu (SQLite storage), down {downs:?} s, restart (seed {seed})"
            ),
            times: outages,
            conservation: c,
            recovery: recovered,
        },
        100,
        outages,
    );
}

#[test]
fn no_alert_is_lost_when_the_network_between_agent_and_broker_is_cut() {
    if skip_kafka() {
        return;
    }
    let _one = serial();
    let (seed, mut rng) = rng();
    let cuts = repetitions(3, 30);
    let stream = Stream::generate(cuts * 6000, 4, 10, 1500.0, seed);
    let h = Harness::start(HarnessOptions::default());
    let proxy = TcpProxy::start(h.mqtt.port);
    let mut agent = AgentProc::prepare(AgentSpec::new("edge-net", &proxy.mqtt_url()), &stream);
    agent.start();
    let mut recovered = Vec::new();
    for k in 0..cuts {
        std::thread::sleep(Duration::from_millis(rng.gen_range(500..1500)));
        proxy.cut();
        std::thread::sleep(Duration::from_secs(3));
        proxy.heal();
        let healed = Instant::now();
        recovered.push(recovery(&h, &agent, k as u64, healed));
    }
    let c = settle(&h, &mut agent, &stream, Duration::from_secs(180));
    println!(
        "proxy: {} connections forwarded, {} refused during cuts",
        proxy.accepted(),
        proxy.refused()
    );
    assert!(
        proxy.refused() > 0,
        "the agent tried to reconnect during a cut"
    );
    check(
        &FaultFigures {
            fault: "network cut agent-broker".into(),
            injected: format!(
                "TCP proxy drops every connection and refuses new ones for 3 s (seed {seed})"
            ),
            times: cuts,
            conservation: c,
            recovery: recovered,
        },
        100,
        cuts,
    );
}

#[test]
fn a_full_outbox_drops_only_by_its_policy_and_delivers_the_rest() {
    if skip_kafka() {
        return;
    }
    let _one = serial();
    let (seed, _) = rng();
    // 1,200 alerts while the link is down: more than a 64 KiB outbox holds.
    let stream = Stream::generate(6000, 4, 5, 3000.0, seed);
    let h = Harness::start(HarnessOptions::default());
    let proxy = TcpProxy::start(h.mqtt.port);
    proxy.cut();
    let mut spec = AgentSpec::new("edge-full", &proxy.mqtt_url());
    spec.outbox_max_bytes = 65_536;
    let mut agent = AgentProc::prepare(spec, &stream);
    agent.start();
    assert!(
        sad_tests::wait_until(Duration::from_secs(60), || agent.replay_done()),
        "the replay did not finish while the link was down (offset {}); agent log:\n{}",
        agent.offset(),
        agent.log_tail()
    );
    proxy.heal();
    let healed = Instant::now();
    let recovered = vec![recovery(&h, &agent, 0, healed)];
    let c = settle(&h, &mut agent, &stream, Duration::from_secs(120));
    let f = FaultFigures {
        fault: "outbox full (byte cap)".into(),
        injected: format!(
            "outbox.max_bytes = 65536 with the uplink cut for the whole replay (seed {seed})"
        ),
        times: 1,
        conservation: c,
        recovery: recovered,
    };
    check(&f, 1000, 1);
    let c = &f.conservation;
    assert!(c.dropped > 0, "the cap should have forced drops");
    assert_eq!(
        c.delivered + c.dropped,
        c.raised,
        "nothing was delivered before the heal, so exactly the dropped ones are missing"
    );
}
