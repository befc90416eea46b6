//! The virtio-mmio register interface (version 2, virtio 1.2 section 4.2.2), emulated on top of
//! the transport-agnostic [`ferry_virtio::Device`].
//!
//! This crate owns what a virtio-mmio register window adds to a device: the register map
//! ([`Register`]), the selector registers (DeviceFeaturesSel, DriverFeaturesSel, QueueSel,
//! SHMSel), the per-queue values latched until the driver writes QueueReady, and the access
//! rules of spec 4.2.2.2 (32-bit aligned control registers, no writes to read-only registers, no
//! reads of write-only ones). Everything else - status machine, feature negotiation, queue
//! validation, config space contents, interrupt reasons - stays in the [`ferry_virtio::Device`]
//! it wraps.
//!
//! A transport (Xen IOREQ, or a test harness) hands every access of the frontend to
//! [`MmioDevice::read`] / [`MmioDevice::write`] with the offset inside the window and the access
//! size. A write returns an [`MmioEffect`]; for [`MmioEffect::Notify`] the transport calls
//! [`MmioDevice::notify`] with the frontend memory, when it suits it (after answering the
//! trapped access, for instance), and injects an interrupt if that returns true. The interrupt
//! line's level is [`MmioDevice::interrupt_line`] (InterruptStatus != 0, spec 4.2.3.4).
//!
//! Every register access is the frontend's allegation: a bad one is answered the way hardware
//! would (reads return 0, writes are ignored), recorded as an [`MmioError`] (always
//! `Blame::Frontend`) and never panics. This crate must never reach frontend memory itself
//! except through the [`ferry_virtio::GuestMemory`] the transport passes to
//! [`MmioDevice::notify`]. The legacy (version 1) interface is not emulated.
#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

extern crate alloc;

mod device;
mod error;
mod register;

pub use device::{MmioDevice, MmioEffect};
pub use error::{AccessKind, MmioError};
pub use register::{Access, Register};

/// MagicValue: "virt" in little-endian (spec 4.2.2).
pub const MAGIC_VALUE: u32 = 0x7472_6976;
/// Version: 2, the non-legacy interface (spec 4.2.2.1: "The device MUST return value 0x2").
pub const VERSION: u32 = 2;
/// VendorID Ferry reports: "FRRY" in little-endian (the spec leaves the value to the device).
pub const VENDOR_ID: u32 = u32::from_le_bytes(*b"FRRY");
/// Offset of the device-specific configuration space in the window (spec 4.2.2, table 4.1).
pub const CONFIG_OFFSET: u64 = 0x100;
/// Size of one register window as Ferry lays them out (libxl's `VIRTIO_MMIO_DEV_SIZE`; see
/// docs/transport-mmio-ioreq.md section 2). Only [`CONFIG_OFFSET`] matters to this crate.
pub const WINDOW_SIZE: u64 = 0x200;
