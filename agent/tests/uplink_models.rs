//! Model bundles over MQTT: retained fleet bundles are verified and installed,
//! bad ones are counted and ignored, and a canary group's bundle wins over the
//! fleet's while it exists.

mod support;

use std::time::Duration;

use rumqttc::QoS;
use sad_agent::uplink::{UplinkConfig, run_uplink};
use support::{
    AgentParts, FakeCoordinator, Mosquitto, other_key, signed_frame, signing_key, uplink_config,
    wait_until_async,
};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(60);

async fn publish_retained(coord: &FakeCoordinator, topic: &str, payload: Vec<u8>) {
    coord
        .client
        .publish(topic, QoS::AtLeastOnce, true, payload)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retained_signed_fleet_model_is_installed_and_a_forged_one_is_ignored() {
    let broker = Mosquitto::start();
    let coord = FakeCoordinator::start(broker.port, "sad/v1");
    publish_retained(
        &coord,
        "sad/v1/models/fleet1/m",
        signed_frame("m", 1, &signing_key()),
    )
    .await;
    let agent = AgentParts::new("edge-m1");
    let stop = CancellationToken::new();
    let task = tokio::spawn(run_uplink(
        uplink_config(&broker),
        agent.shared.clone(),
        stop.clone(),
    ));
    let models = agent.shared.models.clone();
    assert!(wait_until_async(WAIT, || models.version_of("m") == Some(1)).await);
    assert!(
        wait_until_async(WAIT, || coord.last_status("edge-m1").is_some_and(|h| h
            .models
            .iter()
            .any(|s| s.name == "m" && s.version == 1)))
        .await,
        "the heartbeat does not report the running model"
    );

    // A forged v2 is rejected; a later good v3 proves the forged one was processed.
    publish_retained(
        &coord,
        "sad/v1/models/fleet1/m",
        signed_frame("m", 2, &other_key()),
    )
    .await;
    let rejected = agent
        .shared
        .metrics
        .model_updates
        .with_label_values(&["rejected"]);
    assert!(wait_until_async(WAIT, || rejected.get() == 1).await);
    assert_eq!(models.version_of("m"), Some(1));
    publish_retained(
        &coord,
        "sad/v1/models/fleet1/m",
        signed_frame("m", 3, &signing_key()),
    )
    .await;
    assert!(wait_until_async(WAIT, || models.version_of("m") == Some(3)).await);
    stop.cancel();
    tokio::time::timeout(WAIT, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    // The accepted bundle is on disk: a restart without any broker runs v3.
    let reopened = sad_agent::model_manager::ModelManager::open(
        &agent.dir.path().join("models"),
        Some(signing_key().verifying_key()),
        None,
    )
    .unwrap();
    assert_eq!(reopened.version_of("m"), Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_groups_bundle_wins_over_the_fleets_while_it_exists() {
    let broker = Mosquitto::start();
    let coord = FakeCoordinator::start(broker.port, "sad/v1");
    let agent = AgentParts::new("edge-m2");
    let cfg = UplinkConfig {
        group: Some("canary".into()),
        ..uplink_config(&broker)
    };
    let stop = CancellationToken::new();
    let task = tokio::spawn(run_uplink(cfg, agent.shared.clone(), stop.clone()));
    let models = agent.shared.models.clone();
    assert!(
        wait_until_async(WAIT, || coord
            .last_status("edge-m2")
            .is_some_and(|h| h.online))
        .await
    );

    publish_retained(
        &coord,
        "sad/v1/models/canary/m",
        signed_frame("m", 5, &signing_key()),
    )
    .await;
    assert!(wait_until_async(WAIT, || models.version_of("m") == Some(5)).await);
    // The fleet publishes a newer m, then another model; once the other model
    // is installed, the fleet's m has been seen and ignored.
    publish_retained(
        &coord,
        "sad/v1/models/fleet1/m",
        signed_frame("m", 6, &signing_key()),
    )
    .await;
    publish_retained(
        &coord,
        "sad/v1/models/fleet1/z",
        signed_frame("z", 1, &signing_key()),
    )
    .await;
    assert!(wait_until_async(WAIT, || models.version_of("z") == Some(1)).await);
    assert_eq!(
        models.version_of("m"),
        Some(5),
        "the fleet's bundle replaced the group's"
    );

    // The canary ends: its retained bundle is cleared and the fleet's m takes over.
    publish_retained(&coord, "sad/v1/models/canary/m", Vec::new()).await;
    assert!(
        wait_until_async(WAIT, || models.version_of("m") == Some(6)).await,
        "the fleet's bundle was not applied after the group's was withdrawn"
    );
    stop.cancel();
    tokio::time::timeout(WAIT, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
