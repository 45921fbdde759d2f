//! Coordinator of the stream anomaly detector.
//!
//! - [`broker`]: the embedded MQTT broker (rumqttd) used when no `MQTT_URL` is set.
//! - [`intake`]: MQTT alert intake (`$share/` subscription): decode, validate,
//!   dedupe, store, produce to Kafka, and only then ack the agent.
//! - [`store`]: the sled alert store, queryable, with retention.
//! - [`kafka`]: the Kafka producer (idempotent) and topic management.
//! - [`central`]: central detection on `KAFKA_TOPIC_INPUT` with the agent's pipeline.
//! - [`fleet`]: agents seen through their heartbeats.
//! - [`quality`]: precision and recall from labels and operator feedback.
//! - [`training`], [`gate`], [`drift`]: training jobs of every model kind and
//!   retraining from fleet samples, the quality gate a new version must pass,
//!   and drift of deployed versions.
//! - [`signing`], [`rollout`]: the ed25519 signing key, and signed rollout of
//!   model versions to the fleet with canary, promotion and rollback.
//! - [`api`]: the REST API on port 8001.
//! - [`metrics`]: Prometheus metrics on `PROMETHEUS_PORT`.
//! - [`config`], [`app`]: settings and the wiring of `serve`.
//! - [`evaluate`], [`demo`]: the evaluation commands and the README's first command.
//! - `train_cmd` (feature `train`): training, fine-tuning and the pre-trained models.

pub mod api;
pub mod app;
pub mod broker;
pub mod central;
pub mod config;
pub mod demo;
pub mod drift;
pub mod evaluate;
pub mod fleet;
pub mod gate;
pub mod intake;
pub mod kafka;
pub mod metrics;
pub mod quality;
pub mod rollout;
pub mod signing;
pub mod store;
#[cfg(feature = "train")]
pub mod train_cmd;
pub mod training;
