//! Signed model rollout to real agent processes through a real Mosquitto:
//! publish v1 to the fleet, canary a new version to one agent, watch it get
//! promoted to all; then canary a model that flags everything and watch it
//! get rolled back automatically, every agent ending on a new, higher
//! version that carries the earlier model. A second test times how long a
//! new version takes to reach 100 lightweight simulated agents that verify
//! the signature and acknowledge through their heartbeat.

mod api_common;
mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use api_common::call;
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use sad_common::wire::ModelStatus;
use sad_common::{Heartbeat, ModelBundle, ModelKind, frame};
use sad_coordinator::api::registry::{DEFAULT_MODEL, train_default};
use sad_coordinator::app::{RunningCoordinator, serve};
use sad_coordinator::config::CoordinatorConfig;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const PREFIX: &str = "sad/v1";

/// The `anomaly-agent` binary of this workspace, built once per test process
/// by the shared harness so that it matches the sources under test.
fn agent_bin() -> PathBuf {
    sad_tests::bins::bin_path(sad_tests::bins::AGENT_BIN)
}

async fn start_coordinator(
    dir: &Path,
    mqtt_url: String,
) -> (RunningCoordinator, CancellationToken) {
    let mut cfg = CoordinatorConfig {
        api_listen: "127.0.0.1:0".parse().unwrap(),
        prometheus_listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.join("coordinator"),
        ..CoordinatorConfig::default()
    };
    cfg.env.model_path = dir.join("models");
    cfg.env.mqtt_url = Some(mqtt_url);
    cfg.env.kafka_brokers = None;
    cfg.rollout.promote_after_s = 3.0;
    cfg.rollout.check_every_s = 0.5;
    cfg.rollout.min_scores = 200;
    cfg.rollout.canary_timeout_s = 60.0;
    let stop = CancellationToken::new();
    (serve(cfg, stop.clone()).await.unwrap(), stop)
}

/// Rows around the default model's training mean, as the agents' stream.
fn write_csv(path: &Path, rows: usize) {
    let mut w = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    writeln!(w, "series,f0,f1,f2,f3").unwrap();
    let noise = sad_coordinator::api::registry::seed_training_rows(rows, 7);
    for (i, r) in noise.chunks_exact(4).enumerate() {
        let v: Vec<String> = r.iter().map(|x| format!("{x:.4}")).collect();
        writeln!(w, "s{},{}", i % 3, v.join(",")).unwrap();
    }
}

struct AgentProc {
    child: Child,
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_agent(
    dir: &Path,
    id: &str,
    group: Option<&str>,
    port: u16,
    key: &Path,
    csv: &Path,
) -> AgentProc {
    let base = dir.join(id);
    std::fs::create_dir_all(base.join("models")).unwrap();
    let group_line = group
        .map(|g| format!("group = \"{g}\"\n"))
        .unwrap_or_default();
    let cfg = format!(
        r#"agent_id = "{id}"
{group_line}data_dir = "{data}"
log_level = "warn"
[model]
path = "{models}"
pinned_public_key = "{key}"
[uplink]
url = "mqtt://127.0.0.1:{port}"
heartbeat_every = 0.5
[http]
enabled = false
[[sources]]
type = "file"
name = "replay"
path = "{csv}"
speed = 400.0
model = "{DEFAULT_MODEL}"
[sources.mapping]
fields = ["f0", "f1", "f2", "f3"]
series = {{ field = "series" }}
"#,
        data = base.join("data").display(),
        models = base.join("models").display(),
        key = key.display(),
        csv = csv.display(),
    );
    let path = base.join("agent.toml");
    std::fs::write(&path, cfg).unwrap();
    let child = Command::new(agent_bin())
        .args(["run", "--config"])
        .arg(&path)
        .env_remove("MQTT_URL")
        .env_remove("THRESHOLD")
        .env_remove("MODEL_PATH")
        .env_remove("MQTT_TOPIC_PREFIX")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    AgentProc { child }
}

/// Versions of the default model each agent reports, by agent id.
fn versions(c: &RunningCoordinator) -> std::collections::BTreeMap<String, u64> {
    c.fleet
        .agents()
        .into_iter()
        .filter(|a| a.online)
        .filter_map(|a| {
            let v = a
                .heartbeat
                .models
                .iter()
                .find(|m| m.name == DEFAULT_MODEL)?
                .version;
            Some((a.agent_id, v))
        })
        .collect()
}

async fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn post(c: &RunningCoordinator, path: &str, body: &str) -> Value {
    let r = call(c.api_addr, "POST", path, Some(body), &[]).await;
    assert_eq!(r.status, 200, "{path}: {}", r.body);
    r.body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_promotes_a_healthy_version_and_rolls_back_one_that_flags_everything() {
    let broker = support::Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let (c, stop) = start_coordinator(dir.path(), broker.url()).await;
    let key = dir.path().join("coordinator/signing.pub");
    assert!(key.exists(), "the coordinator exports its public key");
    let model = format!("/api/v1/models/{DEFAULT_MODEL}");

    // v1 to the whole fleet, then three agents, one of them in the canary group
    let st = post(&c, &format!("{model}/publish"), "").await;
    assert_eq!(st["active"], 1);
    let csv = dir.path().join("stream.csv");
    write_csv(&csv, 40_000);
    let _agents: Vec<AgentProc> = [("a1", Some("canary")), ("a2", None), ("a3", None)]
        .iter()
        .map(|(id, g)| spawn_agent(dir.path(), id, *g, broker.port, &key, &csv))
        .collect();
    wait_for("three agents on v1", Duration::from_secs(60), || {
        let v = versions(&c);
        v.len() == 3 && v.values().all(|v| *v == 1)
    })
    .await;

    // a healthy new version: canary to a1 only, then promoted to everyone
    let (m, p) = train_default().unwrap();
    let v2 = c.state.registry.save(m, p).unwrap().manifest.version;
    assert_eq!(v2, 2);
    let st = post(
        &c,
        &format!("{model}/publish"),
        r#"{"canary_group": "canary"}"#,
    )
    .await;
    assert_eq!(
        (st["active"].as_u64(), st["canary"]["version"].as_u64()),
        (Some(1), Some(2))
    );
    let t0 = Instant::now();
    let mut saw_canary_only = false;
    wait_for("v2 promoted to all agents", Duration::from_secs(60), || {
        let v = versions(&c);
        if v.get("a1") == Some(&2) && v.get("a2") == Some(&1) && v.get("a3") == Some(&1) {
            saw_canary_only = true;
        }
        v.len() == 3 && v.values().all(|v| *v == 2)
    })
    .await;
    assert!(
        saw_canary_only,
        "the canary ran on a1 alone before the promotion"
    );
    println!(
        "healthy canary promoted to 3 agents in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let detail = call(c.api_addr, "GET", &model, None, &[]).await.body;
    assert_eq!(detail["active_version"], 2);
    let listed = call(c.api_addr, "GET", "/api/v1/models", None, &[])
        .await
        .body;
    let entry = listed["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["model_id"] == DEFAULT_MODEL)
        .unwrap()
        .clone();
    assert_eq!(entry["versions"], serde_json::json!([1, 2]));
    assert_eq!(
        (entry["active_version"].as_u64(), entry["version"].as_u64()),
        (Some(2), Some(2))
    );
    let agents_on_2 = detail["agents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["version"] == 2)
        .count();
    assert_eq!(
        agents_on_2, 3,
        "the detail names which agents run which version"
    );
    assert!(detail["canary"].is_null());
    let actions: Vec<&str> = detail["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["published", "canary", "promoted"]);

    // a model that flags everything: threshold 0
    let (mut m, p) = train_default().unwrap();
    m.threshold = 0.0;
    m.notes = Some("deliberately bad: flags every row".into());
    let v3 = c.state.registry.save(m, p).unwrap().manifest.version;
    assert_eq!(v3, 3);
    post(
        &c,
        &format!("{model}/publish"),
        r#"{"canary_group": "canary"}"#,
    )
    .await;
    let t0 = Instant::now();
    let mut canary_ran_bad = false;
    wait_for(
        "the bad canary rolled back",
        Duration::from_secs(60),
        || {
            let v = versions(&c);
            canary_ran_bad |= v.get("a1") == Some(&3);
            let st = c.state.rollout.as_ref().unwrap().status(DEFAULT_MODEL);
            st.canary.is_none() && st.active.is_some_and(|a| a > 3)
        },
    )
    .await;
    assert!(canary_ran_bad, "a1 ran v3 before the rollback");
    let st = c.state.rollout.as_ref().unwrap().status(DEFAULT_MODEL);
    let v4 = st.active.unwrap();
    let restored = c.state.registry.manifest(DEFAULT_MODEL, v4).unwrap();
    assert_eq!(restored.restores, Some(2), "v{v4} carries v2's model");
    assert_eq!(
        restored.threshold,
        c.state
            .registry
            .manifest(DEFAULT_MODEL, 2)
            .unwrap()
            .threshold
    );
    let last = st.history.last().unwrap();
    assert_eq!(last.action, "rolled_back");
    assert!(last.detail.contains("flag rate"), "{}", last.detail);
    wait_for(
        "every agent on the restored version",
        Duration::from_secs(30),
        || {
            let v = versions(&c);
            v.len() == 3 && v.values().all(|v| *v == v4)
        },
    )
    .await;
    println!(
        "bad canary rolled back and all 3 agents on v{v4} (restores v2) {:.1} s after it was published: {}",
        t0.elapsed().as_secs_f64(),
        last.detail
    );
    stop.cancel();
    c.wait().await;
}

/// A lightweight simulated agent: verifies each bundle on the fleet topic
/// with the pinned key and acknowledges the version in a heartbeat.
async fn sim_agent(port: u16, id: String, key: VerifyingKey, ready: Arc<Mutex<usize>>) {
    let mut o = MqttOptions::new(id.clone(), "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(8 << 20, 64 << 10);
    let (client, mut ev) = AsyncClient::new(o, 16);
    client
        .subscribe(format!("{PREFIX}/models/default/+"), QoS::AtLeastOnce)
        .await
        .unwrap();
    let status = format!("{PREFIX}/agents/{id}/status");
    let mut version = 0u64;
    loop {
        match ev.poll().await {
            Ok(Event::Incoming(Packet::SubAck(_))) => *ready.lock().unwrap() += 1,
            Ok(Event::Incoming(Packet::Publish(p))) if !p.payload.is_empty() => {
                let Ok(b) = frame::decode::<ModelBundle>(&p.payload) else {
                    continue;
                };
                let ok = b.validate().is_ok()
                    && Signature::from_slice(&b.signature)
                        .is_ok_and(|s| key.verify(&b.signed_bytes(), &s).is_ok());
                if !ok || b.manifest.version <= version {
                    continue;
                }
                version = b.manifest.version;
                let hb = Heartbeat {
                    agent_id: id.clone(),
                    ts_ms: sad_coordinator::api::registry::now_ms(),
                    online: true,
                    uptime_s: 1,
                    models: vec![ModelStatus {
                        name: b.manifest.name.clone(),
                        kind: ModelKind::IsolationForest,
                        version,
                    }],
                    events_processed: 0,
                    anomalies: 0,
                    bad_input: 0,
                    outbox_depth: 0,
                    outbox_bytes: 0,
                    rss_bytes: 0,
                    group: None,
                    score_summary: None,
                };
                let _ = client
                    .publish(&status, QoS::AtLeastOnce, true, frame::encode(&hb).unwrap())
                    .await;
            }
            Ok(_) => {}
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_version_reaches_100_simulated_agents_through_mosquitto() {
    const N: usize = 100;
    let broker = support::Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let (c, stop) = start_coordinator(dir.path(), broker.url()).await;
    let key = VerifyingKey::from_bytes(&hex32(
        &std::fs::read_to_string(dir.path().join("coordinator/signing.pub")).unwrap(),
    ))
    .unwrap();
    let exported = call(c.api_addr, "GET", "/api/v1/models/public-key", None, &[]).await;
    assert_eq!(exported.status, 200, "{}", exported.body);
    assert_eq!(
        exported.body["public_key"].as_str().map(hex32),
        Some(key.to_bytes()),
        "the API exports the key the bundles are signed with"
    );
    let ready = Arc::new(Mutex::new(0usize));
    let sims: Vec<_> = (0..N)
        .map(|i| {
            tokio::spawn(sim_agent(
                broker.port,
                format!("sim-{i:03}"),
                key,
                ready.clone(),
            ))
        })
        .collect();
    wait_for(
        "simulated agents subscribed",
        Duration::from_secs(30),
        || *ready.lock().unwrap() == N,
    )
    .await;
    let model = format!("/api/v1/models/{DEFAULT_MODEL}");
    let mut times = Vec::new();
    for round in 1..=3u64 {
        if round > 1 {
            let (m, p) = train_default().unwrap();
            c.state.registry.save(m, p).unwrap();
        }
        let t0 = Instant::now();
        let st = post(&c, &format!("{model}/publish"), "").await;
        assert_eq!(st["active"].as_u64(), Some(round));
        wait_for(
            "every simulated agent on the new version",
            Duration::from_secs(60),
            || {
                let v = versions(&c);
                v.len() == N && v.values().all(|v| *v == round)
            },
        )
        .await;
        times.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    let bytes = frame::encode(&{
        let (m, p) = c.state.registry.load_version(DEFAULT_MODEL, 1).unwrap();
        ModelBundle {
            manifest: m,
            payload: p,
            signature: vec![0; 64],
        }
    })
    .unwrap()
    .len();
    println!(
        "rollout to {N} simulated agents through mosquitto, bundle {bytes} bytes: {} ms (publish -> every agent's heartbeat acknowledges the version)",
        times
            .iter()
            .map(|t| format!("{t:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for s in sims {
        s.abort();
    }
    stop.cancel();
    c.wait().await;
}

fn hex32(s: &str) -> [u8; 32] {
    let s = s.trim();
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
    }
    out
}
