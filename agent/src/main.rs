//! `anomaly-agent`: the edge agent binary.
fn main() {
    println!("anomaly-agent {}", env!("CARGO_PKG_VERSION"));
}
