//! The virtio-mmio register window the probe drives: found in the device tree, mapped, and
//! reached either through virtio-drivers' `MmioTransport` (wrapped in our `ProbeTransport`) or by
//! single 32-bit register accesses (for the hostile tests and the device reset at the end).
//!
//! Register offsets are virtio 1.2 section 4.2.2 (MMIO device register layout, version 2).

use alloc::format;
use alloc::string::String;
use core::ptr::NonNull;

use ferry_appliance::platform::Region;
use ferry_appliance::{mmu, BootInfo};
use virtio_drivers::transport::mmio::{MmioTransport, VirtIOHeader};

use crate::transport::ProbeTransport;

/// `MagicValue`.
pub const MAGIC_VALUE: usize = 0x000;
/// `Version`.
pub const VERSION: usize = 0x004;
/// `DeviceID`.
pub const DEVICE_ID: usize = 0x008;
/// `DeviceFeatures`.
pub const DEVICE_FEATURES: usize = 0x010;
/// `DeviceFeaturesSel`.
pub const DEVICE_FEATURES_SEL: usize = 0x014;
/// `DriverFeatures`.
pub const DRIVER_FEATURES: usize = 0x020;
/// `DriverFeaturesSel`.
pub const DRIVER_FEATURES_SEL: usize = 0x024;
/// `QueueSel`.
pub const QUEUE_SEL: usize = 0x030;
/// `QueueNumMax`.
pub const QUEUE_NUM_MAX: usize = 0x034;
/// `QueueNum`.
pub const QUEUE_NUM: usize = 0x038;
/// `QueueReady`.
pub const QUEUE_READY: usize = 0x044;
/// `QueueNotify`.
pub const QUEUE_NOTIFY: usize = 0x050;
/// `InterruptStatus`.
pub const INTERRUPT_STATUS: usize = 0x060;
/// `InterruptACK`.
pub const INTERRUPT_ACK: usize = 0x064;
/// `Status`.
pub const STATUS: usize = 0x070;
/// `QueueDescLow` (High at +4).
pub const QUEUE_DESC: usize = 0x080;
/// `QueueDriverLow` (High at +4).
pub const QUEUE_DRIVER: usize = 0x090;
/// `QueueDeviceLow` (High at +4).
pub const QUEUE_DEVICE: usize = 0x0a0;

/// Device status bits (virtio 1.2 section 2.1).
pub const STATUS_ACKNOWLEDGE: u32 = 1;
/// `DRIVER`.
pub const STATUS_DRIVER: u32 = 2;
/// `DRIVER_OK`.
pub const STATUS_DRIVER_OK: u32 = 4;
/// `FEATURES_OK`.
pub const STATUS_FEATURES_OK: u32 = 8;
/// `DEVICE_NEEDS_RESET`.
pub const STATUS_NEEDS_RESET: u32 = 64;

/// `VIRTIO_F_VERSION_1`.
pub const F_VERSION_1: u64 = 1 << 32;
/// `VIRTIO_F_ACCESS_PLATFORM`.
pub const F_ACCESS_PLATFORM: u64 = 1 << 33;

/// "virt" little-endian.
const MAGIC: u32 = 0x7472_6976;

/// The probe's virtio-mmio window: mapped device memory at `base` (PA = VA).
#[derive(Clone, Copy, Debug)]
pub struct Window {
    /// Its guest physical (and virtual) address.
    pub base: usize,
    /// Its size in bytes.
    pub size: usize,
}

impl Window {
    /// The first `/passthrough` device with compatible "virtio,mmio", mapped as device memory,
    /// after checking it is a version-2 virtio-mmio device of type `device_id`.
    pub fn find(boot: &BootInfo, device_id: u32) -> Result<Window, String> {
        let device = boot
            .platform
            .passthrough
            .iter()
            .find(|device| device.compatible == Some("virtio,mmio"))
            .ok_or("no /passthrough node with compatible \"virtio,mmio\"")?;
        let region: Region = *device
            .regions
            .first()
            .ok_or_else(|| format!("{} has no reg", device.name))?;
        if region.size < 0x100 || region.size > 0x1000 {
            return Err(format!(
                "{}: window {region} is not a virtio-mmio register file",
                device.name
            ));
        }
        mmu::map_device(region).map_err(|error| format!("cannot map {region}: {error}"))?;
        let window = Window {
            base: region.base as usize,
            size: region.size as usize,
        };
        let magic = window.read(MAGIC_VALUE);
        if magic != MAGIC {
            return Err(format!("{}: magic {magic:#x}, not virtio", device.name));
        }
        let version = window.read(VERSION);
        if version != 2 {
            return Err(format!(
                "{}: virtio-mmio version {version}, want 2 (no legacy)",
                device.name
            ));
        }
        let found = window.read(DEVICE_ID);
        if found != device_id {
            return Err(format!(
                "{}: device ID {found}, want {device_id}",
                device.name
            ));
        }
        Ok(window)
    }

    /// Reads the 32-bit register at `offset`.
    pub fn read(&self, offset: usize) -> u32 {
        assert!(offset + 4 <= self.size && offset.is_multiple_of(4));
        // SAFETY: `find` mapped `[base, base + size)` as device memory and checked it is a
        // virtio-mmio register file; `offset` is an aligned 32-bit register inside it. The probe
        // is single-threaded and a raw volatile access creates no Rust reference, so it cannot
        // conflict with a transport's accesses.
        unsafe { ((self.base + offset) as *const u32).read_volatile() }
    }

    /// Writes the 32-bit register at `offset`.
    pub fn write(&self, offset: usize, value: u32) {
        assert!(offset + 4 <= self.size && offset.is_multiple_of(4));
        // SAFETY: as in `read`: an aligned register inside the mapped window.
        unsafe { ((self.base + offset) as *mut u32).write_volatile(value) }
    }

    /// The 64 device feature bits.
    pub fn device_features(&self) -> u64 {
        self.write(DEVICE_FEATURES_SEL, 0);
        let low = u64::from(self.read(DEVICE_FEATURES));
        self.write(DEVICE_FEATURES_SEL, 1);
        let high = u64::from(self.read(DEVICE_FEATURES));
        low | high << 32
    }

    /// Resets the device (Status = 0) and waits until it reads back 0 (virtio 1.2 4.2.3.1).
    pub fn reset(&self) -> Result<(), String> {
        self.write(STATUS, 0);
        for _ in 0..1000 {
            if self.read(STATUS) == 0 {
                return Ok(());
            }
        }
        Err(format!(
            "status reads {:#x} after a reset",
            self.read(STATUS)
        ))
    }

    /// A virtio-drivers transport over the window (accepting ACCESS_PLATFORM when offered).
    pub fn transport(&self) -> Result<ProbeTransport, String> {
        let header = NonNull::new(self.base as *mut VirtIOHeader).ok_or("window at address 0")?;
        // SAFETY: `find` mapped the window as device memory for the rest of the program and
        // checked the virtio-mmio header (magic, version 2) at its start; windows are 0x200-aligned,
        // enough for `VirtIOHeader` (u32 fields), and `size` covers the config space after it.
        let inner = unsafe { MmioTransport::new(header, self.size) }
            .map_err(|error| format!("virtio-mmio transport: {error}"))?;
        Ok(ProbeTransport::new(inner))
    }
}
