//! Isolation Forest scoring benchmarks (filled in with the forest).
fn main() {}
