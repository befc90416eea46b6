//! Passed-through virtio devices as the physical device of a Ferry appliance.
//!
//! An appliance that owns a virtio-mmio device (QEMU's `virtio-blk-device` or
//! `virtio-rng-device`, passed through by Xen) drives it with the `virtio-drivers` crate and
//! hands it to a backend through Ferry's narrow traits: [`VirtioDisk`] is a
//! [`ferry_drivers::BlockDevice`], [`VirtioEntropy`] an [`ferry_drivers::EntropySource`].
//!
//! This crate owns the translation between the two worlds: range and size checks before a
//! request reaches the device (so nothing a backend asks for can trip one of `virtio-drivers`'
//! assertions), splitting large transfers into bounded requests, and mapping
//! [`virtio_drivers::Error`] onto [`DeviceError`]. It never touches hardware itself: the caller
//! builds the `Transport` (an `MmioTransport` over the passthrough window in the appliance, an
//! in-process transport over a Ferry device in host tests) and the `Hal` that shares buffers
//! with the device.
//!
//! # Unsafe code
//! Unsafe code is denied, and allowed only where `virtio-drivers`' non-blocking block API needs
//! it (`VirtioDisk`'s request submission and completion): the caller of that API promises that
//! the request's buffers stay valid and untouched until the device has used them, which no
//! signature can express. Each such block says why its buffers outlive the request.
//!
//! # Limitations
//! - Polling, no interrupts: every read and write is submitted and then waited for by polling
//!   the used ring, pausing with a [`Waiter`] between polls. A waiter with a deadline bounds the
//!   wait on a dead device: the request is abandoned and the disk fails for good (see
//!   [`VirtioDisk`]); the device is not reset. FLUSH, GET_ID and the entropy device still use
//!   `virtio-drivers`' blocking API (it has no non-blocking variant for them) and wait forever.
//! - Features are the ones `virtio-drivers` 0.13 negotiates (blk: RO, FLUSH; both: VERSION_1,
//!   INDIRECT_DESC, EVENT_IDX). Discard and write-zeroes are not offered to the device, the
//!   block size is reported as 512 and configuration changes (a resized disk) are not followed.
#![no_std]
#![deny(unsafe_code)]
#![deny(missing_docs)]

extern crate alloc;

mod disk;
mod entropy;

pub use disk::{Spin, VirtioDisk, Waiter, FALLBACK_ID, MAX_REQUEST_BYTES};
pub use entropy::{VirtioEntropy, MAX_ENTROPY_REQUEST};
/// The `virtio-drivers` crate this one is built on, so that callers name the same `Hal`,
/// `Transport` and `MmioTransport` types.
pub use virtio_drivers;

use ferry_drivers::DeviceError;
use virtio_drivers::transport::DeviceType;

/// Why a passed-through virtio device could not be taken into use.
#[derive(Debug, PartialEq, Eq)]
pub enum ProbeError {
    /// The transport leads to another kind of device (a configuration error: the system
    /// description passed the wrong MMIO window to this appliance).
    WrongDeviceType {
        /// The device type this driver serves.
        expected: DeviceType,
        /// The device type the transport reports.
        found: DeviceType,
    },
    /// `virtio-drivers` refused the device during initialisation (the physical device failed or
    /// does not offer what the driver needs, e.g. a queue large enough).
    Driver(virtio_drivers::Error),
}

impl core::fmt::Display for ProbeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ProbeError::WrongDeviceType { expected, found } => write!(
                f,
                "passed-through virtio device is a {found:?} device, expected {expected:?}"
            ),
            ProbeError::Driver(e) => write!(f, "virtio device initialisation failed: {e}"),
        }
    }
}

/// Checks that `transport` leads to a device of type `expected`.
fn check_type<T: virtio_drivers::transport::Transport>(
    transport: &T,
    expected: DeviceType,
) -> Result<(), ProbeError> {
    let found = transport.device_type();
    if found == expected {
        Ok(())
    } else {
        Err(ProbeError::WrongDeviceType { expected, found })
    }
}

/// Maps an error of the `virtio-drivers` crate onto the physical-device error a backend sees.
///
/// The device's own statuses keep their meaning (IOERR, UNSUPP, NOT_READY, spec 5.2.6); every
/// other failure happens in the driver's handling of the queue (full queue, a used ring that
/// names the wrong chain, DMA allocation) and is reported as an I/O failure.
pub fn map_error(error: virtio_drivers::Error) -> DeviceError {
    use virtio_drivers::Error;
    match error {
        Error::IoError => DeviceError::Io,
        Error::Unsupported => DeviceError::Unsupported,
        Error::NotReady => DeviceError::NotReady,
        Error::QueueFull
        | Error::WrongToken
        | Error::AlreadyUsed
        | Error::InvalidParam
        | Error::DmaError
        | Error::ConfigSpaceTooSmall
        | Error::ConfigSpaceMissing
        | Error::SocketDeviceError(_) => DeviceError::Io,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_statuses_keep_their_meaning() {
        use virtio_drivers::Error;
        assert_eq!(map_error(Error::IoError), DeviceError::Io);
        assert_eq!(map_error(Error::Unsupported), DeviceError::Unsupported);
        assert_eq!(map_error(Error::NotReady), DeviceError::NotReady);
        assert_eq!(map_error(Error::QueueFull), DeviceError::Io);
        assert_eq!(map_error(Error::WrongToken), DeviceError::Io);
        assert_eq!(map_error(Error::DmaError), DeviceError::Io);
    }
}
