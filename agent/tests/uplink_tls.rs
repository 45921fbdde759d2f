//! The uplink over TLS with username and password, against a Mosquitto with
//! a test CA (certificates made with the `openssl` command line tool).

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use sad_agent::uplink::{UplinkConfig, UplinkError, run_uplink};
use support::{AgentParts, FakeCoordinator, Mosquitto, free_port, uplink_config, wait_until_async};
use tokio_util::sync::CancellationToken;

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run openssl / mosquitto_passwd");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes ca.pem, server.pem, server.key and a password file (user `edge`, password `s3cret`).
fn make_pki(dir: &Path) {
    let d = |f: &str| dir.join(f);
    run(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=sad-test-ca",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
        ])
        .arg(d("ca.key"))
        .arg("-out")
        .arg(d("ca.pem")));
    run(Command::new("openssl")
        .args([
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
        ])
        .arg(d("server.key"))
        .arg("-out")
        .arg(d("server.csr")));
    std::fs::write(
        d("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(Command::new("openssl")
        .args(["x509", "-req", "-days", "2", "-CAcreateserial", "-in"])
        .arg(d("server.csr"))
        .arg("-CA")
        .arg(d("ca.pem"))
        .arg("-CAkey")
        .arg(d("ca.key"))
        .arg("-out")
        .arg(d("server.pem"))
        .arg("-extfile")
        .arg(d("ext.cnf")));
    run(Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(d("passwd"))
        .args(["edge", "s3cret"]));
    // Mosquitto started as root drops to its own user: let it read the test PKI.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    for f in ["ca.pem", "server.pem", "server.key", "passwd"] {
        std::fs::set_permissions(d(f), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_are_delivered_over_tls_with_username_and_password() {
    let tls_port = free_port();
    let pki = tempfile::tempdir().unwrap();
    make_pki(pki.path());
    let p = pki.path().to_path_buf();
    // A plain anonymous listener for the fake coordinator, TLS + password for the agent.
    let broker = Mosquitto::start_with(|port, _| {
        format!(
            "per_listener_settings true\npersistence false\n\
             listener {port} 127.0.0.1\nallow_anonymous true\n\
             listener {tls_port} 127.0.0.1\nallow_anonymous false\npassword_file {pw}\n\
             cafile {ca}\ncertfile {cert}\nkeyfile {key}\n",
            pw = p.join("passwd").display(),
            ca = p.join("ca.pem").display(),
            cert = p.join("server.pem").display(),
            key = p.join("server.key").display(),
        )
    });
    let coord = FakeCoordinator::start(broker.port, "sad/v1");
    let agent = AgentParts::new("edge-tls");
    agent.raise(10);
    let cfg = UplinkConfig {
        url: format!("mqtts://localhost:{tls_port}"),
        ca_file: Some(p.join("ca.pem")),
        username: Some("edge".into()),
        password: Some("s3cret".into()),
        ..uplink_config(&broker)
    };
    let stop = CancellationToken::new();
    let task = tokio::spawn(run_uplink(cfg, agent.shared.clone(), stop.clone()));
    let outbox = agent.shared.outbox.clone();
    assert!(
        wait_until_async(Duration::from_secs(60), || outbox.depth() == 0).await,
        "alerts were not delivered over tls"
    );
    assert_eq!(coord.seen.lock().unwrap().distinct().len(), 10);
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn tls_without_a_ca_file_or_with_an_unreadable_one_is_a_config_error() {
    let agent = AgentParts::new("edge-tls2");
    let base = UplinkConfig {
        url: "mqtts://localhost:1".into(),
        ..UplinkConfig::default()
    };
    let err = run_uplink(base.clone(), agent.shared.clone(), CancellationToken::new())
        .await
        .unwrap_err();
    assert!(matches!(err, UplinkError::Config(_)), "{err}");
    let cfg = UplinkConfig {
        ca_file: Some(agent.dir.path().join("missing.pem")),
        ..base
    };
    let err = run_uplink(cfg, agent.shared.clone(), CancellationToken::new())
        .await
        .unwrap_err();
    assert!(matches!(err, UplinkError::Tls(_)), "{err}");
    assert!(err.to_string().contains("missing.pem"), "{err}");
}
