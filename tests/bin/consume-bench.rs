//! End-to-end consume benchmark: text records from a real broker (tansu), read by unimod's
//! consumer and preprocessed (`KafkaConsumer` -> `run_pipeline(Preprocessor)`, JSON decode +
//! normalisation + tokenisation), against a raw rdkafka `StreamConsumer` that only copies
//! each payload, both reading the same topic in the same run, alternating, several rounds.
//!
//! ```text
//! bench/consume.sh                                   # cargo run --release -p unimod-e2e --bin unimod-consume-bench
//! UNIMOD_BENCH_RECORDS=50000 UNIMOD_BENCH_ROUNDS=5 bench/consume.sh
//! ```
//!
//! Throughput is records / seconds from the first record received to the last (the consumer
//! group join before the first record is excluded from both, and reported separately).

use std::sync::Arc;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{ClientConfig, Message};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use unimod_e2e::kafka::{produce_many, producer, random_name};
use unimod_e2e::Broker;
use unimod_ingest::config::{FetchConfig, ImageConfig, PreprocessConfig, TextConfig};
use unimod_ingest::fetch::ImageFetcher;
use unimod_ingest::kafka::{KafkaConfig, KafkaConsumer, KafkaMetrics, StartOffsets, TopicsConfig};
use unimod_ingest::preprocess::{run_pipeline, Outcome, Preprocessor};
use unimod_ingest::text::TextTokenizer;

const WORDS: &[&str] = &[
    "a", "the", "red", "blue", "green", "small", "large", "dog", "cat", "car", "street", "park",
    "man", "woman", "child", "riding", "walking", "sitting", "on", "in", "near", "with", "two",
    "three", "bright", "dark", "old", "new", "house", "tree", "river", "boat", "beach", "sky",
    "playing", "holding", "looking", "at", "wooden", "table", "window", "city", "field", "horse",
];

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn texts(n: usize) -> Vec<String> {
    let mut rng = StdRng::seed_from_u64(7);
    (0..n)
        .map(|_| {
            let len = rng.random_range(12..40);
            (0..len).map(|_| WORDS[rng.random_range(0..WORDS.len())]).collect::<Vec<_>>().join(" ")
        })
        .collect()
}

/// Seconds from start to the first record and from the first record to the last.
struct Run {
    to_first: f64,
    steady: f64,
}

async fn raw_consumer(brokers: &str, topic: &str, n: usize) -> anyhow::Result<Run> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", random_name("bench-raw"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&[topic])?;
    let start = Instant::now();
    let mut first = None;
    let mut bytes = 0usize;
    for _ in 0..n {
        let message = consumer.recv().await?;
        first.get_or_insert_with(Instant::now);
        // The minimum any consumer does: own the payload.
        bytes += message.payload().map(<[u8]>::to_vec).map_or(0, |p| p.len());
    }
    let first = first.unwrap_or(start);
    assert!(bytes > 0);
    Ok(Run { to_first: (first - start).as_secs_f64(), steady: first.elapsed().as_secs_f64() })
}

fn bench_config(brokers: &str, topic: &str) -> KafkaConfig {
    let mut cfg = KafkaConfig::new(brokers);
    cfg.group_id = random_name("bench-unimod");
    cfg.topics = TopicsConfig { text: topic.to_owned(), ..TopicsConfig::default() };
    cfg
}

/// unimod's consumer alone (no preprocessing): splits the cost between the two stages.
async fn unimod_consumer_only(brokers: &str, topic: &str, n: usize) -> anyhow::Result<Run> {
    let cfg = bench_config(brokers, topic);
    let (tx, mut rx) = mpsc::channel(cfg.queue_capacity);
    let start = Instant::now();
    let consumer = KafkaConsumer::start(&cfg, StartOffsets::new(), tx, KafkaMetrics::unregistered(), CancellationToken::new())?;
    let mut first = None;
    for _ in 0..n {
        rx.recv().await.ok_or_else(|| anyhow::anyhow!("consumer ended"))?;
        first.get_or_insert_with(Instant::now);
    }
    let first = first.unwrap_or(start);
    let run = Run { to_first: (first - start).as_secs_f64(), steady: first.elapsed().as_secs_f64() };
    consumer.shutdown().await;
    Ok(run)
}

async fn unimod_consumer(
    brokers: &str,
    topic: &str,
    n: usize,
    preprocessor: Preprocessor,
) -> anyhow::Result<Run> {
    let mut cfg = KafkaConfig::new(brokers);
    cfg.group_id = random_name("bench-unimod");
    cfg.topics = TopicsConfig { text: topic.to_owned(), ..TopicsConfig::default() };
    let cancel = CancellationToken::new();
    let (raw_tx, raw_rx) = mpsc::channel(cfg.queue_capacity);
    let (out_tx, mut out_rx) = mpsc::channel(1024);
    let start = Instant::now();
    let consumer = KafkaConsumer::start(&cfg, StartOffsets::new(), raw_tx, KafkaMetrics::unregistered(), cancel.clone())?;
    let pipeline = tokio::spawn(run_pipeline(preprocessor, raw_rx, out_tx, PreprocessConfig::default().max_in_flight));
    let mut first = None;
    let mut ready = 0usize;
    for _ in 0..n {
        let processed = out_rx.recv().await.ok_or_else(|| anyhow::anyhow!("pipeline ended"))?;
        first.get_or_insert_with(Instant::now);
        if let Outcome::Ready(sample) = processed.outcome {
            ready += usize::from(sample.text.is_some());
        }
    }
    let run = Run { to_first: (first.unwrap_or(start) - start).as_secs_f64(), steady: first.unwrap_or(start).elapsed().as_secs_f64() };
    anyhow::ensure!(ready == n, "only {ready} of {n} records were ready");
    consumer.shutdown().await;
    cancel.cancel();
    drop(out_rx);
    let _ = pipeline.await;
    Ok(run)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let n = env_usize("UNIMOD_BENCH_RECORDS", 20_000);
    let rounds = env_usize("UNIMOD_BENCH_ROUNDS", 3).max(1);
    let partitions = 2;
    let broker = Broker::start()?;
    let topic = broker.unique_topic("bench-text", partitions).await?;
    let corpus = texts(n);
    let records: Vec<(i32, Vec<u8>)> = corpus
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let value = serde_json::json!({"id": format!("doc-{i}"), "text": text});
            ((i % partitions as usize) as i32, value.to_string().into_bytes())
        })
        .collect();
    let mean_bytes = records.iter().map(|(_, v)| v.len()).sum::<usize>() / n.max(1);
    let kafka = producer(&broker.brokers())?;
    for chunk in records.chunks(5_000) {
        produce_many(&kafka, &topic, chunk).await?;
    }

    let text_config = TextConfig { vocab_size: 4_096, ..TextConfig::default() };
    let tokenizer = Arc::new(TextTokenizer::train(&corpus[..n.min(5_000)], &text_config)?);
    let preprocess = PreprocessConfig::default();
    let fetch = FetchConfig::default();
    let make_preprocessor = || -> anyhow::Result<Preprocessor> {
        Ok(Preprocessor::new(
            &preprocess,
            &ImageConfig::default(),
            Arc::clone(&tokenizer),
            ImageFetcher::new(&fetch, None)?,
            None,
        )?)
    };

    // Warm-up: one raw read so both sides find the broker's storage warm.
    raw_consumer(&broker.brokers(), &topic, n).await?;
    let (mut raw, mut ours, mut only) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        // Alternate who goes first.
        let (a, b) = if round % 2 == 0 {
            let a = raw_consumer(&broker.brokers(), &topic, n).await?;
            let b = unimod_consumer(&broker.brokers(), &topic, n, make_preprocessor()?).await?;
            (a, b)
        } else {
            let b = unimod_consumer(&broker.brokers(), &topic, n, make_preprocessor()?).await?;
            let a = raw_consumer(&broker.brokers(), &topic, n).await?;
            (a, b)
        };
        println!(
            "round {round}: raw {:>9.0} records/s (first after {:.2} s), unimod consume+preprocess {:>9.0} records/s (first after {:.2} s)",
            n as f64 / a.steady, a.to_first, n as f64 / b.steady, b.to_first
        );
        raw.push(n as f64 / a.steady);
        ours.push(n as f64 / b.steady);
        let c = unimod_consumer_only(&broker.brokers(), &topic, n).await?;
        println!("round {round}: unimod consumer alone {:>9.0} records/s", n as f64 / c.steady);
        only.push(n as f64 / c.steady);
    }
    let (raw_median, ours_median) = (median(raw), median(ours));
    println!(
        "records {n} ({mean_bytes} B JSON each, {partitions} partitions), rounds {rounds}, preprocess threads {}, cores {}",
        preprocess.effective_threads(),
        std::thread::available_parallelism().map(|c| c.get()).unwrap_or(1)
    );
    println!("median raw rdkafka consumer:          {raw_median:>9.0} records/s");
    println!("median unimod consume + preprocess:   {ours_median:>9.0} records/s");
    println!("median unimod consumer alone:         {:>9.0} records/s", median(only));
    println!("ratio: {:.2}x (goal >= 0.8x)", ours_median / raw_median);
    Ok(())
}
