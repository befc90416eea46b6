//! [`VirtioDisk`]: a passed-through virtio-blk device as a [`BlockDevice`].

use alloc::boxed::Box;
use alloc::vec::Vec;

use ferry_drivers::{BlockDevice, DeviceError, SECTOR_SIZE};
use virtio_drivers::device::blk::{BlkReq, BlkResp, VirtIOBlk, SECTOR_SIZE as VIRTIO_SECTOR_SIZE};
use virtio_drivers::transport::{DeviceType, Transport};
use virtio_drivers::Hal;

use crate::{check_type, map_error, ProbeError};

// Both sides count in the 512-byte sectors of virtio-blk (spec 5.2.6).
const _: () = assert!(SECTOR_SIZE == VIRTIO_SECTOR_SIZE);

/// Largest data buffer of one request sent to the device; larger transfers are split.
///
/// `virtio-drivers` 0.13 negotiates neither SIZE_MAX nor SEG_MAX, so the device has not told us
/// its limits; 64 KiB in one segment is accepted by every device we know of (QEMU, Ferry's own
/// blk backend, which advertises 1 MiB) and keeps the buffer the `Hal` must share small. It is
/// also the size of [`VirtioDisk`]'s bounce buffer.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Identification reported when the device refuses GET_ID (zero-padded to 20 bytes).
pub const FALLBACK_ID: [u8; 20] = *b"ferry-virtio-disk\0\0\0";

/// Sectors in one request of [`MAX_REQUEST_BYTES`].
const SECTORS_PER_REQUEST: usize = MAX_REQUEST_BYTES / SECTOR_SIZE;

/// How [`VirtioDisk`] waits for the device to complete a request.
///
/// After submitting a request the disk calls [`start`](Waiter::start) once, then polls the used
/// ring and calls [`pause`](Waiter::pause) between polls until the request is complete or
/// `pause` returns false (the deadline passed: the disk gives up, see [`VirtioDisk`]).
pub trait Waiter {
    /// A request has just been submitted (start the clock).
    fn start(&mut self);
    /// The request is not complete yet: pause between two polls. Returns false once the
    /// deadline has passed.
    fn pause(&mut self) -> bool;
}

/// The waiter that never gives up: spins on the used ring without a deadline (like
/// `virtio-drivers`' blocking calls). For host tests and devices that cannot die.
#[derive(Debug, Default, Clone, Copy)]
pub struct Spin;

impl Waiter for Spin {
    fn start(&mut self) {}

    fn pause(&mut self) -> bool {
        core::hint::spin_loop();
        true
    }
}

/// The memory of the one request in flight: shared with the device from submission until
/// completion, and forever after a request timed out.
///
/// Boxed, so that it stays put when the [`VirtioDisk`] is moved; owned by the disk and never
/// lent out, so no caller buffer is ever given to the device.
struct RequestBuffers {
    req: BlkReq,
    resp: BlkResp,
    /// The bounce buffer: data is copied in (writes) or out (reads) of it.
    data: Box<[u8]>,
}

/// A virtio-blk device driven by `virtio-drivers`, seen as a Ferry [`BlockDevice`].
///
/// Every range is checked against the capacity read at probe time before a request is sent,
/// and buffers that are not whole sectors are refused with [`DeviceError::OutOfRange`]; so a
/// request never reaches the device (or `virtio-drivers`' own assertions) malformed.
///
/// Reads and writes go through a bounce buffer of [`MAX_REQUEST_BYTES`] owned by the disk and
/// are submitted with `virtio-drivers`' non-blocking API; the disk then polls the used ring,
/// pausing with its [`Waiter`] between polls. If the waiter's deadline passes, the request is
/// abandoned and reported as [`DeviceError::Io`], and the disk is **failed** from then on: every
/// later read, write, write-zeroes or flush returns [`DeviceError::Io`] without touching the
/// queue, because the device may still complete (DMA into) the abandoned request's buffers and
/// `virtio-drivers` cannot take a request back. Recovering needs a device reset, which this
/// driver does not do: the appliance should be restarted. The buffers are freed only when the
/// disk is dropped, after `virtio-drivers` has told the device to stop using the queue.
///
/// FLUSH (and GET_ID during [`new`](Self::new)) have no non-blocking variant in
/// `virtio-drivers` 0.13: they spin on the used ring without a deadline, so a device that dies
/// during a flush still hangs the caller.
pub struct VirtioDisk<H: Hal, T: Transport, W: Waiter = Spin> {
    // Declared (so dropped) before `buffers`: dropping it unsets the queue first.
    blk: VirtIOBlk<H, T>,
    buffers: Box<RequestBuffers>,
    waiter: W,
    failed: bool,
    id: [u8; 20],
}

impl<H: Hal, T: Transport> VirtioDisk<H, T, Spin> {
    /// Initialises the block device behind `transport` and reads its identification; requests
    /// are waited for without a deadline ([`Spin`]).
    ///
    /// If the device answers GET_ID with an error, [`FALLBACK_ID`] is reported instead.
    pub fn new(transport: T) -> Result<Self, ProbeError> {
        Self::with_waiter(transport, Spin)
    }
}

impl<H: Hal, T: Transport, W: Waiter> VirtioDisk<H, T, W> {
    /// Initialises the block device behind `transport` and reads its identification; reads and
    /// writes are waited for with `waiter`.
    ///
    /// If the device answers GET_ID with an error, [`FALLBACK_ID`] is reported instead. Failing
    /// to allocate the bounce buffer is reported as `ProbeError::Driver(Error::DmaError)`.
    pub fn with_waiter(transport: T, waiter: W) -> Result<Self, ProbeError> {
        check_type(&transport, DeviceType::Block)?;
        let mut data = Vec::new();
        data.try_reserve_exact(MAX_REQUEST_BYTES)
            .map_err(|_| ProbeError::Driver(virtio_drivers::Error::DmaError))?;
        data.resize(MAX_REQUEST_BYTES, 0);
        let buffers = Box::new(RequestBuffers {
            req: BlkReq::default(),
            resp: BlkResp::default(),
            data: data.into_boxed_slice(),
        });
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
        Ok(VirtioDisk {
            blk,
            buffers,
            waiter,
            failed: false,
            id,
        })
    }

    /// Whether a request timed out: the disk then refuses every request (see [`VirtioDisk`]).
    pub fn failed(&self) -> bool {
        self.failed
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

    /// [`DeviceError::Io`] once the disk has failed.
    fn check_alive(&self) -> Result<(), DeviceError> {
        if self.failed {
            Err(DeviceError::Io)
        } else {
            Ok(())
        }
    }

    /// Waits with the waiter until the device has used a chain; on a passed deadline, marks the
    /// disk failed (the request stays with the device).
    fn wait_used(&mut self) -> Result<(), DeviceError> {
        self.waiter.start();
        while self.blk.peek_used().is_none() {
            if !self.waiter.pause() {
                self.failed = true;
                return Err(DeviceError::Io);
            }
        }
        Ok(())
    }

    /// What a completion's result means for the disk: the device's own statuses fail the
    /// request; any other error means `virtio-drivers` could not take the chain back (e.g. the
    /// device used another one), so the request may still be in flight and the disk fails.
    fn completed(&mut self, result: virtio_drivers::Result) -> Result<(), DeviceError> {
        use virtio_drivers::Error;
        match result {
            Ok(()) => Ok(()),
            Err(error @ (Error::IoError | Error::Unsupported | Error::NotReady)) => {
                Err(map_error(error))
            }
            Err(error) => {
                self.failed = true;
                Err(map_error(error))
            }
        }
    }

    /// Reads `len` bytes (whole sectors, at most [`MAX_REQUEST_BYTES`]) from `block` into the
    /// start of the bounce buffer.
    fn read_request(&mut self, block: usize, len: usize) -> Result<(), DeviceError> {
        self.check_alive()?;
        let buffers = &mut *self.buffers;
        // SAFETY: `req`, `resp` and the bounce buffer are owned by `self` behind a `Box`, so they
        // stay at the same address however `self` moves, and nothing but the calls below touches
        // them while the request is outstanding: either it completes (`complete_read_blocks`
        // below, with the same buffers), or it times out and `failed` keeps every later call
        // away from them; they are freed only when the disk is dropped, after the `VirtIOBlk`
        // (declared first) has unset the queue.
        #[allow(unsafe_code)]
        let token = unsafe {
            self.blk.read_blocks_nb(
                block,
                &mut buffers.req,
                &mut buffers.data[..len],
                &mut buffers.resp,
            )
        }
        .map_err(map_error)?;
        self.wait_used()?;
        let buffers = &mut *self.buffers;
        // SAFETY: the same buffers as passed to `read_blocks_nb` above, and the device has used
        // a chain (`peek_used`); `pop_used` checks that it is this one.
        #[allow(unsafe_code)]
        let result = unsafe {
            self.blk.complete_read_blocks(
                token,
                &buffers.req,
                &mut buffers.data[..len],
                &mut buffers.resp,
            )
        };
        self.completed(result)
    }

    /// Writes the first `len` bytes of the bounce buffer (whole sectors, at most
    /// [`MAX_REQUEST_BYTES`]) to `block`.
    fn write_request(&mut self, block: usize, len: usize) -> Result<(), DeviceError> {
        self.check_alive()?;
        let buffers = &mut *self.buffers;
        // SAFETY: as in `read_request`: the buffers are owned by `self` behind a `Box`, touched
        // by nothing else while the request is outstanding, and never again after a timeout.
        #[allow(unsafe_code)]
        let token = unsafe {
            self.blk.write_blocks_nb(
                block,
                &mut buffers.req,
                &buffers.data[..len],
                &mut buffers.resp,
            )
        }
        .map_err(map_error)?;
        self.wait_used()?;
        let buffers = &mut *self.buffers;
        // SAFETY: the same buffers as passed to `write_blocks_nb` above, and the device has used
        // a chain (`peek_used`); `pop_used` checks that it is this one.
        #[allow(unsafe_code)]
        let result = unsafe {
            self.blk.complete_write_blocks(
                token,
                &buffers.req,
                &buffers.data[..len],
                &mut buffers.resp,
            )
        };
        self.completed(result)
    }
}

impl<H: Hal, T: Transport, W: Waiter> core::fmt::Debug for VirtioDisk<H, T, W> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("VirtioDisk")
            .field("capacity_sectors", &self.blk.capacity())
            .field("read_only", &self.blk.readonly())
            .field("id", &self.id)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl<H: Hal, T: Transport, W: Waiter> BlockDevice for VirtioDisk<H, T, W> {
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
            self.read_request(block, chunk.len())?;
            chunk.copy_from_slice(&self.buffers.data[..chunk.len()]);
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
            self.check_alive()?;
            self.buffers.data[..chunk.len()].copy_from_slice(chunk);
            self.write_request(block, chunk.len())?;
        }
        Ok(())
    }

    /// Sends FLUSH, waiting without a deadline (`virtio-drivers` has no non-blocking flush).
    ///
    /// `virtio-drivers` negotiates FLUSH whenever the device offers it. A device that does not
    /// offer it has no command to flush with, so this succeeds without a request (as Linux does:
    /// it then treats the disk as write-through).
    fn flush(&mut self) -> Result<(), DeviceError> {
        self.check_alive()?;
        self.blk.flush().map_err(map_error)
    }

    /// Refused with [`DeviceError::Unsupported`] (after the range check): `virtio-drivers` 0.13
    /// does not negotiate DISCARD. Discard is a hint, and the blk backend treats this as success.
    fn discard(&mut self, sector: u64, count: u64) -> Result<(), DeviceError> {
        self.check_range(sector, sectors_to_bytes(count)?)?;
        Err(DeviceError::Unsupported)
    }

    /// Writes zeroes from the bounce buffer, up to [`MAX_REQUEST_BYTES`] per request:
    /// `virtio-drivers` 0.13 does not negotiate WRITE_ZEROES.
    fn write_zeroes(&mut self, sector: u64, count: u64) -> Result<(), DeviceError> {
        if self.blk.readonly() {
            return Err(DeviceError::ReadOnly);
        }
        let bytes = sectors_to_bytes(count)?;
        let first = self.check_range(sector, bytes)?;
        self.check_alive()?;
        let chunk = bytes.min(MAX_REQUEST_BYTES);
        self.buffers.data[..chunk].fill(0);
        let mut block = first;
        let mut remaining = bytes;
        while remaining > 0 {
            let n = remaining.min(chunk);
            self.write_request(block, n)?;
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
