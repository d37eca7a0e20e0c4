//! The unimod Kafka consumer: one group member reading the three input topics into a bounded
//! channel of [`RawRecord`]s.
//!
//! - Offsets: `enable.auto.commit=false`, `enable.auto.offset.store=false`; partitions start
//!   where the owner of durable state says (see [`super::context`]); [`KafkaConsumer::commit`]
//!   commits synchronously and is called only once a checkpoint holding those offsets is
//!   durable, so the group's offsets never run ahead of the checkpoint.
//! - Backpressure: when the channel stays full for more than `PAUSE_AFTER` (0.5 s) the consumer
//!   pauses every assigned partition and keeps polling (rebalances and the group session are
//!   served, `max.poll.interval.ms` is not exceeded); it resumes as soon as the channel has
//!   room. librdkafka refetches from the last record handed over, so nothing is lost or
//!   repeated. Shorter stalls just wait: pausing discards librdkafka's prefetched records.
//! - Health and lag: a monitor task refreshes broker reachability and
//!   `unimod_kafka_consumer_lag{topic,partition}` every `lag_interval_seconds`.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::config::{KafkaConfig, OffsetReset};
use super::context::{ConsumerShared, IngestContext, RebalanceEvent, TopicPartition};
use super::error::ConsumerError;
use super::health::{BrokerHealth, HealthSnapshot};
use super::metrics::KafkaMetrics;
use crate::record::{RawRecord, RecordKind, SourcePos};

/// Next offset to consume per `(topic, partition)`, as stored in the newest checkpoint.
pub type StartOffsets = HashMap<(String, i32), i64>;

/// How often the poll loop polls librdkafka even when nothing happens, so that librdkafka
/// sees a live application while partitions are paused or topics are idle.
const KEEPALIVE: Duration = Duration::from_millis(500);

/// How long the record channel may stay full before the partitions are paused. Shorter
/// stalls are waited out without polling (librdkafka's prefetch queue is bounded by
/// `queued.max.messages.kbytes`); longer ones pause the partitions and keep polling, so the
/// group session and rebalances are served however long downstream is stuck.
const PAUSE_AFTER: Duration = Duration::from_millis(500);

/// Consumer errors are logged at most this often (per distinct message).
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Capacity of the rebalance event broadcast.
const EVENT_CAPACITY: usize = 64;

/// Handle to a running consumer. Dropping it stops the background tasks; prefer
/// [`KafkaConsumer::shutdown`], which also leaves the group cleanly.
pub struct KafkaConsumer {
    consumer: Arc<StreamConsumer<IngestContext>>,
    shared: Arc<ConsumerShared>,
    group_id: String,
    request_timeout: Duration,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for KafkaConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConsumer")
            .field("group_id", &self.group_id)
            .field("assignment", &self.assignment())
            .field("paused", &self.is_paused())
            .finish_non_exhaustive()
    }
}

impl KafkaConsumer {
    /// Validates `cfg`, creates the consumer, subscribes to the three input topics and starts
    /// the poll loop and the lag/health monitor on the current tokio runtime.
    ///
    /// `start_offsets` are the checkpoint's next offsets; partitions not in it start per
    /// `cfg.auto_offset_reset`. Records go to `records` (create it with
    /// `tokio::sync::mpsc::channel(cfg.queue_capacity)`). The consumer stops when `cancel`
    /// (or a parent) is cancelled or when the receiver is dropped; it then drops `records`.
    pub fn start(
        cfg: &KafkaConfig,
        start_offsets: StartOffsets,
        records: mpsc::Sender<RawRecord>,
        metrics: KafkaMetrics,
        cancel: CancellationToken,
    ) -> Result<KafkaConsumer, ConsumerError> {
        cfg.validate()?;
        let topics: HashMap<String, (RecordKind, Arc<str>)> = RecordKind::ALL
            .into_iter()
            .map(|kind| {
                let name = cfg.topics.topic(kind);
                (name.to_owned(), (kind, Arc::<str>::from(name)))
            })
            .collect();
        let positions = start_offsets
            .into_iter()
            .filter(|(_, offset)| *offset >= 0)
            .map(|((topic, partition), offset)| {
                let topic = topics
                    .get(&topic)
                    .map(|(_, name)| Arc::clone(name))
                    .unwrap_or_else(|| Arc::from(topic.as_str()));
                ((topic, partition), offset)
            })
            .collect();
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let shared = Arc::new(ConsumerShared {
            topics,
            positions: Mutex::new(positions),
            assignment: Mutex::new(BTreeSet::new()),
            paused: AtomicBool::new(false),
            revocations: AtomicU64::new(0),
            reset: cfg.auto_offset_reset,
            events,
            health: BrokerHealth::new(cfg.health_window()),
            metrics,
        });

        let mut client = cfg.client_config();
        if !cfg.options.contains_key("client.id") {
            client.set("client.id", "unimod");
        }
        client
            .set("group.id", &cfg.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            // Used only when a start offset is out of range (deleted by retention).
            .set(
                "auto.offset.reset",
                match cfg.auto_offset_reset {
                    OffsetReset::Earliest => "earliest",
                    OffsetReset::Latest => "latest",
                },
            );
        let consumer: StreamConsumer<IngestContext> = client
            .create_with_context(IngestContext { shared: Arc::clone(&shared) })
            .map_err(ConsumerError::Create)?;
        let topic_names: Vec<&str> =
            RecordKind::ALL.into_iter().map(|kind| cfg.topics.topic(kind)).collect();
        consumer.subscribe(&topic_names).map_err(|source| ConsumerError::Subscribe {
            topics: topic_names.join(","),
            source,
        })?;
        let consumer = Arc::new(consumer);
        let cancel = cancel.child_token();
        let poll = tokio::spawn(poll_loop(
            Arc::clone(&consumer),
            Arc::clone(&shared),
            records,
            cancel.clone(),
        ));
        let monitor = tokio::spawn(monitor_loop(
            Arc::clone(&consumer),
            Arc::clone(&shared),
            MonitorSettings {
                interval: cfg.lag_interval(),
                timeout: cfg.request_timeout(),
                probe_topic: cfg.topics.text.clone(),
            },
            cancel.clone(),
        ));
        tracing::info!(
            group = %cfg.group_id,
            topics = %topic_names.join(","),
            brokers = %cfg.brokers,
            "Kafka consumer started"
        );
        Ok(KafkaConsumer {
            consumer,
            shared,
            group_id: cfg.group_id.clone(),
            request_timeout: cfg.request_timeout(),
            cancel,
            tasks: vec![poll, monitor],
        })
    }

    /// Commits `(topic, partition, next_offset)` triples to the consumer group and waits for
    /// the broker's answer. Call it only once a checkpoint holding these offsets is durable.
    pub async fn commit(&self, offsets: &[(String, i32, i64)]) -> Result<(), ConsumerError> {
        if offsets.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::with_capacity(offsets.len());
        for (topic, partition, offset) in offsets {
            if *offset < 0 {
                return Err(ConsumerError::InvalidOffset {
                    topic: topic.clone(),
                    partition: *partition,
                    offset: *offset,
                });
            }
            tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))
                .map_err(|source| ConsumerError::Commit { group: self.group_id.clone(), source })?;
        }
        let consumer = Arc::clone(&self.consumer);
        let commit = tokio::task::spawn_blocking(move || consumer.commit(&tpl, CommitMode::Sync));
        let result = match tokio::time::timeout(self.request_timeout, commit).await {
            Ok(joined) => joined?,
            Err(_elapsed) => Err(KafkaError::ConsumerCommit(
                rdkafka::types::RDKafkaErrorCode::RequestTimedOut,
            )),
        };
        result.map_err(|source| ConsumerError::Commit { group: self.group_id.clone(), source })?;
        tracing::debug!(partitions = offsets.len(), group = %self.group_id, "offsets committed");
        Ok(())
    }

    /// Whether the broker is reachable (for `/readyz`).
    pub fn connected(&self) -> bool {
        self.shared.health.connected()
    }

    /// Broker reachability with detail.
    pub fn health(&self) -> HealthSnapshot {
        self.shared.health.snapshot()
    }

    /// The partitions currently assigned to this consumer, sorted.
    pub fn assignment(&self) -> Vec<TopicPartition> {
        self.shared.assignment.lock().iter().cloned().collect()
    }

    /// Whether consumption is paused because the record channel is full.
    pub fn is_paused(&self) -> bool {
        self.shared.paused.load(Ordering::SeqCst)
    }

    /// How many revocations happened since start.
    pub fn revocations(&self) -> u64 {
        self.shared.revocations.load(Ordering::SeqCst)
    }

    /// The next offset this consumer will read from a partition, if it has one.
    pub fn position(&self, topic: &str, partition: i32) -> Option<i64> {
        self.shared.positions.lock().get(&(Arc::from(topic), partition)).copied()
    }

    /// Subscribes to assignment changes from now on.
    pub fn rebalance_events(&self) -> broadcast::Receiver<RebalanceEvent> {
        self.shared.events.subscribe()
    }

    /// Stops the poll loop and the monitor, then leaves the group and closes the client
    /// (off the async runtime, since closing blocks). Records still waiting in the consumer
    /// are dropped: they were never handed over, so their offsets were never committed.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        for task in self.tasks.drain(..) {
            if let Err(error) = task.await {
                tracing::error!(%error, "Kafka consumer task failed");
            }
        }
        let consumer = Arc::clone(&self.consumer);
        drop(self);
        if let Err(error) = tokio::task::spawn_blocking(move || drop(consumer)).await {
            tracing::error!(%error, "closing the Kafka consumer failed");
        }
        tracing::info!("Kafka consumer closed");
    }
}

impl Drop for KafkaConsumer {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Pauses or resumes every assigned partition.
fn set_paused(consumer: &StreamConsumer<IngestContext>, shared: &ConsumerShared, paused: bool) {
    // Set first: a partition assigned from now on is paused by the rebalance callback.
    shared.paused.store(paused, Ordering::SeqCst);
    let assignment = match consumer.assignment() {
        Ok(assignment) => assignment,
        Err(error) => {
            tracing::warn!(%error, "cannot read the assignment to pause/resume");
            return;
        }
    };
    if assignment.count() == 0 {
        return;
    }
    let result = if paused { consumer.pause(&assignment) } else { consumer.resume(&assignment) };
    match result {
        Ok(()) => tracing::debug!(paused, partitions = assignment.count(), "backpressure"),
        Err(error) => tracing::warn!(%error, paused, "pause/resume failed"),
    }
}

/// Receives records and hands them to `records`, pausing while it is full.
async fn poll_loop(
    consumer: Arc<StreamConsumer<IngestContext>>,
    shared: Arc<ConsumerShared>,
    records: mpsc::Sender<RawRecord>,
    cancel: CancellationToken,
) {
    // Records received but not yet handed over: at most what librdkafka had already
    // delivered when the pause took effect.
    let mut pending: VecDeque<RawRecord> = VecDeque::new();
    let mut keepalive = tokio::time::interval(KEEPALIVE);
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut error_log = ErrorLog::default();
    loop {
        while let Some(record) = pending.pop_front() {
            match records.try_send(record) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(record)) => {
                    pending.push_front(record);
                    break;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    tracing::info!("record receiver dropped; Kafka consumer stops");
                    return;
                }
            }
        }
        let backlogged = !pending.is_empty();
        let paused = shared.paused.load(Ordering::SeqCst);
        if !backlogged && paused {
            set_paused(&consumer, &shared, false);
        } else if backlogged && !paused {
            // A short stall is waited out without pausing: pausing drops the records
            // librdkafka has prefetched, and they would be fetched again on resume.
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                permit = records.reserve() => match (permit, pending.pop_front()) {
                    (Ok(permit), Some(record)) => permit.send(record),
                    (Ok(_), None) => {}
                    (Err(_), _) => {
                        tracing::info!("record receiver dropped; Kafka consumer stops");
                        return;
                    }
                },
                _ = tokio::time::sleep(PAUSE_AFTER) => set_paused(&consumer, &shared, true),
            }
            continue;
        }
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            permit = records.reserve(), if backlogged => match (permit, pending.pop_front()) {
                (Ok(permit), Some(record)) => permit.send(record),
                (Ok(_), None) => {}
                (Err(_), _) => {
                    tracing::info!("record receiver dropped; Kafka consumer stops");
                    return;
                }
            },
            received = consumer.recv() => match received {
                Ok(message) => {
                    if let Some(record) = to_record(&shared, &message) {
                        pending.push_back(record);
                    }
                }
                Err(error) => {
                    if matches!(error, KafkaError::MessageConsumptionFatal(_)) {
                        shared.health.mark_down(&error.to_string());
                    }
                    error_log.log(&error);
                }
            },
            _ = keepalive.tick() => {}
        }
    }
}

/// Copies a message into a [`RawRecord`] and advances the partition's position.
fn to_record(shared: &ConsumerShared, message: &BorrowedMessage<'_>) -> Option<RawRecord> {
    let Some((kind, topic)) = shared.intern(message.topic()) else {
        tracing::warn!(topic = message.topic(), "record from a topic not subscribed; skipped");
        return None;
    };
    let partition = message.partition();
    let offset = message.offset();
    shared.positions.lock().insert((Arc::clone(&topic), partition), offset + 1);
    shared.health.mark_ok();
    Some(RawRecord {
        kind,
        pos: SourcePos { topic, partition, offset },
        key: message.key().map(<[u8]>::to_vec),
        payload: message.payload().map(<[u8]>::to_vec),
        received_at: Instant::now(),
    })
}

/// Logs consumer errors, each distinct message at most once per [`ERROR_LOG_INTERVAL`].
#[derive(Default)]
struct ErrorLog {
    last: HashMap<String, Instant>,
    suppressed: u64,
}

impl ErrorLog {
    fn log(&mut self, error: &KafkaError) {
        let text = error.to_string();
        let now = Instant::now();
        let due = self
            .last
            .get(&text)
            .is_none_or(|at| now.saturating_duration_since(*at) >= ERROR_LOG_INTERVAL);
        if due {
            tracing::warn!(error = %text, suppressed = self.suppressed, "Kafka consumer error");
            self.suppressed = 0;
            if self.last.len() > 64 {
                self.last.clear();
            }
            self.last.insert(text, now);
        } else {
            self.suppressed += 1;
        }
    }
}

struct MonitorSettings {
    interval: Duration,
    timeout: Duration,
    probe_topic: String,
}

/// Refreshes broker health and the lag gauge every interval.
async fn monitor_loop(
    consumer: Arc<StreamConsumer<IngestContext>>,
    shared: Arc<ConsumerShared>,
    settings: MonitorSettings,
    cancel: CancellationToken,
) {
    let settings = Arc::new(settings);
    let mut ticker = tokio::time::interval(settings.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let (consumer, shared, settings) =
            (Arc::clone(&consumer), Arc::clone(&shared), Arc::clone(&settings));
        let refresh = tokio::task::spawn_blocking(move || refresh(&consumer, &shared, &settings));
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            joined = refresh => {
                if let Err(error) = joined {
                    tracing::error!(%error, "Kafka lag refresh failed");
                }
            }
        }
    }
}

/// One health probe and lag refresh (blocking: runs on the blocking pool).
fn refresh(
    consumer: &StreamConsumer<IngestContext>,
    shared: &ConsumerShared,
    settings: &MonitorSettings,
) {
    match consumer.fetch_metadata(Some(&settings.probe_topic), settings.timeout) {
        Ok(_) => shared.health.mark_ok(),
        Err(error) => {
            tracing::debug!(%error, "Kafka metadata probe failed");
            shared.health.note_error(&error.to_string());
            return;
        }
    }
    let assigned: Vec<TopicPartition> = shared.assignment.lock().iter().cloned().collect();
    for (topic, partition) in assigned {
        let (low, high) = match consumer.fetch_watermarks(&topic, partition, settings.timeout) {
            Ok(marks) => marks,
            Err(error) => {
                tracing::debug!(%error, %topic, partition, "watermark request failed");
                return;
            }
        };
        let position = shared.positions.lock().get(&(Arc::clone(&topic), partition)).copied();
        let lag = partition_lag(position, low, high, shared.reset);
        // The partition may have been revoked meanwhile; do not resurrect its label.
        if shared.assignment.lock().contains(&(Arc::clone(&topic), partition)) {
            shared.metrics.set_lag(&topic, partition, lag);
        }
    }
}

/// Records between the consumer's position and the high watermark.
fn partition_lag(position: Option<i64>, low: i64, high: i64, reset: OffsetReset) -> i64 {
    let from = match (position, reset) {
        (Some(position), _) => position.max(low),
        (None, OffsetReset::Earliest) => low,
        (None, OffsetReset::Latest) => high,
    };
    (high - from).max(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_counts_from_the_position_or_the_reset_point() {
        assert_eq!(partition_lag(Some(7), 0, 10, OffsetReset::Earliest), 3);
        assert_eq!(partition_lag(Some(10), 0, 10, OffsetReset::Earliest), 0);
        // Records below the low watermark are gone: they are not lag.
        assert_eq!(partition_lag(Some(2), 5, 10, OffsetReset::Earliest), 5);
        assert_eq!(partition_lag(None, 4, 10, OffsetReset::Earliest), 6);
        assert_eq!(partition_lag(None, 4, 10, OffsetReset::Latest), 0);
        // A position past the end (truncated partition) never shows negative lag.
        assert_eq!(partition_lag(Some(12), 0, 10, OffsetReset::Earliest), 0);
    }

    #[test]
    fn repeated_errors_are_rate_limited() {
        let mut log = ErrorLog::default();
        let error = KafkaError::MessageConsumption(rdkafka::types::RDKafkaErrorCode::AllBrokersDown);
        log.log(&error);
        log.log(&error);
        log.log(&error);
        assert_eq!(log.suppressed, 2);
        let other = KafkaError::MessageConsumption(rdkafka::types::RDKafkaErrorCode::UnknownTopic);
        log.log(&other);
        assert_eq!(log.suppressed, 0, "a new message is logged and resets the count");
    }
}
