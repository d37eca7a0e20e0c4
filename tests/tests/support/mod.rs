//! Helpers shared by the Kafka integration tests (each test binary includes this module).

#![allow(dead_code)]

use std::time::Duration;

use tokio::sync::mpsc;
use unimod_e2e::kafka::random_name;
use unimod_e2e::Broker;
use unimod_ingest::kafka::{KafkaConfig, TopicsConfig};
use unimod_ingest::record::RawRecord;

/// Generous bound for anything that waits on the broker (group joins take seconds).
pub(crate) const WAIT: Duration = Duration::from_secs(60);

/// Three new input topics with `partitions` partitions each.
pub(crate) async fn input_topics(broker: &Broker, partitions: i32) -> anyhow::Result<TopicsConfig> {
    Ok(TopicsConfig {
        text: broker.unique_topic("text", partitions).await?,
        image: broker.unique_topic("image", partitions).await?,
        pair: broker.unique_topic("pair", partitions).await?,
    })
}

/// A consumer configuration for `broker` with a random group and fast health/lag refresh.
pub(crate) fn config(broker: &Broker, topics: &TopicsConfig) -> KafkaConfig {
    let mut cfg = KafkaConfig::new(broker.brokers());
    cfg.group_id = random_name("group");
    cfg.topics = topics.clone();
    cfg.lag_interval_seconds = 0.2;
    cfg.health_window_seconds = 3.0;
    cfg.request_timeout_seconds = 2.0;
    cfg.options.insert("topic.metadata.refresh.interval.ms".into(), "1000".into());
    cfg.options.insert("reconnect.backoff.max.ms".into(), "500".into());
    cfg
}

/// Receives exactly `n` records, failing after [`WAIT`].
pub(crate) async fn recv_n(rx: &mut mpsc::Receiver<RawRecord>, n: usize) -> anyhow::Result<Vec<RawRecord>> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        match tokio::time::timeout(WAIT, rx.recv()).await {
            Ok(Some(record)) => out.push(record),
            Ok(None) => anyhow::bail!("channel closed after {} of {n} records", out.len()),
            Err(_) => anyhow::bail!("only {} of {n} records within {WAIT:?}", out.len()),
        }
    }
    Ok(out)
}

/// Payloads `"<tag>/<partition>/<i>"` for `i` in `0..n`.
pub(crate) fn payloads(tag: &str, partition: i32, n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| format!("{tag}/{partition}/{i}").into_bytes()).collect()
}

/// The lag gauge's current values by `(topic, partition)`, only for label sets that exist.
pub(crate) fn lag_values(metrics: &unimod_ingest::kafka::KafkaMetrics) -> std::collections::HashMap<(String, i32), i64> {
    use prometheus::core::Collector;
    let mut out = std::collections::HashMap::new();
    for family in metrics.consumer_lag.collect() {
        for metric in family.get_metric() {
            let label = |name: &str| {
                metric
                    .get_label()
                    .iter()
                    .find(|l| l.name() == name)
                    .map(|l| l.value().to_owned())
                    .unwrap_or_default()
            };
            let partition = label("partition").parse().unwrap_or(-1);
            out.insert((label("topic"), partition), metric.get_gauge().get_value() as i64);
        }
    }
    out
}
