//! The daemon's lifecycle state as `/readyz` and systemd see it.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

/// Where the daemon is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Loading the checkpoint, bootstrapping the tokenizer, joining the group.
    Starting = 0,
    /// Consuming and training.
    Running = 1,
    /// Shutting down.
    Draining = 2,
}

/// Shared, lock-free health state.
#[derive(Debug)]
pub struct Health {
    phase: AtomicU8,
    kafka_ok: AtomicBool,
    checkpoints_failing: AtomicBool,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            phase: AtomicU8::new(Phase::Starting as u8),
            kafka_ok: AtomicBool::new(false),
            checkpoints_failing: AtomicBool::new(false),
        }
    }
}

impl Health {
    /// Current phase.
    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Starting,
            1 => Phase::Running,
            _ => Phase::Draining,
        }
    }

    /// Moves to `phase` (draining is final).
    pub fn set_phase(&self, phase: Phase) {
        if self.phase() != Phase::Draining {
            self.phase.store(phase as u8, Ordering::Release);
        }
    }

    /// Records whether the broker is reachable.
    pub fn set_kafka_ok(&self, ok: bool) {
        self.kafka_ok.store(ok, Ordering::Release);
    }

    /// Records whether checkpoint writes keep failing (`storage.max_failed_checkpoints`).
    pub fn set_checkpoints_failing(&self, failing: bool) {
        self.checkpoints_failing.store(failing, Ordering::Release);
    }

    /// Whether the broker is reachable.
    pub fn kafka_ok(&self) -> bool {
        self.kafka_ok.load(Ordering::Acquire)
    }

    /// `None` when ready, else why not (the body of a 503).
    pub fn not_ready_reason(&self) -> Option<&'static str> {
        match self.phase() {
            Phase::Starting => Some("starting"),
            Phase::Draining => Some("draining"),
            Phase::Running if self.checkpoints_failing.load(Ordering::Acquire) => Some("checkpoint writes are failing"),
            Phase::Running if !self.kafka_ok() => Some("cannot reach kafka"),
            Phase::Running => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_running_and_connected() {
        let h = Health::default();
        assert_eq!(h.not_ready_reason(), Some("starting"));
        h.set_phase(Phase::Running);
        assert_eq!(h.not_ready_reason(), Some("cannot reach kafka"));
        h.set_kafka_ok(true);
        assert_eq!(h.not_ready_reason(), None);
        h.set_checkpoints_failing(true);
        assert_eq!(h.not_ready_reason(), Some("checkpoint writes are failing"));
        h.set_checkpoints_failing(false);
        assert_eq!(h.not_ready_reason(), None);
        h.set_phase(Phase::Draining);
        h.set_phase(Phase::Running);
        assert_eq!(h.not_ready_reason(), Some("draining"));
    }
}
