//! DMA for the physical device a direct-mapped appliance owns: a `virtio-drivers` [`Hal`] with
//! identity addresses, and the passed-through virtio-mmio window as a `virtio-drivers`
//! transport, and a counter-deadline waiter for its requests.
//!
//! A backend that drives a passed-through device (QEMU's virtio-mmio transports, without an
//! IOMMU) hands the device our guest physical addresses, and the device uses them as host
//! physical addresses. That is only right in a *direct-mapped* domain (dom0less `direct-map`
//! with `xen,static-mem`: guest physical = host physical), and Ferry runs with virtual =
//! guest physical addresses, so the [`Hal`] is the identity: DMA buffers come from the heap
//! (page-aligned, zeroed) and their address is their device address; sharing a buffer is
//! using its address (the devices are cache-coherent, `dma-coherent`).
//!
//! Xen gives a direct-mapped domain the host's memory layout, GIC included (`direct-map`
//! implies `domain_use_host_layout()`, xen/arch/arm/domain_build.c and vgic-v2.c/vgic-v3.c),
//! while any other domU sees its GIC distributor at `GUEST_GICD_BASE` (0x03001000,
//! xen/include/public/arch-arm.h). [`is_direct_mapped`] uses that to refuse DMA in a domain
//! that is not direct-mapped, where a device would read and write someone else's memory.
//! This module must never be used for frontend memory (that is [`crate::transport`]'s, with
//! grants).

use crate::platform::Gic;

/// `GUEST_GICD_BASE` (xen/include/public/arch-arm.h): the GIC distributor of a domU that does
/// not use the host layout.
pub const GUEST_GICD_BASE: u64 = 0x0300_1000;

/// Whether this domain has the host's layout (direct-mapped), judged by its GIC distributor.
pub fn is_direct_mapped(gic: &Gic) -> bool {
    let distributor = match gic {
        Gic::V2 { distributor, .. } | Gic::V3 { distributor, .. } => distributor,
    };
    distributor.base != GUEST_GICD_BASE
}

#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub use self::bare_metal::*;

#[cfg(all(target_arch = "aarch64", target_os = "none"))]
mod bare_metal {
    use alloc::alloc::{alloc_zeroed, dealloc, Layout};
    use core::fmt;
    use core::ptr::NonNull;
    use core::sync::atomic::{AtomicBool, Ordering};

    use ferry_drivers_virtio::Waiter;
    use virtio_drivers::transport::mmio::{MmioError, MmioTransport, VirtIOHeader};
    use virtio_drivers::{BufferDirection, Hal, PhysAddr, PAGE_SIZE};

    use super::is_direct_mapped;
    use crate::mmu;
    use crate::paging::MapError;
    use crate::platform::{Platform, Region};
    use crate::time;

    /// The [`Hal`] of a direct-mapped appliance: DMA memory from the heap, device address =
    /// our address. Only sound in a direct-mapped domain: take the device with
    /// [`passthrough_virtio_mmio`], which checks.
    #[derive(Debug)]
    pub struct DirectMapHal;

    fn layout(pages: usize) -> Option<Layout> {
        Layout::from_size_align(pages.checked_mul(PAGE_SIZE)?, PAGE_SIZE).ok()
    }

    // SAFETY: `dma_alloc` returns fresh, zeroed, page-aligned heap memory that nothing else
    // refers to until `dma_dealloc`; the addresses it and `share` return are the device's view
    // of the same memory because the domain is direct-mapped (PA = IPA, checked before a device
    // is handed out) and Ferry maps virtual = guest physical.
    unsafe impl Hal for DirectMapHal {
        fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
            let Some(layout) = layout(pages).filter(|layout| layout.size() > 0) else {
                return (0, NonNull::dangling());
            };
            // SAFETY: the layout has a non-zero size.
            let pointer = unsafe { alloc_zeroed(layout) };
            match NonNull::new(pointer) {
                Some(pointer) => (pointer.as_ptr() as PhysAddr, pointer),
                // `Dma::new` turns address 0 into `Error::DmaError`.
                None => (0, NonNull::dangling()),
            }
        }

        unsafe fn dma_dealloc(_paddr: PhysAddr, vaddr: NonNull<u8>, pages: usize) -> i32 {
            let Some(layout) = layout(pages) else {
                return -1;
            };
            // SAFETY: per the caller's contract `vaddr` came from `dma_alloc` with `pages`, so
            // from `alloc_zeroed` with this layout, and was not freed yet.
            unsafe { dealloc(vaddr.as_ptr(), layout) };
            0
        }

        unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _size: usize) -> NonNull<u8> {
            // Identity: device regions are mapped at their guest physical address.
            NonNull::new(paddr as usize as *mut u8).expect("MMIO region at address 0")
        }

        unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
            buffer.cast::<u8>().as_ptr() as PhysAddr
        }

        unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {
            // Nothing to copy back: the device wrote the buffer itself (coherent DMA).
        }
    }

    /// A [`Waiter`] for a physical device's requests that reads the counter at every pause
    /// and gives up once `timeout` has passed since the request was submitted.
    ///
    /// Reading the counter in every poll also matters under QEMU `-icount`: a loop that only
    /// reads the used ring lets guest time run far ahead of the device (about 25 us of guest time
    /// per request against about 5 us, docs/transport-mmio-ioreq.md section 11).
    #[derive(Debug)]
    pub struct CounterWaiter {
        timeout_ticks: u64,
        deadline: u64,
        name: &'static str,
    }

    impl CounterWaiter {
        /// A waiter with a deadline of `timeout_ms` milliseconds of guest time per request;
        /// `name` names the device in the message printed when a deadline passes.
        pub fn new(name: &'static str, timeout_ms: u64) -> Self {
            CounterWaiter {
                timeout_ticks: time::ticks_from_micros(timeout_ms.saturating_mul(1000)),
                deadline: u64::MAX,
                name,
            }
        }
    }

    impl Waiter for CounterWaiter {
        fn start(&mut self) {
            self.deadline = time::now().saturating_add(self.timeout_ticks);
        }

        fn pause(&mut self) -> bool {
            if time::now() < self.deadline {
                return true;
            }
            // Not through the logger: the physical device is gone, whatever the loglevel.
            crate::println!(
                "ferry: {}: the physical device did not complete a request in time; \
                 it is failed from now on",
                self.name
            );
            false
        }
    }

    /// Why the passed-through device could not be taken.
    #[derive(Debug)]
    pub enum PassthroughError {
        /// No `virtio,mmio` node under `/passthrough` (configuration).
        NoDevice,
        /// It was already taken (our bug: one transport per window).
        AlreadyTaken,
        /// The domain is not direct-mapped: the device would DMA to the wrong memory
        /// (configuration: the appliance needs `direct-map` and `xen,static-mem`).
        NotDirectMapped {
            /// Where the GIC distributor is.
            distributor: u64,
        },
        /// The window could not be mapped.
        Map(MapError),
        /// `virtio-drivers` refused the window (bad magic, version or device id).
        Transport(MmioError),
    }

    impl fmt::Display for PassthroughError {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self {
                PassthroughError::NoDevice => {
                    write!(f, "no virtio,mmio device under /passthrough")
                }
                PassthroughError::AlreadyTaken => {
                    write!(f, "the passed-through device is already in use")
                }
                PassthroughError::NotDirectMapped { distributor } => write!(
                    f,
                    "this domain is not direct-mapped (GIC distributor at {distributor:#x}): \
                     device DMA needs direct-map and xen,static-mem"
                ),
                PassthroughError::Map(error) => write!(f, "cannot map the device: {error}"),
                PassthroughError::Transport(error) => {
                    write!(f, "not a virtio-mmio device: {error}")
                }
            }
        }
    }

    /// Set once the passed-through window has been handed out.
    static TAKEN: AtomicBool = AtomicBool::new(false);

    /// The first `virtio,mmio` node under `/passthrough` as a `virtio-drivers` transport: maps
    /// its window (Device memory) and checks that the domain is direct-mapped. Once only.
    pub fn passthrough_virtio_mmio(
        platform: &Platform<'_>,
    ) -> Result<(MmioTransport<'static>, Region), PassthroughError> {
        let distributor = platform.gic.regions()[0].base;
        if !is_direct_mapped(&platform.gic) {
            return Err(PassthroughError::NotDirectMapped { distributor });
        }
        let region = platform
            .passthrough
            .iter()
            .find(|device| device.compatible == Some("virtio,mmio"))
            .and_then(|device| device.regions.first().copied())
            .ok_or(PassthroughError::NoDevice)?;
        if TAKEN.swap(true, Ordering::AcqRel) {
            return Err(PassthroughError::AlreadyTaken);
        }
        mmu::map_device(region).map_err(PassthroughError::Map)?;
        let header = NonNull::new(region.base as usize as *mut VirtIOHeader)
            .ok_or(PassthroughError::NoDevice)?;
        // SAFETY: `region` is the device's register window from the device tree (header and
        // config space), now mapped as Device memory at its guest physical address, for the
        // rest of the program; `TAKEN` makes this the only transport over it.
        let transport = unsafe { MmioTransport::new(header, region.size as usize) }
            .map_err(PassthroughError::Transport)?;
        Ok((transport, region))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::Region;

    #[test]
    fn the_host_layout_means_direct_mapped() {
        let guest = Gic::V3 {
            distributor: Region::new(GUEST_GICD_BASE, 0x10000),
            redistributors: Region::new(0x0301_0000, 0x20000),
        };
        assert!(!is_direct_mapped(&guest));
        let host = Gic::V3 {
            distributor: Region::new(0x0800_0000, 0x10000),
            redistributors: Region::new(0x080a_0000, 0xf6_0000),
        };
        assert!(is_direct_mapped(&host));
    }
}
