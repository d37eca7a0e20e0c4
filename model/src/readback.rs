//! The one way data leaves the device: every device-to-host read of this crate goes through
//! [`to_host`], which counts it. On a GPU backend a read waits for every queued kernel (a
//! pipeline stall), so the training step makes exactly one per optimizer step, and a test
//! holds it to that by these counters.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

use burn::prelude::*;

static READS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static READS_HERE: Cell<u64> = const { Cell::new(0) };
}

/// Reads `tensor` to the host as `f32` values (row-major). Counts one read.
pub fn to_host<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> Vec<f32> {
    READS.fetch_add(1, Ordering::Relaxed);
    READS_HERE.with(|c| c.set(c.get() + 1));
    tensor.into_data().convert::<f32>().to_vec().unwrap_or_default()
}

/// Device-to-host reads of this process so far.
pub fn reads() -> u64 {
    READS.load(Ordering::Relaxed)
}

/// Device-to-host reads made by the calling thread so far (what tests count: other tests
/// run on other threads).
pub fn reads_on_this_thread() -> u64 {
    READS_HERE.with(Cell::get)
}
