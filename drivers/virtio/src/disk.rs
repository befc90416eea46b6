//! [`VirtioDisk`]: a passed-through virtio-blk device as a [`BlockDevice`].

use alloc::vec::Vec;

use ferry_drivers::{BlockDevice, DeviceError, SECTOR_SIZE};
use virtio_drivers::device::blk::{VirtIOBlk, SECTOR_SIZE as VIRTIO_SECTOR_SIZE};
use virtio_drivers::transport::{DeviceType, Transport};
use virtio_drivers::Hal;

use crate::{check_type, map_error, ProbeError};

// Both sides count in the 512-byte sectors of virtio-blk (spec 5.2.6).
const _: () = assert!(SECTOR_SIZE == VIRTIO_SECTOR_SIZE);

/// Largest data buffer of one request sent to the device; larger transfers are split.
///
/// `virtio-drivers` 0.13 negotiates neither SIZE_MAX nor SEG_MAX, so the device has not told us
/// its limits; 64 KiB in one segment is accepted by every device we know of (QEMU, Ferry's own
/// blk backend, which advertises 1 MiB) and keeps the buffer the `Hal` must share small.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Identification reported when the device refuses GET_ID (zero-padded to 20 bytes).
pub const FALLBACK_ID: [u8; 20] = *b"ferry-virtio-disk\0\0\0";

/// Sectors in one request of [`MAX_REQUEST_BYTES`].
const SECTORS_PER_REQUEST: usize = MAX_REQUEST_BYTES / SECTOR_SIZE;

/// A virtio-blk device driven by `virtio-drivers`, seen as a Ferry [`BlockDevice`].
///
/// Every range is checked against the capacity read at probe time before a request is sent,
/// and buffers that are not whole sectors are refused with [`DeviceError::OutOfRange`]; so a
/// request never reaches the device (or `virtio-drivers`' own assertions) malformed.
pub struct VirtioDisk<H: Hal, T: Transport> {
    blk: VirtIOBlk<H, T>,
    id: [u8; 20],
}

impl<H: Hal, T: Transport> VirtioDisk<H, T> {
    /// Initialises the block device behind `transport` and reads its identification.
    ///
    /// If the device answers GET_ID with an error, [`FALLBACK_ID`] is reported instead.
    pub fn new(transport: T) -> Result<Self, ProbeError> {
        check_type(&transport, DeviceType::Block)?;
        let mut blk = VirtIOBlk::new(transport).map_err(ProbeError::Driver)?;
        let mut id = [0u8; 20];
        let id = match blk.device_id(&mut id) {
            Ok(len) => {
                // The string ends at the first zero; the rest is padding (spec 5.2.6).
                if let Some(padding) = id.get_mut(len..) {
                    padding.fill(0);
                }
                id
            }
            Err(_) => FALLBACK_ID,
        };
        Ok(VirtioDisk { blk, id })
    }

    /// Checks that `len` bytes from `sector` are whole sectors inside the device, and returns
    /// the first sector as the block index `virtio-drivers` takes.
    fn check_range(&self, sector: u64, len: usize) -> Result<usize, DeviceError> {
        if !len.is_multiple_of(SECTOR_SIZE) {
            return Err(DeviceError::OutOfRange);
        }
        let count = u64::try_from(len / SECTOR_SIZE).map_err(|_| DeviceError::OutOfRange)?;
        match sector.checked_add(count) {
            // The end fits in usize too, so every block index of the transfer does.
            Some(end) if end <= self.blk.capacity() && usize::try_from(end).is_ok() => {
                usize::try_from(sector).map_err(|_| DeviceError::OutOfRange)
            }
            _ => Err(DeviceError::OutOfRange),
        }
    }
}

impl<H: Hal, T: Transport> core::fmt::Debug for VirtioDisk<H, T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("VirtioDisk")
            .field("capacity_sectors", &self.blk.capacity())
            .field("read_only", &self.blk.readonly())
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl<H: Hal, T: Transport> BlockDevice for VirtioDisk<H, T> {
    fn capacity_sectors(&self) -> u64 {
        self.blk.capacity()
    }

    fn read_only(&self) -> bool {
        self.blk.readonly()
    }

    fn id(&self) -> [u8; 20] {
        self.id
    }

    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        let first = self.check_range(sector, buf.len())?;
        for (i, chunk) in buf.chunks_mut(MAX_REQUEST_BYTES).enumerate() {
            let block = first + i * SECTORS_PER_REQUEST;
            self.blk.read_blocks(block, chunk).map_err(map_error)?;
        }
        Ok(())
    }

    fn write(&mut self, sector: u64, data: &[u8]) -> Result<(), DeviceError> {
        if self.blk.readonly() {
            return Err(DeviceError::ReadOnly);
        }
        let first = self.check_range(sector, data.len())?;
        for (i, chunk) in data.chunks(MAX_REQUEST_BYTES).enumerate() {
            let block = first + i * SECTORS_PER_REQUEST;
            self.blk.write_blocks(block, chunk).map_err(map_error)?;
        }
        Ok(())
    }

    /// Sends FLUSH.
    ///
    /// `virtio-drivers` negotiates FLUSH whenever the device offers it. A device that does not
    /// offer it has no command to flush with, so this succeeds without a request (as Linux does:
    /// it then treats the disk as write-through).
    fn flush(&mut self) -> Result<(), DeviceError> {
        self.blk.flush().map_err(map_error)
    }

    /// Refused with [`DeviceError::Unsupported`] (after the range check): `virtio-drivers` 0.13
    /// does not negotiate DISCARD. Discard is a hint, and the blk backend treats this as success.
    fn discard(&mut self, sector: u64, count: u64) -> Result<(), DeviceError> {
        self.check_range(sector, sectors_to_bytes(count)?)?;
        Err(DeviceError::Unsupported)
    }

    /// Writes zero-filled buffers of up to [`MAX_REQUEST_BYTES`]: `virtio-drivers` 0.13 does not
    /// negotiate WRITE_ZEROES. The zero buffer is allocated per call; failing to allocate it is
    /// reported as [`DeviceError::Io`].
    fn write_zeroes(&mut self, sector: u64, count: u64) -> Result<(), DeviceError> {
        if self.blk.readonly() {
            return Err(DeviceError::ReadOnly);
        }
        let bytes = sectors_to_bytes(count)?;
        let first = self.check_range(sector, bytes)?;
        let chunk = bytes.min(MAX_REQUEST_BYTES);
        let mut zeroes = Vec::new();
        zeroes
            .try_reserve_exact(chunk)
            .map_err(|_| DeviceError::Io)?;
        zeroes.resize(chunk, 0);
        let mut block = first;
        let mut remaining = bytes;
        while remaining > 0 {
            let n = remaining.min(chunk);
            self.blk
                .write_blocks(block, &zeroes[..n])
                .map_err(map_error)?;
            block += n / SECTOR_SIZE;
            remaining -= n;
        }
        Ok(())
    }
}

/// `count` sectors in bytes, or [`DeviceError::OutOfRange`] if that does not fit in memory.
fn sectors_to_bytes(count: u64) -> Result<usize, DeviceError> {
    usize::try_from(count)
        .ok()
        .and_then(|c| c.checked_mul(SECTOR_SIZE))
        .ok_or(DeviceError::OutOfRange)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_size_is_whole_sectors() {
        assert!(MAX_REQUEST_BYTES.is_multiple_of(SECTOR_SIZE));
        assert_eq!(SECTORS_PER_REQUEST * SECTOR_SIZE, MAX_REQUEST_BYTES);
    }

    #[test]
    fn huge_sector_counts_are_out_of_range() {
        assert_eq!(sectors_to_bytes(u64::MAX), Err(DeviceError::OutOfRange));
        assert_eq!(sectors_to_bytes(3), Ok(3 * SECTOR_SIZE));
    }

    #[test]
    fn fallback_id_is_zero_padded() {
        let len = FALLBACK_ID.iter().position(|&b| b == 0).unwrap();
        assert_eq!(&FALLBACK_ID[..len], b"ferry-virtio-disk");
        assert!(FALLBACK_ID[len..].iter().all(|&b| b == 0));
    }
}
