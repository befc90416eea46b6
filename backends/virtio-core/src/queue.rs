//! The split virtqueue, device side (spec 2.7).
//!
//! A [`Queue`] holds what the transport configured (size, ring addresses) and the device's
//! private indices. [`Queue::pop`] takes the next available descriptor chain, validates it
//! completely (bounds, loops, length caps, indirect tables, readable-before-writable order) and
//! hands it out as a [`DescriptorChain`] of plain [`Descriptor`]s; [`Queue::add_used`] returns it.
//! Descriptor tables are copied out of frontend memory before they are checked, so the frontend
//! cannot change what was validated.
//!
//! Layout (spec 2.7.5, 2.7.6, 2.7.8):
//! - descriptor table: `size` x { addr: u64, len: u32, flags: u16, next: u16 }
//! - available ring: { flags: u16, idx: u16, ring: [u16; size], used_event: u16 }
//! - used ring: { flags: u16, idx: u16, ring: [{ id: u32, len: u32 }; size], avail_event: u16 }

use alloc::vec::Vec;
use core::sync::atomic::{fence, Ordering};

use crate::features::{VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC};
use crate::memory::{GuestMemory, MemoryError};
use crate::Blame;

/// Largest queue size a device offers (spec 2.7: at most 32768; we keep rings small).
pub const MAX_QUEUE_SIZE: u16 = 1024;
/// Most descriptors one chain may have, counting indirect entries. Longer chains are refused.
pub const MAX_CHAIN_LEN: usize = 512;

const DESC_SIZE: u64 = 16;
const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;
const DESC_F_INDIRECT: u16 = 4;
/// avail.flags: the driver asks not to be interrupted (spec 2.7.7).
const AVAIL_F_NO_INTERRUPT: u16 = 1;
/// used.flags: the device asks not to be notified (spec 2.7.10).
const USED_F_NO_NOTIFY: u16 = 1;

/// One validated buffer of a chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Descriptor {
    /// Frontend address of the buffer (may be a grant address; never dereferenced directly).
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// True if the device may write it (and must not read it).
    pub writable: bool,
}

/// A validated descriptor chain: readable descriptors first, then writable ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DescriptorChain {
    head: u16,
    descriptors: Vec<Descriptor>,
    readable_len: u32,
    writable_len: u32,
}

impl DescriptorChain {
    /// The head index, which identifies the chain in the used ring.
    pub fn head(&self) -> u16 {
        self.head
    }
    /// All descriptors in chain order.
    pub fn descriptors(&self) -> &[Descriptor] {
        &self.descriptors
    }
    /// Total bytes the device may read.
    pub fn readable_len(&self) -> u32 {
        self.readable_len
    }
    /// Total bytes the device may write.
    pub fn writable_len(&self) -> u32 {
        self.writable_len
    }
    /// A cursor over the readable bytes.
    pub fn reader(&self) -> ChainReader<'_> {
        let split = self.descriptors.iter().take_while(|d| !d.writable).count();
        ChainReader {
            cursor: Cursor::new(&self.descriptors[..split], 0, self.readable_len),
        }
    }
    /// A cursor over writable bytes `start .. start + len` (clamped to the writable area).
    pub fn writer(&self, start: u32, len: u32) -> ChainWriter<'_> {
        let split = self.descriptors.iter().take_while(|d| !d.writable).count();
        let start = start.min(self.writable_len);
        let len = len.min(self.writable_len - start);
        ChainWriter {
            cursor: Cursor::new(&self.descriptors[split..], start, len),
            written: 0,
        }
    }
}

/// Position within a list of descriptors, limited to a byte window.
#[derive(Clone, Debug)]
struct Cursor<'c> {
    descriptors: &'c [Descriptor],
    index: usize,
    offset: u32,
    remaining: u32,
}

impl<'c> Cursor<'c> {
    fn new(descriptors: &'c [Descriptor], mut skip: u32, remaining: u32) -> Self {
        let mut index = 0;
        while index < descriptors.len() && skip >= descriptors[index].len {
            skip -= descriptors[index].len;
            index += 1;
        }
        Cursor {
            descriptors,
            index,
            offset: skip,
            remaining,
        }
    }

    /// The next contiguous piece of at most `max` bytes, advancing past it.
    fn next_piece(&mut self, max: usize) -> Option<(u64, usize)> {
        while self.remaining > 0 && self.index < self.descriptors.len() {
            let d = self.descriptors[self.index];
            let left = d.len - self.offset;
            if left == 0 {
                self.index += 1;
                self.offset = 0;
                continue;
            }
            let n = (left.min(self.remaining) as usize).min(max);
            if n == 0 {
                return None;
            }
            let addr = d.addr + u64::from(self.offset);
            self.offset += n as u32;
            self.remaining -= n as u32;
            return Some((addr, n));
        }
        None
    }
}

/// Reads the readable part of a chain in order, across descriptor boundaries.
#[derive(Clone, Debug)]
pub struct ChainReader<'c> {
    cursor: Cursor<'c>,
}

impl ChainReader<'_> {
    /// Bytes not yet read.
    pub fn remaining(&self) -> u32 {
        self.cursor.remaining
    }
    /// Fills `buf` completely, or fails with [`ReadError::Short`] if the chain has fewer bytes left.
    pub fn read_exact<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        buf: &mut [u8],
    ) -> Result<(), ReadError> {
        if (self.remaining() as usize) < buf.len() {
            return Err(ReadError::Short {
                wanted: buf.len(),
                available: self.remaining(),
            });
        }
        let mut done = 0;
        while done < buf.len() {
            let (addr, n) = self
                .cursor
                .next_piece(buf.len() - done)
                .ok_or(ReadError::Short {
                    wanted: buf.len(),
                    available: done as u32,
                })?;
            mem.read(addr, &mut buf[done..done + n])
                .map_err(ReadError::Memory)?;
            done += n;
        }
        Ok(())
    }
}

/// Why a read from a chain failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadError {
    /// The chain holds fewer readable bytes than the request format needs.
    Short {
        /// Bytes wanted.
        wanted: usize,
        /// Bytes that were left.
        available: u32,
    },
    /// A descriptor named memory the device cannot reach.
    Memory(MemoryError),
}

/// Writes into a window of the writable part of a chain, in order.
#[derive(Clone, Debug)]
pub struct ChainWriter<'c> {
    cursor: Cursor<'c>,
    written: u32,
}

impl ChainWriter<'_> {
    /// Bytes that still fit.
    pub fn remaining(&self) -> u32 {
        self.cursor.remaining
    }
    /// Bytes written so far.
    pub fn written(&self) -> u32 {
        self.written
    }
    /// Writes all of `data`; fails without writing past the window if it does not fit.
    pub fn write_all<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        data: &[u8],
    ) -> Result<(), ReadError> {
        if (self.remaining() as usize) < data.len() {
            return Err(ReadError::Short {
                wanted: data.len(),
                available: self.remaining(),
            });
        }
        let mut done = 0;
        while done < data.len() {
            let (addr, n) = self
                .cursor
                .next_piece(data.len() - done)
                .ok_or(ReadError::Short {
                    wanted: data.len(),
                    available: done as u32,
                })?;
            mem.write(addr, &data[done..done + n])
                .map_err(ReadError::Memory)?;
            done += n;
            self.written += n as u32;
        }
        Ok(())
    }
}

/// A malformed descriptor chain. The chain is returned to the frontend unused (length 0) and the
/// queue keeps working.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainError {
    /// A `next` field points outside the descriptor table.
    NextOutOfRange {
        /// The offending index.
        next: u16,
    },
    /// Following `next` revisits a descriptor.
    Loop,
    /// The chain has more than [`MAX_CHAIN_LEN`] descriptors.
    TooLong,
    /// A device-readable descriptor follows a device-writable one (spec 2.7.4.2).
    ReadableAfterWritable,
    /// An indirect descriptor although VIRTIO_F_INDIRECT_DESC was not negotiated.
    IndirectNotNegotiated,
    /// An indirect descriptor that also has NEXT set (spec 2.7.5.3.1).
    IndirectWithNext,
    /// An indirect descriptor inside an indirect table (spec 2.7.5.3.1).
    NestedIndirect,
    /// An indirect table whose length is zero or not a multiple of 16 bytes.
    IndirectTableLength {
        /// The length given.
        len: u32,
    },
    /// The indirect table itself lies in memory the device cannot reach.
    IndirectTableMemory(MemoryError),
    /// A buffer whose address + length wraps around the address space.
    AddressOverflow {
        /// Buffer address.
        addr: u64,
        /// Buffer length.
        len: u32,
    },
    /// The readable or writable total exceeds 4 GiB.
    TotalLengthOverflow,
}

/// An error of the queue as a whole, found while taking a chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueError {
    /// The ring memory itself could not be reached. Fatal: the device needs a reset.
    Ring(MemoryError),
    /// The avail index moved by more than the queue size (spec 2.7.6: the driver cannot have
    /// made more than `size` buffers available). Fatal: treated as a malicious driver.
    AvailIndexJump {
        /// The avail index the frontend wrote.
        avail_idx: u16,
        /// The device's next expected index.
        next_avail: u16,
    },
    /// The avail ring names a head outside the descriptor table. Fatal.
    HeadOutOfRange {
        /// The head index read.
        head: u16,
    },
    /// One chain was malformed; it was returned unused and the queue goes on.
    Chain {
        /// Head of the bad chain.
        head: u16,
        /// What was wrong with it.
        error: ChainError,
    },
    /// The queue was used before it was configured and enabled.
    NotReady,
}

impl QueueError {
    /// True if the queue cannot continue and the device must be marked NEEDS_RESET.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, QueueError::Chain { .. } | QueueError::NotReady)
    }
    /// Whose fault the error is.
    pub fn blame(&self) -> Blame {
        Blame::Frontend
    }
}

impl From<MemoryError> for QueueError {
    fn from(e: MemoryError) -> Self {
        QueueError::Ring(e)
    }
}

/// A queue setting the transport refused when the driver enabled the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueConfigError {
    /// Size zero, above the maximum, or not a power of two.
    BadSize(u16),
    /// A ring address that is not aligned as spec 2.7 requires.
    Misaligned(u64),
}

/// One split virtqueue as the device sees it.
#[derive(Clone, Debug)]
pub struct Queue {
    max_size: u16,
    size: u16,
    ready: bool,
    desc_table: u64,
    avail_ring: u64,
    used_ring: u64,
    next_avail: u16,
    next_used: u16,
    signalled_used: u16,
    event_idx: bool,
    indirect: bool,
}

impl Queue {
    /// A disabled queue that accepts sizes up to `max_size` (clamped to [`MAX_QUEUE_SIZE`]).
    pub fn new(max_size: u16) -> Self {
        let max_size = max_size.clamp(1, MAX_QUEUE_SIZE);
        Queue {
            max_size,
            size: max_size,
            ready: false,
            desc_table: 0,
            avail_ring: 0,
            used_ring: 0,
            next_avail: 0,
            next_used: 0,
            signalled_used: 0,
            event_idx: false,
            indirect: false,
        }
    }

    /// Returns the queue to its state after device reset.
    pub fn reset(&mut self) {
        *self = Queue::new(self.max_size);
    }

    /// Largest size the driver may choose.
    pub fn max_size(&self) -> u16 {
        self.max_size
    }
    /// Current size.
    pub fn size(&self) -> u16 {
        self.size
    }
    /// True once the driver enabled the queue.
    pub fn ready(&self) -> bool {
        self.ready
    }
    /// Sets the size (checked when the queue is enabled).
    pub fn set_size(&mut self, size: u16) {
        self.size = size;
    }
    /// Sets the three ring addresses (checked when the queue is enabled).
    pub fn set_addresses(&mut self, desc_table: u64, avail_ring: u64, used_ring: u64) {
        self.desc_table = desc_table;
        self.avail_ring = avail_ring;
        self.used_ring = used_ring;
    }
    /// The ring addresses: descriptor table, available ring, used ring.
    pub fn addresses(&self) -> (u64, u64, u64) {
        (self.desc_table, self.avail_ring, self.used_ring)
    }
    /// Applies the negotiated features that change ring behaviour.
    pub fn set_features(&mut self, features: u64) {
        self.event_idx = features & VIRTIO_F_EVENT_IDX != 0;
        self.indirect = features & VIRTIO_F_INDIRECT_DESC != 0;
    }

    /// Enables or disables the queue. Enabling checks size and alignment (spec 2.7).
    pub fn set_ready(&mut self, ready: bool) -> Result<(), QueueConfigError> {
        if !ready {
            self.ready = false;
            return Ok(());
        }
        if self.size == 0 || self.size > self.max_size || !self.size.is_power_of_two() {
            return Err(QueueConfigError::BadSize(self.size));
        }
        for (addr, align) in [
            (self.desc_table, 16),
            (self.avail_ring, 2),
            (self.used_ring, 4),
        ] {
            if addr % align != 0 {
                return Err(QueueConfigError::Misaligned(addr));
            }
        }
        self.next_avail = 0;
        self.next_used = 0;
        self.signalled_used = 0;
        self.ready = true;
        Ok(())
    }

    fn avail_idx<M: GuestMemory + ?Sized>(&self, mem: &M) -> Result<u16, MemoryError> {
        mem.read_u16(self.avail_ring + 2)
    }

    /// True if the driver has made buffers available that were not taken yet.
    pub fn has_available<M: GuestMemory + ?Sized>(&self, mem: &M) -> Result<bool, QueueError> {
        if !self.ready {
            return Err(QueueError::NotReady);
        }
        Ok(self.avail_idx(mem)? != self.next_avail)
    }

    /// Takes the next available chain, validated. `Ok(None)` when the ring is empty.
    ///
    /// A malformed chain is returned to the used ring with length 0 and reported as
    /// [`QueueError::Chain`]; the caller may keep popping. Other errors are fatal.
    pub fn pop<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
    ) -> Result<Option<DescriptorChain>, QueueError> {
        if !self.ready {
            return Err(QueueError::NotReady);
        }
        let avail_idx = self.avail_idx(mem)?;
        let pending = avail_idx.wrapping_sub(self.next_avail);
        if pending == 0 {
            return Ok(None);
        }
        if pending > self.size {
            return Err(QueueError::AvailIndexJump {
                avail_idx,
                next_avail: self.next_avail,
            });
        }
        // Read the ring entry only after seeing the index that covers it (spec 2.7.13.3).
        fence(Ordering::Acquire);
        let slot = u64::from(self.next_avail % self.size);
        let head = mem.read_u16(self.avail_ring + 4 + 2 * slot)?;
        if head >= self.size {
            return Err(QueueError::HeadOutOfRange { head });
        }
        self.next_avail = self.next_avail.wrapping_add(1);
        match self.parse_chain(mem, head) {
            Ok(chain) => Ok(Some(chain)),
            Err(ChainFailure::Ring(e)) => Err(QueueError::Ring(e)),
            Err(ChainFailure::Chain(error)) => {
                self.add_used(mem, head, 0)?;
                Err(QueueError::Chain { head, error })
            }
        }
    }

    fn read_descriptor<M: GuestMemory + ?Sized>(
        &self,
        mem: &M,
        index: u16,
    ) -> Result<RawDescriptor, MemoryError> {
        let mut raw = [0u8; DESC_SIZE as usize];
        mem.read(self.desc_table + DESC_SIZE * u64::from(index), &mut raw)?;
        Ok(RawDescriptor::parse(&raw))
    }

    fn parse_chain<M: GuestMemory + ?Sized>(
        &self,
        mem: &M,
        head: u16,
    ) -> Result<DescriptorChain, ChainFailure> {
        let mut builder = ChainBuilder::new(head);
        let mut index = head;
        let mut visited: u32 = 0;
        loop {
            visited += 1;
            if visited > u32::from(self.size) {
                return Err(ChainError::Loop.into());
            }
            let raw = self
                .read_descriptor(mem, index)
                .map_err(ChainFailure::Ring)?;
            if raw.flags & DESC_F_INDIRECT != 0 {
                if !self.indirect {
                    return Err(ChainError::IndirectNotNegotiated.into());
                }
                if raw.flags & DESC_F_NEXT != 0 {
                    return Err(ChainError::IndirectWithNext.into());
                }
                self.parse_indirect(mem, &raw, &mut builder)?;
                break;
            }
            builder.push(&raw)?;
            if raw.flags & DESC_F_NEXT == 0 {
                break;
            }
            if raw.next >= self.size {
                return Err(ChainError::NextOutOfRange { next: raw.next }.into());
            }
            index = raw.next;
        }
        Ok(builder.finish())
    }

    /// Copies an indirect table out of frontend memory, then walks the copy (spec 2.7.5.3).
    fn parse_indirect<M: GuestMemory + ?Sized>(
        &self,
        mem: &M,
        raw: &RawDescriptor,
        builder: &mut ChainBuilder,
    ) -> Result<(), ChainError> {
        if raw.len == 0 || u64::from(raw.len) % DESC_SIZE != 0 {
            return Err(ChainError::IndirectTableLength { len: raw.len });
        }
        let entries = (u64::from(raw.len) / DESC_SIZE) as usize;
        if entries + builder.descriptors.len() > MAX_CHAIN_LEN {
            return Err(ChainError::TooLong);
        }
        let mut table = alloc::vec![0u8; raw.len as usize];
        mem.read(raw.addr, &mut table)
            .map_err(ChainError::IndirectTableMemory)?;
        let mut index = 0usize;
        let mut visited = 0usize;
        loop {
            visited += 1;
            if visited > entries {
                return Err(ChainError::Loop);
            }
            let at = index * DESC_SIZE as usize;
            let entry = RawDescriptor::parse(&table[at..at + DESC_SIZE as usize]);
            if entry.flags & DESC_F_INDIRECT != 0 {
                return Err(ChainError::NestedIndirect);
            }
            builder.push(&entry)?;
            if entry.flags & DESC_F_NEXT == 0 {
                return Ok(());
            }
            if usize::from(entry.next) >= entries {
                return Err(ChainError::NextOutOfRange { next: entry.next });
            }
            index = usize::from(entry.next);
        }
    }

    /// Returns chain `head` to the driver with `len` bytes written (spec 2.7.8).
    pub fn add_used<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        head: u16,
        len: u32,
    ) -> Result<(), QueueError> {
        if !self.ready {
            return Err(QueueError::NotReady);
        }
        let slot = u64::from(self.next_used % self.size);
        let mut elem = [0u8; 8];
        elem[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        elem[4..].copy_from_slice(&len.to_le_bytes());
        mem.write(self.used_ring + 4 + 8 * slot, &elem)?;
        // The element must be visible before the index that publishes it (spec 2.7.8.2).
        fence(Ordering::Release);
        self.next_used = self.next_used.wrapping_add(1);
        mem.write_u16(self.used_ring + 2, self.next_used)?;
        Ok(())
    }

    /// Decides whether the driver must be interrupted for the used buffers added since the last
    /// call: avail.flags NO_INTERRUPT, or with EVENT_IDX the driver's used_event (spec 2.7.7.2).
    pub fn needs_interrupt<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
    ) -> Result<bool, QueueError> {
        if !self.ready {
            return Err(QueueError::NotReady);
        }
        let old = self.signalled_used;
        let new = self.next_used;
        if old == new {
            return Ok(false);
        }
        self.signalled_used = new;
        fence(Ordering::SeqCst);
        if self.event_idx {
            let used_event = mem.read_u16(self.avail_ring + 4 + 2 * u64::from(self.size))?;
            // vring_need_event: did new_used pass used_event since old_used?
            Ok(new.wrapping_sub(used_event).wrapping_sub(1) < new.wrapping_sub(old))
        } else {
            let flags = mem.read_u16(self.avail_ring)?;
            Ok(flags & AVAIL_F_NO_INTERRUPT == 0)
        }
    }

    /// Asks the driver to notify (true) or not notify (false) when it adds buffers: with
    /// EVENT_IDX by publishing avail_event, otherwise with used.flags NO_NOTIFY (spec 2.7.10).
    pub fn set_notification<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        enable: bool,
    ) -> Result<(), QueueError> {
        if !self.ready {
            return Err(QueueError::NotReady);
        }
        if self.event_idx {
            if enable {
                let avail_event = self.used_ring + 4 + 8 * u64::from(self.size);
                mem.write_u16(avail_event, self.next_avail)?;
            }
        } else {
            mem.write_u16(self.used_ring, if enable { 0 } else { USED_F_NO_NOTIFY })?;
        }
        fence(Ordering::SeqCst);
        Ok(())
    }
}

enum ChainFailure {
    Ring(MemoryError),
    Chain(ChainError),
}

impl From<ChainError> for ChainFailure {
    fn from(e: ChainError) -> Self {
        ChainFailure::Chain(e)
    }
}

struct RawDescriptor {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

impl RawDescriptor {
    fn parse(b: &[u8]) -> Self {
        let mut addr = [0u8; 8];
        addr.copy_from_slice(&b[0..8]);
        RawDescriptor {
            addr: u64::from_le_bytes(addr),
            len: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
            flags: u16::from_le_bytes([b[12], b[13]]),
            next: u16::from_le_bytes([b[14], b[15]]),
        }
    }
}

struct ChainBuilder {
    head: u16,
    descriptors: Vec<Descriptor>,
    readable: u64,
    writable: u64,
    seen_writable: bool,
}

impl ChainBuilder {
    fn new(head: u16) -> Self {
        ChainBuilder {
            head,
            descriptors: Vec::new(),
            readable: 0,
            writable: 0,
            seen_writable: false,
        }
    }

    fn push(&mut self, raw: &RawDescriptor) -> Result<(), ChainError> {
        if self.descriptors.len() >= MAX_CHAIN_LEN {
            return Err(ChainError::TooLong);
        }
        if raw.addr.checked_add(u64::from(raw.len)).is_none() {
            return Err(ChainError::AddressOverflow {
                addr: raw.addr,
                len: raw.len,
            });
        }
        let writable = raw.flags & DESC_F_WRITE != 0;
        if writable {
            self.seen_writable = true;
            self.writable += u64::from(raw.len);
        } else {
            if self.seen_writable {
                return Err(ChainError::ReadableAfterWritable);
            }
            self.readable += u64::from(raw.len);
        }
        if self.readable > u64::from(u32::MAX) || self.writable > u64::from(u32::MAX) {
            return Err(ChainError::TotalLengthOverflow);
        }
        self.descriptors.push(Descriptor {
            addr: raw.addr,
            len: raw.len,
            writable,
        });
        Ok(())
    }

    fn finish(self) -> DescriptorChain {
        DescriptorChain {
            head: self.head,
            descriptors: self.descriptors,
            readable_len: self.readable as u32,
            writable_len: self.writable as u32,
        }
    }
}
