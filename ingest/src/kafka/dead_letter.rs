//! Dead-letter copies of rejected records.
//!
//! A rejected record's key and value are copied unchanged to `dead_letter_topic`, with
//! headers that say why and where it came from, so an operator can inspect, fix and
//! re-publish it.
//!
//! [`DeadLetterProducer::deliver`] never fails and never waits longer than its budget:
//! retriable delivery errors are retried until the budget is spent; a permanent error (the
//! copy is larger than a size limit, the topic refuses writes) or a spent budget sends a copy
//! without the value (headers only, plus `unimod-value-dropped: <reason>`); if even that
//! fails, the outcome says why and the caller counts it. Copies are at-least-once across
//! crashes: readers deduplicate by the source headers.

use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
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
/// Header of a copy sent without the record's value, with the reason the full copy failed.
pub const HEADER_VALUE_DROPPED: &str = "unimod-value-dropped";

/// Longest time [`DeadLetterProducer::deliver`] gives the headers-only copy after the full
/// copy failed for good.
const FALLBACK_BUDGET: Duration = Duration::from_secs(10);

/// What became of a dead-letter copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyOutcome {
    /// The full copy (key, value, headers) was acknowledged.
    Copied,
    /// The full copy failed for good (`reason`); a headers-only copy was acknowledged.
    ValueDropped {
        /// Why the full copy failed (a short code, e.g. `too_large`).
        reason: &'static str,
    },
    /// Neither copy was acknowledged.
    Failed {
        /// A short code for `unimod_dead_letter_failures_total{reason}`.
        reason: &'static str,
        /// librdkafka's last error.
        error: String,
    },
}

/// Why [`DeadLetterProducer::check_topic`] failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicCheck {
    /// The broker answered: the topic is missing or not accessible (a configuration error).
    Unusable(String),
    /// No answer (broker unreachable or slow): worth asking again.
    NoAnswer(String),
}

/// Whether a delivery error is worth retrying, with a short code for logs and metrics.
pub fn classify(error: &KafkaError) -> (bool, &'static str) {
    let code = match error {
        KafkaError::MessageProduction(code) => *code,
        _ => return (true, "other"),
    };
    use RDKafkaErrorCode as C;
    match code {
        C::MessageSizeTooLarge | C::InvalidMessageSize => (false, "too_large"),
        C::TopicAuthorizationFailed | C::ClusterAuthorizationFailed => (false, "not_authorized"),
        C::InvalidMessage | C::InvalidRecord | C::PolicyViolation | C::InvalidTopic => (false, "invalid"),
        C::MessageTimedOut => (true, "timed_out"),
        C::UnknownTopic | C::UnknownTopicOrPartition => (true, "unknown_topic"),
        _ => (true, "other"),
    }
}

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
        // librdkafka's own wait for an acknowledgement stays within the retry budget
        // (its default of 5 minutes would outlive it).
        if !cfg.options.contains_key("message.timeout.ms") {
            let ms = (cfg.dead_letter_retry_seconds * 1000.0).clamp(1000.0, 3_600_000.0) as u64;
            client.set("message.timeout.ms", ms.to_string());
        }
        let producer: FutureProducer = client.create().map_err(DeadLetterError::Create)?;
        Ok(DeadLetterProducer { producer, topic: topic.to_owned() })
    }

    /// The dead-letter topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Checks that the topic exists on the broker (a metadata request; brokers such as
    /// tansu never create a topic on produce). Blocking: call it off the async runtime.
    ///
    /// # Errors
    /// [`TopicCheck::Unusable`] with a one-line reason naming the topic (missing, or not
    /// accessible), or [`TopicCheck::NoAnswer`] when the broker did not answer in time.
    pub fn check_topic(&self, timeout: Duration) -> Result<usize, TopicCheck> {
        let topic = &self.topic;
        let md = self
            .producer
            .client()
            .fetch_metadata(Some(topic), Timeout::After(timeout))
            .map_err(|e| TopicCheck::NoAnswer(format!("cannot read the metadata of dead-letter topic {topic:?}: {e}")))?;
        let Some(t) = md.topics().iter().find(|t| t.name() == topic.as_str()) else {
            return Err(TopicCheck::Unusable(format!("dead-letter topic {topic:?} does not exist")));
        };
        if let Some(err) = t.error() {
            let code = RDKafkaErrorCode::from(err);
            return Err(TopicCheck::Unusable(match code {
                RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic => {
                    format!("dead-letter topic {topic:?} does not exist (create it first)")
                }
                RDKafkaErrorCode::TopicAuthorizationFailed => {
                    format!("dead-letter topic {topic:?} is not accessible to this client ({code})")
                }
                _ => format!("dead-letter topic {topic:?} is not usable: {code}"),
            }));
        }
        if t.partitions().is_empty() {
            return Err(TopicCheck::Unusable(format!("dead-letter topic {topic:?} does not exist (no partitions)")));
        }
        Ok(t.partitions().len())
    }

    /// Delivers a dead-letter copy of `record` within `budget` (see the module header);
    /// never fails, never waits much longer than `budget` plus a few seconds.
    pub async fn deliver(&self, record: &RawRecord, reason: &str, detail: &str, budget: Duration) -> CopyOutcome {
        let deadline = Instant::now() + budget;
        let mut backoff = Duration::from_millis(100);
        let why = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let attempt = tokio::time::timeout(left.max(Duration::from_millis(1)), self.send(record, reason, detail)).await;
            match attempt {
                Ok(Ok(_)) => return CopyOutcome::Copied,
                Ok(Err(DeadLetterError::Delivery { error, .. })) => {
                    let (retriable, code) = classify(&error);
                    if !retriable {
                        tracing::warn!(source = %record.pos, error = %error, "dead-letter copy refused for good; sending it without the value");
                        break code;
                    }
                    if Instant::now() + backoff >= deadline {
                        tracing::warn!(source = %record.pos, error = %error, "dead-letter copy still failing after its retry budget; sending it without the value");
                        break "retries_exhausted";
                    }
                    tracing::debug!(source = %record.pos, error = %error, "dead-letter copy failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Ok(Err(_)) => break "other",
                Err(_) => break "retries_exhausted",
            }
        };
        let headers = dead_letter_headers(record, reason, detail)
            .insert(Header { key: HEADER_VALUE_DROPPED, value: Some(why.as_bytes()) });
        let mut message: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.topic).headers(headers);
        if let Some(key) = record.key.as_deref().filter(|k| k.len() <= 1024) {
            message = message.key(key);
        }
        let left = deadline.saturating_duration_since(Instant::now()).max(FALLBACK_BUDGET);
        match tokio::time::timeout(left, self.producer.send(message, Timeout::After(left))).await {
            Ok(Ok(_)) => CopyOutcome::ValueDropped { reason: why },
            Ok(Err((error, _))) => CopyOutcome::Failed { reason: why, error: error.to_string() },
            Err(_) => CopyOutcome::Failed { reason: why, error: "no acknowledgement in time".into() },
        }
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
    let partition = record.pos.tp.partition.to_string();
    let offset = record.pos.offset.to_string();
    OwnedHeaders::new_with_capacity(4)
        .insert(Header { key: HEADER_ERROR, value: Some(error.as_bytes()) })
        .insert(Header { key: HEADER_SOURCE_TOPIC, value: Some(record.pos.tp.topic.as_bytes()) })
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
            pos: SourcePos::new(Arc::from("unimo.pair"), 3, 1234),
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
