//! Reads a sample of text and caption payloads for the tokenizer bootstrap.
//!
//! The reader assigns the partitions of the text and pair topics directly and reads them from
//! their low watermarks, without joining any consumer group and without committing anything,
//! so it never disturbs the daemon's group offsets.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};

use super::config::KafkaConfig;
use crate::record::RecordKind;

/// Why the bootstrap sample could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// The `[kafka]` configuration is invalid.
    #[error(transparent)]
    Config(#[from] super::config::ConfigError),
    /// librdkafka refused to create the client.
    #[error("cannot create the Kafka bootstrap reader: {0}")]
    Create(#[source] rdkafka::error::KafkaError),
    /// A metadata or watermark request failed (brokers unreachable).
    #[error("reading {topic} for the tokenizer bootstrap: {source}")]
    Request {
        /// The topic concerned.
        topic: String,
        /// librdkafka's error.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// The blocking reader could not run.
    #[error("Kafka bootstrap task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Reads up to `max_records` non-empty payloads of the text and pair topics, oldest first
/// per partition, stopping at the end of every partition (as of the call) or after
/// `timeout`, whichever comes first. A topic that does not exist contributes nothing.
pub async fn bootstrap_texts(
    cfg: &KafkaConfig,
    max_records: usize,
    timeout: Duration,
) -> Result<Vec<Vec<u8>>, BootstrapError> {
    cfg.validate()?;
    let cfg = cfg.clone();
    tokio::task::spawn_blocking(move || read_sample(&cfg, max_records, timeout)).await?
}

fn read_sample(
    cfg: &KafkaConfig,
    max_records: usize,
    timeout: Duration,
) -> Result<Vec<Vec<u8>>, BootstrapError> {
    let deadline = Instant::now() + timeout;
    let remaining = || deadline.saturating_duration_since(Instant::now());
    let mut client = cfg.client_config();
    client
        .set("client.id", "unimod-bootstrap")
        // librdkafka's assign() needs a group id; this one is never joined nor committed to.
        .set("group.id", format!("{}.bootstrap", cfg.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false");
    let consumer: BaseConsumer = client.create().map_err(BootstrapError::Create)?;

    // End offset (exclusive) still to reach, per partition.
    let mut ends: HashMap<(String, i32), i64> = HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for kind in [RecordKind::Text, RecordKind::Pair] {
        let topic = cfg.topics.topic(kind);
        let metadata = consumer
            .fetch_metadata(Some(topic), remaining())
            .map_err(|source| BootstrapError::Request { topic: topic.to_owned(), source })?;
        let Some(meta) = metadata.topics().iter().find(|t| t.name() == topic) else { continue };
        if meta.error().is_some() {
            tracing::info!(%topic, "topic not readable; no bootstrap texts from it");
            continue;
        }
        for partition in meta.partitions() {
            let (low, high) = consumer
                .fetch_watermarks(topic, partition.id(), remaining())
                .map_err(|source| BootstrapError::Request { topic: topic.to_owned(), source })?;
            if high > low {
                tpl.add_partition_offset(topic, partition.id(), Offset::Offset(low))
                    .map_err(|source| BootstrapError::Request { topic: topic.to_owned(), source })?;
                ends.insert((topic.to_owned(), partition.id()), high);
            }
        }
    }
    let mut sample = Vec::new();
    if ends.is_empty() || max_records == 0 {
        return Ok(sample);
    }
    consumer
        .assign(&tpl)
        .map_err(|source| BootstrapError::Request { topic: "(assign)".into(), source })?;
    while !ends.is_empty() && sample.len() < max_records {
        let left = remaining();
        if left.is_zero() {
            tracing::warn!(records = sample.len(), "tokenizer bootstrap read timed out; using what was read");
            break;
        }
        match consumer.poll(left.min(Duration::from_millis(200))) {
            None => {}
            Some(Err(error)) => tracing::debug!(%error, "bootstrap read error"),
            Some(Ok(message)) => {
                let key = (message.topic().to_owned(), message.partition());
                if let Some(payload) = message.payload().filter(|p| !p.is_empty()) {
                    sample.push(payload.to_vec());
                }
                if ends.get(&key).is_some_and(|end| message.offset() + 1 >= *end) {
                    ends.remove(&key);
                }
            }
        }
    }
    Ok(sample)
}
