//! A PNG whose header declares 200000 x 200000 pixels (120 GB of RGB) is rejected from its
//! header: a counting allocator proves that no large buffer is ever requested.

#![allow(unsafe_code)] // the counting allocator below

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use unimod_ingest::config::ImageConfig;
use unimod_ingest::image::{image_to_objects, ObjectExtractor};
use unimod_ingest::reject::RejectReason;

/// The system allocator, recording the largest single allocation.
struct Counting;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: delegates every call to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: same layout contract as our caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[test]
fn png_declaring_200000_squared_pixels_is_rejected_without_a_large_allocation() {
    let config = ImageConfig::default();
    let extractor = ObjectExtractor::new(&config);
    let bomb = common::png_declaring(200_000, 200_000);
    // Within the dimension limit but over the pixel limit: the pixel check must catch it.
    let wide = ImageConfig { max_dimension: 300_000, ..config.clone() };
    LARGEST.store(0, Ordering::SeqCst);
    for cfg in [&config, &wide] {
        let err = image_to_objects(&bomb, cfg, &extractor).expect_err("rejected");
        assert_eq!(err.reason, RejectReason::ImageTooLarge, "{err}");
    }
    let largest = LARGEST.load(Ordering::SeqCst);
    assert!(largest < 1 << 20, "largest allocation while rejecting was {largest} bytes");
    // The same header with a sane size decodes (so the rejection is about the size).
    let sane = common::png_declaring(1, 1);
    image_to_objects(&sane, &config, &extractor).expect("a 1x1 PNG decodes");
}
