//! Transports: how an appliance's virtio device reaches its frontend.
//!
//! The first transport serves standard virtio-mmio through Xen IOREQ: the frontend's accesses to
//! its virtio-mmio window are trapped by Xen and forwarded to this appliance, and the frontend's
//! buffers are reached with grant copies (docs/transport-mmio-ioreq.md).
//!
//! - [`grant_memory`]: the frontend's memory through grant copies ([`GrantMemory`]);
//! - [`mmio_ioreq`]: the serve loop - ioreqs in, register emulation, queue service, interrupt
//!   line out.

pub mod grant_memory;
pub mod mmio_ioreq;

pub use grant_memory::GrantMemory;
