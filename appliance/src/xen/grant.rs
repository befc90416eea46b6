//! Grant tables, version 1: granting our pages to another domain, and copying through grants.
//!
//! Our grant table is a packed array of `struct grant_entry_v1` (xen/include/public/
//! grant_table.h) in frames that Xen owns; we map them with `XENMEM_add_to_physmap`
//! (`XENMAPSPACE_grant_table`, idx = frame number) into the grant-table region that the
//! `/hypervisor` node's first `reg` entry names (0x38000000 on arm, `GUEST_GNTTAB_BASE`,
//! xen/include/public/arch-arm.h). Entries are updated by the rules at the top of
//! grant_table.h:
//!
//! - granting: write `domid` and `frame`, a write barrier, then `flags` (type and
//!   `GTF_readonly`);
//! - ending an unused grant: read `flags`, check that Xen has neither `GTF_reading` nor
//!   `GTF_writing` set (the grantee has the frame mapped or is copying it), and clear `flags`
//!   with a compare-and-swap against what was read. An entry in use cannot be ended: that is
//!   reported as [`GrantError::InUse`], and the page must stay granted (and alive).
//!
//! References 0..8 are reserved (`GNTTAB_NR_RESERVED_ENTRIES`: console, xenstore, ...).
//!
//! Copies (`GNTTABOP_copy`) go through a [`CopyBatch`]: one hypercall for many copies, each
//! with its own status, mapped to a [`GrantError::Copy`] that names the copy and the status.
//! Another domain's grants can also be mapped into a hole of our address space and unmapped
//! again (`map_grant_refs` / `unmap_grant_refs`, `GNTTABOP_map_grant_ref` /
//! `GNTTABOP_unmap_grant_ref`), one hypercall per batch, each entry with its own status.
//! Local buffers are borrowed by the batch (shared for sources, exclusively for destinations),
//! so Xen writing into them cannot race with Rust code.
//!
//! Granting a page is like handing it to a DMA device: the grantee reads it (and with
//! [`Access::ReadWrite`] writes it) at any time until the grant is ended. The caller keeps the
//! page alive and treats it accordingly.

use core::fmt;
use core::marker::PhantomData;
use core::sync::atomic::{fence, Ordering};

use super::abi::{
    gntst, DomId, GnttabCopy, GnttabCopyPtr, GrantEntryV1, DOMID_SELF, GNTCOPY_DEST_GREF,
    GNTCOPY_SOURCE_GREF, GNTTAB_NR_RESERVED_ENTRIES, GTF_PERMIT_ACCESS, GTF_READING, GTF_READONLY,
    GTF_WRITING, PAGE_SIZE,
};
use super::HypercallError;

/// A reference to an entry of our grant table (`grant_ref_t`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GrantRef(pub u32);

impl fmt::Display for GrantRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "grant ref {}", self.0)
    }
}

/// What the grantee may do with a granted frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Read only (`GTF_readonly`).
    ReadOnly,
    /// Read and write.
    ReadWrite,
}

/// A guest frame number of this domain (guest physical address >> 12).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Gfn(pub u64);

impl Gfn {
    /// The frame that holds `page` (Ferry runs with guest physical = virtual addresses).
    pub fn of(page: &Page) -> Gfn {
        Gfn((page as *const Page as usize / PAGE_SIZE) as u64)
    }
}

/// One page of memory, page-aligned: the unit of granting.
#[derive(Clone, Debug, PartialEq, Eq)]
#[repr(C, align(4096))]
pub struct Page(pub [u8; PAGE_SIZE]);

impl Page {
    /// A page of zeroes.
    pub const fn zeroed() -> Self {
        Page([0; PAGE_SIZE])
    }
}

/// One end of a grant copy, as reported in errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyEnd {
    /// A grant reference of another domain.
    Grant {
        /// The granting domain.
        domain: DomId,
        /// Its reference.
        reference: u32,
        /// Byte offset in the granted frame.
        offset: u16,
    },
    /// A frame of our own.
    Local {
        /// The frame.
        frame: Gfn,
        /// Byte offset in it.
        offset: u16,
    },
}

impl fmt::Display for CopyEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CopyEnd::Grant {
                domain,
                reference,
                offset,
            } => write!(f, "domain {domain} grant ref {reference} offset {offset}"),
            CopyEnd::Local { frame, offset } => {
                write!(f, "own frame {:#x} offset {offset}", frame.0)
            }
        }
    }
}

/// Why a grant operation failed, and whose fault it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrantError {
    /// Xen refused a hypercall as a whole.
    Hypercall(HypercallError),
    /// `GNTTABOP_query_size` returned a bad `GNTST_*` status.
    QuerySize(i16),
    /// The grant table was already mapped: there is only one (our bug).
    AlreadyMapped,
    /// The grant-table region from the device tree cannot hold even one frame (configuration).
    RegionTooSmall {
        /// Its base.
        base: u64,
        /// Its size.
        size: u64,
    },
    /// References 0..8 are reserved for Xen's tools (our bug or configuration).
    Reserved(GrantRef),
    /// The reference is beyond the mapped table (configuration).
    OutOfRange {
        /// The reference.
        reference: GrantRef,
        /// How many entries the table has.
        entries: usize,
    },
    /// The entry already grants something; end it first (our bug).
    AlreadyGranted(GrantRef),
    /// The entry grants nothing (our bug).
    NotGranted(GrantRef),
    /// Every entry is in use.
    TableFull,
    /// The frame number does not fit the 32-bit `frame` of a v1 entry.
    FrameTooLarge(Gfn),
    /// The grantee still has the frame mapped or is copying it (`GTF_reading` /
    /// `GTF_writing` set by Xen): the grant stays, and so must the page.
    InUse {
        /// The reference.
        reference: GrantRef,
        /// The entry's flags as read.
        flags: u16,
    },
    /// A local buffer of a copy crosses a page boundary or is longer than a page (our bug).
    CopyCrossesPage {
        /// The buffer's address.
        address: usize,
        /// Its length.
        len: usize,
    },
    /// The batch is full (our bug: make it bigger or execute it).
    BatchFull,
    /// The grant table frames could not be mapped in our page tables.
    PageTables(crate::paging::MapError),
    /// One copy of a `GNTTABOP_copy` batch failed.
    Copy {
        /// Its index in the batch.
        index: usize,
        /// Where from.
        source: CopyEnd,
        /// Where to.
        dest: CopyEnd,
        /// Xen's `GNTST_*` status.
        status: i16,
    },
}

impl From<HypercallError> for GrantError {
    fn from(error: HypercallError) -> Self {
        GrantError::Hypercall(error)
    }
}

impl fmt::Display for GrantError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GrantError::Hypercall(error) => write!(f, "{error}"),
            GrantError::QuerySize(status) => write!(
                f,
                "GNTTABOP_query_size failed: {} (GNTST {status})",
                gntst::message(*status)
            ),
            GrantError::AlreadyMapped => write!(f, "the grant table is already mapped"),
            GrantError::RegionTooSmall { base, size } => write!(
                f,
                "the grant-table region {base:#x} (+{size:#x}) cannot hold a grant table frame"
            ),
            GrantError::Reserved(reference) => {
                write!(f, "{reference} is reserved (refs 0..8 are Xen's)")
            }
            GrantError::OutOfRange { reference, entries } => {
                write!(
                    f,
                    "{reference} is outside the grant table ({entries} entries)"
                )
            }
            GrantError::AlreadyGranted(reference) => write!(f, "{reference} is already granted"),
            GrantError::NotGranted(reference) => write!(f, "{reference} is not granted"),
            GrantError::TableFull => write!(f, "every grant table entry is in use"),
            GrantError::FrameTooLarge(frame) => {
                write!(f, "frame {:#x} does not fit a v1 grant entry", frame.0)
            }
            GrantError::InUse { reference, flags } => write!(
                f,
                "cannot end {reference}: the grantee is still using it (flags {flags:#x})"
            ),
            GrantError::CopyCrossesPage { address, len } => write!(
                f,
                "copy buffer {address:#x} (+{len:#x}) crosses a page boundary"
            ),
            GrantError::BatchFull => write!(f, "the GNTTABOP_copy batch is full"),
            GrantError::PageTables(error) => {
                write!(f, "cannot map the grant table frames: {error}")
            }
            GrantError::Copy {
                index,
                source,
                dest,
                status,
            } => write!(
                f,
                "GNTTABOP_copy #{index} from {source} to {dest} failed: {} (GNTST {status})",
                gntst::message(*status)
            ),
        }
    }
}

/// Fills a free entry: `domid`, `frame`, a write barrier, then `flags` (grant_table.h).
fn write_entry(entry: &GrantEntryV1, domain: DomId, frame: u32, access: Access) {
    entry.domid.store(domain, Ordering::Relaxed);
    entry.frame.store(frame, Ordering::Relaxed);
    // The grantee (through Xen) must see domid and frame before the flags that validate them.
    fence(Ordering::Release);
    let flags = match access {
        Access::ReadOnly => GTF_PERMIT_ACCESS | GTF_READONLY,
        Access::ReadWrite => GTF_PERMIT_ACCESS,
    };
    entry.flags.store(flags, Ordering::Release);
}

/// Ends an unused grant: fails with the flags if Xen marks it in use (grant_table.h,
/// "Invalidating an unused GTF_permit_access entry").
fn end_entry(entry: &GrantEntryV1) -> Result<(), u16> {
    let mut flags = entry.flags.load(Ordering::Acquire);
    loop {
        if flags & (GTF_READING | GTF_WRITING) != 0 {
            return Err(flags);
        }
        match entry
            .flags
            .compare_exchange(flags, 0, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => return Ok(()),
            Err(now) => flags = now,
        }
    }
}

/// Our grant table: the entries Xen mapped for us, and the operations on them.
///
/// There is one per domain; granting and ending take `&mut self`, so entries are never raced
/// for by two grants.
#[derive(Debug)]
pub struct GrantTable {
    entries: &'static [GrantEntryV1],
}

impl GrantTable {
    /// A table over `entries` (the mapped frames; in tests, any memory).
    pub fn from_entries(entries: &'static [GrantEntryV1]) -> Self {
        Self { entries }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table has no entry at all.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry of `reference`, if it is usable (not reserved, inside the table).
    fn entry(&self, reference: GrantRef) -> Result<&GrantEntryV1, GrantError> {
        if reference.0 < GNTTAB_NR_RESERVED_ENTRIES {
            return Err(GrantError::Reserved(reference));
        }
        self.entries
            .get(reference.0 as usize)
            .ok_or(GrantError::OutOfRange {
                reference,
                entries: self.entries.len(),
            })
    }

    /// Grants `domain` access to our `frame` at `reference` (a reference agreed on in advance,
    /// e.g. from the configuration). The entry must be free.
    pub fn grant_at(
        &mut self,
        reference: GrantRef,
        domain: DomId,
        frame: Gfn,
        access: Access,
    ) -> Result<GrantRef, GrantError> {
        let frame_number = u32::try_from(frame.0).map_err(|_| GrantError::FrameTooLarge(frame))?;
        let entry = self.entry(reference)?;
        if entry.flags.load(Ordering::Acquire) != 0 {
            return Err(GrantError::AlreadyGranted(reference));
        }
        write_entry(entry, domain, frame_number, access);
        Ok(reference)
    }

    /// Grants `domain` access to our `frame` at the first free reference.
    pub fn grant(
        &mut self,
        domain: DomId,
        frame: Gfn,
        access: Access,
    ) -> Result<GrantRef, GrantError> {
        let free = (GNTTAB_NR_RESERVED_ENTRIES as usize..self.entries.len())
            .find(|&index| self.entries[index].flags.load(Ordering::Acquire) == 0)
            .ok_or(GrantError::TableFull)?;
        self.grant_at(GrantRef(free as u32), domain, frame, access)
    }

    /// Whether the grantee is using the grant now (Xen set `GTF_reading` or `GTF_writing`).
    pub fn is_in_use(&self, reference: GrantRef) -> Result<bool, GrantError> {
        let flags = self.entry(reference)?.flags.load(Ordering::Acquire);
        Ok(flags & (GTF_READING | GTF_WRITING) != 0)
    }

    /// Ends the grant at `reference`, unless the grantee is using it: then
    /// [`GrantError::InUse`], and the grant (and the page) must stay.
    pub fn end_access(&mut self, reference: GrantRef) -> Result<(), GrantError> {
        let entry = self.entry(reference)?;
        if entry.flags.load(Ordering::Acquire) == 0 {
            return Err(GrantError::NotGranted(reference));
        }
        end_entry(entry).map_err(|flags| GrantError::InUse { reference, flags })
    }
}

/// Checks that `[address, address + len)` is within one page; returns (frame, offset, len).
fn local_span(address: usize, len: usize) -> Result<(Gfn, u16, u16), GrantError> {
    let offset = address % PAGE_SIZE;
    if len == 0 || offset + len > PAGE_SIZE {
        return Err(GrantError::CopyCrossesPage { address, len });
    }
    Ok((Gfn((address / PAGE_SIZE) as u64), offset as u16, len as u16))
}

/// A batch of up to `N` grant copies, executed with one `GNTTABOP_copy`.
///
/// It borrows every local buffer for `'a`: sources shared, destinations exclusively.
#[derive(Debug)]
pub struct CopyBatch<'a, const N: usize> {
    operations: [GnttabCopy; N],
    count: usize,
    _buffers: PhantomData<&'a mut [u8]>,
}

impl<'a, const N: usize> Default for CopyBatch<'a, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'a, const N: usize> CopyBatch<'a, N> {
    /// An empty batch.
    pub fn new() -> Self {
        Self {
            operations: [GnttabCopy::default(); N],
            count: 0,
            _buffers: PhantomData,
        }
    }

    /// Number of copies in the batch.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The copies as Xen will see them.
    pub fn operations(&self) -> &[GnttabCopy] {
        &self.operations[..self.count]
    }

    fn push(&mut self, operation: GnttabCopy) -> Result<(), GrantError> {
        let slot = self
            .operations
            .get_mut(self.count)
            .ok_or(GrantError::BatchFull)?;
        *slot = operation;
        self.count += 1;
        Ok(())
    }

    /// Adds a copy from `domain`'s grant `reference` at `offset` into all of `dest` (which
    /// must lie within one page of ours).
    pub fn from_grant(
        &mut self,
        domain: DomId,
        reference: u32,
        offset: u16,
        dest: &'a mut [u8],
    ) -> Result<(), GrantError> {
        let (frame, dest_offset, len) = local_span(dest.as_mut_ptr() as usize, dest.len())?;
        if usize::from(offset) + usize::from(len) > PAGE_SIZE {
            return Err(GrantError::CopyCrossesPage {
                address: usize::from(offset),
                len: usize::from(len),
            });
        }
        self.push(GnttabCopy {
            source: GnttabCopyPtr {
                u: u64::from(reference),
                domid: domain,
                offset,
            },
            dest: GnttabCopyPtr {
                u: frame.0,
                domid: DOMID_SELF,
                offset: dest_offset,
            },
            len,
            flags: GNTCOPY_SOURCE_GREF,
            status: 0,
        })
    }

    /// Adds a copy of all of `source` (within one page of ours) into `domain`'s grant
    /// `reference` at `offset`.
    pub fn to_grant(
        &mut self,
        source: &'a [u8],
        domain: DomId,
        reference: u32,
        offset: u16,
    ) -> Result<(), GrantError> {
        let (frame, source_offset, len) = local_span(source.as_ptr() as usize, source.len())?;
        if usize::from(offset) + usize::from(len) > PAGE_SIZE {
            return Err(GrantError::CopyCrossesPage {
                address: usize::from(offset),
                len: usize::from(len),
            });
        }
        self.push(GnttabCopy {
            source: GnttabCopyPtr {
                u: frame.0,
                domid: DOMID_SELF,
                offset: source_offset,
            },
            dest: GnttabCopyPtr {
                u: u64::from(reference),
                domid: domain,
                offset,
            },
            len,
            flags: GNTCOPY_DEST_GREF,
            status: 0,
        })
    }

    /// The first failed copy after Xen went through the batch, as an error.
    pub fn check_statuses(&self) -> Result<(), GrantError> {
        for (index, operation) in self.operations().iter().enumerate() {
            if operation.status != gntst::OKAY {
                return Err(GrantError::Copy {
                    index,
                    source: copy_end(&operation.source, operation.flags & GNTCOPY_SOURCE_GREF),
                    dest: copy_end(&operation.dest, operation.flags & GNTCOPY_DEST_GREF),
                    status: operation.status,
                });
            }
        }
        Ok(())
    }

    /// Executes the batch with one `GNTTABOP_copy` and checks every copy's status.
    #[cfg(all(target_arch = "aarch64", target_os = "none"))]
    pub fn execute(mut self) -> Result<(), GrantError> {
        if self.count == 0 {
            return Ok(());
        }
        for operation in &mut self.operations[..self.count] {
            operation.status = gntst::GENERAL_ERROR;
        }
        // SAFETY: every local destination frame/offset/len in the batch was computed from a
        // `&'a mut [u8]` that the batch holds (PhantomData) until it is dropped, and that lies
        // within one page (`local_span`): Xen writes only bytes that we borrow exclusively.
        let result = unsafe { super::hypercall::gnttab_copy(&mut self.operations[..self.count]) };
        HypercallError::check("GNTTABOP_copy", result)?;
        self.check_statuses()
    }
}

/// Describes one end of a copy for an error message.
fn copy_end(pointer: &GnttabCopyPtr, is_grant: u16) -> CopyEnd {
    if is_grant != 0 {
        CopyEnd::Grant {
            domain: pointer.domid,
            reference: pointer.u as u32,
            offset: pointer.offset,
        }
    } else {
        CopyEnd::Local {
            frame: Gfn(pointer.u),
            offset: pointer.offset,
        }
    }
}

#[cfg(all(target_arch = "aarch64", target_os = "none"))]
mod xen_calls {
    use core::sync::atomic::{AtomicBool, Ordering};

    use super::super::abi::{
        GnttabMapGrantRef, GnttabQuerySize, GnttabUnmapGrantRef, XenAddToPhysmap, GNTMAP_HOST_MAP,
        GRANT_ENTRIES_V1_PER_FRAME, XENMAPSPACE_GRANT_TABLE,
    };
    use super::super::hypercall;
    use super::*;
    use crate::mmu;
    use crate::paging::MemoryKind;
    use crate::platform::Region;

    /// Set when the grant table has been mapped (there is one per domain).
    static MAPPED: AtomicBool = AtomicBool::new(false);

    /// `GNTTABOP_query_size` for this domain: (current frames, maximum frames).
    pub fn query_size() -> Result<(u32, u32), GrantError> {
        let mut argument = GnttabQuerySize {
            dom: DOMID_SELF,
            ..GnttabQuerySize::default()
        };
        HypercallError::check(
            "GNTTABOP_query_size",
            hypercall::gnttab_query_size(&mut argument),
        )?;
        if argument.status != gntst::OKAY {
            return Err(GrantError::QuerySize(argument.status));
        }
        Ok((argument.nr_frames, argument.max_nr_frames))
    }

    /// Grants mapped or unmapped per hypercall.
    const MAP_BATCH: usize = 16;

    /// Maps `domain`'s grant `reference` at our guest frame `frame` for each `(reference,
    /// frame)` of `requests`, read-write (`GNTMAP_host_map`), with one `GNTTABOP_map_grant_ref`
    /// per [`MAP_BATCH`] entries. `results[i]` receives the handle of request `i`, or the
    /// `GNTST_*` status it failed with (e.g. a read-only or foreign grant): a failed entry maps
    /// nothing. Only `min(requests.len(), results.len())` requests are made. The frames are
    /// only in Xen's stage-2 tables: the caller maps them in ours.
    ///
    /// # Safety
    ///
    /// Every frame must be a hole of our address space (no RAM, no device, no Rust object, not
    /// mapped by anything else), and stays owned by the mapping until
    /// [`unmap_grant_refs`] undid it.
    pub unsafe fn map_grant_refs(
        domain: DomId,
        requests: &[(u32, Gfn)],
        results: &mut [Result<u32, i16>],
    ) -> Result<(), GrantError> {
        let count = requests.len().min(results.len());
        for (requests, results) in requests[..count]
            .chunks(MAP_BATCH)
            .zip(results[..count].chunks_mut(MAP_BATCH))
        {
            let mut operations = [GnttabMapGrantRef::default(); MAP_BATCH];
            for (operation, &(reference, frame)) in operations.iter_mut().zip(requests) {
                *operation = GnttabMapGrantRef {
                    host_addr: frame.0 * PAGE_SIZE as u64,
                    flags: GNTMAP_HOST_MAP,
                    r#ref: reference,
                    dom: domain,
                    status: gntst::GENERAL_ERROR,
                    handle: 0,
                    dev_bus_addr: 0,
                };
            }
            let operations = &mut operations[..requests.len()];
            // SAFETY: the caller gives us the frames (holes of our address space); Xen writes
            // only the entries' OUT fields, which `operations` borrows exclusively.
            let result = unsafe { hypercall::gnttab_map_grant_ref(operations) };
            HypercallError::check("GNTTABOP_map_grant_ref", result)?;
            for (result, operation) in results.iter_mut().zip(operations.iter()) {
                *result = if operation.status == gntst::OKAY {
                    Ok(operation.handle)
                } else {
                    Err(operation.status)
                };
            }
        }
        Ok(())
    }

    /// Unmaps grants mapped with [`map_grant_refs`]: `(frame, handle)` each, with one
    /// `GNTTABOP_unmap_grant_ref` per [`MAP_BATCH`] entries. Returns how many Xen refused
    /// (each is logged); those frames stay mapped and must not be reused.
    ///
    /// # Safety
    ///
    /// Nothing may access the frames any more: they become holes again.
    pub unsafe fn unmap_grant_refs(mappings: &[(Gfn, u32)]) -> Result<usize, GrantError> {
        let mut refused = 0;
        for mappings in mappings.chunks(MAP_BATCH) {
            let mut operations = [GnttabUnmapGrantRef::default(); MAP_BATCH];
            for (operation, &(frame, handle)) in operations.iter_mut().zip(mappings) {
                *operation = GnttabUnmapGrantRef {
                    host_addr: frame.0 * PAGE_SIZE as u64,
                    dev_bus_addr: 0,
                    handle,
                    status: gntst::GENERAL_ERROR,
                };
            }
            let operations = &mut operations[..mappings.len()];
            // SAFETY: the caller no longer accesses the frames.
            let result = unsafe { hypercall::gnttab_unmap_grant_ref(operations) };
            HypercallError::check("GNTTABOP_unmap_grant_ref", result)?;
            for operation in operations.iter() {
                if operation.status != gntst::OKAY {
                    refused += 1;
                    log::warn!(
                        "GNTTABOP_unmap_grant_ref of {:#x} (handle {}) failed: {} (GNTST {})",
                        operation.host_addr,
                        operation.handle,
                        gntst::message(operation.status),
                        operation.status
                    );
                }
            }
        }
        Ok(refused)
    }

    impl GrantTable {
        /// Maps our grant table into the grant-table region `[base, base + size)` (from the
        /// `/hypervisor` node): as many frames as Xen has now (at least one), within the
        /// region and Xen's maximum.
        ///
        /// The entries are updated with atomic instructions (as grant_table.h requires), so
        /// the frames must be Normal memory in our page tables (PA = VA): if the runtime has
        /// not mapped the region, this maps the frames as Normal memory; if it has mapped them
        /// as Device memory, this warns (exclusive accesses to Device memory are not
        /// architecturally guaranteed to work).
        pub fn map(base: u64, size: u64) -> Result<GrantTable, GrantError> {
            if MAPPED.load(Ordering::Acquire) {
                return Err(GrantError::AlreadyMapped);
            }
            let (current, maximum) = query_size()?;
            let fit = size / PAGE_SIZE as u64;
            let frames = u64::from(current.max(1)).min(u64::from(maximum)).min(fit);
            if !base.is_multiple_of(PAGE_SIZE as u64) || frames == 0 {
                return Err(GrantError::RegionTooSmall { base, size });
            }
            for frame in 0..frames {
                let argument = XenAddToPhysmap {
                    domid: DOMID_SELF,
                    size: 0,
                    space: XENMAPSPACE_GRANT_TABLE,
                    idx: frame,
                    gpfn: base / PAGE_SIZE as u64 + frame,
                };
                // SAFETY: the target frames are in the grant-table region, which Xen reserves
                // for this purpose in the guest address space (no RAM, no device, no Rust
                // object is there); nothing refers to them before this mapping.
                let result = unsafe { hypercall::add_to_physmap(&argument) };
                HypercallError::check("XENMEM_add_to_physmap(XENMAPSPACE_grant_table)", result)?;
            }
            let region = Region::new(base, frames * PAGE_SIZE as u64);
            match mmu::kind_of(base) {
                None => mmu::map(region, MemoryKind::Normal).map_err(GrantError::PageTables)?,
                Some(MemoryKind::Normal) => {}
                Some(kind) => log::warn!(
                    "grant table {region} is mapped as {kind:?} memory; it needs Normal memory"
                ),
            }
            MAPPED.store(true, Ordering::Release);
            let count = frames as usize * GRANT_ENTRIES_V1_PER_FRAME;
            // SAFETY: `frames` grant table frames are now mapped at `base` (page-aligned,
            // PA = VA), i.e. `count` `struct grant_entry_v1` that live as long as the domain;
            // they are shared only with Xen, and `GrantEntryV1` is made of atomics for that.
            // `MAPPED` makes this the only slice over them.
            let entries =
                unsafe { core::slice::from_raw_parts(base as usize as *const GrantEntryV1, count) };
            Ok(GrantTable::from_entries(entries))
        }
    }
}

#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub use xen_calls::{map_grant_refs, query_size, unmap_grant_refs};

#[cfg(test)]
mod tests {
    use super::*;
    use std::boxed::Box;
    use std::string::ToString;
    use std::vec::Vec;

    fn table(entries: usize) -> GrantTable {
        let entries: Vec<GrantEntryV1> = (0..entries).map(|_| GrantEntryV1::default()).collect();
        GrantTable::from_entries(Box::leak(entries.into_boxed_slice()))
    }

    #[test]
    fn grant_writes_domid_frame_then_flags() {
        let mut grants = table(16);
        let reference = grants
            .grant_at(GrantRef(8), 2, Gfn(0x4_0123), Access::ReadOnly)
            .unwrap();
        let entry = &grants.entries[8];
        assert_eq!(entry.domid.load(Ordering::SeqCst), 2);
        assert_eq!(entry.frame.load(Ordering::SeqCst), 0x4_0123);
        assert_eq!(
            entry.flags.load(Ordering::SeqCst),
            GTF_PERMIT_ACCESS | GTF_READONLY
        );
        assert_eq!(
            grants.grant_at(reference, 2, Gfn(1), Access::ReadWrite),
            Err(GrantError::AlreadyGranted(reference))
        );
        let next = grants.grant(3, Gfn(7), Access::ReadWrite).unwrap();
        assert_eq!(next, GrantRef(9));
        assert_eq!(
            grants.entries[9].flags.load(Ordering::SeqCst),
            GTF_PERMIT_ACCESS
        );
    }

    #[test]
    fn reserved_and_out_of_range_refs_are_refused() {
        let mut grants = table(16);
        assert_eq!(
            grants.grant_at(GrantRef(7), 1, Gfn(1), Access::ReadOnly),
            Err(GrantError::Reserved(GrantRef(7)))
        );
        assert!(matches!(
            grants.grant_at(GrantRef(16), 1, Gfn(1), Access::ReadOnly),
            Err(GrantError::OutOfRange { .. })
        ));
        assert_eq!(
            grants.grant_at(GrantRef(8), 1, Gfn(1 << 32), Access::ReadOnly),
            Err(GrantError::FrameTooLarge(Gfn(1 << 32)))
        );
        let mut full = table(9);
        full.grant(1, Gfn(1), Access::ReadOnly).unwrap();
        assert_eq!(
            full.grant(1, Gfn(2), Access::ReadOnly),
            Err(GrantError::TableFull)
        );
    }

    #[test]
    fn end_access_refuses_while_in_use() {
        let mut grants = table(16);
        let reference = grants.grant(1, Gfn(5), Access::ReadOnly).unwrap();
        // Xen marks the entry while the grantee copies from it.
        grants.entries[8]
            .flags
            .fetch_or(GTF_READING, Ordering::SeqCst);
        assert!(grants.is_in_use(reference).unwrap());
        let error = grants.end_access(reference).unwrap_err();
        assert!(matches!(error, GrantError::InUse { .. }));
        assert!(error.to_string().contains("still using it"));
        grants.entries[8]
            .flags
            .fetch_and(!GTF_READING, Ordering::SeqCst);
        grants.end_access(reference).unwrap();
        assert_eq!(grants.entries[8].flags.load(Ordering::SeqCst), 0);
        assert_eq!(
            grants.end_access(reference),
            Err(GrantError::NotGranted(reference))
        );
    }

    #[test]
    fn copy_batch_encodes_gnttab_copy() {
        let mut page = Box::new(Page::zeroed());
        let address = page.0.as_ptr() as usize;
        let mut batch: CopyBatch<'_, 2> = CopyBatch::new();
        let (first, second) = page.0.split_at_mut(100);
        batch.from_grant(1, 8, 0, first).unwrap();
        batch.from_grant(1, 9, 100, &mut second[..50]).unwrap();
        let operations = batch.operations();
        assert_eq!(operations.len(), 2);
        assert_eq!(operations[0].flags, GNTCOPY_SOURCE_GREF);
        assert_eq!(operations[0].source.u, 8);
        assert_eq!(operations[0].source.domid, 1);
        assert_eq!(operations[0].dest.u, (address / PAGE_SIZE) as u64);
        assert_eq!(operations[0].dest.domid, DOMID_SELF);
        assert_eq!(operations[0].dest.offset, 0);
        assert_eq!(operations[0].len, 100);
        assert_eq!(operations[1].source.offset, 100);
        assert_eq!(operations[1].dest.offset, 100);
        assert_eq!(operations[1].len, 50);
        assert!(batch.check_statuses().is_ok());
    }

    #[test]
    fn copy_batch_refuses_buffers_across_pages_and_overflow() {
        assert!(local_span(4000, 96).is_ok());
        assert_eq!(
            local_span(4000, 97),
            Err(GrantError::CopyCrossesPage {
                address: 4000,
                len: 97
            })
        );
        assert!(local_span(4096, 0).is_err());
        let mut bytes = std::vec![0u8; 8192];
        let (longer_than_a_page, rest) = bytes.split_at_mut(4097);
        let mut batch: CopyBatch<'_, 1> = CopyBatch::new();
        assert!(matches!(
            batch.from_grant(1, 8, 0, longer_than_a_page),
            Err(GrantError::CopyCrossesPage { .. })
        ));
        assert!(matches!(
            batch.from_grant(1, 8, 4090, &mut rest[..10]),
            Err(GrantError::CopyCrossesPage { .. })
        ));
        let mut page = Box::new(Page::zeroed());
        batch.from_grant(1, 8, 0, &mut page.0[..10]).unwrap();
        let source = [0u8; 4];
        assert_eq!(batch.to_grant(&source, 1, 8, 0), Err(GrantError::BatchFull));
    }

    #[test]
    fn failed_copies_name_the_copy_and_status() {
        let mut page = Box::new(Page::zeroed());
        let mut batch: CopyBatch<'_, 1> = CopyBatch::new();
        batch.from_grant(1, 8, 0, &mut page.0).unwrap();
        batch.operations[0].status = gntst::PERMISSION_DENIED;
        let error = batch.check_statuses().unwrap_err();
        assert!(matches!(
            error,
            GrantError::Copy {
                index: 0,
                status: -8,
                ..
            }
        ));
        let text = error.to_string();
        assert!(
            text.starts_with("GNTTABOP_copy #0 from domain 1 grant ref 8 offset 0 to own frame")
        );
        assert!(text.ends_with("failed: permission denied (GNTST -8)"));
    }
}
