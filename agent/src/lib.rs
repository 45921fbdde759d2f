//! Edge agent of the stream anomaly detector.
