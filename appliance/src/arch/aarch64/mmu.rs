//! Turning the EL1 MMU on with the identity-mapping tables of [`crate::paging`], and mapping
//! more device regions later.
//!
//! This module owns `MAIR_EL1`, `TCR_EL1`, `TTBR0_EL1`, the M/C/I bits of `SCTLR_EL1`, the
//! cache and TLB maintenance around them, and (after boot) the page tables themselves. It must
//! never change a valid translation (the paging module refuses to), so no TLB maintenance is
//! needed after boot.
//!
//! Before the MMU is on, every data access is Device-nGnRnE and non-cacheable: the tables, the
//! relocations and `.bss` were written straight to memory. Lines of that memory may still sit
//! in the data cache from before (Xen copied the image with its caches on), so [`enable`]
//! cleans and invalidates them by address before turning caches on; otherwise a later
//! cacheable read could see the stale line instead of what we wrote.

use core::arch::asm;
use core::ptr::NonNull;

use aarch64_cpu::asm::barrier;
use aarch64_cpu::registers::{
    Readable, Writeable, ID_AA64MMFR0_EL1, MAIR_EL1, SCTLR_EL1, TCR_EL1, TTBR0_EL1,
};
use spinning_top::Spinlock;

use crate::paging::{MapError, MemoryKind, PageTables, Table, MAIR_VALUE, VA_BITS};
use crate::platform::Region;

/// The tables in use once the MMU is on (`None` before).
static TABLES: Spinlock<Option<PageTables>> = Spinlock::new(None);

/// `SCTLR_EL1` bits: M (MMU), A (alignment check), C (data cache), SA (SP alignment check),
/// I (instruction cache), WXN.
const SCTLR_M: u64 = 1 << 0;
const SCTLR_A: u64 = 1 << 1;
const SCTLR_C: u64 = 1 << 2;
const SCTLR_SA: u64 = 1 << 3;
const SCTLR_I: u64 = 1 << 12;
const SCTLR_WXN: u64 = 1 << 19;

/// `TCR_EL1` for TTBR0 only: T0SZ for [`VA_BITS`], 4 KiB granule, table walks write-back
/// write-allocate inner and outer, inner shareable; EPD1 (no TTBR1 walks); IPS from PARange.
fn tcr_value() -> u64 {
    let t0sz = 64 - u64::from(VA_BITS);
    let irgn0_wbwa = 1 << 8;
    let orgn0_wbwa = 1 << 10;
    let sh0_inner = 3 << 12;
    let tg0_4k = 0 << 14;
    let epd1 = 1 << 23;
    let parange = ID_AA64MMFR0_EL1.get() & 0xf;
    let ips = parange.min(5) << 32;
    t0sz | irgn0_wbwa | orgn0_wbwa | sh0_inner | tg0_4k | epd1 | ips
}

/// Size of the smallest data cache line (`CTR_EL0.DminLine`).
fn dcache_line_size() -> u64 {
    let ctr: u64;
    // SAFETY: reading CTR_EL0 has no side effect.
    unsafe { asm!("mrs {}, ctr_el0", out(reg) ctr, options(nomem, nostack, preserves_flags)) };
    4 << ((ctr >> 16) & 0xf)
}

/// Cleans and invalidates the data cache lines of `region` to the point of coherency.
fn clean_invalidate_dcache(region: Region) {
    let line = dcache_line_size();
    let mut address = region.base & !(line - 1);
    while address < region.end() {
        // SAFETY: DC CIVAC writes a dirty line back and drops it; memory contents as seen by
        // any observer do not change, and an address without a mapping or line is ignored.
        unsafe { asm!("dc civac, {}", in(reg) address, options(nostack, preserves_flags)) };
        address += line;
    }
    barrier::dsb(barrier::SY);
}

/// Builds the identity map and turns the MMU and caches on; returns the new `SCTLR_EL1`.
///
/// The map covers `ram` (RAM banks, and RAM-like regions such as the grant table) as Normal
/// memory and `devices` as Device-nGnRE. `written` are the
/// regions that were written with the MMU off and will be read with it on (the image: its
/// relocated data, `.bss`, stack); their cache lines are cleaned and invalidated first. The
/// tables live in `pool` (whole pages), which must be free RAM inside `ram`.
///
/// # Safety
///
/// Must be called once, with the MMU off, before anything else uses the tables. `pool` must be
/// RAM that nothing else uses, ever. Every address the running code touches from now on (its
/// image, its stack, the device tree, console buffers) must be inside `ram`, or the next access
/// faults.
pub unsafe fn enable(
    pool: Region,
    ram: impl Iterator<Item = Region>,
    devices: impl Iterator<Item = Region>,
    written: &[Region],
) -> Result<u64, MapError> {
    clean_invalidate_dcache(pool);
    let capacity = (pool.size / core::mem::size_of::<Table>() as u64) as usize;
    let base = NonNull::new(pool.base as *mut Table).ok_or(MapError::OutOfTables)?;
    // SAFETY: the caller gives us `pool` for good, and identity mapping makes its address the
    // physical address the walker needs.
    let mut tables = unsafe { PageTables::new(base, capacity)? };
    for bank in ram {
        tables.map(bank, MemoryKind::Normal)?;
    }
    for region in devices {
        tables.map(region, MemoryKind::Device)?;
    }

    clean_invalidate_dcache(pool);
    for region in written {
        clean_invalidate_dcache(*region);
    }

    MAIR_EL1.set(MAIR_VALUE);
    TCR_EL1.set(tcr_value());
    TTBR0_EL1.set(tables.root_address());
    barrier::isb(barrier::SY);
    // SAFETY: invalidating all EL1 TLB entries and the instruction cache only drops cached
    // translations and instructions; the barriers order them before the MMU is turned on.
    unsafe {
        asm!(
            "dsb ish",
            "tlbi vmalle1",
            "ic iallu",
            "dsb ish",
            "isb",
            options(nostack, preserves_flags)
        );
    }
    let sctlr = (SCTLR_EL1.get() | SCTLR_M | SCTLR_C | SCTLR_I | SCTLR_SA) & !(SCTLR_A | SCTLR_WXN);
    SCTLR_EL1.set(sctlr);
    barrier::isb(barrier::SY);

    // From here on exclusive accesses work (memory is Normal), so the lock can be used.
    *TABLES.lock() = Some(tables);
    Ok(SCTLR_EL1.get())
}

/// Maps `region` (rounded out to pages) as Device-nGnRE memory, e.g. a device found after boot.
///
/// Mapping a region that is already device memory is fine; one that overlaps RAM or another
/// kind of mapping is an error, as is using up the page-table pool.
pub fn map_device(region: Region) -> Result<(), MapError> {
    map(region, MemoryKind::Device)
}

/// Maps `region` as `kind` after boot (see [`map_device`]).
pub fn map(region: Region, kind: MemoryKind) -> Result<(), MapError> {
    let mut guard = TABLES.lock();
    let tables = guard.as_mut().ok_or(MapError::OutOfTables)?;
    tables.map(region, kind)?;
    // New descriptors replace only invalid ones, which the TLB never holds: a barrier that
    // makes the writes visible to the table walker is all that is needed.
    barrier::dsb(barrier::ISHST);
    barrier::isb(barrier::SY);
    Ok(())
}

/// The kind of memory `address` is mapped as (`None`: unmapped, or MMU not on yet).
pub fn kind_of(address: u64) -> Option<MemoryKind> {
    TABLES.lock().as_ref()?.kind_of(address)
}

/// How many page tables of the pool are in use.
pub fn tables_used() -> usize {
    TABLES.lock().as_ref().map_or(0, PageTables::tables_used)
}

/// The current `SCTLR_EL1`.
pub fn sctlr() -> u64 {
    SCTLR_EL1.get()
}
