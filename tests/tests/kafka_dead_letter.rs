//! Dead-letter copies against a real broker: value and key unchanged, the four headers set,
//! tombstones copied as tombstones, every copy acknowledged.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use unimod_e2e::kafka::read_all;
use unimod_e2e::Broker;
use unimod_ingest::kafka::{DeadLetterProducer, KafkaConfig};
use unimod_ingest::record::{RawRecord, RecordKind, SourcePos};

fn rejected(topic: &str, partition: i32, offset: i64, key: Option<&[u8]>, payload: Option<&[u8]>) -> RawRecord {
    RawRecord {
        kind: RecordKind::Pair,
        pos: SourcePos::new(Arc::from(topic), partition, offset),
        key: key.map(<[u8]>::to_vec),
        payload: payload.map(<[u8]>::to_vec),
        received_at: Instant::now(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_rejected_records_with_their_headers() -> anyhow::Result<()> {
    let broker = Broker::start()?;
    let dlq = broker.unique_topic("dead-letter", 1).await?;
    let mut cfg = KafkaConfig::new(broker.brokers());
    cfg.dead_letter_topic = Some(dlq.clone());
    let producer = DeadLetterProducer::new(&cfg)?.expect("dead_letter_topic is set");
    assert_eq!(producer.topic(), dlq);

    let binary: Vec<u8> = (0..=255u8).collect();
    let inputs = [
        (rejected("unimo.pair", 2, 41, Some(b"pair-7"), Some(b"{\"caption\": ")), "not_json", "EOF while parsing"),
        (rejected("unimo.image", 0, 9, None, Some(&binary)), "image_decode", "unknown image format"),
        (rejected("unimo.text", 5, 1_000_000_007, None, None), "empty", ""),
    ];
    let mut acks = Vec::new();
    for (record, reason, detail) in &inputs {
        acks.push(producer.send(record, reason, detail).await?);
    }
    assert_eq!(acks.iter().map(|(_, o)| *o).collect::<Vec<_>>(), vec![0, 1, 2]);

    let brokers = broker.brokers();
    let copies = tokio::task::spawn_blocking(move || read_all(&brokers, &dlq, Duration::from_secs(30))).await??;
    assert_eq!(copies.len(), 3);
    for (copy, (record, reason, detail)) in copies.iter().zip(&inputs) {
        assert_eq!(copy.payload, record.payload, "value unchanged");
        assert_eq!(copy.key, record.key, "key unchanged");
        let error = if detail.is_empty() { reason.to_string() } else { format!("{reason}: {detail}") };
        assert_eq!(copy.header("unimod-error"), Some(error));
        assert_eq!(copy.header("unimod-source-topic").as_deref(), Some(&*record.pos.tp.topic));
        assert_eq!(copy.header("unimod-source-partition"), Some(record.pos.tp.partition.to_string()));
        assert_eq!(copy.header("unimod-source-offset"), Some(record.pos.offset.to_string()));
    }
    Ok(())
}

/// A copy the producer refuses for good (over `message.max.bytes`) goes out without its value,
/// marked `unimod-value-dropped: too_large`, at once; a copy to a topic that does not exist
/// ends as a failure within its retry budget; `check_topic` tells a missing topic apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undeliverable_copies_end_within_their_budget() -> anyhow::Result<()> {
    use unimod_ingest::kafka::dead_letter::{CopyOutcome, TopicCheck};
    let broker = Broker::start()?;
    let dlq = broker.unique_topic("dead-letter", 1).await?;
    let mut cfg = KafkaConfig::new(broker.brokers());
    cfg.options.insert("message.max.bytes".into(), "4000".into());
    cfg.dead_letter_retry_seconds = 3.0;
    let producer = DeadLetterProducer::with_topic(&cfg, &dlq)?;
    assert_eq!(producer.check_topic(Duration::from_secs(10)), Ok(1));

    let big = vec![b'x'; 10_000];
    let started = Instant::now();
    let outcome = producer
        .deliver(&rejected("unimo.text", 0, 7, Some(b"k"), Some(&big)), "not_json", "expected value", Duration::from_secs(3))
        .await;
    assert_eq!(outcome, CopyOutcome::ValueDropped { reason: "too_large" });
    assert!(started.elapsed() < Duration::from_secs(3), "a permanent error is not retried: {:?}", started.elapsed());
    let small = producer
        .deliver(&rejected("unimo.text", 0, 8, None, Some(b"{")), "not_json", "EOF", Duration::from_secs(3))
        .await;
    assert_eq!(small, CopyOutcome::Copied);
    let brokers = broker.brokers();
    let topic = dlq.clone();
    let copies = tokio::task::spawn_blocking(move || read_all(&brokers, &topic, Duration::from_secs(30))).await??;
    assert_eq!(copies.len(), 2);
    assert_eq!(copies[0].payload, None);
    assert_eq!(copies[0].key.as_deref(), Some(&b"k"[..]));
    assert_eq!(copies[0].header("unimod-value-dropped").as_deref(), Some("too_large"));
    assert_eq!(copies[0].header("unimod-source-offset").as_deref(), Some("7"));
    assert_eq!(copies[1].payload.as_deref(), Some(&b"{"[..]));
    assert_eq!(copies[1].header("unimod-value-dropped"), None);

    // A topic that does not exist (tansu never creates one on produce).
    let missing = unimod_e2e::kafka::random_name("missing-dlq");
    let producer = DeadLetterProducer::with_topic(&cfg, &missing)?;
    match producer.check_topic(Duration::from_secs(10)) {
        Err(TopicCheck::Unusable(why)) => assert!(why.contains(&missing), "{why}"),
        other => panic!("missing topic reported as {other:?}"),
    }
    let started = Instant::now();
    let outcome = producer
        .deliver(&rejected("unimo.text", 0, 9, None, Some(b"{")), "not_json", "EOF", Duration::from_secs(2))
        .await;
    let took = started.elapsed();
    assert!(matches!(outcome, CopyOutcome::Failed { .. }), "{outcome:?}");
    assert!(took < Duration::from_secs(20), "bounded: {took:?}");
    eprintln!("copy to a missing topic ended as {outcome:?} after {took:?}");
    Ok(())
}
