//! `unimod produce` (the library) and the tokenizer bootstrap reader against a real broker.

mod support;

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use support::{config, input_topics, payloads};
use unimod_e2e::kafka::{committed_offsets, produce_to_partition, producer, read_all, watermarks};
use unimod_e2e::Broker;
use unimod_ingest::kafka::{bootstrap_texts, produce, ProduceError, ProduceProgress, ProduceRequest};
use unimod_ingest::record::RecordKind;

async fn read(broker: &Broker, topic: &str) -> anyhow::Result<Vec<unimod_e2e::kafka::Consumed>> {
    let (brokers, topic) = (broker.brokers(), topic.to_owned());
    tokio::task::spawn_blocking(move || read_all(&brokers, &topic, Duration::from_secs(30))).await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_jsonl_and_image_folders_and_every_record_is_acknowledged() -> anyhow::Result<()> {
    let broker = Broker::start()?;
    let text_topic = broker.unique_topic("produce-text", 2).await?;
    let image_topic = broker.unique_topic("produce-image", 1).await?;
    let dir = tempfile::tempdir()?;
    let lines = [r#"{"id": "doc-1", "text": "a red square"}"#, r#"{"id": "doc-2", "text": "two blue circles"}"#, r#"{"text": "no id", "v": 1}"#];
    let jsonl = dir.path().join("text.jsonl");
    std::fs::write(&jsonl, format!("{}\n\n{}\r\n{}", lines[0], lines[1], lines[2]))?;

    let mut request = ProduceRequest::new(broker.brokers(), RecordKind::Text, vec![jsonl.clone()]);
    request.topic = Some(text_topic.clone());
    let mut last = ProduceProgress::default();
    let mut calls = 0;
    let summary = produce(&request, &mut |p: &ProduceProgress| {
        last = *p;
        calls += 1;
    })
    .await?;
    assert!(summary.all_acknowledged(), "{summary}");
    assert_eq!((summary.sent, summary.acknowledged, summary.failed), (3, 3, 0));
    assert_eq!(last, ProduceProgress { total: 3, sent: 3, acknowledged: 3, failed: 0 });
    assert!(calls >= 6, "progress after every send and every ack ({calls})");
    let got: BTreeSet<Vec<u8>> = read(&broker, &text_topic).await?.into_iter().filter_map(|c| c.payload).collect();
    let want: BTreeSet<Vec<u8>> = lines.iter().map(|l| l.as_bytes().to_vec()).collect();
    assert_eq!(got, want);

    // Images: raw bytes as the value, the file name as the key; folders are walked.
    let images = dir.path().join("images");
    std::fs::create_dir_all(images.join("nested"))?;
    let png_a = vec![0x89, b'P', b'N', b'G', 1, 2, 3];
    let jpg_b = vec![0xff, 0xd8, 0xff, 9, 8, 7];
    std::fs::write(images.join("a.png"), &png_a)?;
    std::fs::write(images.join("nested/b.jpg"), &jpg_b)?;
    std::fs::write(images.join("README.txt"), b"not an image")?;
    let mut request = ProduceRequest::new(broker.brokers(), RecordKind::Image, vec![images]);
    request.topic = Some(image_topic.clone());
    let summary = produce(&request, &mut |_: &ProduceProgress| {}).await?;
    assert_eq!((summary.sent, summary.acknowledged), (2, 2));
    let copies = read(&broker, &image_topic).await?;
    let got: HashSet<(Vec<u8>, Vec<u8>)> =
        copies.into_iter().map(|c| (c.key.unwrap_or_default(), c.payload.unwrap_or_default())).collect();
    assert_eq!(got, HashSet::from([(b"a.png".to_vec(), png_a), (b"b.jpg".to_vec(), jpg_b)]));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_lines_stop_the_run_before_anything_is_sent() -> anyhow::Result<()> {
    let broker = Broker::start()?;
    let topic = broker.unique_topic("produce-bad", 1).await?;
    let dir = tempfile::tempdir()?;
    let good = dir.path().join("good.jsonl");
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&good, "{\"text\": \"fine\"}\n")?;
    std::fs::write(&bad, "{\"text\": \"ok\"}\n{\"text\": \n[1]\n")?;
    let mut request = ProduceRequest::new(broker.brokers(), RecordKind::Text, vec![good, bad.clone()]);
    request.topic = Some(topic.clone());
    match produce(&request, &mut |_: &ProduceProgress| {}).await {
        Err(ProduceError::InvalidLines(lines)) => {
            let at: Vec<(std::path::PathBuf, usize)> = lines.into_iter().map(|l| (l.path, l.line)).collect();
            assert_eq!(at, vec![(bad.clone(), 2), (bad, 3)]);
        }
        other => panic!("expected InvalidLines, got {other:?}"),
    }
    let brokers = broker.brokers();
    let marks = tokio::task::spawn_blocking(move || watermarks(&brokers, &topic)).await??;
    assert_eq!(marks.get(&0), Some(&(0, 0)), "nothing was sent");

    // Empty inputs publish nothing and succeed.
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "\n\n")?;
    let mut request = ProduceRequest::new(broker.brokers(), RecordKind::Text, vec![empty]);
    request.topic = Some(broker.unique_topic("produce-empty", 1).await?);
    let summary = produce(&request, &mut |_: &ProduceProgress| {}).await?;
    assert_eq!((summary.sent, summary.acknowledged, summary.failed), (0, 0, 0));
    assert!(summary.all_acknowledged());

    // A broker that does not answer fails fast with a clear error instead of hanging.
    let mut request = ProduceRequest::new("127.0.0.1:1", RecordKind::Text, vec![dir.path().join("good.jsonl")]);
    request.metadata_timeout = Duration::from_secs(2);
    let err = produce(&request, &mut |_: &ProduceProgress| {}).await.expect_err("unreachable broker");
    assert!(matches!(err, ProduceError::Request { .. }), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_reads_text_and_pair_payloads_without_touching_the_group() -> anyhow::Result<()> {
    let broker = Broker::start()?;
    let topics = input_topics(&broker, 2).await?;
    let producer = producer(&broker.brokers())?;
    let mut want = BTreeSet::new();
    for partition in 0..2 {
        for topic in [&topics.text, &topics.pair] {
            let values = payloads(topic, partition, 4);
            want.extend(values.iter().cloned());
            produce_to_partition(&producer, topic, partition, &values).await?;
        }
        produce_to_partition(&producer, &topics.image, partition, &payloads("img", partition, 3)).await?;
    }
    let cfg = config(&broker, &topics);
    let sample = bootstrap_texts(&cfg, 1000, Duration::from_secs(30)).await?;
    assert_eq!(sample.len(), 16);
    assert_eq!(sample.into_iter().collect::<BTreeSet<_>>(), want, "text and pair only, each once");
    let few = bootstrap_texts(&cfg, 5, Duration::from_secs(30)).await?;
    assert_eq!(few.len(), 5);
    assert!(few.iter().all(|p| want.contains(p)));

    let brokers = broker.brokers();
    let group = cfg.group_id.clone();
    let parts: Vec<(String, i32)> = (0..2).map(|p| (topics.text.clone(), p)).collect();
    let committed = tokio::task::spawn_blocking(move || committed_offsets(&brokers, &group, &parts)).await??;
    assert!(committed.values().all(Option::is_none), "bootstrap commits nothing: {committed:?}");
    Ok(())
}
