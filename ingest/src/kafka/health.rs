//! Broker reachability as seen by one Kafka client, for `/readyz`.
//!
//! librdkafka reconnects on its own and never fails a consumer outright when the brokers go
//! away, so reachability is inferred: every successful broker request (a fetched record, a
//! metadata or watermark request) marks the broker reachable, and librdkafka's "all brokers
//! down" error marks it unreachable. The broker counts as connected when the last success is
//! recent (within the health window) and no "down" report came after it.

use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Shared reachability state; cheap to update from the poll loop and client callbacks.
#[derive(Debug)]
pub struct BrokerHealth {
    window: Duration,
    state: Mutex<HealthState>,
}

#[derive(Debug, Default, Clone)]
struct HealthState {
    last_ok: Option<Instant>,
    last_down: Option<Instant>,
    last_error: Option<String>,
}

/// A point-in-time view of [`BrokerHealth`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSnapshot {
    /// Whether the broker counts as reachable now.
    pub connected: bool,
    /// Time since the last successful broker request, if there was one.
    pub since_last_ok: Option<Duration>,
    /// The last error librdkafka reported, if any.
    pub last_error: Option<String>,
}

impl BrokerHealth {
    /// A new state: not connected until the first success.
    pub fn new(window: Duration) -> Self {
        BrokerHealth { window, state: Mutex::new(HealthState::default()) }
    }

    /// Records a successful broker request.
    pub fn mark_ok(&self) {
        self.state.lock().last_ok = Some(Instant::now());
    }

    /// Records that librdkafka reports every broker unreachable.
    pub fn mark_down(&self, reason: &str) {
        let mut state = self.state.lock();
        state.last_down = Some(Instant::now());
        state.last_error = Some(reason.to_owned());
    }

    /// Records an error that does not by itself mean the brokers are unreachable.
    pub fn note_error(&self, reason: &str) {
        self.state.lock().last_error = Some(reason.to_owned());
    }

    /// Whether the broker counts as reachable now.
    pub fn connected(&self) -> bool {
        self.snapshot_at(Instant::now()).connected
    }

    /// The current state.
    pub fn snapshot(&self) -> HealthSnapshot {
        self.snapshot_at(Instant::now())
    }

    fn snapshot_at(&self, now: Instant) -> HealthSnapshot {
        let state = self.state.lock().clone();
        let connected = match (state.last_ok, state.last_down) {
            (None, _) => false,
            (Some(ok), down) => {
                now.saturating_duration_since(ok) <= self.window
                    && down.is_none_or(|down| down < ok)
            }
        };
        HealthSnapshot {
            connected,
            since_last_ok: state.last_ok.map(|ok| now.saturating_duration_since(ok)),
            last_error: state.last_error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_connected_before_the_first_success() {
        let health = BrokerHealth::new(Duration::from_secs(30));
        assert!(!health.connected());
        assert_eq!(health.snapshot().since_last_ok, None);
        health.mark_ok();
        assert!(health.connected());
    }

    #[test]
    fn a_down_report_after_the_last_success_disconnects_until_the_next_success() {
        let health = BrokerHealth::new(Duration::from_secs(30));
        health.mark_ok();
        std::thread::sleep(Duration::from_millis(2));
        health.mark_down("all brokers down");
        let snap = health.snapshot();
        assert!(!snap.connected);
        assert_eq!(snap.last_error.as_deref(), Some("all brokers down"));
        std::thread::sleep(Duration::from_millis(2));
        health.mark_ok();
        assert!(health.connected());
    }

    #[test]
    fn a_stale_success_is_not_connected() {
        let health = BrokerHealth::new(Duration::from_secs(5));
        health.mark_ok();
        let later = Instant::now() + Duration::from_secs(6);
        assert!(!health.snapshot_at(later).connected);
        assert!(health.snapshot_at(Instant::now()).connected);
    }

    #[test]
    fn other_errors_do_not_disconnect() {
        let health = BrokerHealth::new(Duration::from_secs(30));
        health.mark_ok();
        health.note_error("offset commit failed");
        assert!(health.connected());
    }
}
