//! The unimod Kafka consumer: reads the three input topics into one bounded channel per kind
//! (or one shared channel), without joining its consumer group.
//!
//! - Assignment: the consumer assigns itself every partition of the three topics (found in
//!   the broker's metadata at start and again every `lag_interval_seconds`, so partitions
//!   added later are picked up), each starting at the checkpoint's offset or per
//!   `auto_offset_reset`. There is no group membership, hence no rebalance and no wait for a
//!   killed predecessor's session to time out: a restart consumes within a second or two.
//!   unimod is its group's only consumer; the monitor warns loudly when the group has active
//!   members (another program, or an older unimod, consuming with the same `group_id`).
//! - Offsets: `enable.auto.commit=false`, `enable.auto.offset.store=false`;
//!   [`KafkaConsumer::commit`] commits synchronously to `group_id` (for lag tools) and is called
//!   only once a checkpoint holding those offsets is durable, so the group's offsets never run
//!   ahead of the checkpoint.
//! - Out-of-range offsets: a checkpoint offset outside the partition's low..high watermarks
//!   (topic recreated or truncated) is counted in `unimod_offset_resets_total`, logged once with
//!   both numbers, and the partition starts per `auto_offset_reset`; so is a jump of the
//!   records while running (backwards, or forward over records below the low watermark).
//!   [`KafkaConsumer::take_offset_resets`] tells the owner of the offsets.
//! - Backpressure, per kind: when a kind's channel stays full for more than `PAUSE_AFTER`
//!   (0.5 s), when more than a few records wait for it, or when the kind's share of the byte
//!   budget ([`QueueBudget`]) is used up, the consumer pauses that kind's partitions and keeps
//!   polling the others; it resumes them once the channel is half empty (and the bytes half
//!   released). librdkafka refetches from the last record handed over, so nothing is lost or
//!   repeated. A kind that is ahead never holds back the others: the topics are consumed
//!   fairly however different their record sizes are.
//! - Health and lag: the monitor refreshes broker reachability and
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
use super::context::{ConsumerShared, IngestContext, PartitionReset, RebalanceEvent, ResetFeed, TopicPartition};
use super::error::ConsumerError;
use super::health::{BrokerHealth, HealthSnapshot};
use crate::telemetry::KafkaMetrics;
use super::queue::{lane, record_bytes, QueueBudget};
use crate::offsets::PartitionOffsets;
use crate::record::{RawRecord, RecordKind, SourcePos};

/// Next offset to consume per partition, as stored in the newest checkpoint.
pub type StartOffsets = HashMap<TopicPartition, i64>;

/// How often the poll loop polls librdkafka even when nothing happens.
const KEEPALIVE: Duration = Duration::from_millis(500);

/// How often the poll loop retries handing over records while a channel is full.
const RETRY: Duration = Duration::from_millis(10);

/// How long a kind's channel may stay full before its partitions are paused. Shorter stalls
/// are waited out (pausing discards librdkafka's prefetched records of those partitions).
const PAUSE_AFTER: Duration = Duration::from_millis(500);

/// Most records of one kind the poll loop keeps waiting for a full channel before it pauses
/// that kind at once (also bounded by the channel's capacity).
const MAX_WAITING: usize = 256;

/// How often the partitions are looked up until the first assignment succeeded.
const ASSIGN_RETRY: Duration = Duration::from_secs(1);

/// The group's members are looked up every this many monitor rounds.
const GROUP_CHECK_EVERY: u64 = 30;

/// Consumer errors are logged at most this often (per distinct message).
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Capacity of the assignment event broadcast.
const EVENT_CAPACITY: usize = 64;

/// Where the consumer hands records over.
#[derive(Debug, Clone)]
pub struct Lanes {
    /// One channel per kind, in the order of [`RecordKind::ALL`] (text, image, pair); the same
    /// channel three times for one shared queue.
    pub senders: [mpsc::Sender<RawRecord>; 3],
    /// A byte budget on the records handed over and not yet released; `None`: records only.
    pub budget: Option<QueueBudget>,
}

impl Lanes {
    /// All kinds into one channel, without a byte budget.
    pub fn shared(records: mpsc::Sender<RawRecord>) -> Self {
        Lanes { senders: [records.clone(), records.clone(), records], budget: None }
    }
}

/// Handle to a running consumer. Dropping it stops the background tasks; prefer
/// [`KafkaConsumer::shutdown`], which also closes the client cleanly.
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
    /// Validates `cfg`, creates the consumer, and starts the poll loop and the monitor (which
    /// assigns the partitions) on the current tokio runtime. All records go to `records`
    /// (create it with `tokio::sync::mpsc::channel(cfg.queue_capacity)`).
    ///
    /// `start_offsets` are the checkpoint's next offsets; partitions not in it start per
    /// `cfg.auto_offset_reset`. The consumer stops when `cancel` (or a parent) is cancelled or
    /// when the receiver is dropped; it then drops `records`.
    pub fn start(
        cfg: &KafkaConfig,
        start_offsets: StartOffsets,
        records: mpsc::Sender<RawRecord>,
        metrics: KafkaMetrics,
        cancel: CancellationToken,
    ) -> Result<KafkaConsumer, ConsumerError> {
        Self::start_lanes(cfg, start_offsets, Lanes::shared(records), metrics, cancel)
    }

    /// Like [`Self::start`], with one channel per kind and an optional byte budget: a kind
    /// whose channel is full or whose budget share is used up is paused alone.
    pub fn start_lanes(
        cfg: &KafkaConfig,
        start_offsets: StartOffsets,
        lanes: Lanes,
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
            .map(|(TopicPartition { topic, partition }, offset)| {
                // Interned: the poll loop's records share the topic names of `topics`.
                let topic = topics.get(&*topic).map_or(topic, |(_, name)| Arc::clone(name));
                (TopicPartition { topic, partition }, offset)
            })
            .collect();
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let shared = Arc::new(ConsumerShared {
            topics,
            positions: Mutex::new(positions),
            assignment: Mutex::new(BTreeSet::new()),
            paused: Default::default(),
            revocations: AtomicU64::new(0),
            highs: Mutex::new(HashMap::new()),
            backlog_known: AtomicBool::new(false),
            gaps: Mutex::new(Vec::new()),
            resets: ResetFeed::default(),
            resets_logged: Mutex::new(Default::default()),
            missing_topics: Mutex::new(Default::default()),
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
            // Only for offset commits (lag tools): the consumer never joins the group.
            .set("group.id", &cfg.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            // Used when an offset turns out of range while running (deleted by retention,
            // topic truncated); checkpoint offsets are checked against the watermarks first.
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
        let topic_names: Vec<String> =
            RecordKind::ALL.into_iter().map(|kind| cfg.topics.topic(kind).to_owned()).collect();
        let consumer = Arc::new(consumer);
        let cancel = cancel.child_token();
        let poll = tokio::spawn(poll_loop(
            Arc::clone(&consumer),
            Arc::clone(&shared),
            lanes,
            cancel.clone(),
        ));
        let monitor = tokio::spawn(monitor_loop(
            Arc::clone(&consumer),
            Arc::clone(&shared),
            MonitorSettings {
                interval: cfg.lag_interval(),
                timeout: cfg.request_timeout(),
                topics: topic_names.clone(),
                group: cfg.group_id.clone(),
            },
            cancel.clone(),
        ));
        tracing::info!(
            group = %cfg.group_id,
            topics = %topic_names.join(","),
            brokers = %cfg.brokers,
            "Kafka consumer started (partitions assigned by unimod, no group membership)"
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
    /// Commits the next offsets of `offsets` to the consumer group and waits for the broker's
    /// answer. Call it only once a checkpoint holding these offsets is durable.
    pub async fn commit(&self, offsets: &[PartitionOffsets]) -> Result<(), ConsumerError> {
        if offsets.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::with_capacity(offsets.len());
        for PartitionOffsets { tp: TopicPartition { topic, partition }, next_offset, .. } in offsets {
            if *next_offset < 0 {
                return Err(ConsumerError::InvalidOffset {
                    topic: topic.to_string(),
                    partition: *partition,
                    offset: *next_offset,
                });
            }
            tpl.add_partition_offset(topic, *partition, Offset::Offset(*next_offset))
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

    /// Whether the partitions of at least one kind are paused because its queue is full.
    pub fn is_paused(&self) -> bool {
        self.shared.paused.iter().any(|p| p.load(Ordering::SeqCst))
    }

    /// Whether the partitions of `kind` are paused because its queue is full.
    pub fn is_kind_paused(&self, kind: RecordKind) -> bool {
        self.shared.paused[lane(kind)].load(Ordering::SeqCst)
    }

    /// How many revocations happened since start: always 0, since the consumer assigns its
    /// partitions itself and nothing revokes them.
    pub fn revocations(&self) -> u64 {
        self.shared.revocations.load(Ordering::SeqCst)
    }

    /// The next offset this consumer will read from a partition, if it has one.
    pub fn position(&self, topic: &str, partition: i32) -> Option<i64> {
        self.shared.positions.lock().get(&TopicPartition::new(topic, partition)).copied()
    }

    /// Records of `kind` known to be waiting in Kafka: the sum over its partitions of the high
    /// watermark at the last refresh minus the next offset to read (0 when unknown).
    pub fn waiting_in_kafka(&self, kind: RecordKind) -> i64 {
        let highs = self.shared.highs.lock().clone();
        let positions = self.shared.positions.lock();
        highs
            .iter()
            .filter(|(tp, _)| self.shared.intern(&tp.topic).is_some_and(|(k, _)| k == kind))
            .map(|(tp, high)| {
                let from = positions.get(tp).copied().unwrap_or(match self.shared.reset {
                    OffsetReset::Earliest => 0,
                    OffsetReset::Latest => *high,
                });
                (high - from).max(0)
            })
            .sum()
    }

    /// Whether [`Self::waiting_in_kafka`] is known: the partitions were assigned and their
    /// watermarks read at least once.
    pub fn backlog_known(&self) -> bool {
        self.shared.backlog_known.load(Ordering::SeqCst)
    }

    /// Offset resets since the last call (each partition whose offset was out of range, and
    /// where it restarted), for the owner of the offsets: records below the restart point
    /// must be consumed as new ones.
    pub fn take_offset_resets(&self) -> Vec<PartitionReset> {
        self.shared.resets.take()
    }

    /// A shared handle on the offset resets (for a thread that does not hold the consumer).
    pub fn reset_feed(&self) -> ResetFeed {
        self.shared.resets.clone()
    }

    /// Subscribes to assignment changes from now on.
    pub fn rebalance_events(&self) -> broadcast::Receiver<RebalanceEvent> {
        self.shared.events.subscribe()
    }

    /// Stops the poll loop and the monitor, then closes the client (off the async runtime,
    /// since closing blocks). Records still waiting in the consumer are dropped: they were
    /// never handed over, so their offsets were never committed.
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

/// The assigned partitions of `kind`.
fn partitions_of_kind(shared: &ConsumerShared, kind: RecordKind) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for TopicPartition { topic, partition } in shared.assignment.lock().iter() {
        if shared.intern(topic).is_some_and(|(k, _)| k == kind) {
            tpl.add_partition(topic, *partition);
        }
    }
    tpl
}

/// Pauses or resumes the partitions of one kind.
fn set_paused(consumer: &StreamConsumer<IngestContext>, shared: &ConsumerShared, kind: RecordKind, paused: bool) {
    // Set first: a partition of this kind assigned from now on starts paused.
    shared.paused[lane(kind)].store(paused, Ordering::SeqCst);
    let tpl = partitions_of_kind(shared, kind);
    if tpl.count() == 0 {
        return;
    }
    let result = if paused { consumer.pause(&tpl) } else { consumer.resume(&tpl) };
    match result {
        Ok(()) => tracing::debug!(%kind, paused, partitions = tpl.count(), "backpressure"),
        Err(error) => tracing::warn!(%error, %kind, paused, "pause/resume failed"),
    }
}

/// One kind's way out of the poll loop.
struct Lane {
    kind: RecordKind,
    tx: mpsc::Sender<RawRecord>,
    /// Records received and not yet handed over (the channel was full or the budget used up).
    waiting: VecDeque<RawRecord>,
    /// Since when `waiting` has not been empty.
    blocked_since: Option<Instant>,
    /// Whether the last refusal came from the byte budget.
    over_budget: bool,
    paused: bool,
}

enum Flush {
    Done,
    Closed,
}

impl Lane {
    /// Hands over what the channel and the budget take.
    fn flush(&mut self, budget: Option<&QueueBudget>) -> Flush {
        self.over_budget = false;
        while let Some(record) = self.waiting.front() {
            let len = record_bytes(record);
            if budget.is_some_and(|b| !b.admits(self.kind, len)) {
                self.over_budget = true;
                break;
            }
            match self.tx.try_reserve() {
                Ok(permit) => {
                    if let Some(b) = budget {
                        b.charge(self.kind, len);
                    }
                    if let Some(record) = self.waiting.pop_front() {
                        permit.send(record);
                    }
                }
                Err(mpsc::error::TrySendError::Full(())) => break,
                Err(mpsc::error::TrySendError::Closed(())) => return Flush::Closed,
            }
        }
        if self.waiting.is_empty() {
            self.blocked_since = None;
        } else if self.blocked_since.is_none() {
            self.blocked_since = Some(Instant::now());
        }
        Flush::Done
    }

    fn should_pause(&self) -> bool {
        let cap = self.tx.max_capacity().clamp(1, MAX_WAITING);
        !self.paused
            && !self.waiting.is_empty()
            && (self.over_budget
                || self.waiting.len() >= cap
                || self.blocked_since.is_some_and(|t| t.elapsed() >= PAUSE_AFTER))
    }

    fn should_resume(&self, budget: Option<&QueueBudget>) -> bool {
        self.paused
            && self.waiting.is_empty()
            && self.tx.capacity() * 2 >= self.tx.max_capacity()
            && budget.is_none_or(|b| b.has_room(self.kind))
    }
}

/// Receives records and hands them to their kind's channel, pausing kinds that are full.
async fn poll_loop(
    consumer: Arc<StreamConsumer<IngestContext>>,
    shared: Arc<ConsumerShared>,
    lanes: Lanes,
    cancel: CancellationToken,
) {
    let budget = lanes.budget;
    let mut lanes: Vec<Lane> = RecordKind::ALL
        .into_iter()
        .zip(lanes.senders)
        .map(|(kind, tx)| Lane { kind, tx, waiting: VecDeque::new(), blocked_since: None, over_budget: false, paused: false })
        .collect();
    let mut error_log = ErrorLog::default();
    loop {
        for lane in &mut lanes {
            if let Flush::Closed = lane.flush(budget.as_ref()) {
                tracing::info!(kind = %lane.kind, "record receiver dropped; Kafka consumer stops");
                return;
            }
            if lane.should_pause() {
                lane.paused = true;
                set_paused(&consumer, &shared, lane.kind, true);
            } else if lane.should_resume(budget.as_ref()) {
                lane.paused = false;
                set_paused(&consumer, &shared, lane.kind, false);
            }
        }
        let blocked = lanes.iter().any(|l| !l.waiting.is_empty());
        let paused = lanes.iter().any(|l| l.paused);
        let wake = if blocked || paused { RETRY } else { KEEPALIVE };
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            received = consumer.recv() => match received {
                Ok(message) => {
                    if let Some(record) = to_record(&shared, &message) {
                        lanes[lane(record.kind)].waiting.push_back(record);
                    }
                }
                Err(error) => {
                    if matches!(error, KafkaError::MessageConsumptionFatal(_)) {
                        shared.health.mark_down(&error.to_string());
                    }
                    error_log.log(&error);
                }
            },
            _ = tokio::time::sleep(wake) => {}
        }
    }
}

/// Copies a message into a [`RawRecord`] and advances the partition's position; notices
/// offset jumps (a reset while running).
fn to_record(shared: &ConsumerShared, message: &BorrowedMessage<'_>) -> Option<RawRecord> {
    let Some((kind, topic)) = shared.intern(message.topic()) else {
        tracing::warn!(topic = message.topic(), "record from a topic not assigned; skipped");
        return None;
    };
    let partition = message.partition();
    let offset = message.offset();
    let tp = TopicPartition { topic, partition };
    let expected = shared.positions.lock().insert(tp.clone(), offset + 1);
    match expected {
        // Backwards: the broker no longer had the expected offset (topic recreated or
        // truncated) and librdkafka restarted per auto.offset.reset.
        Some(expected) if offset < expected => shared.note_reset(&tp, expected, offset, None),
        // Forward: a hole (compaction, transaction markers) or records deleted before they
        // were read; the monitor tells them apart with the low watermark.
        Some(expected) if offset > expected => shared.gaps.lock().push((tp.clone(), expected, offset)),
        _ => {}
    }
    shared.health.mark_ok();
    shared.metrics.pending_inc(kind);
    Some(RawRecord {
        kind,
        pos: SourcePos { tp, offset },
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
    topics: Vec<String>,
    group: String,
}

/// Assigns partitions (at start and when new ones appear), refreshes broker health and the
/// lag gauge, checks offset jumps and the group's members, every interval.
async fn monitor_loop(
    consumer: Arc<StreamConsumer<IngestContext>>,
    shared: Arc<ConsumerShared>,
    settings: MonitorSettings,
    cancel: CancellationToken,
) {
    let settings = Arc::new(settings);
    let mut round = 0u64;
    let assigned_once = Arc::new(AtomicBool::new(false));
    loop {
        let (c, sh, st, ok) =
            (Arc::clone(&consumer), Arc::clone(&shared), Arc::clone(&settings), Arc::clone(&assigned_once));
        let check_group = round.is_multiple_of(GROUP_CHECK_EVERY);
        let refresh = tokio::task::spawn_blocking(move || {
            if assign_new_partitions(&c, &sh, &st) {
                ok.store(true, Ordering::SeqCst);
            }
            refresh(&c, &sh, &st);
            if check_group {
                check_group_members(&c, &st);
            }
        });
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            joined = refresh => {
                if let Err(error) = joined {
                    tracing::error!(%error, "Kafka monitor round failed");
                }
            }
        }
        round += 1;
        let wait = if assigned_once.load(Ordering::SeqCst) { settings.interval } else { ASSIGN_RETRY.min(settings.interval) };
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Looks up the partitions of the three topics and assigns those not assigned yet, each at
/// its checkpoint offset (checked against the watermarks) or per `auto_offset_reset`.
/// Returns whether every topic was found (blocking: runs on the blocking pool).
fn assign_new_partitions(
    consumer: &StreamConsumer<IngestContext>,
    shared: &ConsumerShared,
    settings: &MonitorSettings,
) -> bool {
    let mut all_found = true;
    let mut new: Vec<TopicPartition> = Vec::new();
    for name in &settings.topics {
        let Some((_, topic)) = shared.intern(name) else { continue };
        let metadata = match consumer.fetch_metadata(Some(name), settings.timeout) {
            Ok(metadata) => metadata,
            Err(error) => {
                tracing::debug!(%error, topic = %name, "metadata request failed");
                shared.health.note_error(&error.to_string());
                return false;
            }
        };
        shared.health.mark_ok();
        let Some(found) = metadata.topics().iter().find(|t| t.name() == name) else {
            all_found = false;
            continue;
        };
        if found.error().is_some() || found.partitions().is_empty() {
            all_found = false;
            if shared.missing_topics.lock().insert(name.clone()) {
                tracing::warn!(topic = %name, "input topic not found on the broker; its partitions are assigned once it exists");
            }
            continue;
        }
        shared.missing_topics.lock().remove(name);
        let assignment = shared.assignment.lock();
        for partition in found.partitions() {
            let tp = TopicPartition { topic: Arc::clone(&topic), partition: partition.id() };
            if !assignment.contains(&tp) {
                new.push(tp);
            }
        }
    }
    if new.is_empty() {
        return all_found;
    }
    new.sort();
    let mut tpl = TopicPartitionList::with_capacity(new.len());
    let mut assigned = Vec::with_capacity(new.len());
    for tp in &new {
        let start = start_offset(consumer, shared, tp, settings.timeout);
        if let Err(error) = tpl.add_partition_offset(&tp.topic, tp.partition, start) {
            tracing::error!(%error, topic = %tp.topic, partition = tp.partition, "cannot set the start offset");
            return false;
        }
        assigned.push((tp.clone(), start.to_raw().filter(|o| *o >= 0)));
    }
    if let Err(error) = consumer.incremental_assign(&tpl) {
        tracing::error!(%error, "assigning partitions failed; retrying");
        let _ = shared.events.send(RebalanceEvent::Failed(error.to_string()));
        return false;
    }
    // Partitions of a kind that is paused start paused, like the others.
    for kind in RecordKind::ALL {
        if shared.paused[lane(kind)].load(Ordering::SeqCst) {
            let mut paused = TopicPartitionList::new();
            for tp in new.iter().filter(|tp| shared.intern(&tp.topic).is_some_and(|(k, _)| k == kind)) {
                paused.add_partition(&tp.topic, tp.partition);
            }
            if paused.count() > 0 {
                if let Err(error) = consumer.pause(&paused) {
                    tracing::warn!(%error, "pausing newly assigned partitions failed");
                }
            }
        }
    }
    for TopicPartition { topic, partition } in &new {
        shared.metrics.touch_resets(topic, *partition);
    }
    shared.assignment.lock().extend(new.iter().cloned());
    for (TopicPartition { topic, partition }, offset) in &assigned {
        tracing::info!(%topic, partition, start = ?offset, "partition assigned");
    }
    let _ = shared.events.send(RebalanceEvent::Assigned(assigned));
    all_found
}

/// Where a newly assigned partition starts: the checkpoint's offset when the broker still
/// has it (an out-of-range one is counted and logged, then per `auto_offset_reset`), else
/// per `auto_offset_reset`.
fn start_offset(
    consumer: &StreamConsumer<IngestContext>,
    shared: &ConsumerShared,
    tp: &TopicPartition,
    timeout: Duration,
) -> Offset {
    let reset = match shared.reset {
        OffsetReset::Earliest => Offset::Beginning,
        OffsetReset::Latest => Offset::End,
    };
    let Some(stored) = shared.positions.lock().get(tp).copied() else { return reset };
    match consumer.fetch_watermarks(&tp.topic, tp.partition, timeout) {
        Ok((low, high)) if stored < low || stored > high => {
            let to = match shared.reset {
                OffsetReset::Earliest => low,
                OffsetReset::Latest => high,
            };
            shared.note_reset(tp, stored, to, Some((low, high)));
            shared.positions.lock().insert(tp.clone(), to);
            Offset::Offset(to)
        }
        Ok(_) => Offset::Offset(stored),
        Err(error) => {
            // librdkafka resets an out-of-range offset itself; the poll loop notices the jump.
            tracing::debug!(%error, topic = %tp.topic, partition = tp.partition, "watermark request failed; starting at the stored offset");
            Offset::Offset(stored)
        }
    }
}

/// Warns when the group has active members: unimod does not join it, so another consumer
/// there (another program, or an older unimod) reads the same records independently.
fn check_group_members(consumer: &StreamConsumer<IngestContext>, settings: &MonitorSettings) {
    match consumer.fetch_group_list(Some(settings.group.as_str()), settings.timeout) {
        Ok(list) => {
            for group in list.groups().iter().filter(|g| g.name() == settings.group) {
                let members = group.members();
                if !members.is_empty() {
                    let clients: Vec<String> =
                        members.iter().map(|m| format!("{}@{}", m.client_id(), m.client_host())).collect();
                    tracing::warn!(
                        group = %settings.group,
                        members = members.len(),
                        clients = %clients.join(","),
                        "the consumer group has active members: unimod expects to be the only consumer of kafka.group_id and does not coordinate with them (it assigns all partitions itself); records are read by both and committed offsets interleave. Stop the other consumers or give unimod its own group_id"
                    );
                }
            }
        }
        Err(error) => tracing::debug!(%error, group = %settings.group, "describing the consumer group failed"),
    }
}

/// One health probe and lag refresh (blocking: runs on the blocking pool).
fn refresh(
    consumer: &StreamConsumer<IngestContext>,
    shared: &ConsumerShared,
    settings: &MonitorSettings,
) {
    let Some(probe) = settings.topics.first() else { return };
    match consumer.fetch_metadata(Some(probe), settings.timeout) {
        Ok(_) => shared.health.mark_ok(),
        Err(error) => {
            tracing::debug!(%error, "Kafka metadata probe failed");
            shared.health.note_error(&error.to_string());
            return;
        }
    }
    let gaps = std::mem::take(&mut *shared.gaps.lock());
    let assigned: Vec<TopicPartition> = shared.assignment.lock().iter().cloned().collect();
    for tp in assigned {
        let TopicPartition { topic, partition } = &tp;
        let partition = *partition;
        let (low, high) = match consumer.fetch_watermarks(topic, partition, settings.timeout) {
            Ok(marks) => marks,
            Err(error) => {
                tracing::debug!(%error, %topic, partition, "watermark request failed");
                return;
            }
        };
        shared.highs.lock().insert(tp.clone(), high);
        // A forward jump over records below the low watermark: they were deleted unread.
        for (_, expected, got) in gaps.iter().filter(|(g, _, _)| *g == tp) {
            if *expected < low {
                shared.note_reset(&tp, *expected, *got, Some((low, high)));
            }
        }
        let position = shared.positions.lock().get(&tp).copied();
        let lag = partition_lag(position, low, high, shared.reset);
        shared.metrics.set_lag(topic, partition, lag);
    }
    if !shared.assignment.lock().is_empty() && shared.missing_topics.lock().is_empty() {
        shared.backlog_known.store(true, Ordering::SeqCst);
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
