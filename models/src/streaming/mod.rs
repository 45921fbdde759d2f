//! Streaming detectors: Half-Space Trees and EWMA z-score.
