//! The heap: the global allocator over the RAM the runtime does not otherwise use.
//!
//! This module owns the `#[global_allocator]` (talc, behind a spinlock). The runtime gives it
//! the free RAM regions once the MMU is on (the allocator's lock needs exclusive accesses,
//! which Device memory does not support). It must never be handed memory that anything else
//! uses: the image, the device tree, page tables, reserved ranges.
//!
//! The lock is not interrupt-safe: interrupt handlers must not allocate.

use core::sync::atomic::{AtomicU64, Ordering};

use spinning_top::RawSpinlock;
use talc::source::Manual;
use talc::TalcLock;

use crate::platform::Region;

#[global_allocator]
static ALLOCATOR: TalcLock<RawSpinlock, Manual> = TalcLock::new(Manual);

/// Bytes handed to the allocator at boot.
static HEAP_BYTES: AtomicU64 = AtomicU64::new(0);

/// Regions smaller than this are not worth giving to the allocator.
const MIN_REGION: u64 = 64 * 1024;

/// Gives `regions` to the allocator; returns how many bytes it took.
///
/// # Safety
///
/// The regions must be mapped RAM that nothing else uses, ever, and the MMU must be on.
pub(crate) unsafe fn init(regions: &[Region]) -> u64 {
    let mut total = 0;
    let mut talc = ALLOCATOR.lock();
    for region in regions.iter().filter(|region| region.size >= MIN_REGION) {
        // SAFETY: the caller hands us `region` for good, and it is mapped read/write.
        let claimed = unsafe { talc.claim(region.base as *mut u8, region.size as usize) };
        if claimed.is_some() {
            total += region.size;
        }
    }
    HEAP_BYTES.store(total, Ordering::Relaxed);
    total
}

/// Bytes the heap was given at boot.
pub fn size() -> u64 {
    HEAP_BYTES.load(Ordering::Relaxed)
}
