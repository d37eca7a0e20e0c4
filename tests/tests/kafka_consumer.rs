//! The ingest Kafka consumer against a real broker (tansu): all three topics with several
//! partitions, start offsets from a checkpoint, commits, backpressure, broker restarts.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use support::{config, input_topics, lag_values, payloads, recv_n, WAIT};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use unimod_e2e::kafka::{committed_offsets, eventually, produce_many, produce_to_partition, producer};
use unimod_e2e::Broker;
use unimod_ingest::kafka::{KafkaConsumer, KafkaMetrics, StartOffsets};
use unimod_ingest::record::{RawRecord, RecordKind};

/// Checks that no (topic, partition, offset) repeats and that offsets rise per partition.
fn assert_exactly_once_in_order(records: &[RawRecord]) {
    let mut seen = HashSet::new();
    let mut last: HashMap<(String, i32), i64> = HashMap::new();
    for record in records {
        let key = (record.pos.topic.to_string(), record.pos.partition);
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
        let topic = record.pos.topic.to_string();
        assert_eq!(topics.kind_of(&topic), Some(record.kind), "kind follows the topic");
        let expected = format!("{topic}/{}/{}", record.pos.partition, record.pos.offset);
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
    let committed = vec![(topics.text.clone(), 0, 1), (topics.text.clone(), 2, 7)];
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
    let start: StartOffsets = [((topics.text.clone(), 0), 4), ((topics.text.clone(), 1), 10)].into();
    let (tx, mut rx) = mpsc::channel(64);
    let second = KafkaConsumer::start(&cfg, start, tx, KafkaMetrics::unregistered(), CancellationToken::new())?;
    let records = recv_n(&mut rx, 16).await?;
    assert_exactly_once_in_order(&records);
    let got: HashSet<(i32, i64)> = records.iter().map(|r| (r.pos.partition, r.pos.offset)).collect();
    let expected: HashSet<(i32, i64)> =
        (4..10).map(|o| (0, o)).chain((0..10).map(|o| (2, o))).collect();
    assert_eq!(got, expected);
    // Nothing else is pending: the next record is the new one on p1.
    produce_to_partition(&producer, &topics.text, 1, &[b"late".to_vec()]).await?;
    let late = recv_n(&mut rx, 1).await?;
    assert_eq!((late[0].pos.partition, late[0].pos.offset), (1, 10));
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
    // Short group timers: if paused partitions stopped the polling, librdkafka would leave
    // the group after max.poll.interval.ms and the partitions would be revoked.
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
    assert_eq!(consumer.revocations(), 0, "the consumer stayed in the group while paused");
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
        let expected = format!("bp/{}/{}", record.pos.partition, record.pos.offset);
        assert_eq!(record.payload.as_deref(), Some(expected.as_bytes()));
    }
    assert!(eventually(WAIT, || !consumer.is_paused()).await, "resumed once drained");
    assert_eq!(consumer.revocations(), 0, "never left the group (max.poll.interval.ms kept)");
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
