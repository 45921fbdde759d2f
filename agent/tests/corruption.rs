//! Damaged files on an agent's disk: the sled outbox and the persisted model
//! bundles are truncated, zeroed and bit-flipped, then opened by the library
//! and by the real `anomaly-agent` binary. Nothing may panic; damage is
//! named in an error or a log line; whatever sled or the bundle checks can
//! still read is kept; and no alert seq is ever handed out twice (the
//! coordinator would drop the new alert as a duplicate of the old id).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sad_agent::model_manager::ModelManager;
use sad_agent::outbox::{Outbox, OutboxConfig};
use sad_common::wire::Severity;
use sad_common::{Alert, ModelKind};
use sad_models::bundle::{ManifestSpec, iforest_bundle};
use sad_models::iforest::IsolationForestParams;
use sad_tests::damage::{copy_dir, damages, files};

const ALERTS: u64 = 200;
const ACKED: u64 = 3;

fn alert(series: &str) -> Alert {
    Alert {
        agent_id: String::new(),
        seq: 0,
        series: series.into(),
        ts_ms: 1_700_000_000_000,
        model: "iforest".into(),
        model_kind: ModelKind::IsolationForest,
        model_version: 1,
        score: 0.9,
        raw_score: 0.7,
        threshold: 0.5,
        severity: Severity::Warning,
        episode_id: 1,
        explanation: vec![],
        values: vec![1.0, 2.0, 3.0],
        label: None,
    }
}

fn cfg(path: &Path) -> OutboxConfig {
    OutboxConfig {
        path: path.to_path_buf(),
        max_bytes: 1 << 30,
    }
}

/// An outbox that assigned seqs 1..=200 and had 1..=3 acked.
fn make_outbox(path: &Path) {
    let ob = Outbox::open(&cfg(path), "edge-1", None).unwrap();
    for i in 0..ALERTS {
        ob.append(vec![alert(&format!("s{i}"))]).unwrap();
    }
    ob.ack(ACKED).unwrap();
    ob.flush().unwrap();
}

fn corrupt_dirs(base: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(base)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(".corrupt-"))
        .collect();
    v.sort();
    v
}

#[test]
fn a_damaged_outbox_opens_keeps_what_sled_reads_and_never_reuses_a_seq() {
    let base = tempfile::tempdir().unwrap();
    let template = base.path().join("template");
    make_outbox(&template);
    let targets: Vec<PathBuf> = files(&template)
        .into_iter()
        .map(|f| f.strip_prefix(&template).unwrap().to_path_buf())
        .filter(|f| f.file_name().unwrap() != "last_seq.hwm")
        .collect();
    assert!(targets.iter().any(|f| f == Path::new("db")), "{targets:?}");
    let mut case = 0;
    let mut moved_aside = 0;
    let mut lost_detected = 0;
    for rel in &targets {
        let len = std::fs::metadata(template.join(rel)).unwrap().len() as usize;
        for (what, damage) in damages(len) {
            case += 1;
            let parent = base.path().join(format!("case{case}"));
            let dir = parent.join("outbox");
            copy_dir(&template, &dir);
            let mut bytes = std::fs::read(dir.join(rel)).unwrap();
            damage(&mut bytes);
            std::fs::write(dir.join(rel), &bytes).unwrap();
            let label = format!("{} {what}", rel.display());

            let ob = Outbox::open(&cfg(&dir), "edge-1", None)
                .unwrap_or_else(|e| panic!("{label}: open failed: {e}"));
            // What is kept is a readable subset of what was there (an older
            // state may bring acked alerts back: they are sent again and deduped).
            let kept = ob.inspect(usize::MAX).unwrap();
            assert_eq!(kept.len() as u64, ob.depth(), "{label}");
            assert!(
                kept.iter()
                    .all(|a| (1..=ALERTS).contains(&a.seq) && a.series == format!("s{}", a.seq - 1)),
                "{label}: an alert came back changed"
            );
            // Never a seq again.
            assert!(
                ob.last_seq() >= ALERTS,
                "{label}: last_seq {}",
                ob.last_seq()
            );
            let seq = ob.append(vec![alert("new")]).unwrap()[0];
            assert_eq!(seq, ob.last_seq());
            assert!(seq > ALERTS, "{label}: seq {seq} handed out again");
            let report = ob.verify().unwrap();
            assert!(report.is_ok(), "{label}: {report}");
            if kept.iter().filter(|a| a.seq > ACKED).count() as u64 != ALERTS - ACKED {
                // Alerts were lost: that may only happen loudly.
                assert!(
                    ob.recoveries() > 0,
                    "{label}: silent loss of {} alerts",
                    ALERTS - ACKED - kept.len() as u64
                );
                lost_detected += 1;
            }
            let aside = corrupt_dirs(&parent);
            if !aside.is_empty() {
                moved_aside += 1;
                assert_eq!(ob.recoveries(), 1, "{label}");
                assert!(
                    aside[0].join(rel).exists(),
                    "{label}: damaged files are kept"
                );
            }
            drop(ob);
            let again = Outbox::open(&cfg(&dir), "edge-1", None).unwrap();
            assert_eq!(again.last_seq(), seq, "{label}: reopened");
            assert!(corrupt_dirs(&parent).len() <= 1, "{label}: recovered twice");
        }
    }
    println!(
        "{case} damaged outboxes: {moved_aside} moved aside and salvaged, {lost_detected} lost alerts (each logged and counted)"
    );
    assert!(
        moved_aside > 0,
        "a damaged conf is refused by sled and must be moved aside"
    );
}

#[test]
fn a_damaged_conf_keeps_every_alert_and_moves_the_files_aside() {
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("outbox");
    make_outbox(&dir);
    let conf = dir.join("conf");
    let mut b = std::fs::read(&conf).unwrap();
    b.truncate(b.len() / 2);
    std::fs::write(&conf, b).unwrap();

    let ob = Outbox::open(&cfg(&dir), "edge-1", None).unwrap();
    assert_eq!(ob.depth(), ALERTS - ACKED);
    assert_eq!(ob.last_seq(), ALERTS);
    assert_eq!(ob.recoveries(), 1);
    let aside = corrupt_dirs(base.path());
    assert_eq!(aside.len(), 1);
    assert!(aside[0].join("db").exists());
    let report = ob.verify().unwrap();
    assert_eq!(report.recoveries, 1);
    assert!(report.is_ok(), "{report}");
}

fn forest_bundle(name: &str) -> (sad_common::ModelManifest, Vec<u8>) {
    let rows: Vec<f64> = (0..64 * 3).map(|i| ((i * 37) % 23) as f64).collect();
    let forest = IsolationForestParams {
        n_estimators: 10,
        ..Default::default()
    }
    .fit(&rows, 3)
    .unwrap();
    iforest_bundle(
        ManifestSpec {
            name: name.into(),
            version: 1,
            parent_version: None,
            feature_names: vec!["f0".into(), "f1".into(), "f2".into()],
            window: 1,
            scaler: None,
            training_data: "test".into(),
            training_rows: 64,
            metrics: Default::default(),
            created_ms: 0,
        },
        &forest,
    )
}

fn install(dir: &Path, names: &[&str]) {
    let mm = ModelManager::open(dir, None, None).unwrap();
    for n in names {
        let (m, p) = forest_bundle(n);
        mm.install_local(m, p).unwrap();
    }
}

#[test]
fn a_damaged_model_bundle_is_skipped_and_the_others_load() {
    let base = tempfile::tempdir().unwrap();
    let template = base.path().join("template");
    install(&template, &["alpha", "beta"]);
    let len = std::fs::metadata(template.join("beta.bundle"))
        .unwrap()
        .len() as usize;
    let mut skipped = 0;
    for (i, (what, damage)) in damages(len).into_iter().enumerate() {
        let dir = base.path().join(format!("case{i}"));
        copy_dir(&template, &dir);
        let path = dir.join("beta.bundle");
        let mut b = std::fs::read(&path).unwrap();
        damage(&mut b);
        std::fs::write(&path, &b).unwrap();
        let mm = ModelManager::open(&dir, None, None)
            .unwrap_or_else(|e| panic!("beta.bundle {what}: {e}"));
        let set = mm.current();
        assert!(
            set.models.contains_key("alpha"),
            "beta.bundle {what}: alpha lost"
        );
        match set.models.get("beta") {
            // A flip in an unsigned manifest's free text can still be a valid bundle.
            Some(m) => {
                m.detector.score(&[1.0, 2.0, 3.0]).unwrap();
            }
            None => skipped += 1,
        }
    }
    assert!(
        skipped >= 9,
        "zero-length, truncated and payload flips are refused ({skipped})"
    );
}

/// Runs the real agent on `config` until its stderr has every needle (or 60 s),
/// then stops it with SIGTERM; returns its exit status and stderr.
fn run_agent_until(config: &Path, needles: &[&str]) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_anomaly-agent"))
        .args(["run", "--config"])
        .arg(config)
        .env_remove("MQTT_URL")
        .env_remove("THRESHOLD")
        .env_remove("MODEL_PATH")
        .env_remove("MQTT_TOPIC_PREFIX")
        .env_remove("LOG_LEVEL")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let mut stderr = child.stderr.take().unwrap();
    let sink = log.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        let text = log.lock().unwrap().clone();
        if needles.iter().all(|n| text.contains(n)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if child.try_wait().unwrap().is_none() {
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
    }
    let status = child.wait().unwrap();
    reader.join().unwrap();
    let text = log.lock().unwrap().clone();
    (status, text)
}

#[test]
fn the_agent_binary_starts_on_a_damaged_outbox_and_a_damaged_model_and_says_which_files() {
    let base = tempfile::tempdir().unwrap();
    let data = base.path().join("data");
    let models = base.path().join("models");
    make_outbox(&data.join("outbox"));
    install(&models, &["alpha", "beta"]);
    let conf = data.join("outbox/conf");
    std::fs::write(&conf, b"segment_size: 8388608\nuse_compression: fal").unwrap();
    let beta = models.join("beta.bundle");
    let mut b = std::fs::read(&beta).unwrap();
    b.truncate(b.len() / 2);
    std::fs::write(&beta, b).unwrap();
    let csv = base.path().join("in.csv");
    std::fs::write(&csv, "f0,f1,f2\n1,2,3\n").unwrap();
    let unused_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = base.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            r#"agent_id = "edge-1"
data_dir = "{data}"
log_level = "info"
[model]
path = "{models}"
[uplink]
url = "mqtt://127.0.0.1:{unused_port}"
[http]
enabled = false
[[sources]]
type = "file"
name = "replay"
path = "{csv}"
[sources.mapping]
fields = ["f0", "f1", "f2"]
"#,
            data = data.display(),
            models = models.display(),
            csv = csv.display(),
        ),
    )
    .unwrap();
    let outbox_path = data.join("outbox").display().to_string();
    let needles = [
        "outbox database is damaged",
        outbox_path.as_str(),
        "skipping persisted model bundle",
        "beta.bundle",
        "loaded persisted model",
    ];
    let (status, log) = run_agent_until(&config, &needles);
    for n in needles {
        assert!(log.contains(n), "missing {n:?} in the agent's log:\n{log}");
    }
    assert!(!log.contains("panicked"), "{log}");
    assert!(status.success(), "agent exited with {status}:\n{log}");
    assert_eq!(corrupt_dirs(&data).len(), 1);

    // The salvaged outbox is readable by the operator's tool and kept every alert.
    let out = Command::new(env!("CARGO_BIN_EXE_anomaly-agent"))
        .args(["outbox", "verify", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("recoveries 1"), "{text}");
    assert!(text.contains(&format!("seq {}..", ACKED + 1)), "{text}");
}
