//! Edge agent of the stream anomaly detector.
//!
//! Data flow: [`sources`] → [`pipeline`] (features, per-series state,
//! [`sad_models::Detector`]) → [`rules`] (thresholds, hysteresis, severity)
//! → [`outbox`] (sled, flushed before an alert counts as raised) →
//! [`uplink`] (MQTT, deleted only when the coordinator's [`ack`] covers it).
//! [`model_manager`] swaps signed models in; [`heartbeat`] reports status and
//! samples; [`http`] serves `/health`, `/metrics` and `/ingest`.

pub mod ack;
pub mod app;
pub mod config;
pub mod heartbeat;
pub mod http;
pub mod metrics;
pub mod model_manager;
pub mod outbox;
pub mod pipeline;
pub mod rules;
pub mod sources;
pub mod storage;
pub mod uplink;
