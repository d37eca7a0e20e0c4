//! Every metric of the ingest crate, in one module: the record-level ones ([`IngestMetrics`]:
//! rejections by kind and reason, image fetch durations) and the Kafka consumer's
//! ([`KafkaMetrics`]: lag, pending records, offset resets). Both register on the daemon's shared
//! [`prometheus::Registry`]. Metric names are constants; labels are low-cardinality (kind,
//! reason, outcome, topic, partition; never a message id).

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

use crate::record::RecordKind;
use crate::reject::RejectReason;

/// `unimod_records_rejected_total{kind,reason}`.
pub const RECORDS_REJECTED_TOTAL: &str = "unimod_records_rejected_total";
/// `unimod_image_fetch_seconds{outcome}`.
pub const IMAGE_FETCH_SECONDS: &str = "unimod_image_fetch_seconds";

/// Buckets of the fetch-duration histogram, in seconds.
const FETCH_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// The ingest crate's metrics. Cheap to clone (the collectors are shared handles).
#[derive(Debug, Clone)]
pub struct IngestMetrics {
    /// Rejected records by kind and reason.
    pub records_rejected: IntCounterVec,
    /// Duration of image downloads (all attempts of one fetch) by outcome (`ok` or a
    /// [`RejectReason`] label).
    pub image_fetch_seconds: HistogramVec,
}

impl IngestMetrics {
    /// Creates the collectors and registers them in `registry`. Series for every
    /// kind x reason pair are created up front so that dashboards see zeros, not gaps.
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let records_rejected = IntCounterVec::new(
            Opts::new(RECORDS_REJECTED_TOTAL, "Records rejected, by record kind and reason."),
            &["kind", "reason"],
        )?;
        registry.register(Box::new(records_rejected.clone()))?;
        for kind in RecordKind::ALL {
            for reason in RejectReason::ALL {
                records_rejected.with_label_values(&[kind.as_str(), reason.as_str()]);
            }
        }
        let image_fetch_seconds = HistogramVec::new(
            HistogramOpts::new(IMAGE_FETCH_SECONDS, "Duration of image downloads, by outcome.")
                .buckets(FETCH_BUCKETS.to_vec()),
            &["outcome"],
        )?;
        registry.register(Box::new(image_fetch_seconds.clone()))?;
        Ok(Self { records_rejected, image_fetch_seconds })
    }

    /// Counts one rejected record.
    pub fn record_rejected(&self, kind: RecordKind, reason: RejectReason) {
        self.records_rejected.with_label_values(&[kind.as_str(), reason.as_str()]).inc();
    }

    /// Observes one image fetch: `outcome` is `ok` or a rejection label.
    pub fn observe_fetch(&self, outcome: &str, seconds: f64) {
        self.image_fetch_seconds.with_label_values(&[outcome]).observe(seconds);
    }
}

/// `unimod_kafka_consumer_lag{topic,partition}` (docs/interface.md section 5).
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
    fn registers_and_counts() {
        let registry = Registry::new();
        let metrics = IngestMetrics::new(&registry).expect("registers");
        metrics.record_rejected(RecordKind::Pair, RejectReason::TooLarge);
        metrics.observe_fetch("ok", 0.2);
        let names: Vec<String> = registry.gather().iter().map(|f| f.name().to_string()).collect();
        assert!(names.contains(&RECORDS_REJECTED_TOTAL.to_string()));
        assert!(names.contains(&IMAGE_FETCH_SECONDS.to_string()));
        assert_eq!(metrics.records_rejected.with_label_values(&["pair", "too_large"]).get(), 1);
        assert_eq!(metrics.records_rejected.with_label_values(&["text", "too_large"]).get(), 0);
        // Registering twice in one registry is an error, not a silent duplicate.
        assert!(IngestMetrics::new(&registry).is_err());
    }

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
