//! What sits between the consumer and the trainer, per record kind: a byte budget on the raw
//! payloads the consumer has handed over and that nobody has taken yet, and counters of
//! records handed over and taken, so that the stage picking kinds for the trainer knows which
//! kinds have records on their way.
//!
//! The consumer charges a record's key and payload bytes when it hands it over
//! ([`QueueBudget::charge`]) and stops handing over records of a kind whose share is used
//! up, pausing that kind's partitions; whoever takes records off the queues (after
//! preprocessing) calls [`QueueBudget::release`] with the same size and drops the payload.
//! Each kind gets a third of the budget, so one kind's large records never block the others.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::record::{RawRecord, RecordKind};

/// Index of `kind` in per-kind tables (the order of [`RecordKind::ALL`]).
pub fn lane(kind: RecordKind) -> usize {
    match kind {
        RecordKind::Text => 0,
        RecordKind::Image => 1,
        RecordKind::Pair => 2,
    }
}

/// Bytes a queued raw record holds (key and payload).
pub fn record_bytes(record: &RawRecord) -> u64 {
    (record.payload.as_ref().map_or(0, Vec::len) + record.key.as_ref().map_or(0, Vec::len)) as u64
}

/// Shared accounting of the queued raw records; cloning shares it.
#[derive(Debug, Clone)]
pub struct QueueBudget(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    per_kind: u64,
    bytes: [AtomicU64; 3],
    handed: [AtomicU64; 3],
    taken: [AtomicU64; 3],
}

impl QueueBudget {
    /// A budget of `total_bytes` over the three kinds (a third each; at least 1 byte each).
    pub fn new(total_bytes: u64) -> Self {
        QueueBudget(Arc::new(Inner {
            per_kind: (total_bytes / 3).max(1),
            bytes: Default::default(),
            handed: Default::default(),
            taken: Default::default(),
        }))
    }

    /// Each kind's share of the budget, in bytes.
    pub fn per_kind(&self) -> u64 {
        self.0.per_kind
    }

    /// Bytes of `kind` handed over and not yet released.
    pub fn bytes(&self, kind: RecordKind) -> u64 {
        self.0.bytes[lane(kind)].load(Ordering::SeqCst)
    }

    /// Whether a record of `len` bytes of `kind` may be handed over now: the kind's queued
    /// bytes stay within its share, or nothing of the kind is queued (so a single record
    /// larger than the share still passes, one at a time).
    pub fn admits(&self, kind: RecordKind, len: u64) -> bool {
        let queued = self.bytes(kind);
        queued == 0 || queued.saturating_add(len) <= self.0.per_kind
    }

    /// Whether `kind` has room again for resuming its partitions (queued bytes at most half
    /// of its share).
    pub fn has_room(&self, kind: RecordKind) -> bool {
        self.bytes(kind) <= self.0.per_kind / 2
    }

    /// The consumer handed over a record of `len` bytes.
    pub fn charge(&self, kind: RecordKind, len: u64) {
        self.0.bytes[lane(kind)].fetch_add(len, Ordering::SeqCst);
        self.0.handed[lane(kind)].fetch_add(1, Ordering::SeqCst);
    }

    /// A record of `len` bytes (as charged) was taken off the queues.
    pub fn release(&self, kind: RecordKind, len: u64) {
        let bytes = &self.0.bytes[lane(kind)];
        let mut current = bytes.load(Ordering::SeqCst);
        loop {
            match bytes.compare_exchange(current, current.saturating_sub(len), Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => break,
                Err(actual) => current = actual,
            }
        }
        self.0.taken[lane(kind)].fetch_add(1, Ordering::SeqCst);
    }

    /// Records of `kind` handed over and not yet taken (in the queues or in preprocessing).
    pub fn in_transit(&self, kind: RecordKind) -> u64 {
        let i = lane(kind);
        self.0.handed[i].load(Ordering::SeqCst).saturating_sub(self.0.taken[i].load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_gets_a_third_and_an_oversized_record_passes_alone() {
        let budget = QueueBudget::new(300);
        assert_eq!(budget.per_kind(), 100);
        assert!(budget.admits(RecordKind::Image, 1000), "nothing queued: one record always passes");
        budget.charge(RecordKind::Image, 1000);
        assert!(!budget.admits(RecordKind::Image, 1));
        assert!(budget.admits(RecordKind::Text, 60), "other kinds are not blocked");
        budget.charge(RecordKind::Text, 60);
        assert!(!budget.admits(RecordKind::Text, 41));
        assert!(budget.admits(RecordKind::Text, 40));
        assert!(!budget.has_room(RecordKind::Text));
        assert_eq!(budget.in_transit(RecordKind::Image), 1);
        budget.release(RecordKind::Image, 1000);
        assert_eq!(budget.bytes(RecordKind::Image), 0);
        assert_eq!(budget.in_transit(RecordKind::Image), 0);
        assert!(budget.has_room(RecordKind::Image));
        budget.release(RecordKind::Text, 100);
        assert_eq!(budget.bytes(RecordKind::Text), 0, "never below zero");
    }
}
