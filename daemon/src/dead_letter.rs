//! Dead-letter copies off the feeder's critical path.
//!
//! [`DeadLetters::copy`] starts a copy in its own task and returns at once (after waiting
//! only for one of [`MAX_CONCURRENT_COPIES`] slots); the record's offset waits for the
//! returned [`Copied`] receiver, every other record goes on. A copy ends within
//! `kafka.dead_letter_retry_seconds` (plus a short headers-only attempt): copied, copied
//! without its value, or counted in `unimod_dead_letter_failures_total{reason}`; in every case
//! the record is then finished. At shutdown the copies still running are abandoned (their
//! records are not finished, so they are consumed and copied again after the restart: copies
//! are at-least-once).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, Semaphore};
use tokio_util::sync::CancellationToken;
use unimod_ingest::kafka::{CopyOutcome, DeadLetterProducer};
use unimod_ingest::record::RawRecord;

use crate::telemetry::Metrics;

/// Copies in flight at once; the feeder waits for a slot beyond that (bounds the memory held
/// by copies while the dead-letter topic is unreachable).
pub const MAX_CONCURRENT_COPIES: usize = 64;

/// Resolves when the copy has ended (copied, copied without value, or counted as failed);
/// closed without a value when the copy was abandoned at shutdown.
pub type Copied = oneshot::Receiver<()>;

/// Starts dead-letter copies. Cheap to clone.
#[derive(Clone)]
pub struct DeadLetters {
    producer: Option<Arc<DeadLetterProducer>>,
    budget: Duration,
    metrics: Metrics,
    permits: Arc<Semaphore>,
    stop: CancellationToken,
}

impl DeadLetters {
    /// Copies go to `producer` (none: nothing is copied), each retried for up to `budget`;
    /// cancelling `stop` abandons the copies in flight.
    pub fn new(producer: Option<DeadLetterProducer>, budget: Duration, metrics: Metrics, stop: CancellationToken) -> Self {
        Self {
            producer: producer.map(Arc::new),
            budget,
            metrics,
            permits: Arc::new(Semaphore::new(MAX_CONCURRENT_COPIES)),
            stop,
        }
    }

    /// Whether copies are made at all.
    pub fn enabled(&self) -> bool {
        self.producer.is_some()
    }

    /// Starts a copy of `record` (rejected for `reason`, a short code, with `detail`); `None`
    /// when no dead-letter topic is configured (the record can be finished at once). When
    /// stopping, the copy is abandoned at once (the receiver closes without a value).
    pub async fn copy(&self, record: RawRecord, reason: &'static str, detail: String) -> Option<Copied> {
        let producer = self.producer.clone()?;
        let abandoned = || oneshot::channel::<()>().1;
        let permit = tokio::select! {
            _ = self.stop.cancelled() => return Some(abandoned()),
            p = Arc::clone(&self.permits).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return Some(abandoned()),
            },
        };
        let (tx, rx) = oneshot::channel();
        let budget = self.budget;
        let metrics = self.metrics.clone();
        let stop = self.stop.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let outcome = tokio::select! {
                // Abandoned: the sender is dropped, the record stays unfinished.
                _ = stop.cancelled() => return,
                o = producer.deliver(&record, reason, &detail, budget) => o,
            };
            match outcome {
                CopyOutcome::Copied => {}
                CopyOutcome::ValueDropped { reason: why } => {
                    metrics.dead_letter_value_dropped.with_label_values(&[why]).inc();
                    tracing::warn!(source = %record.pos, why, "dead-letter copy sent without its value");
                }
                CopyOutcome::Failed { reason: why, error } => {
                    metrics.dead_letter_failures.with_label_values(&[why]).inc();
                    tracing::error!(source = %record.pos, why, error = %error, "dead-letter copy failed; the record is finished without one");
                }
            }
            let _ = tx.send(());
        });
        Some(rx)
    }
}
