//! Host-side harness that lets independent code drive Ferry's device side.
//!
//! Two ways in:
//! - [`InProcessTransport`] implements the `virtio-drivers` crate's `Transport` trait on top of a
//!   Ferry [`Device`], so virtio-drivers' own `VirtIOBlk` / `VirtIORng` drivers run against our
//!   device models. Frontend memory is host memory; the device may reach only what [`TestHal`]
//!   allocated for DMA or shared with it (the host stand-in for grants), through [`HostMemory`].
//! - [`FakeGuest`] is a plain byte array standing in for guest RAM, with a [`DriverRing`] that
//!   writes descriptor tables and rings by hand, for hostile-input tests.
//!
//! Unsafe code lives only in [`HostMemory`] and [`TestHal`], which deal in raw host pointers the
//! way a real Hal does.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ptr::NonNull;
use std::rc::Rc;
use std::sync::Mutex;

use ferry_virtio::{Device, DeviceModel, GuestMemory, MemoryError};
use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::{BufferDirection, Hal, PhysAddr, PAGE_SIZE};
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// Host memory regions the device may reach: start address -> length.
static REACHABLE: Mutex<BTreeMap<usize, usize>> = Mutex::new(BTreeMap::new());

fn lock_reachable() -> std::sync::MutexGuard<'static, BTreeMap<usize, usize>> {
    REACHABLE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn reachable(addr: u64, len: usize) -> bool {
    let Ok(start) = usize::try_from(addr) else {
        return false;
    };
    let Some(end) = start.checked_add(len) else {
        return false;
    };
    let map = lock_reachable();
    map.range(..=start)
        .next_back()
        .is_some_and(|(&s, &l)| end <= s + l)
}

/// Frontend memory as the device sees it in host tests: raw host addresses, refused unless
/// [`TestHal`] made them reachable (DMA allocations and shared buffers).
#[derive(Clone, Copy, Debug, Default)]
pub struct HostMemory;

impl GuestMemory for HostMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        if !reachable(addr, buf.len()) {
            return Err(MemoryError::new(addr, buf.len()));
        }
        // SAFETY: `reachable` checked that [addr, addr + len) lies inside a live allocation or a
        // buffer the driver shared and has not unshared; the driver side does not mutate it
        // while the (synchronous) device runs. Volatile-free byte copy of plain data.
        unsafe {
            std::ptr::copy_nonoverlapping(addr as usize as *const u8, buf.as_mut_ptr(), buf.len())
        };
        Ok(())
    }

    fn write(&self, addr: u64, data: &[u8]) -> Result<(), MemoryError> {
        if !reachable(addr, data.len()) {
            return Err(MemoryError::new(addr, data.len()));
        }
        // SAFETY: as in `read`: the range is inside a live, registered region the driver handed
        // to the device, and nothing else accesses it during the device's synchronous run.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), addr as usize as *mut u8, data.len())
        };
        Ok(())
    }
}

/// virtio-drivers' Hal for host tests: identity "physical" addresses, with every DMA allocation
/// and shared buffer registered as reachable for [`HostMemory`] until freed or unshared.
pub struct TestHal;

// SAFETY: dma_alloc returns zeroed, page-aligned memory that stays valid until dma_dealloc; the
// "physical" address is the host address, which HostMemory accepts for exactly that lifetime.
unsafe impl Hal for TestHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let layout = std::alloc::Layout::from_size_align(pages * PAGE_SIZE, PAGE_SIZE)
            .expect("valid DMA layout");
        // SAFETY: the layout has a non-zero size (virtio-drivers never asks for 0 pages).
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).expect("host allocation failed");
        lock_reachable().insert(ptr.as_ptr() as usize, pages * PAGE_SIZE);
        (ptr.as_ptr() as usize as PhysAddr, ptr)
    }

    unsafe fn dma_dealloc(_paddr: PhysAddr, vaddr: NonNull<u8>, pages: usize) -> i32 {
        lock_reachable().remove(&(vaddr.as_ptr() as usize));
        let layout = std::alloc::Layout::from_size_align(pages * PAGE_SIZE, PAGE_SIZE)
            .expect("valid DMA layout");
        // SAFETY: the caller passes back a pointer from dma_alloc with the same page count.
        unsafe { std::alloc::dealloc(vaddr.as_ptr(), layout) };
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        NonNull::new(paddr as usize as *mut u8).expect("null MMIO address")
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        let start = buffer.as_ptr() as *mut u8 as usize;
        lock_reachable().insert(start, buffer.len());
        start as PhysAddr
    }

    unsafe fn unshare(_paddr: PhysAddr, buffer: NonNull<[u8]>, _direction: BufferDirection) {
        lock_reachable().remove(&(buffer.as_ptr() as *mut u8 as usize));
    }
}

/// The test's handle on a device that a transport also drives.
pub type DeviceHandle<D> = Rc<RefCell<Device<D>>>;

/// A virtio-drivers `Transport` that is a Ferry [`Device`] in the same process: register
/// accesses become method calls, and `notify` runs the device synchronously.
pub struct InProcessTransport<D: DeviceModel> {
    device: DeviceHandle<D>,
    interrupts: Rc<RefCell<u64>>,
}

impl<D: DeviceModel> InProcessTransport<D> {
    /// Wraps `device`; the returned handle lets the test inspect it while a driver owns the
    /// transport.
    pub fn new(device: Device<D>) -> (Self, DeviceHandle<D>) {
        let device = Rc::new(RefCell::new(device));
        (
            InProcessTransport {
                device: device.clone(),
                interrupts: Rc::default(),
            },
            device,
        )
    }

    /// A shared counter of notifications after which the device asked for an interrupt.
    pub fn interrupt_counter(&self) -> Rc<RefCell<u64>> {
        self.interrupts.clone()
    }
}

impl<D: DeviceModel> Transport for InProcessTransport<D> {
    fn device_type(&self) -> DeviceType {
        DeviceType::try_from(self.device.borrow().device_id()).expect("known device type")
    }
    fn read_device_features(&mut self) -> u64 {
        self.device.borrow().device_features()
    }
    fn write_driver_features(&mut self, driver_features: u64) {
        self.device
            .borrow_mut()
            .set_driver_features(driver_features);
    }
    fn max_queue_size(&mut self, queue: u16) -> u32 {
        self.device
            .borrow()
            .queue(queue)
            .map_or(0, |q| u32::from(q.max_size()))
    }
    fn notify(&mut self, queue: u16) {
        if self.device.borrow_mut().notify(queue, &HostMemory) {
            *self.interrupts.borrow_mut() += 1;
        }
    }
    fn get_status(&self) -> DeviceStatus {
        DeviceStatus::from_bits_truncate(u32::from(self.device.borrow().status()))
    }
    fn set_status(&mut self, status: DeviceStatus) {
        self.device.borrow_mut().set_status(status.bits() as u8);
    }
    fn set_guest_page_size(&mut self, _guest_page_size: u32) {}
    fn requires_legacy_layout(&self) -> bool {
        false
    }
    fn queue_set(
        &mut self,
        queue: u16,
        size: u32,
        descriptors: PhysAddr,
        driver_area: PhysAddr,
        device_area: PhysAddr,
    ) {
        let size = u16::try_from(size).unwrap_or(0);
        self.device.borrow_mut().configure_queue(
            queue,
            size,
            (descriptors, driver_area, device_area),
            true,
        );
    }
    fn queue_unset(&mut self, queue: u16) {
        self.device
            .borrow_mut()
            .configure_queue(queue, 0, (0, 0, 0), false);
    }
    fn queue_used(&mut self, queue: u16) -> bool {
        self.device.borrow().queue(queue).is_some_and(|q| q.ready())
    }
    fn ack_interrupt(&mut self) -> InterruptStatus {
        let mut device = self.device.borrow_mut();
        let pending = device.interrupt_status();
        device.ack_interrupt(pending);
        InterruptStatus::from_bits_truncate(pending)
    }
    fn read_config_generation(&self) -> u32 {
        self.device.borrow().config_generation()
    }
    fn read_config_space<T: FromBytes + IntoBytes>(
        &self,
        offset: usize,
    ) -> virtio_drivers::Result<T> {
        let mut value = T::new_zeroed();
        let offset =
            u32::try_from(offset).map_err(|_| virtio_drivers::Error::ConfigSpaceTooSmall)?;
        self.device
            .borrow()
            .read_config(offset, value.as_mut_bytes());
        Ok(value)
    }
    fn write_config_space<T: IntoBytes + Immutable>(
        &mut self,
        offset: usize,
        value: T,
    ) -> virtio_drivers::Result<()> {
        let offset =
            u32::try_from(offset).map_err(|_| virtio_drivers::Error::ConfigSpaceTooSmall)?;
        self.device
            .borrow_mut()
            .write_config(offset, value.as_bytes());
        Ok(())
    }
}

/// Guest RAM for hand-built hostile tests: addresses `0 .. size`; anything else is refused.
pub struct FakeGuest {
    ram: RefCell<Vec<u8>>,
}

impl FakeGuest {
    /// `size` bytes of zeroed guest RAM.
    pub fn new(size: usize) -> Self {
        FakeGuest {
            ram: RefCell::new(vec![0; size]),
        }
    }
    /// Copies `data` to `addr` (test setup; panics if out of range).
    pub fn poke(&self, addr: u64, data: &[u8]) {
        self.write(addr, data).expect("poke inside fake guest RAM");
    }
    /// Reads `len` bytes at `addr` (test check; panics if out of range).
    pub fn peek(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.read(addr, &mut v).expect("peek inside fake guest RAM");
        v
    }
    fn range(&self, addr: u64, len: usize) -> Result<std::ops::Range<usize>, MemoryError> {
        let size = self.ram.borrow().len();
        let start = usize::try_from(addr).map_err(|_| MemoryError::new(addr, len))?;
        match start.checked_add(len) {
            Some(end) if end <= size => Ok(start..end),
            _ => Err(MemoryError::new(addr, len)),
        }
    }
}

impl GuestMemory for FakeGuest {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let r = self.range(addr, buf.len())?;
        buf.copy_from_slice(&self.ram.borrow()[r]);
        Ok(())
    }
    fn write(&self, addr: u64, data: &[u8]) -> Result<(), MemoryError> {
        let r = self.range(addr, data.len())?;
        self.ram.borrow_mut()[r].copy_from_slice(data);
        Ok(())
    }
}

/// Descriptor flag: continues via `next`.
pub const F_NEXT: u16 = 1;
/// Descriptor flag: device-writable.
pub const F_WRITE: u16 = 2;
/// Descriptor flag: refers to an indirect table.
pub const F_INDIRECT: u16 = 4;

/// The driver side of one split queue in a [`FakeGuest`], written by hand.
pub struct DriverRing {
    /// Queue size.
    pub size: u16,
    /// Descriptor table address.
    pub desc: u64,
    /// Available ring address.
    pub avail: u64,
    /// Used ring address.
    pub used: u64,
    avail_idx: u16,
}

impl DriverRing {
    /// A queue of `size` entries with its rings at `base` (descriptor table, avail, used).
    pub fn new(size: u16, base: u64) -> Self {
        let desc = base;
        let avail = desc + 16 * u64::from(size);
        let used = (avail + 6 + 2 * u64::from(size) + 3) & !3;
        DriverRing {
            size,
            desc,
            avail,
            used,
            avail_idx: 0,
        }
    }
    /// The `(desc, avail, used)` triple for [`Device::configure_queue`].
    pub fn rings(&self) -> (u64, u64, u64) {
        (self.desc, self.avail, self.used)
    }
    /// Writes descriptor `index`.
    pub fn set_desc(
        &self,
        mem: &FakeGuest,
        index: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) {
        mem.poke(
            self.desc + 16 * u64::from(index),
            &encode_desc(addr, len, flags, next),
        );
    }
    /// Makes `head` available and publishes the new avail index.
    pub fn push(&mut self, mem: &FakeGuest, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        mem.poke(self.avail + 4 + 2 * slot, &head.to_le_bytes());
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.poke(self.avail + 2, &self.avail_idx.to_le_bytes());
    }
    /// Writes an arbitrary avail index (hostile tests).
    pub fn set_avail_idx(&mut self, mem: &FakeGuest, idx: u16) {
        self.avail_idx = idx;
        mem.poke(self.avail + 2, &idx.to_le_bytes());
    }
    /// Writes used_event (the slot after the avail ring).
    pub fn set_used_event(&self, mem: &FakeGuest, value: u16) {
        mem.poke(
            self.avail + 4 + 2 * u64::from(self.size),
            &value.to_le_bytes(),
        );
    }
    /// Reads avail_event (the slot after the used ring).
    pub fn avail_event(&self, mem: &FakeGuest) -> u16 {
        let b = mem.peek(self.used + 4 + 8 * u64::from(self.size), 2);
        u16::from_le_bytes([b[0], b[1]])
    }
    /// The device's used index.
    pub fn used_idx(&self, mem: &FakeGuest) -> u16 {
        let b = mem.peek(self.used + 2, 2);
        u16::from_le_bytes([b[0], b[1]])
    }
    /// Used element `i` (counting from 0 since the queue was enabled): (id, len).
    pub fn used_elem(&self, mem: &FakeGuest, i: u16) -> (u32, u32) {
        let b = mem.peek(self.used + 4 + 8 * u64::from(i % self.size), 8);
        (
            u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
        )
    }
}

/// Encodes one 16-byte descriptor.
pub fn encode_desc(addr: u64, len: u32, flags: u16, next: u16) -> [u8; 16] {
    let mut d = [0u8; 16];
    d[..8].copy_from_slice(&addr.to_le_bytes());
    d[8..12].copy_from_slice(&len.to_le_bytes());
    d[12..14].copy_from_slice(&flags.to_le_bytes());
    d[14..].copy_from_slice(&next.to_le_bytes());
    d
}

/// A deterministic entropy source (xorshift64*) that remembers every byte it produced, so a
/// test can check that what the driver received came from the source.
pub struct RecordingSource {
    state: u64,
    /// Every byte handed out, in order.
    pub produced: Vec<u8>,
}

impl RecordingSource {
    /// A source seeded with `seed` (non-zero).
    pub fn new(seed: u64) -> Self {
        RecordingSource {
            state: seed,
            produced: Vec::new(),
        }
    }
}

impl ferry_drivers::EntropySource for RecordingSource {
    fn fill(&mut self, buf: &mut [u8]) -> Result<usize, ferry_drivers::DeviceError> {
        for b in buf.iter_mut() {
            self.state ^= self.state >> 12;
            self.state ^= self.state << 25;
            self.state ^= self.state >> 27;
            *b = (self.state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8;
        }
        self.produced.extend_from_slice(buf);
        Ok(buf.len())
    }
}

/// `len` bytes of a test pattern that differs for each `seed` (xorshift32).
pub fn pattern(seed: u32, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}
