//! The daemon's lifecycle state as `/readyz` and systemd see it.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;

use prometheus::IntGauge;

use crate::notify::Notifier;

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

/// The three views of the lifecycle kept together: [`Health`] (`/readyz`), the
/// `unimod_ready` gauge and systemd's state (`sd_notify`). One call per event, so they never
/// disagree.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    health: Arc<Health>,
    ready: IntGauge,
    notifier: Notifier,
}

impl Lifecycle {
    /// Starts in [`Phase::Starting`] (unready); tells systemd so.
    pub fn new(health: Arc<Health>, ready: IntGauge, notifier: Notifier) -> Self {
        let lifecycle = Self { health, ready, notifier };
        lifecycle.publish();
        lifecycle.notifier.status("starting");
        lifecycle
    }

    /// The health state `/readyz` reads.
    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// systemd's notifier (the watchdog pings through it).
    pub fn notifier(&self) -> &Notifier {
        &self.notifier
    }

    /// Moves to `phase` and tells everyone once: a (re)start says `STATUS=starting`, running
    /// says `READY=1`, the first drain says `STOPPING=1`. Draining is final: later calls
    /// change nothing and send nothing.
    pub fn enter(&self, phase: Phase) {
        let before = self.health.phase();
        if before == Phase::Draining {
            return;
        }
        self.health.set_phase(phase);
        self.publish();
        match phase {
            Phase::Starting => self.notifier.status("starting"),
            Phase::Running => self.notifier.ready(),
            Phase::Draining => self.notifier.stopping(),
        }
    }

    /// Records the broker's reachability and whether checkpoint writes keep failing.
    pub fn observe(&self, kafka_ok: bool, checkpoints_failing: bool) {
        self.health.set_kafka_ok(kafka_ok);
        self.health.set_checkpoints_failing(checkpoints_failing);
        self.publish();
    }

    fn publish(&self) {
        self.ready.set(i64::from(self.health.not_ready_reason().is_none()));
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

    #[test]
    fn the_lifecycle_keeps_readyz_the_gauge_and_systemd_in_step() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify.sock");
        let socket = std::os::unix::net::UnixDatagram::bind(&path).expect("bind");
        socket.set_nonblocking(true).expect("nonblocking");
        let received = || {
            let mut out = Vec::new();
            let mut buf = [0u8; 256];
            while let Ok(n) = socket.recv(&mut buf) {
                out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
            out
        };
        let gauge = IntGauge::new("ready", "ready").expect("gauge");
        gauge.set(1);
        let life = Lifecycle::new(Arc::new(Health::default()), gauge.clone(), Notifier::to_socket(&path));
        assert_eq!(gauge.get(), 0, "starting is unready");
        assert_eq!(received(), ["STATUS=starting"]);

        life.enter(Phase::Running);
        assert_eq!(gauge.get(), 0, "running but the broker not seen yet");
        assert_eq!(received(), ["READY=1\nSTATUS=consuming and training"]);
        life.observe(true, false);
        assert_eq!((gauge.get(), life.health().not_ready_reason()), (1, None));
        life.observe(true, true);
        assert_eq!((gauge.get(), life.health().not_ready_reason()), (0, Some("checkpoint writes are failing")));
        life.observe(true, false);
        assert_eq!(gauge.get(), 1);

        // A rollback restarts the session: unready again, and systemd is told.
        life.enter(Phase::Starting);
        assert_eq!(gauge.get(), 0);
        assert_eq!(received(), ["STATUS=starting"]);
        life.enter(Phase::Running);
        assert_eq!(gauge.get(), 1);
        received();

        life.enter(Phase::Draining);
        assert_eq!((gauge.get(), life.health().not_ready_reason()), (0, Some("draining")));
        assert_eq!(received(), ["STOPPING=1\nSTATUS=draining"]);
        // Final: a second drain (the run's end after the pipeline's) sends nothing, and a
        // late health observation does not make it ready again.
        life.enter(Phase::Draining);
        life.enter(Phase::Running);
        life.observe(true, false);
        assert_eq!(gauge.get(), 0);
        assert!(received().is_empty());
    }
}
