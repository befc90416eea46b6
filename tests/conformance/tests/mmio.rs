//! Conformance over virtio-mmio registers: the `virtio-drivers` crate's drivers drive Ferry's
//! device models through `ferry-virtio-mmio`, one register access at a time.
//!
//! [`MmioRegisterTransport`] implements virtio-drivers' `Transport` trait with exactly the
//! register accesses that virtio-drivers' own `MmioTransport` makes for a version 2 (modern)
//! device (virtio-drivers 0.13, `src/transport/mmio.rs`), but each access is a call to
//! `MmioDevice::read` / `MmioDevice::write` instead of a volatile load or store. Register
//! offsets are written out from the spec's table (4.2.2) here, not taken from the crate under
//! test. Frontend memory is the harness' `HostMemory` (only what `TestHal` allocated or shared).
//!
//! virtio-drivers never accepts VIRTIO_F_ACCESS_PLATFORM, which a grant-based transport requires,
//! so against such a device the transport can also behave like Linux's virtio core
//! ([`MmioRegisterTransport::accept_access_platform`]).

use std::cell::{Cell, RefCell};
use std::mem::{align_of, size_of};
use std::rc::Rc;

use ferry_backend_blk::{Blk, FEATURE_FLUSH};
use ferry_backend_rng::Rng;
use ferry_conformance::{pattern, HostMemory, RecordingSource, TestHal};
use ferry_drivers::{RamDisk, SECTOR_SIZE};
use ferry_virtio::features::*;
use ferry_virtio::{DeviceModel, Fault, LifecycleError};
use ferry_virtio_mmio::{MmioDevice, MmioEffect};
use virtio_drivers::device::blk::{VirtIOBlk, SECTOR_SIZE as VD_SECTOR};
use virtio_drivers::device::rng::VirtIORng;
use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::PhysAddr;
use zerocopy::{FromBytes, Immutable, IntoBytes};

// Spec 4.2.2, table 4.1.
const MAGIC_VALUE: u64 = 0x000;
const VERSION: u64 = 0x004;
const DEVICE_ID: u64 = 0x008;
const VENDOR_ID: u64 = 0x00c;
const DEVICE_FEATURES: u64 = 0x010;
const DEVICE_FEATURES_SEL: u64 = 0x014;
const DRIVER_FEATURES: u64 = 0x020;
const DRIVER_FEATURES_SEL: u64 = 0x024;
const QUEUE_SEL: u64 = 0x030;
const QUEUE_NUM_MAX: u64 = 0x034;
const QUEUE_NUM: u64 = 0x038;
const QUEUE_READY: u64 = 0x044;
const QUEUE_NOTIFY: u64 = 0x050;
const INTERRUPT_STATUS: u64 = 0x060;
const INTERRUPT_ACK: u64 = 0x064;
const STATUS: u64 = 0x070;
const QUEUE_DESC_LOW: u64 = 0x080;
const QUEUE_DESC_HIGH: u64 = 0x084;
const QUEUE_DRIVER_LOW: u64 = 0x090;
const QUEUE_DRIVER_HIGH: u64 = 0x094;
const QUEUE_DEVICE_LOW: u64 = 0x0a0;
const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
const CONFIG_GENERATION: u64 = 0x0fc;
const CONFIG: u64 = 0x100;
/// The window size Ferry uses (docs/transport-mmio-ioreq.md section 2): 0x100 config bytes.
const WINDOW_SIZE: u64 = 0x200;

/// One register access, as the device saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    Read(u64),
    Write(u64, u32),
}

/// The test's handle on the MMIO device a transport also drives.
type MmioHandle<D> = Rc<RefCell<MmioDevice<D>>>;

/// virtio-drivers' `Transport`, made of virtio-mmio register accesses on an [`MmioDevice`].
struct MmioRegisterTransport<D: DeviceModel> {
    mmio: MmioHandle<D>,
    device_type: DeviceType,
    /// Notifications after which the device asked for an interrupt.
    interrupts: Rc<Cell<u64>>,
    trace: Rc<RefCell<Vec<Access>>>,
    /// Keep ACCESS_PLATFORM in the driver features when the device offers it (as Linux does).
    access_platform: bool,
    /// The device features last read.
    offered: u64,
}

impl<D: DeviceModel> MmioRegisterTransport<D> {
    /// Probes the window like `MmioTransport::new_from_unique`: MagicValue, DeviceID, Version.
    fn new(mmio: MmioDevice<D>) -> Result<(Self, MmioHandle<D>), String> {
        let mmio = Rc::new(RefCell::new(mmio));
        let mut transport = MmioRegisterTransport {
            mmio: mmio.clone(),
            device_type: DeviceType::Block,
            interrupts: Rc::default(),
            trace: Rc::default(),
            access_platform: false,
            offered: 0,
        };
        let magic = transport.read32(MAGIC_VALUE);
        if magic != 0x7472_6976 {
            return Err(format!("bad magic {magic:#x}"));
        }
        let device_id = transport.read32(DEVICE_ID);
        transport.device_type =
            DeviceType::try_from(device_id).map_err(|e| format!("device id: {e:?}"))?;
        // This transport speaks only the modern interface (spec 4.2.2.2: ignore Version != 2).
        let version = transport.read32(VERSION);
        if version != 2 {
            return Err(format!("version {version}"));
        }
        Ok((transport, mmio))
    }

    /// From now on accept VIRTIO_F_ACCESS_PLATFORM whenever the device offers it, whatever the
    /// virtio-drivers device driver asks for: Linux's virtio core does the same
    /// (`vring_transport_features` keeps the bit), and a grant-based device requires it.
    fn accept_access_platform(mut self) -> Self {
        self.access_platform = true;
        self
    }

    fn read(&self, offset: u64, size: u8) -> u32 {
        self.trace.borrow_mut().push(Access::Read(offset));
        self.mmio.borrow_mut().read(offset, size)
    }

    fn read32(&self, offset: u64) -> u32 {
        self.read(offset, 4)
    }

    /// A store; a notification is served at once, as a trapped access would be answered and
    /// the queue then processed.
    fn write(&self, offset: u64, size: u8, value: u32) {
        self.trace.borrow_mut().push(Access::Write(offset, value));
        let mut mmio = self.mmio.borrow_mut();
        match mmio.write(offset, size, value) {
            MmioEffect::None => {}
            MmioEffect::Notify(queue) => {
                if mmio.notify(queue, &HostMemory) {
                    assert!(mmio.interrupt_line(), "interrupt asked for, line low");
                    self.interrupts.set(self.interrupts.get() + 1);
                }
            }
        }
    }

    fn write32(&self, offset: u64, value: u32) {
        self.write(offset, 4, value);
    }

    /// Checks a config access the way `MmioTransport` does; Err if outside the window.
    fn config_range<T>(&self, offset: usize) -> virtio_drivers::Result<u64> {
        assert!(
            align_of::<T>() <= 4,
            "virtio only guarantees 4-byte alignment"
        );
        assert!(offset.is_multiple_of(align_of::<T>()));
        let end = offset.checked_add(size_of::<T>());
        if end.is_none_or(|end| end as u64 > WINDOW_SIZE - CONFIG) {
            return Err(virtio_drivers::Error::ConfigSpaceTooSmall);
        }
        Ok(CONFIG + offset as u64)
    }

    /// The access widths for a config field of `len` bytes (spec 4.2.2.2: 8/16/32-bit fields
    /// with one access of their width, 64-bit ones as two 32-bit accesses). virtio-drivers
    /// makes one volatile access of the field's size; for 64-bit fields that would be a
    /// single 64-bit load, which the spec does not allow, so this splits it.
    fn config_widths(len: usize) -> Vec<u8> {
        match len {
            1 | 2 | 4 => vec![len as u8],
            n if n % 4 == 0 => vec![4; n / 4],
            n => vec![1; n],
        }
    }
}

impl<D: DeviceModel> Transport for MmioRegisterTransport<D> {
    fn device_type(&self) -> DeviceType {
        self.device_type
    }

    fn read_device_features(&mut self) -> u64 {
        self.write32(DEVICE_FEATURES_SEL, 0);
        let low = u64::from(self.read32(DEVICE_FEATURES));
        self.write32(DEVICE_FEATURES_SEL, 1);
        self.offered = low + (u64::from(self.read32(DEVICE_FEATURES)) << 32);
        self.offered
    }

    fn write_driver_features(&mut self, driver_features: u64) {
        let driver_features = if self.access_platform {
            driver_features | (self.offered & VIRTIO_F_ACCESS_PLATFORM)
        } else {
            driver_features
        };
        self.write32(DRIVER_FEATURES_SEL, 0);
        self.write32(DRIVER_FEATURES, driver_features as u32);
        self.write32(DRIVER_FEATURES_SEL, 1);
        self.write32(DRIVER_FEATURES, (driver_features >> 32) as u32);
    }

    fn max_queue_size(&mut self, queue: u16) -> u32 {
        self.write32(QUEUE_SEL, queue.into());
        self.read32(QUEUE_NUM_MAX)
    }

    fn notify(&mut self, queue: u16) {
        self.write32(QUEUE_NOTIFY, queue.into());
    }

    fn get_status(&self) -> DeviceStatus {
        DeviceStatus::from_bits_truncate(self.read32(STATUS))
    }

    fn set_status(&mut self, status: DeviceStatus) {
        self.write32(STATUS, status.bits());
    }

    fn set_guest_page_size(&mut self, _guest_page_size: u32) {
        // Modern devices have no GuestPageSize register.
    }

    fn requires_legacy_layout(&self) -> bool {
        false
    }

    fn queue_set(
        &mut self,
        queue: u16,
        size: u32,
        descriptors: PhysAddr,
        driver_area: PhysAddr,
        device_area: PhysAddr,
    ) {
        self.write32(QUEUE_SEL, queue.into());
        self.write32(QUEUE_NUM, size);
        self.write32(QUEUE_DESC_LOW, descriptors as u32);
        self.write32(QUEUE_DESC_HIGH, (descriptors >> 32) as u32);
        self.write32(QUEUE_DRIVER_LOW, driver_area as u32);
        self.write32(QUEUE_DRIVER_HIGH, (driver_area >> 32) as u32);
        self.write32(QUEUE_DEVICE_LOW, device_area as u32);
        self.write32(QUEUE_DEVICE_HIGH, (device_area >> 32) as u32);
        self.write32(QUEUE_READY, 1);
    }

    fn queue_unset(&mut self, queue: u16) {
        self.write32(QUEUE_SEL, queue.into());
        self.write32(QUEUE_READY, 0);
        // virtio-drivers spins until QueueReady reads 0 (spec 4.2.2.2); a device that never
        // lets go would hang it, so bound the wait here and fail instead.
        let mut reads = 0;
        while self.read32(QUEUE_READY) != 0 {
            reads += 1;
            assert!(reads < 1000, "QueueReady never read back 0");
        }
        for offset in [
            QUEUE_NUM,
            QUEUE_DESC_LOW,
            QUEUE_DESC_HIGH,
            QUEUE_DRIVER_LOW,
            QUEUE_DRIVER_HIGH,
            QUEUE_DEVICE_LOW,
            QUEUE_DEVICE_HIGH,
        ] {
            self.write32(offset, 0);
        }
    }

    fn queue_used(&mut self, queue: u16) -> bool {
        self.write32(QUEUE_SEL, queue.into());
        self.read32(QUEUE_READY) != 0
    }

    fn ack_interrupt(&mut self) -> InterruptStatus {
        let interrupt = self.read32(INTERRUPT_STATUS);
        if interrupt != 0 {
            self.write32(INTERRUPT_ACK, interrupt);
            InterruptStatus::from_bits_truncate(interrupt)
        } else {
            InterruptStatus::empty()
        }
    }

    fn read_config_generation(&self) -> u32 {
        self.read32(CONFIG_GENERATION)
    }

    fn read_config_space<T: FromBytes + IntoBytes>(
        &self,
        offset: usize,
    ) -> virtio_drivers::Result<T> {
        let mut at = self.config_range::<T>(offset)?;
        let mut value = T::new_zeroed();
        let bytes = value.as_mut_bytes();
        let mut done = 0;
        for width in Self::config_widths(bytes.len()) {
            let word = self.read(at, width).to_le_bytes();
            bytes[done..done + usize::from(width)].copy_from_slice(&word[..usize::from(width)]);
            at += u64::from(width);
            done += usize::from(width);
        }
        Ok(value)
    }

    fn write_config_space<T: IntoBytes + Immutable>(
        &mut self,
        offset: usize,
        value: T,
    ) -> virtio_drivers::Result<()> {
        let mut at = self.config_range::<T>(offset)?;
        let bytes = value.as_bytes();
        let mut done = 0;
        for width in Self::config_widths(bytes.len()) {
            let mut word = [0u8; 4];
            word[..usize::from(width)].copy_from_slice(&bytes[done..done + usize::from(width)]);
            self.write(at, width, u32::from_le_bytes(word));
            at += u64::from(width);
            done += usize::from(width);
        }
        Ok(())
    }
}

impl<D: DeviceModel> Drop for MmioRegisterTransport<D> {
    fn drop(&mut self) {
        // As virtio-drivers' MmioTransport: reset the device when the transport goes.
        self.set_status(DeviceStatus::empty())
    }
}

/// Asserts that neither the register layer nor the device recorded anything.
fn assert_clean<D: DeviceModel>(handle: &MmioHandle<D>) {
    let mut mmio = handle.borrow_mut();
    let errors = mmio.take_errors();
    assert!(errors.is_empty(), "register errors: {errors:?}");
    let faults = mmio.take_device_faults();
    assert!(faults.is_empty(), "device faults: {faults:?}");
}

/// Checks MagicValue, Version, DeviceID and VendorID of `mmio`.
fn check_identity<D: DeviceModel>(mmio: &mut MmioDevice<D>, device_id: u32) {
    assert_eq!(mmio.read(MAGIC_VALUE, 4), 0x7472_6976, "\"virt\"");
    assert_eq!(mmio.read(VERSION, 4), 2, "modern interface only");
    assert_eq!(mmio.read(DEVICE_ID, 4), device_id);
    assert_eq!(mmio.read(VENDOR_ID, 4), u32::from_le_bytes(*b"FRRY"));
    assert!(mmio.take_errors().is_empty());
}

#[test]
fn identity_registers_read_like_a_virtio_mmio_device() {
    check_identity(&mut MmioDevice::new(Blk::new(RamDisk::new(8)), 0), 2);
    check_identity(
        &mut MmioDevice::new(Rng::new(RecordingSource::new(1)), 0),
        4,
    );
}

#[test]
fn virtio_drivers_without_access_platform_is_refused() {
    // Required as for a grant-DMA frontend; virtio-drivers' own sequence does not accept it, so
    // FEATURES_OK and then DRIVER_OK do not stick. virtio-drivers does not read the status back
    // (spec 3.1.1 step 6), so `new` succeeds; a request would never complete.
    let mmio = MmioDevice::new(Rng::new(RecordingSource::new(1)), VIRTIO_F_ACCESS_PLATFORM);
    let (transport, handle) = MmioRegisterTransport::new(mmio).expect("probe");
    let rng = VirtIORng::<TestHal, _>::new(transport).expect("virtio-drivers does not look");
    {
        let mut mmio = handle.borrow_mut();
        assert_eq!(
            mmio.read(STATUS, 4),
            u32::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER),
            "neither FEATURES_OK nor DRIVER_OK"
        );
        assert_eq!(mmio.device().negotiated_features(), 0);
        let missing = LifecycleError::RequiredFeatureMissing {
            missing: VIRTIO_F_ACCESS_PLATFORM,
        };
        // Once at FEATURES_OK, once more at DRIVER_OK (which carries FEATURES_OK again).
        assert_eq!(
            mmio.take_device_faults(),
            [
                Fault::Lifecycle(missing),
                Fault::Lifecycle(missing),
                Fault::Lifecycle(LifecycleError::DriverOkWithoutFeaturesOk)
            ]
        );
        assert!(mmio.take_errors().is_empty());
    }
    drop(rng);
    assert_eq!(handle.borrow().device().status(), 0);
    assert_clean(&handle);
}

#[test]
fn virtio_drivers_rng_over_mmio_registers() {
    // Required as for a grant-DMA frontend; the transport accepts it the way Linux does.
    let mmio = MmioDevice::new(
        Rng::new(RecordingSource::new(0x1234_5678)),
        VIRTIO_F_ACCESS_PLATFORM,
    );
    let (transport, handle) = MmioRegisterTransport::new(mmio).expect("probe");
    let transport = transport.accept_access_platform();
    let trace = transport.trace.clone();
    let interrupts = transport.interrupts.clone();
    let mut rng = VirtIORng::<TestHal, _>::new(transport).expect("virtio-drivers accepts our rng");

    assert_eq!(
        handle.borrow().device().device_features() & VIRTIO_F_ACCESS_PLATFORM,
        VIRTIO_F_ACCESS_PLATFORM
    );
    assert_eq!(
        handle.borrow().device().negotiated_features(),
        VIRTIO_F_VERSION_1 | VIRTIO_F_ACCESS_PLATFORM | VIRTIO_F_INDIRECT_DESC | VIRTIO_F_EVENT_IDX
    );
    assert_eq!(
        handle.borrow().device().status(),
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK
    );

    let mut received = Vec::new();
    let mut buf = vec![0u8; 4096];
    while received.len() < 64 * 1024 {
        let n = rng.request_entropy(&mut buf).expect("entropy request");
        assert!(n > 0 && n <= buf.len());
        received.extend_from_slice(&buf[..n]);
    }
    {
        let mmio = handle.borrow();
        assert_eq!(
            mmio.model().source().produced,
            received,
            "bytes came from the source"
        );
        assert_eq!(mmio.model().served_bytes(), received.len() as u64);
        assert!(mmio.device().requests() >= 16);
    }
    let notifies = trace
        .borrow()
        .iter()
        .filter(|a| matches!(a, Access::Write(QUEUE_NOTIFY, 0)))
        .count();
    assert!(notifies >= 16, "every request went through QueueNotify");
    assert!(interrupts.get() <= notifies as u64);
    assert_clean(&handle);

    // Dropping the driver stops the queue (QueueReady 0, read back) and resets the device.
    drop(rng);
    let mmio = handle.borrow();
    assert_eq!(mmio.device().status(), 0);
    assert!(!mmio.device().queue(0).unwrap().ready());
    drop(mmio);
    assert_clean(&handle);
}

#[test]
fn virtio_drivers_initialises_with_the_spec_register_sequence() {
    let mmio = MmioDevice::new(Rng::new(RecordingSource::new(7)), 0);
    let (transport, handle) = MmioRegisterTransport::new(mmio).expect("probe");
    let trace = transport.trace.clone();
    let rng = VirtIORng::<TestHal, _>::new(transport).expect("init");

    let ring = handle.borrow().device().queue(0).unwrap().addresses();
    let (ack, drv, fok, dok) = (1, 2, 8, 4);
    let expected = [
        // Spec 4.2.3.1.1: MagicValue and Version, DeviceID (virtio-drivers reads the ID first).
        Access::Read(MAGIC_VALUE),
        Access::Read(DEVICE_ID),
        Access::Read(VERSION),
        // Spec 3.1.1: reset, ACKNOWLEDGE | DRIVER, features, FEATURES_OK.
        Access::Write(STATUS, 0),
        Access::Write(STATUS, ack | drv),
        Access::Write(DEVICE_FEATURES_SEL, 0),
        Access::Read(DEVICE_FEATURES),
        Access::Write(DEVICE_FEATURES_SEL, 1),
        Access::Read(DEVICE_FEATURES),
        Access::Write(DRIVER_FEATURES_SEL, 0),
        Access::Write(
            DRIVER_FEATURES,
            (VIRTIO_F_INDIRECT_DESC | VIRTIO_F_EVENT_IDX) as u32,
        ),
        Access::Write(DRIVER_FEATURES_SEL, 1),
        Access::Write(DRIVER_FEATURES, 1),
        Access::Write(STATUS, ack | drv | fok),
        // Spec 4.2.3.2: select, check not in use, QueueNumMax, QueueNum, addresses, ready.
        Access::Write(QUEUE_SEL, 0),
        Access::Read(QUEUE_READY),
        Access::Write(QUEUE_SEL, 0),
        Access::Read(QUEUE_NUM_MAX),
        Access::Write(QUEUE_SEL, 0),
        Access::Write(QUEUE_NUM, 8),
        Access::Write(QUEUE_DESC_LOW, ring.0 as u32),
        Access::Write(QUEUE_DESC_HIGH, (ring.0 >> 32) as u32),
        Access::Write(QUEUE_DRIVER_LOW, ring.1 as u32),
        Access::Write(QUEUE_DRIVER_HIGH, (ring.1 >> 32) as u32),
        Access::Write(QUEUE_DEVICE_LOW, ring.2 as u32),
        Access::Write(QUEUE_DEVICE_HIGH, (ring.2 >> 32) as u32),
        Access::Write(QUEUE_READY, 1),
        Access::Write(STATUS, ack | drv | fok | dok),
    ];
    assert_eq!(trace.borrow()[..], expected[..]);
    assert_eq!(handle.borrow().device().queue(0).unwrap().size(), 8);
    drop(rng);
    assert_clean(&handle);
}

#[test]
fn virtio_drivers_blk_over_mmio_registers() {
    let mmio = MmioDevice::new(Blk::new(RamDisk::new(2048)), 0);
    let (transport, handle) = MmioRegisterTransport::new(mmio).expect("probe");
    let mut blk = VirtIOBlk::<TestHal, _>::new(transport).expect("virtio-drivers accepts our blk");

    assert_eq!(
        handle.borrow().device().negotiated_features(),
        FEATURE_FLUSH | VIRTIO_F_INDIRECT_DESC | VIRTIO_F_EVENT_IDX | VIRTIO_F_VERSION_1
    );
    // Capacity: virtio-drivers reads the two 32-bit halves of the 64-bit field.
    assert_eq!(blk.capacity(), 2048);
    assert!(!blk.readonly());

    for (i, (block, blocks)) in [(0usize, 1usize), (5, 4), (100, 16), (2047, 1), (1000, 64)]
        .into_iter()
        .enumerate()
    {
        let data = pattern(i as u32, blocks * VD_SECTOR);
        blk.write_blocks(block, &data).expect("write");
        let mut back = vec![0u8; data.len()];
        blk.read_blocks(block, &mut back).expect("read");
        assert_eq!(back, data, "read back block {block}");
        let mmio = handle.borrow();
        let on_disk = &mmio.model().disk().bytes()[block * SECTOR_SIZE..][..data.len()];
        assert_eq!(
            on_disk,
            &data[..],
            "data is on the RAM disk at block {block}"
        );
    }

    blk.flush().expect("flush");
    assert_eq!(handle.borrow().model().disk().flush_count(), 1);

    let mut id = [0u8; 20];
    let n = blk.device_id(&mut id).expect("GET_ID");
    assert_eq!(&id[..n], b"ferry-ramdsk");

    // More requests than the queue has entries, so ring indices wrap.
    for i in 0..300usize {
        let block = (i * 37) % 2048;
        blk.write_blocks(block, &pattern(i as u32 + 7, VD_SECTOR))
            .unwrap();
        let mut back = [0u8; VD_SECTOR];
        blk.read_blocks(block, &mut back).unwrap();
        assert_eq!(back.to_vec(), pattern(i as u32 + 7, VD_SECTOR));
    }
    assert!(handle.borrow().device().requests() >= 600);
    assert_clean(&handle);

    drop(blk);
    assert_eq!(handle.borrow().device().status(), 0);
    assert_clean(&handle);
}

#[test]
fn virtio_drivers_blk_sees_config_changes_through_registers() {
    let mmio = MmioDevice::new(Blk::new(RamDisk::new(64)), 0);
    let (transport, handle) = MmioRegisterTransport::new(mmio).expect("probe");
    let mut blk = VirtIOBlk::<TestHal, _>::new(transport).expect("probe");
    assert_eq!(blk.capacity(), 64);

    let before = handle.borrow_mut().read(CONFIG_GENERATION, 4);
    {
        let mut mmio = handle.borrow_mut();
        mmio.model_mut().disk_mut().resize(128);
        assert!(mmio.config_changed(), "inject: the device is running");
        assert!(mmio.interrupt_line());
    }
    assert_eq!(handle.borrow_mut().read(CONFIG_GENERATION, 4), before + 1);
    // ack_interrupt reads InterruptStatus and writes InterruptACK.
    let irq = blk.ack_interrupt();
    assert_eq!(
        irq.bits(),
        InterruptStatus::DEVICE_CONFIGURATION_INTERRUPT.bits()
    );
    assert!(!handle.borrow().interrupt_line(), "acknowledged");
    assert!(blk.ack_interrupt().is_empty());
    // virtio-drivers caches the capacity; the config registers show the new one (spec
    // 4.2.2.2: a 64-bit field as two 32-bit reads).
    let mut mmio = handle.borrow_mut();
    let capacity = u64::from(mmio.read(CONFIG, 4)) | (u64::from(mmio.read(CONFIG + 4, 4)) << 32);
    assert_eq!(capacity, 128);
    drop(mmio);
    assert_clean(&handle);
}
