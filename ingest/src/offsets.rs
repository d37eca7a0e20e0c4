//! Per-partition offset tracking for at-least-once consumption with exactly-once lineage.
//!
//! Records are processed concurrently and finish out of order. The tracker answers, per
//! partition, the *next offset*: every record below it is finished (trained or rejected),
//! and it never moves past a record still in flight, so a slow or failed record holds it back.
//! Records finished above it are remembered too; a checkpoint stores both, and after a restart
//! the consumer resumes at the next offset and skips the finished ones
//! ([`BeginOutcome::AlreadyFinished`]), so no record is trained twice or lost.
//!
//! The next offset only moves over offsets this run has seen: records begun here (finished or
//! skipped as already finished) and holes below the highest of them. Restored finished
//! offsets above it never pull it forward, since records between them may not even have been
//! delivered yet. `begin` must be called in partition order (the consumer's order).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::record::{SourcePos, TopicPartition};

/// Errors from misuse of the tracker (a bug in the caller, never data-dependent).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OffsetError {
    /// `finish` for a record that was not begun (or finished twice).
    #[error("{0} finished but not in flight")]
    NotInFlight(String),
    /// `begin` for a record already in flight.
    #[error("{0} begun twice")]
    AlreadyInFlight(String),
}

/// What `begin` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BeginOutcome {
    /// A new record: process it, then call `finish`.
    New,
    /// The record is below the next offset or among the finished ones (a redelivery after a
    /// restart or rebalance): skip it, do not call `finish`.
    AlreadyFinished,
}

#[derive(Debug, Clone, Default)]
struct PartitionState {
    /// Every offset below this is finished; `None` until the first record finishes.
    next: Option<i64>,
    in_flight: BTreeSet<i64>,
    /// Finished offsets at or above `next`: finished here while something below them is in
    /// flight, or restored from a checkpoint (finished in an earlier run).
    finished: BTreeSet<i64>,
    /// The highest offset delivered in this run (begun, or skipped as already finished).
    /// Offsets above it have not been seen here, whatever `finished` holds.
    delivered: Option<i64>,
}

impl PartitionState {
    fn advance(&mut self) {
        // Everything below the lowest record in flight was delivered and finished (the
        // consumer delivers in partition order); with nothing in flight, everything up to the
        // highest delivered offset was.
        let candidate = match self.in_flight.first() {
            Some(&lowest) => Some(lowest),
            None => self.delivered.map(|o| o + 1),
        };
        if let Some(candidate) = candidate {
            if self.next.is_none_or(|n| candidate > n) {
                self.next = Some(candidate);
            }
        }
        if let Some(mut next) = self.next {
            // Finished offsets right at the next offset (restored ones) extend it.
            while self.finished.contains(&next) && !self.in_flight.contains(&next) {
                next += 1;
            }
            self.next = Some(next);
            self.finished = self.finished.split_off(&next);
        }
    }

    fn delivered(&mut self, offset: i64) {
        if self.delivered.is_none_or(|d| offset > d) {
            self.delivered = Some(offset);
        }
    }
}

/// One partition's progress: what the tracker exports, a checkpoint stores (its metadata
/// record's `offsets`, docs/interface.md section 1), the consumer starts from and commits.
///
/// Serialised with the checkpoint metadata's names, which existing checkpoints carry:
/// `{"topic", "partition", "offset", "done_above"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionOffsets {
    /// The partition.
    #[serde(flatten)]
    pub tp: TopicPartition,
    /// Next offset to consume: every record below it is finished.
    #[serde(rename = "offset")]
    pub next_offset: i64,
    /// Offsets above `next_offset` that are already finished (to be skipped when consumed
    /// again), ascending.
    #[serde(rename = "done_above", default)]
    pub finished_above: Vec<i64>,
}

impl PartitionOffsets {
    /// `next_offset` of `partition` of `topic`, nothing finished above it.
    pub fn new(topic: impl Into<std::sync::Arc<str>>, partition: i32, next_offset: i64) -> Self {
        Self { tp: TopicPartition::new(topic, partition), next_offset, finished_above: Vec::new() }
    }

    /// The next offsets of `offsets`, per partition: where a consumer starts.
    pub fn start_offsets(offsets: &[PartitionOffsets]) -> std::collections::HashMap<TopicPartition, i64> {
        offsets.iter().map(|p| (p.tp.clone(), p.next_offset)).collect()
    }
}

/// Tracks records in flight and finished, per topic partition. Not thread-safe by itself:
/// wrap it in a mutex when shared.
#[derive(Debug, Clone, Default)]
pub struct OffsetTracker {
    partitions: BTreeMap<TopicPartition, PartitionState>,
    /// Records in flight when their partition was reset: finished quietly, tracked no more.
    orphans: BTreeMap<TopicPartition, BTreeSet<i64>>,
}

impl OffsetTracker {
    /// An empty tracker.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a record handed over by the consumer.
    pub fn begin(&mut self, pos: &SourcePos) -> Result<BeginOutcome, OffsetError> {
        let state = self.partitions.entry(pos.tp.clone()).or_default();
        if state.next.is_some_and(|n| pos.offset < n) || state.finished.contains(&pos.offset) {
            state.delivered(pos.offset);
            return Ok(BeginOutcome::AlreadyFinished);
        }
        if !state.in_flight.insert(pos.offset) {
            return Err(OffsetError::AlreadyInFlight(pos.to_string()));
        }
        state.delivered(pos.offset);
        Ok(BeginOutcome::New)
    }

    /// Marks a record finished (trained, or rejected and dead-lettered).
    pub fn finish(&mut self, pos: &SourcePos) -> Result<(), OffsetError> {
        if self.orphans.get_mut(&pos.tp).is_some_and(|o| o.remove(&pos.offset)) {
            return Ok(());
        }
        let state = self.partitions.get_mut(&pos.tp).ok_or_else(|| OffsetError::NotInFlight(pos.to_string()))?;
        if !state.in_flight.remove(&pos.offset) {
            return Err(OffsetError::NotInFlight(pos.to_string()));
        }
        state.finished.insert(pos.offset);
        state.advance();
        Ok(())
    }

    /// The next offset of a partition: every record below it is finished. `None` when no
    /// record of the partition has finished yet (and none was restored).
    pub fn next_offset(&self, tp: &TopicPartition) -> Option<i64> {
        self.partitions.get(tp).and_then(|s| s.next)
    }

    /// Number of records in flight across all partitions.
    pub fn in_flight(&self) -> usize {
        self.partitions.values().map(|s| s.in_flight.len()).sum()
    }

    /// Starts a partition afresh after its offsets were reset by the broker (topic recreated
    /// or truncated): what was known about it is dropped, so its records are new again; records
    /// still in flight from before the reset finish quietly.
    pub fn reset_partition(&mut self, tp: &TopicPartition) {
        if let Some(state) = self.partitions.remove(tp) {
            self.orphans.entry(tp.clone()).or_default().extend(state.in_flight);
        }
    }

    /// Forgets a partition (after it was revoked in a rebalance): its in-flight records will
    /// not be finished here. Returns the partition's last state, if any.
    pub fn forget_partition(&mut self, tp: &TopicPartition) -> Option<PartitionOffsets> {
        let state = self.partitions.remove(tp)?;
        state.next.map(|next| PartitionOffsets {
            tp: tp.clone(),
            next_offset: next,
            finished_above: state.finished.iter().copied().collect(),
        })
    }

    /// The state to store in a checkpoint: per partition with a known next offset, that offset
    /// and the finished offsets above it. Records in flight are not finished and so are not in
    /// it; they will be consumed again after a restore.
    pub fn export(&self) -> Vec<PartitionOffsets> {
        self.partitions
            .iter()
            .filter_map(|(tp, state)| {
                state.next.map(|next| PartitionOffsets {
                    tp: tp.clone(),
                    next_offset: next,
                    finished_above: state.finished.iter().copied().filter(|&o| o >= next).collect(),
                })
            })
            .collect()
    }

    /// A tracker restored from a checkpoint's state (nothing in flight).
    pub fn restore(offsets: &[PartitionOffsets]) -> Self {
        let mut tracker = Self::new();
        for p in offsets {
            let state = tracker.partitions.entry(p.tp.clone()).or_default();
            state.next = Some(p.next_offset);
            state.finished = p.finished_above.iter().copied().filter(|&o| o >= p.next_offset).collect();
        }
        tracker
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn pos(partition: i32, offset: i64) -> SourcePos {
        SourcePos::new(Arc::from("t"), partition, offset)
    }

    fn tp(partition: i32) -> TopicPartition {
        TopicPartition::new("t", partition)
    }

    #[test]
    fn out_of_order_completion_never_passes_a_record_in_flight() {
        let mut tracker = OffsetTracker::new();
        for o in 10..15 {
            assert_eq!(tracker.begin(&pos(0, o)).expect("begin"), BeginOutcome::New);
        }
        assert_eq!(tracker.next_offset(&tp(0)), None);
        tracker.finish(&pos(0, 12)).expect("finish");
        tracker.finish(&pos(0, 14)).expect("finish");
        assert_eq!(tracker.next_offset(&tp(0)), Some(10), "10 and 11 are still in flight");
        tracker.finish(&pos(0, 11)).expect("finish");
        assert_eq!(tracker.next_offset(&tp(0)), Some(10));
        tracker.finish(&pos(0, 10)).expect("finish");
        assert_eq!(tracker.next_offset(&tp(0)), Some(13), "13 is in flight");
        let exported = tracker.export();
        assert_eq!(exported, vec![PartitionOffsets { tp: tp(0), next_offset: 13, finished_above: vec![14] }]);
        tracker.finish(&pos(0, 13)).expect("finish");
        assert_eq!(tracker.next_offset(&tp(0)), Some(15));
        assert_eq!(tracker.in_flight(), 0);
        assert_eq!(tracker.export()[0].finished_above, Vec::<i64>::new());
    }

    #[test]
    fn a_stuck_record_holds_its_partition_but_not_others() {
        let mut tracker = OffsetTracker::new();
        tracker.begin(&pos(0, 0)).expect("begin");
        for o in 0..100 {
            tracker.begin(&pos(1, o)).expect("begin");
        }
        for o in (0..100).rev() {
            tracker.finish(&pos(1, o)).expect("finish");
        }
        for o in 1..50 {
            tracker.begin(&pos(0, o)).expect("begin");
            tracker.finish(&pos(0, o)).expect("finish");
        }
        assert_eq!(tracker.next_offset(&tp(1)), Some(100));
        assert_eq!(tracker.next_offset(&tp(0)), Some(0), "offset 0 never finished");
        tracker.finish(&pos(0, 0)).expect("finish");
        assert_eq!(tracker.next_offset(&tp(0)), Some(50));
    }

    #[test]
    fn gaps_in_offsets_are_passed_once_nothing_below_is_in_flight() {
        // Compacted topics and transaction markers leave holes in the offsets.
        let mut tracker = OffsetTracker::new();
        tracker.begin(&pos(0, 3)).expect("begin");
        tracker.begin(&pos(0, 7)).expect("begin");
        tracker.finish(&pos(0, 7)).expect("finish");
        assert_eq!(tracker.next_offset(&tp(0)), Some(3));
        tracker.finish(&pos(0, 3)).expect("finish");
        assert_eq!(tracker.next_offset(&tp(0)), Some(8));
    }

    #[test]
    fn a_restored_finished_offset_never_pulls_the_next_offset_over_records_not_yet_delivered() {
        // Issue 9, item 0: the checkpoint holds partition 0 at 366 with a record rejected at
        // 459 (rejected at admission while 366..458 waited in the batcher). After the resume
        // the first step trains 366..395: the next offset must stop at 396, and 396..458 are
        // new records when they arrive, not "already finished".
        let saved = vec![PartitionOffsets { tp: tp(0), next_offset: 366, finished_above: vec![459] }];
        let mut tracker = OffsetTracker::restore(&saved);
        for o in 366..396 {
            assert_eq!(tracker.begin(&pos(0, o)).expect("begin"), BeginOutcome::New);
        }
        for o in 366..396 {
            tracker.finish(&pos(0, o)).expect("finish");
        }
        assert_eq!(tracker.next_offset(&tp(0)), Some(396));
        assert_eq!(
            tracker.export(),
            vec![PartitionOffsets { tp: tp(0), next_offset: 396, finished_above: vec![459] }]
        );
        for o in 396..459 {
            assert_eq!(tracker.begin(&pos(0, o)).expect("begin"), BeginOutcome::New, "offset {o}");
        }
        assert_eq!(tracker.begin(&pos(0, 459)).expect("begin"), BeginOutcome::AlreadyFinished);
        assert_eq!(tracker.begin(&pos(0, 460)).expect("begin"), BeginOutcome::New);
        for o in (396..459).chain([460]) {
            tracker.finish(&pos(0, o)).expect("finish");
        }
        assert_eq!(tracker.next_offset(&tp(0)), Some(461));
        assert_eq!(tracker.export()[0].finished_above, Vec::<i64>::new());
    }

    #[test]
    fn restored_finished_offsets_right_at_the_next_offset_extend_it() {
        let saved = vec![PartitionOffsets { tp: tp(0), next_offset: 10, finished_above: vec![11, 12, 20] }];
        let mut tracker = OffsetTracker::restore(&saved);
        tracker.begin(&pos(0, 10)).expect("begin");
        tracker.finish(&pos(0, 10)).expect("finish");
        assert_eq!(tracker.next_offset(&tp(0)), Some(13));
        assert_eq!(tracker.export()[0].finished_above, vec![20]);
        // A mid-run delivery skipped as already finished counts as delivered.
        assert_eq!(tracker.begin(&pos(0, 11)).expect("begin"), BeginOutcome::AlreadyFinished);
        assert_eq!(tracker.begin(&pos(0, 13)).expect("begin"), BeginOutcome::New);
        tracker.finish(&pos(0, 13)).expect("finish");
        assert_eq!(tracker.next_offset(&tp(0)), Some(14));
    }

    #[test]
    fn restore_skips_finished_records_and_misuse_is_an_error() {
        let mut tracker = OffsetTracker::new();
        for o in 0..4 {
            tracker.begin(&pos(2, o)).expect("begin");
        }
        tracker.finish(&pos(2, 0)).expect("finish");
        tracker.finish(&pos(2, 2)).expect("finish");
        let saved = tracker.export();
        let json = serde_json::to_string(&saved).expect("serialises");
        let back: Vec<PartitionOffsets> = serde_json::from_str(&json).expect("deserialises");
        let mut restored = OffsetTracker::restore(&back);
        assert_eq!(restored.next_offset(&tp(2)), Some(1));
        // Consumption resumes at 1: 1 is new, 2 was finished before the restart, 3 is new.
        assert_eq!(restored.begin(&pos(2, 0)).expect("begin"), BeginOutcome::AlreadyFinished);
        assert_eq!(restored.begin(&pos(2, 1)).expect("begin"), BeginOutcome::New);
        assert_eq!(restored.begin(&pos(2, 2)).expect("begin"), BeginOutcome::AlreadyFinished);
        assert_eq!(restored.begin(&pos(2, 3)).expect("begin"), BeginOutcome::New);
        restored.finish(&pos(2, 1)).expect("finish");
        assert_eq!(restored.next_offset(&tp(2)), Some(3));
        assert!(restored.finish(&pos(2, 1)).is_err(), "finished twice");
        assert!(restored.finish(&pos(9, 1)).is_err(), "unknown partition");
        assert!(restored.begin(&pos(2, 3)).is_err(), "begun twice");
        let last = restored.forget_partition(&tp(2)).expect("state");
        assert_eq!(last.next_offset, 3);
        assert_eq!(restored.next_offset(&tp(2)), None);
    }

    #[test]
    fn a_reset_partition_starts_afresh_and_its_old_records_finish_quietly() {
        let saved = vec![PartitionOffsets { tp: tp(0), next_offset: 500, finished_above: vec![] }];
        let mut tracker = OffsetTracker::restore(&saved);
        assert_eq!(tracker.begin(&pos(0, 500)).expect("begin"), BeginOutcome::New);
        // The topic was recreated: offsets start at 0 again.
        assert_eq!(tracker.begin(&pos(0, 0)).expect("begin"), BeginOutcome::AlreadyFinished);
        tracker.reset_partition(&tp(0));
        assert_eq!(tracker.begin(&pos(0, 0)).expect("begin"), BeginOutcome::New);
        tracker.finish(&pos(0, 500)).expect("the old record finishes quietly");
        tracker.finish(&pos(0, 0)).expect("finish");
        assert_eq!(tracker.next_offset(&tp(0)), Some(1));
    }
}
