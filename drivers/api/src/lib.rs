//! The physical-device side of a Ferry appliance, seen through narrow traits.
//!
//! Each appliance owns exactly one physical device. The backends (virtio device models) never see
//! the hardware: they see one of the traits below. Hardware drivers (virtio-mmio through the
//! `virtio-drivers` crate, PL011, CPU RNDR, ...) implement them in the appliance; host tests use the
//! safe software implementations in this crate ([`RamDisk`]) or their own fakes. [`FaultyDisk`]
//! wraps any block device to inject I/O errors on a range of sectors (a disk with a bad range).
//!
//! This crate must never touch hardware or contain `unsafe`.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

mod block;
mod entropy;
mod faulty;
pub mod pattern;

pub use block::{BlockDevice, RamDisk, SECTOR_SIZE};
pub use entropy::EntropySource;
pub use faulty::{BadSectors, BadSectorsError, FailOn, FaultyDisk};

/// A failure of the physical device (not of the frontend, not of our configuration).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceError {
    /// The device reported an I/O failure.
    Io,
    /// The request lies outside what the device holds (a caller bug: backends check ranges first).
    OutOfRange,
    /// The device is read-only.
    ReadOnly,
    /// The device does not support this operation.
    Unsupported,
    /// The device has no data available right now (entropy sources).
    NotReady,
}

impl core::fmt::Display for DeviceError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            DeviceError::Io => "physical device reported an I/O error",
            DeviceError::OutOfRange => "request outside the physical device",
            DeviceError::ReadOnly => "physical device is read-only",
            DeviceError::Unsupported => "operation not supported by the physical device",
            DeviceError::NotReady => "physical device has no data ready",
        })
    }
}
