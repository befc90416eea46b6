//! The control registers of a virtio-mmio version 2 window (spec 4.2.2, table 4.1).

/// Which way the driver may access a register (the "direction" column of table 4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// R: the driver only reads it.
    ReadOnly,
    /// W: the driver only writes it.
    WriteOnly,
    /// RW: both.
    ReadWrite,
}

/// One control register below the config space (spec 4.2.2, table 4.1). All are 32 bits wide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Register {
    /// 0x000, R: 0x74726976 ("virt").
    MagicValue,
    /// 0x004, R: 2.
    Version,
    /// 0x008, R: virtio device ID (spec 5).
    DeviceId,
    /// 0x00c, R: vendor ID.
    VendorId,
    /// 0x010, R: the 32 device feature bits selected by DeviceFeaturesSel.
    DeviceFeatures,
    /// 0x014, W: selects the word DeviceFeatures shows.
    DeviceFeaturesSel,
    /// 0x020, W: the 32 driver feature bits selected by DriverFeaturesSel.
    DriverFeatures,
    /// 0x024, W: selects the word DriverFeatures writes.
    DriverFeaturesSel,
    /// 0x030, W: selects the queue the Queue* registers apply to.
    QueueSel,
    /// 0x034, R: largest size of the selected queue, 0 if it does not exist.
    QueueNumMax,
    /// 0x038, W: size of the selected queue.
    QueueNum,
    /// 0x044, RW: the selected queue is ready.
    QueueReady,
    /// 0x050, W: available buffer notification (a queue index).
    QueueNotify,
    /// 0x060, R: pending interrupt reasons.
    InterruptStatus,
    /// 0x064, W: acknowledges interrupt reasons.
    InterruptAck,
    /// 0x070, RW: device status (spec 2.1); writing 0 resets the device.
    Status,
    /// 0x080, W: descriptor area address, low 32 bits.
    QueueDescLow,
    /// 0x084, W: descriptor area address, high 32 bits.
    QueueDescHigh,
    /// 0x090, W: driver area (available ring) address, low 32 bits.
    QueueDriverLow,
    /// 0x094, W: driver area address, high 32 bits.
    QueueDriverHigh,
    /// 0x0a0, W: device area (used ring) address, low 32 bits.
    QueueDeviceLow,
    /// 0x0a4, W: device area address, high 32 bits.
    QueueDeviceHigh,
    /// 0x0ac, W: selects a shared memory region.
    ShmSel,
    /// 0x0b0, R: length of the selected region, low 32 bits.
    ShmLenLow,
    /// 0x0b4, R: length of the selected region, high 32 bits.
    ShmLenHigh,
    /// 0x0b8, R: base of the selected region, low 32 bits.
    ShmBaseLow,
    /// 0x0bc, R: base of the selected region, high 32 bits.
    ShmBaseHigh,
    /// 0x0c0, RW: resets the selected queue (only with VIRTIO_F_RING_RESET).
    QueueReset,
    /// 0x0fc, R: configuration generation (spec 2.5.1).
    ConfigGeneration,
}

/// Every register, in offset order.
const ALL: [Register; 29] = [
    Register::MagicValue,
    Register::Version,
    Register::DeviceId,
    Register::VendorId,
    Register::DeviceFeatures,
    Register::DeviceFeaturesSel,
    Register::DriverFeatures,
    Register::DriverFeaturesSel,
    Register::QueueSel,
    Register::QueueNumMax,
    Register::QueueNum,
    Register::QueueReady,
    Register::QueueNotify,
    Register::InterruptStatus,
    Register::InterruptAck,
    Register::Status,
    Register::QueueDescLow,
    Register::QueueDescHigh,
    Register::QueueDriverLow,
    Register::QueueDriverHigh,
    Register::QueueDeviceLow,
    Register::QueueDeviceHigh,
    Register::ShmSel,
    Register::ShmLenLow,
    Register::ShmLenHigh,
    Register::ShmBaseLow,
    Register::ShmBaseHigh,
    Register::QueueReset,
    Register::ConfigGeneration,
];

impl Register {
    /// The register at `offset`, if table 4.1 has one there. The legacy-only registers
    /// (GuestPageSize 0x028, QueueAlign 0x03c, QueuePFN 0x040; spec 4.2.4) are not registers
    /// of a version 2 device.
    pub fn at(offset: u64) -> Option<Register> {
        ALL.into_iter().find(|r| r.offset() == offset)
    }

    /// The register's offset in the window.
    pub fn offset(self) -> u64 {
        match self {
            Register::MagicValue => 0x000,
            Register::Version => 0x004,
            Register::DeviceId => 0x008,
            Register::VendorId => 0x00c,
            Register::DeviceFeatures => 0x010,
            Register::DeviceFeaturesSel => 0x014,
            Register::DriverFeatures => 0x020,
            Register::DriverFeaturesSel => 0x024,
            Register::QueueSel => 0x030,
            Register::QueueNumMax => 0x034,
            Register::QueueNum => 0x038,
            Register::QueueReady => 0x044,
            Register::QueueNotify => 0x050,
            Register::InterruptStatus => 0x060,
            Register::InterruptAck => 0x064,
            Register::Status => 0x070,
            Register::QueueDescLow => 0x080,
            Register::QueueDescHigh => 0x084,
            Register::QueueDriverLow => 0x090,
            Register::QueueDriverHigh => 0x094,
            Register::QueueDeviceLow => 0x0a0,
            Register::QueueDeviceHigh => 0x0a4,
            Register::ShmSel => 0x0ac,
            Register::ShmLenLow => 0x0b0,
            Register::ShmLenHigh => 0x0b4,
            Register::ShmBaseLow => 0x0b8,
            Register::ShmBaseHigh => 0x0bc,
            Register::QueueReset => 0x0c0,
            Register::ConfigGeneration => 0x0fc,
        }
    }

    /// Which way the driver may access the register (table 4.1).
    pub fn access(self) -> Access {
        match self {
            Register::MagicValue
            | Register::Version
            | Register::DeviceId
            | Register::VendorId
            | Register::DeviceFeatures
            | Register::QueueNumMax
            | Register::InterruptStatus
            | Register::ShmLenLow
            | Register::ShmLenHigh
            | Register::ShmBaseLow
            | Register::ShmBaseHigh
            | Register::ConfigGeneration => Access::ReadOnly,
            Register::DeviceFeaturesSel
            | Register::DriverFeatures
            | Register::DriverFeaturesSel
            | Register::QueueSel
            | Register::QueueNum
            | Register::QueueNotify
            | Register::InterruptAck
            | Register::QueueDescLow
            | Register::QueueDescHigh
            | Register::QueueDriverLow
            | Register::QueueDriverHigh
            | Register::QueueDeviceLow
            | Register::QueueDeviceHigh
            | Register::ShmSel => Access::WriteOnly,
            Register::QueueReady | Register::Status | Register::QueueReset => Access::ReadWrite,
        }
    }

    /// True for the registers the driver must not touch while the selected queue is ready
    /// (spec 4.2.2.2: "When QueueReady is not zero, the driver MUST NOT access QueueNum,
    /// QueueDescLow, ...").
    pub fn is_queue_layout(self) -> bool {
        matches!(
            self,
            Register::QueueNum
                | Register::QueueDescLow
                | Register::QueueDescHigh
                | Register::QueueDriverLow
                | Register::QueueDriverHigh
                | Register::QueueDeviceLow
                | Register::QueueDeviceHigh
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_distinct_aligned_and_below_config() {
        for (i, r) in ALL.iter().enumerate() {
            assert_eq!(r.offset() % 4, 0, "{r:?}");
            assert!(r.offset() < crate::CONFIG_OFFSET, "{r:?}");
            assert_eq!(Register::at(r.offset()), Some(*r));
            if i > 0 {
                assert!(ALL[i - 1].offset() < r.offset(), "table in order at {r:?}");
            }
        }
    }

    #[test]
    fn legacy_and_reserved_offsets_are_not_registers() {
        for offset in [
            0x018, 0x01c, 0x028, 0x03c, 0x040, 0x048, 0x0a8, 0x0c4, 0x0f8, 0x100,
        ] {
            assert_eq!(Register::at(offset), None, "{offset:#x}");
        }
    }
}
