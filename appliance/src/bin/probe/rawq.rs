//! A minimal split virtqueue driven by hand, for the hostile tests: the probe writes whatever
//! descriptors it likes (loops, bad orders, ungranted addresses), which virtio-drivers never
//! would.
//!
//! Layout (virtio 1.2 section 2.7): one DMA page holds the descriptor table at 0 (16 bytes per
//! descriptor: addr u64, len u32, flags u16, next u16), the driver area (available ring: flags,
//! idx, ring[SIZE], used_event) at 0x100 and the device area (used ring: flags, idx,
//! ring[SIZE] of {id u32, len u32}, avail_event) at 0x200. No feature but VERSION_1 (and
//! ACCESS_PLATFORM when offered) is negotiated, so every buffer is notified and no event index
//! is used. Everything the device shares is reached with volatile accesses through raw pointers.

use alloc::format;
use alloc::string::String;
use core::marker::PhantomData;
use core::ptr::NonNull;
use core::sync::atomic::{fence, Ordering};

use ferry_appliance::time;
use virtio_drivers::BufferDirection;

use crate::blk::yield_to_backend;
use crate::hal::ProbeHal;

use crate::plan::PAGE_SIZE;
use crate::window::*;

/// Entries in the queue.
pub const SIZE: u16 = 8;
/// `VIRTQ_DESC_F_NEXT`.
pub const NEXT: u16 = 1;
/// `VIRTQ_DESC_F_WRITE`.
pub const WRITE: u16 = 2;

const DESC: usize = 0x000;
const AVAIL: usize = 0x100;
const USED: usize = 0x200;

/// How long the device may take to use a chain, in seconds.
const TIMEOUT_SECONDS: u64 = 10;

/// Pages from the mode's `Hal` (granted read-write in grant mode), freed when dropped.
pub struct DmaPages<H: ProbeHal> {
    /// The device's address of the first byte.
    pub device_address: u64,
    memory: NonNull<u8>,
    pages: usize,
    _hal: PhantomData<H>,
}

impl<H: ProbeHal> DmaPages<H> {
    /// `pages` zeroed pages.
    pub fn new(pages: usize) -> Result<Self, String> {
        let (device_address, memory) = H::dma_alloc(pages, BufferDirection::Both);
        if device_address == 0 {
            return Err(format!("cannot allocate {pages} DMA pages"));
        }
        Ok(Self {
            device_address,
            memory,
            pages,
            _hal: PhantomData,
        })
    }

    /// Our own address of byte `offset`.
    pub fn local_address(&self, offset: usize) -> usize {
        assert!(offset < self.pages * PAGE_SIZE);
        self.memory.as_ptr() as usize + offset
    }

    /// Copies `data` to `offset`.
    pub fn write(&self, offset: usize, data: &[u8]) {
        assert!(offset + data.len() <= self.pages * PAGE_SIZE);
        for (i, &byte) in data.iter().enumerate() {
            // SAFETY: in bounds of the allocation (checked above); the device may access the
            // pages concurrently, hence byte-wise volatile writes and no Rust reference.
            unsafe { self.memory.as_ptr().add(offset + i).write_volatile(byte) }
        }
        fence(Ordering::SeqCst);
    }

    /// Copies from `offset` into `out`.
    pub fn read(&self, offset: usize, out: &mut [u8]) {
        assert!(offset + out.len() <= self.pages * PAGE_SIZE);
        fence(Ordering::SeqCst);
        for (i, byte) in out.iter_mut().enumerate() {
            // SAFETY: in bounds (checked above); volatile, as the device may write concurrently.
            *byte = unsafe { self.memory.as_ptr().add(offset + i).read_volatile() };
        }
    }

    fn write_u16(&self, offset: usize, value: u16) {
        self.write(offset, &value.to_le_bytes());
    }

    fn read_u16(&self, offset: usize) -> u16 {
        let mut bytes = [0; 2];
        self.read(offset, &mut bytes);
        u16::from_le_bytes(bytes)
    }

    fn read_u32(&self, offset: usize) -> u32 {
        let mut bytes = [0; 4];
        self.read(offset, &mut bytes);
        u32::from_le_bytes(bytes)
    }
}

impl<H: ProbeHal> Drop for DmaPages<H> {
    fn drop(&mut self) {
        // SAFETY: `device_address`, `memory` and `pages` are what `dma_alloc` returned, and this
        // is the only deallocation. The device no longer uses the pages: owners reset it first.
        unsafe { H::dma_dealloc(self.device_address, self.memory, self.pages) };
    }
}

/// Queue 0 of the device in `window`, set up and driven by hand.
pub struct RawQueue<H: ProbeHal> {
    window: Window,
    ring: DmaPages<H>,
    next_avail: u16,
    used_seen: u16,
}

impl<H: ProbeHal> RawQueue<H> {
    /// Resets the device and brings it up with queue 0 on a fresh ring (virtio 1.2 3.1.1).
    pub fn init(window: Window) -> Result<Self, String> {
        window.reset()?;
        window.write(STATUS, STATUS_ACKNOWLEDGE);
        window.write(STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        let offered = window.device_features();
        if offered & F_VERSION_1 == 0 {
            return Err(format!("device features {offered:#x} lack VERSION_1"));
        }
        let accepted = offered & (F_VERSION_1 | F_ACCESS_PLATFORM);
        window.write(DRIVER_FEATURES_SEL, 0);
        window.write(DRIVER_FEATURES, accepted as u32);
        window.write(DRIVER_FEATURES_SEL, 1);
        window.write(DRIVER_FEATURES, (accepted >> 32) as u32);
        let features_ok = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
        window.write(STATUS, features_ok);
        if window.read(STATUS) & STATUS_FEATURES_OK == 0 {
            return Err(format!("the device refused features {accepted:#x}"));
        }
        window.write(QUEUE_SEL, 0);
        if window.read(QUEUE_READY) != 0 {
            return Err("queue 0 is ready right after a reset".into());
        }
        let max = window.read(QUEUE_NUM_MAX);
        if max < u32::from(SIZE) {
            return Err(format!("queue 0 has at most {max} entries"));
        }
        let ring = DmaPages::<H>::new(1)?;
        let base = ring.device_address;
        window.write(QUEUE_NUM, u32::from(SIZE));
        for (register, address) in [
            (QUEUE_DESC, base + DESC as u64),
            (QUEUE_DRIVER, base + AVAIL as u64),
            (QUEUE_DEVICE, base + USED as u64),
        ] {
            window.write(register, address as u32);
            window.write(register + 4, (address >> 32) as u32);
        }
        window.write(QUEUE_READY, 1);
        window.write(STATUS, features_ok | STATUS_DRIVER_OK);
        let status = window.read(STATUS);
        if status & (STATUS_DRIVER_OK | STATUS_NEEDS_RESET) != STATUS_DRIVER_OK {
            return Err(format!("status {status:#x} after DRIVER_OK"));
        }
        Ok(Self {
            window,
            ring,
            next_avail: 0,
            used_seen: 0,
        })
    }

    /// Writes descriptor `index`.
    pub fn set_descriptor(&mut self, index: u16, address: u64, len: u32, flags: u16, next: u16) {
        assert!(index < SIZE);
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&address.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..16].copy_from_slice(&next.to_le_bytes());
        self.ring.write(DESC + 16 * usize::from(index), &raw);
    }

    /// Makes the chain at `head` available and notifies queue 0 (spec 2.7.13).
    pub fn submit(&mut self, head: u16) {
        let slot = usize::from(self.next_avail % SIZE);
        self.ring.write_u16(AVAIL + 4 + 2 * slot, head);
        // The ring entry before the index that publishes it (`write` ends with a barrier).
        self.next_avail = self.next_avail.wrapping_add(1);
        self.ring.write_u16(AVAIL + 2, self.next_avail);
        self.window.write(QUEUE_NOTIFY, 0);
    }

    /// Waits for the next used element: (id, len).
    pub fn wait_used(&mut self) -> Result<(u32, u32), String> {
        let deadline = time::now() + TIMEOUT_SECONDS * time::frequency();
        while self.ring.read_u16(USED + 2) == self.used_seen {
            if time::now() > deadline {
                let status = self.window.read(STATUS);
                let why = if status & STATUS_NEEDS_RESET != 0 {
                    " - it set DEVICE_NEEDS_RESET instead"
                } else {
                    ""
                };
                return Err(format!(
                    "the device used nothing within {TIMEOUT_SECONDS} s (status {status:#x}{why})"
                ));
            }
            yield_to_backend::<H>();
        }
        let slot = usize::from(self.used_seen % SIZE);
        let id = self.ring.read_u32(USED + 4 + 8 * slot);
        let len = self.ring.read_u32(USED + 8 + 8 * slot);
        self.used_seen = self.used_seen.wrapping_add(1);
        let pending = self.window.read(INTERRUPT_STATUS);
        if pending != 0 {
            self.window.write(INTERRUPT_ACK, pending);
        }
        Ok((id, len))
    }

    /// Submits `head` and waits for it to be used; returns the used length.
    pub fn run(&mut self, head: u16) -> Result<u32, String> {
        self.submit(head);
        let (id, len) = self.wait_used()?;
        if id != u32::from(head) {
            return Err(format!("the device used chain {id}, not {head}"));
        }
        Ok(len)
    }

    /// The device status register now.
    pub fn status(&self) -> u32 {
        self.window.read(STATUS)
    }
}

impl<H: ProbeHal> Drop for RawQueue<H> {
    fn drop(&mut self) {
        // Stop the device using the ring before `ring` is freed.
        let _ = self.window.reset();
    }
}
