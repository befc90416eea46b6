//! Block devices: the physical disk a blk appliance owns.

use alloc::vec;
use alloc::vec::Vec;

use crate::DeviceError;

/// Size of one sector, the unit of virtio-blk addressing (virtio spec 5.2.6).
pub const SECTOR_SIZE: usize = 512;

/// A block device addressed in 512-byte sectors.
///
/// Callers (the virtio-blk backend) check every range against [`BlockDevice::capacity_sectors`]
/// before calling; implementations still return [`DeviceError::OutOfRange`] rather than panic.
pub trait BlockDevice {
    /// Number of 512-byte sectors the device holds.
    fn capacity_sectors(&self) -> u64;
    /// Preferred block size in bytes (a power of two, at least 512).
    fn block_size(&self) -> u32 {
        SECTOR_SIZE as u32
    }
    /// True if writes are refused.
    fn read_only(&self) -> bool {
        false
    }
    /// A 20-byte identification string (virtio-blk GET_ID); unused bytes are zero.
    fn id(&self) -> [u8; 20] {
        [0; 20]
    }
    /// Reads `buf.len()` bytes (a multiple of 512) starting at `sector`.
    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), DeviceError>;
    /// Writes `data` (a multiple of 512 bytes) starting at `sector`.
    fn write(&mut self, sector: u64, data: &[u8]) -> Result<(), DeviceError>;
    /// Makes all completed writes durable.
    fn flush(&mut self) -> Result<(), DeviceError>;
    /// Tells the device that `count` sectors from `sector` are no longer needed.
    fn discard(&mut self, sector: u64, count: u64) -> Result<(), DeviceError> {
        let _ = (sector, count);
        Err(DeviceError::Unsupported)
    }
    /// Sets `count` sectors from `sector` to zero.
    fn write_zeroes(&mut self, sector: u64, count: u64) -> Result<(), DeviceError> {
        let zeroes = [0u8; SECTOR_SIZE];
        for s in sector..sector.checked_add(count).ok_or(DeviceError::OutOfRange)? {
            self.write(s, &zeroes)?;
        }
        Ok(())
    }
}

/// A disk held in memory: the smallest real [`BlockDevice`], used by tests and RAM-disk appliances.
#[derive(Clone, Debug)]
pub struct RamDisk {
    data: Vec<u8>,
    read_only: bool,
    id: [u8; 20],
    flushes: u64,
    discarded_sectors: u64,
}

impl RamDisk {
    /// A zero-filled disk of `sectors` sectors.
    pub fn new(sectors: usize) -> Self {
        Self::from_bytes(vec![0; sectors * SECTOR_SIZE])
    }

    /// A disk holding `data`, whose length is rounded down to whole sectors.
    pub fn from_bytes(mut data: Vec<u8>) -> Self {
        data.truncate(data.len() / SECTOR_SIZE * SECTOR_SIZE);
        let mut id = [0u8; 20];
        id[..12].copy_from_slice(b"ferry-ramdsk");
        RamDisk {
            data,
            read_only: false,
            id,
            flushes: 0,
            discarded_sectors: 0,
        }
    }

    /// Makes the disk refuse writes.
    pub fn set_read_only(&mut self, read_only: bool) {
        self.read_only = read_only;
    }

    /// Replaces the identification string.
    pub fn set_id(&mut self, id: [u8; 20]) {
        self.id = id;
    }

    /// Changes the size (new sectors are zero); models a resized backing disk.
    pub fn resize(&mut self, sectors: usize) {
        self.data.resize(sectors * SECTOR_SIZE, 0);
    }

    /// The disk's contents.
    pub fn bytes(&self) -> &[u8] {
        &self.data
    }

    /// How many times [`BlockDevice::flush`] was called.
    pub fn flush_count(&self) -> u64 {
        self.flushes
    }

    /// Total sectors passed to [`BlockDevice::discard`].
    pub fn discarded_sectors(&self) -> u64 {
        self.discarded_sectors
    }

    fn range(&self, sector: u64, bytes: usize) -> Result<core::ops::Range<usize>, DeviceError> {
        let start = usize::try_from(sector)
            .ok()
            .and_then(|s| s.checked_mul(SECTOR_SIZE))
            .ok_or(DeviceError::OutOfRange)?;
        let end = start.checked_add(bytes).ok_or(DeviceError::OutOfRange)?;
        if end > self.data.len() || !bytes.is_multiple_of(SECTOR_SIZE) {
            return Err(DeviceError::OutOfRange);
        }
        Ok(start..end)
    }
}

impl BlockDevice for RamDisk {
    fn capacity_sectors(&self) -> u64 {
        (self.data.len() / SECTOR_SIZE) as u64
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn id(&self) -> [u8; 20] {
        self.id
    }
    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        let range = self.range(sector, buf.len())?;
        buf.copy_from_slice(&self.data[range]);
        Ok(())
    }
    fn write(&mut self, sector: u64, data: &[u8]) -> Result<(), DeviceError> {
        if self.read_only {
            return Err(DeviceError::ReadOnly);
        }
        let range = self.range(sector, data.len())?;
        self.data[range].copy_from_slice(data);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), DeviceError> {
        self.flushes += 1;
        Ok(())
    }
    fn discard(&mut self, sector: u64, count: u64) -> Result<(), DeviceError> {
        let bytes = usize::try_from(count)
            .ok()
            .and_then(|c| c.checked_mul(SECTOR_SIZE))
            .ok_or(DeviceError::OutOfRange)?;
        self.range(sector, bytes)?;
        self.discarded_sectors += count;
        Ok(())
    }
    fn write_zeroes(&mut self, sector: u64, count: u64) -> Result<(), DeviceError> {
        if self.read_only {
            return Err(DeviceError::ReadOnly);
        }
        let bytes = usize::try_from(count)
            .ok()
            .and_then(|c| c.checked_mul(SECTOR_SIZE))
            .ok_or(DeviceError::OutOfRange)?;
        let range = self.range(sector, bytes)?;
        self.data[range].fill(0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ramdisk_round_trip_and_bounds() {
        let mut disk = RamDisk::new(4);
        assert_eq!(disk.capacity_sectors(), 4);
        disk.write(1, &[7u8; 1024]).unwrap();
        let mut buf = [0u8; 512];
        disk.read(2, &mut buf).unwrap();
        assert_eq!(buf, [7u8; 512]);
        assert_eq!(disk.read(4, &mut buf), Err(DeviceError::OutOfRange));
        assert_eq!(disk.write(3, &[0u8; 1024]), Err(DeviceError::OutOfRange));
        assert_eq!(disk.read(u64::MAX, &mut buf), Err(DeviceError::OutOfRange));
        disk.write_zeroes(1, 1).unwrap();
        disk.read(1, &mut buf).unwrap();
        assert_eq!(buf, [0u8; 512]);
        disk.set_read_only(true);
        assert_eq!(disk.write(0, &[1u8; 512]), Err(DeviceError::ReadOnly));
    }
}
