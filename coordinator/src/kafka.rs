//! The Kafka side of the coordinator: topic management and the alert sink.
//!
//! - [`ensure_topics`] creates the input and output topics when missing
//!   (an existing topic is left as it is).
//! - [`AlertSink`] is where accepted alerts go after the store: nowhere
//!   (store only, no `KAFKA_BROKERS`) or the output topic through an
//!   **idempotent** rdkafka producer (`acks=all`). Records are keyed by
//!   series (one series stays in one partition, in order), carry the
//!   [`AlertRecord`] JSON as value and the `alert_id` as a header.
//!   [`AlertSink::deliver`] returns only when every delivery report arrived;
//!   an error means "not known to be in Kafka", and the caller must not ack.
//!   A message librdkafka cannot deliver within `message.timeout.ms`
//!   (30 s) fails; the intake then retries the whole batch, so duplicates can
//!   reach Kafka and are removable by `alert_id`.
//!
//! Nothing is persisted here; librdkafka's queue is in memory.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError as RdKafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use sad_common::config::EnvSettings;
use sad_common::{Alert, AlertRecord};
use thiserror::Error;

use crate::metrics::CoordinatorMetrics;

/// How long librdkafka tries to deliver one record before reporting failure.
pub const MESSAGE_TIMEOUT: Duration = Duration::from_secs(30);

/// Where Kafka is and which topics and group the coordinator uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaConfig {
    /// Bootstrap servers (`KAFKA_BROKERS`).
    pub brokers: String,
    /// Alert topic (`KAFKA_TOPIC_OUTPUT`).
    pub output_topic: String,
    /// Event topic of central detection (`KAFKA_TOPIC_INPUT`).
    pub input_topic: String,
    /// Consumer group of central detection (`KAFKA_GROUP_ID`).
    pub group_id: String,
    /// Partitions of topics created at start (default 6).
    pub partitions: i32,
    /// Replication factor of topics created at start (default 1).
    pub replication: i32,
}

impl KafkaConfig {
    /// The Kafka settings of the environment; `None` without `KAFKA_BROKERS`.
    pub fn from_env(env: &EnvSettings) -> Option<Self> {
        env.kafka_brokers.as_ref().map(|b| Self {
            brokers: b.clone(),
            output_topic: env.kafka_topic_output.clone(),
            input_topic: env.kafka_topic_input.clone(),
            group_id: env.kafka_group_id.clone(),
            partitions: 6,
            replication: 1,
        })
    }

    /// A librdkafka client config with the bootstrap servers set.
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        c
    }
}

/// Errors of topic management and producer creation.
#[derive(Debug, Error)]
pub enum KafkaError {
    /// librdkafka refused the configuration or the request failed.
    #[error("kafka: {0}")]
    Client(#[from] RdKafkaError),
    /// A topic could not be created.
    #[error("cannot create kafka topic {topic}: {reason}")]
    CreateTopic {
        /// The topic.
        topic: String,
        /// librdkafka's code.
        reason: String,
    },
}

/// Why alerts are not known to be delivered.
#[derive(Debug, Error)]
pub enum SinkError {
    /// At least one record failed (broker down, timeout, refused).
    #[error("{failed} of {total} alerts not delivered to kafka: {first}")]
    Delivery {
        /// Records that failed.
        failed: usize,
        /// Records of the call.
        total: usize,
        /// The first error.
        first: String,
    },
}

/// Creates the input and output topics when they do not exist yet.
pub async fn ensure_topics(cfg: &KafkaConfig) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = cfg.client_config().create()?;
    let mut names = vec![cfg.output_topic.as_str()];
    if cfg.input_topic != cfg.output_topic {
        names.push(cfg.input_topic.as_str());
    }
    let topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|n| {
            NewTopic::new(
                n,
                cfg.partitions.max(1),
                TopicReplication::Fixed(cfg.replication.max(1)),
            )
        })
        .collect();
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(30)));
    for result in admin.create_topics(&topics, &opts).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(KafkaError::CreateTopic {
                    topic,
                    reason: code.to_string(),
                });
            }
        }
    }
    Ok(())
}

enum Target {
    StoreOnly,
    Kafka {
        /// Replaced after a fatal idempotence error (e.g. a broker that lost producer state).
        producer: std::sync::Mutex<FutureProducer>,
        config: ClientConfig,
        topic: String,
    },
}

/// Where alerts go after the store: nowhere else, or the Kafka output topic.
pub struct AlertSink {
    target: Target,
    metrics: Option<CoordinatorMetrics>,
}

impl AlertSink {
    /// No Kafka: alerts live only in the store; [`AlertSink::deliver`] always succeeds.
    pub fn store_only() -> Self {
        Self {
            target: Target::StoreOnly,
            metrics: None,
        }
    }

    /// An idempotent producer (`acks=all`) to `cfg.output_topic`; counts failures in `metrics`.
    pub fn kafka(
        cfg: &KafkaConfig,
        metrics: Option<CoordinatorMetrics>,
    ) -> Result<Self, KafkaError> {
        let mut config = cfg.client_config();
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("compression.type", "none")
            .set(
                "message.timeout.ms",
                MESSAGE_TIMEOUT.as_millis().to_string(),
            );
        let producer: FutureProducer = config.create()?;
        Ok(Self {
            target: Target::Kafka {
                producer: std::sync::Mutex::new(producer),
                config,
                topic: cfg.output_topic.clone(),
            },
            metrics,
        })
    }

    fn target_producer(&self) -> Result<std::sync::MutexGuard<'_, FutureProducer>, ()> {
        match &self.target {
            Target::Kafka { producer, .. } => {
                Ok(producer.lock().unwrap_or_else(|p| p.into_inner()))
            }
            Target::StoreOnly => Err(()),
        }
    }

    /// Whether alerts go to Kafka.
    pub fn is_kafka(&self) -> bool {
        matches!(self.target, Target::Kafka { .. })
    }

    /// Sends every alert and waits for every delivery report; `Ok` only when all succeeded.
    pub async fn deliver(&self, alerts: &[Alert]) -> Result<(), SinkError> {
        let Target::Kafka {
            producer,
            config,
            topic,
        } = &self.target
        else {
            return Ok(());
        };
        let producer = producer.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut pending = Vec::with_capacity(alerts.len());
        let mut failed = 0usize;
        let mut first: Option<String> = None;
        for a in alerts {
            let id = a.alert_id();
            let value = serde_json::to_vec(&AlertRecord::from(a)).unwrap_or_default();
            let headers = OwnedHeaders::new().insert(Header {
                key: "alert_id",
                value: Some(id.as_bytes()),
            });
            let mut record = FutureRecord::to(topic)
                .key(a.series.as_bytes())
                .payload(&value)
                .headers(headers)
                .timestamp(a.ts_ms);
            loop {
                match producer.send_result(record) {
                    Ok(fut) => {
                        pending.push(fut);
                        break;
                    }
                    Err((RdKafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        // The local queue is full: wait for what is in flight, then retry.
                        record = r;
                        for fut in pending.drain(..) {
                            if let Some(e) = delivery_error(fut.await) {
                                failed += 1;
                                first.get_or_insert(e);
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((e, _)) => {
                        failed += 1;
                        first.get_or_insert(e.to_string());
                        break;
                    }
                }
            }
        }
        for fut in pending {
            if let Some(e) = delivery_error(fut.await) {
                failed += 1;
                first.get_or_insert(e);
            }
        }
        if failed == 0 {
            return Ok(());
        }
        if let Some(m) = &self.metrics {
            m.kafka_delivery_errors.inc_by(failed as u64);
        }
        // After failed deliveries (timeouts while the broker was away, or a fatal
        // idempotence error when a broker lost producer state) the old producer can
        // stay wedged: start a new one (new producer id); the caller re-sends.
        let fatal = producer.client().fatal_error();
        tracing::warn!(
            ?fatal,
            failed,
            "kafka deliveries failed, recreating the producer"
        );
        match config.create::<FutureProducer>() {
            Ok(p) => {
                if let Ok(mut slot) = self.target_producer() {
                    *slot = p;
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot recreate the kafka producer"),
        }
        Err(SinkError::Delivery {
            failed,
            total: alerts.len(),
            first: first.unwrap_or_default(),
        })
    }
}

type DeliveryOutcome = <rdkafka::producer::DeliveryFuture as std::future::Future>::Output;

fn delivery_error(r: DeliveryOutcome) -> Option<String> {
    match r {
        Ok(Ok(_)) => None,
        Ok(Err((e, _))) => Some(e.to_string()),
        Err(_) => Some("producer dropped the delivery report".into()),
    }
}
