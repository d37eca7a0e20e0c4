//! The ingest Kafka consumer against a real broker (tansu): all three topics with several
//! partitions, start offsets from a checkpoint, commits, backpressure (per kind, by records
//! and by bytes), out-of-range offsets, another member in the group, broker restarts.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use support::{config, input_topics, lag_values, payloads, recv_n, WAIT};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use unimod_e2e::kafka::{committed_offsets, eventually, produce_many, produce_to_partition, producer};
use unimod_e2e::Broker;
use unimod_ingest::kafka::{KafkaConsumer, KafkaMetrics, Lanes, PartitionReset, QueueBudget, StartOffsets, TopicPartition};
use unimod_ingest::offsets::PartitionOffsets;
use unimod_ingest::record::{RawRecord, RecordKind};

/// Checks that no (topic, partition, offset) repeats and that offsets rise per partition.
fn assert_exactly_once_in_order(records: &[RawRecord]) {
    let mut seen = HashSet::new();
    let mut last: HashMap<(String, i32), i64> = HashMap::new();
    for record in records {
        let key = (record.pos.tp.topic.to_string(), record.pos.tp.partition);
        assert!(seen.insert((key.clone(), record.pos.offset)), "duplicate {}", record.pos);
        if let Some(previous) = last.insert(key, record.pos.offset) {
            assert!(previous < record.pos.offset, "out of order at {}", record.pos);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumes_all_three_topics_across_partitions() -> anyhow::Result<()> {
    let broker = Broker::start()?;
    let topics = input_topics(&broker, 3).await?;
    let producer = producer(&broker.brokers())?;
    for kind in RecordKind::ALL {
        for partition in 0..3 {
            let topic = topics.topic(kind);
            produce_to_partition(&producer, topic, partition, &payloads(topic, partition, 5)).await?;
        }
    }
    let cfg = config(&broker, &topics);
    let (tx, mut rx) = mpsc::channel(cfg.queue_capacity);
    let metrics = KafkaMetrics::unregistered();
    let consumer =
        KafkaConsumer::start(&cfg, StartOffsets::new(), tx, metrics.clone(), CancellationToken::new())?;

    let records = recv_n(&mut rx, 45).await?;
    assert_exactly_once_in_order(&records);
    for record in &records {
        let topic = record.pos.tp.topic.to_string();
        assert_eq!(topics.kind_of(&topic), Some(record.kind), "kind follows the topic");
        let expected = format!("{topic}/{}/{}", record.pos.tp.partition, record.pos.offset);
        assert_eq!(record.payload.as_deref(), Some(expected.as_bytes()));
    }
    let per_topic: BTreeMap<RecordKind, usize> = records.iter().fold(BTreeMap::new(), |mut m, r| {
        *m.entry(r.kind).or_default() += 1;
        m
    });
    assert_eq!(per_topic.values().copied().collect::<Vec<_>>(), vec![15, 15, 15]);
    assert_eq!(consumer.assignment().len(), 9);
    assert!(eventually(WAIT, || consumer.connected()).await, "broker reachable");
    // Every partition was read to its end: the lag gauge shows 0 for all nine.
    let caught_up = eventually(WAIT, || {
        let lags = lag_values(&metrics);
        lags.len() == 9 && lags.values().all(|lag| *lag == 0)
    })
    .await;
    assert!(caught_up, "lag gauge reports 0 for all nine partitions");
    assert_eq!(consumer.position(&topics.text, 1), Some(5));

    consumer.shutdown().await;
    assert!(rx.recv().await.is_none(), "the consumer drops its sender on shutdown");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_and_resumes_from_checkpoint_offsets_not_the_group() -> anyhow::Result<()> {
    let broker = Broker::start()?;
    let topics = input_topics(&broker, 3).await?;
    let producer = producer(&broker.brokers())?;
    for partition in 0..3 {
        produce_to_partition(&producer, &topics.text, partition, &payloads("t", partition, 10)).await?;
    }
    let cfg = config(&broker, &topics);

    // First run: read everything, then commit offsets as the daemon would after a checkpoint.
    let (tx, mut rx) = mpsc::channel(64);
    let first = KafkaConsumer::start(&cfg, StartOffsets::new(), tx, KafkaMetrics::unregistered(), CancellationToken::new())?;
    recv_n(&mut rx, 30).await?;
    let committed = vec![PartitionOffsets::new(topics.text.clone(), 0, 1), PartitionOffsets::new(topics.text.clone(), 2, 7)];
    first.commit(&committed).await?;
    first.shutdown().await;
    let stored = committed_offsets(
        &broker.brokers(),
        &cfg.group_id,
        &[(topics.text.clone(), 0), (topics.text.clone(), 2)],
    )?;
    assert_eq!(stored.get(&(topics.text.clone(), 0)), Some(&Some(1)));
    assert_eq!(stored.get(&(topics.text.clone(), 2)), Some(&Some(7)));

    // Second run: the checkpoint says p0 -> 4 (mid-batch), p1 -> 10 (done); p2 has no entry
    // and starts at the earliest offset, not at the group's committed 7.
    let start: StartOffsets =
        [(TopicPartition::new(topics.text.clone(), 0), 4), (TopicPartition::new(topics.text.clone(), 1), 10)].into();
    let (tx, mut rx) = mpsc::channel(64);
    let second = KafkaConsumer::start(&cfg, start, tx, KafkaMetrics::unregistered(), CancellationToken::new())?;
    let records = recv_n(&mut rx, 16).await?;
    assert_exactly_once_in_order(&records);
    let got: HashSet<(i32, i64)> = records.iter().map(|r| (r.pos.tp.partition, r.pos.offset)).collect();
    let expected: HashSet<(i32, i64)> =
        (4..10).map(|o| (0, o)).chain((0..10).map(|o| (2, o))).collect();
    assert_eq!(got, expected);
    // Nothing else is pending: the next record is the new one on p1.
    produce_to_partition(&producer, &topics.text, 1, &[b"late".to_vec()]).await?;
    let late = recv_n(&mut rx, 1).await?;
    assert_eq!((late[0].pos.tp.partition, late[0].pos.offset), (1, 10));
    assert_eq!(late[0].payload.as_deref(), Some(&b"late"[..]));
    second.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backpressure_pauses_and_resumes_without_loss_or_duplicates() -> anyhow::Result<()> {
    let broker = Broker::start()?;
    let topics = input_topics(&broker, 2).await?;
    let producer = producer(&broker.brokers())?;
    let records: Vec<(i32, Vec<u8>)> = (0..2)
        .flat_map(|p| payloads("bp", p, 300).into_iter().map(move |v| (p, v)))
        .collect();
    produce_many(&producer, &topics.text, &records).await?;

    let mut cfg = config(&broker, &topics);
    cfg.queue_capacity = 4;
    // The consumer does not join its group, so nothing can revoke its partitions while they
    // are paused; short group timers (which would make an idle group member leave) change
    // nothing.
    cfg.options.insert("session.timeout.ms".into(), "6000".into());
    cfg.options.insert("heartbeat.interval.ms".into(), "1000".into());
    cfg.options.insert("max.poll.interval.ms".into(), "6000".into());
    let (tx, mut rx) = mpsc::channel(cfg.queue_capacity);
    let metrics = KafkaMetrics::unregistered();
    let consumer = KafkaConsumer::start(&cfg, StartOffsets::new(), tx, metrics.clone(), CancellationToken::new())?;

    assert!(eventually(WAIT, || consumer.is_paused()).await, "full queue pauses the consumer");
    let lagging = eventually(WAIT, || {
        lag_values(&metrics).iter().any(|((topic, _), lag)| *topic == topics.text && *lag > 0)
    })
    .await;
    assert!(lagging, "lag is visible while paused");
    // Stay full for longer than max.poll.interval.ms.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(consumer.is_paused());
    assert_eq!(consumer.revocations(), 0, "nothing revoked the partitions while paused");
    // Paused for real: the consumer did not pull the partitions into memory meanwhile.
    let pulled: i64 = (0..2).filter_map(|p| consumer.position(&topics.text, p)).sum();
    assert!(pulled < 300, "only a few records were fetched while paused ({pulled})");
    let lag: i64 = lag_values(&metrics).iter().filter(|((t, _), _)| *t == topics.text).map(|(_, l)| l).sum();
    assert!(lag > 300, "lag stays high while paused ({lag})");

    let mut received = Vec::new();
    while received.len() < 600 {
        received.extend(recv_n(&mut rx, 1).await?);
        if received.len() % 50 == 0 {
            tokio::task::yield_now().await;
        }
    }
    assert_exactly_once_in_order(&received);
    for record in &received {
        let expected = format!("bp/{}/{}", record.pos.tp.partition, record.pos.offset);
        assert_eq!(record.payload.as_deref(), Some(expected.as_bytes()));
    }
    assert!(eventually(WAIT, || !consumer.is_paused()).await, "resumed once drained");
    assert_eq!(consumer.revocations(), 0, "nothing revoked the partitions");
    assert!(
        tokio::time::timeout(Duration::from_millis(500), rx.recv()).await.is_err(),
        "no record beyond the 600 produced"
    );
    consumer.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_a_stopped_broker_and_recovers_after_restart() -> anyhow::Result<()> {
    let mut broker = Broker::start()?;
    let topics = input_topics(&broker, 1).await?;
    let producer = producer(&broker.brokers())?;
    produce_to_partition(&producer, &topics.text, 0, &payloads("r", 0, 5)).await?;
    let cfg = config(&broker, &topics);
    let (tx, mut rx) = mpsc::channel(64);
    let consumer = KafkaConsumer::start(&cfg, StartOffsets::new(), tx, KafkaMetrics::unregistered(), CancellationToken::new())?;
    let before = recv_n(&mut rx, 5).await?;
    assert!(eventually(WAIT, || consumer.connected()).await);

    tokio::task::block_in_place(|| broker.stop())?;
    assert!(eventually(WAIT, || !consumer.connected()).await, "stopped broker is reported");
    tokio::task::block_in_place(|| broker.restart())?;
    assert!(eventually(WAIT, || consumer.connected()).await, "restarted broker is reported");

    let producer = unimod_e2e::kafka::producer(&broker.brokers())?;
    let more: Vec<Vec<u8>> = (5..10).map(|i| format!("r/0/{i}").into_bytes()).collect();
    produce_to_partition(&producer, &topics.text, 0, &more).await?;
    let after = recv_n(&mut rx, 5).await?;
    let all: Vec<RawRecord> = before.into_iter().chain(after).collect();
    assert_exactly_once_in_order(&all);
    let offsets: Vec<i64> = all.iter().map(|r| r.pos.offset).collect();
    assert_eq!(offsets, (0..10).collect::<Vec<_>>());
    consumer.shutdown().await;
    Ok(())
}

/// The values of `unimod_offset_resets_total` by (topic, partition).
fn reset_counts(metrics: &KafkaMetrics) -> HashMap<(String, String), u64> {
    use prometheus::core::Collector;
    let mut out = HashMap::new();
    for family in metrics.offset_resets.collect() {
        for m in family.get_metric() {
            let label = |n: &str| m.get_label().iter().find(|l| l.name() == n).map(|l| l.value().to_owned()).unwrap_or_default();
            out.insert((label("topic"), label("partition")), m.get_counter().get_value() as u64);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_out_of_range_start_offset_is_counted_and_consumption_goes_on() -> anyhow::Result<()> {
    // A checkpoint offset past the end: the topic was recreated with fewer records.
    let broker = Broker::start()?;
    let topics = input_topics(&broker, 2).await?;
    let producer = producer(&broker.brokers())?;
    produce_to_partition(&producer, &topics.text, 0, &payloads("t", 0, 5)).await?;
    produce_to_partition(&producer, &topics.text, 1, &payloads("t", 1, 5)).await?;
    let cfg = config(&broker, &topics);
    let start: StartOffsets =
        [(TopicPartition::new(topics.text.clone(), 0), 1000), (TopicPartition::new(topics.text.clone(), 1), 3)].into();
    let (tx, mut rx) = mpsc::channel(64);
    let metrics = KafkaMetrics::unregistered();
    let consumer = KafkaConsumer::start(&cfg, start, tx, metrics.clone(), CancellationToken::new())?;
    let records = recv_n(&mut rx, 7).await?;
    assert_exactly_once_in_order(&records);
    let got: HashSet<(i32, i64)> = records.iter().map(|r| (r.pos.tp.partition, r.pos.offset)).collect();
    let expected: HashSet<(i32, i64)> = (0..5).map(|o| (0, o)).chain((3..5).map(|o| (1, o))).collect();
    assert_eq!(got, expected, "partition 0 restarts at its low watermark, partition 1 resumes at 3");
    let resets = reset_counts(&metrics);
    assert_eq!(resets.get(&(topics.text.clone(), "0".into())), Some(&1), "{resets:?}");
    assert_eq!(resets.values().filter(|n| **n > 0).count(), 1, "only partition 0 was out of range: {resets:?}");
    assert_eq!(resets.len(), 6, "every assigned partition has a series: {resets:?}");
    assert_eq!(
        consumer.take_offset_resets(),
        vec![PartitionReset { partition: TopicPartition::new(topics.text.as_str(), 0), from: 1000, to: 0 }]
    );
    assert!(consumer.take_offset_resets().is_empty(), "taken once");
    consumer.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_member_in_the_group_neither_delays_nor_splits_consumption() -> anyhow::Result<()> {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    let broker = Broker::start()?;
    let topics = input_topics(&broker, 3).await?;
    let producer = producer(&broker.brokers())?;
    for partition in 0..3 {
        produce_to_partition(&producer, &topics.text, partition, &payloads("m", partition, 10)).await?;
    }
    let cfg = config(&broker, &topics);
    // Another consumer joins the group first and holds it (long session timeout).
    let other: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", broker.brokers())
        .set("group.id", &cfg.group_id)
        .set("session.timeout.ms", "45000")
        .set("enable.auto.commit", "false")
        .create()?;
    other.subscribe(&[&topics.text])?;
    let _ = tokio::time::timeout(Duration::from_secs(10), other.recv()).await;

    let started = std::time::Instant::now();
    let (tx, mut rx) = mpsc::channel(64);
    let consumer = KafkaConsumer::start(&cfg, StartOffsets::new(), tx, KafkaMetrics::unregistered(), CancellationToken::new())?;
    // All partitions, without waiting for any group protocol.
    let records = recv_n(&mut rx, 30).await?;
    let took = started.elapsed();
    assert_exactly_once_in_order(&records);
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert_eq!(consumer.assignment().len(), 9);
    consumer.shutdown().await;
    drop(other);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_kind_is_paused_alone_and_the_byte_budget_bounds_the_queue() -> anyhow::Result<()> {
    let broker = Broker::start()?;
    let topics = input_topics(&broker, 1).await?;
    let producer = producer(&broker.brokers())?;
    let texts: Vec<Vec<u8>> = payloads("text", 0, 200);
    let images: Vec<Vec<u8>> = (0..40).map(|i| {
        let mut v = format!("image/0/{i}/").into_bytes();
        v.resize(1000, b'x');
        v
    }).collect();
    produce_to_partition(&producer, &topics.text, 0, &texts).await?;
    produce_to_partition(&producer, &topics.image, 0, &images).await?;
    let cfg = config(&broker, &topics);
    let (text_tx, mut text_rx) = mpsc::channel(4);
    let (image_tx, mut image_rx) = mpsc::channel(1000);
    let (pair_tx, _pair_rx) = mpsc::channel(4);
    // 5,000 bytes per kind: five images.
    let budget = QueueBudget::new(15_000);
    let lanes = Lanes { senders: [text_tx, image_tx, pair_tx], budget: Some(budget.clone()) };
    let consumer = KafkaConsumer::start_lanes(&cfg, StartOffsets::new(), lanes, KafkaMetrics::unregistered(), CancellationToken::new())?;

    // Texts are not read: their queue fills and only texts are paused; images still flow,
    // up to the byte budget.
    let first = recv_n(&mut image_rx, 5).await?;
    assert!(eventually(WAIT, || consumer.is_kind_paused(RecordKind::Text)).await, "the full text queue pauses texts");
    assert!(eventually(WAIT, || consumer.is_kind_paused(RecordKind::Image)).await, "the used-up budget pauses images");
    assert!(!consumer.is_kind_paused(RecordKind::Pair), "pairs are not paused");
    assert!(tokio::time::timeout(Duration::from_millis(1500), image_rx.recv()).await.is_err(), "no sixth image within the budget");
    assert_eq!(budget.bytes(RecordKind::Image), 5_000);
    // Taking records off releases bytes and brings the rest.
    let mut got = first;
    for r in &got {
        budget.release(RecordKind::Image, r.payload.as_ref().map_or(0, |p| p.len() as u64));
    }
    while got.len() < 40 {
        let r = recv_n(&mut image_rx, 1).await?;
        budget.release(RecordKind::Image, r[0].payload.as_ref().map_or(0, |p| p.len() as u64));
        got.extend(r);
        assert!(budget.bytes(RecordKind::Image) <= 5_000, "queued image bytes within the budget");
    }
    assert_exactly_once_in_order(&got);
    let mut text = Vec::new();
    while text.len() < 200 {
        let r = recv_n(&mut text_rx, 1).await?;
        budget.release(RecordKind::Text, r[0].payload.as_ref().map_or(0, |p| p.len() as u64));
        text.extend(r);
    }
    assert_exactly_once_in_order(&text);
    for r in &text {
        assert_eq!(r.payload.as_deref(), Some(format!("text/0/{}", r.pos.offset).as_bytes()));
    }
    assert!(eventually(WAIT, || !consumer.is_paused()).await, "resumed once drained");
    consumer.shutdown().await;
    Ok(())
}
