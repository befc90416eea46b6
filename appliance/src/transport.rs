//! Transports: how an appliance's virtio device reaches its frontend.
//!
//! The first transport serves standard virtio-mmio through Xen IOREQ: the frontend's accesses to
//! its virtio-mmio window are trapped by Xen and forwarded to this appliance, and the frontend's
//! buffers are reached with grant copies (docs/transport-mmio-ioreq.md).
