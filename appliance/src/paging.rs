//! Identity-mapped stage-1 translation tables: 4 KiB granule, 39-bit addresses, three levels.
//!
//! This module owns the format of the tables (descriptor bits, memory attribute indexes) and
//! the algorithm that fills them: 2 MiB blocks where a region covers a whole aligned 2 MiB, 4 KiB
//! pages elsewhere, next-level tables taken from a fixed pool. It only writes to its pool and
//! never touches a system register - turning the MMU on is `arch::aarch64::mmu`'s job - so it
//! is tested on the host with a pool on the heap.
//!
//! It never changes a valid entry: mapping a range that is already mapped with the same kind of
//! memory is a no-op, with another kind it is an error. That keeps runtime additions safe
//! without TLB maintenance (no break-before-make is ever needed).
//!
//! Layout (Arm ARM D8, VMSAv8-64, 4 KiB granule, T0SZ = 25): the level-1 table has 512 entries
//! of 1 GiB (always next-level tables here), level 2 of 2 MiB (blocks or tables), level 3 of
//! 4 KiB pages.

use core::fmt;
use core::ptr::NonNull;

use crate::platform::Region;

/// Bits of virtual (= physical) address the tables translate: `TCR_EL1.T0SZ = 64 - VA_BITS`.
pub const VA_BITS: u32 = 39;

/// `MAIR_EL1`: attribute index 0 = Device-nGnRE, 1 = Normal write-back read/write-allocate
/// (inner and outer), 2 = Normal non-cacheable.
pub const MAIR_VALUE: u64 = 0x04 | (0xff << 8) | (0x44 << 16);

const PAGE: u64 = 4096;
const BLOCK: u64 = 2 << 20;
const ENTRIES: usize = 512;
/// Output address bits [47:12] of a descriptor.
const ADDRESS_MASK: u64 = 0x0000_ffff_ffff_f000;

const VALID: u64 = 1 << 0;
/// Level 1/2: next-level table; level 3: page. Clear (with VALID set) at level 2: block.
const TABLE_OR_PAGE: u64 = 1 << 1;
const ATTR_INDEX_SHIFT: u64 = 2;
const INNER_SHAREABLE: u64 = 3 << 8;
const ACCESS_FLAG: u64 = 1 << 10;
const PRIVILEGED_EXECUTE_NEVER: u64 = 1 << 53;
const UNPRIVILEGED_EXECUTE_NEVER: u64 = 1 << 54;

/// How a region is mapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryKind {
    /// RAM: Normal write-back cacheable, inner shareable, read/write, executable at EL1.
    Normal,
    /// MMIO: Device-nGnRE, read/write, never executable.
    Device,
    /// Normal non-cacheable, read/write, never executable (e.g. memory shared with a device
    /// that does not snoop caches).
    NonCacheable,
}

impl MemoryKind {
    /// Lower and upper attributes of a block or page descriptor of this kind.
    const fn attributes(self) -> u64 {
        let common = ACCESS_FLAG | UNPRIVILEGED_EXECUTE_NEVER;
        match self {
            MemoryKind::Device => common | PRIVILEGED_EXECUTE_NEVER,
            MemoryKind::Normal => common | INNER_SHAREABLE | (1 << ATTR_INDEX_SHIFT),
            MemoryKind::NonCacheable => {
                common | INNER_SHAREABLE | PRIVILEGED_EXECUTE_NEVER | (2 << ATTR_INDEX_SHIFT)
            }
        }
    }
}

/// Why a region cannot be mapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// The region reaches beyond the 39-bit address space the tables cover.
    OutsideAddressSpace(Region),
    /// The table pool is used up.
    OutOfTables,
    /// The address is already mapped as another kind of memory.
    Conflict(u64),
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MapError::OutsideAddressSpace(region) => write!(
                f,
                "region {region} is beyond the {VA_BITS}-bit address space of the page tables"
            ),
            MapError::OutOfTables => write!(f, "the page-table pool is used up"),
            MapError::Conflict(address) => {
                write!(
                    f,
                    "{address:#x} is already mapped as another kind of memory"
                )
            }
        }
    }
}

/// One translation table: 512 descriptors, 4 KiB aligned.
#[derive(Clone, Debug)]
#[repr(C, align(4096))]
pub struct Table(pub [u64; ENTRIES]);

impl Table {
    /// A table with every entry invalid.
    pub const EMPTY: Table = Table([0; ENTRIES]);
}

/// A set of identity-mapping translation tables over a fixed pool of [`Table`]s.
#[derive(Debug)]
pub struct PageTables {
    pool: NonNull<Table>,
    capacity: usize,
    used: usize,
}

// SAFETY: a `PageTables` is the only owner of its pool (the contract of `new`), so moving it to
// another context moves that ownership with it.
unsafe impl Send for PageTables {}

impl PageTables {
    /// Tables over `capacity` tables at `pool`; the first becomes the (empty) level-1 table.
    ///
    /// The tables hold addresses of each other, so `pool`'s address must be the physical
    /// address of the memory (identity mapping; on the host, just the pointer).
    ///
    /// # Safety
    ///
    /// `pool` must point to `capacity` (at least 1) writable [`Table`]s that nothing else reads
    /// or writes, other than the MMU's table walker, for as long as the `PageTables` or a
    /// translation regime using them exists.
    pub unsafe fn new(pool: NonNull<Table>, capacity: usize) -> Result<Self, MapError> {
        let mut tables = Self {
            pool,
            capacity,
            used: 0,
        };
        tables.allocate()?;
        Ok(tables)
    }

    /// Physical address of the level-1 table, for `TTBR0_EL1`.
    pub fn root_address(&self) -> u64 {
        self.pool.as_ptr() as u64
    }

    /// How many tables of the pool are in use.
    pub fn tables_used(&self) -> usize {
        self.used
    }

    /// Takes a zeroed table from the pool and returns its address.
    fn allocate(&mut self) -> Result<u64, MapError> {
        if self.used == self.capacity {
            return Err(MapError::OutOfTables);
        }
        // SAFETY: `used < capacity`, so the table is inside the pool `new`'s caller gave us.
        let table = unsafe { self.pool.as_ptr().add(self.used) };
        self.used += 1;
        for index in 0..ENTRIES {
            // SAFETY: `table` is a table of our pool, which only we write (contract of `new`).
            unsafe { (&raw mut (*table).0[index]).write_volatile(0) };
        }
        Ok(table as u64)
    }

    /// Reads entry `index` of the table at `table` (an address from this pool).
    fn read(&self, table: u64, index: usize) -> u64 {
        debug_assert!(index < ENTRIES);
        // SAFETY: `table` is the address of a table of our pool (root or from a table
        // descriptor we wrote), and `index < 512`.
        unsafe { (&raw const (*(table as *const Table)).0[index]).read_volatile() }
    }

    /// Writes entry `index` of the table at `table` (an address from this pool).
    fn write(&mut self, table: u64, index: usize, descriptor: u64) {
        debug_assert!(index < ENTRIES);
        // SAFETY: as in `read`; only we write to our pool.
        unsafe { (&raw mut (*(table as *mut Table)).0[index]).write_volatile(descriptor) };
    }

    /// The next-level table of entry `index` of `table`, created if the entry is invalid.
    fn next_table(&mut self, table: u64, index: usize, address: u64) -> Result<u64, MapError> {
        let entry = self.read(table, index);
        if entry & VALID == 0 {
            let next = self.allocate()?;
            self.write(table, index, next | TABLE_OR_PAGE | VALID);
            return Ok(next);
        }
        if entry & TABLE_OR_PAGE == 0 {
            return Err(MapError::Conflict(address)); // a block where a table is needed
        }
        Ok(entry & ADDRESS_MASK)
    }

    /// Maps `region` (rounded out to whole pages) to itself as `kind`.
    pub fn map(&mut self, region: Region, kind: MemoryKind) -> Result<(), MapError> {
        let region = region.page_aligned_outward();
        if region.end() > 1 << VA_BITS {
            return Err(MapError::OutsideAddressSpace(region));
        }
        let attributes = kind.attributes();
        let root = self.root_address();
        let end = region.end();
        let mut address = region.base;
        while address < end {
            let level2 = self.next_table(root, (address >> 30) as usize % ENTRIES, address)?;
            let index2 = (address >> 21) as usize % ENTRIES;
            let entry = self.read(level2, index2);
            let block = address | attributes | VALID;
            if entry & VALID == 0 && address.is_multiple_of(BLOCK) && end - address >= BLOCK {
                self.write(level2, index2, block);
                address += BLOCK;
                continue;
            }
            if entry & VALID != 0 && entry & TABLE_OR_PAGE == 0 {
                // An existing block: fine if it is the same kind of memory.
                if entry & !ADDRESS_MASK != attributes | VALID {
                    return Err(MapError::Conflict(address));
                }
                address = (address | (BLOCK - 1)) + 1;
                continue;
            }
            let level3 = self.next_table(level2, index2, address)?;
            let index3 = (address >> 12) as usize % ENTRIES;
            let page = address | attributes | TABLE_OR_PAGE | VALID;
            match self.read(level3, index3) {
                0 => self.write(level3, index3, page),
                existing if existing == page => {}
                _ => return Err(MapError::Conflict(address)),
            }
            address += PAGE;
        }
        Ok(())
    }

    /// How `address` is mapped: the block or page descriptor and its level (2 or 3).
    pub fn lookup(&self, address: u64) -> Option<(u64, u32)> {
        if address >= 1 << VA_BITS {
            return None;
        }
        let entry1 = self.read(self.root_address(), (address >> 30) as usize % ENTRIES);
        if entry1 & VALID == 0 {
            return None;
        }
        let entry2 = self.read(entry1 & ADDRESS_MASK, (address >> 21) as usize % ENTRIES);
        if entry2 & VALID == 0 {
            return None;
        }
        if entry2 & TABLE_OR_PAGE == 0 {
            return Some((entry2, 2));
        }
        let entry3 = self.read(entry2 & ADDRESS_MASK, (address >> 12) as usize % ENTRIES);
        (entry3 & VALID != 0).then_some((entry3, 3))
    }

    /// The kind of memory `address` is mapped as, if it is mapped.
    pub fn kind_of(&self, address: u64) -> Option<MemoryKind> {
        let (descriptor, _) = self.lookup(address)?;
        let attributes = descriptor & !ADDRESS_MASK & !TABLE_OR_PAGE;
        [
            MemoryKind::Normal,
            MemoryKind::Device,
            MemoryKind::NonCacheable,
        ]
        .into_iter()
        .find(|kind| kind.attributes() | VALID == attributes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::boxed::Box;
    use std::vec::Vec;

    fn tables(capacity: usize) -> PageTables {
        let pool: Vec<Table> = (0..capacity).map(|_| Table::EMPTY).collect();
        let pool = NonNull::new(Box::leak(pool.into_boxed_slice()).as_mut_ptr()).unwrap();
        // SAFETY: the pool is leaked, so only the `PageTables` uses it.
        unsafe { PageTables::new(pool, capacity) }.unwrap()
    }

    #[test]
    fn ram_uses_2_mib_blocks_and_devices_use_pages() {
        let mut tables = tables(8);
        tables
            .map(Region::new(0x4000_0000, 0x100_0000), MemoryKind::Normal)
            .unwrap();
        tables
            .map(Region::new(0x2200_0000, 0x1000), MemoryKind::Device)
            .unwrap();
        tables
            .map(Region::new(0x300_1000, 0x1_0000), MemoryKind::Device)
            .unwrap();
        // root, one level-2 table for the first GiB (devices), one for the second (RAM),
        // two level-3 tables (UART, GIC).
        assert_eq!(tables.tables_used(), 5);
        let (ram, level) = tables.lookup(0x40ff_ffff).unwrap();
        assert_eq!(level, 2);
        assert_eq!(ram & ADDRESS_MASK, 0x40e0_0000);
        assert_eq!(tables.kind_of(0x4000_0000), Some(MemoryKind::Normal));
        let (uart, level) = tables.lookup(0x2200_0abc).unwrap();
        assert_eq!((uart & ADDRESS_MASK, level), (0x2200_0000, 3));
        assert_eq!(tables.kind_of(0x2200_0000), Some(MemoryKind::Device));
        assert_eq!(tables.kind_of(0x2200_1000), None);
        assert_eq!(tables.kind_of(0x300_0fff), None);
        assert_eq!(tables.kind_of(0x301_0fff), Some(MemoryKind::Device));
        assert_eq!(tables.kind_of(0x301_1000), None);
        assert_eq!(tables.kind_of(0x4100_0000), None);
    }

    #[test]
    fn device_memory_is_never_executable_and_ram_is() {
        let mut tables = tables(8);
        tables
            .map(Region::new(0x4000_0000, 0x20_0000), MemoryKind::Normal)
            .unwrap();
        tables
            .map(Region::new(0x900_0000, 0x1000), MemoryKind::Device)
            .unwrap();
        let (ram, _) = tables.lookup(0x4000_0000).unwrap();
        let (device, _) = tables.lookup(0x900_0000).unwrap();
        assert_eq!(ram & PRIVILEGED_EXECUTE_NEVER, 0);
        assert_ne!(device & PRIVILEGED_EXECUTE_NEVER, 0);
        assert_eq!(device & (7 << ATTR_INDEX_SHIFT), 0);
        assert_eq!(ram & (7 << ATTR_INDEX_SHIFT), 1 << ATTR_INDEX_SHIFT);
        assert_ne!(ram & ACCESS_FLAG, 0);
    }

    #[test]
    fn unaligned_ram_gets_pages_at_its_edges() {
        let mut tables = tables(8);
        tables
            .map(Region::new(0x6010_0000, 0x40_0000), MemoryKind::Normal)
            .unwrap();
        assert_eq!(tables.lookup(0x6010_0000).unwrap().1, 3);
        assert_eq!(tables.lookup(0x6020_0000).unwrap().1, 2);
        assert_eq!(tables.lookup(0x604f_f000).unwrap().1, 3);
        assert_eq!(tables.kind_of(0x6050_0000), None);
        assert_eq!(tables.kind_of(0x600f_f000), None);
    }

    #[test]
    fn remapping_the_same_kind_is_a_no_op_and_another_kind_conflicts() {
        let mut tables = tables(8);
        let ram = Region::new(0x4000_0000, 0x40_0000);
        tables.map(ram, MemoryKind::Normal).unwrap();
        let used = tables.tables_used();
        tables.map(ram, MemoryKind::Normal).unwrap();
        tables
            .map(Region::new(0x4010_0000, 0x1000), MemoryKind::Normal)
            .unwrap();
        assert_eq!(tables.tables_used(), used);
        assert_eq!(
            tables.map(Region::new(0x4010_0000, 0x1000), MemoryKind::Device),
            Err(MapError::Conflict(0x4010_0000))
        );
        tables
            .map(Region::new(0x900_0000, 0x1000), MemoryKind::Device)
            .unwrap();
        tables
            .map(Region::new(0x900_0000, 0x1000), MemoryKind::Device)
            .unwrap();
        assert_eq!(
            tables.map(Region::new(0x900_0000, 0x1000), MemoryKind::Normal),
            Err(MapError::Conflict(0x900_0000))
        );
    }

    #[test]
    fn pool_exhaustion_and_address_space_limit_are_errors() {
        let mut tables = tables(2);
        tables
            .map(Region::new(0x4000_0000, 0x20_0000), MemoryKind::Normal)
            .unwrap();
        assert_eq!(
            tables.map(Region::new(0x900_0000, 0x1000), MemoryKind::Device),
            Err(MapError::OutOfTables)
        );
        assert!(matches!(
            tables.map(Region::new(1 << 39, 0x1000), MemoryKind::Device),
            Err(MapError::OutsideAddressSpace(_))
        ));
    }
}
