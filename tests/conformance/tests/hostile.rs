//! Hostile frontends: hand-built descriptor chains and ring states that a malicious or broken
//! driver could produce. Each test checks the precise error, the spec's reaction (used length 0,
//! a status byte, or DEVICE_NEEDS_RESET) and that the device still serves a valid request after.

use ferry_backend_blk::{Blk, BlkError, S_IOERR, S_OK, S_UNSUPP, T_DISCARD, T_GET_ID, T_IN, T_OUT};
use ferry_backend_blk::{T_FLUSH, T_WRITE_ZEROES};
use ferry_backend_rng::{Rng, RngError, MAX_BYTES_PER_REQUEST};
use ferry_conformance::{encode_desc, DriverRing, FakeGuest, F_INDIRECT, F_NEXT, F_WRITE};
use ferry_drivers::{BlockDevice, DeviceError, EntropySource, RamDisk, SECTOR_SIZE};
use ferry_virtio::features::*;
use ferry_virtio::queue::MAX_CHAIN_LEN;
use ferry_virtio::{
    ChainError, Device, DeviceModel, Fault, LifecycleError, MemoryError, QueueError,
};

const RAM: usize = 256 * 1024;
const RINGS: u64 = 0x1000;
const HEADER: u64 = 0x4000;
const DATA: u64 = 0x8000;
const STATUS: u64 = 0x3_0000;
const TABLE: u64 = 0x3_1000;
const QSIZE: u16 = 8;
const BASE_FEATURES: u64 = VIRTIO_F_VERSION_1 | VIRTIO_F_INDIRECT_DESC;

struct Harness<D: DeviceModel> {
    mem: FakeGuest,
    ring: DriverRing,
    dev: Device<D>,
    completed: u16,
}

impl<D: DeviceModel> Harness<D> {
    fn new(model: D, features: u64) -> Self {
        let mem = FakeGuest::new(RAM);
        let mut dev = Device::new(model, 0);
        let ring = DriverRing::new(QSIZE, RINGS);
        dev.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        dev.set_driver_features(features);
        dev.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
        assert_ne!(
            dev.status() & STATUS_FEATURES_OK,
            0,
            "features {features:#x} accepted"
        );
        assert!(dev.configure_queue(0, QSIZE, ring.rings(), true));
        dev.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
        Harness {
            mem,
            ring,
            dev,
            completed: 0,
        }
    }

    /// Writes `descs` (addr, len, flags, next) into descriptor slots 0.., makes slot 0 available
    /// and notifies. Returns whether the device asked for an interrupt.
    fn submit(&mut self, descs: &[(u64, u32, u16, u16)]) -> bool {
        for (i, &(addr, len, flags, next)) in descs.iter().enumerate() {
            self.ring
                .set_desc(&self.mem, i as u16, addr, len, flags, next);
        }
        self.ring.push(&self.mem, 0);
        self.dev.notify(0, &self.mem)
    }

    /// The used element for the most recent request: (id, len). Asserts exactly one was added.
    fn completion(&mut self) -> (u32, u32) {
        assert_eq!(
            self.ring.used_idx(&self.mem),
            self.completed.wrapping_add(1),
            "one completion"
        );
        let elem = self.ring.used_elem(&self.mem, self.completed);
        self.completed = self.completed.wrapping_add(1);
        elem
    }

    fn only_fault(&mut self) -> Fault<D::Error> {
        let faults = self.dev.take_faults();
        assert_eq!(faults.len(), 1, "exactly one fault: {faults:?}");
        faults[0]
    }

    fn needs_reset(&self) -> bool {
        self.dev.status() & STATUS_DEVICE_NEEDS_RESET != 0
    }
}

fn blk() -> Harness<Blk<RamDisk>> {
    let mut disk = RamDisk::new(64);
    for s in 0..64u64 {
        disk.write(s, &[s as u8; SECTOR_SIZE]).unwrap();
    }
    Harness::new(Blk::new(disk), BASE_FEATURES)
}

fn header(mem: &FakeGuest, kind: u32, sector: u64) {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&kind.to_le_bytes());
    h[8..].copy_from_slice(&sector.to_le_bytes());
    mem.poke(HEADER, &h);
}

/// A well-formed one-sector read of `sector`; checks status, data and used length.
fn valid_read(h: &mut Harness<Blk<RamDisk>>, sector: u64) {
    header(&h.mem, T_IN, sector);
    h.mem.poke(STATUS, &[0xff]);
    h.submit(&[
        (HEADER, 16, F_NEXT, 1),
        (DATA, SECTOR_SIZE as u32, F_WRITE | F_NEXT, 2),
        (STATUS, 1, F_WRITE, 0),
    ]);
    assert_eq!(h.completion(), (0, SECTOR_SIZE as u32 + 1));
    assert_eq!(h.mem.peek(STATUS, 1), [S_OK]);
    assert_eq!(
        h.mem.peek(DATA, SECTOR_SIZE),
        vec![sector as u8; SECTOR_SIZE]
    );
    assert!(h.dev.take_faults().is_empty());
}

fn chain_fault(h: &mut Harness<Blk<RamDisk>>) -> ChainError {
    match h.only_fault() {
        Fault::Queue {
            queue: 0,
            error: QueueError::Chain { head: 0, error },
        } => error,
        other => panic!("expected a chain error, got {other:?}"),
    }
}

#[test]
fn descriptor_loop_is_refused_and_queue_goes_on() {
    let mut h = blk();
    header(&h.mem, T_IN, 1);
    h.submit(&[(HEADER, 16, F_NEXT, 1), (DATA, 512, F_NEXT, 0)]);
    assert_eq!(h.completion(), (0, 0), "returned unused");
    assert_eq!(chain_fault(&mut h), ChainError::Loop);
    assert!(!h.needs_reset());
    valid_read(&mut h, 2);
}

#[test]
fn address_outside_guest_memory_is_an_io_error() {
    let mut h = blk();
    let far = 0x10_0000_0000u64;
    header(&h.mem, T_IN, 1);
    h.submit(&[
        (HEADER, 16, F_NEXT, 1),
        (far, 512, F_WRITE | F_NEXT, 2),
        (STATUS, 1, F_WRITE, 0),
    ]);
    assert_eq!(h.completion(), (0, 1));
    assert_eq!(h.mem.peek(STATUS, 1), [S_IOERR]);
    match h.only_fault() {
        Fault::Request {
            error: BlkError::Memory(MemoryError { addr, len: 512 }),
            ..
        } => {
            assert_eq!(addr, far)
        }
        other => panic!("{other:?}"),
    }
    // Header itself outside memory.
    h.submit(&[(far, 16, F_NEXT, 1), (STATUS, 1, F_WRITE, 0)]);
    assert_eq!(h.completion(), (0, 1));
    assert_eq!(h.mem.peek(STATUS, 1), [S_IOERR]);
    assert!(matches!(
        h.only_fault(),
        Fault::Request {
            error: BlkError::Memory(_),
            ..
        }
    ));
    // An address + length that wraps the address space is refused while parsing.
    h.submit(&[(u64::MAX - 4, 16, F_NEXT, 1), (STATUS, 1, F_WRITE, 0)]);
    assert_eq!(h.completion(), (0, 0));
    assert_eq!(
        chain_fault(&mut h),
        ChainError::AddressOverflow {
            addr: u64::MAX - 4,
            len: 16
        }
    );
    valid_read(&mut h, 3);
}

#[test]
fn zero_length_buffers() {
    let mut h = blk();
    // A chain whose only buffer is empty has no room for a status byte.
    h.submit(&[(DATA, 0, F_WRITE, 0)]);
    assert_eq!(h.completion(), (0, 0));
    assert!(matches!(
        h.only_fault(),
        Fault::Request {
            error: BlkError::NoStatusByte,
            ..
        }
    ));
    // A zero-length header.
    h.submit(&[(HEADER, 0, F_NEXT, 1), (STATUS, 1, F_WRITE, 0)]);
    assert_eq!(h.completion(), (0, 1));
    assert_eq!(h.mem.peek(STATUS, 1), [S_IOERR]);
    assert!(matches!(
        h.only_fault(),
        Fault::Request {
            error: BlkError::HeaderTooShort { readable: 0 },
            ..
        }
    ));
    // A zero-length indirect table.
    h.submit(&[(TABLE, 0, F_INDIRECT, 0)]);
    assert_eq!(h.completion(), (0, 0));
    assert_eq!(
        chain_fault(&mut h),
        ChainError::IndirectTableLength { len: 0 }
    );
    valid_read(&mut h, 4);
}

#[test]
fn writable_header_is_refused_with_status() {
    let mut h = blk();
    header(&h.mem, T_IN, 1);
    h.submit(&[(HEADER, 16, F_WRITE | F_NEXT, 1), (STATUS, 1, F_WRITE, 0)]);
    assert_eq!(h.completion(), (0, 1));
    assert_eq!(h.mem.peek(STATUS, 1), [S_IOERR]);
    assert!(matches!(
        h.only_fault(),
        Fault::Request {
            error: BlkError::HeaderTooShort { readable: 0 },
            ..
        }
    ));
    valid_read(&mut h, 5);
}

#[test]
fn readable_after_writable_is_refused() {
    let mut h = blk();
    h.submit(&[(DATA, 512, F_WRITE | F_NEXT, 1), (HEADER, 16, 0, 0)]);
    assert_eq!(h.completion(), (0, 0));
    assert_eq!(chain_fault(&mut h), ChainError::ReadableAfterWritable);
    valid_read(&mut h, 6);
}

#[test]
fn over_long_chain_is_refused() {
    let mut h = blk();
    let entries = MAX_CHAIN_LEN + 1;
    let mut table = Vec::new();
    for i in 0..entries {
        let last = i + 1 == entries;
        let flags = if last { F_WRITE } else { F_NEXT };
        table.extend_from_slice(&encode_desc(DATA, 1, flags, (i + 1) as u16));
    }
    h.mem.poke(TABLE, &table);
    h.submit(&[(TABLE, table.len() as u32, F_INDIRECT, 0)]);
    assert_eq!(h.completion(), (0, 0));
    assert_eq!(chain_fault(&mut h), ChainError::TooLong);
    valid_read(&mut h, 7);
}

#[test]
fn indirect_tables_work_and_nesting_is_refused() {
    let mut h = blk();
    // A good indirect request first.
    header(&h.mem, T_IN, 9);
    let table = [
        encode_desc(HEADER, 16, F_NEXT, 1),
        encode_desc(DATA, 512, F_WRITE | F_NEXT, 2),
        encode_desc(STATUS, 1, F_WRITE, 0),
    ]
    .concat();
    h.mem.poke(TABLE, &table);
    h.submit(&[(TABLE, 48, F_INDIRECT, 0)]);
    assert_eq!(h.completion(), (0, 513));
    assert_eq!(h.mem.peek(DATA, 4), [9, 9, 9, 9]);
    assert!(h.dev.take_faults().is_empty());

    // An indirect descriptor inside the table.
    let nested = [
        encode_desc(HEADER, 16, F_NEXT, 1),
        encode_desc(TABLE, 48, F_INDIRECT, 0),
    ]
    .concat();
    h.mem.poke(TABLE + 0x100, &nested);
    h.submit(&[(TABLE + 0x100, 32, F_INDIRECT, 0)]);
    assert_eq!(h.completion(), (0, 0));
    assert_eq!(chain_fault(&mut h), ChainError::NestedIndirect);

    // A loop inside the table, a next beyond it, a ragged length, NEXT on the indirect itself.
    let looped = [
        encode_desc(HEADER, 16, F_NEXT, 1),
        encode_desc(DATA, 16, F_NEXT, 0),
    ]
    .concat();
    h.mem.poke(TABLE + 0x200, &looped);
    h.submit(&[(TABLE + 0x200, 32, F_INDIRECT, 0)]);
    h.completion();
    assert_eq!(chain_fault(&mut h), ChainError::Loop);
    let beyond = [encode_desc(HEADER, 16, F_NEXT, 5)].concat();
    h.mem.poke(TABLE + 0x300, &beyond);
    h.submit(&[(TABLE + 0x300, 16, F_INDIRECT, 0)]);
    h.completion();
    assert_eq!(chain_fault(&mut h), ChainError::NextOutOfRange { next: 5 });
    h.submit(&[(TABLE, 40, F_INDIRECT, 0)]);
    h.completion();
    assert_eq!(
        chain_fault(&mut h),
        ChainError::IndirectTableLength { len: 40 }
    );
    h.submit(&[(TABLE, 48, F_INDIRECT | F_NEXT, 1), (STATUS, 1, F_WRITE, 0)]);
    h.completion();
    assert_eq!(chain_fault(&mut h), ChainError::IndirectWithNext);
    h.submit(&[(0x7fff_0000_0000, 48, F_INDIRECT, 0)]);
    h.completion();
    assert!(matches!(
        chain_fault(&mut h),
        ChainError::IndirectTableMemory(_)
    ));
    assert!(!h.needs_reset());
    valid_read(&mut h, 10);
}

#[test]
fn indirect_without_negotiation_is_refused() {
    let mut disk = RamDisk::new(8);
    disk.write(1, &[1; 512]).unwrap();
    let mut h = Harness::new(Blk::new(disk), VIRTIO_F_VERSION_1);
    h.submit(&[(TABLE, 48, F_INDIRECT, 0)]);
    assert_eq!(h.completion(), (0, 0));
    match h.only_fault() {
        Fault::Queue {
            error: QueueError::Chain { error, .. },
            ..
        } => {
            assert_eq!(error, ChainError::IndirectNotNegotiated)
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn next_out_of_range_is_refused() {
    let mut h = blk();
    h.submit(&[(HEADER, 16, F_NEXT, QSIZE + 3)]);
    assert_eq!(h.completion(), (0, 0));
    assert_eq!(
        chain_fault(&mut h),
        ChainError::NextOutOfRange { next: QSIZE + 3 }
    );
    valid_read(&mut h, 11);
}

#[test]
fn avail_index_jump_needs_reset_and_reset_recovers() {
    let mut h = blk();
    h.ring.set_avail_idx(&h.mem, QSIZE + 5);
    assert!(h.dev.notify(0, &h.mem), "config interrupt for NEEDS_RESET");
    assert!(h.needs_reset());
    assert_ne!(h.dev.interrupt_status() & INTERRUPT_CONFIG_CHANGE, 0);
    assert_eq!(
        h.only_fault(),
        Fault::Queue {
            queue: 0,
            error: QueueError::AvailIndexJump {
                avail_idx: QSIZE + 5,
                next_avail: 0
            }
        }
    );
    assert_eq!(h.ring.used_idx(&h.mem), 0, "nothing consumed");
    // The device stays stopped until reset.
    assert!(!h.dev.notify(0, &h.mem));
    assert_eq!(
        h.only_fault(),
        Fault::Lifecycle(LifecycleError::NotifyWhileStopped(0))
    );
    // Driver resets and re-initialises; a valid request then works.
    h.dev.set_status(0);
    assert_eq!(h.dev.status(), 0);
    let model = std::mem::replace(h.dev.model_mut(), Blk::new(RamDisk::new(1)));
    h = Harness::new(model, BASE_FEATURES);
    valid_read(&mut h, 12);
}

#[test]
fn head_out_of_range_needs_reset() {
    let mut h = blk();
    h.ring.set_desc(&h.mem, 0, HEADER, 16, 0, 0);
    // Publish a head index beyond the table by hand.
    h.mem.poke(h.ring.avail + 4, &(QSIZE + 1).to_le_bytes());
    h.ring.set_avail_idx(&h.mem, 1);
    h.dev.notify(0, &h.mem);
    assert!(h.needs_reset());
    assert_eq!(
        h.only_fault(),
        Fault::Queue {
            queue: 0,
            error: QueueError::HeadOutOfRange { head: QSIZE + 1 }
        }
    );
}

#[test]
fn ring_outside_memory_needs_reset() {
    let mem = FakeGuest::new(RAM);
    let mut dev = Device::new(Blk::new(RamDisk::new(8)), 0);
    dev.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    dev.set_driver_features(BASE_FEATURES);
    dev.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
    let far = 0x1_0000_0000;
    assert!(dev.configure_queue(0, QSIZE, (far, far + 0x1000, far + 0x2000), true));
    dev.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
    assert!(dev.notify(0, &mem));
    assert_ne!(dev.status() & STATUS_DEVICE_NEEDS_RESET, 0);
    assert!(matches!(
        dev.take_faults()[..],
        [Fault::Queue {
            error: QueueError::Ring(_),
            ..
        }]
    ));
}

#[test]
fn bad_queue_layouts_are_refused() {
    let mut dev = Device::new(Blk::new(RamDisk::new(8)), 0);
    dev.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    dev.set_driver_features(BASE_FEATURES);
    dev.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
    let rings = (0x1000, 0x2000, 0x3000);
    let refused = [
        (0, 6, rings, "not a power of two"),
        (0, 4096, rings, "above max"),
        (0, 8, (0x1008, 0x2000, 0x3000), "misaligned table"),
        (0, 8, (0x1000, 0x2001, 0x3000), "misaligned avail"),
        (0, 8, (0x1000, 0x2000, 0x3002), "misaligned used"),
        (1, 8, rings, "no such queue"),
    ];
    for (queue, size, rings, why) in refused {
        assert!(!dev.configure_queue(queue, size, rings, true), "{why}");
    }
    assert_eq!(dev.take_faults().len(), 6);
    assert!(dev.configure_queue(0, 8, (0x1000, 0x2000, 0x3000), true));
}

#[test]
fn feature_negotiation_refuses_what_we_did_not_offer() {
    let mut dev = Device::new(Blk::new(RamDisk::new(8)), 0);
    let offered = dev.device_features();
    assert_eq!(
        offered & VIRTIO_F_ACCESS_PLATFORM,
        0,
        "not offered without a grant transport"
    );
    dev.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    dev.set_driver_features(VIRTIO_F_VERSION_1 | VIRTIO_F_ACCESS_PLATFORM);
    dev.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
    assert_eq!(dev.status() & STATUS_FEATURES_OK, 0, "FEATURES_OK refused");
    assert_eq!(
        dev.take_faults(),
        [Fault::Lifecycle(LifecycleError::FeaturesNotOffered {
            requested: VIRTIO_F_VERSION_1 | VIRTIO_F_ACCESS_PLATFORM,
            offered
        })]
    );
    // DRIVER_OK without FEATURES_OK is refused too.
    dev.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_DRIVER_OK);
    assert_eq!(dev.status() & STATUS_DRIVER_OK, 0);
    assert_eq!(
        dev.take_faults(),
        [Fault::Lifecycle(LifecycleError::DriverOkWithoutFeaturesOk)]
    );

    // A legacy driver (no VERSION_1) is refused.
    dev.set_status(0);
    dev.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    dev.set_driver_features(ferry_backend_blk::FEATURE_FLUSH);
    dev.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
    assert_eq!(dev.status() & STATUS_FEATURES_OK, 0);
    assert_eq!(
        dev.take_faults(),
        [Fault::Lifecycle(LifecycleError::LegacyDriver)]
    );

    // Feature bits beyond 63 are never offered.
    dev.set_status(0);
    dev.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    dev.set_driver_features(VIRTIO_F_VERSION_1);
    dev.set_driver_features_word(2, 1);
    dev.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
    assert_eq!(dev.status() & STATUS_FEATURES_OK, 0);
    dev.take_faults();

    // A proper negotiation; then features are frozen and bits cannot be cleared.
    dev.set_status(0);
    dev.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    dev.set_driver_features(VIRTIO_F_VERSION_1 | ferry_backend_blk::FEATURE_FLUSH);
    dev.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
    assert_ne!(dev.status() & STATUS_FEATURES_OK, 0);
    dev.set_driver_features(VIRTIO_F_VERSION_1);
    assert_eq!(
        dev.negotiated_features(),
        VIRTIO_F_VERSION_1 | ferry_backend_blk::FEATURE_FLUSH
    );
    dev.set_status(STATUS_ACKNOWLEDGE);
    assert_ne!(
        dev.status() & STATUS_FEATURES_OK,
        0,
        "bits are not cleared without reset"
    );
    assert_eq!(
        dev.take_faults(),
        [
            Fault::Lifecycle(LifecycleError::FeaturesAfterFeaturesOk),
            Fault::Lifecycle(LifecycleError::StatusBitCleared {
                old: STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
                new: STATUS_ACKNOWLEDGE
            })
        ]
    );
    // Transport features are offered when the transport asks (grant-based transports).
    let mut granted = Device::new(Blk::new(RamDisk::new(8)), VIRTIO_F_ACCESS_PLATFORM);
    assert_ne!(granted.device_features() & VIRTIO_F_ACCESS_PLATFORM, 0);
    assert_eq!(granted.required_features(), VIRTIO_F_ACCESS_PLATFORM);
    // ... and required: a driver that does not accept ACCESS_PLATFORM would put guest-physical
    // addresses in the rings, which a grant-based device cannot reach (spec 6.1).
    granted.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    granted.set_driver_features(VIRTIO_F_VERSION_1 | ferry_backend_blk::FEATURE_FLUSH);
    granted.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
    assert_eq!(granted.status(), STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    assert_eq!(granted.negotiated_features(), 0);
    let faults = granted.take_faults();
    assert_eq!(
        faults,
        [Fault::Lifecycle(LifecycleError::RequiredFeatureMissing {
            missing: VIRTIO_F_ACCESS_PLATFORM
        })]
    );
    assert_eq!(faults[0].blame(), ferry_virtio::Blame::Frontend);
    granted.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
    assert_eq!(granted.status(), STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    assert_eq!(
        granted.take_faults(),
        [
            Fault::Lifecycle(LifecycleError::RequiredFeatureMissing {
                missing: VIRTIO_F_ACCESS_PLATFORM
            }),
            Fault::Lifecycle(LifecycleError::DriverOkWithoutFeaturesOk)
        ]
    );
    // Accepting it (as Linux does) negotiates.
    granted.set_driver_features(
        VIRTIO_F_VERSION_1 | VIRTIO_F_ACCESS_PLATFORM | ferry_backend_blk::FEATURE_FLUSH,
    );
    granted.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
    assert_eq!(
        granted.negotiated_features(),
        VIRTIO_F_VERSION_1 | VIRTIO_F_ACCESS_PLATFORM | ferry_backend_blk::FEATURE_FLUSH
    );
    assert!(granted.take_faults().is_empty());
}

#[test]
fn event_idx_suppresses_interrupts_and_publishes_avail_event() {
    let mut h = Harness::new(
        Blk::new(RamDisk::new(8)),
        BASE_FEATURES | VIRTIO_F_EVENT_IDX,
    );
    header(&h.mem, T_FLUSH, 0);
    let flush = [(HEADER, 16, F_NEXT, 1), (STATUS, 1, F_WRITE, 0)];
    // used_event = 5: the driver wants an interrupt only once used idx passes 5.
    h.ring.set_used_event(&h.mem, 5);
    for i in 0..5u16 {
        assert!(!h.submit(&flush), "request {i} suppressed");
        h.completion();
        assert_eq!(
            h.ring.avail_event(&h.mem),
            i + 1,
            "avail_event follows next_avail"
        );
    }
    assert!(h.submit(&flush), "used idx 5 -> 6 crosses used_event 5");
    h.completion();
    assert!(!h.submit(&flush), "past the event again");
    h.completion();
    assert_eq!(h.dev.model().disk().flush_count(), 7);
}

#[test]
fn no_interrupt_flag_without_event_idx() {
    let mut h = blk();
    header(&h.mem, T_FLUSH, 0);
    let flush = [(HEADER, 16, F_NEXT, 1), (STATUS, 1, F_WRITE, 0)];
    assert!(h.submit(&flush));
    h.completion();
    h.mem.poke(h.ring.avail, &1u16.to_le_bytes()); // VIRTQ_AVAIL_F_NO_INTERRUPT
    assert!(!h.submit(&flush));
    h.completion();
    // After draining, the device re-enables notifications (used.flags = 0).
    assert_eq!(h.mem.peek(h.ring.used, 2), [0, 0]);
}

#[test]
fn avail_index_wraps_around() {
    let mut h = Harness::new(Rng::new(Counter(0)), BASE_FEATURES);
    for _ in 0..(u32::from(u16::MAX) + 20) {
        h.submit(&[(DATA, 2, F_WRITE, 0)]);
        assert_eq!(h.completion(), (0, 2));
    }
    assert!(h.dev.take_faults().is_empty());
    assert_eq!(h.dev.requests(), u64::from(u16::MAX) + 20);
    assert_eq!(h.ring.used_idx(&h.mem), 19, "used index wrapped too");
}

struct Counter(u8);

impl EntropySource for Counter {
    fn fill(&mut self, buf: &mut [u8]) -> Result<usize, DeviceError> {
        for b in buf.iter_mut() {
            self.0 = self.0.wrapping_add(1);
            *b = self.0;
        }
        Ok(buf.len())
    }
}

struct Broken;

impl EntropySource for Broken {
    fn fill(&mut self, _buf: &mut [u8]) -> Result<usize, DeviceError> {
        Err(DeviceError::Io)
    }
}

#[test]
fn rng_refuses_readable_buffers_caps_size_and_reports_source_failure() {
    let mut h = Harness::new(Rng::new(Counter(0)), BASE_FEATURES);
    h.submit(&[(HEADER, 16, F_NEXT, 1), (DATA, 16, F_WRITE, 0)]);
    assert_eq!(h.completion(), (0, 0));
    assert!(matches!(
        h.only_fault(),
        Fault::Request {
            error: RngError::ReadableBuffer,
            ..
        }
    ));
    // A huge buffer gets at most MAX_BYTES_PER_REQUEST bytes.
    h.submit(&[(DATA, 200_000, F_WRITE, 0)]);
    assert_eq!(h.completion(), (0, MAX_BYTES_PER_REQUEST));
    assert_eq!(h.mem.peek(DATA, 3), [1, 2, 3]);
    // A buffer outside memory.
    h.submit(&[(0x7000_0000, 16, F_WRITE, 0)]);
    assert_eq!(h.completion(), (0, 0));
    assert!(matches!(
        h.only_fault(),
        Fault::Request {
            error: RngError::Memory(_),
            ..
        }
    ));

    let mut b = Harness::new(Rng::new(Broken), BASE_FEATURES);
    b.submit(&[(DATA, 16, F_WRITE, 0)]);
    assert_eq!(b.completion(), (0, 0));
    let fault = b.only_fault();
    assert_eq!(
        fault,
        Fault::Request {
            queue: 0,
            head: 0,
            error: RngError::Source(DeviceError::Io)
        }
    );
    assert_eq!(fault.blame(), ferry_virtio::Blame::PhysicalDevice);
}

fn blk_request(
    h: &mut Harness<Blk<RamDisk>>,
    kind: u32,
    sector: u64,
    payload: &[u8],
    data_out: u32,
) -> u8 {
    header(&h.mem, kind, sector);
    h.mem.poke(DATA, payload);
    h.mem.poke(STATUS, &[0xff]);
    let mut descs = vec![(HEADER, 16, F_NEXT, 1)];
    if !payload.is_empty() {
        descs.push((DATA, payload.len() as u32, F_NEXT, descs.len() as u16 + 1));
    }
    if data_out > 0 {
        descs.push((
            DATA + 0x1_0000,
            data_out,
            F_WRITE | F_NEXT,
            descs.len() as u16 + 1,
        ));
    }
    descs.push((STATUS, 1, F_WRITE, 0));
    h.submit(&descs);
    h.completion();
    h.mem.peek(STATUS, 1)[0]
}

#[test]
fn blk_request_types_and_errors() {
    let mut h = blk();
    // OUT writes the data, GET_ID answers, unknown type is UNSUPP.
    assert_eq!(blk_request(&mut h, T_OUT, 2, &[0x5a; 1024], 0), S_OK);
    assert_eq!(&h.dev.model().disk().bytes()[1024..2048], &[0x5a; 1024][..]);
    assert_eq!(blk_request(&mut h, T_GET_ID, 0, &[], 20), S_OK);
    assert_eq!(&h.mem.peek(DATA + 0x1_0000, 12), b"ferry-ramdsk");
    assert_eq!(blk_request(&mut h, 99, 0, &[], 0), S_UNSUPP);
    assert!(matches!(
        h.only_fault(),
        Fault::Request {
            error: BlkError::UnsupportedType(99),
            ..
        }
    ));

    // Lengths that are not whole sectors, and ranges past the end.
    assert_eq!(blk_request(&mut h, T_OUT, 0, &[1; 100], 0), S_IOERR);
    assert!(matches!(
        h.only_fault(),
        Fault::Request {
            error: BlkError::DataNotSectorMultiple { len: 100 },
            ..
        }
    ));
    assert_eq!(blk_request(&mut h, T_IN, 63, &[], 1024), S_IOERR);
    assert!(matches!(
        h.only_fault(),
        Fault::Request {
            error: BlkError::SectorOutOfRange {
                sector: 63,
                count: 2,
                capacity: 64
            },
            ..
        }
    ));
    assert_eq!(blk_request(&mut h, T_IN, u64::MAX, &[], 512), S_IOERR);
    h.only_fault();

    // DISCARD / WRITE_ZEROES segments: {sector, num_sectors, flags}.
    let seg = |sector: u64, n: u32, flags: u32| {
        let mut s = sector.to_le_bytes().to_vec();
        s.extend_from_slice(&n.to_le_bytes());
        s.extend_from_slice(&flags.to_le_bytes());
        s
    };
    assert_eq!(
        blk_request(&mut h, T_WRITE_ZEROES, 0, &seg(10, 2, 0), 0),
        S_OK
    );
    assert_eq!(
        &h.dev.model().disk().bytes()[10 * 512..12 * 512],
        &[0u8; 1024][..]
    );
    assert_eq!(
        h.dev.model().disk().bytes()[12 * 512],
        12,
        "neighbour untouched"
    );
    assert_eq!(blk_request(&mut h, T_DISCARD, 0, &seg(20, 4, 0), 0), S_OK);
    assert_eq!(h.dev.model().disk().discarded_sectors(), 4);
    assert_eq!(
        blk_request(&mut h, T_DISCARD, 0, &seg(20, 4, 1), 0),
        S_UNSUPP,
        "unmap on discard"
    );
    h.only_fault();
    assert_eq!(
        blk_request(&mut h, T_WRITE_ZEROES, 0, &seg(60, 8, 0), 0),
        S_IOERR,
        "past end"
    );
    h.only_fault();
    assert_eq!(
        blk_request(&mut h, T_DISCARD, 0, &[0; 10], 0),
        S_IOERR,
        "ragged segments"
    );
    assert!(matches!(
        h.only_fault(),
        Fault::Request {
            error: BlkError::BadRangeSegments { len: 10 },
            ..
        }
    ));
    valid_read(&mut h, 13);
}

#[test]
fn blk_read_only_disk_refuses_writes() {
    let mut disk = RamDisk::new(8);
    disk.set_read_only(true);
    let mut h = Harness::new(
        Blk::new(disk),
        BASE_FEATURES | ferry_backend_blk::FEATURE_RO,
    );
    assert_eq!(blk_request(&mut h, T_OUT, 0, &[1; 512], 0), S_IOERR);
    assert!(matches!(
        h.only_fault(),
        Fault::Request {
            error: BlkError::ReadOnly,
            ..
        }
    ));
    assert_eq!(blk_request(&mut h, T_WRITE_ZEROES, 0, &[0; 16], 0), S_IOERR);
    assert!(matches!(
        h.only_fault(),
        Fault::Request {
            error: BlkError::ReadOnly,
            ..
        }
    ));
    assert_eq!(h.dev.model().disk().bytes()[0], 0);
}
