//! [`GrantMemory`]: the frontend's memory as the device core sees it, reached through the
//! grants the frontend made to us, with `GNTTABOP_copy`.
//!
//! Every address the frontend writes into registers, rings and descriptors is a *grant
//! address* (Linux's `drivers/xen/grant-dma-ops.c`, Ferry's contract):
//! `addr = (1 << 63) | (gref << 12) | offset_in_page`, and a buffer spanning pages uses
//! consecutive refs, so byte `addr + k` lives in grant `((addr & !(1 << 63)) + k) >> 12` at
//! offset `(addr + k) & 0xfff`. An address without bit 63, with a ref beyond the 32-bit
//! `grant_ref_t`, or whose range wraps is refused before any hypercall ([`MemoryError`]); a ref
//! the frontend did not grant us (or granted read-only, for a write) is refused by Xen in the
//! copy's status, and also becomes a [`MemoryError`] naming the address.
//!
//! A range is split at page boundaries on both sides (the grant's and our buffer's: a
//! `gnttab_copy` may cross neither, xen/include/public/grant_table.h) into at most
//! [`BATCH`] copies per hypercall; an access of up to 64 KiB takes one hypercall.
//!
//! Rings are the exception to copying (docs/transport-mmio-ioreq.md section 8): the transport
//! maps the grant pages that hold an enabled queue's descriptor table, available ring and used
//! ring ([`RingLayout`]) into a window of our address space ([`RingMap`], `GNTTABOP_map_grant_ref`)
//! while the queue is enabled, and unmaps them when the driver stops the queue or resets the
//! device. A piece of an access that lies in a mapped page is served with plain (volatile)
//! loads and stores; everything else, and every page that could not be mapped (a read-only
//! grant, a ref that is not ours, a full window), is copied. Buffers are never mapped.

use ferry_virtio::MemoryError;

use crate::xen::abi::{DomId, PAGE_SIZE};

/// Bit 63: set in every grant address.
pub const GRANT_ADDRESS_BIT: u64 = 1 << 63;

/// Copies per `GNTTABOP_copy` hypercall (40 bytes each on the stack): enough for 64 KiB at
/// any alignment of both sides (16 pages, split at most twice per page).
pub const BATCH: usize = 34;

/// Grant refs are 32 bits: the grant-space offset (address without bit 63) stays below this.
const GRANT_SPACE_END: u64 = 1 << (32 + 12);

/// One copy of a range: a piece of one grant page and one page of our buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    /// The frontend's grant reference.
    pub gref: u32,
    /// Offset in the granted page.
    pub offset: u16,
    /// Offset of the piece in the caller's buffer.
    pub at: usize,
    /// Bytes (1..=4096).
    pub len: u16,
}

/// The pieces of an access of `len` bytes at grant address `addr` into a local buffer at
/// address `local` (our guest physical address = virtual address): checks the address, then
/// splits at every page boundary of either side.
pub fn pieces(
    addr: u64,
    len: usize,
    local: usize,
) -> Result<impl Iterator<Item = Piece>, MemoryError> {
    let refuse = MemoryError::new(addr, len);
    if addr & GRANT_ADDRESS_BIT == 0 {
        return Err(refuse);
    }
    let start = addr & !GRANT_ADDRESS_BIT;
    let end = start
        .checked_add(len as u64)
        .filter(|&end| end <= GRANT_SPACE_END)
        .ok_or(refuse)?;
    local.checked_add(len).ok_or(refuse)?;
    let page = PAGE_SIZE as u64;
    let mut done = 0usize;
    Ok(core::iter::from_fn(move || {
        if done >= len {
            return None;
        }
        let grant_address = start + done as u64;
        debug_assert!(grant_address < end);
        let offset = grant_address % page;
        let local_offset = ((local + done) as u64) % page;
        let step = (len - done) as u64;
        let step = step.min(page - offset).min(page - local_offset);
        let piece = Piece {
            gref: (grant_address / page) as u32,
            offset: offset as u16,
            at: done,
            len: step as u16,
        };
        done += step as usize;
        Some(piece)
    }))
}

/// Pages of the window ring pages are mapped into: one 256-entry queue at any alignment needs
/// at most 6 (descriptor table 4 KiB, available ring 518 bytes, used ring 2054 bytes, each
/// possibly crossing a page), Linux's page-aligned allocations 3.
pub const RING_WINDOW_PAGES: usize = 16;

/// Where one split virtqueue's rings are, as the driver configured them (grant addresses).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingLayout {
    /// The descriptor table.
    pub desc: u64,
    /// The driver area (available ring).
    pub avail: u64,
    /// The device area (used ring).
    pub used: u64,
    /// Entries in the queue.
    pub size: u16,
}

impl RingLayout {
    /// The grant refs of every page the three rings touch (virtio 1.2 section 2.7: 16 bytes
    /// per descriptor; flags, idx, ring, used_event / avail_event), ascending, without
    /// duplicates, at most [`RING_WINDOW_PAGES`] (the rest is served with copies). A ring whose
    /// address is not a valid grant address contributes nothing: its accesses fail as copies
    /// would.
    pub fn grant_pages(&self) -> heapless::Vec<u32, RING_WINDOW_PAGES> {
        let size = u64::from(self.size);
        let rings = [
            (self.desc, 16 * size),
            (self.avail, 6 + 2 * size),
            (self.used, 6 + 8 * size),
        ];
        let mut refs: heapless::Vec<u32, RING_WINDOW_PAGES> = heapless::Vec::new();
        for (addr, len) in rings {
            let Ok(pieces) = pieces(addr, len as usize, 0) else {
                continue;
            };
            for piece in pieces {
                if !refs.contains(&piece.gref) && refs.push(piece.gref).is_err() {
                    break;
                }
            }
        }
        crate::platform::sort_small_by_key(&mut refs, |gref| *gref);
        refs
    }
}

/// One mapped ring page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct MappedPage {
    gref: u32,
    queue: u16,
    handle: u32,
}

/// The window of [`RING_WINDOW_PAGES`] guest frames ring pages are mapped at, and which grant
/// each frame holds now. Only bookkeeping: the hypercalls are made by [`GrantMemory`].
#[derive(Clone, Debug)]
pub struct RingMap {
    base_frame: u64,
    slots: [Option<MappedPage>; RING_WINDOW_PAGES],
}

impl RingMap {
    /// A window starting at our guest frame `base_frame`, nothing mapped.
    pub fn new(base_frame: u64) -> Self {
        RingMap {
            base_frame,
            slots: [None; RING_WINDOW_PAGES],
        }
    }

    /// The window's first guest frame.
    pub fn base_frame(&self) -> u64 {
        self.base_frame
    }

    /// Our guest frame of slot `slot`.
    pub fn frame(&self, slot: usize) -> u64 {
        self.base_frame + slot as u64
    }

    /// Pages mapped now.
    pub fn mapped(&self) -> usize {
        self.slots.iter().flatten().count()
    }

    /// Our address of byte `offset` of grant `gref`, if that grant is mapped.
    pub fn local(&self, gref: u32, offset: u16) -> Option<usize> {
        let slot = self
            .slots
            .iter()
            .position(|slot| slot.is_some_and(|page| page.gref == gref))?;
        Some((self.frame(slot) as usize) * PAGE_SIZE + usize::from(offset))
    }

    /// Our address of the `len` bytes at grant address `addr`, if they lie in one mapped page
    /// (the fast path of ring accesses; anything else goes through [`pieces`]).
    pub fn local_range(&self, addr: u64, len: usize) -> Option<usize> {
        let page = PAGE_SIZE as u64;
        let start = addr & !GRANT_ADDRESS_BIT;
        let offset = start % page;
        let inside = addr & GRANT_ADDRESS_BIT != 0
            && start < GRANT_SPACE_END
            && len > 0
            && offset + len as u64 <= page;
        if !inside {
            return None;
        }
        self.local((start / page) as u32, offset as u16)
    }

    /// For the pages of `refs` that are not mapped yet: (slot, gref) pairs with free slots to
    /// map them at, as many as there are free slots.
    pub fn plan(&self, refs: &[u32]) -> heapless::Vec<(usize, u32), RING_WINDOW_PAGES> {
        let mut free = (0..RING_WINDOW_PAGES).filter(|&slot| self.slots[slot].is_none());
        let mut plan = heapless::Vec::new();
        for &gref in refs {
            if self.local(gref, 0).is_some() {
                continue;
            }
            let Some(slot) = free.next() else {
                break;
            };
            // Cannot fail: one entry per slot.
            let _ = plan.push((slot, gref));
        }
        plan
    }

    /// Records that `gref` is mapped at `slot` for `queue` with `handle`.
    pub fn insert(&mut self, slot: usize, gref: u32, queue: u16, handle: u32) {
        self.slots[slot] = Some(MappedPage {
            gref,
            queue,
            handle,
        });
    }

    /// Forgets the pages mapped for `queue`; returns their (frame, handle) to unmap.
    pub fn remove_queue(&mut self, queue: u16) -> heapless::Vec<(u64, u32), RING_WINDOW_PAGES> {
        let mut removed = heapless::Vec::new();
        for slot in 0..RING_WINDOW_PAGES {
            if let Some(page) = self.slots[slot].filter(|page| page.queue == queue) {
                self.slots[slot] = None;
                // Cannot fail: one entry per slot.
                let _ = removed.push((self.frame(slot), page.handle));
            }
        }
        removed
    }
}

/// The frontend's memory through its grants to us.
#[derive(Debug)]
pub struct GrantMemory {
    frontend: DomId,
    copies: core::cell::Cell<u64>,
    hypercalls: core::cell::Cell<u64>,
    mapped_accesses: core::cell::Cell<u64>,
    rings: Option<RingMap>,
    map_failures: u64,
}

impl GrantMemory {
    /// Memory of domain `frontend`, as granted to us; everything is copied.
    pub fn new(frontend: DomId) -> Self {
        GrantMemory {
            frontend,
            copies: core::cell::Cell::new(0),
            hypercalls: core::cell::Cell::new(0),
            mapped_accesses: core::cell::Cell::new(0),
            rings: None,
            map_failures: 0,
        }
    }

    /// Accesses (pieces of them) served through mapped ring pages so far.
    pub fn mapped_accesses(&self) -> u64 {
        self.mapped_accesses.get()
    }

    /// Ring pages that could not be mapped so far (served with copies instead).
    pub fn map_failures(&self) -> u64 {
        self.map_failures
    }

    /// Ring pages mapped now.
    pub fn mapped_pages(&self) -> usize {
        self.rings.as_ref().map_or(0, RingMap::mapped)
    }

    /// The frontend domain.
    pub fn frontend(&self) -> DomId {
        self.frontend
    }

    /// Grant copies made so far.
    pub fn copies(&self) -> u64 {
        self.copies.get()
    }

    /// `GNTTABOP_copy` hypercalls made so far.
    pub fn hypercalls(&self) -> u64 {
        self.hypercalls.get()
    }
}

#[cfg(all(target_arch = "aarch64", target_os = "none"))]
mod xen_calls {
    use ferry_virtio::GuestMemory;
    use heapless::Vec;

    use super::*;
    use crate::mmu;
    use crate::paging::MemoryKind;
    use crate::platform::Region;
    use crate::xen::grant::{self, CopyBatch, Gfn, GrantError};

    impl GrantMemory {
        /// Memory of domain `frontend`, with ring pages mapped in the [`RING_WINDOW_PAGES`]
        /// guest frames from `window_frame` (a hole of our address space: no RAM, device or
        /// Xen page there, and nothing else will use it). The window is mapped Normal
        /// write-back in our page tables now (as the frontend maps its RAM; frames without a
        /// grant behind them are never touched). If that fails, everything is copied.
        ///
        /// # Safety
        ///
        /// The window must be such a hole, for as long as the `GrantMemory` lives.
        pub unsafe fn with_ring_window(frontend: DomId, window_frame: u64) -> Self {
            let mut memory = GrantMemory::new(frontend);
            let window = Region::new(
                window_frame * PAGE_SIZE as u64,
                (RING_WINDOW_PAGES * PAGE_SIZE) as u64,
            );
            match mmu::kind_of(window.base) {
                None => match mmu::map(window, MemoryKind::Normal) {
                    Ok(()) => memory.rings = Some(RingMap::new(window_frame)),
                    Err(error) => log::warn!("ring window {window}: {error}; rings are copied"),
                },
                Some(kind) => {
                    log::warn!(
                        "ring window {window} is already mapped ({kind:?}); rings are copied"
                    )
                }
            }
            memory
        }

        /// Maps the pages of `layout` (queue `queue`'s rings) that are not mapped yet, as far
        /// as the window has room. Pages Xen refuses to map (read-only or foreign grants, bad
        /// refs) are counted and left to copies: never an error.
        pub fn map_rings(&mut self, queue: u16, layout: &RingLayout) {
            let Some(rings) = self.rings.as_mut() else {
                return;
            };
            let plan = rings.plan(&layout.grant_pages());
            if plan.is_empty() {
                return;
            }
            let requests: Vec<(u32, Gfn), RING_WINDOW_PAGES> = plan
                .iter()
                .map(|&(slot, gref)| (gref, Gfn(rings.frame(slot))))
                .collect();
            let mut results: Vec<Result<u32, i16>, RING_WINDOW_PAGES> =
                plan.iter().map(|_| Err(0)).collect();
            // SAFETY: the window's frames are a hole of our address space reserved for this
            // (contract of `with_ring_window`), and `plan` only names free slots; a slot is
            // reused only after `unmap_rings` unmapped it.
            let mapped = unsafe { grant::map_grant_refs(self.frontend, &requests, &mut results) };
            if let Err(error) = mapped {
                log::warn!("ring pages of queue {queue} of d{}: {error}", self.frontend);
                self.map_failures += plan.len() as u64;
                return;
            }
            for (&(slot, gref), result) in plan.iter().zip(&results) {
                match *result {
                    Ok(handle) => rings.insert(slot, gref, queue, handle),
                    Err(status) => {
                        self.map_failures += 1;
                        log::debug!(
                            "ring page gref {gref} of d{} not mapped (GNTST {status}); copied",
                            self.frontend
                        );
                    }
                }
            }
        }

        /// Unmaps the pages mapped for queue `queue` (the driver stopped it or reset the
        /// device). Must happen before the access that stopped it is answered: the frontend
        /// may end its grants right after.
        pub fn unmap_rings(&mut self, queue: u16) {
            let Some(rings) = self.rings.as_mut() else {
                return;
            };
            let removed = rings.remove_queue(queue);
            if removed.is_empty() {
                return;
            }
            let mappings: Vec<(Gfn, u32), RING_WINDOW_PAGES> = removed
                .iter()
                .map(|&(frame, handle)| (Gfn(frame), handle))
                .collect();
            // SAFETY: the slots were just removed from the map, so no access goes to these
            // frames any more (`&mut self`: no access is in progress either).
            match unsafe { grant::unmap_grant_refs(&mappings) } {
                Ok(0) => {}
                Ok(refused) => {
                    // Those frames may still hold the grant: never reuse the window.
                    log::warn!("{refused} ring page(s) of d{} stay mapped", self.frontend);
                    self.rings = None;
                }
                Err(error) => {
                    log::warn!("unmapping ring pages of d{}: {error}", self.frontend);
                    self.rings = None;
                }
            }
        }

        /// Our address of grant `gref` at `offset` if it is mapped.
        fn mapped(&self, piece: &Piece) -> Option<usize> {
            self.rings.as_ref()?.local(piece.gref, piece.offset)
        }

        /// Counts a batch of `copies`, executes it and maps a failure onto the address of the
        /// failed copy (`pieces[index]`) at grant address `addr`.
        fn run<const N: usize>(
            &self,
            batch: CopyBatch<'_, N>,
            chunk: &[Piece],
            addr: u64,
        ) -> Result<(), MemoryError> {
            if batch.is_empty() {
                return Ok(());
            }
            self.copies.set(self.copies.get() + batch.len() as u64);
            self.hypercalls.set(self.hypercalls.get() + 1);
            batch.execute().map_err(|error| {
                let failed = match error {
                    GrantError::Copy { index, .. } => chunk.get(index).copied(),
                    _ => None,
                };
                log::debug!("grant copy for d{} at {addr:#x}: {error}", self.frontend);
                match failed {
                    Some(piece) => MemoryError::new(addr + piece.at as u64, usize::from(piece.len)),
                    None => {
                        let len = chunk.iter().map(|piece| usize::from(piece.len)).sum();
                        MemoryError::new(addr + chunk.first().map_or(0, |p| p.at as u64), len)
                    }
                }
            })
        }
    }

    /// Splits `pieces` into chunks of at most `N`.
    fn chunks<const N: usize>(
        mut pieces: impl Iterator<Item = Piece>,
    ) -> impl Iterator<Item = Vec<Piece, N>> {
        core::iter::from_fn(move || {
            let mut chunk = Vec::new();
            for piece in pieces.by_ref() {
                // Cannot fail: the loop stops when the chunk is full.
                let _ = chunk.push(piece);
                if chunk.is_full() {
                    break;
                }
            }
            (!chunk.is_empty()).then_some(chunk)
        })
    }

    /// The widest access (8, 4, 2 or 1 bytes) that `address` is aligned for and `left` allows:
    /// aligned accesses of up to 8 bytes are single-copy atomic on aarch64, so a ring index
    /// is never seen half-written.
    fn width(address: usize, left: usize) -> usize {
        [8, 4, 2]
            .into_iter()
            .find(|&width| left >= width && address.is_multiple_of(width))
            .unwrap_or(1)
    }

    /// Reads `dest.len()` bytes of a mapped ring page at `source`.
    ///
    /// # Safety
    ///
    /// `source .. source + dest.len()` must lie in one page of the ring window that holds a
    /// mapped grant.
    unsafe fn read_mapped(source: usize, dest: &mut [u8]) {
        let mut done = 0;
        while done < dest.len() {
            let at = source + done;
            let width = width(at, dest.len() - done);
            // SAFETY: `at .. at + width` is inside the mapped page (caller) and aligned for the
            // type. The frontend writes the page concurrently, so the access is volatile and
            // goes through no Rust reference; ordering against other ring accesses comes from
            // the queue code's fences (`dmb`), which the compiler does not move volatile
            // accesses across.
            let bytes: [u8; 8] = unsafe {
                match width {
                    8 => (at as *const u64).read_volatile().to_le_bytes(),
                    4 => u64::from((at as *const u32).read_volatile()).to_le_bytes(),
                    2 => u64::from((at as *const u16).read_volatile()).to_le_bytes(),
                    _ => u64::from((at as *const u8).read_volatile()).to_le_bytes(),
                }
            };
            dest[done..done + width].copy_from_slice(&bytes[..width]);
            done += width;
        }
    }

    /// Writes `source` into a mapped ring page at `dest`.
    ///
    /// # Safety
    ///
    /// `dest .. dest + source.len()` must lie in one page of the ring window that holds a
    /// grant mapped read-write.
    unsafe fn write_mapped(dest: usize, source: &[u8]) {
        let mut done = 0;
        while done < source.len() {
            let at = dest + done;
            let width = width(at, source.len() - done);
            let mut bytes = [0u8; 8];
            bytes[..width].copy_from_slice(&source[done..done + width]);
            let value = u64::from_le_bytes(bytes);
            // SAFETY: as in `read_mapped`; the grant is mapped writable (`GNTMAP_host_map`
            // without `GNTMAP_readonly`), so the store cannot fault.
            unsafe {
                match width {
                    8 => (at as *mut u64).write_volatile(value),
                    4 => (at as *mut u32).write_volatile(value as u32),
                    2 => (at as *mut u16).write_volatile(value as u16),
                    _ => (at as *mut u8).write_volatile(value as u8),
                }
            }
            done += width;
        }
    }

    /// Copies per hypercall for accesses of at most a page: split at most twice (a grant
    /// page boundary and a boundary of our buffer), so one small batch, cheap to build.
    const SMALL_BATCH: usize = 3;

    impl GrantMemory {
        /// Our address of the `len` bytes at `addr` if they lie in one mapped ring page.
        fn mapped_range(&self, addr: u64, len: usize) -> Option<usize> {
            let local = self.rings.as_ref()?.local_range(addr, len)?;
            self.mapped_accesses.set(self.mapped_accesses.get() + 1);
            Some(local)
        }

        /// [`GuestMemory::read`] with batches of `N` copies.
        fn read_with<const N: usize>(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
            let all = pieces(addr, buf.len(), buf.as_ptr() as usize)?;
            let mut rest = buf;
            for chunk in chunks::<N>(all) {
                let mut batch: CopyBatch<'_, N> = CopyBatch::new();
                for piece in &chunk {
                    let (this, tail) = core::mem::take(&mut rest).split_at_mut(piece.len.into());
                    rest = tail;
                    if let Some(local) = self.mapped(piece) {
                        self.mapped_accesses.set(self.mapped_accesses.get() + 1);
                        // SAFETY: `local` is where the mapped grant page holds the piece, which
                        // lies within that page (`pieces` splits at grant page boundaries).
                        unsafe { read_mapped(local, this) };
                        continue;
                    }
                    batch
                        .from_grant(self.frontend, piece.gref, piece.offset, this)
                        .map_err(|_| MemoryError::new(addr + piece.at as u64, this_len(piece)))?;
                }
                self.run(batch, &chunk, addr)?;
            }
            Ok(())
        }

        /// [`GuestMemory::write`] with batches of `N` copies.
        fn write_with<const N: usize>(&self, addr: u64, data: &[u8]) -> Result<(), MemoryError> {
            let all = pieces(addr, data.len(), data.as_ptr() as usize)?;
            let mut rest = data;
            for chunk in chunks::<N>(all) {
                let mut batch: CopyBatch<'_, N> = CopyBatch::new();
                for piece in &chunk {
                    let (this, tail) = rest.split_at(piece.len.into());
                    rest = tail;
                    if let Some(local) = self.mapped(piece) {
                        self.mapped_accesses.set(self.mapped_accesses.get() + 1);
                        // SAFETY: as in `read_with`; ring pages are mapped read-write.
                        unsafe { write_mapped(local, this) };
                        continue;
                    }
                    batch
                        .to_grant(this, self.frontend, piece.gref, piece.offset)
                        .map_err(|_| MemoryError::new(addr + piece.at as u64, this_len(piece)))?;
                }
                self.run(batch, &chunk, addr)?;
            }
            Ok(())
        }
    }

    impl GuestMemory for GrantMemory {
        fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
            if let Some(local) = self.mapped_range(addr, buf.len()) {
                // SAFETY: `mapped_range` found all of the range in one mapped ring page.
                unsafe { read_mapped(local, buf) };
                return Ok(());
            }
            if buf.len() <= PAGE_SIZE {
                self.read_with::<SMALL_BATCH>(addr, buf)
            } else {
                self.read_with::<BATCH>(addr, buf)
            }
        }

        fn write(&self, addr: u64, data: &[u8]) -> Result<(), MemoryError> {
            if let Some(local) = self.mapped_range(addr, data.len()) {
                // SAFETY: `mapped_range` found all of the range in one mapped ring page, which
                // is mapped read-write.
                unsafe { write_mapped(local, data) };
                return Ok(());
            }
            if data.len() <= PAGE_SIZE {
                self.write_with::<SMALL_BATCH>(addr, data)
            } else {
                self.write_with::<BATCH>(addr, data)
            }
        }
    }

    fn this_len(piece: &Piece) -> usize {
        usize::from(piece.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    const G: u64 = GRANT_ADDRESS_BIT;

    fn split(addr: u64, len: usize, local: usize) -> Vec<Piece> {
        pieces(addr, len, local).unwrap().collect()
    }

    #[test]
    fn addresses_without_bit_63_are_refused() {
        assert_eq!(
            pieces(0x8000, 16, 0).err(),
            Some(MemoryError::new(0x8000, 16))
        );
    }

    #[test]
    fn refs_beyond_32_bits_and_wrapping_ranges_are_refused() {
        assert!(pieces(G | (1 << 44), 1, 0).is_err());
        assert!(pieces(G | ((1 << 44) - 1), 2, 0).is_err());
        assert!(pieces(G | ((1 << 44) - 1), 1, 0).is_ok());
        assert!(pieces(G, 16, usize::MAX - 4).is_err());
    }

    #[test]
    fn an_aligned_page_is_one_copy() {
        assert_eq!(
            split(G | (8 << 12), 4096, 0x10_0000),
            [Piece {
                gref: 8,
                offset: 0,
                at: 0,
                len: 4096
            }]
        );
    }

    #[test]
    fn ranges_continue_at_the_next_ref_and_split_on_both_sides() {
        // Grant side: starts at offset 0xff0 of ref 9; local side: buffer at page offset 0x8.
        let pieces = split(G | (9 << 12) | 0xff0, 0x30, 0x2000_0008);
        assert_eq!(
            pieces,
            [
                Piece {
                    gref: 9,
                    offset: 0xff0,
                    at: 0,
                    len: 0x10
                },
                Piece {
                    gref: 10,
                    offset: 0,
                    at: 0x10,
                    len: 0x20
                },
            ]
        );
        // The local buffer crosses a page where the grant does not.
        let pieces = split(G | (9 << 12), 0x20, 0x2000_0ff0);
        assert_eq!(pieces.len(), 2);
        assert_eq!(
            (pieces[0].gref, pieces[0].offset, pieces[0].len),
            (9, 0, 0x10)
        );
        assert_eq!(
            (pieces[1].gref, pieces[1].offset, pieces[1].at),
            (9, 0x10, 0x10)
        );
    }

    #[test]
    fn sixty_four_kib_fits_one_batch_at_any_alignment() {
        for (grant_offset, local_offset) in [(0, 0), (1, 0), (0, 1), (0x7ff, 0x801), (0xfff, 1)] {
            let pieces = split(
                G | (8 << 12) | grant_offset,
                64 * 1024,
                0x4000_0000 + local_offset,
            );
            assert!(pieces.len() <= BATCH, "{} pieces", pieces.len());
            let total: usize = pieces.iter().map(|p| usize::from(p.len)).sum();
            assert_eq!(total, 64 * 1024);
            for piece in &pieces {
                assert!(usize::from(piece.offset) + usize::from(piece.len) <= 4096);
                let local = 0x4000_0000 + local_offset + piece.at;
                assert!(local % 4096 + usize::from(piece.len) <= 4096);
            }
        }
    }

    #[test]
    fn ring_pages_cover_all_three_rings_once() {
        // virtio-drivers' modern layout, 16 entries: descriptor table + available ring in one
        // granted page (refs 8), used ring in another (ref 9).
        let layout = RingLayout {
            desc: G | (8 << 12),
            avail: G | (8 << 12) | 0x100,
            used: G | (9 << 12),
            size: 16,
        };
        assert_eq!(layout.grant_pages().as_slice(), &[8, 9]);
        // 256 entries, unaligned: the descriptor table spans two pages, the used ring too.
        let layout = RingLayout {
            desc: G | (20 << 12) | 0x800,
            avail: G | (30 << 12) | 0xf00,
            used: G | (12 << 12) | 0xc00,
            size: 256,
        };
        assert_eq!(layout.grant_pages().as_slice(), &[12, 13, 20, 21, 30, 31]);
        // Addresses that are not grant addresses contribute nothing.
        let layout = RingLayout {
            desc: 0x4000_0000,
            avail: G | (8 << 12),
            used: G | ((1 << 44) - 1),
            size: 16,
        };
        assert_eq!(layout.grant_pages().as_slice(), &[8]);
        // A huge hostile queue is capped at the window.
        let layout = RingLayout {
            desc: G | (100 << 12),
            avail: G | (200 << 12),
            used: G | (300 << 12),
            size: 32768,
        };
        assert_eq!(layout.grant_pages().len(), RING_WINDOW_PAGES);
    }

    #[test]
    fn the_ring_map_assigns_free_slots_and_forgets_by_queue() {
        let mut map = RingMap::new(0x40001);
        assert_eq!(map.local(8, 0), None);
        let plan = map.plan(&[8, 9]);
        assert_eq!(plan.as_slice(), &[(0, 8), (1, 9)]);
        map.insert(0, 8, 0, 100);
        map.insert(1, 9, 0, 101);
        assert_eq!(map.local(8, 0x10), Some(0x4000_1010));
        assert_eq!(map.local(9, 2), Some(0x4000_2002));
        // Queue 1 shares page 9 (a hostile layout): only page 10 is new.
        let plan = map.plan(&[9, 10]);
        assert_eq!(plan.as_slice(), &[(2, 10)]);
        map.insert(2, 10, 1, 102);
        assert_eq!(map.mapped(), 3);
        let removed = map.remove_queue(0);
        assert_eq!(removed.as_slice(), &[(0x40001, 100), (0x40002, 101)]);
        assert_eq!(map.local(8, 0), None);
        assert_eq!(map.local(10, 0), Some(0x4000_3000));
        // Freed slots are reused first.
        assert_eq!(map.plan(&[11]).as_slice(), &[(0, 11)]);
        assert!(map.remove_queue(7).is_empty());
    }

    #[test]
    fn whole_accesses_inside_a_mapped_page_take_the_fast_path() {
        let mut map = RingMap::new(0x40001);
        map.insert(0, 8, 0, 1);
        map.insert(1, 9, 0, 2);
        assert_eq!(map.local_range(G | (8 << 12) | 2, 2), Some(0x4000_1002));
        assert_eq!(map.local_range(G | (9 << 12) | 0xff8, 8), Some(0x4000_2ff8));
        // Crossing into the next page, even a mapped one, is left to the piece path.
        assert_eq!(map.local_range(G | (8 << 12) | 0xffc, 8), None);
        // Not a grant address, empty, unmapped, beyond the 32-bit refs.
        assert_eq!(map.local_range((8 << 12) | 2, 2), None);
        assert_eq!(map.local_range(G | (8 << 12), 0), None);
        assert_eq!(map.local_range(G | (10 << 12), 2), None);
        assert_eq!(map.local_range(G | (1 << 44) | (8 << 12), 2), None);
    }

    #[test]
    fn a_full_window_maps_what_fits() {
        let map = RingMap::new(0x100);
        let refs: Vec<u32> = (8..8 + RING_WINDOW_PAGES as u32 + 4).collect();
        assert_eq!(map.plan(&refs).len(), RING_WINDOW_PAGES);
    }

    #[test]
    fn empty_accesses_need_no_copy() {
        assert_eq!(split(G | (8 << 12), 0, 0), []);
    }
}
