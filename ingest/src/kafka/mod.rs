//! Kafka: the consumer of the three input topics, the dead-letter producer, the
//! `unimod produce` library and the tokenizer bootstrap reader.
//!
//! # API summary (for the daemon)
//!
//! ```text
//! let cfg: KafkaConfig = ...;                  // TOML [kafka]; cfg.validate()? names the bad key
//! let metrics = KafkaMetrics::register(&registry)?;   // crate::telemetry: lag, pending, resets
//! let (tx, rx) = tokio::sync::mpsc::channel::<RawRecord>(cfg.queue_capacity);
//! let consumer = KafkaConsumer::start(&cfg, start_offsets /* StartOffsets: TopicPartition ->
//!                                    next offset, from the checkpoint */, tx, metrics, cancel.child_token())?;
//! // rx yields RawRecord in partition order; when it is full the consumer pauses (and resumes).
//! // Or one channel per kind plus a byte budget (each kind paused on its own):
//! // KafkaConsumer::start_lanes(&cfg, start_offsets, Lanes { senders, budget }, metrics, cancel)
//! consumer.connected()                          // bool for /readyz
//! consumer.commit(&[PartitionOffsets { .. }]).await?   // only after a durable checkpoint
//! consumer.rebalance_events() / assignment() / is_paused() / position(t, p) / waiting_in_kafka(kind)
//! consumer.take_offset_resets()                 // partitions restarted after an out-of-range offset
//! consumer.shutdown().await;                    // closes the client
//!
//! let dlq = DeadLetterProducer::new(&cfg)?;     // Ok(None) when dead_letter_topic is not set
//! dlq.send(&raw_record, reason, detail).await?; // awaits the broker's ack
//!
//! produce(&ProduceRequest { brokers, kind, topic, inputs, .. }, &mut |p: &ProduceProgress| ..).await?
//! bootstrap_texts(&cfg, max_records, timeout).await?   // Vec<Vec<u8>> of text + pair payloads
//! ```
//!
//! The consumer assigns itself every partition of the three topics (no group membership, so
//! no rebalance wait after a crash); partitions start where the checkpoint says (or per
//! `auto_offset_reset`), never at the group's committed offsets.

pub mod bootstrap;
pub mod config;
pub mod consumer;
pub mod context;
pub mod dead_letter;
pub mod error;
pub mod health;
pub mod produce;
pub mod queue;

pub use bootstrap::{bootstrap_texts, BootstrapError};
pub use config::{ConfigError, KafkaConfig, OffsetReset, TopicsConfig};
pub use consumer::{KafkaConsumer, Lanes, StartOffsets};
pub use context::{PartitionReset, RebalanceEvent, ResetFeed, TopicPartition};
pub use dead_letter::{CopyOutcome, DeadLetterProducer, TopicCheck, HEADER_ERROR, HEADER_VALUE_DROPPED, HEADER_SOURCE_OFFSET, HEADER_SOURCE_PARTITION, HEADER_SOURCE_TOPIC};
pub use error::{BadLine, ConsumerError, DeadLetterError, ProduceError};
pub use health::{BrokerHealth, HealthSnapshot};
pub use crate::telemetry::{KafkaMetrics, CONSUMER_LAG, OFFSET_RESETS, RECORDS_PENDING};
pub use queue::QueueBudget;
pub use produce::{produce, ProduceProgress, ProduceRequest, ProduceSummary};
