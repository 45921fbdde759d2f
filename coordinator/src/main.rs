//! `anomaly-coordinator`: the coordinator binary.
fn main() {
    println!("anomaly-coordinator {}", env!("CARGO_PKG_VERSION"));
}
