//! Metrics of the ingest crate, registered in one place. Metric names are constants; labels
//! are low-cardinality (kind, reason, outcome, topic, partition; never a message id).

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

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
    // ---- Kafka metrics (owned by the Kafka side: `unimod_kafka_consumer_lag` etc.) ----
    // Add the Kafka collectors below this line and register them in `new`, in the marked
    // block.
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

        // ---- Kafka metrics: register here (Kafka side) ----

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
