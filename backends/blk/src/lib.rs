//! virtio-blk, the block device (spec 5.2), over a [`BlockDevice`].
//!
//! A request is a chain: a 16-byte device-readable header {type: u32, reserved: u32, sector: u64},
//! then data (readable for OUT, writable for IN), then one writable status byte. The header is
//! copied out of frontend memory before it is looked at. Every range is checked against the
//! capacity with overflow-checked arithmetic, every size is capped, and every failure ends in a
//! status byte (IOERR or UNSUPP) when the chain has room for one - never in a panic.
//!
//! Data moves through one bounce buffer of [`CHUNK_BYTES`] owned by the model, so a request of
//! any allowed size needs no allocation.
#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

extern crate alloc;

use alloc::vec;
use alloc::vec::Vec;

use ferry_drivers::{BlockDevice, DeviceError, SECTOR_SIZE};
use ferry_virtio::device::Completion;
use ferry_virtio::{
    Blame, ChainReader, DescriptorChain, DeviceModel, GuestMemory, MemoryError, ReadError,
    RequestError,
};

/// Virtio device ID of a block device (spec 5).
pub const DEVICE_ID: u32 = 2;

/// Maximum size of any single segment (VIRTIO_BLK_F_SIZE_MAX).
pub const FEATURE_SIZE_MAX: u64 = 1 << 1;
/// Maximum number of segments in a request (VIRTIO_BLK_F_SEG_MAX).
pub const FEATURE_SEG_MAX: u64 = 1 << 2;
/// Device is read-only (VIRTIO_BLK_F_RO).
pub const FEATURE_RO: u64 = 1 << 5;
/// Block size of disk is in blk_size (VIRTIO_BLK_F_BLK_SIZE).
pub const FEATURE_BLK_SIZE: u64 = 1 << 6;
/// Cache flush command support (VIRTIO_BLK_F_FLUSH).
pub const FEATURE_FLUSH: u64 = 1 << 9;
/// Discard command support (VIRTIO_BLK_F_DISCARD).
pub const FEATURE_DISCARD: u64 = 1 << 13;
/// Write zeroes command support (VIRTIO_BLK_F_WRITE_ZEROES).
pub const FEATURE_WRITE_ZEROES: u64 = 1 << 14;

/// Request types (spec 5.2.6).
pub const T_IN: u32 = 0;
/// Write.
pub const T_OUT: u32 = 1;
/// Flush the write cache.
pub const T_FLUSH: u32 = 4;
/// Device identification string.
pub const T_GET_ID: u32 = 8;
/// Discard sectors.
pub const T_DISCARD: u32 = 11;
/// Write zeroes.
pub const T_WRITE_ZEROES: u32 = 13;

/// Status: success.
pub const S_OK: u8 = 0;
/// Status: I/O error (also every malformed request).
pub const S_IOERR: u8 = 1;
/// Status: unsupported request.
pub const S_UNSUPP: u8 = 2;

/// Queue size offered.
pub const QUEUE_SIZE: u16 = 256;
/// Largest segment (descriptor) size we advertise, in bytes.
pub const SIZE_MAX: u32 = 1 << 20;
/// Most data segments per request we advertise (queue size less header and status).
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Largest data transfer per request, in bytes; larger requests fail with IOERR.
pub const MAX_REQUEST_BYTES: u32 = 8 << 20;
/// Most discard / write-zeroes segments per request.
pub const MAX_RANGE_SEGMENTS: u32 = 16;
/// Most sectors per discard / write-zeroes segment.
pub const MAX_RANGE_SECTORS: u32 = 1 << 22;
/// Size of the bounce buffer data moves through.
pub const CHUNK_BYTES: usize = 64 * 1024;

const HEADER_LEN: u32 = 16;
const RANGE_SEGMENT_LEN: u32 = 16;
const GET_ID_LEN: usize = 20;
const CONFIG_LEN: u32 = 60;
const RANGE_FLAG_UNMAP: u32 = 1;

/// Why a block request failed. Each variant names the party at fault (see [`RequestError`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlkError {
    /// The chain has no writable byte for the status: it cannot be completed properly.
    NoStatusByte,
    /// Fewer than 16 device-readable bytes for the header (e.g. a writable header).
    HeaderTooShort {
        /// Readable bytes present.
        readable: u32,
    },
    /// IN/OUT data whose length is not a multiple of 512 bytes.
    DataNotSectorMultiple {
        /// Data length.
        len: u32,
    },
    /// More data than [`MAX_REQUEST_BYTES`].
    RequestTooLarge {
        /// Data length.
        len: u32,
    },
    /// Sectors beyond the end of the disk.
    SectorOutOfRange {
        /// First sector.
        sector: u64,
        /// Number of sectors.
        count: u64,
        /// Disk capacity in sectors.
        capacity: u64,
    },
    /// A write, discard or write-zeroes on a read-only disk.
    ReadOnly,
    /// A request type we do not implement.
    UnsupportedType(u32),
    /// A discard/write-zeroes payload that is not whole 16-byte segments, or has too many.
    BadRangeSegments {
        /// Payload length.
        len: u32,
    },
    /// A discard/write-zeroes segment with flags we do not support (spec 5.2.6.2: UNSUPP).
    UnsupportedRangeFlags {
        /// Segment flags.
        flags: u32,
    },
    /// A discard/write-zeroes segment with more than [`MAX_RANGE_SECTORS`] sectors.
    RangeSegmentTooLarge {
        /// Sectors in the segment.
        count: u32,
    },
    /// A buffer in memory the device cannot reach.
    Memory(MemoryError),
    /// The physical disk failed.
    Device(DeviceError),
}

impl RequestError for BlkError {
    fn blame(&self) -> Blame {
        match self {
            BlkError::Device(_) => Blame::PhysicalDevice,
            _ => Blame::Frontend,
        }
    }
}

impl BlkError {
    fn status(&self) -> u8 {
        match self {
            BlkError::UnsupportedType(_) | BlkError::UnsupportedRangeFlags { .. } => S_UNSUPP,
            _ => S_IOERR,
        }
    }
}

impl From<ReadError> for BlkError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Memory(m) => BlkError::Memory(m),
            ReadError::Short { available, .. } => BlkError::HeaderTooShort {
                readable: available,
            },
        }
    }
}

impl From<DeviceError> for BlkError {
    fn from(e: DeviceError) -> Self {
        BlkError::Device(e)
    }
}

/// Counters of served requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlkStats {
    /// Sectors read.
    pub sectors_read: u64,
    /// Sectors written.
    pub sectors_written: u64,
    /// Flushes.
    pub flushes: u64,
    /// Requests answered with IOERR or UNSUPP.
    pub errors: u64,
}

/// The virtio-blk device model.
#[derive(Debug)]
pub struct Blk<B: BlockDevice> {
    disk: B,
    bounce: Vec<u8>,
    stats: BlkStats,
}

impl<B: BlockDevice> Blk<B> {
    /// A block device serving `disk`.
    pub fn new(disk: B) -> Self {
        Blk {
            disk,
            bounce: vec![0; CHUNK_BYTES],
            stats: BlkStats::default(),
        }
    }
    /// The physical disk.
    pub fn disk(&self) -> &B {
        &self.disk
    }
    /// The physical disk, mutably (e.g. to resize; then call `Device::config_changed`).
    pub fn disk_mut(&mut self) -> &mut B {
        &mut self.disk
    }
    /// Request counters.
    pub fn stats(&self) -> BlkStats {
        self.stats
    }

    fn config_bytes(&self) -> [u8; CONFIG_LEN as usize] {
        let mut c = [0u8; CONFIG_LEN as usize];
        let mut put = |at: usize, bytes: &[u8]| c[at..at + bytes.len()].copy_from_slice(bytes);
        put(0, &self.disk.capacity_sectors().to_le_bytes());
        put(8, &SIZE_MAX.to_le_bytes());
        put(12, &SEG_MAX.to_le_bytes());
        let block = self.disk.block_size().max(SECTOR_SIZE as u32);
        put(20, &block.to_le_bytes());
        put(34, &1u16.to_le_bytes()); // num_queues
        put(36, &MAX_RANGE_SECTORS.to_le_bytes()); // max_discard_sectors
        put(40, &MAX_RANGE_SEGMENTS.to_le_bytes()); // max_discard_seg
        put(44, &(block / SECTOR_SIZE as u32).to_le_bytes()); // discard_sector_alignment
        put(48, &MAX_RANGE_SECTORS.to_le_bytes()); // max_write_zeroes_sectors
        put(52, &MAX_RANGE_SEGMENTS.to_le_bytes()); // max_write_zeroes_seg
        c
    }

    fn check_range(&self, sector: u64, count: u64) -> Result<(), BlkError> {
        let capacity = self.disk.capacity_sectors();
        match sector.checked_add(count) {
            Some(end) if end <= capacity => Ok(()),
            _ => Err(BlkError::SectorOutOfRange {
                sector,
                count,
                capacity,
            }),
        }
    }

    /// Serves one request; returns the bytes written before the status byte.
    fn serve<M: GuestMemory + ?Sized>(
        &mut self,
        chain: &DescriptorChain,
        mem: &M,
        reader: &mut ChainReader<'_>,
    ) -> Result<u32, BlkError> {
        let mut header = [0u8; HEADER_LEN as usize];
        if chain.readable_len() < HEADER_LEN {
            return Err(BlkError::HeaderTooShort {
                readable: chain.readable_len(),
            });
        }
        reader.read_exact(mem, &mut header)?;
        let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let mut s = [0u8; 8];
        s.copy_from_slice(&header[8..16]);
        let sector = u64::from_le_bytes(s);
        // Bytes the device may write before the status byte.
        let out_room = chain.writable_len() - 1;
        match kind {
            T_IN => self.read(chain, mem, sector, out_room),
            T_OUT => self.write(mem, reader, sector).map(|()| 0),
            T_FLUSH => {
                self.disk.flush()?;
                self.stats.flushes += 1;
                Ok(0)
            }
            T_GET_ID => {
                let id = self.disk.id();
                let n = (out_room as usize).min(GET_ID_LEN);
                chain.writer(0, n as u32).write_all(mem, &id[..n])?;
                Ok(n as u32)
            }
            T_DISCARD | T_WRITE_ZEROES => self.ranges(mem, reader, kind).map(|()| 0),
            other => Err(BlkError::UnsupportedType(other)),
        }
    }

    fn data_sectors(&self, sector: u64, len: u32) -> Result<u64, BlkError> {
        if !len.is_multiple_of(SECTOR_SIZE as u32) {
            return Err(BlkError::DataNotSectorMultiple { len });
        }
        if len > MAX_REQUEST_BYTES {
            return Err(BlkError::RequestTooLarge { len });
        }
        let count = u64::from(len) / SECTOR_SIZE as u64;
        self.check_range(sector, count)?;
        Ok(count)
    }

    fn read<M: GuestMemory + ?Sized>(
        &mut self,
        chain: &DescriptorChain,
        mem: &M,
        sector: u64,
        len: u32,
    ) -> Result<u32, BlkError> {
        let count = self.data_sectors(sector, len)?;
        let mut writer = chain.writer(0, len);
        let mut at = sector;
        while writer.remaining() > 0 {
            let n = (writer.remaining() as usize).min(CHUNK_BYTES);
            self.disk.read(at, &mut self.bounce[..n])?;
            writer.write_all(mem, &self.bounce[..n])?;
            at += (n / SECTOR_SIZE) as u64;
        }
        self.stats.sectors_read += count;
        Ok(len)
    }

    fn write<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        reader: &mut ChainReader<'_>,
        sector: u64,
    ) -> Result<(), BlkError> {
        let len = reader.remaining();
        if self.disk.read_only() {
            return Err(BlkError::ReadOnly);
        }
        let count = self.data_sectors(sector, len)?;
        let mut at = sector;
        while reader.remaining() > 0 {
            let n = (reader.remaining() as usize).min(CHUNK_BYTES);
            reader.read_exact(mem, &mut self.bounce[..n])?;
            self.disk.write(at, &self.bounce[..n])?;
            at += (n / SECTOR_SIZE) as u64;
        }
        self.stats.sectors_written += count;
        Ok(())
    }

    /// DISCARD and WRITE_ZEROES: a list of {sector: u64, num_sectors: u32, flags: u32}.
    fn ranges<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        reader: &mut ChainReader<'_>,
        kind: u32,
    ) -> Result<(), BlkError> {
        let len = reader.remaining();
        let segments = len / RANGE_SEGMENT_LEN;
        if !len.is_multiple_of(RANGE_SEGMENT_LEN) || segments == 0 || segments > MAX_RANGE_SEGMENTS
        {
            return Err(BlkError::BadRangeSegments { len });
        }
        if self.disk.read_only() {
            return Err(BlkError::ReadOnly);
        }
        // Copy and check every segment before acting on any.
        let mut parsed = [(0u64, 0u32); MAX_RANGE_SEGMENTS as usize];
        for slot in parsed.iter_mut().take(segments as usize) {
            let mut raw = [0u8; RANGE_SEGMENT_LEN as usize];
            reader.read_exact(mem, &mut raw)?;
            let mut s = [0u8; 8];
            s.copy_from_slice(&raw[..8]);
            let sector = u64::from_le_bytes(s);
            let count = u32::from_le_bytes([raw[8], raw[9], raw[10], raw[11]]);
            let flags = u32::from_le_bytes([raw[12], raw[13], raw[14], raw[15]]);
            // Spec 5.2.6.2: unmap is only meaningful for write-zeroes; unknown flags are refused.
            let bad_flags = flags & !RANGE_FLAG_UNMAP != 0 || (kind == T_DISCARD && flags != 0);
            if bad_flags {
                return Err(BlkError::UnsupportedRangeFlags { flags });
            }
            if count > MAX_RANGE_SECTORS {
                return Err(BlkError::RangeSegmentTooLarge { count });
            }
            self.check_range(sector, u64::from(count))?;
            *slot = (sector, count);
        }
        for &(sector, count) in &parsed[..segments as usize] {
            if kind == T_DISCARD {
                match self.disk.discard(sector, u64::from(count)) {
                    // Discard is a hint: a disk that cannot discard still succeeds.
                    Ok(()) | Err(DeviceError::Unsupported) => {}
                    Err(e) => return Err(e.into()),
                }
            } else {
                self.disk.write_zeroes(sector, u64::from(count))?;
            }
        }
        Ok(())
    }
}

impl<B: BlockDevice> DeviceModel for Blk<B> {
    type Error = BlkError;

    fn device_id(&self) -> u32 {
        DEVICE_ID
    }
    fn features(&self) -> u64 {
        let ro = if self.disk.read_only() { FEATURE_RO } else { 0 };
        FEATURE_SIZE_MAX
            | FEATURE_SEG_MAX
            | FEATURE_BLK_SIZE
            | FEATURE_FLUSH
            | FEATURE_DISCARD
            | FEATURE_WRITE_ZEROES
            | ro
    }
    fn queue_count(&self) -> u16 {
        1
    }
    fn queue_max_size(&self, _index: u16) -> u16 {
        QUEUE_SIZE
    }
    fn config_len(&self) -> u32 {
        CONFIG_LEN
    }
    fn read_config(&self, offset: u32, data: &mut [u8]) {
        let c = self.config_bytes();
        let start = offset as usize;
        data.copy_from_slice(&c[start..start + data.len()]);
    }

    fn process<M: GuestMemory + ?Sized>(
        &mut self,
        _queue: u16,
        chain: &DescriptorChain,
        mem: &M,
    ) -> Completion<BlkError> {
        if chain.writable_len() == 0 {
            self.stats.errors += 1;
            return Completion::failed(0, BlkError::NoStatusByte);
        }
        let status_at = chain.writable_len() - 1;
        let mut reader = chain.reader();
        let (written, status, error) = match self.serve(chain, mem, &mut reader) {
            Ok(written) => (written, S_OK, None),
            Err(e) => {
                self.stats.errors += 1;
                (0, e.status(), Some(e))
            }
        };
        if let Err(e) = chain.writer(status_at, 1).write_all(mem, &[status]) {
            return Completion::failed(written, error.unwrap_or(BlkError::from(e)));
        }
        Completion {
            used_len: written + 1,
            error,
        }
    }
}
