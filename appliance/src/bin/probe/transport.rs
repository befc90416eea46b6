//! The probe's virtio-drivers transport: virtio-drivers' `MmioTransport` with one change, the
//! one Linux's virtio core makes too (`vring_transport_features`): VIRTIO_F_ACCESS_PLATFORM is
//! accepted whenever the device offers it, whatever the device driver asked for.
//!
//! virtio-drivers 0.13 negotiates a fixed feature set per device type that never includes
//! ACCESS_PLATFORM. A grant-based Ferry backend requires it (it reaches only memory the frontend
//! granted, so a driver that does not accept it would put guest-physical addresses in the rings)
//! and refuses FEATURES_OK without it. In direct mode QEMU's own device does not offer it, so
//! nothing changes there.
//!
//! virtio-drivers does not read the status back after FEATURES_OK (virtio 1.2 section 3.1.1 step
//! 6), so [`check_running`] does, after a driver's `new`: a refused negotiation is a clean
//! failure instead of a request that never completes.

use alloc::format;
use alloc::string::String;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use ferry_appliance::println;
use virtio_drivers::transport::mmio::MmioTransport;
use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::PhysAddr;
use zerocopy::{FromBytes, Immutable, IntoBytes};

use crate::window::{Window, F_ACCESS_PLATFORM, STATUS, STATUS_DRIVER_OK, STATUS_FEATURES_OK};

/// The driver features last written (for the messages of [`check_running`]).
static WRITTEN: AtomicU64 = AtomicU64::new(0);
/// Whether the negotiated features were printed (once per boot).
static SHOWN: AtomicBool = AtomicBool::new(false);

/// `MmioTransport`, accepting VIRTIO_F_ACCESS_PLATFORM when offered; everything else forwarded.
pub struct ProbeTransport {
    inner: MmioTransport<'static>,
    /// The device features last read.
    offered: u64,
}

impl ProbeTransport {
    /// Wraps `inner`.
    pub fn new(inner: MmioTransport<'static>) -> Self {
        ProbeTransport { inner, offered: 0 }
    }
}

/// Checks that the device took FEATURES_OK and DRIVER_OK after a virtio-drivers driver's `new`.
pub fn check_running(window: &Window) -> Result<(), String> {
    let status = window.read(STATUS);
    let features = WRITTEN.load(Ordering::Relaxed);
    if status & STATUS_FEATURES_OK == 0 {
        Err(format!(
            "the device refused driver features {features:#x} (status {status:#x}, no \
             FEATURES_OK)"
        ))
    } else if status & STATUS_DRIVER_OK == 0 {
        Err(format!(
            "the device did not take DRIVER_OK (status {status:#x}, features {features:#x})"
        ))
    } else {
        Ok(())
    }
}

impl Transport for ProbeTransport {
    fn device_type(&self) -> DeviceType {
        self.inner.device_type()
    }

    fn read_device_features(&mut self) -> u64 {
        self.offered = self.inner.read_device_features();
        self.offered
    }

    fn write_driver_features(&mut self, driver_features: u64) {
        let features = driver_features | (self.offered & F_ACCESS_PLATFORM);
        WRITTEN.store(features, Ordering::Relaxed);
        self.inner.write_driver_features(features)
    }

    fn max_queue_size(&mut self, queue: u16) -> u32 {
        self.inner.max_queue_size(queue)
    }

    fn notify(&mut self, queue: u16) {
        self.inner.notify(queue)
    }

    fn get_status(&self) -> DeviceStatus {
        self.inner.get_status()
    }

    fn set_status(&mut self, status: DeviceStatus) {
        self.inner.set_status(status);
        let negotiating =
            status.contains(DeviceStatus::FEATURES_OK) && !status.contains(DeviceStatus::DRIVER_OK);
        if negotiating
            && self.inner.get_status().contains(DeviceStatus::FEATURES_OK)
            && !SHOWN.swap(true, Ordering::Relaxed)
        {
            println!(
                "ferry: probe: negotiated features {:#x}",
                WRITTEN.load(Ordering::Relaxed)
            );
        }
    }

    fn set_guest_page_size(&mut self, guest_page_size: u32) {
        self.inner.set_guest_page_size(guest_page_size)
    }

    fn requires_legacy_layout(&self) -> bool {
        self.inner.requires_legacy_layout()
    }

    fn queue_set(
        &mut self,
        queue: u16,
        size: u32,
        descriptors: PhysAddr,
        driver_area: PhysAddr,
        device_area: PhysAddr,
    ) {
        self.inner
            .queue_set(queue, size, descriptors, driver_area, device_area)
    }

    fn queue_unset(&mut self, queue: u16) {
        self.inner.queue_unset(queue)
    }

    fn queue_used(&mut self, queue: u16) -> bool {
        self.inner.queue_used(queue)
    }

    fn ack_interrupt(&mut self) -> InterruptStatus {
        self.inner.ack_interrupt()
    }

    fn read_config_generation(&self) -> u32 {
        self.inner.read_config_generation()
    }

    fn read_config_space<T: FromBytes + IntoBytes>(
        &self,
        offset: usize,
    ) -> virtio_drivers::Result<T> {
        self.inner.read_config_space(offset)
    }

    fn write_config_space<T: IntoBytes + Immutable>(
        &mut self,
        offset: usize,
        value: T,
    ) -> virtio_drivers::Result<()> {
        self.inner.write_config_space(offset, value)
    }
}
