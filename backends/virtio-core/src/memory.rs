//! The seam between device logic and frontend memory.

/// Frontend memory as the device may reach it: through grants, shared memory, or a test fake.
///
/// Addresses are the frontend's *allegations* (descriptor or ring addresses). An implementation
/// must refuse any range the frontend did not make reachable for this device, and never panic.
/// Methods take `&self`; implementations that batch or cache use interior mutability.
pub trait GuestMemory {
    /// Copies `buf.len()` bytes from frontend address `addr` into `buf`.
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError>;
    /// Copies `data` to frontend address `addr`.
    fn write(&self, addr: u64, data: &[u8]) -> Result<(), MemoryError>;

    /// Reads a little-endian `u16`.
    fn read_u16(&self, addr: u64) -> Result<u16, MemoryError> {
        let mut b = [0; 2];
        self.read(addr, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }
    /// Writes a little-endian `u16`.
    fn write_u16(&self, addr: u64, value: u16) -> Result<(), MemoryError> {
        self.write(addr, &value.to_le_bytes())
    }
}

/// The frontend named memory that the device cannot reach (not granted, not shared, not RAM).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryError {
    /// First address of the refused access.
    pub addr: u64,
    /// Length of the refused access.
    pub len: u64,
}

impl MemoryError {
    /// The error for an access of `len` bytes at `addr`.
    pub fn new(addr: u64, len: usize) -> Self {
        MemoryError {
            addr,
            len: len as u64,
        }
    }
}

impl core::fmt::Display for MemoryError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "frontend memory {:#x}+{:#x} is not reachable by the device",
            self.addr, self.len
        )
    }
}
