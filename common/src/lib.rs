//! Wire contract of the stream anomaly detector, shared by agent and coordinator.
//!
//! - [`ModelKind`]: which model a detector or bundle is.
//! - [`Calibration`], [`StandardScaler`]: score and feature maps carried in manifests.

pub mod calibration;
pub mod model_kind;

pub use calibration::{Calibration, StandardScaler};
pub use model_kind::ModelKind;
