//! `anomaly-agent`: the edge agent binary (being assembled).
fn main() {
    println!("anomaly-agent {}", env!("CARGO_PKG_VERSION"));
}
