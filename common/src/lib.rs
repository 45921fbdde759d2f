//! Wire contract of the stream anomaly detector, shared by agent and coordinator.
//!
//! - [`model_kind`]: [`ModelKind`], which model a detector or bundle is.
//! - [`calibration`]: [`Calibration`], [`StandardScaler`], score and feature maps carried in manifests.
//! - [`wire`]: the messages (event, alert, batch, ack, heartbeat, samples,
//!   model manifest and bundle), their `validate` rules and caps ([`wire::limits`]).
//! - [`frame`]: postcard framing behind a format version byte; [`frame::decode`]
//!   validates everything it returns.
//! - [`topics`]: the MQTT topic scheme (`{prefix}/agents/{agent}/alerts`, ...).
//! - [`config`]: the environment variables of the seed ([`config::EnvSettings`])
//!   and TOML loading with line/column errors.
//! - [`metrics`]: Prometheus metric names.

pub mod calibration;
pub mod config;
pub mod frame;
pub mod metrics;
pub mod model_kind;
pub mod topics;
pub mod wire;

pub use calibration::{Calibration, StandardScaler};
pub use frame::{FORMAT_VERSION, FrameError, Wire};
pub use model_kind::ModelKind;
pub use topics::{TopicError, TopicKind, Topics};
pub use wire::{
    Ack, Alert, AlertBatch, AlertId, AlertRecord, Event, FeatureContribution, FeatureVector,
    Heartbeat, LabelCounts, LabelledOutcomes, ModelBundle, ModelManifest, ModelStatus, Samples,
    ScoreSummary, Severity, TrainingInfo, WireError,
};
