//! Register accesses a driver must not make (spec 4.2.2.2), as recorded by [`crate::MmioDevice`].

use core::fmt;

use ferry_virtio::Blame;

use crate::register::Register;

/// Whether an access was a read or a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessKind {
    /// A load by the frontend.
    Read,
    /// A store by the frontend.
    Write,
}

/// A register access the frontend must not make. The access was answered like hardware would
/// (a read returned 0, a write was ignored) unless the variant says otherwise. Every variant is
/// the frontend's fault ([`MmioError::blame`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmioError {
    /// Control registers take only 32-bit accesses; config space 8, 16 or 32-bit ones, with a
    /// 64-bit field read as two 32-bit halves (spec 4.2.2.2).
    BadWidth {
        /// Offset in the window.
        offset: u64,
        /// Access size in bytes.
        size: u8,
        /// Read or write.
        kind: AccessKind,
    },
    /// An access not aligned to its own size (spec 4.2.2.2: "32 bit wide and aligned").
    Misaligned {
        /// Offset in the window.
        offset: u64,
        /// Access size in bytes.
        size: u8,
        /// Read or write.
        kind: AccessKind,
    },
    /// No register at this offset below the config space: reserved, or legacy-only (spec
    /// 4.2.2.2: "MUST NOT access memory locations not described in the table").
    UnknownRegister {
        /// Offset in the window.
        offset: u64,
        /// Read or write.
        kind: AccessKind,
    },
    /// A read of a write-only register (spec 4.2.2.2).
    ReadOfWriteOnly(Register),
    /// A write to a read-only register (spec 4.2.2.2).
    WriteToReadOnly {
        /// The register.
        register: Register,
        /// The value written.
        value: u32,
    },
    /// A config space access beyond the device's configuration (spec 4.2.2.2: locations
    /// "described in the device specification" only).
    OutsideConfig {
        /// Offset in the window.
        offset: u64,
        /// Access size in bytes.
        size: u8,
        /// Read or write.
        kind: AccessKind,
    },
    /// A queue layout register written while QueueSel names no queue of the device.
    NoSuchQueue {
        /// The register.
        register: Register,
        /// The value of QueueSel.
        queue: u32,
    },
    /// A queue layout register written while the queue is ready (spec 4.2.2.2: "When
    /// QueueReady is not zero, the driver MUST NOT access QueueNum, QueueDescLow, ...").
    QueueLayoutWhileReady {
        /// The register.
        register: Register,
        /// The selected queue.
        queue: u16,
    },
    /// QueueNum larger than QueueNumMax (spec 4.2.2.2).
    QueueNumTooLarge {
        /// The selected queue.
        queue: u16,
        /// The value written.
        value: u32,
        /// QueueNumMax of that queue.
        max: u16,
    },
    /// QueueReady written with something other than 0 or 1.
    BadQueueReady {
        /// The selected queue.
        queue: u16,
        /// The value written.
        value: u32,
    },
    /// QueueNotify naming no queue of the device. VIRTIO_F_NOTIFICATION_DATA is never offered,
    /// so the value must be a plain queue index (spec 4.2.3.3).
    BadNotify {
        /// The value written.
        value: u32,
    },
    /// A notification for a queue the driver stopped by writing 0 to QueueReady; the device
    /// must not access it (spec 4.2.2.1: "MUST NOT access virtual queue contents when
    /// QueueReady is zero").
    NotifyStoppedQueue(u16),
    /// InterruptACK with bits other than the two defined ones (spec 4.2.2.2: "MUST NOT set any
    /// of the undefined bits"). The defined bits were still acknowledged.
    UndefinedInterruptBits {
        /// The value written.
        value: u32,
    },
    /// Status written with bits above the 8-bit device status field (spec 2.1).
    UndefinedStatusBits {
        /// The value written.
        value: u32,
    },
    /// QueueReset written although VIRTIO_F_RING_RESET is not supported by this transport
    /// (spec 4.2.2, table 4.1: only "if VIRTIO_F_RING_RESET has been negotiated").
    QueueResetNotSupported {
        /// The value of QueueSel.
        queue: u32,
    },
}

impl MmioError {
    /// Whose fault it is: always the frontend's, which made the access.
    pub fn blame(&self) -> Blame {
        Blame::Frontend
    }
}

impl fmt::Display for MmioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MmioError::BadWidth { offset, size, kind } => {
                write!(f, "{kind:?} of {size} bytes at {offset:#x} has a width the register does not take")
            }
            MmioError::Misaligned { offset, size, kind } => {
                write!(f, "{kind:?} of {size} bytes at {offset:#x} is not aligned")
            }
            MmioError::UnknownRegister { offset, kind } => {
                write!(f, "{kind:?} at {offset:#x}, where there is no register")
            }
            MmioError::ReadOfWriteOnly(register) => {
                write!(f, "read of write-only register {register:?}")
            }
            MmioError::WriteToReadOnly { register, value } => {
                write!(f, "write of {value:#x} to read-only register {register:?}")
            }
            MmioError::OutsideConfig { offset, size, kind } => {
                write!(
                    f,
                    "{kind:?} of {size} bytes at {offset:#x} is outside the device's config space"
                )
            }
            MmioError::NoSuchQueue { register, queue } => {
                write!(f, "write to {register:?} while QueueSel names queue {queue}, which does not exist")
            }
            MmioError::QueueLayoutWhileReady { register, queue } => {
                write!(f, "write to {register:?} while queue {queue} is ready")
            }
            MmioError::QueueNumTooLarge { queue, value, max } => {
                write!(
                    f,
                    "QueueNum {value} for queue {queue} exceeds QueueNumMax {max}"
                )
            }
            MmioError::BadQueueReady { queue, value } => {
                write!(f, "QueueReady written with {value:#x} for queue {queue}")
            }
            MmioError::BadNotify { value } => {
                write!(f, "QueueNotify with {value:#x}, which names no queue")
            }
            MmioError::NotifyStoppedQueue(queue) => {
                write!(
                    f,
                    "notification for queue {queue}, which the driver stopped"
                )
            }
            MmioError::UndefinedInterruptBits { value } => {
                write!(f, "InterruptACK with undefined bits: {value:#x}")
            }
            MmioError::UndefinedStatusBits { value } => {
                write!(
                    f,
                    "Status written with bits above the status byte: {value:#x}"
                )
            }
            MmioError::QueueResetNotSupported { queue } => {
                write!(
                    f,
                    "QueueReset for queue {queue} without VIRTIO_F_RING_RESET"
                )
            }
        }
    }
}
