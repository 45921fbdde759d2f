//! Cross-process test harness of the stream anomaly detector.
//!
//! Real processes on loopback ports: a private Mosquitto ([`Mosquitto`]),
//! a private tansu Kafka-protocol broker ([`Tansu`]), the `anomaly-coordinator`
//! and `anomaly-agent` binaries ([`CoordinatorProc`], [`AgentProc`]), a
//! cuttable TCP proxy ([`TcpProxy`]) and an oracle that reads what reached
//! Kafka and checks it against what the agents raised ([`oracle`]).
//! The fault tests live in `tests/faults.rs`; the agent's and coordinator's
//! own integration tests use [`Mosquitto`], [`Tansu`] and [`free_port`] too.
//!
//! Durability under test: an agent's data directory and the coordinator's
//! data directory are temp dirs that outlive their processes, so a `kill -9`
//! loses exactly what the process had not made durable, and a restart
//! continues from what it had.

pub mod agent;
pub mod bins;
pub mod coordinator;
pub mod damage;
pub mod harness;
pub mod mosquitto;
pub mod oracle;
pub mod process;
pub mod proxy;
pub mod tansu;

pub use agent::{AgentProc, AgentSpec, OutboxState, Stream, inspect_outbox};
pub use coordinator::{CoordinatorProc, CoordinatorSpec};
pub use harness::{FaultFigures, Harness, HarnessOptions, long_mode, repetitions};
pub use mosquitto::Mosquitto;
pub use oracle::{Conservation, KafkaOracle, Raised, conservation};
pub use process::{free_port, wait_port, wait_until, wait_until_async};
pub use proxy::TcpProxy;
pub use tansu::{Tansu, skip_kafka, tansu_bin};
