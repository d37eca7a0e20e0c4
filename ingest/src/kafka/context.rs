//! The state the unimod consumer shares between its poll loop, its monitor and its handle,
//! and the librdkafka callbacks (logs and client errors feed broker health).
//!
//! The consumer does not join its group: it assigns the partitions of the three topics itself
//! (see [`super::consumer`]), each at the checkpoint's offset or per `auto_offset_reset`,
//! never at the group's committed offset. The group only receives commits, for lag tools.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;

use parking_lot::Mutex;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use tokio::sync::broadcast;

use super::config::OffsetReset;
use super::health::BrokerHealth;
use crate::telemetry::KafkaMetrics;
use crate::record::RecordKind;

pub use crate::record::TopicPartition;

/// A change of the consumer's assignment, as broadcast by
/// [`KafkaConsumer::rebalance_events`](super::KafkaConsumer::rebalance_events).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RebalanceEvent {
    /// These partitions were assigned, each starting at the given offset
    /// (`None`: per `auto_offset_reset`).
    Assigned(Vec<(TopicPartition, Option<i64>)>),
    /// These partitions were revoked (never sent: the consumer assigns partitions itself and
    /// keeps them; kept for callers that match on it).
    Revoked(Vec<TopicPartition>),
    /// Assigning partitions failed.
    Failed(String),
}

/// A partition whose offset was outside the broker's range: consumption restarted at `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionReset {
    /// The partition.
    pub partition: TopicPartition,
    /// The offset that was out of range (stored in the checkpoint, or expected next).
    pub from: i64,
    /// Where consumption restarted.
    pub to: i64,
}

/// Offset resets for the owner of the offsets, oldest first; cloning shares them.
#[derive(Debug, Clone, Default)]
pub struct ResetFeed(Arc<Mutex<Vec<PartitionReset>>>);

impl ResetFeed {
    /// Takes the resets noted since the last call.
    pub fn take(&self) -> Vec<PartitionReset> {
        std::mem::take(&mut *self.0.lock())
    }
}

/// State shared by the poll loop, the lag monitor, the public handle and the callbacks.
#[derive(Debug)]
pub(crate) struct ConsumerShared {
    /// Input topic name -> (kind, interned name).
    pub topics: HashMap<String, (RecordKind, Arc<str>)>,
    /// Next offset to read per partition: seeded from the checkpoint's offsets, then advanced
    /// past every record the poll loop receives.
    pub positions: Mutex<HashMap<TopicPartition, i64>>,
    /// Partitions currently assigned.
    pub assignment: Mutex<BTreeSet<TopicPartition>>,
    /// Per kind (text, image, pair): whether the poll loop has paused that kind's partitions
    /// because its queue is full.
    pub paused: [AtomicBool; 3],
    /// Number of times partitions were revoked (always 0: nothing revokes them).
    pub revocations: AtomicU64,
    /// High watermark per partition at the last refresh.
    pub highs: Mutex<HashMap<TopicPartition, i64>>,
    /// Whether a refresh has read the watermarks of every assigned partition.
    pub backlog_known: AtomicBool,
    /// Forward jumps seen by the poll loop (partition, expected offset, received offset),
    /// checked against the low watermark by the monitor.
    pub gaps: Mutex<Vec<(TopicPartition, i64, i64)>>,
    /// Offset resets not yet taken by [`KafkaConsumer::take_offset_resets`](super::KafkaConsumer::take_offset_resets).
    pub resets: ResetFeed,
    /// Resets already logged (partition, out-of-range offset): each is logged once.
    pub resets_logged: Mutex<HashSet<(TopicPartition, i64)>>,
    /// Input topics reported missing (logged once each).
    pub missing_topics: Mutex<HashSet<String>>,
    /// Where partitions without a known position start.
    pub reset: OffsetReset,
    /// Rebalance notifications (bounded; slow receivers miss old events).
    pub events: broadcast::Sender<RebalanceEvent>,
    /// Broker reachability.
    pub health: BrokerHealth,
    /// The lag gauge (labels removed on revoke).
    pub metrics: KafkaMetrics,
}

impl ConsumerShared {
    /// The interned name of `topic`, if it is an input topic.
    pub(crate) fn intern(&self, topic: &str) -> Option<(RecordKind, Arc<str>)> {
        self.topics.get(topic).cloned()
    }

    /// A partition's offset `from` was outside the broker's range (`low..=high`, when known)
    /// and consumption restarted at `to`: counts it, logs it once, and queues it for
    /// [`KafkaConsumer::take_offset_resets`](super::KafkaConsumer::take_offset_resets).
    pub(crate) fn note_reset(&self, partition: &TopicPartition, from: i64, to: i64, range: Option<(i64, i64)>) {
        self.metrics.count_reset(&partition.topic, partition.partition);
        if self.resets_logged.lock().insert((partition.clone(), from)) {
            let (low, high) = range.map_or((None, None), |(l, h)| (Some(l), Some(h)));
            tracing::warn!(
                topic = %partition.topic,
                partition = partition.partition,
                offset = from,
                low_watermark = low,
                high_watermark = high,
                restart_at = to,
                "partition offset outside the broker's range (topic recreated or truncated?); consuming from restart_at per kafka.auto_offset_reset"
            );
        }
        self.resets.0.lock().push(PartitionReset { partition: partition.clone(), from, to });
    }
}

/// The consumer's librdkafka context.
pub(crate) struct IngestContext {
    pub shared: Arc<ConsumerShared>,
}

impl ClientContext for IngestContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::error!(target: "librdkafka", fac, "{log_message}"),
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", fac, "{log_message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", fac, "{log_message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", fac, "{log_message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            tracing::warn!(%error, reason, "all Kafka brokers are down");
            self.shared.health.mark_down(reason);
        } else {
            tracing::warn!(%error, reason, "Kafka client error");
            self.shared.health.note_error(reason);
        }
    }
}

/// No group membership: partitions are assigned by the consumer itself, so librdkafka never
/// calls the rebalance callback.
impl ConsumerContext for IngestContext {}
