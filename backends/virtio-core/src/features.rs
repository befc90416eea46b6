//! Feature bits and status bits shared by all device types (spec 2.1, 6).

/// Status: the guest has noticed the device (spec 2.1).
pub const STATUS_ACKNOWLEDGE: u8 = 1;
/// Status: the guest knows how to drive the device.
pub const STATUS_DRIVER: u8 = 2;
/// Status: the driver is set up and ready to drive the device.
pub const STATUS_DRIVER_OK: u8 = 4;
/// Status: feature negotiation is complete.
pub const STATUS_FEATURES_OK: u8 = 8;
/// Status: the device hit an error it cannot recover from; the driver must reset it.
pub const STATUS_DEVICE_NEEDS_RESET: u8 = 64;
/// Status: the driver gave up on the device.
pub const STATUS_FAILED: u8 = 128;

/// Descriptors may refer to indirect descriptor tables (spec 2.7.5.3).
pub const VIRTIO_F_INDIRECT_DESC: u64 = 1 << 28;
/// used_event / avail_event notification suppression (spec 2.7.7, 2.7.10).
pub const VIRTIO_F_EVENT_IDX: u64 = 1 << 29;
/// The device is a modern (non-legacy) device (spec 6).
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// The device reaches memory through a platform translation (grants, IOMMU) (spec 6).
pub const VIRTIO_F_ACCESS_PLATFORM: u64 = 1 << 33;

/// Interrupt status bit: a used buffer was added to a queue (spec 4.2.2, InterruptStatus).
pub const INTERRUPT_USED_BUFFER: u32 = 1;
/// Interrupt status bit: the configuration (or NEEDS_RESET) changed.
pub const INTERRUPT_CONFIG_CHANGE: u32 = 2;
