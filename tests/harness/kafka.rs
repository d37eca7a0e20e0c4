//! Kafka helpers for tests: random names, producing to chosen partitions, and reading a
//! topic back (records with their headers) without joining a consumer group.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

/// A random name `prefix-<time>-<counter>-<random>`: topics and groups never collide
/// between tests or runs.
pub fn random_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!(
        "{prefix}-{:x}-{}-{:06x}",
        nanos & 0xffff_ffff,
        COUNTER.fetch_add(1, Ordering::Relaxed),
        rand::random::<u32>() & 0xff_ffff
    )
}

/// A producer for tests (acks from the broker awaited per record).
pub fn producer(brokers: &str) -> anyhow::Result<FutureProducer> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "1")
        .set("message.timeout.ms", "30000")
        .create()
        .context("creating a test producer")
}

/// Produces `payloads` to one partition, in order; returns their offsets.
pub async fn produce_to_partition(
    producer: &FutureProducer,
    topic: &str,
    partition: i32,
    payloads: &[Vec<u8>],
) -> anyhow::Result<Vec<i64>> {
    let mut offsets = Vec::with_capacity(payloads.len());
    // Awaiting each send keeps the order and surfaces the first failure.
    for payload in payloads {
        let record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(topic).partition(partition).payload(payload.as_slice());
        let delivery = producer
            .send(record, Timeout::After(Duration::from_secs(30)))
            .await
            .map_err(|(error, _)| error)
            .with_context(|| format!("producing to {topic}[{partition}]"))?;
        offsets.push(delivery.offset);
    }
    Ok(offsets)
}

/// Produces many records concurrently (order within a partition kept by librdkafka);
/// `records` are `(partition, payload)`.
pub async fn produce_many(
    producer: &FutureProducer,
    topic: &str,
    records: &[(i32, Vec<u8>)],
) -> anyhow::Result<()> {
    let mut deliveries = Vec::with_capacity(records.len());
    for (partition, payload) in records {
        let record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(topic).partition(*partition).payload(payload.as_slice());
        deliveries.push(producer.send(record, Timeout::After(Duration::from_secs(30))));
    }
    for result in futures::future::join_all(deliveries).await {
        result.map_err(|(error, _)| error).with_context(|| format!("producing to {topic}"))?;
    }
    Ok(())
}

/// A record read back from a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumed {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key, if any.
    pub key: Option<Vec<u8>>,
    /// Value; `None` for a tombstone.
    pub payload: Option<Vec<u8>>,
    /// Headers in order, values as bytes (`None` values as empty).
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Consumed {
    /// The value of header `key`, as text.
    pub fn header(&self, key: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
}

/// Low and high watermark of every partition of `topic`.
pub fn watermarks(brokers: &str, topic: &str) -> anyhow::Result<HashMap<i32, (i64, i64)>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .context("creating a reader")?;
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .with_context(|| format!("metadata of {topic}"))?;
    let mut marks = HashMap::new();
    for t in metadata.topics().iter().filter(|t| t.name() == topic) {
        for p in t.partitions() {
            let wm = consumer
                .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
                .with_context(|| format!("watermarks of {topic}[{}]", p.id()))?;
            marks.insert(p.id(), wm);
        }
    }
    Ok(marks)
}

/// Reads every record of `topic` present now (up to each partition's high watermark) from
/// the beginning, without a consumer group. Blocking: call from `spawn_blocking` or a plain
/// test.
pub fn read_all(brokers: &str, topic: &str, timeout: Duration) -> anyhow::Result<Vec<Consumed>> {
    let marks = watermarks(brokers, topic)?;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        // assign() needs a group id; this one is never joined nor committed to.
        .set("group.id", random_name("reader"))
        .set("enable.auto.commit", "false")
        .create()
        .context("creating a reader")?;
    let mut tpl = TopicPartitionList::new();
    let mut remaining: HashMap<i32, i64> = HashMap::new();
    for (partition, (low, high)) in &marks {
        if high > low {
            tpl.add_partition_offset(topic, *partition, Offset::Offset(*low))?;
            remaining.insert(*partition, *high);
        }
    }
    let mut out = Vec::new();
    if remaining.is_empty() {
        return Ok(out);
    }
    consumer.assign(&tpl)?;
    let deadline = Instant::now() + timeout;
    while !remaining.is_empty() {
        if Instant::now() > deadline {
            bail!("reading {topic}: partitions {remaining:?} not read to the end in {timeout:?}");
        }
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(error)) => bail!("reading {topic}: {error}"),
            Some(Ok(message)) => {
                let headers = message
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(Consumed {
                    partition: message.partition(),
                    offset: message.offset(),
                    key: message.key().map(<[u8]>::to_vec),
                    payload: message.payload().map(<[u8]>::to_vec),
                    headers,
                });
                if remaining.get(&message.partition()).is_some_and(|h| message.offset() + 1 >= *h) {
                    remaining.remove(&message.partition());
                }
            }
        }
    }
    out.sort_by_key(|c| (c.partition, c.offset));
    Ok(out)
}

/// The offsets committed by `group` for the given partitions (`None`: nothing committed).
pub fn committed_offsets(
    brokers: &str,
    group: &str,
    partitions: &[(String, i32)],
) -> anyhow::Result<HashMap<(String, i32), Option<i64>>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .context("creating a group reader")?;
    let mut tpl = TopicPartitionList::new();
    for (topic, partition) in partitions {
        tpl.add_partition(topic, *partition);
    }
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .with_context(|| format!("committed offsets of group {group}"))?;
    Ok(committed
        .to_topic_map()
        .into_iter()
        .map(|(key, offset)| (key, offset.to_raw().filter(|o| *o >= 0)))
        .collect())
}

/// Headers as an owned list, for building expected values.
pub fn header_list(headers: &OwnedHeaders) -> Vec<(String, Vec<u8>)> {
    headers.iter().map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec())).collect()
}

/// Polls `condition` every 50 ms until it holds or `timeout` passes; returns whether it held.
pub async fn eventually(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
