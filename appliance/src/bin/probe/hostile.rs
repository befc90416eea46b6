//! The hostile variants: after the normal workload the probe misbehaves on purpose, checks that
//! the device answered as the virtio spec says, and then proves that it still serves a valid
//! request. Each prints `ferry: probe: hostile <flag>: ok (<what the device did>)` only then.

use alloc::format;
use alloc::string::String;
use alloc::vec;

use ferry_appliance::println;
use ferry_drivers::pattern::first_mismatch;
use virtio_drivers::device::blk::SECTOR_SIZE;
use virtio_drivers::Error;

use crate::hal::{release_refs, reserve_refs, ProbeHal};
use crate::plan::{grant_address, Config, DeviceKind, Hostile};
use crate::rawq::{DmaPages, RawQueue, NEXT, WRITE};
use crate::window::{Window, DEVICE_ID, STATUS, STATUS_NEEDS_RESET};
use crate::{blk, rng};

/// virtio-blk request types and status values (virtio 1.2 section 5.2.6).
const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
/// What the probe writes into a status byte before a request, to see whether the device wrote it.
const UNWRITTEN: u8 = 0xa5;

/// Runs one hostile variant.
pub fn run<H: ProbeHal>(hostile: Hostile, window: &Window, config: &Config) -> Result<(), String> {
    let what = match (hostile, config.device) {
        (Hostile::WritePastEnd, DeviceKind::Blk) => write_past_end::<H>(window, config.seed)?,
        (Hostile::BadChain, DeviceKind::Blk) => bad_chain_blk::<H>(window, config.seed)?,
        (Hostile::BadChain, DeviceKind::Rng) => bad_chain_rng::<H>(window)?,
        (Hostile::Ungranted, DeviceKind::Blk) if H::GRANTED => ungranted::<H>(window, config.seed)?,
        (Hostile::Ungranted, _) if !H::GRANTED => {
            return Err(format!(
                "hostile ungranted needs probe.mode=grant, not {}",
                H::MODE
            ))
        }
        (Hostile::BadRegister, _) => bad_register::<H>(window, config)?,
        (flag, device) => {
            return Err(format!(
                "hostile {} is not defined for probe.device={}",
                flag.flag(),
                device.name()
            ))
        }
    };
    println!("ferry: probe: hostile {}: ok ({what})", hostile.flag());
    Ok(())
}

/// Writes at and across the end of the disk; both must fail with IOERR and change nothing.
fn write_past_end<H: ProbeHal>(window: &Window, seed: u32) -> Result<String, String> {
    let mut disk = blk::open::<H>(window)?;
    let capacity = disk.capacity();
    let last = capacity - 1;
    let mut before = [0u8; SECTOR_SIZE];
    disk.read_blocks(last as usize, &mut before)
        .map_err(|error| format!("read of the last sector: {error}"))?;
    let junk = vec![0x5au8; 2 * SECTOR_SIZE];
    match disk.write_blocks(capacity as usize, &junk[..SECTOR_SIZE]) {
        Err(Error::IoError) => {}
        other => {
            return Err(format!(
                "a write at sector {capacity} (the capacity) returned {other:?}, not IOERR"
            ))
        }
    }
    match disk.write_blocks(last as usize, &junk) {
        Err(Error::IoError) => {}
        other => {
            return Err(format!(
                "a 2-sector write at the last sector {last} returned {other:?}, not IOERR"
            ))
        }
    }
    let mut after = [0u8; SECTOR_SIZE];
    disk.read_blocks(last as usize, &mut after)
        .map_err(|error| format!("read of the last sector after the bad writes: {error}"))?;
    if before != after {
        return Err(format!(
            "the refused write across the end changed sector {last}"
        ));
    }
    blk::check_sector(&mut disk, seed, 0)?;
    Ok(format!(
        "writes at sector {capacity} and across the end failed with IOERR, sector {last} \
         unchanged, then a valid read"
    ))
}

/// Request buffers for the by-hand queue: page 0 holds the header at 0 and the status byte at
/// 0x100, page 1 one sector of data.
struct BlkBuffers<H: ProbeHal> {
    pages: DmaPages<H>,
}

const HEADER: usize = 0;
const STATUS_BYTE: usize = 0x100;
const DATA: usize = 0x1000;

impl<H: ProbeHal> BlkBuffers<H> {
    fn new() -> Result<Self, String> {
        Ok(Self {
            pages: DmaPages::new(2)?,
        })
    }

    /// Writes a request header and marks the status byte unwritten.
    fn prepare(&self, kind: u32, sector: u64) {
        let mut header = [0u8; 16];
        header[..4].copy_from_slice(&kind.to_le_bytes());
        header[8..].copy_from_slice(&sector.to_le_bytes());
        self.pages.write(HEADER, &header);
        self.pages.write(STATUS_BYTE, &[UNWRITTEN]);
    }

    fn status(&self) -> u8 {
        let mut status = [0u8];
        self.pages.read(STATUS_BYTE, &mut status);
        status[0]
    }

    fn address(&self, offset: usize) -> u64 {
        self.pages.device_address + offset as u64
    }

    /// A well-formed request chain at descriptors `first..first + 3` with `data` as the data
    /// buffer's address.
    fn chain(&self, queue: &mut RawQueue<H>, first: u16, write: bool, data: u64) {
        queue.set_descriptor(first, self.address(HEADER), 16, NEXT, first + 1);
        let data_flags = if write { NEXT } else { NEXT | WRITE };
        queue.set_descriptor(first + 1, data, SECTOR_SIZE as u32, data_flags, first + 2);
        queue.set_descriptor(first + 2, self.address(STATUS_BYTE), 1, WRITE, 0);
    }

    /// Runs a valid read of `sector` and checks it holds the pattern.
    fn valid_read(&self, queue: &mut RawQueue<H>, seed: u32, sector: u64) -> Result<(), String> {
        self.prepare(T_IN, sector);
        self.chain(queue, 0, false, self.address(DATA));
        let len = queue.run(0)?;
        let status = self.status();
        if status != S_OK || len != SECTOR_SIZE as u32 + 1 {
            return Err(format!(
                "a valid read of sector {sector} returned status {status} len {len}"
            ));
        }
        let mut data = [0u8; SECTOR_SIZE];
        self.pages.read(DATA, &mut data);
        if first_mismatch(seed, sector, &data).is_some() {
            return Err(format!(
                "sector {sector} read by hand does not hold the pattern"
            ));
        }
        Ok(())
    }
}

/// Checks that a malformed chain came back unused and left the status byte alone.
fn expect_refused<H: ProbeHal>(
    queue: &mut RawQueue<H>,
    buffers: &BlkBuffers<H>,
    head: u16,
    what: &str,
) -> Result<(), String> {
    let len = queue.run(head)?;
    let status = buffers.status();
    if len != 0 || status != UNWRITTEN {
        return Err(format!(
            "{what}: used len {len}, status byte {status:#x} (want len 0, status unwritten)"
        ));
    }
    if queue.status() & STATUS_NEEDS_RESET != 0 {
        return Err(format!("{what}: the device needs a reset now"));
    }
    Ok(())
}

/// A descriptor loop and a readable descriptor after a writable one (spec 2.7.4.2, 2.7.5.2).
fn bad_chain_blk<H: ProbeHal>(window: &Window, seed: u32) -> Result<String, String> {
    let buffers = BlkBuffers::<H>::new()?;
    {
        let mut queue = RawQueue::<H>::init(*window)?;
        // A valid request first: the queue works, so a chain that never comes back is the
        // device's doing.
        buffers.valid_read(&mut queue, seed, 0)?;
        // 0 -> 1 -> 2 -> 1: header, then data and status forever (the order itself is valid).
        buffers.prepare(T_IN, 0);
        buffers.chain(&mut queue, 0, false, buffers.address(DATA));
        queue.set_descriptor(2, buffers.address(STATUS_BYTE), 1, WRITE | NEXT, 1);
        expect_refused(&mut queue, &buffers, 0, "a descriptor loop")?;
        // Header (readable), status (writable), then data (readable): the order is wrong.
        buffers.prepare(T_OUT, 0);
        queue.set_descriptor(3, buffers.address(HEADER), 16, NEXT, 4);
        queue.set_descriptor(4, buffers.address(STATUS_BYTE), 1, WRITE | NEXT, 5);
        queue.set_descriptor(5, buffers.address(DATA), SECTOR_SIZE as u32, 0, 0);
        expect_refused(
            &mut queue,
            &buffers,
            3,
            "a readable descriptor after a writable one",
        )?;
        // The queue goes on after refused chains.
        buffers.valid_read(&mut queue, seed, 0)?;
    } // reset: the device lets go of the ring before it is freed
    let mut disk = blk::open::<H>(window)?;
    blk::check_sector(&mut disk, seed, 0)?;
    Ok(
        "a descriptor loop and a readable-after-writable chain: used len 0, status unwritten; \
         valid reads before, after, and after a re-init"
            .into(),
    )
}

/// A loop of writable descriptors on the rng's queue.
fn bad_chain_rng<H: ProbeHal>(window: &Window) -> Result<String, String> {
    let pages = DmaPages::<H>::new(1)?;
    pages.write(0, &[UNWRITTEN; 128]);
    {
        let mut queue = RawQueue::<H>::init(*window)?;
        queue.set_descriptor(0, pages.device_address, 64, WRITE | NEXT, 1);
        queue.set_descriptor(1, pages.device_address + 64, 64, WRITE | NEXT, 0);
        let len = queue.run(0)?;
        let mut bytes = [0u8; 128];
        pages.read(0, &mut bytes);
        if len != 0 || bytes.iter().any(|&byte| byte != UNWRITTEN) {
            return Err(format!(
                "a descriptor loop came back with len {len} and the buffer {}",
                if bytes.iter().all(|&byte| byte == UNWRITTEN) {
                    "untouched"
                } else {
                    "written"
                }
            ));
        }
        if queue.status() & STATUS_NEEDS_RESET != 0 {
            return Err("the device needs a reset after a descriptor loop".into());
        }
    }
    let mut device = rng::open::<H>(window)?;
    let mut buf = [0u8; 64];
    rng::fill(&mut device, &mut buf)?;
    Ok("a descriptor loop came back with len 0, buffer untouched; then 64 bytes of entropy".into())
}

/// Data buffers the backend must refuse: an address without bit 63, and one naming a ref that
/// grants nothing. Both read and write requests must fail with IOERR and change nothing.
fn ungranted<H: ProbeHal>(window: &Window, seed: u32) -> Result<String, String> {
    let buffers = BlkBuffers::<H>::new()?;
    let gref = reserve_refs(1).ok_or("no free grant ref to leave ungranted")?;
    let result = (|| {
        let mut queue = RawQueue::<H>::init(*window)?;
        let not_a_grant = buffers.pages.local_address(DATA) as u64;
        let ungranted = grant_address(gref, 0);
        for (write, data, what) in [
            (false, not_a_grant, "a read into an address without bit 63"),
            (true, not_a_grant, "a write from an address without bit 63"),
            (false, ungranted, "a read into an ungranted ref"),
            (true, ungranted, "a write from an ungranted ref"),
        ] {
            buffers.prepare(if write { T_OUT } else { T_IN }, 0);
            buffers.chain(&mut queue, 0, write, data);
            let len = queue.run(0)?;
            let status = buffers.status();
            if status != S_IOERR {
                return Err(format!("{what}: status {status:#x} (len {len}), not IOERR"));
            }
            if queue.status() & STATUS_NEEDS_RESET != 0 {
                return Err(format!("{what}: the device needs a reset now"));
            }
        }
        // Sector 0 still holds the pattern: the refused writes wrote nothing.
        buffers.valid_read(&mut queue, seed, 0)
    })();
    release_refs(gref, 1);
    result?;
    Ok(format!(
        "reads and writes with data at an address without bit 63 or at ungranted ref {gref}: \
         IOERR; sector 0 unchanged, then a valid read"
    ))
}

/// Reads and writes undefined registers while the device is live: reads give 0, writes change
/// nothing, and a valid request works afterwards.
fn bad_register<H: ProbeHal>(window: &Window, config: &Config) -> Result<String, String> {
    // The device is live (DRIVER_OK) through virtio-drivers while the probe pokes the window.
    let mut disk = None;
    let mut entropy = None;
    match config.device {
        DeviceKind::Blk => disk = Some(blk::open::<H>(window)?),
        DeviceKind::Rng => entropy = Some(rng::open::<H>(window)?),
    }
    let id = window.read(DEVICE_ID);
    let status = window.read(STATUS);
    let mut read_values = [0u32; 3];
    for (value, offset) in read_values.iter_mut().zip([0x0c8, 0x0f0, 0x0f8]) {
        *value = window.read(offset);
    }
    window.write(0x0f0, 0xdead_beef);
    window.write(0x0c8, 0xffff_ffff);
    let read_after_write = window.read(0x0f0);
    if read_values != [0; 3] || read_after_write != 0 {
        return Err(format!(
            "undefined registers 0x0c8/0x0f0/0x0f8 read {read_values:#x?}, 0x0f0 after a write \
             {read_after_write:#x}"
        ));
    }
    let (id_after, status_after) = (window.read(DEVICE_ID), window.read(STATUS));
    if (id_after, status_after) != (id, status) {
        return Err(format!(
            "DeviceID/Status were {id}/{status:#x}, now {id_after}/{status_after:#x}"
        ));
    }
    if let Some(disk) = disk.as_mut() {
        blk::check_sector(disk, config.seed, 0)?;
    }
    if let Some(device) = entropy.as_mut() {
        rng::fill(device, &mut [0u8; 64])?;
    }
    Ok(format!(
        "0x0c8/0x0f0/0x0f8 read 0, writes to 0x0f0/0x0c8 ignored, DeviceID {id} and Status \
         {status:#x} unchanged, then a valid request"
    ))
}
