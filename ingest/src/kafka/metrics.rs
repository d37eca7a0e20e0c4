//! Kafka-side metrics: `unimod_kafka_consumer_lag{topic,partition}`.
//!
//! Kept next to the consumer that feeds it; registered on the daemon's shared
//! [`prometheus::Registry`] like every other unimod metric.

use prometheus::{IntGaugeVec, Opts, Registry};

/// Name of the per-partition consumer lag gauge (INTERFACE.md section 5).
pub const CONSUMER_LAG: &str = "unimod_kafka_consumer_lag";

/// Metrics updated by the Kafka consumer. Cloning shares the underlying metrics.
#[derive(Debug, Clone)]
pub struct KafkaMetrics {
    /// Records between the consumer's position and the partition's high watermark.
    pub consumer_lag: IntGaugeVec,
}

impl KafkaMetrics {
    /// Creates the metrics without registering them anywhere (tests, tools).
    pub fn unregistered() -> Self {
        let consumer_lag = IntGaugeVec::new(
            Opts::new(
                CONSUMER_LAG,
                "Records between the consumer position and the high watermark, per partition",
            ),
            &["topic", "partition"],
        )
        .expect("static metric definition is valid");
        KafkaMetrics { consumer_lag }
    }

    /// Creates the metrics and registers them on `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let metrics = Self::unregistered();
        registry.register(Box::new(metrics.consumer_lag.clone()))?;
        Ok(metrics)
    }

    /// Sets the lag of one partition.
    pub fn set_lag(&self, topic: &str, partition: i32, lag: i64) {
        self.consumer_lag.with_label_values(&[topic, &partition.to_string()]).set(lag);
    }

    /// Forgets a partition that is no longer assigned, so its last value does not linger.
    pub fn forget_partition(&self, topic: &str, partition: i32) {
        // An absent label set is not an error worth reporting.
        let _ = self.consumer_lag.remove_label_values(&[topic, &partition.to_string()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::Encoder;

    #[test]
    fn lag_is_exported_per_partition_and_forgotten_on_revoke() {
        let registry = Registry::new();
        let metrics = KafkaMetrics::register(&registry).expect("registers once");
        metrics.set_lag("unimo.text", 0, 42);
        metrics.set_lag("unimo.text", 1, 7);
        metrics.forget_partition("unimo.text", 1);
        metrics.forget_partition("unimo.text", 9);
        let mut out = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&registry.gather(), &mut out)
            .expect("encodes");
        let text = String::from_utf8(out).expect("utf-8");
        assert!(
            text.contains(r#"unimod_kafka_consumer_lag{partition="0",topic="unimo.text"} 42"#),
            "{text}"
        );
        assert!(!text.contains(r#"partition="1""#), "{text}");
        assert!(KafkaMetrics::register(&registry).is_err(), "second registration must fail");
    }
}
