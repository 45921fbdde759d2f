//! The oracle of the fault tests: what reached Kafka, and whether it
//! accounts for every alert the agents raised.
//!
//! [`KafkaOracle`] reads the coordinator's output topic from the beginning
//! with its own rdkafka consumer (partitions assigned directly, no consumer
//! group, so it rides through broker restarts) and timestamps each record on
//! arrival, for recovery times. [`read_topic`] re-reads the whole topic with
//! a fresh consumer up to its end, for the final count. [`conservation`]
//! checks the records against what each agent raised (`1..=last_seq` from
//! its outbox) and the generated stream (payload intact).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use sad_common::AlertRecord;

use crate::agent::{PROBE_T0_MS, Stream};

/// One record of the output topic as it arrived.
#[derive(Debug, Clone)]
pub struct Seen {
    /// When the oracle read it.
    pub at: Instant,
    /// The raw value bytes.
    pub value: Vec<u8>,
    /// The value parsed as an [`AlertRecord`], if it parses.
    pub record: Option<AlertRecord>,
}

fn consumer(brokers: &str, eof: bool) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("oracle-{}", crate::free_port()))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", if eof { "true" } else { "false" })
        .set("fetch.wait.max.ms", "100")
        .set("reconnect.backoff.max.ms", "1000")
        .create()
        .expect("kafka consumer")
}

/// Assigns every partition of `topic` from the beginning; returns the partition count.
fn assign_all(c: &BaseConsumer, topic: &str, timeout: Duration) -> Option<usize> {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if let Ok(md) = c.fetch_metadata(Some(topic), Duration::from_secs(5))
            && let Some(t) = md.topics().iter().find(|t| t.name() == topic)
            && !t.partitions().is_empty()
            && t.error().is_none()
        {
            let mut tpl = TopicPartitionList::new();
            for p in t.partitions() {
                tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
                    .ok()?;
            }
            c.assign(&tpl).ok()?;
            return Some(t.partitions().len());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    None
}

fn seen(value: &[u8]) -> Seen {
    Seen {
        at: Instant::now(),
        value: value.to_vec(),
        record: serde_json::from_slice(value).ok(),
    }
}

/// A live reader of the output topic, stopped on drop.
pub struct KafkaOracle {
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl KafkaOracle {
    /// Starts reading `topic` on `brokers` from the beginning; waits (60 s at
    /// most) until the topic exists and its partitions are assigned.
    pub fn start(brokers: &str, topic: &str) -> KafkaOracle {
        let c = consumer(brokers, false);
        assert!(
            assign_all(&c, topic, Duration::from_secs(60)).is_some(),
            "topic {topic} does not exist on {brokers}"
        );
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (seen, stop) = (seen.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
                        let s = self::seen(m.payload().unwrap_or_default());
                        seen.lock().unwrap().push(s);
                    }
                }
            })
        };
        KafkaOracle {
            seen,
            stop,
            thread: Some(thread),
        }
    }

    /// Records read so far.
    pub fn len(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Whether nothing was read yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A copy of every record read so far.
    pub fn snapshot(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// When a record matching `pred` was first read, waiting up to `timeout` for one.
    pub fn wait_for(
        &self,
        timeout: Duration,
        pred: impl Fn(&AlertRecord) -> bool,
    ) -> Option<Instant> {
        let mut found = None;
        crate::wait_until(timeout, || {
            found = self
                .seen
                .lock()
                .unwrap()
                .iter()
                .find(|s| s.record.as_ref().is_some_and(&pred))
                .map(|s| s.at);
            found.is_some()
        });
        found
    }

    /// When the alert of probe `k` (series `probe-{k}`) of `agent_id` was read, waiting up to `timeout`.
    pub fn wait_probe(&self, agent_id: &str, k: u64, timeout: Duration) -> Option<Instant> {
        let series = format!("probe-{k}");
        self.wait_for(timeout, |r| r.agent_id == agent_id && r.series == series)
    }

    /// Distinct alert ids read so far.
    pub fn distinct_ids(&self) -> BTreeSet<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter_map(|s| s.record.as_ref().map(|r| r.alert_id.clone()))
            .collect()
    }
}

impl Drop for KafkaOracle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads every record of `topic` from the beginning to its current end with a fresh consumer.
pub fn read_topic(brokers: &str, topic: &str, timeout: Duration) -> Result<Vec<Seen>, String> {
    let c = consumer(brokers, true);
    let parts = assign_all(&c, topic, timeout).ok_or(format!("topic {topic} not found"))?;
    let mut at_end = BTreeSet::new();
    let mut out = Vec::new();
    let end = Instant::now() + timeout;
    while at_end.len() < parts {
        if Instant::now() > end {
            return Err(format!(
                "read {} records but only {} of {parts} partitions reached their end",
                out.len(),
                at_end.len()
            ));
        }
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => out.push(seen(m.payload().unwrap_or_default())),
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            _ => {}
        }
    }
    Ok(out)
}

/// What one agent raised, to check the topic against.
#[derive(Debug, Clone)]
pub struct Raised<'a> {
    /// The agent.
    pub agent_id: String,
    /// Alerts `1..=last_seq` were raised (from its outbox).
    pub last_seq: u64,
    /// Alerts its outbox dropped by the documented full-outbox policy.
    pub dropped: u64,
    /// The stream it replayed (payloads are checked against it).
    pub stream: &'a Stream,
}

/// The conservation figures of one test.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Conservation {
    /// Alerts raised by all agents.
    pub raised: u64,
    /// Distinct raised alert ids found in Kafka.
    pub delivered: u64,
    /// Alerts dropped by the outbox's full policy (documented, counted apart from lost).
    pub dropped: u64,
    /// Raised alerts neither in Kafka nor accounted for by `dropped`.
    pub lost: u64,
    /// Records in Kafka beyond the first of each alert id.
    pub duplicates: u64,
    /// Events (agent, series, event time) that reached Kafka under more than one alert id.
    pub reraised: u64,
    /// Records that do not parse, carry a payload that differs from the event
    /// that raised them, or differ from another copy with the same alert id.
    pub corrupt: u64,
    /// Alert ids in Kafka that no agent raised.
    pub unknown: u64,
    /// Up to 5 examples of problems, for the failure message.
    pub examples: Vec<String>,
}

impl Conservation {
    /// Whether nothing was lost, corrupted, invented or re-raised under a new id.
    pub fn holds(&self) -> bool {
        self.lost == 0 && self.reraised == 0 && self.corrupt == 0 && self.unknown == 0
    }

    fn note(&mut self, what: String) {
        if self.examples.len() < 5 {
            self.examples.push(what);
        }
    }
}

/// Checks Kafka's `records` against what the agents raised: every alert
/// raised is there (or dropped by the outbox policy), payload intact, and
/// duplicates only ever share their alert id.
pub fn conservation(records: &[Seen], agents: &[Raised<'_>]) -> Conservation {
    let mut c = Conservation::default();
    // first copy of each alert id, and the alert ids of each event
    let mut first: BTreeMap<String, &serde_json::Value> = BTreeMap::new();
    let mut values: Vec<serde_json::Value> = Vec::with_capacity(records.len());
    for s in records {
        values.push(serde_json::from_slice(&s.value).unwrap_or(serde_json::Value::Null));
    }
    let mut events: BTreeMap<(String, String, i64), BTreeSet<String>> = BTreeMap::new();
    for (s, v) in records.iter().zip(&values) {
        let Some(r) = &s.record else {
            c.corrupt += 1;
            c.note(format!(
                "unparsable record {:?}",
                String::from_utf8_lossy(&s.value)
            ));
            continue;
        };
        let Some(agent) = agents.iter().find(|a| a.agent_id == r.agent_id) else {
            c.unknown += 1;
            c.note(format!("{} from an unknown agent", r.alert_id));
            continue;
        };
        if r.alert_id != format!("{}:{}", r.agent_id, r.seq) || r.seq == 0 || r.seq > agent.last_seq
        {
            c.unknown += 1;
            c.note(format!(
                "{} not raised (last seq {})",
                r.alert_id, agent.last_seq
            ));
            continue;
        }
        match first.get(&r.alert_id) {
            Some(f) => {
                c.duplicates += 1;
                if *f != v {
                    c.corrupt += 1;
                    c.note(format!("{} differs between copies", r.alert_id));
                }
                continue;
            }
            None => {
                first.insert(r.alert_id.clone(), v);
            }
        }
        if !payload_intact(r, agent.stream) {
            c.corrupt += 1;
            c.note(format!(
                "{} payload differs from its event: {r:?}",
                r.alert_id
            ));
        }
        events
            .entry((r.agent_id.clone(), r.series.clone(), r.ts_ms))
            .or_default()
            .insert(r.alert_id.clone());
    }
    for ids in events.values() {
        if ids.len() > 1 {
            c.reraised += ids.len() as u64 - 1;
            c.note(format!("one event under several alert ids: {ids:?}"));
        }
    }
    for a in agents {
        c.raised += a.last_seq;
        c.dropped += a.dropped;
        let delivered = (1..=a.last_seq)
            .filter(|seq| first.contains_key(&format!("{}:{seq}", a.agent_id)))
            .count() as u64;
        c.delivered += delivered;
        let missing = a.last_seq - delivered;
        let lost = missing.saturating_sub(a.dropped);
        if lost > 0 {
            let ids: Vec<u64> = (1..=a.last_seq)
                .filter(|seq| !first.contains_key(&format!("{}:{seq}", a.agent_id)))
                .take(10)
                .collect();
            c.note(format!(
                "{}: {missing} raised alerts missing from kafka, {} dropped by policy; first missing seqs {ids:?}",
                a.agent_id, a.dropped
            ));
        }
        c.lost += lost;
    }
    c
}

/// Whether a record carries exactly the event that raised it: a stream row
/// (same series and values) or a probe (its series, the probe's values).
fn payload_intact(r: &AlertRecord, stream: &Stream) -> bool {
    let plausible = r.schema == AlertRecord::SCHEMA
        && (0.0..=1.0).contains(&r.score)
        && r.score >= r.threshold
        && r.model == "iforest";
    if !plausible {
        return false;
    }
    if let Some(row) = stream.row_at(r.ts_ms) {
        return row.series == r.series && row.values == r.values;
    }
    let k = r.ts_ms - PROBE_T0_MS;
    k >= 0 && r.series == format!("probe-{k}") && r.values == vec![20.5; 4]
}
