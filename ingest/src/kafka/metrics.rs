//! Kafka-side metrics: `unimod_kafka_consumer_lag{topic,partition}`,
//! `unimod_records_pending{kind}` and `unimod_offset_resets_total{topic,partition}`.
//!
//! Kept next to the consumer that feeds it; registered on the daemon's shared
//! [`prometheus::Registry`] like every other unimod metric.

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};

use crate::record::RecordKind;

/// Name of the per-partition consumer lag gauge (docs/interface.md section 5).
pub const CONSUMER_LAG: &str = "unimod_kafka_consumer_lag";
/// Name of the per-kind gauge of records consumed and not yet finished.
pub const RECORDS_PENDING: &str = "unimod_records_pending";
/// Name of the per-partition counter of out-of-range offsets.
pub const OFFSET_RESETS: &str = "unimod_offset_resets_total";

/// Metrics updated by the Kafka consumer. Cloning shares the underlying metrics.
#[derive(Debug, Clone)]
pub struct KafkaMetrics {
    /// Records between the consumer's position and the partition's high watermark.
    pub consumer_lag: IntGaugeVec,
    /// Records consumed and not yet finished (trained, rejected or skipped as already in the
    /// lineage), per kind: the daemon's own backlog, which the lag gauge does not show.
    pub records_pending: IntGaugeVec,
    /// Times a partition's stored or current offset was outside the broker's range (topic
    /// recreated or truncated) and consumption restarted per `auto_offset_reset`.
    pub offset_resets: IntCounterVec,
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
        let records_pending = IntGaugeVec::new(
            Opts::new(RECORDS_PENDING, "Records consumed from Kafka and not yet finished, per kind"),
            &["kind"],
        )
        .expect("static metric definition is valid");
        let offset_resets = IntCounterVec::new(
            Opts::new(
                OFFSET_RESETS,
                "Times a partition's offset was out of the broker's range and consumption restarted per auto_offset_reset",
            ),
            &["topic", "partition"],
        )
        .expect("static metric definition is valid");
        for kind in RecordKind::ALL {
            records_pending.with_label_values(&[kind.as_str()]).set(0);
        }
        KafkaMetrics { consumer_lag, records_pending, offset_resets }
    }

    /// Creates the metrics and registers them on `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let metrics = Self::unregistered();
        registry.register(Box::new(metrics.consumer_lag.clone()))?;
        registry.register(Box::new(metrics.records_pending.clone()))?;
        registry.register(Box::new(metrics.offset_resets.clone()))?;
        Ok(metrics)
    }

    /// One more record of `kind` consumed.
    pub fn pending_inc(&self, kind: RecordKind) {
        self.records_pending.with_label_values(&[kind.as_str()]).inc();
    }

    /// One record of `kind` finished (or skipped).
    pub fn pending_dec(&self, kind: RecordKind) {
        let gauge = self.records_pending.with_label_values(&[kind.as_str()]);
        if gauge.get() > 0 {
            gauge.dec();
        }
    }

    /// Nothing is pending any more (a new consumer session starts; records left in the
    /// queues of the previous one were abandoned and will be consumed again).
    pub fn pending_reset(&self) {
        for kind in RecordKind::ALL {
            self.records_pending.with_label_values(&[kind.as_str()]).set(0);
        }
    }

    /// Creates a partition's reset counter at 0 (when it is assigned), so the series exists
    /// before the first reset.
    pub fn touch_resets(&self, topic: &str, partition: i32) {
        self.offset_resets.with_label_values(&[topic, &partition.to_string()]).inc_by(0);
    }

    /// Counts an offset reset of one partition.
    pub fn count_reset(&self, topic: &str, partition: i32) {
        self.offset_resets.with_label_values(&[topic, &partition.to_string()]).inc();
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
        assert!(text.contains(r#"unimod_records_pending{kind="pair"} 0"#), "{text}");
        assert!(KafkaMetrics::register(&registry).is_err(), "second registration must fail");
    }
}
