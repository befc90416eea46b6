//! The probe's two virtio-drivers `Hal`s: grant mode (every DMA buffer is granted to the backend
//! domain and named by its grant address) and direct mode (identity DMA in a direct-mapped
//! domain that owns the physical device).
//!
//! `Hal` methods are associated functions, so the grant state (our grant table, the backend's
//! domid, the ref allocator) lives in a static behind a spin lock, set once by [`init_grants`].
//! No interrupt handler touches it. A grant that Xen still marks in use when we end it (the
//! backend is copying from or to it) is never freed: the page is leaked, the refs stay taken,
//! and the event is counted ([`in_use_at_end`]) and logged.

use alloc::alloc::{alloc_zeroed, dealloc, Layout};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};

use ferry_appliance::println;
use ferry_appliance::xen::grant::{Access, Gfn, GrantRef, GrantTable};
use spinning_top::Spinlock;
use virtio_drivers::{BufferDirection, Hal, PhysAddr};

use crate::plan::{grant_address, grant_ref_of, page_span, RefAllocator, PAGE_SIZE};

/// First ref the probe hands out (0..8 are reserved for Xen's tools).
const FIRST_REF: u32 = 8;

struct GrantState {
    table: GrantTable,
    refs: RefAllocator,
    backend: u16,
}

static GRANTS: Spinlock<Option<GrantState>> = Spinlock::new(None);
/// Grants made since boot.
static GRANTED: AtomicUsize = AtomicUsize::new(0);
/// Grants found in use when ending them (leaked).
static IN_USE: AtomicUsize = AtomicUsize::new(0);

/// Gives the grant Hal our grant table and the domain to grant to.
pub fn init_grants(table: GrantTable, backend: u16) -> usize {
    let entries = table.len();
    *GRANTS.lock() = Some(GrantState {
        refs: RefAllocator::new(FIRST_REF, entries as u32),
        table,
        backend,
    });
    entries
}

/// (grants made since boot, grants still granted now, grants found in use when ending them).
pub fn grant_counts() -> (usize, usize, usize) {
    let live = GRANTS
        .lock()
        .as_ref()
        .map_or(0, |state| state.refs.in_use());
    (
        GRANTED.load(Ordering::Relaxed),
        live,
        IN_USE.load(Ordering::Relaxed),
    )
}

/// Grants found in use when ending them.
pub fn in_use_at_end() -> usize {
    IN_USE.load(Ordering::Relaxed)
}

/// Takes `count` consecutive refs without granting anything at them (for hostile tests that
/// name an ungranted ref). Give them back with [`release_refs`].
pub fn reserve_refs(count: usize) -> Option<u32> {
    GRANTS.lock().as_mut()?.refs.allocate(count)
}

/// Gives back refs taken with [`reserve_refs`].
pub fn release_refs(first: u32, count: usize) {
    if let Some(state) = GRANTS.lock().as_mut() {
        state.refs.release(first, count);
    }
}

/// Page-aligned, zeroed memory for `pages` pages from the heap (`None` if the heap is out).
fn allocate_pages(pages: usize) -> Option<NonNull<u8>> {
    let layout = Layout::from_size_align(pages.max(1) * PAGE_SIZE, PAGE_SIZE).ok()?;
    // SAFETY: the layout has a non-zero size.
    NonNull::new(unsafe { alloc_zeroed(layout) })
}

/// Frees memory from [`allocate_pages`].
///
/// # Safety
///
/// `address` must come from `allocate_pages(pages)` and not be used after this.
unsafe fn free_pages(address: NonNull<u8>, pages: usize) {
    let layout = Layout::from_size_align(pages.max(1) * PAGE_SIZE, PAGE_SIZE)
        .expect("the layout allocate_pages used");
    // SAFETY: per the contract, allocated with this layout and no longer used.
    unsafe { dealloc(address.as_ptr(), layout) }
}

/// Grants the `count` pages from frame `first_frame` at consecutive refs; returns the first ref.
fn grant_pages(first_frame: usize, count: usize, access: Access) -> Option<u32> {
    let mut guard = GRANTS.lock();
    let state = guard.as_mut()?;
    let first = state.refs.allocate(count)?;
    for i in 0..count {
        let gref = GrantRef(first + i as u32);
        let frame = Gfn((first_frame + i) as u64);
        if let Err(error) = state.table.grant_at(gref, state.backend, frame, access) {
            println!("ferry: probe: cannot grant frame {:#x}: {error}", frame.0);
            for done in 0..i {
                let _ = state.table.end_access(GrantRef(first + done as u32));
            }
            state.refs.release(first, count);
            return None;
        }
    }
    GRANTED.fetch_add(count, Ordering::Relaxed);
    Some(first)
}

/// Ends the grants of `count` refs from `first`. Returns false if any was in use: those refs
/// stay taken (and their pages must stay alive).
fn end_grants(first: u32, count: usize) -> bool {
    let mut guard = GRANTS.lock();
    let Some(state) = guard.as_mut() else {
        return false;
    };
    let mut all_ended = true;
    for i in 0..count as u32 {
        let gref = GrantRef(first + i);
        match state.table.end_access(gref) {
            Ok(()) => state.refs.release(first + i, 1),
            Err(error) => {
                all_ended = false;
                IN_USE.fetch_add(1, Ordering::Relaxed);
                println!("ferry: probe: grant still in use when ending it: {error}");
            }
        }
    }
    all_ended
}

/// The access a device needs for a buffer passed in `direction`.
fn access_for(direction: BufferDirection) -> Access {
    match direction {
        BufferDirection::DriverToDevice => Access::ReadOnly,
        BufferDirection::DeviceToDriver | BufferDirection::Both => Access::ReadWrite,
    }
}

/// virtio-drivers' `Hal` for grant mode: DMA addresses are grant addresses of pages granted to
/// the backend domain.
pub struct GrantHal;

// SAFETY: `dma_alloc` returns fresh, zeroed, page-aligned heap memory of the requested size that
// nothing else references until `dma_dealloc`; `mmio_phys_to_virt` is the identity on a window
// the probe mapped as device memory (PA = VA); `share` only grants, never touches the buffer.
unsafe impl Hal for GrantHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let Some(memory) = allocate_pages(pages) else {
            return (0, NonNull::dangling());
        };
        let frame = memory.as_ptr() as usize / PAGE_SIZE;
        match grant_pages(frame, pages, Access::ReadWrite) {
            Some(first) => (grant_address(first, 0), memory),
            None => {
                // SAFETY: just allocated with `pages`, never granted nor handed out.
                unsafe { free_pages(memory, pages) };
                (0, NonNull::dangling())
            }
        }
    }

    unsafe fn dma_dealloc(paddr: PhysAddr, vaddr: NonNull<u8>, pages: usize) -> i32 {
        let Some(first) = grant_ref_of(paddr) else {
            return -1;
        };
        if end_grants(first, pages) {
            // SAFETY: per the contract the memory came from `dma_alloc(pages)`, and no grant
            // on it is left: neither we nor the backend use it any more.
            unsafe { free_pages(vaddr, pages) };
        }
        // A grant in use leaks the pages (counted and logged) rather than panicking the probe.
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        NonNull::new(paddr as usize as *mut u8).expect("a non-null MMIO address")
    }

    unsafe fn share(buffer: NonNull<[u8]>, direction: BufferDirection) -> PhysAddr {
        let address = buffer.as_ptr() as *mut u8 as usize;
        let (first_frame, count) = page_span(address, buffer.len());
        match grant_pages(first_frame, count, access_for(direction)) {
            Some(first) => grant_address(first, address % PAGE_SIZE),
            // virtio-drivers has no way to fail here: an address without bit 63 makes the
            // backend refuse the request (IOERR), which the workload reports.
            None => {
                println!(
                    "ferry: probe: out of grant refs for a {}-byte buffer",
                    buffer.len()
                );
                0
            }
        }
    }

    unsafe fn unshare(paddr: PhysAddr, buffer: NonNull<[u8]>, _direction: BufferDirection) {
        let address = buffer.as_ptr() as *mut u8 as usize;
        let (_, count) = page_span(address, buffer.len());
        if let Some(first) = grant_ref_of(paddr) {
            end_grants(first, count);
        }
    }
}

/// virtio-drivers' `Hal` for direct mode: the domain is direct-mapped (guest physical = host
/// physical) and runs with VA = PA, so a buffer's address is its DMA address.
pub struct DirectHal;

// SAFETY: as for `GrantHal`; `share` returns the buffer's own address, which the physical device
// reaches because the domain is direct-mapped.
unsafe impl Hal for DirectHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        match allocate_pages(pages) {
            Some(memory) => (memory.as_ptr() as u64, memory),
            None => (0, NonNull::dangling()),
        }
    }

    unsafe fn dma_dealloc(_paddr: PhysAddr, vaddr: NonNull<u8>, pages: usize) -> i32 {
        // SAFETY: per the contract the memory came from `dma_alloc(pages)` and is unused now.
        unsafe { free_pages(vaddr, pages) };
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        NonNull::new(paddr as usize as *mut u8).expect("a non-null MMIO address")
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        buffer.as_ptr() as *mut u8 as u64
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}

/// What the probe's own code (rawq) needs beyond `Hal`: which address the device must not
/// accept in this mode, and whether grants exist at all.
pub trait ProbeHal: Hal {
    /// The mode's name for messages.
    const MODE: &'static str;
    /// Whether buffers are granted (grant mode).
    const GRANTED: bool;
}

impl ProbeHal for GrantHal {
    const MODE: &'static str = "grant";
    const GRANTED: bool = true;
}

impl ProbeHal for DirectHal {
    const MODE: &'static str = "direct";
    const GRANTED: bool = false;
}
