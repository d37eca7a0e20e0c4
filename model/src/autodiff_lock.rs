//! One process-wide lock around building and differentiating autodiff graphs.
//!
//! burn-autodiff 0.21 keeps every graph of the process in one locator, and the end of every
//! `backward()` frees the graph steps it finds unused, in all graphs, including a step
//! another thread is still building: that thread's backward then silently misses a
//! gradient (tracel-ai/burn#5573, fixed upstream after 0.21; seen here as one CI run's 0.6%
//! smaller gradient norm while unit tests trained side by side). [`Trainer::step`] holds
//! this lock from its first forward op to its last backward, so trainers on several
//! threads (tests, or an application embedding more than one) give the gradients each
//! would alone. The daemon has one training thread and serves from the inner (non-autodiff)
//! backend, so in production the lock is never contended. Code outside the trainer that
//! runs its own autodiff forward and backward should hold it too.
//!
//! [`Trainer::step`]: crate::Trainer::step

use std::sync::{Mutex, MutexGuard};

static LOCK: Mutex<()> = Mutex::new(());

/// Held while building an autodiff graph and running its backward pass.
pub fn autodiff_lock() -> MutexGuard<'static, ()> {
    // A panic while held (a failed test) leaves nothing half-done that the next holder
    // could see: the graphs belong to the panicking thread.
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}
