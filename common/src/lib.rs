//! Wire contract of the stream anomaly detector, shared by agent and coordinator.
//!
//! - [`ModelKind`]: which model a detector or bundle is.

pub mod model_kind;

pub use model_kind::ModelKind;
