//! Fault injection: a [`BlockDevice`] wrapper whose disk "has a bad range".
//!
//! [`FaultyDisk`] passes every request to the disk it wraps, except reads and/or writes that
//! touch a configured range of sectors ([`BadSectors`]): those fail with [`DeviceError::Io`],
//! as a physical disk with unreadable sectors would, and are counted. The blk appliance wraps
//! its physical disk in one when booted with `blk.fail=<first sector>+<count>`, so that a
//! frontend (an unmodified Linux) can be shown a real I/O error coming from the device side.

use core::fmt;
use core::ops::Range;
use core::str::FromStr;

use crate::{BlockDevice, DeviceError, SECTOR_SIZE};

/// A non-empty range of sectors, written `<first sector>+<count>` (decimal, e.g. `40960+8`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadSectors {
    first: u64,
    count: u64,
}

/// Why a [`BadSectors`] cannot be made or does not fit a disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadSectorsError {
    /// Not `<first sector>+<count>` with two decimal numbers.
    Syntax,
    /// A count of zero.
    Empty,
    /// `first + count` does not fit in 64 bits.
    Overflow,
    /// The range ends past the last sector of the disk.
    PastEnd {
        /// One past the range's last sector.
        end: u64,
        /// Sectors the disk holds.
        capacity: u64,
    },
}

impl fmt::Display for BadSectorsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BadSectorsError::Syntax => {
                f.write_str("expected <first sector>+<count>, two decimal numbers")
            }
            BadSectorsError::Empty => f.write_str("the count must not be 0"),
            BadSectorsError::Overflow => f.write_str("first sector + count overflows"),
            // No numbers: formatting them costs the blk appliance's image more than they say
            // (its boot log names the disk's size just before).
            BadSectorsError::PastEnd { .. } => f.write_str("the range ends past the disk's end"),
        }
    }
}

/// A plain decimal number: digits only (no sign, no spaces, no `0x`). By hand rather than
/// `str::parse`, which costs the blk appliance's image a few hundred bytes more.
fn decimal(text: &str) -> Result<u64, BadSectorsError> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(BadSectorsError::Syntax);
    }
    text.bytes().try_fold(0u64, |n, digit| {
        n.checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(digit - b'0')))
            .ok_or(BadSectorsError::Overflow)
    })
}

impl BadSectors {
    /// `count` sectors from `first`; refused if empty or if the end does not fit in a `u64`.
    pub fn new(first: u64, count: u64) -> Result<Self, BadSectorsError> {
        if count == 0 {
            return Err(BadSectorsError::Empty);
        }
        first.checked_add(count).ok_or(BadSectorsError::Overflow)?;
        Ok(BadSectors { first, count })
    }

    /// The first bad sector.
    pub fn first(&self) -> u64 {
        self.first
    }

    /// How many sectors are bad.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The bad sectors as a half-open range `first..first + count`.
    pub fn range(&self) -> Range<u64> {
        // `new` checked that the sum fits.
        self.first..self.first + self.count
    }

    /// Refuses a range that does not lie entirely on a disk of `capacity` sectors.
    pub fn check_fits(&self, capacity: u64) -> Result<(), BadSectorsError> {
        let end = self.range().end;
        if end > capacity {
            return Err(BadSectorsError::PastEnd { end, capacity });
        }
        Ok(())
    }

    /// Whether `count` sectors from `sector` touch a bad sector. A range whose end overflows
    /// counts as touching (it reaches the end of the address space).
    pub fn touches(&self, sector: u64, count: u64) -> bool {
        if count == 0 {
            return false;
        }
        let bad = self.range();
        match sector.checked_add(count) {
            Some(end) => sector < bad.end && bad.start < end,
            None => sector < bad.end,
        }
    }
}

impl FromStr for BadSectors {
    type Err = BadSectorsError;

    /// Parses `<first sector>+<count>`, e.g. `40960+8`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (first, count) = text.split_once('+').ok_or(BadSectorsError::Syntax)?;
        BadSectors::new(decimal(first)?, decimal(count)?)
    }
}

impl fmt::Display for BadSectors {
    /// `A..B` (half-open, as [`BadSectors::range`]).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let range = self.range();
        write!(f, "{}..{}", range.start, range.end)
    }
}

/// Which requests touching the bad sectors fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailOn {
    /// Reads only (writes to the bad sectors succeed).
    Reads,
    /// Writes and write-zeroes only.
    Writes,
    /// Reads, writes and write-zeroes.
    ReadsAndWrites,
}

impl FailOn {
    fn reads(self) -> bool {
        matches!(self, FailOn::Reads | FailOn::ReadsAndWrites)
    }
    fn writes(self) -> bool {
        matches!(self, FailOn::Writes | FailOn::ReadsAndWrites)
    }
}

/// A [`BlockDevice`] that fails requests touching [`BadSectors`] with [`DeviceError::Io`].
///
/// Made healthy ([`FaultyDisk::new`]: everything passes through) and given its bad range with
/// [`FaultyDisk::failing`] (or [`FaultyDisk::set_bad_sectors`]), so that an appliance has one
/// disk type whether or not it injects faults. Reads and/or writes (per [`FailOn`];
/// write-zeroes counts as a write) that touch a bad sector fail as a whole and never reach the
/// wrapped disk, so nothing of a failed write is stored. Everything else (other sectors,
/// flush, discard, capacity, id) is the wrapped disk's.
#[derive(Clone, Debug)]
pub struct FaultyDisk<B: BlockDevice> {
    disk: B,
    bad: Option<(BadSectors, FailOn)>,
    failed_reads: u64,
    failed_writes: u64,
}

impl<B: BlockDevice> FaultyDisk<B> {
    /// Wraps `disk` with no bad sectors: every request passes through.
    pub fn new(disk: B) -> Self {
        FaultyDisk {
            disk,
            bad: None,
            failed_reads: 0,
            failed_writes: 0,
        }
    }

    /// The same disk, failing the requests `fail_on` names that touch `bad`.
    ///
    /// The range may lie (partly) past the end of the disk; such sectors are refused by the
    /// disk anyway. Use [`BadSectors::check_fits`] to insist that it does not.
    pub fn failing(mut self, bad: BadSectors, fail_on: FailOn) -> Self {
        self.set_bad_sectors(Some((bad, fail_on)));
        self
    }

    /// Replaces the bad range (`None`: the disk is healthy again). The counters are kept.
    pub fn set_bad_sectors(&mut self, bad: Option<(BadSectors, FailOn)>) {
        self.bad = bad;
    }

    /// The bad sectors and which requests touching them fail (`None` when healthy).
    pub fn bad_sectors(&self) -> Option<(BadSectors, FailOn)> {
        self.bad
    }

    /// Reads failed on purpose so far.
    pub fn failed_reads(&self) -> u64 {
        self.failed_reads
    }

    /// Writes (and write-zeroes) failed on purpose so far.
    pub fn failed_writes(&self) -> u64 {
        self.failed_writes
    }

    /// All requests failed on purpose so far.
    pub fn injected(&self) -> u64 {
        self.failed_reads + self.failed_writes
    }

    /// The wrapped disk.
    pub fn inner(&self) -> &B {
        &self.disk
    }

    /// The wrapped disk, mutably (requests made through it are never failed).
    pub fn inner_mut(&mut self) -> &mut B {
        &mut self.disk
    }

    /// Unwraps the disk.
    pub fn into_inner(self) -> B {
        self.disk
    }

    /// Whether a read (`write == false`) or write of `count` sectors from `sector` must fail.
    fn fails(&self, write: bool, sector: u64, count: u64) -> bool {
        match self.bad {
            Some((bad, fail_on)) => {
                (if write {
                    fail_on.writes()
                } else {
                    fail_on.reads()
                }) && bad.touches(sector, count)
            }
            None => false,
        }
    }
}

/// Sectors a buffer of `bytes` bytes covers, rounded up (a partial sector still touches it).
fn sectors_of(bytes: usize) -> u64 {
    bytes.div_ceil(SECTOR_SIZE) as u64
}

impl<B: BlockDevice> BlockDevice for FaultyDisk<B> {
    fn capacity_sectors(&self) -> u64 {
        self.disk.capacity_sectors()
    }
    fn block_size(&self) -> u32 {
        self.disk.block_size()
    }
    fn read_only(&self) -> bool {
        self.disk.read_only()
    }
    fn id(&self) -> [u8; 20] {
        self.disk.id()
    }
    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        if self.fails(false, sector, sectors_of(buf.len())) {
            self.failed_reads += 1;
            return Err(DeviceError::Io);
        }
        self.disk.read(sector, buf)
    }
    fn write(&mut self, sector: u64, data: &[u8]) -> Result<(), DeviceError> {
        if self.fails(true, sector, sectors_of(data.len())) {
            self.failed_writes += 1;
            return Err(DeviceError::Io);
        }
        self.disk.write(sector, data)
    }
    fn flush(&mut self) -> Result<(), DeviceError> {
        self.disk.flush()
    }
    fn discard(&mut self, sector: u64, count: u64) -> Result<(), DeviceError> {
        self.disk.discard(sector, count)
    }
    fn write_zeroes(&mut self, sector: u64, count: u64) -> Result<(), DeviceError> {
        if self.fails(true, sector, count) {
            self.failed_writes += 1;
            return Err(DeviceError::Io);
        }
        self.disk.write_zeroes(sector, count)
    }
}

#[cfg(test)]
mod tests {
    use alloc::string::ToString;

    use super::*;
    use crate::RamDisk;

    fn bad(text: &str) -> BadSectors {
        text.parse().unwrap()
    }

    #[test]
    fn bad_sectors_parse_strictly() {
        assert_eq!(bad("40960+8"), BadSectors::new(40960, 8).unwrap());
        assert_eq!(bad("0+1").range(), 0..1);
        assert_eq!(bad("40960+8").to_string(), "40960..40968");
        for text in [
            "", "+", "1", "1+", "+1", "a+1", "1+b", "0x10+1", "1+0x1", "-1+2", "1+-2", " 1+2",
            "1+2 ", "1+2+3", "1,2", "1++2", "+1+2",
        ] {
            assert_eq!(
                text.parse::<BadSectors>(),
                Err(BadSectorsError::Syntax),
                "{text:?}"
            );
        }
        assert_eq!("5+0".parse::<BadSectors>(), Err(BadSectorsError::Empty));
        assert_eq!(
            "18446744073709551615+1".parse::<BadSectors>(),
            Err(BadSectorsError::Overflow)
        );
        assert_eq!(
            "18446744073709551616+1".parse::<BadSectors>(),
            Err(BadSectorsError::Overflow),
            "first does not fit in u64"
        );
        assert!("18446744073709551614+1".parse::<BadSectors>().is_ok());
        assert_eq!(
            BadSectorsError::Syntax.to_string(),
            "expected <first sector>+<count>, two decimal numbers"
        );
    }

    #[test]
    fn bad_sectors_fit_check_and_touching() {
        let b = bad("10+4"); // sectors 10, 11, 12, 13
        assert_eq!(b.check_fits(14), Ok(()));
        assert_eq!(
            b.check_fits(13),
            Err(BadSectorsError::PastEnd {
                end: 14,
                capacity: 13
            })
        );
        assert_eq!(
            b.check_fits(13).unwrap_err().to_string(),
            "the range ends past the disk's end"
        );
        assert!(!b.touches(0, 10), "ends just before");
        assert!(b.touches(0, 11));
        assert!(b.touches(9, 2));
        assert!(b.touches(10, 1));
        assert!(b.touches(13, 1));
        assert!(b.touches(11, 1));
        assert!(b.touches(0, 100), "covers it");
        assert!(!b.touches(14, 1), "starts just after");
        assert!(!b.touches(12, 0), "an empty request touches nothing");
        assert!(b.touches(5, u64::MAX), "overflowing end");
        assert!(!b.touches(20, u64::MAX));
    }

    fn disk(fail_on: FailOn) -> FaultyDisk<RamDisk> {
        let mut ram = RamDisk::new(32);
        ram.write(0, &[0x55; 32 * SECTOR_SIZE]).unwrap();
        FaultyDisk::new(ram).failing(bad("10+4"), fail_on)
    }

    #[test]
    fn reads_and_writes_touching_the_range_fail_and_are_counted() {
        let mut d = disk(FailOn::ReadsAndWrites);
        let mut buf = [0u8; 2 * SECTOR_SIZE];
        // Around the range: passed through.
        d.read(8, &mut buf).unwrap();
        assert_eq!(buf, [0x55; 2 * SECTOR_SIZE]);
        d.write(14, &[1; 2 * SECTOR_SIZE]).unwrap();
        d.read(14, &mut buf).unwrap();
        assert_eq!(buf, [1; 2 * SECTOR_SIZE]);
        assert_eq!(d.injected(), 0);
        // Touching it, at either edge or inside: Io, and the disk is left alone.
        assert_eq!(d.read(9, &mut buf), Err(DeviceError::Io));
        assert_eq!(d.read(13, &mut buf), Err(DeviceError::Io));
        assert_eq!(d.read(11, &mut buf[..SECTOR_SIZE]), Err(DeviceError::Io));
        assert_eq!(d.failed_reads(), 3);
        assert_eq!(d.write(12, &[2; 2 * SECTOR_SIZE]), Err(DeviceError::Io));
        assert_eq!(d.write_zeroes(0, 32), Err(DeviceError::Io));
        assert_eq!(d.failed_writes(), 2);
        assert_eq!(d.injected(), 5);
        assert_eq!(
            &d.inner().bytes()[..14 * SECTOR_SIZE],
            &[0x55; 14 * SECTOR_SIZE]
        );
        // Flush, discard and write-zeroes elsewhere pass through.
        d.flush().unwrap();
        assert_eq!(d.inner().flush_count(), 1);
        d.discard(10, 4).unwrap();
        assert_eq!(d.inner().discarded_sectors(), 4);
        d.write_zeroes(0, 10).unwrap();
        assert_eq!(
            &d.inner().bytes()[..10 * SECTOR_SIZE],
            &[0; 10 * SECTOR_SIZE]
        );
        assert_eq!(d.injected(), 5);
        // The disk's own errors stay the disk's.
        assert_eq!(d.read(31, &mut buf), Err(DeviceError::OutOfRange));
        assert_eq!(d.injected(), 5);
        // Requests through the inner disk are never failed.
        d.inner_mut().read(10, &mut buf).unwrap();
    }

    #[test]
    fn only_the_chosen_direction_fails() {
        let mut buf = [0u8; SECTOR_SIZE];
        let mut reads = disk(FailOn::Reads);
        reads.write(10, &[3; SECTOR_SIZE]).unwrap();
        reads.write_zeroes(11, 1).unwrap();
        assert_eq!(reads.read(10, &mut buf), Err(DeviceError::Io));
        assert_eq!((reads.failed_reads(), reads.failed_writes()), (1, 0));
        let ram = reads.into_inner();
        assert_eq!(
            &ram.bytes()[10 * SECTOR_SIZE..11 * SECTOR_SIZE],
            &[3; SECTOR_SIZE]
        );

        let mut writes = disk(FailOn::Writes);
        writes.read(10, &mut buf).unwrap();
        assert_eq!(buf, [0x55; SECTOR_SIZE]);
        assert_eq!(writes.write(10, &buf), Err(DeviceError::Io));
        assert_eq!(writes.write_zeroes(13, 1), Err(DeviceError::Io));
        assert_eq!((writes.failed_reads(), writes.failed_writes()), (0, 2));
    }

    #[test]
    fn the_wrapper_reports_the_disks_properties() {
        let mut ram = RamDisk::new(16);
        ram.set_id(*b"bad-range-disk-00000");
        ram.set_read_only(true);
        let mut d = FaultyDisk::new(ram).failing(bad("0+1"), FailOn::ReadsAndWrites);
        assert_eq!(d.capacity_sectors(), 16);
        assert!(d.read_only());
        assert_eq!(&d.id(), b"bad-range-disk-00000");
        assert_eq!(d.block_size(), 512);
        assert_eq!(d.bad_sectors(), Some((bad("0+1"), FailOn::ReadsAndWrites)));
        let mut buf = [0u8; SECTOR_SIZE];
        assert_eq!(d.read(0, &mut buf), Err(DeviceError::Io));
        // Healthy again: everything passes through, the count stays.
        d.set_bad_sectors(None);
        d.read(0, &mut buf).unwrap();
        assert_eq!(d.injected(), 1);
    }

    #[test]
    fn a_healthy_wrapper_passes_everything_through() {
        let mut d = FaultyDisk::new(RamDisk::new(4));
        assert_eq!(d.bad_sectors(), None);
        d.write(0, &[9; 4 * SECTOR_SIZE]).unwrap();
        let mut buf = [0u8; 4 * SECTOR_SIZE];
        d.read(0, &mut buf).unwrap();
        assert_eq!(buf, [9; 4 * SECTOR_SIZE]);
        d.write_zeroes(0, 4).unwrap();
        assert_eq!(
            d.read(4, &mut buf[..SECTOR_SIZE]),
            Err(DeviceError::OutOfRange)
        );
        assert_eq!(d.injected(), 0);
    }
}
