//! The librdkafka callbacks of the unimod consumer: where each assigned partition starts,
//! what happens on revocation, and how client errors feed broker health.
//!
//! Start offsets belong to the owner of durable state (the newest checkpoint). On every
//! assignment each partition is positioned explicitly, never at the group's committed offset:
//! at the next offset this process has not yet received if it already read from the partition
//! (a revoke/assign cycle mid-run must neither skip nor repeat records still in the
//! pipeline), else at the checkpoint's offset, else per `auto_offset_reset`.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::types::{RDKafkaErrorCode, RDKafkaRespErr};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::broadcast;

use super::config::OffsetReset;
use super::health::BrokerHealth;
use super::metrics::KafkaMetrics;
use crate::record::RecordKind;

/// A partition: topic name and partition number.
pub type TopicPartition = (Arc<str>, i32);

/// A change of the consumer's assignment, as broadcast by
/// [`KafkaConsumer::rebalance_events`](super::KafkaConsumer::rebalance_events).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RebalanceEvent {
    /// These partitions were assigned, each starting at the given offset
    /// (`None`: per `auto_offset_reset`).
    Assigned(Vec<(TopicPartition, Option<i64>)>),
    /// These partitions were revoked.
    Revoked(Vec<TopicPartition>),
    /// The group coordinator reported a rebalance error; the assignment was dropped.
    Failed(String),
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
    /// Whether the poll loop has paused consumption because downstream is full.
    pub paused: AtomicBool,
    /// Number of times partitions were revoked.
    pub revocations: AtomicU64,
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
    pub fn intern(&self, topic: &str) -> Option<(RecordKind, Arc<str>)> {
        self.topics.get(topic).cloned()
    }

    /// Where a newly assigned partition starts.
    fn start_offset(&self, partition: &TopicPartition) -> Offset {
        match self.positions.lock().get(partition) {
            Some(&offset) if offset >= 0 => Offset::Offset(offset),
            _ => match self.reset {
                OffsetReset::Earliest => Offset::Beginning,
                OffsetReset::Latest => Offset::End,
            },
        }
    }

    fn partitions_of(&self, tpl: &TopicPartitionList) -> Vec<TopicPartition> {
        tpl.elements()
            .iter()
            .map(|elem| {
                let topic = self
                    .intern(elem.topic())
                    .map(|(_, name)| name)
                    .unwrap_or_else(|| Arc::from(elem.topic()));
                (topic, elem.partition())
            })
            .collect()
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

impl ConsumerContext for IngestContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative);
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.assign(consumer, tpl, cooperative)
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.revoke(consumer, tpl, cooperative)
            }
            other => {
                let code: RDKafkaErrorCode = other.into();
                tracing::error!(error = %code, "Kafka rebalance failed; dropping the assignment");
                // Same as librdkafka's default handler: forget the whole assignment.
                if let Err(error) = consumer.unassign() {
                    tracing::error!(%error, "unassign after a failed rebalance failed");
                }
                self.forget(&self.shared.assignment.lock().iter().cloned().collect::<Vec<_>>());
                self.shared.assignment.lock().clear();
                let _ = self.shared.events.send(RebalanceEvent::Failed(code.to_string()));
            }
        }
    }
}

impl IngestContext {
    fn assign(&self, consumer: &BaseConsumer<Self>, tpl: &mut TopicPartitionList, cooperative: bool) {
        let partitions = self.shared.partitions_of(tpl);
        let mut assigned = Vec::with_capacity(partitions.len());
        for partition in &partitions {
            let offset = self.shared.start_offset(partition);
            if let Err(error) = tpl.set_partition_offset(&partition.0, partition.1, offset) {
                tracing::error!(%error, topic = %partition.0, partition = partition.1, "cannot set start offset");
            }
            assigned.push((partition.clone(), offset.to_raw().filter(|o| *o >= 0)));
        }
        let result = if cooperative { consumer.incremental_assign(tpl) } else { consumer.assign(tpl) };
        if let Err(error) = result {
            tracing::error!(%error, "assigning partitions failed");
            let _ = self.shared.events.send(RebalanceEvent::Failed(error.to_string()));
            return;
        }
        // Partitions assigned while downstream is full start paused, like the others.
        if self.shared.paused.load(Ordering::SeqCst) {
            if let Err(error) = consumer.pause(tpl) {
                tracing::warn!(%error, "pausing newly assigned partitions failed");
            }
        }
        {
            let mut assignment = self.shared.assignment.lock();
            if !cooperative {
                assignment.clear();
            }
            assignment.extend(partitions.iter().cloned());
        }
        for ((topic, partition), offset) in &assigned {
            tracing::info!(%topic, partition, start = ?offset, "partition assigned");
        }
        let _ = self.shared.events.send(RebalanceEvent::Assigned(assigned));
    }

    fn revoke(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList, cooperative: bool) {
        let partitions = self.shared.partitions_of(tpl);
        let result = if cooperative { consumer.incremental_unassign(tpl) } else { consumer.unassign() };
        if let Err(error) = result {
            tracing::error!(%error, "unassigning revoked partitions failed");
        }
        {
            let mut assignment = self.shared.assignment.lock();
            for partition in &partitions {
                assignment.remove(partition);
            }
        }
        self.forget(&partitions);
        self.shared.revocations.fetch_add(1, Ordering::SeqCst);
        for (topic, partition) in &partitions {
            tracing::info!(%topic, partition, "partition revoked");
        }
        let _ = self.shared.events.send(RebalanceEvent::Revoked(partitions));
    }

    fn forget(&self, partitions: &[TopicPartition]) {
        for (topic, partition) in partitions {
            self.shared.metrics.forget_partition(topic, *partition);
        }
    }
}
