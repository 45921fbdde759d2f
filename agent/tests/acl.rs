//! The Mosquitto ACL shipped in `deploy/mosquitto/acl`, enforced by a real
//! Mosquitto with password authentication: an agent cannot publish alerts
//! on another agent's topic (the coordinator never receives them) while its
//! own topic works, and every agent can read the retained model bundles the
//! coordinator publishes.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};

const ACL: &str = include_str!("../../deploy/mosquitto/acl");

/// A Mosquitto with the deploy ACL and a password file, killed on drop.
struct Broker {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Broker {
    fn start(users: &[&str]) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let passwd = dir.path().join("passwd");
        for (i, u) in users.iter().enumerate() {
            let mut cmd = Command::new("mosquitto_passwd");
            if i == 0 {
                cmd.arg("-c");
            }
            let ok = cmd
                .args(["-b"])
                .arg(&passwd)
                .arg(u)
                .arg(format!("pw-{u}"))
                .stdout(Stdio::null())
                .status()
                .expect("mosquitto_passwd is installed")
                .success();
            assert!(ok, "mosquitto_passwd failed for {u}");
        }
        let acl = dir.path().join("acl");
        std::fs::write(&acl, ACL).unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let conf = dir.path().join("mosquitto.conf");
        // The deploy config's access settings; TLS and persistence left out.
        std::fs::write(
            &conf,
            format!(
                "per_listener_settings false\nallow_anonymous false\npassword_file {}\nacl_file {}\npersistence false\nlistener {port} 127.0.0.1\n",
                passwd.display(),
                acl.display()
            ),
        )
        .unwrap();
        let child = Command::new("/usr/sbin/mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto is installed at /usr/sbin/mosquitto");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "mosquitto did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Broker {
            child,
            port,
            _dir: dir,
        }
    }

    fn connect(&self, user: &str) -> (AsyncClient, EventLoop) {
        let mut o = MqttOptions::new(format!("{user}-client"), "127.0.0.1", self.port);
        o.set_credentials(user, format!("pw-{user}"));
        o.set_keep_alive(Duration::from_secs(5));
        AsyncClient::new(o, 64)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls until a CONNACK and SUBACKs/PUBACKs settle; panics on a connection error.
async fn until<F: FnMut(&Event) -> bool>(what: &str, ev: &mut EventLoop, mut done: F) {
    let wait = async {
        loop {
            let e = ev.poll().await.expect("mqtt connection");
            if done(&e) {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), wait)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

fn publish_of(e: &Event) -> Option<(String, Vec<u8>)> {
    match e {
        Event::Incoming(Packet::Publish(p)) => Some((p.topic.clone(), p.payload.to_vec())),
        _ => None,
    }
}

#[tokio::test]
async fn an_agent_cannot_publish_on_another_agents_topic_but_its_own_works() {
    let broker = Broker::start(&["coordinator", "edge-a", "edge-b"]);

    let (coord, mut coord_ev) = broker.connect("coordinator");
    coord
        .subscribe(
            "$share/coordinators/sad/v1/agents/+/alerts",
            QoS::AtLeastOnce,
        )
        .await
        .unwrap();
    until(
        "the coordinator's SUBACK",
        &mut coord_ev, |e| {
        matches!(e, Event::Incoming(Packet::SubAck(s)) if s.return_codes.iter().all(|c| matches!(c, rumqttc::SubscribeReasonCode::Success(_))))
    })
    .await;
    // A retained model bundle for the fleet, as the coordinator publishes it.
    coord
        .publish(
            "sad/v1/models/default/iforest",
            QoS::AtLeastOnce,
            true,
            b"bundle".to_vec(),
        )
        .await
        .unwrap();
    until("the coordinator's PUBACK", &mut coord_ev, |e| {
        matches!(e, Event::Incoming(Packet::PubAck(_)))
    })
    .await;

    let (a, mut a_ev) = broker.connect("edge-a");
    a.subscribe("sad/v1/models/default/+", QoS::AtLeastOnce)
        .await
        .unwrap();
    let mut model = None;
    until("the retained model at agent A", &mut a_ev, |e| {
        model = publish_of(e);
        model.is_some()
    })
    .await;
    assert_eq!(
        model,
        Some(("sad/v1/models/default/iforest".into(), b"bundle".to_vec())),
        "an agent reads the fleet's retained model"
    );

    // Forged first, then its own, on one connection: the broker keeps the
    // order, so once the own alert arrives a forged one would have too.
    a.publish(
        "sad/v1/agents/edge-b/alerts",
        QoS::AtLeastOnce,
        false,
        b"forged".to_vec(),
    )
    .await
    .unwrap();
    a.publish(
        "sad/v1/agents/edge-a/alerts",
        QoS::AtLeastOnce,
        false,
        b"own".to_vec(),
    )
    .await
    .unwrap();
    let mut pubacks = 0;
    until("agent A's PUBACKs", &mut a_ev, |e| {
        if matches!(e, Event::Incoming(Packet::PubAck(_))) {
            pubacks += 1;
        }
        pubacks == 2
    })
    .await;

    let mut received = Vec::new();
    until(
        "the coordinator to receive A's own alert",
        &mut coord_ev,
        |e| {
            if let Some(p) = publish_of(e) {
                received.push(p);
            }
            received.iter().any(|(_, b)| b == b"own")
        },
    )
    .await;
    assert_eq!(
        received,
        vec![("sad/v1/agents/edge-a/alerts".to_string(), b"own".to_vec())],
        "the coordinator got exactly the agent's own alert"
    );
}

#[test]
fn the_deploy_config_uses_the_acl_and_refuses_anonymous_clients() {
    let conf = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/mosquitto/mosquitto.conf"),
    )
    .unwrap();
    for line in [
        "allow_anonymous false",
        "acl_file /etc/mosquitto/acl",
        "password_file /etc/mosquitto/passwd",
    ] {
        assert!(conf.lines().any(|l| l.trim() == line), "missing {line:?}");
    }
}
