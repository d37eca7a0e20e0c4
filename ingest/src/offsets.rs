//! Per-partition offset tracking for at-least-once consumption with exactly-once lineage.
//!
//! Records are processed concurrently and finish out of order. The tracker answers, per
//! partition, the *next offset*: every record below it is finished (trained or rejected),
//! and it never moves past a record still in flight, so a slow or failed record holds it back.
//! Records finished above it are remembered too; a checkpoint stores both, and after a restart
//! the consumer resumes at the next offset and skips the finished ones
//! ([`BeginOutcome::AlreadyFinished`]), so no record is trained twice or lost.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::record::SourcePos;

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
    /// Finished offsets at or above `next` (only while something below them is in flight).
    finished: BTreeSet<i64>,
}

impl PartitionState {
    fn advance(&mut self) {
        let candidate = match self.in_flight.first() {
            Some(&lowest) => Some(lowest),
            None => self.finished.last().map(|&o| o + 1),
        };
        if let Some(candidate) = candidate {
            if self.next.is_none_or(|n| candidate > n) {
                self.next = Some(candidate);
            }
        }
        if let Some(next) = self.next {
            self.finished = self.finished.split_off(&next);
        }
    }
}

/// One partition's state in a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionOffsets {
    /// Topic name.
    pub topic: String,
    /// Partition number.
    pub partition: i32,
    /// Next offset to consume: every record below it is finished.
    pub next_offset: i64,
    /// Offsets above `next_offset` that are already finished (to be skipped when consumed
    /// again), ascending.
    pub finished_above: Vec<i64>,
}

/// Tracks records in flight and finished, per topic partition. Not thread-safe by itself:
/// wrap it in a mutex when shared.
#[derive(Debug, Clone, Default)]
pub struct OffsetTracker {
    partitions: BTreeMap<(Arc<str>, i32), PartitionState>,
}

impl OffsetTracker {
    /// An empty tracker.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a record handed over by the consumer.
    pub fn begin(&mut self, pos: &SourcePos) -> Result<BeginOutcome, OffsetError> {
        let state = self.partitions.entry((pos.topic.clone(), pos.partition)).or_default();
        if state.next.is_some_and(|n| pos.offset < n) || state.finished.contains(&pos.offset) {
            return Ok(BeginOutcome::AlreadyFinished);
        }
        if !state.in_flight.insert(pos.offset) {
            return Err(OffsetError::AlreadyInFlight(pos.to_string()));
        }
        Ok(BeginOutcome::New)
    }

    /// Marks a record finished (trained, or rejected and dead-lettered).
    pub fn finish(&mut self, pos: &SourcePos) -> Result<(), OffsetError> {
        let state = self
            .partitions
            .get_mut(&(pos.topic.clone(), pos.partition))
            .ok_or_else(|| OffsetError::NotInFlight(pos.to_string()))?;
        if !state.in_flight.remove(&pos.offset) {
            return Err(OffsetError::NotInFlight(pos.to_string()));
        }
        state.finished.insert(pos.offset);
        state.advance();
        Ok(())
    }

    /// The next offset of a partition: every record below it is finished. `None` when no
    /// record of the partition has finished yet (and none was restored).
    pub fn next_offset(&self, topic: &str, partition: i32) -> Option<i64> {
        self.partitions.get(&(Arc::from(topic), partition)).and_then(|s| s.next)
    }

    /// Number of records in flight across all partitions.
    pub fn in_flight(&self) -> usize {
        self.partitions.values().map(|s| s.in_flight.len()).sum()
    }

    /// Forgets a partition (after it was revoked in a rebalance): its in-flight records will
    /// not be finished here. Returns the partition's last state, if any.
    pub fn forget_partition(&mut self, topic: &str, partition: i32) -> Option<PartitionOffsets> {
        let key = (Arc::from(topic), partition);
        let state = self.partitions.remove(&key)?;
        state.next.map(|next| PartitionOffsets {
            topic: topic.to_string(),
            partition,
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
            .filter_map(|((topic, partition), state)| {
                state.next.map(|next| PartitionOffsets {
                    topic: topic.to_string(),
                    partition: *partition,
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
            let state = tracker.partitions.entry((Arc::from(p.topic.as_str()), p.partition)).or_default();
            state.next = Some(p.next_offset);
            state.finished = p.finished_above.iter().copied().filter(|&o| o >= p.next_offset).collect();
        }
        tracker
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(partition: i32, offset: i64) -> SourcePos {
        SourcePos { topic: Arc::from("t"), partition, offset }
    }

    #[test]
    fn out_of_order_completion_never_passes_a_record_in_flight() {
        let mut tracker = OffsetTracker::new();
        for o in 10..15 {
            assert_eq!(tracker.begin(&pos(0, o)).expect("begin"), BeginOutcome::New);
        }
        assert_eq!(tracker.next_offset("t", 0), None);
        tracker.finish(&pos(0, 12)).expect("finish");
        tracker.finish(&pos(0, 14)).expect("finish");
        assert_eq!(tracker.next_offset("t", 0), Some(10), "10 and 11 are still in flight");
        tracker.finish(&pos(0, 11)).expect("finish");
        assert_eq!(tracker.next_offset("t", 0), Some(10));
        tracker.finish(&pos(0, 10)).expect("finish");
        assert_eq!(tracker.next_offset("t", 0), Some(13), "13 is in flight");
        let exported = tracker.export();
        assert_eq!(exported, vec![PartitionOffsets { topic: "t".into(), partition: 0, next_offset: 13, finished_above: vec![14] }]);
        tracker.finish(&pos(0, 13)).expect("finish");
        assert_eq!(tracker.next_offset("t", 0), Some(15));
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
        assert_eq!(tracker.next_offset("t", 1), Some(100));
        assert_eq!(tracker.next_offset("t", 0), Some(0), "offset 0 never finished");
        tracker.finish(&pos(0, 0)).expect("finish");
        assert_eq!(tracker.next_offset("t", 0), Some(50));
    }

    #[test]
    fn gaps_in_offsets_are_passed_once_nothing_below_is_in_flight() {
        // Compacted topics and transaction markers leave holes in the offsets.
        let mut tracker = OffsetTracker::new();
        tracker.begin(&pos(0, 3)).expect("begin");
        tracker.begin(&pos(0, 7)).expect("begin");
        tracker.finish(&pos(0, 7)).expect("finish");
        assert_eq!(tracker.next_offset("t", 0), Some(3));
        tracker.finish(&pos(0, 3)).expect("finish");
        assert_eq!(tracker.next_offset("t", 0), Some(8));
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
        assert_eq!(restored.next_offset("t", 2), Some(1));
        // Consumption resumes at 1: 1 is new, 2 was finished before the restart, 3 is new.
        assert_eq!(restored.begin(&pos(2, 0)).expect("begin"), BeginOutcome::AlreadyFinished);
        assert_eq!(restored.begin(&pos(2, 1)).expect("begin"), BeginOutcome::New);
        assert_eq!(restored.begin(&pos(2, 2)).expect("begin"), BeginOutcome::AlreadyFinished);
        assert_eq!(restored.begin(&pos(2, 3)).expect("begin"), BeginOutcome::New);
        restored.finish(&pos(2, 1)).expect("finish");
        assert_eq!(restored.next_offset("t", 2), Some(3));
        assert!(restored.finish(&pos(2, 1)).is_err(), "finished twice");
        assert!(restored.finish(&pos(9, 1)).is_err(), "unknown partition");
        assert!(restored.begin(&pos(2, 3)).is_err(), "begun twice");
        let last = restored.forget_partition("t", 2).expect("state");
        assert_eq!(last.next_offset, 3);
        assert_eq!(restored.next_offset("t", 2), None);
    }
}
