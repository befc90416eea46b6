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
//! This module must never map frontend memory; it only copies.

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

/// The frontend's memory through its grants to us.
#[derive(Debug)]
pub struct GrantMemory {
    frontend: DomId,
    copies: core::cell::Cell<u64>,
    hypercalls: core::cell::Cell<u64>,
}

impl GrantMemory {
    /// Memory of domain `frontend`, as granted to us.
    pub fn new(frontend: DomId) -> Self {
        GrantMemory {
            frontend,
            copies: core::cell::Cell::new(0),
            hypercalls: core::cell::Cell::new(0),
        }
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
    use crate::xen::grant::{CopyBatch, GrantError};

    impl GrantMemory {
        /// Counts a batch of `copies`, executes it and maps a failure onto the address of the
        /// failed copy (`pieces[index]`) at grant address `addr`.
        fn run(
            &self,
            batch: CopyBatch<'_, BATCH>,
            chunk: &[Piece],
            addr: u64,
        ) -> Result<(), MemoryError> {
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

    /// Splits `pieces` into chunks of at most [`BATCH`].
    fn chunks(mut pieces: impl Iterator<Item = Piece>) -> impl Iterator<Item = Vec<Piece, BATCH>> {
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

    impl GuestMemory for GrantMemory {
        fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
            let all = pieces(addr, buf.len(), buf.as_ptr() as usize)?;
            let mut rest = buf;
            for chunk in chunks(all) {
                let mut batch: CopyBatch<'_, BATCH> = CopyBatch::new();
                for piece in &chunk {
                    let (this, tail) = core::mem::take(&mut rest).split_at_mut(piece.len.into());
                    rest = tail;
                    batch
                        .from_grant(self.frontend, piece.gref, piece.offset, this)
                        .map_err(|_| MemoryError::new(addr + piece.at as u64, this_len(piece)))?;
                }
                self.run(batch, &chunk, addr)?;
            }
            Ok(())
        }

        fn write(&self, addr: u64, data: &[u8]) -> Result<(), MemoryError> {
            let all = pieces(addr, data.len(), data.as_ptr() as usize)?;
            let mut rest = data;
            for chunk in chunks(all) {
                let mut batch: CopyBatch<'_, BATCH> = CopyBatch::new();
                for piece in &chunk {
                    let (this, tail) = rest.split_at(piece.len.into());
                    rest = tail;
                    batch
                        .to_grant(this, self.frontend, piece.gref, piece.offset)
                        .map_err(|_| MemoryError::new(addr + piece.at as u64, this_len(piece)))?;
                }
                self.run(batch, &chunk, addr)?;
            }
            Ok(())
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
    fn empty_accesses_need_no_copy() {
        assert_eq!(split(G | (8 << 12), 0, 0), []);
    }
}
