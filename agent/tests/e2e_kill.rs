//! Kill -9 the agent while alerts are in flight, restart it on the same data
//! directory, and check that every alert it raised reaches the coordinator
//! side exactly once after dedupe by `alert_id`.
//!
//! Setup: a real Mosquitto on a free port, a fake coordinator (a rumqttc
//! client that decodes `AlertBatch` frames, records alert ids and acks the
//! contiguous prefix it holds), and the real `anomaly-agent` binary
//! replaying a CSV with many spikes through a resumable file source and an
//! Isolation Forest installed locally. The file source keeps its offset in
//! the data directory (committed after the alerts of the lines before it
//! are in the outbox), so a restart continues where the last durable batch
//! ended instead of replaying the file.

use std::collections::{BTreeSet, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use sad_agent::model_manager::ModelManager;
use sad_common::{Ack, AlertBatch};
use sad_models::bundle::{ManifestSpec, iforest_bundle};
use sad_models::iforest::IsolationForestParams;
use sad_tests::Mosquitto;

const AGENT: &str = "e2e-agent";
const PREFIX: &str = "sad/v1";

/// What the fake coordinator saw.
#[derive(Default)]
struct Received {
    ids: HashSet<u64>,
    total: u64,
}

/// Subscribes to every agent's alerts, records seqs and acks the contiguous prefix.
fn fake_coordinator(rt: &tokio::runtime::Runtime, port: u16, seen: Arc<Mutex<Received>>) {
    let mut opts = MqttOptions::new("fake-coordinator", "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(5))
        .set_max_packet_size(16 * 1024 * 1024, 1024 * 1024);
    let (client, mut eventloop) = AsyncClient::new(opts, 1000);
    rt.spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    client
                        .subscribe(format!("{PREFIX}/agents/+/alerts"), QoS::AtLeastOnce)
                        .await
                        .unwrap();
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let Ok(batch) = sad_common::frame::decode::<AlertBatch>(&p.payload) else {
                        continue;
                    };
                    let up_to = {
                        let mut s = seen.lock().unwrap();
                        for a in &batch.alerts {
                            assert_eq!(a.alert_id(), format!("{AGENT}:{}", a.seq));
                            s.total += 1;
                            s.ids.insert(a.seq);
                        }
                        let mut k = 0;
                        while s.ids.contains(&(k + 1)) {
                            k += 1;
                        }
                        k
                    };
                    if up_to > 0 {
                        let ack = Ack {
                            agent_id: batch.agent_id.clone(),
                            up_to_seq: up_to,
                        };
                        let frame = sad_common::frame::encode(&ack).unwrap();
                        let _ = client
                            .publish(
                                format!("{PREFIX}/agents/{}/acks", batch.agent_id),
                                QoS::AtLeastOnce,
                                false,
                                frame,
                            )
                            .await;
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    });
}

fn write_model(dir: &Path) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let rows: Vec<f64> = (0..4000 * 4).map(|_| rng.r#gen::<f64>()).collect();
    let forest = IsolationForestParams::default().fit(&rows, 4).unwrap();
    let spec = ManifestSpec {
        name: "iforest".into(),
        version: 1,
        parent_version: None,
        feature_names: (0..4).map(|i| format!("f{i}")).collect(),
        window: 1,
        scaler: None,
        training_data: "e2e uniform".into(),
        training_rows: 4000,
        metrics: Default::default(),
        created_ms: 0,
    };
    let (manifest, payload) = iforest_bundle(spec, &forest);
    ModelManager::open(dir, None, None)
        .unwrap()
        .install_local(manifest, payload)
        .unwrap();
}

fn write_csv(path: &Path, rows: usize) -> u64 {
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    let mut w = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    writeln!(w, "series,f0,f1,f2,f3").unwrap();
    for i in 0..rows {
        let spike = i % 25 == 24;
        let v: Vec<String> = (0..4)
            .map(|_| {
                let x: f64 = rng.r#gen::<f64>();
                format!("{:.4}", if spike { x + 20.0 } else { x })
            })
            .collect();
        writeln!(w, "m{},{}", i % 4, v.join(",")).unwrap();
    }
    drop(w);
    std::fs::metadata(path).unwrap().len()
}

fn write_config(dir: &Path, port: u16, csv: &Path) -> PathBuf {
    let cfg = format!(
        r#"agent_id = "{AGENT}"
data_dir = "{data}"
log_level = "warn"
[model]
path = "{models}"
[uplink]
url = "mqtt://127.0.0.1:{port}"
resend_after = 1.0
heartbeat_every = 1.0
batch_max = 50
[rules]
threshold = 0.6
cooldown_ms = 0
[http]
enabled = false
[pipeline]
batch_max = 64
[[sources]]
type = "file"
name = "replay"
path = "{csv}"
speed = 3000.0
resume = true
[sources.mapping]
fields = ["f0", "f1", "f2", "f3"]
series = {{ field = "series" }}
"#,
        data = dir.join("data").display(),
        models = dir.join("models").display(),
        csv = csv.display(),
    );
    let p = dir.join("agent.toml");
    std::fs::write(&p, cfg).unwrap();
    p
}

fn spawn_agent(config: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_anomaly-agent"))
        .args(["run", "--config"])
        .arg(config)
        .env_remove("MQTT_URL")
        .env_remove("THRESHOLD")
        .env_remove("MODEL_PATH")
        .env_remove("MQTT_TOPIC_PREFIX")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

fn offset(dir: &Path) -> u64 {
    std::fs::read_to_string(dir.join("data/sources/replay.offset"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn every_alert_reaches_the_coordinator_exactly_once_after_dedupe_despite_kill_9() {
    let broker = Mosquitto::start_with(|port, _dir| {
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 100000\n"
        )
    });
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let seen = Arc::new(Mutex::new(Received::default()));
    fake_coordinator(&rt, broker.port, seen.clone());

    std::fs::create_dir_all(dir.path().join("models")).unwrap();
    write_model(&dir.path().join("models"));
    let csv = dir.path().join("replay.csv");
    let file_len = write_csv(&csv, 15_000);
    let config = write_config(dir.path(), broker.port, &csv);

    let seed: u64 = rand::random();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut kills = 0;
    for _ in 0..3 {
        let mut agent = spawn_agent(&config);
        std::thread::sleep(Duration::from_millis(rng.gen_range(700..1800)));
        agent.kill().unwrap(); // SIGKILL
        agent.wait().unwrap();
        kills += 1;
    }
    let mut agent = spawn_agent(&config);
    // wait for the replay to finish and deliveries to settle
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last = (0, Instant::now());
    loop {
        assert!(Instant::now() < deadline, "replay did not finish in time");
        std::thread::sleep(Duration::from_millis(200));
        let total = seen.lock().unwrap().total;
        if total != last.0 {
            last = (total, Instant::now());
        }
        if offset(dir.path()) == file_len && last.1.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    // graceful stop (SIGTERM), then read the outbox
    Command::new("kill")
        .args(["-TERM", &agent.id().to_string()])
        .status()
        .unwrap();
    let status = agent.wait().unwrap();
    assert!(status.success(), "agent exited with {status}");
    let outbox = sad_tests::inspect_outbox(
        Path::new(env!("CARGO_BIN_EXE_anomaly-agent")),
        &dir.path().join("data"),
    );
    let (depth, last_seq, dropped) = (outbox.depth, outbox.last_seq, outbox.dropped);

    let s = seen.lock().unwrap();
    let delivered: BTreeSet<u64> = s.ids.iter().copied().collect();
    let raised: BTreeSet<u64> = (1..=last_seq).collect();
    println!(
        "kill -9 x{kills} (seed {seed}): raised {last_seq}, delivered {} distinct, {} received before dedupe ({} duplicates), outbox depth {depth}, dropped {dropped}",
        delivered.len(),
        s.total,
        s.total - delivered.len() as u64
    );
    assert!(
        last_seq > 100,
        "the replay should raise many alerts, got {last_seq}"
    );
    assert_eq!(dropped, 0);
    assert_eq!(delivered, raised, "lost or unknown alerts");
    assert_eq!(depth, 0, "every delivered alert was acked and removed");
}
