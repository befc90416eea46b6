//! The physical drivers of `ferry-drivers-virtio` on the host: Ferry on Ferry.
//!
//! `VirtioDisk` / `VirtioEntropy` drive virtio-drivers' `VirtIOBlk` / `VirtIORng` over an
//! [`InProcessTransport`] to a Ferry device model, standing in for the passed-through virtio-mmio
//! device an appliance owns. The full chains then put a second Ferry device model (the
//! appliance's backend) on top of the physical driver and drive it with a second, independent
//! virtio-drivers frontend:
//!
//! ```text
//! frontend VirtIOBlk -> InProcessTransport -> Blk<VirtioDisk>   (the appliance)
//!                    -> VirtIOBlk -> InProcessTransport -> Blk<RamDisk>   (the "hardware")
//! ```
//!
//! Data is checked where it lands: in the inner `RamDisk`, or against the inner source's record.

use ferry_backend_blk::{Blk, BlkError, FEATURE_FLUSH, FEATURE_RO, S_UNSUPP, T_GET_ID};
use ferry_backend_rng::Rng;
use ferry_conformance::{pattern, DeviceHandle, InProcessTransport, RecordingSource, TestHal};
use ferry_drivers::{BlockDevice, DeviceError, EntropySource, RamDisk, SECTOR_SIZE};
use ferry_drivers_virtio::{
    ProbeError, VirtioDisk, VirtioEntropy, Waiter, FALLBACK_ID, MAX_ENTROPY_REQUEST,
    MAX_REQUEST_BYTES,
};
use ferry_virtio::features::*;
use ferry_virtio::{Completion, DescriptorChain, Device, DeviceModel, Fault, GuestMemory};
use std::cell::Cell;
use std::rc::Rc;
use virtio_drivers::device::blk::{VirtIOBlk, SECTOR_SIZE as VD_SECTOR};
use virtio_drivers::device::rng::VirtIORng;
use virtio_drivers::transport::DeviceType;

/// The physical disk as the appliance sees it in these tests.
type PhysicalDisk<D> = VirtioDisk<TestHal, InProcessTransport<D>>;

/// A Ferry blk device over `disk`, and `VirtioDisk` driving it.
fn physical_disk(disk: RamDisk) -> (PhysicalDisk<Blk<RamDisk>>, DeviceHandle<Blk<RamDisk>>) {
    let (transport, handle) = InProcessTransport::new(Device::new(Blk::new(disk), 0));
    let disk = VirtioDisk::new(transport).expect("VirtioDisk accepts a Ferry blk device");
    (disk, handle)
}

fn requests<D: DeviceModel>(handle: &DeviceHandle<D>) -> u64 {
    handle.borrow().requests()
}

fn padded(id: &[u8]) -> [u8; 20] {
    let mut padded = [0u8; 20];
    padded[..id.len()].copy_from_slice(id);
    padded
}

#[test]
fn virtio_disk_reads_and_writes_the_disk_behind_the_device() {
    let (mut disk, handle) = physical_disk(RamDisk::new(2048));
    assert_eq!(disk.capacity_sectors(), 2048);
    assert_eq!(disk.block_size(), 512);
    assert!(!disk.read_only());
    assert_eq!(disk.id(), padded(b"ferry-ramdsk"), "GET_ID from the device");
    // virtio-drivers takes FLUSH (and RO, had it been offered) from what Ferry's blk offers.
    assert_eq!(
        handle.borrow().negotiated_features(),
        FEATURE_FLUSH | VIRTIO_F_INDIRECT_DESC | VIRTIO_F_EVENT_IDX | VIRTIO_F_VERSION_1
    );

    // (sector, sectors, requests expected): 400 sectors = 200 KiB is split into 64 KiB requests.
    let per_request = (MAX_REQUEST_BYTES / SECTOR_SIZE) as u64;
    for (i, (sector, sectors)) in [(0u64, 1u64), (7, 3), (100, 128), (1000, 400), (2047, 1)]
        .into_iter()
        .enumerate()
    {
        let data = pattern(100 + i as u32, sectors as usize * SECTOR_SIZE);
        let expected_requests = sectors.div_ceil(per_request);

        let before = requests(&handle);
        disk.write(sector, &data).expect("write");
        assert_eq!(requests(&handle) - before, expected_requests, "write split");
        let start = sector as usize * SECTOR_SIZE;
        assert_eq!(
            &handle.borrow().model().disk().bytes()[start..start + data.len()],
            &data[..],
            "data is on the RamDisk at sector {sector}"
        );

        let mut back = vec![0u8; data.len()];
        let before = requests(&handle);
        disk.read(sector, &mut back).expect("read");
        assert_eq!(requests(&handle) - before, expected_requests, "read split");
        assert_eq!(back, data, "read back sector {sector}");
    }

    disk.flush().expect("flush");
    assert_eq!(handle.borrow().model().disk().flush_count(), 1);
    assert!(handle.borrow_mut().take_faults().is_empty());
}

#[test]
fn virtio_disk_checks_ranges_before_the_device_sees_them() {
    let (mut disk, handle) = physical_disk(RamDisk::new(64));
    let mut sector = vec![0u8; SECTOR_SIZE];
    let before = requests(&handle);

    assert_eq!(disk.read(64, &mut sector), Err(DeviceError::OutOfRange));
    assert_eq!(
        disk.write(63, &[1u8; 2 * SECTOR_SIZE]),
        Err(DeviceError::OutOfRange)
    );
    assert_eq!(
        disk.read(u64::MAX, &mut sector),
        Err(DeviceError::OutOfRange)
    );
    assert_eq!(
        disk.read(0, &mut [0u8; 100]),
        Err(DeviceError::OutOfRange),
        "not whole sectors"
    );
    assert_eq!(
        disk.write(0, &[0u8; SECTOR_SIZE + 1]),
        Err(DeviceError::OutOfRange)
    );
    assert_eq!(disk.write_zeroes(60, 5), Err(DeviceError::OutOfRange));
    assert_eq!(disk.write_zeroes(0, u64::MAX), Err(DeviceError::OutOfRange));
    assert_eq!(disk.discard(64, 1), Err(DeviceError::OutOfRange));
    // Empty transfers are answered here too (virtio-drivers refuses empty buffers).
    assert_eq!(disk.read(64, &mut []), Ok(()));
    assert_eq!(disk.write(65, &[]), Err(DeviceError::OutOfRange));
    assert_eq!(disk.write_zeroes(64, 0), Ok(()));
    // Discard is not negotiated by virtio-drivers: refused, and the blk backend shrugs.
    assert_eq!(disk.discard(0, 8), Err(DeviceError::Unsupported));

    assert_eq!(requests(&handle), before, "nothing reached the device");
    assert!(handle.borrow_mut().take_faults().is_empty());
    disk.read(63, &mut sector).expect("still serving");
}

#[test]
fn virtio_disk_write_zeroes_clears_exactly_the_range() {
    let contents = pattern(7, 1024 * SECTOR_SIZE);
    let (mut disk, handle) = physical_disk(RamDisk::from_bytes(contents.clone()));

    let before = requests(&handle);
    disk.write_zeroes(10, 300).expect("write_zeroes");
    assert_eq!(
        requests(&handle) - before,
        3,
        "300 sectors in 128-sector requests"
    );

    let device = handle.borrow();
    let bytes = device.model().disk().bytes();
    let (start, end) = (10 * SECTOR_SIZE, 310 * SECTOR_SIZE);
    assert!(bytes[start..end].iter().all(|&b| b == 0), "range zeroed");
    assert_eq!(bytes[..start], contents[..start], "before untouched");
    assert_eq!(bytes[end..], contents[end..], "after untouched");
}

#[test]
fn virtio_disk_follows_a_read_only_device() {
    let mut ram = RamDisk::new(16);
    ram.write(2, &[0x5A; SECTOR_SIZE]).unwrap();
    ram.set_read_only(true);
    let (mut disk, handle) = physical_disk(ram);
    assert!(disk.read_only(), "RO negotiated");
    assert_eq!(
        handle.borrow().negotiated_features() & FEATURE_RO,
        FEATURE_RO
    );

    let before = requests(&handle);
    assert_eq!(
        disk.write(0, &[1u8; SECTOR_SIZE]),
        Err(DeviceError::ReadOnly)
    );
    assert_eq!(disk.write_zeroes(0, 1), Err(DeviceError::ReadOnly));
    assert_eq!(
        requests(&handle),
        before,
        "refused writes never reach the device"
    );

    let mut buf = [0u8; SECTOR_SIZE];
    disk.read(2, &mut buf).expect("reads still work");
    assert_eq!(buf, [0x5A; SECTOR_SIZE]);
}

#[test]
fn virtio_disk_reports_device_failures_as_io_errors() {
    let (mut disk, handle) = physical_disk(RamDisk::new(1024));
    // The disk behind the device shrinks without a config change: the probed capacity is stale,
    // so the range check passes and the device itself answers IOERR.
    handle.borrow_mut().model_mut().disk_mut().resize(512);
    let mut buf = vec![0u8; SECTOR_SIZE];
    assert_eq!(disk.read(600, &mut buf), Err(DeviceError::Io));
    assert_eq!(disk.write(600, &buf), Err(DeviceError::Io));
    let faults = handle.borrow_mut().take_faults();
    assert!(
        faults.iter().all(|f| matches!(
            f,
            Fault::Request {
                error: BlkError::SectorOutOfRange { sector: 600, .. },
                ..
            }
        )) && faults.len() == 2,
        "{faults:?}"
    );
    disk.read(0, &mut buf).expect("the device keeps serving");
}

/// A waiter that counts its calls and gives up after `limit` pauses of one request.
#[derive(Default)]
struct CountingWaiter {
    limit: u32,
    starts: Rc<Cell<u32>>,
    pauses: Rc<Cell<u32>>,
    this_request: u32,
}

impl Waiter for CountingWaiter {
    fn start(&mut self) {
        self.starts.set(self.starts.get() + 1);
        self.this_request = 0;
    }
    fn pause(&mut self) -> bool {
        self.pauses.set(self.pauses.get() + 1);
        self.this_request += 1;
        self.this_request <= self.limit
    }
}

#[test]
fn virtio_disk_waits_with_its_waiter_and_fails_for_good_on_a_dead_device() {
    let (transport, handle) = InProcessTransport::new(Device::new(Blk::new(RamDisk::new(256)), 0));
    let waiter = CountingWaiter {
        limit: 3,
        ..Default::default()
    };
    let (starts, pauses) = (waiter.starts.clone(), waiter.pauses.clone());
    let mut disk = VirtioDisk::<TestHal, _, _>::with_waiter(transport, waiter).expect("probe");

    // A live device: the in-process device completes on notify, so there is nothing to pause
    // for; the waiter is started once per request (200 sectors = two 64 KiB requests).
    let data = pattern(7, 200 * SECTOR_SIZE);
    disk.write(10, &data).expect("write");
    let mut back = vec![0u8; data.len()];
    disk.read(10, &mut back).expect("read");
    assert_eq!(back, data);
    disk.write_zeroes(10, 1).expect("write zeroes");
    assert_eq!((starts.get(), pauses.get()), (5, 0));
    assert!(!disk.failed());

    // The device dies: it stops processing its queue (FAILED set behind the driver's back, so
    // notifications are ignored) and never completes the next request.
    let status = handle.borrow().status();
    handle.borrow_mut().set_status(status | STATUS_FAILED);
    handle.borrow_mut().take_faults();
    let before = requests(&handle);
    let mut sector = vec![0xa5u8; SECTOR_SIZE];
    assert_eq!(
        disk.read(0, &mut sector),
        Err(DeviceError::Io),
        "deadline passed"
    );
    assert_eq!(
        (starts.get(), pauses.get()),
        (6, 4),
        "3 pauses granted, the 4th refused"
    );
    assert!(disk.failed());
    assert_eq!(
        sector,
        vec![0xa5u8; SECTOR_SIZE],
        "the caller's buffer is untouched"
    );

    // Failed for good: nothing reaches the queue any more (no notification, no wait).
    handle.borrow_mut().take_faults();
    assert_eq!(disk.read(0, &mut sector), Err(DeviceError::Io));
    assert_eq!(disk.write(0, &sector), Err(DeviceError::Io));
    assert_eq!(disk.write_zeroes(0, 1), Err(DeviceError::Io));
    assert_eq!(disk.flush(), Err(DeviceError::Io));
    assert_eq!((starts.get(), pauses.get()), (6, 4));
    assert_eq!(requests(&handle), before);
    assert!(handle.borrow_mut().take_faults().is_empty());
    // Range checks still come first.
    assert_eq!(disk.read(256, &mut sector), Err(DeviceError::OutOfRange));
    assert!(format!("{disk:?}").contains("failed: true"));
}

/// Ferry's blk model, except that it answers GET_ID with UNSUPP (like a device without serial).
struct NoGetId(Blk<RamDisk>);

impl DeviceModel for NoGetId {
    type Error = BlkError;
    fn device_id(&self) -> u32 {
        self.0.device_id()
    }
    fn features(&self) -> u64 {
        self.0.features()
    }
    fn queue_count(&self) -> u16 {
        self.0.queue_count()
    }
    fn queue_max_size(&self, index: u16) -> u16 {
        self.0.queue_max_size(index)
    }
    fn config_len(&self) -> u32 {
        self.0.config_len()
    }
    fn read_config(&self, offset: u32, data: &mut [u8]) {
        self.0.read_config(offset, data)
    }
    fn process<M: GuestMemory + ?Sized>(
        &mut self,
        queue: u16,
        chain: &DescriptorChain,
        mem: &M,
    ) -> Completion<BlkError> {
        let mut kind = [0u8; 4];
        if chain.reader().read_exact(mem, &mut kind).is_ok()
            && u32::from_le_bytes(kind) == T_GET_ID
            && chain.writable_len() > 0
        {
            let status_at = chain.writable_len() - 1;
            chain
                .writer(status_at, 1)
                .write_all(mem, &[S_UNSUPP])
                .expect("status byte");
            return Completion::ok(1);
        }
        self.0.process(queue, chain, mem)
    }
}

#[test]
fn virtio_disk_falls_back_to_its_own_id_when_get_id_is_refused() {
    let (transport, _handle) =
        InProcessTransport::new(Device::new(NoGetId(Blk::new(RamDisk::new(8))), 0));
    let mut disk: VirtioDisk<TestHal, _> = VirtioDisk::new(transport).expect("probe");
    assert_eq!(disk.id(), FALLBACK_ID);
    assert_eq!(&disk.id()[..17], b"ferry-virtio-disk");
    disk.write(1, &[3u8; SECTOR_SIZE]).expect("still a disk");
}

#[test]
fn drivers_refuse_the_wrong_device_type() {
    let (rng_transport, _) =
        InProcessTransport::new(Device::new(Rng::new(RecordingSource::new(1)), 0));
    let Err(error) = VirtioDisk::<TestHal, _>::new(rng_transport) else {
        panic!("VirtioDisk accepted an entropy device");
    };
    assert_eq!(
        error,
        ProbeError::WrongDeviceType {
            expected: DeviceType::Block,
            found: DeviceType::EntropySource
        }
    );

    let (blk_transport, handle) =
        InProcessTransport::new(Device::new(Blk::new(RamDisk::new(8)), 0));
    let Err(error) = VirtioEntropy::<TestHal, _>::new(blk_transport) else {
        panic!("VirtioEntropy accepted a block device");
    };
    assert!(matches!(error, ProbeError::WrongDeviceType { .. }));
    assert!(error.to_string().contains("Block"), "{error}");
    assert_eq!(handle.borrow().status(), 0, "the device was not touched");
}

#[test]
fn full_chain_frontend_to_backend_to_physical_driver_to_ram_disk() {
    // The "hardware": a Ferry blk device over a RamDisk, driven by the physical driver.
    let (physical, inner) = physical_disk(RamDisk::new(4096));
    // The appliance: Ferry's blk backend serving the physical driver to a frontend.
    let (transport, outer) = InProcessTransport::new(Device::new(Blk::new(physical), 0));
    let mut frontend =
        VirtIOBlk::<TestHal, _>::new(transport).expect("frontend accepts the appliance's blk");

    assert_eq!(frontend.capacity(), 4096);
    assert!(!frontend.readonly());
    let mut id = [0u8; 20];
    let n = frontend
        .device_id(&mut id)
        .expect("GET_ID through the chain");
    assert_eq!(
        &id[..n],
        b"ferry-ramdsk",
        "the inner disk's id reaches the frontend"
    );

    // 600 sectors = 300 KiB: one frontend request, split by the backend and the physical driver.
    for (i, (block, blocks)) in [(0usize, 1usize), (9, 8), (1000, 600), (4095, 1)]
        .into_iter()
        .enumerate()
    {
        let data = pattern(500 + i as u32, blocks * VD_SECTOR);
        frontend.write_blocks(block, &data).expect("write");
        {
            let device = inner.borrow();
            let on_disk = &device.model().disk().bytes()[block * SECTOR_SIZE..][..data.len()];
            assert_eq!(on_disk, &data[..], "data in the inner RamDisk at {block}");
        }
        let mut back = vec![0u8; data.len()];
        frontend.read_blocks(block, &mut back).expect("read");
        assert_eq!(back, data, "read back through the chain at {block}");
    }

    frontend.flush().expect("flush");
    assert_eq!(
        inner.borrow().model().disk().flush_count(),
        1,
        "flush reached the disk"
    );

    // Out of range: the backend refuses it before the physical driver sees it.
    let before = requests(&inner);
    let mut buf = vec![0u8; VD_SECTOR];
    assert!(frontend.read_blocks(4096, &mut buf).is_err());
    assert_eq!(requests(&inner), before);
    frontend.read_blocks(4095, &mut buf).expect("still serving");

    assert!(inner.borrow_mut().take_faults().is_empty());
    let outer_faults = outer.borrow_mut().take_faults();
    assert_eq!(outer_faults.len(), 1, "{outer_faults:?}");
    assert_eq!(outer.borrow().model().stats().sectors_written, 610);
}

#[test]
fn full_chain_keeps_a_read_only_disk_read_only() {
    let mut ram = RamDisk::new(32);
    ram.write(4, &[0xC3; SECTOR_SIZE]).unwrap();
    ram.set_read_only(true);
    let (physical, inner) = physical_disk(ram);
    let (transport, _outer) = InProcessTransport::new(Device::new(Blk::new(physical), 0));
    let mut frontend = VirtIOBlk::<TestHal, _>::new(transport).expect("probe");
    assert!(
        frontend.readonly(),
        "RO travels from the inner device to the frontend"
    );

    let before = requests(&inner);
    assert!(frontend.write_blocks(0, &[1u8; VD_SECTOR]).is_err());
    assert_eq!(requests(&inner), before, "the write stopped at the backend");
    let mut buf = [0u8; VD_SECTOR];
    frontend.read_blocks(4, &mut buf).expect("read");
    assert_eq!(buf, [0xC3; VD_SECTOR]);
}

/// A Ferry rng device over a recording source, and `VirtioEntropy` driving it.
type PhysicalEntropy = VirtioEntropy<TestHal, InProcessTransport<Rng<RecordingSource>>>;

fn physical_entropy(seed: u64) -> (PhysicalEntropy, DeviceHandle<Rng<RecordingSource>>) {
    let (transport, handle) =
        InProcessTransport::new(Device::new(Rng::new(RecordingSource::new(seed)), 0));
    let entropy = VirtioEntropy::new(transport).expect("VirtioEntropy accepts a Ferry rng");
    (entropy, handle)
}

#[test]
fn virtio_entropy_returns_the_bytes_of_the_source() {
    let (mut entropy, handle) = physical_entropy(0xfeed_beef);
    let mut received = Vec::new();
    let mut buf = vec![0u8; 4096];
    while received.len() < 32 * 1024 {
        let n = entropy.fill(&mut buf).expect("fill");
        assert!(n > 0 && n <= buf.len());
        received.extend_from_slice(&buf[..n]);
    }
    assert_eq!(handle.borrow().model().source().produced, received);

    let before = requests(&handle);
    assert_eq!(entropy.fill(&mut []), Ok(0), "empty buffer, no request");
    assert_eq!(requests(&handle), before);

    let mut big = vec![0u8; 3 * MAX_ENTROPY_REQUEST];
    let n = entropy.fill(&mut big).expect("big fill");
    assert!(n > 0 && n <= MAX_ENTROPY_REQUEST, "filled a prefix: {n}");
    assert!(big[MAX_ENTROPY_REQUEST..].iter().all(|&b| b == 0));
    let device = handle.borrow();
    let produced = &device.model().source().produced;
    assert_eq!(&produced[produced.len() - n..], &big[..n]);
}

#[test]
fn full_chain_entropy_frontend_to_backend_to_physical_driver_to_source() {
    let (physical, inner) = physical_entropy(0x0123_4567_89ab);
    let (transport, outer) = InProcessTransport::new(Device::new(Rng::new(physical), 0));
    let mut frontend = VirtIORng::<TestHal, _>::new(transport).expect("frontend accepts our rng");

    let mut received = Vec::new();
    let mut buf = vec![0u8; 1500];
    while received.len() < 16 * 1024 {
        let n = frontend.request_entropy(&mut buf).expect("entropy");
        assert!(n > 0);
        received.extend_from_slice(&buf[..n]);
    }
    assert_eq!(
        inner.borrow().model().source().produced,
        received,
        "the frontend got exactly the inner source's bytes"
    );
    assert_eq!(outer.borrow().model().served_bytes(), received.len() as u64);
    assert!(received.windows(2).any(|w| w[0] != w[1]));
}

#[test]
fn physical_drivers_describe_themselves() {
    let (disk, _) = physical_disk(RamDisk::new(8));
    let text = format!("{disk:?}");
    assert!(text.contains("capacity_sectors: 8"), "{text}");
    let (entropy, _) = physical_entropy(3);
    assert_eq!(format!("{entropy:?}"), "VirtioEntropy { .. }");
}
