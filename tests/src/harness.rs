//! A whole system on loopback for one fault test: Mosquitto, tansu, the real
//! coordinator process bridging to Kafka, and the Kafka oracle; plus the
//! figures each fault test prints.

use std::time::Duration;

use crate::coordinator::{CoordinatorProc, CoordinatorSpec};
use crate::mosquitto::Mosquitto;
use crate::oracle::{Conservation, KafkaOracle};
use crate::tansu::Tansu;

/// Which brokers keep their state across a restart.
#[derive(Debug, Clone, Copy, Default)]
pub struct HarnessOptions {
    /// Mosquitto with persistence ([`Mosquitto::start_persistent`]).
    pub mqtt_persistent: bool,
    /// tansu with SQLite storage ([`Tansu::start_persistent`]) instead of memory.
    pub kafka_persistent: bool,
}

/// Brokers, coordinator and oracle, all stopped on drop.
pub struct Harness {
    /// The MQTT broker agents and coordinator share.
    pub mqtt: Mosquitto,
    /// The Kafka-protocol broker.
    pub kafka: Tansu,
    /// The coordinator process (`serve` with `KAFKA_BROKERS`).
    pub coordinator: CoordinatorProc,
    /// Reader of the output topic.
    pub oracle: KafkaOracle,
    /// The output topic.
    pub topic: String,
}

impl Harness {
    /// Starts everything and waits until the coordinator answers and the output topic exists.
    pub fn start(opts: HarnessOptions) -> Harness {
        let mqtt = if opts.mqtt_persistent {
            Mosquitto::start_persistent()
        } else {
            Mosquitto::start()
        };
        let kafka = if opts.kafka_persistent {
            Tansu::start_persistent()
        } else {
            Tansu::start()
        };
        let topic = format!("alerts-{}", crate::free_port());
        let coordinator = CoordinatorProc::start(CoordinatorSpec {
            mqtt_url: mqtt.url(),
            kafka_brokers: Some(kafka.brokers()),
            output_topic: topic.clone(),
            input_topic: format!("{topic}-input"),
        });
        let oracle = KafkaOracle::start(&kafka.brokers(), &topic);
        Harness {
            mqtt,
            kafka,
            coordinator,
            oracle,
            topic,
        }
    }

    /// Every record of the output topic, re-read from the beginning (60 s at most).
    pub fn read_all(&self) -> Vec<crate::oracle::Seen> {
        crate::oracle::read_topic(&self.kafka.brokers(), &self.topic, Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("reading {} back: {e}", self.topic))
    }
}

/// Whether the long mode is on (`SAD_LONG=1`): many more repetitions, for the report.
pub fn long_mode() -> bool {
    std::env::var("SAD_LONG").is_ok_and(|v| v == "1")
}

/// `normal` repetitions, `long` with `SAD_LONG=1`, or exactly `SAD_REPEAT`
/// when that is set to a positive number (a run between the two).
pub fn repetitions(normal: usize, long: usize) -> usize {
    if let Some(n) = std::env::var("SAD_REPEAT")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
    {
        return n;
    }
    if long_mode() { long } else { normal }
}

/// The figures of one fault test, printed as a row of `docs/RELIABILITY.md`'s table.
#[derive(Debug, Clone)]
pub struct FaultFigures {
    /// Which fault.
    pub fault: String,
    /// How it was injected.
    pub injected: String,
    /// How many times.
    pub times: usize,
    /// Conservation of the alerts.
    pub conservation: Conservation,
    /// Time from each heal to a fresh alert in Kafka.
    pub recovery: Vec<Duration>,
}

impl FaultFigures {
    /// The largest and the median recovery time, in seconds.
    pub fn recovery_max_median(&self) -> (f64, f64) {
        let mut r: Vec<f64> = self.recovery.iter().map(Duration::as_secs_f64).collect();
        r.sort_by(f64::total_cmp);
        if r.is_empty() {
            return (0.0, 0.0);
        }
        (r[r.len() - 1], r[r.len() / 2])
    }

    /// Prints the figures (a Markdown table row and a readable line).
    pub fn print(&self) {
        let c = &self.conservation;
        let (max, median) = self.recovery_max_median();
        println!(
            "FAULT {}: injected {} x{}; raised {}, delivered {}, dropped by policy {}, lost {}, \
             duplicates {} (same id), re-raised under a new id {}, corrupt {}, unknown {}; \
             recovery median {median:.2} s, max {max:.2} s over {} heals",
            self.fault,
            self.injected,
            self.times,
            c.raised,
            c.delivered,
            c.dropped,
            c.lost,
            c.duplicates,
            c.reraised,
            c.corrupt,
            c.unknown,
            self.recovery.len()
        );
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {median:.2} / {max:.2} |",
            self.fault,
            self.injected,
            self.times,
            c.raised,
            c.delivered,
            c.dropped,
            c.lost,
            c.duplicates,
        );
    }
}
