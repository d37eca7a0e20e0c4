//! The stream side of a checkpoint: which fresh records the model has seen. Counts per kind
//! (plus rejected records) and, per partition, the next offset to consume and the finished
//! offsets above it. A record is finished when the optimizer step that used it has been
//! applied (or skipped as non-finite), or when it was rejected and its dead-letter copy
//! acknowledged. Restored from a checkpoint, records already finished are skipped when the
//! broker delivers them again, so every record enters the lineage exactly once.

use serde::{Deserialize, Serialize};
use unimod_ingest::offsets::{BeginOutcome, OffsetTracker, PartitionOffsets};
use unimod_ingest::record::{RecordKind, SourcePos};

/// Fresh records whose effect a checkpoint contains.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordCounts {
    /// Text-only records trained.
    pub text: u64,
    /// Image-only records trained.
    pub image: u64,
    /// Pairs trained.
    pub pair: u64,
    /// Records rejected (any kind).
    pub rejected: u64,
}

impl RecordCounts {
    fn bump(&mut self, kind: RecordKind) {
        match kind {
            RecordKind::Text => self.text += 1,
            RecordKind::Image => self.image += 1,
            RecordKind::Pair => self.pair += 1,
        }
    }
}

/// Counts and offsets of the current lineage.
#[derive(Debug)]
pub struct Lineage {
    /// Record counts.
    pub counts: RecordCounts,
    tracker: OffsetTracker,
}

/// What to do with a record the broker delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// New to the lineage: train (or count the rejection).
    New,
    /// Already in the lineage (finished before the checkpoint this run resumed from).
    AlreadyDone,
}

impl Lineage {
    /// A lineage from a checkpoint's counts and offsets (or empty).
    pub fn restore(counts: RecordCounts, offsets: &[PartitionOffsets]) -> Self {
        Self { counts, tracker: OffsetTracker::restore(offsets) }
    }

    /// Registers a delivered record (in partition order).
    pub fn admit(&mut self, pos: &SourcePos) -> Admission {
        match self.tracker.begin(pos) {
            Ok(BeginOutcome::New) => Admission::New,
            Ok(BeginOutcome::AlreadyFinished) => Admission::AlreadyDone,
            Err(e) => {
                // A redelivery of a record still queued here (after a rebalance): the queued
                // copy will be trained; this one is dropped.
                tracing::warn!(error = %e, "duplicate delivery skipped");
                Admission::AlreadyDone
            }
        }
    }

    /// The step that used this fresh record was applied (or skipped as non-finite).
    pub fn trained(&mut self, kind: RecordKind, pos: &SourcePos) {
        self.counts.bump(kind);
        self.finish(pos);
    }

    /// The record was rejected (and its dead-letter copy, if any, acknowledged).
    pub fn rejected(&mut self, pos: &SourcePos) {
        self.counts.rejected += 1;
        self.finish(pos);
    }

    fn finish(&mut self, pos: &SourcePos) {
        if let Err(e) = self.tracker.finish(pos) {
            // Only reachable through a bug in the trainer loop: say so loudly.
            tracing::error!(error = %e, "offset tracker out of step");
        }
    }

    /// Per-partition progress to store in a checkpoint.
    pub fn progress(&self) -> Vec<PartitionOffsets> {
        self.tracker.export()
    }
}
