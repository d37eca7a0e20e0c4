//! The stream side of a checkpoint: which fresh records the model has seen. Counts per kind
//! (plus rejected records) and, per partition, the next offset to consume and the finished
//! offsets above it. A record is finished when the optimizer step that used it has been
//! applied (or skipped as non-finite), or when it was rejected and its dead-letter copy
//! acknowledged. Restored from a checkpoint, records already finished are skipped when the
//! broker delivers them again, so every record enters the lineage exactly once.
//!
//! It also keeps `unimod_records_pending{kind}` (the consumer counts records up, finishing
//! counts them down) and applies offset resets reported by the consumer (a partition whose
//! topic was recreated starts afresh instead of skipping its new records as finished).
//!
//! Debugging aid: with `UNIMOD_TRACE_TRAINED=FILE` in the environment, every lineage appends
//! to FILE one line per event, written at once (one `write` each, so a kill -9 loses nothing
//! written; not fsynced, so a power loss may): `restore <offsets as JSON>` when a session
//! starts from a checkpoint's offsets (`[]` for a new lineage), `trained <kind> <topic>
//! <partition> <offset>` when a record's step was accounted, `rejected <kind> <topic>
//! <partition> <offset>` when a rejection was. A record is in the lineage of the newest
//! checkpoint when its line came before that checkpoint's `restore` line and the restored
//! offsets cover it (below the next offset or among the finished ones), or after the last
//! `restore` line and before the checkpoint. The end-to-end tests use it to check that every
//! record was trained exactly once across kill -9 restarts. It costs one write per record.

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::Arc;

use serde::Serialize;
use unimod_ingest::kafka::{KafkaMetrics, PartitionReset, ResetFeed};
use unimod_ingest::offsets::{BeginOutcome, OffsetTracker, PartitionOffsets};
use unimod_ingest::record::{RecordKind, SourcePos};

/// Environment variable naming the trace file (see the module documentation).
pub const TRACE_ENV: &str = "UNIMOD_TRACE_TRAINED";

pub use crate::checkpoint::RecordCounts;

/// One partition's offsets as the trace's `restore` line spells them (its own format, older
/// than the checkpoint's names).
#[derive(Serialize)]
struct TracedOffsets<'a> {
    topic: &'a str,
    partition: i32,
    next_offset: i64,
    finished_above: &'a [i64],
}

/// Where the lineage reports to: the pending gauge, the consumer's offset resets.
#[derive(Debug, Default)]
struct Links {
    metrics: Option<KafkaMetrics>,
    kinds: HashMap<Arc<str>, RecordKind>,
    resets: Option<ResetFeed>,
    unapplied: Vec<PartitionReset>,
}

/// Counts and offsets of the current lineage.
#[derive(Debug)]
pub struct Lineage {
    /// Record counts.
    pub counts: RecordCounts,
    tracker: OffsetTracker,
    links: Links,
    trace: Option<std::fs::File>,
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
        let trace = std::env::var_os(TRACE_ENV).and_then(|path| {
            match std::fs::OpenOptions::new().create(true).append(true).open(&path) {
                Ok(file) => Some(file),
                Err(e) => {
                    tracing::warn!(error = %e, path = %path.to_string_lossy(), "{TRACE_ENV}: cannot open the trace file");
                    None
                }
            }
        });
        let mut lineage = Self { counts, tracker: OffsetTracker::restore(offsets), links: Links::default(), trace };
        if lineage.trace.is_some() {
            let traced: Vec<TracedOffsets<'_>> = offsets
                .iter()
                .map(|p| TracedOffsets {
                    topic: &p.tp.topic,
                    partition: p.tp.partition,
                    next_offset: p.next_offset,
                    finished_above: &p.finished_above,
                })
                .collect();
            let json = serde_json::to_string(&traced).unwrap_or_else(|_| "[]".into());
            lineage.trace_line(&format!("restore {json}\n"));
        }
        lineage
    }

    /// Keeps `unimod_records_pending{kind}` (the consumer counts up; `topics` maps each input
    /// topic to its kind) and applies the consumer's offset resets.
    pub fn link(&mut self, metrics: KafkaMetrics, topics: &[(String, RecordKind)], resets: ResetFeed) {
        self.links.metrics = Some(metrics);
        self.links.kinds = topics.iter().map(|(t, k)| (Arc::from(t.as_str()), *k)).collect();
        self.links.resets = Some(resets);
    }

    /// Registers a delivered record (in partition order).
    pub fn admit(&mut self, pos: &SourcePos) -> Admission {
        let mut outcome = self.tracker.begin(pos);
        if !matches!(outcome, Ok(BeginOutcome::New)) && self.take_reset(pos) {
            // The partition restarted below offsets this lineage knows (topic recreated or
            // truncated): its records are new ones.
            tracing::warn!(%pos, "partition offsets were reset by the broker; its records count as new from here");
            self.tracker.reset_partition(&pos.tp);
            outcome = self.tracker.begin(pos);
        }
        match outcome {
            Ok(BeginOutcome::New) => Admission::New,
            Ok(BeginOutcome::AlreadyFinished) => {
                self.pending_done(pos);
                Admission::AlreadyDone
            }
            Err(e) => {
                // A redelivery of a record still queued here: the queued copy will be
                // trained; this one is dropped.
                tracing::warn!(error = %e, "duplicate delivery skipped");
                self.pending_done(pos);
                Admission::AlreadyDone
            }
        }
    }

    /// The step that used this fresh record was applied (or skipped as non-finite).
    pub fn trained(&mut self, kind: RecordKind, pos: &SourcePos) {
        self.counts.bump(kind);
        self.finish(pos);
        if self.trace.is_some() {
            self.trace_line(&format!("trained {kind} {} {} {}\n", pos.tp.topic, pos.tp.partition, pos.offset));
        }
    }

    /// The record was rejected (and its dead-letter copy, if any, acknowledged).
    pub fn rejected(&mut self, pos: &SourcePos) {
        self.counts.rejected += 1;
        self.finish(pos);
        if self.trace.is_some() {
            let kind = self.links.kinds.get(&pos.tp.topic).map_or("?", |k| k.as_str());
            self.trace_line(&format!("rejected {kind} {} {} {}\n", pos.tp.topic, pos.tp.partition, pos.offset));
        }
    }

    fn finish(&mut self, pos: &SourcePos) {
        self.pending_done(pos);
        if let Err(e) = self.tracker.finish(pos) {
            // Only reachable through a bug in the trainer loop: say so loudly.
            tracing::error!(error = %e, "offset tracker out of step");
        }
    }

    fn pending_done(&self, pos: &SourcePos) {
        if let (Some(metrics), Some(kind)) = (&self.links.metrics, self.links.kinds.get(&pos.tp.topic)) {
            metrics.pending_dec(*kind);
        }
    }

    /// Whether the consumer reported a reset of `pos`'s partition restarting at `pos`.
    fn take_reset(&mut self, pos: &SourcePos) -> bool {
        if let Some(feed) = &self.links.resets {
            self.links.unapplied.extend(feed.take());
        }
        let found = self
            .links
            .unapplied
            .iter()
            .position(|r| r.partition == pos.tp && r.to == pos.offset);
        match found {
            Some(i) => {
                self.links.unapplied.remove(i);
                true
            }
            None => false,
        }
    }

    fn trace_line(&mut self, line: &str) {
        if let Some(file) = self.trace.as_mut() {
            if let Err(e) = file.write_all(line.as_bytes()) {
                tracing::warn!(error = %e, "{TRACE_ENV}: write failed; tracing stops");
                self.trace = None;
            }
        }
    }

    /// Per-partition progress to store in a checkpoint.
    pub fn progress(&self) -> Vec<PartitionOffsets> {
        self.tracker.export()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(offset: i64) -> SourcePos {
        SourcePos::new(Arc::from("t"), 0, offset)
    }

    #[test]
    fn pending_counts_down_as_records_finish_or_are_skipped() {
        let metrics = KafkaMetrics::unregistered();
        let offsets = vec![PartitionOffsets::new("t", 0, 2)];
        let mut lineage = Lineage::restore(RecordCounts::default(), &offsets);
        lineage.link(metrics.clone(), &[("t".into(), RecordKind::Text)], ResetFeed::default());
        for _ in 0..4 {
            metrics.pending_inc(RecordKind::Text);
        }
        let gauge = || metrics.records_pending.with_label_values(&["text"]).get();
        assert_eq!(lineage.admit(&pos(1)), Admission::AlreadyDone);
        assert_eq!(gauge(), 3);
        assert_eq!(lineage.admit(&pos(2)), Admission::New);
        assert_eq!(lineage.admit(&pos(3)), Admission::New);
        assert_eq!(lineage.admit(&pos(4)), Admission::New);
        lineage.trained(RecordKind::Text, &pos(2));
        lineage.rejected(&pos(3));
        assert_eq!(gauge(), 1);
        assert_eq!(lineage.counts, RecordCounts { text: 1, image: 0, pair: 0, rejected: 1 });
    }
}
