//! [`MmioDevice`]: a [`Device`] behind a virtio-mmio version 2 register window (spec 4.2).

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use ferry_virtio::device::FAULT_LOG_LEN;
use ferry_virtio::features::{INTERRUPT_CONFIG_CHANGE, INTERRUPT_USED_BUFFER, STATUS_DRIVER_OK};
use ferry_virtio::{Device, DeviceModel, Fault, GuestMemory};

use crate::error::{AccessKind, MmioError};
use crate::register::{Access, Register};
use crate::{CONFIG_OFFSET, MAGIC_VALUE, VENDOR_ID, VERSION};

/// What the transport must do after a register write.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmioEffect {
    /// Nothing: the write is complete.
    None,
    /// The driver notified this queue (QueueNotify, spec 4.2.3.3): call [`MmioDevice::notify`]
    /// with the frontend memory, and inject an interrupt if it returns true. The transport may
    /// answer the trapped access first.
    Notify(u16),
}

/// The values the driver writes for one queue, held until it writes 1 to QueueReady and then
/// handed to [`Device::configure_queue`] (spec 4.2.3.2).
#[derive(Clone, Copy, Debug, Default)]
struct QueueLatch {
    num: u16,
    desc: u64,
    driver: u64,
    device: u64,
    /// The driver wrote 0 to QueueReady while the device was running. [`Device`] keeps a
    /// running queue's configuration, so this layer stops using it instead: QueueReady reads 0
    /// and notifications are not passed on until the device is reset (spec 4.2.2.1, 4.2.2.2).
    stopped: bool,
}

/// Replaces the low or high 32 bits of `addr`.
fn set_half(addr: &mut u64, value: u32, high: bool) {
    *addr = if high {
        (*addr & 0xffff_ffff) | (u64::from(value) << 32)
    } else {
        (*addr & !0xffff_ffff) | u64::from(value)
    };
}

/// A virtio device served through a virtio-mmio version 2 register window.
///
/// The transport calls [`MmioDevice::read`] and [`MmioDevice::write`] for each frontend access,
/// with the offset inside the window. Register semantics follow spec 4.2.2; the lifecycle rules
/// are [`Device`]'s. Mistakes are recorded ([`MmioDevice::take_errors`] for the register level,
/// [`MmioDevice::take_device_faults`] for the device).
#[derive(Debug)]
pub struct MmioDevice<D: DeviceModel> {
    device: Device<D>,
    device_features_sel: u32,
    driver_features_sel: u32,
    queue_sel: u32,
    shm_sel: u32,
    queues: Vec<QueueLatch>,
    errors: VecDeque<MmioError>,
    errors_dropped: u64,
}

impl<D: DeviceModel> MmioDevice<D> {
    /// A device for `model`, offering its features plus the core's (see [`Device::new`]) plus
    /// `transport_features` (VIRTIO_F_ACCESS_PLATFORM when the frontend passes grant addresses,
    /// docs/transport-mmio-ioreq.md section 6). The driver must accept every transport feature:
    /// FEATURES_OK is refused otherwise (`LifecycleError::RequiredFeatureMissing`).
    pub fn new(model: D, transport_features: u64) -> Self {
        let device = Device::new(model, transport_features);
        let queues = (0..device.queue_count())
            .map(|_| QueueLatch::default())
            .collect();
        MmioDevice {
            device,
            device_features_sel: 0,
            driver_features_sel: 0,
            queue_sel: 0,
            shm_sel: 0,
            queues,
            errors: VecDeque::new(),
            errors_dropped: 0,
        }
    }

    /// The wrapped device (status, features, queues, counters).
    pub fn device(&self) -> &Device<D> {
        &self.device
    }
    /// The device model.
    pub fn model(&self) -> &D {
        self.device.model()
    }
    /// The device model, mutably (call [`MmioDevice::config_changed`] after changing its
    /// config). The lifecycle is only driven through registers, so there is no `device_mut`.
    pub fn model_mut(&mut self) -> &mut D {
        self.device.model_mut()
    }

    /// The device changed its configuration: bumps ConfigGeneration and raises a configuration
    /// change interrupt (spec 4.2.2.1). Returns true if the transport must inject it now.
    pub fn config_changed(&mut self) -> bool {
        self.device.config_changed()
    }

    /// The level of the interrupt line: asserted while any InterruptStatus bit is set (spec
    /// 4.2.3.4). Level-triggered transports compare it after every access; edge-triggered ones
    /// inject when [`MmioDevice::notify`] or [`MmioDevice::config_changed`] return true.
    pub fn interrupt_line(&self) -> bool {
        self.device.interrupt_status() != 0
    }

    /// Serves queue `queue` after an [`MmioEffect::Notify`]. Returns true if the frontend must
    /// be interrupted (the InterruptStatus bit is already set).
    pub fn notify<M: GuestMemory + ?Sized>(&mut self, queue: u16, mem: &M) -> bool {
        // Checked again here: the driver may have stopped the queue since the write.
        if self
            .queues
            .get(usize::from(queue))
            .is_some_and(|latch| latch.stopped)
        {
            self.record(MmioError::NotifyStoppedQueue(queue));
            return false;
        }
        self.device.notify(queue, mem)
    }

    /// True while queue `index` is in use: the driver enabled it (QueueReady reads 1) and has
    /// not stopped it since. False for a queue the device does not have. A transport that keeps
    /// per-queue resources (e.g. mapped rings) holds them exactly while this is true.
    pub fn queue_enabled(&self, index: u16) -> bool {
        index < self.device.queue_count() && self.queue_ready(index)
    }

    /// Takes the recorded register-level errors, oldest first.
    pub fn take_errors(&mut self) -> Vec<MmioError> {
        self.errors.drain(..).collect()
    }
    /// Register-level errors dropped because the log was full.
    pub fn errors_dropped(&self) -> u64 {
        self.errors_dropped
    }
    /// Takes the faults the wrapped [`Device`] recorded (lifecycle, queues, requests).
    pub fn take_device_faults(&mut self) -> Vec<Fault<D::Error>> {
        self.device.take_faults()
    }

    fn record(&mut self, error: MmioError) {
        log::debug!("virtio-mmio device {}: {}", self.device.device_id(), error);
        if self.errors.len() == FAULT_LOG_LEN {
            self.errors.pop_front();
            self.errors_dropped += 1;
        }
        self.errors.push_back(error);
    }

    /// The queue QueueSel names, if the device has it.
    fn selected_queue(&self) -> Option<u16> {
        u16::try_from(self.queue_sel)
            .ok()
            .filter(|&q| q < self.device.queue_count())
    }

    /// What QueueReady reads for queue `index`: enabled in the device and not stopped here.
    fn queue_ready(&self, index: u16) -> bool {
        self.device.queue(index).is_some_and(|q| q.ready())
            && !self.queues[usize::from(index)].stopped
    }

    /// Checks width and alignment, and finds the register (None for config space). Records and
    /// returns Err for an access that must be refused.
    fn decode(&mut self, offset: u64, size: u8, kind: AccessKind) -> Result<Option<Register>, ()> {
        if offset >= CONFIG_OFFSET {
            // Spec 4.2.2.2: 8-bit accesses for 8-bit fields, 16-bit aligned for 16-bit ones,
            // 32-bit aligned for 32- and 64-bit ones.
            if !matches!(size, 1 | 2 | 4) {
                self.record(MmioError::BadWidth { offset, size, kind });
                return Err(());
            }
            if !offset.is_multiple_of(u64::from(size)) {
                self.record(MmioError::Misaligned { offset, size, kind });
                return Err(());
            }
            return Ok(None);
        }
        // Spec 4.2.2.2: "MUST only use 32 bit wide and aligned reads and writes to access the
        // control registers".
        if size != 4 {
            self.record(MmioError::BadWidth { offset, size, kind });
            return Err(());
        }
        if !offset.is_multiple_of(4) {
            self.record(MmioError::Misaligned { offset, size, kind });
            return Err(());
        }
        match Register::at(offset) {
            Some(register) => Ok(Some(register)),
            None => {
                self.record(MmioError::UnknownRegister { offset, kind });
                Err(())
            }
        }
    }

    /// The config space offset of an access at window `offset`, if it lies inside the device's
    /// configuration.
    fn config_offset(&mut self, offset: u64, size: u8, kind: AccessKind) -> Option<u32> {
        let inside = u32::try_from(offset - CONFIG_OFFSET).ok().filter(|&start| {
            start
                .checked_add(u32::from(size))
                .is_some_and(|end| end <= self.device.model().config_len())
        });
        if inside.is_none() {
            self.record(MmioError::OutsideConfig { offset, size, kind });
        }
        inside
    }

    /// A frontend read of `size` bytes at `offset` in the window. Returns the value, zero-
    /// extended; 0 for an access the driver must not make (recorded).
    pub fn read(&mut self, offset: u64, size: u8) -> u32 {
        let register = match self.decode(offset, size, AccessKind::Read) {
            Err(()) => return 0,
            Ok(None) => return self.read_config(offset, size),
            Ok(Some(register)) => register,
        };
        if register.access() == Access::WriteOnly {
            self.record(MmioError::ReadOfWriteOnly(register));
            return 0;
        }
        match register {
            Register::MagicValue => MAGIC_VALUE,
            Register::Version => VERSION,
            Register::DeviceId => self.device.device_id(),
            Register::VendorId => VENDOR_ID,
            Register::DeviceFeatures => {
                let features = self.device.device_features();
                match self.device_features_sel {
                    0 => features as u32,
                    1 => (features >> 32) as u32,
                    // Ferry offers no feature past bit 63.
                    _ => 0,
                }
            }
            // Spec 4.2.2: "zero (0x0) if the queue is not available".
            Register::QueueNumMax => self
                .selected_queue()
                .and_then(|q| self.device.queue(q))
                .map_or(0, |q| u32::from(q.max_size())),
            Register::QueueReady => self
                .selected_queue()
                .is_some_and(|q| self.queue_ready(q))
                .into(),
            Register::InterruptStatus => self.device.interrupt_status(),
            Register::Status => u32::from(self.device.status()),
            // Spec 4.2.2, SHMLen/SHMBase: "Reading from a non-existent region (i.e. where the ID
            // written to SHMSel is unused) results in a length of -1" (and a base of -1); Ferry's
            // devices have no shared memory regions.
            Register::ShmLenLow
            | Register::ShmLenHigh
            | Register::ShmBaseLow
            | Register::ShmBaseHigh => u32::MAX,
            // No VIRTIO_F_RING_RESET: no queue reset is ever in progress.
            Register::QueueReset => 0,
            Register::ConfigGeneration => self.device.config_generation(),
            // Write-only registers were answered above.
            _ => 0,
        }
    }

    fn read_config(&mut self, offset: u64, size: u8) -> u32 {
        let Some(start) = self.config_offset(offset, size, AccessKind::Read) else {
            return 0;
        };
        let mut bytes = [0u8; 4];
        self.device
            .read_config(start, &mut bytes[..usize::from(size)]);
        u32::from_le_bytes(bytes)
    }

    /// A frontend write of `size` bytes at `offset` in the window (`value` holds the bytes in
    /// its low end; a transport with a 64-bit data field truncates it). A write the driver must
    /// not make is ignored (and recorded).
    pub fn write(&mut self, offset: u64, size: u8, value: u32) -> MmioEffect {
        let register = match self.decode(offset, size, AccessKind::Write) {
            Err(()) => return MmioEffect::None,
            Ok(None) => {
                self.write_config(offset, size, value);
                return MmioEffect::None;
            }
            Ok(Some(register)) => register,
        };
        if register.access() == Access::ReadOnly {
            self.record(MmioError::WriteToReadOnly { register, value });
            return MmioEffect::None;
        }
        if register.is_queue_layout() {
            self.write_queue_layout(register, value);
            return MmioEffect::None;
        }
        match register {
            Register::DeviceFeaturesSel => self.device_features_sel = value,
            Register::DriverFeaturesSel => self.driver_features_sel = value,
            // Word 2 and up: the core refuses FEATURES_OK if any such bit is set.
            Register::DriverFeatures => self
                .device
                .set_driver_features_word(self.driver_features_sel, value),
            // Any value may be selected; QueueNumMax then reads 0 (spec 4.2.3.2 step 3).
            Register::QueueSel => self.queue_sel = value,
            Register::QueueReady => self.write_queue_ready(value),
            Register::QueueNotify => return self.write_queue_notify(value),
            Register::InterruptAck => {
                let defined = INTERRUPT_USED_BUFFER | INTERRUPT_CONFIG_CHANGE;
                if value & !defined != 0 {
                    self.record(MmioError::UndefinedInterruptBits { value });
                }
                self.device.ack_interrupt(value & defined);
            }
            Register::Status => self.write_status(value),
            // Only regions that exist could be selected for anything; none do.
            Register::ShmSel => self.shm_sel = value,
            Register::QueueReset => self.record(MmioError::QueueResetNotSupported {
                queue: self.queue_sel,
            }),
            // Read-only registers and queue layout registers were handled above.
            _ => {}
        }
        MmioEffect::None
    }

    fn write_config(&mut self, offset: u64, size: u8, value: u32) {
        if let Some(start) = self.config_offset(offset, size, AccessKind::Write) {
            // The core records a write to a read-only field.
            self.device
                .write_config(start, &value.to_le_bytes()[..usize::from(size)]);
        }
    }

    fn write_status(&mut self, value: u32) {
        let Ok(status) = u8::try_from(value) else {
            self.record(MmioError::UndefinedStatusBits { value });
            return;
        };
        self.device.set_status(status);
        if status == 0 {
            // Spec 4.2.2.1: reset clears InterruptStatus and every QueueReady (the core does);
            // the selectors and latched queue values go back to their initial state too.
            self.device_features_sel = 0;
            self.driver_features_sel = 0;
            self.queue_sel = 0;
            self.shm_sel = 0;
            self.queues.fill(QueueLatch::default());
        }
    }

    fn write_queue_layout(&mut self, register: Register, value: u32) {
        let Some(queue) = self.selected_queue() else {
            self.record(MmioError::NoSuchQueue {
                register,
                queue: self.queue_sel,
            });
            return;
        };
        if self.queue_ready(queue) {
            self.record(MmioError::QueueLayoutWhileReady { register, queue });
            return;
        }
        let max = self.device.queue(queue).map_or(0, |q| q.max_size());
        let latch = &mut self.queues[usize::from(queue)];
        match register {
            Register::QueueNum => match u16::try_from(value) {
                // Spec 4.2.2.2: "a value to QueueNum which is less than or equal to the value
                // presented by the device in QueueNumMax". Power of two is checked on enable.
                Ok(num) if num <= max => latch.num = num,
                _ => self.record(MmioError::QueueNumTooLarge { queue, value, max }),
            },
            Register::QueueDescLow => set_half(&mut latch.desc, value, false),
            Register::QueueDescHigh => set_half(&mut latch.desc, value, true),
            Register::QueueDriverLow => set_half(&mut latch.driver, value, false),
            Register::QueueDriverHigh => set_half(&mut latch.driver, value, true),
            Register::QueueDeviceLow => set_half(&mut latch.device, value, false),
            Register::QueueDeviceHigh => set_half(&mut latch.device, value, true),
            _ => {}
        }
    }

    fn write_queue_ready(&mut self, value: u32) {
        let Some(queue) = self.selected_queue() else {
            self.record(MmioError::NoSuchQueue {
                register: Register::QueueReady,
                queue: self.queue_sel,
            });
            return;
        };
        let index = usize::from(queue);
        match value {
            1 => {
                if self.queue_ready(queue) {
                    // Already enabled; enabling again would rewind the device's ring indices.
                    return;
                }
                let latch = self.queues[index];
                // The core validates size and alignment (spec 2.7) and refuses, recording
                // the fault, once DRIVER_OK is set; QueueReady then keeps reading 0.
                if self.device.configure_queue(
                    queue,
                    latch.num,
                    (latch.desc, latch.driver, latch.device),
                    true,
                ) {
                    self.queues[index].stopped = false;
                }
            }
            0 => {
                if !self.queue_ready(queue) {
                    return;
                }
                // Spec 4.2.2.2: "To stop using the queue the driver MUST write zero (0x0) to
                // this QueueReady register". Before DRIVER_OK the core disables the queue; after
                // it the core keeps running queues as they are, so this layer stops forwarding
                // notifications until the next reset (spec 4.2.2.1: no queue access while
                // QueueReady is zero). Re-enabling needs a device reset: without
                // VIRTIO_F_RING_RESET a queue is only set up during initialisation.
                if self.device.status() & STATUS_DRIVER_OK != 0 {
                    self.queues[index].stopped = true;
                } else {
                    let latch = self.queues[index];
                    self.device.configure_queue(
                        queue,
                        latch.num,
                        (latch.desc, latch.driver, latch.device),
                        false,
                    );
                }
            }
            _ => self.record(MmioError::BadQueueReady { queue, value }),
        }
    }

    fn write_queue_notify(&mut self, value: u32) -> MmioEffect {
        // Spec 4.2.3.3: without VIRTIO_F_NOTIFICATION_DATA the value is the 16-bit queue index.
        let Some(queue) = u16::try_from(value)
            .ok()
            .filter(|&q| q < self.device.queue_count())
        else {
            self.record(MmioError::BadNotify { value });
            return MmioEffect::None;
        };
        if self.queues[usize::from(queue)].stopped {
            self.record(MmioError::NotifyStoppedQueue(queue));
            return MmioEffect::None;
        }
        MmioEffect::Notify(queue)
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use core::cell::RefCell;
    use std::vec;

    use ferry_virtio::features::*;
    use ferry_virtio::{
        Blame, Completion, DescriptorChain, LifecycleError, MemoryError, QueueConfigError,
        RequestError,
    };

    use super::*;

    /// A model feature bit, to see the model's features in DeviceFeatures.
    const MODEL_FEATURE: u64 = 1 << 3;
    /// Config: a read-only u32, one writable byte, three read-only bytes.
    const CONFIG: [u8; 8] = [0x44, 0x33, 0x22, 0x11, 0x00, 0xa1, 0xa2, 0xa3];

    #[derive(Clone, Copy, Debug, PartialEq)]
    struct NoError;
    impl RequestError for NoError {
        fn blame(&self) -> Blame {
            Blame::Ferry
        }
    }

    /// Two queues (sizes up to 8 and 16), 8 bytes of config, completes every chain with 0.
    struct TestModel {
        config: [u8; 8],
        served: u32,
    }

    impl DeviceModel for TestModel {
        type Error = NoError;
        fn device_id(&self) -> u32 {
            4
        }
        fn features(&self) -> u64 {
            MODEL_FEATURE
        }
        fn queue_count(&self) -> u16 {
            2
        }
        fn queue_max_size(&self, index: u16) -> u16 {
            [8, 16][usize::from(index)]
        }
        fn config_len(&self) -> u32 {
            8
        }
        fn read_config(&self, offset: u32, data: &mut [u8]) {
            let start = offset as usize;
            data.copy_from_slice(&self.config[start..start + data.len()]);
        }
        fn write_config(&mut self, offset: u32, data: &[u8]) -> bool {
            if offset == 4 && data.len() == 1 {
                self.config[4] = data[0];
                true
            } else {
                false
            }
        }
        fn process<M: GuestMemory + ?Sized>(
            &mut self,
            _queue: u16,
            _chain: &DescriptorChain,
            _mem: &M,
        ) -> Completion<NoError> {
            self.served += 1;
            Completion::ok(0)
        }
    }

    struct Ram(RefCell<std::vec::Vec<u8>>);
    impl GuestMemory for Ram {
        fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
            let ram = self.0.borrow();
            let start = addr as usize;
            let src = ram
                .get(start..start + buf.len())
                .ok_or(MemoryError::new(addr, buf.len()))?;
            buf.copy_from_slice(src);
            Ok(())
        }
        fn write(&self, addr: u64, data: &[u8]) -> Result<(), MemoryError> {
            let mut ram = self.0.borrow_mut();
            let start = addr as usize;
            ram.get_mut(start..start + data.len())
                .ok_or(MemoryError::new(addr, data.len()))?
                .copy_from_slice(data);
            Ok(())
        }
    }

    fn mmio(transport_features: u64) -> MmioDevice<TestModel> {
        MmioDevice::new(
            TestModel {
                config: CONFIG,
                served: 0,
            },
            transport_features,
        )
    }

    fn r(m: &mut MmioDevice<TestModel>, register: Register) -> u32 {
        m.read(register.offset(), 4)
    }

    fn w(m: &mut MmioDevice<TestModel>, register: Register, value: u32) {
        assert_eq!(m.write(register.offset(), 4, value), MmioEffect::None);
    }

    /// Acknowledge, driver, features (VERSION_1 only), FEATURES_OK.
    fn negotiate(m: &mut MmioDevice<TestModel>) {
        w(m, Register::Status, 0);
        w(
            m,
            Register::Status,
            u32::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER),
        );
        w(m, Register::DriverFeaturesSel, 0);
        w(m, Register::DriverFeatures, 0);
        w(m, Register::DriverFeaturesSel, 1);
        w(m, Register::DriverFeatures, 1);
        w(
            m,
            Register::Status,
            u32::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK),
        );
        assert_eq!(
            r(m, Register::Status),
            u32::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK)
        );
    }

    fn driver_ok(m: &mut MmioDevice<TestModel>) {
        w(
            m,
            Register::Status,
            u32::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK),
        );
    }

    /// Selects `queue` and writes its layout the way spec 4.2.3.2 lists it.
    fn set_queue(m: &mut MmioDevice<TestModel>, queue: u32, num: u32, rings: (u64, u64, u64)) {
        w(m, Register::QueueSel, queue);
        w(m, Register::QueueNum, num);
        for (low, high, addr) in [
            (Register::QueueDescLow, Register::QueueDescHigh, rings.0),
            (Register::QueueDriverLow, Register::QueueDriverHigh, rings.1),
            (Register::QueueDeviceLow, Register::QueueDeviceHigh, rings.2),
        ] {
            w(m, low, addr as u32);
            w(m, high, (addr >> 32) as u32);
        }
    }

    const RINGS: (u64, u64, u64) = (0x1000, 0x2000, 0x3000);

    #[test]
    fn identity_registers() {
        let mut m = mmio(0);
        assert_eq!(r(&mut m, Register::MagicValue), 0x7472_6976);
        assert_eq!(r(&mut m, Register::Version), 2);
        assert_eq!(r(&mut m, Register::DeviceId), 4);
        assert_eq!(r(&mut m, Register::VendorId), VENDOR_ID);
        assert!(m.take_errors().is_empty());
    }

    #[test]
    fn control_registers_take_only_32_bit_accesses() {
        let mut m = mmio(0);
        for size in [0u8, 1, 2, 3, 8] {
            assert_eq!(m.read(0x000, size), 0, "MagicValue with {size} bytes");
            assert_eq!(
                m.write(Register::Status.offset(), size, 1),
                MmioEffect::None
            );
        }
        assert_eq!(m.device().status(), 0, "narrow Status writes ignored");
        let errors = m.take_errors();
        assert_eq!(errors.len(), 10);
        assert_eq!(
            errors[1],
            MmioError::BadWidth {
                offset: 0x070,
                size: 0,
                kind: AccessKind::Write
            }
        );
        assert_eq!(
            errors[8],
            MmioError::BadWidth {
                offset: 0,
                size: 8,
                kind: AccessKind::Read
            }
        );
        assert!(errors.iter().all(|e| e.blame() == Blame::Frontend));
    }

    #[test]
    fn misaligned_accesses_are_refused() {
        let mut m = mmio(0);
        assert_eq!(m.read(0x002, 4), 0);
        assert_eq!(m.write(0x072, 4, 1), MmioEffect::None);
        assert_eq!(m.device().status(), 0);
        // Config space: 16-bit accesses 2-aligned, 32-bit ones 4-aligned.
        assert_eq!(m.read(0x101, 2), 0);
        assert_eq!(m.read(0x102, 4), 0);
        assert_eq!(
            m.take_errors(),
            [
                MmioError::Misaligned {
                    offset: 0x002,
                    size: 4,
                    kind: AccessKind::Read
                },
                MmioError::Misaligned {
                    offset: 0x072,
                    size: 4,
                    kind: AccessKind::Write
                },
                MmioError::Misaligned {
                    offset: 0x101,
                    size: 2,
                    kind: AccessKind::Read
                },
                MmioError::Misaligned {
                    offset: 0x102,
                    size: 4,
                    kind: AccessKind::Read
                },
            ]
        );
    }

    #[test]
    fn read_only_registers_ignore_writes() {
        let mut m = mmio(0);
        negotiate(&mut m);
        driver_ok(&mut m);
        assert!(m.config_changed());
        for register in [
            Register::MagicValue,
            Register::Version,
            Register::DeviceId,
            Register::VendorId,
            Register::DeviceFeatures,
            Register::QueueNumMax,
            Register::InterruptStatus,
            Register::ConfigGeneration,
        ] {
            w(&mut m, register, 0);
            assert_eq!(
                m.take_errors(),
                [MmioError::WriteToReadOnly { register, value: 0 }]
            );
        }
        assert_eq!(r(&mut m, Register::MagicValue), MAGIC_VALUE);
        assert_eq!(r(&mut m, Register::QueueNumMax), 8);
        assert_eq!(
            r(&mut m, Register::InterruptStatus),
            INTERRUPT_CONFIG_CHANGE,
            "writing InterruptStatus acknowledges nothing"
        );
        assert_eq!(r(&mut m, Register::ConfigGeneration), 1);
    }

    #[test]
    fn write_only_registers_read_as_zero() {
        let mut m = mmio(0);
        w(&mut m, Register::QueueSel, 1);
        w(&mut m, Register::DeviceFeaturesSel, 1);
        for register in [
            Register::DeviceFeaturesSel,
            Register::DriverFeatures,
            Register::DriverFeaturesSel,
            Register::QueueSel,
            Register::QueueNum,
            Register::QueueNotify,
            Register::InterruptAck,
            Register::QueueDescLow,
            Register::QueueDeviceHigh,
            Register::ShmSel,
        ] {
            assert_eq!(r(&mut m, register), 0, "{register:?}");
            assert_eq!(m.take_errors(), [MmioError::ReadOfWriteOnly(register)]);
        }
    }

    #[test]
    fn unknown_offsets_below_config_are_refused() {
        let mut m = mmio(0);
        // Reserved gaps, and the legacy GuestPageSize / QueueAlign / QueuePFN (spec 4.2.4).
        for offset in [0x018, 0x028, 0x03c, 0x040, 0x048, 0x0c4, 0x0f8] {
            assert_eq!(m.read(offset, 4), 0);
            assert_eq!(m.write(offset, 4, 0x1000), MmioEffect::None);
            assert_eq!(
                m.take_errors(),
                [
                    MmioError::UnknownRegister {
                        offset,
                        kind: AccessKind::Read
                    },
                    MmioError::UnknownRegister {
                        offset,
                        kind: AccessKind::Write
                    }
                ]
            );
        }
    }

    #[test]
    fn device_features_show_the_selected_word() {
        let mut m = mmio(VIRTIO_F_ACCESS_PLATFORM);
        w(&mut m, Register::DeviceFeaturesSel, 0);
        let low = r(&mut m, Register::DeviceFeatures);
        assert_eq!(
            u64::from(low),
            MODEL_FEATURE | VIRTIO_F_INDIRECT_DESC | VIRTIO_F_EVENT_IDX
        );
        w(&mut m, Register::DeviceFeaturesSel, 1);
        assert_eq!(
            r(&mut m, Register::DeviceFeatures),
            0b11,
            "VERSION_1 (32) and ACCESS_PLATFORM (33)"
        );
        for sel in [2, 3, u32::MAX] {
            w(&mut m, Register::DeviceFeaturesSel, sel);
            assert_eq!(r(&mut m, Register::DeviceFeatures), 0, "word {sel}");
        }

        let mut plain = mmio(0);
        w(&mut plain, Register::DeviceFeaturesSel, 1);
        assert_eq!(r(&mut plain, Register::DeviceFeatures), 0b01);
        assert!(m.take_errors().is_empty() && plain.take_errors().is_empty());
    }

    #[test]
    fn driver_features_go_to_the_selected_word() {
        let mut m = mmio(VIRTIO_F_ACCESS_PLATFORM);
        w(
            &mut m,
            Register::Status,
            u32::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER),
        );
        w(&mut m, Register::DriverFeaturesSel, 0);
        w(&mut m, Register::DriverFeatures, MODEL_FEATURE as u32);
        w(&mut m, Register::DriverFeaturesSel, 1);
        w(&mut m, Register::DriverFeatures, 0b11);
        assert_eq!(
            m.device().driver_features(),
            MODEL_FEATURE | VIRTIO_F_VERSION_1 | VIRTIO_F_ACCESS_PLATFORM
        );
        // A bit in word 2 was never offered: FEATURES_OK must not stick (spec 3.1.1).
        w(&mut m, Register::DriverFeaturesSel, 2);
        w(&mut m, Register::DriverFeatures, 1);
        w(
            &mut m,
            Register::Status,
            u32::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK),
        );
        assert_eq!(
            r(&mut m, Register::Status) & u32::from(STATUS_FEATURES_OK),
            0
        );
        assert!(matches!(
            m.take_device_faults()[..],
            [Fault::Lifecycle(LifecycleError::FeaturesNotOffered { .. })]
        ));
    }

    #[test]
    fn transport_features_are_required() {
        // VERSION_1 alone (what `negotiate` writes) leaves ACCESS_PLATFORM out: refused.
        let mut m = mmio(VIRTIO_F_ACCESS_PLATFORM);
        w(
            &mut m,
            Register::Status,
            u32::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER),
        );
        w(&mut m, Register::DriverFeaturesSel, 1);
        w(&mut m, Register::DriverFeatures, 0b01);
        w(
            &mut m,
            Register::Status,
            u32::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK),
        );
        assert_eq!(
            r(&mut m, Register::Status),
            u32::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER)
        );
        assert_eq!(
            m.take_device_faults(),
            [Fault::Lifecycle(LifecycleError::RequiredFeatureMissing {
                missing: VIRTIO_F_ACCESS_PLATFORM
            })]
        );
        // Accepting it as well: FEATURES_OK sticks.
        w(&mut m, Register::DriverFeatures, 0b11);
        w(
            &mut m,
            Register::Status,
            u32::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK),
        );
        assert_eq!(
            r(&mut m, Register::Status),
            u32::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK)
        );
        assert!(m.take_device_faults().is_empty() && m.take_errors().is_empty());
    }

    #[test]
    fn queue_values_are_latched_until_ready() {
        let mut m = mmio(0);
        negotiate(&mut m);
        let rings = (0x1_0000_1000, 0x2_0000_2000, 0x3_0000_3000);
        set_queue(&mut m, 1, 16, rings);
        assert!(
            !m.device().queue(1).unwrap().ready(),
            "nothing before QueueReady"
        );
        assert_eq!(r(&mut m, Register::QueueNumMax), 16);
        assert_eq!(r(&mut m, Register::QueueReady), 0);
        w(&mut m, Register::QueueReady, 1);
        let q = m.device().queue(1).unwrap();
        assert!(q.ready());
        assert_eq!(q.size(), 16);
        assert_eq!(q.addresses(), rings);
        assert_eq!(r(&mut m, Register::QueueReady), 1);
        // Queue 0 is separate and still off.
        w(&mut m, Register::QueueSel, 0);
        assert_eq!(r(&mut m, Register::QueueReady), 0);
        assert_eq!(r(&mut m, Register::QueueNumMax), 8);
        assert!(m.take_errors().is_empty());

        // Spec 4.2.2.2: no layout writes while the queue is ready.
        w(&mut m, Register::QueueSel, 1);
        w(&mut m, Register::QueueNum, 8);
        w(&mut m, Register::QueueDescLow, 0);
        assert_eq!(
            m.take_errors(),
            [
                MmioError::QueueLayoutWhileReady {
                    register: Register::QueueNum,
                    queue: 1
                },
                MmioError::QueueLayoutWhileReady {
                    register: Register::QueueDescLow,
                    queue: 1
                },
            ]
        );
        let q = m.device().queue(1).unwrap();
        assert_eq!((q.size(), q.addresses()), (16, rings));
        // Writing 1 again changes nothing.
        w(&mut m, Register::QueueReady, 1);
        assert!(m.take_errors().is_empty() && m.take_device_faults().is_empty());
    }

    #[test]
    fn invalid_queue_layouts_leave_queue_ready_at_zero() {
        let mut m = mmio(0);
        negotiate(&mut m);
        // Larger than QueueNumMax: ignored, so the latched size stays 0.
        set_queue(&mut m, 0, 16, RINGS);
        assert_eq!(
            m.take_errors(),
            [MmioError::QueueNumTooLarge {
                queue: 0,
                value: 16,
                max: 8
            }]
        );
        w(&mut m, Register::QueueReady, 1);
        assert_eq!(r(&mut m, Register::QueueReady), 0);
        // Misaligned descriptor table: the core refuses (spec 2.7).
        set_queue(&mut m, 0, 8, (0x1008, 0x2000, 0x3000));
        w(&mut m, Register::QueueReady, 1);
        assert_eq!(r(&mut m, Register::QueueReady), 0);
        w(&mut m, Register::QueueReady, 2);
        assert_eq!(
            m.take_errors(),
            [MmioError::BadQueueReady { queue: 0, value: 2 }]
        );
        assert_eq!(
            m.take_device_faults(),
            [
                Fault::Lifecycle(LifecycleError::QueueConfig {
                    queue: 0,
                    error: QueueConfigError::BadSize(0)
                }),
                Fault::Lifecycle(LifecycleError::QueueConfig {
                    queue: 0,
                    error: QueueConfigError::Misaligned(0x1008)
                }),
            ]
        );
    }

    #[test]
    fn nonexistent_queues_read_zero_and_refuse_layout() {
        let mut m = mmio(0);
        negotiate(&mut m);
        for queue in [2, 0x1_0002] {
            w(&mut m, Register::QueueSel, queue);
            assert_eq!(r(&mut m, Register::QueueNumMax), 0, "spec 4.2.3.2 step 3");
            assert_eq!(r(&mut m, Register::QueueReady), 0);
            assert!(m.take_errors().is_empty(), "probing is allowed");
            w(&mut m, Register::QueueNum, 8);
            w(&mut m, Register::QueueReady, 1);
            assert_eq!(
                m.take_errors(),
                [
                    MmioError::NoSuchQueue {
                        register: Register::QueueNum,
                        queue
                    },
                    MmioError::NoSuchQueue {
                        register: Register::QueueReady,
                        queue
                    },
                ]
            );
        }
    }

    #[test]
    fn reset_clears_latches_and_selectors() {
        let mut m = mmio(0);
        negotiate(&mut m);
        set_queue(&mut m, 1, 16, RINGS);
        w(&mut m, Register::QueueReady, 1);
        set_queue(&mut m, 0, 8, RINGS);
        w(&mut m, Register::DeviceFeaturesSel, 1);
        driver_ok(&mut m);

        w(&mut m, Register::Status, 0);
        assert_eq!(r(&mut m, Register::Status), 0);
        // Spec 4.2.2.1: QueueReady of every queue reads 0 after a reset.
        for queue in [0, 1] {
            w(&mut m, Register::QueueSel, queue);
            assert_eq!(r(&mut m, Register::QueueReady), 0);
        }
        // The selectors went back to 0 (QueueSel was just rewritten).
        assert_eq!(
            u64::from(r(&mut m, Register::DeviceFeatures)),
            MODEL_FEATURE | VIRTIO_F_INDIRECT_DESC | VIRTIO_F_EVENT_IDX
        );
        // Queue 0's latched layout is gone: enabling without writing it again fails.
        negotiate(&mut m);
        w(&mut m, Register::QueueSel, 0);
        w(&mut m, Register::QueueReady, 1);
        assert_eq!(r(&mut m, Register::QueueReady), 0);
        assert_eq!(
            m.take_device_faults(),
            [Fault::Lifecycle(LifecycleError::QueueConfig {
                queue: 0,
                error: QueueConfigError::BadSize(0)
            })]
        );
        assert!(m.take_errors().is_empty());
    }

    #[test]
    fn queue_ready_zero_stops_a_queue() {
        let mut m = mmio(0);
        negotiate(&mut m);
        // Before DRIVER_OK the core disables the queue.
        set_queue(&mut m, 0, 8, RINGS);
        w(&mut m, Register::QueueReady, 1);
        w(&mut m, Register::QueueReady, 0);
        assert_eq!(r(&mut m, Register::QueueReady), 0);
        assert!(!m.device().queue(0).unwrap().ready());
        // Re-enable, run, then stop while running (virtio-drivers does this on drop).
        w(&mut m, Register::QueueReady, 1);
        driver_ok(&mut m);
        assert_eq!(
            m.write(Register::QueueNotify.offset(), 4, 0),
            MmioEffect::Notify(0)
        );
        assert!(m.queue_enabled(0));
        assert!(!m.queue_enabled(1) && !m.queue_enabled(9));
        w(&mut m, Register::QueueReady, 0);
        assert_eq!(r(&mut m, Register::QueueReady), 0, "reads back 0 (4.2.2.2)");
        assert!(!m.queue_enabled(0), "a stopped queue is not in use");
        assert!(m.device().queue(0).unwrap().ready());
        // The layout may be rewritten now, as virtio-drivers' queue_unset does.
        w(&mut m, Register::QueueNum, 0);
        w(&mut m, Register::QueueDescLow, 0);
        assert!(m.take_errors().is_empty());
        // No notification reaches the device any more.
        assert_eq!(
            m.write(Register::QueueNotify.offset(), 4, 0),
            MmioEffect::None
        );
        let ram = Ram(RefCell::new(vec![0; 0x4000]));
        assert!(!m.notify(0, &ram));
        assert_eq!(
            m.take_errors(),
            [
                MmioError::NotifyStoppedQueue(0),
                MmioError::NotifyStoppedQueue(0)
            ]
        );
        // Enabling again while running is refused by the core; a reset clears the stop.
        set_queue(&mut m, 0, 8, RINGS);
        w(&mut m, Register::QueueReady, 1);
        assert_eq!(r(&mut m, Register::QueueReady), 0);
        assert_eq!(
            m.take_device_faults(),
            [Fault::Lifecycle(LifecycleError::QueueChangedWhileRunning(
                0
            ))]
        );
        w(&mut m, Register::Status, 0);
        assert!(!m.queue_enabled(0));
        negotiate(&mut m);
        set_queue(&mut m, 0, 8, RINGS);
        w(&mut m, Register::QueueReady, 1);
        assert_eq!(r(&mut m, Register::QueueReady), 1);
        assert!(m.queue_enabled(0));
        driver_ok(&mut m);
        assert_eq!(
            m.write(Register::QueueNotify.offset(), 4, 0),
            MmioEffect::Notify(0)
        );
    }

    #[test]
    fn notify_serves_the_queue_and_raises_the_interrupt_line() {
        let mut m = mmio(0);
        negotiate(&mut m);
        set_queue(&mut m, 0, 8, RINGS);
        w(&mut m, Register::QueueReady, 1);
        driver_ok(&mut m);

        // One device-writable descriptor made available at head 0.
        let ram = Ram(RefCell::new(vec![0; 0x5000]));
        let mut desc = [0u8; 16];
        desc[..8].copy_from_slice(&0x4000u64.to_le_bytes());
        desc[8..12].copy_from_slice(&16u32.to_le_bytes());
        desc[12..14].copy_from_slice(&2u16.to_le_bytes());
        ram.write(RINGS.0, &desc).unwrap();
        ram.write_u16(RINGS.1 + 4, 0).unwrap();
        ram.write_u16(RINGS.1 + 2, 1).unwrap();

        assert!(!m.interrupt_line());
        let effect = m.write(Register::QueueNotify.offset(), 4, 0);
        assert_eq!(effect, MmioEffect::Notify(0));
        assert!(m.notify(0, &ram), "no NO_INTERRUPT flag: interrupt");
        assert_eq!(ram.read_u16(RINGS.2 + 2).unwrap(), 1, "used idx");
        assert_eq!(m.model().served, 1);
        assert!(m.interrupt_line());
        assert_eq!(r(&mut m, Register::InterruptStatus), INTERRUPT_USED_BUFFER);

        // InterruptACK: undefined bits are recorded, the defined ones still acknowledged.
        w(
            &mut m,
            Register::InterruptAck,
            0x100 | INTERRUPT_USED_BUFFER,
        );
        assert_eq!(r(&mut m, Register::InterruptStatus), 0);
        assert!(!m.interrupt_line());
        assert_eq!(
            m.take_errors(),
            [MmioError::UndefinedInterruptBits { value: 0x101 }]
        );

        // Indices that name no queue; NOTIFICATION_DATA is not offered (spec 4.2.3.3).
        for value in [2, 0x1_0000] {
            assert_eq!(
                m.write(Register::QueueNotify.offset(), 4, value),
                MmioEffect::None
            );
            assert_eq!(m.take_errors(), [MmioError::BadNotify { value }]);
        }
        assert!(m.take_device_faults().is_empty());
    }

    #[test]
    fn notify_before_driver_ok_is_refused_by_the_core() {
        let mut m = mmio(0);
        negotiate(&mut m);
        let effect = m.write(Register::QueueNotify.offset(), 4, 1);
        assert_eq!(effect, MmioEffect::Notify(1));
        let ram = Ram(RefCell::new(vec![0; 16]));
        assert!(!m.notify(1, &ram));
        assert_eq!(
            m.take_device_faults(),
            [Fault::Lifecycle(LifecycleError::NotifyWhileStopped(1))]
        );
    }

    #[test]
    fn config_space_reads_and_writes() {
        let mut m = mmio(0);
        assert_eq!(m.read(0x100, 4), 0x1122_3344);
        assert_eq!(m.read(0x102, 2), 0x1122);
        assert_eq!(m.read(0x101, 1), 0x33);
        assert_eq!(m.read(0x104, 4), 0xa3a2_a100);
        assert!(m.take_errors().is_empty());

        // A 64-bit field is read as two 32-bit halves; one 64-bit access is refused.
        assert_eq!(m.read(0x100, 8), 0);
        // Past the device's 8 bytes of config.
        assert_eq!(m.read(0x108, 4), 0);
        assert_eq!(m.read(0x106, 4), 0, "straddles the end");
        assert_eq!(m.read(u64::MAX - 3, 4), 0);
        assert_eq!(
            m.take_errors(),
            [
                MmioError::BadWidth {
                    offset: 0x100,
                    size: 8,
                    kind: AccessKind::Read
                },
                MmioError::OutsideConfig {
                    offset: 0x108,
                    size: 4,
                    kind: AccessKind::Read
                },
                MmioError::Misaligned {
                    offset: 0x106,
                    size: 4,
                    kind: AccessKind::Read
                },
                MmioError::OutsideConfig {
                    offset: u64::MAX - 3,
                    size: 4,
                    kind: AccessKind::Read
                },
            ]
        );

        // The writable byte takes the low byte of the value.
        assert_eq!(m.write(0x104, 1, 0xff5a), MmioEffect::None);
        assert_eq!(m.read(0x104, 1), 0x5a);
        // A read-only field: the core records the refusal.
        assert_eq!(m.write(0x100, 4, 0), MmioEffect::None);
        assert_eq!(m.read(0x100, 4), 0x1122_3344);
        assert_eq!(
            m.take_device_faults(),
            [Fault::Lifecycle(LifecycleError::ConfigWriteRefused {
                offset: 0,
                len: 4
            })]
        );
        assert_eq!(m.write(0x10c, 4, 0), MmioEffect::None);
        assert_eq!(
            m.take_errors(),
            [MmioError::OutsideConfig {
                offset: 0x10c,
                size: 4,
                kind: AccessKind::Write
            }]
        );
    }

    #[test]
    fn config_generation_follows_config_changes() {
        let mut m = mmio(0);
        assert_eq!(r(&mut m, Register::ConfigGeneration), 0);
        assert!(!m.config_changed(), "no interrupt before DRIVER_OK");
        assert_eq!(r(&mut m, Register::ConfigGeneration), 1);
        negotiate(&mut m);
        driver_ok(&mut m);
        m.model_mut().config[0] = 0x99;
        assert!(m.config_changed());
        assert_eq!(r(&mut m, Register::ConfigGeneration), 2);
        assert_eq!(m.read(0x100, 1), 0x99);
        assert_eq!(
            r(&mut m, Register::InterruptStatus),
            INTERRUPT_CONFIG_CHANGE
        );
        assert!(m.interrupt_line());
    }

    #[test]
    fn shared_memory_registers_say_no_region() {
        let mut m = mmio(0);
        for sel in [0, 1, 255] {
            w(&mut m, Register::ShmSel, sel);
            for register in [
                Register::ShmLenLow,
                Register::ShmLenHigh,
                Register::ShmBaseLow,
                Register::ShmBaseHigh,
            ] {
                assert_eq!(
                    r(&mut m, register),
                    u32::MAX,
                    "{register:?} for region {sel}"
                );
            }
        }
        assert!(m.take_errors().is_empty());
        w(&mut m, Register::ShmLenLow, 0);
        assert_eq!(
            m.take_errors(),
            [MmioError::WriteToReadOnly {
                register: Register::ShmLenLow,
                value: 0
            }]
        );
    }

    #[test]
    fn status_and_queue_reset_refuse_undefined_values() {
        let mut m = mmio(0);
        w(&mut m, Register::Status, 0x101);
        assert_eq!(r(&mut m, Register::Status), 0);
        assert_eq!(r(&mut m, Register::QueueReset), 0);
        w(&mut m, Register::QueueSel, 1);
        w(&mut m, Register::QueueReset, 1);
        assert_eq!(
            m.take_errors(),
            [
                MmioError::UndefinedStatusBits { value: 0x101 },
                MmioError::QueueResetNotSupported { queue: 1 },
            ]
        );
    }

    #[test]
    fn the_error_log_is_bounded() {
        let mut m = mmio(0);
        for _ in 0..FAULT_LOG_LEN + 8 {
            let _ = m.read(0x001, 1);
        }
        assert_eq!(m.take_errors().len(), FAULT_LOG_LEN);
        assert_eq!(m.errors_dropped(), 8);
    }
}
