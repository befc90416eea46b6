//! The device side of virtio, independent of any transport.
//!
//! This crate owns everything a virtio device does that does not depend on how the frontend
//! reaches it: the split virtqueue as seen by a device ([`queue`]), the device status machine and
//! feature negotiation ([`device`]), and the [`GuestMemory`] seam through which every byte of
//! frontend memory is reached. Transports (an in-process test transport, grants, virtio-mmio over
//! Xen IOREQ) drive a [`Device`]; device models (rng, blk, ...) implement [`DeviceModel`].
//!
//! Everything that comes from the frontend is an allegation: ring indices, descriptor addresses,
//! lengths and flags are validated here before a device model sees them, and nothing a frontend
//! writes may cause a panic. This crate must never touch memory directly: all access goes through
//! [`GuestMemory`], whose reads and writes can fail.
//!
//! Rules cited from the virtio 1.2 specification ("spec") by section number.
#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

extern crate alloc;

pub mod device;
pub mod features;
pub mod memory;
pub mod queue;

pub use device::{Completion, Device, DeviceModel, Fault, LifecycleError, RequestError};
pub use memory::{GuestMemory, MemoryError};
pub use queue::{
    ChainError, ChainReader, ChainWriter, Descriptor, DescriptorChain, Queue, QueueConfigError,
    QueueError, ReadError,
};

/// Who is at fault for an error: every error type in Ferry can say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blame {
    /// The frontend (guest driver) sent something invalid or hostile.
    Frontend,
    /// The physical device the appliance owns failed.
    PhysicalDevice,
    /// The system description (board/system files, sizes) is wrong.
    Configuration,
    /// A bug in Ferry itself.
    Ferry,
}
