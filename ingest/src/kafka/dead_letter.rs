//! Dead-letter copies of rejected records.
//!
//! A rejected record's key and value are copied unchanged to `dead_letter_topic`, with
//! headers that say why and where it came from, so an operator can inspect, fix and
//! re-publish it. Each copy is awaited until the broker acknowledges it.

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;

use super::config::{ConfigError, KafkaConfig};
use super::error::DeadLetterError;
use crate::record::RawRecord;

/// Header with the rejection reason and detail: `"<reason>: <detail>"`.
pub const HEADER_ERROR: &str = "unimod-error";
/// Header with the topic the rejected record was read from.
pub const HEADER_SOURCE_TOPIC: &str = "unimod-source-topic";
/// Header with its partition (decimal).
pub const HEADER_SOURCE_PARTITION: &str = "unimod-source-partition";
/// Header with its offset (decimal).
pub const HEADER_SOURCE_OFFSET: &str = "unimod-source-offset";

/// Largest record the producer accepts locally; the broker's own limit still applies.
const MAX_MESSAGE_BYTES: &str = "67108864";

/// Producer of dead-letter copies. Cheap to share behind an `Arc`; `send` takes `&self`.
pub struct DeadLetterProducer {
    producer: FutureProducer,
    topic: String,
}

impl std::fmt::Debug for DeadLetterProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetterProducer").field("topic", &self.topic).finish_non_exhaustive()
    }
}

impl DeadLetterProducer {
    /// The producer for `cfg.dead_letter_topic`, or `None` when no dead-letter topic is
    /// configured.
    pub fn new(cfg: &KafkaConfig) -> Result<Option<Self>, DeadLetterError> {
        match &cfg.dead_letter_topic {
            None => Ok(None),
            Some(topic) => Self::with_topic(cfg, topic).map(Some),
        }
    }

    /// A producer to `topic` using the brokers and options of `cfg`.
    pub fn with_topic(cfg: &KafkaConfig, topic: &str) -> Result<Self, DeadLetterError> {
        cfg.validate()?;
        if cfg.topics.kind_of(topic).is_some() {
            return Err(ConfigError {
                key: "dead_letter_topic".into(),
                reason: format!("{topic:?} is also an input topic"),
            }
            .into());
        }
        let mut client = cfg.client_config();
        if !cfg.options.contains_key("client.id") {
            client.set("client.id", "unimod-dead-letter");
        }
        if !cfg.options.contains_key("message.max.bytes") {
            client.set("message.max.bytes", MAX_MESSAGE_BYTES);
        }
        let producer: FutureProducer = client.create().map_err(DeadLetterError::Create)?;
        Ok(DeadLetterProducer { producer, topic: topic.to_owned() })
    }

    /// The dead-letter topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Copies `record` with the rejection `reason` (a short code such as `not_json`) and a
    /// human-readable `detail`; returns the copy's `(partition, offset)` once acknowledged.
    pub async fn send(
        &self,
        record: &RawRecord,
        reason: &str,
        detail: &str,
    ) -> Result<(i32, i64), DeadLetterError> {
        let headers = dead_letter_headers(record, reason, detail);
        let mut message: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(&self.topic).headers(headers);
        if let Some(key) = &record.key {
            message = message.key(key.as_slice());
        }
        if let Some(payload) = &record.payload {
            message = message.payload(payload.as_slice());
        }
        // Queue-full waits indefinitely (backpressure); librdkafka's `message.timeout.ms`
        // bounds the wait for the broker's acknowledgement.
        match self.producer.send(message, Timeout::Never).await {
            Ok(delivery) => {
                tracing::debug!(source = %record.pos, reason, partition = delivery.partition,
                    offset = delivery.offset, "dead-letter copy acknowledged");
                Ok((delivery.partition, delivery.offset))
            }
            Err((error, _message)) => Err(DeadLetterError::Delivery {
                topic: self.topic.clone(),
                source_pos: record.pos.to_string(),
                error,
            }),
        }
    }

    /// Waits up to `timeout` for every outstanding copy (for shutdown).
    pub fn flush(&self, timeout: std::time::Duration) -> Result<(), rdkafka::error::KafkaError> {
        self.producer.flush(timeout)
    }
}

/// The headers of a dead-letter copy of `record`.
pub fn dead_letter_headers(record: &RawRecord, reason: &str, detail: &str) -> OwnedHeaders {
    let error = if detail.is_empty() { reason.to_owned() } else { format!("{reason}: {detail}") };
    let partition = record.pos.partition.to_string();
    let offset = record.pos.offset.to_string();
    OwnedHeaders::new_with_capacity(4)
        .insert(Header { key: HEADER_ERROR, value: Some(error.as_bytes()) })
        .insert(Header { key: HEADER_SOURCE_TOPIC, value: Some(record.pos.topic.as_bytes()) })
        .insert(Header { key: HEADER_SOURCE_PARTITION, value: Some(partition.as_bytes()) })
        .insert(Header { key: HEADER_SOURCE_OFFSET, value: Some(offset.as_bytes()) })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use rdkafka::message::Headers;

    use super::*;
    use crate::record::{RecordKind, SourcePos};

    #[test]
    fn headers_name_the_error_and_the_source() {
        let record = RawRecord {
            kind: RecordKind::Pair,
            pos: SourcePos { topic: Arc::from("unimo.pair"), partition: 3, offset: 1234 },
            key: None,
            payload: Some(b"{not json".to_vec()),
            received_at: Instant::now(),
        };
        let headers = dead_letter_headers(&record, "not_json", "expected value at line 1");
        let pairs: Vec<(String, String)> = headers
            .iter()
            .map(|h| {
                (h.key.to_owned(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned())
            })
            .collect();
        assert_eq!(
            pairs,
            vec![
                ("unimod-error".into(), "not_json: expected value at line 1".into()),
                ("unimod-source-topic".into(), "unimo.pair".into()),
                ("unimod-source-partition".into(), "3".into()),
                ("unimod-source-offset".into(), "1234".into()),
            ]
        );
        let bare = dead_letter_headers(&record, "empty", "");
        assert_eq!(bare.get(0).value, Some(&b"empty"[..]));
    }

    #[test]
    fn no_topic_means_no_producer() {
        let cfg = KafkaConfig::new("127.0.0.1:1");
        assert!(DeadLetterProducer::new(&cfg).expect("valid config").is_none());
        let err = DeadLetterProducer::with_topic(&cfg, "unimo.text").expect_err("input topic");
        assert!(err.to_string().contains("dead_letter_topic"), "{err}");
    }
}
