//! Coordinator of the stream anomaly detector.
