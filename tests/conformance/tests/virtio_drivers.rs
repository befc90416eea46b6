//! Conformance: the `virtio-drivers` crate's own drivers (written by others) drive Ferry's
//! device models through an in-process transport, and the data is checked on the device side.

use ferry_backend_blk::{Blk, FEATURE_FLUSH};
use ferry_backend_rng::Rng;
use ferry_conformance::{pattern, InProcessTransport, RecordingSource, TestHal};
use ferry_drivers::{BlockDevice, RamDisk, SECTOR_SIZE};
use ferry_virtio::features::*;
use ferry_virtio::Device;
use virtio_drivers::device::blk::{VirtIOBlk, SECTOR_SIZE as VD_SECTOR};
use virtio_drivers::device::rng::VirtIORng;
use virtio_drivers::transport::InterruptStatus;

#[test]
fn virtio_drivers_rng_reads_entropy_from_the_source() {
    let device = Device::new(Rng::new(RecordingSource::new(0x1234_5678)), 0);
    let (transport, handle) = InProcessTransport::new(device);
    let mut rng = VirtIORng::<TestHal, _>::new(transport).expect("virtio-drivers accepts our rng");

    let negotiated = handle.borrow().negotiated_features();
    assert_eq!(
        negotiated,
        VIRTIO_F_VERSION_1 | VIRTIO_F_INDIRECT_DESC | VIRTIO_F_EVENT_IDX
    );
    assert_eq!(
        handle.borrow().status() & STATUS_DRIVER_OK,
        STATUS_DRIVER_OK
    );

    let mut received = Vec::new();
    let mut buf = vec![0u8; 4096];
    while received.len() < 64 * 1024 {
        let n = rng.request_entropy(&mut buf).expect("entropy request");
        assert!(n > 0 && n <= buf.len());
        received.extend_from_slice(&buf[..n]);
    }
    let device = handle.borrow();
    assert_eq!(
        device.model().source().produced,
        received,
        "bytes came from the source"
    );
    assert_eq!(device.model().served_bytes(), received.len() as u64);
    assert!(device.requests() >= 16);
    assert!(received.windows(2).any(|w| w[0] != w[1]), "not constant");
}

#[test]
fn virtio_drivers_blk_writes_reads_and_flushes() {
    let device = Device::new(Blk::new(RamDisk::new(2048)), 0);
    let (transport, handle) = InProcessTransport::new(device);
    let mut blk = VirtIOBlk::<TestHal, _>::new(transport).expect("virtio-drivers accepts our blk");

    // virtio-drivers supports RO | FLUSH | INDIRECT | EVENT_IDX | VERSION_1; we do not offer RO.
    let negotiated = handle.borrow().negotiated_features();
    assert_eq!(
        negotiated,
        FEATURE_FLUSH | VIRTIO_F_INDIRECT_DESC | VIRTIO_F_EVENT_IDX | VIRTIO_F_VERSION_1
    );
    assert_eq!(blk.capacity(), 2048);
    assert!(!blk.readonly());

    // Several sizes, including multi-block requests, at scattered places.
    for (i, (block, blocks)) in [(0usize, 1usize), (5, 4), (100, 16), (2047, 1), (1000, 64)]
        .into_iter()
        .enumerate()
    {
        let data = pattern(i as u32, blocks * VD_SECTOR);
        blk.write_blocks(block, &data).expect("write");
        let mut back = vec![0u8; data.len()];
        blk.read_blocks(block, &mut back).expect("read");
        assert_eq!(back, data, "read back block {block}");
        let device = handle.borrow();
        let on_disk = &device.model().disk().bytes()[block * SECTOR_SIZE..][..data.len()];
        assert_eq!(
            on_disk,
            &data[..],
            "data is on the fake disk at block {block}"
        );
    }

    blk.flush().expect("flush");
    assert_eq!(handle.borrow().model().disk().flush_count(), 1);

    let mut id = [0u8; 20];
    let n = blk.device_id(&mut id).expect("GET_ID");
    assert_eq!(&id[..n], b"ferry-ramdsk");

    // A read past the end is refused by the device, and the device keeps serving.
    let mut buf = vec![0u8; VD_SECTOR];
    assert!(
        blk.read_blocks(2048, &mut buf).is_err(),
        "read past the end must fail"
    );
    blk.read_blocks(5, &mut buf)
        .expect("device still serves after an error");
    assert_eq!(buf, pattern(1, 4 * VD_SECTOR)[..VD_SECTOR]);
    let faults = handle.borrow_mut().take_faults();
    assert!(
        faults.iter().any(|f| matches!(
            f,
            ferry_virtio::Fault::Request {
                error: ferry_backend_blk::BlkError::SectorOutOfRange { sector: 2048, .. },
                ..
            }
        )),
        "out-of-range read recorded: {faults:?}"
    );
    assert_eq!(handle.borrow().model().stats().errors, 1);
}

#[test]
fn virtio_drivers_blk_sees_read_only_disks_and_config_changes() {
    let mut disk = RamDisk::new(64);
    disk.write(3, &[0xAB; SECTOR_SIZE]).unwrap();
    disk.set_read_only(true);
    let device = Device::new(Blk::new(disk), 0);
    let (transport, handle) = InProcessTransport::new(device);
    let mut blk = VirtIOBlk::<TestHal, _>::new(transport).expect("probe");
    assert!(blk.readonly(), "RO negotiated");
    assert!(handle.borrow().negotiated_features() & ferry_backend_blk::FEATURE_RO != 0);
    assert!(
        blk.write_blocks(0, &[1u8; VD_SECTOR]).is_err(),
        "write to RO disk fails"
    );
    let mut buf = [0u8; VD_SECTOR];
    blk.read_blocks(3, &mut buf).unwrap();
    assert_eq!(buf, [0xAB; VD_SECTOR]);
    assert_eq!(
        handle.borrow().model().disk().bytes()[0],
        0,
        "nothing written"
    );

    // The disk grows: the generation moves and the driver sees a config interrupt.
    let before = handle.borrow().config_generation();
    {
        let mut device = handle.borrow_mut();
        device.model_mut().disk_mut().resize(128);
        assert!(device.config_changed());
    }
    assert_eq!(handle.borrow().config_generation(), before + 1);
    let irq = blk.ack_interrupt();
    assert!(
        irq.contains(InterruptStatus::DEVICE_CONFIGURATION_INTERRUPT),
        "{:#x}",
        irq.bits()
    );
}

#[test]
fn virtio_drivers_blk_many_requests_in_order() {
    let device = Device::new(Blk::new(RamDisk::new(4096)), 0);
    let (transport, handle) = InProcessTransport::new(device);
    let mut blk = VirtIOBlk::<TestHal, _>::new(transport).unwrap();
    // More requests than the queue has entries, so indices wrap around.
    for i in 0..300usize {
        let block = (i * 37) % 4096;
        blk.write_blocks(block, &pattern(i as u32 + 7, VD_SECTOR))
            .unwrap();
    }
    for i in 0..300usize {
        let block = (i * 37) % 4096;
        let mut back = [0u8; VD_SECTOR];
        blk.read_blocks(block, &mut back).unwrap();
        // Later writes to the same block win; 37 and 4096 are coprime so each block is hit once.
        assert_eq!(back.to_vec(), pattern(i as u32 + 7, VD_SECTOR));
    }
    assert!(handle.borrow().requests() >= 600);
    assert!(handle.borrow_mut().take_faults().is_empty());
}
