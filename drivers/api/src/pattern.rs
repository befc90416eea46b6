//! A deterministic per-sector data pattern, so that a probe frontend inside a guest and a test on
//! the host can agree on what a disk must hold without sharing anything but a seed.
//!
//! Sector `s` (512 bytes) for seed `seed` is 128 little-endian `u32` words of a xorshift32 stream
//! started at `(seed ^ s.wrapping_mul(0x9E37_79B1)) | 1` (only the low 32 bits of `s` count).

use crate::SECTOR_SIZE;

/// Fills `out` (one sector) with the pattern of `sector` for `seed`.
pub fn fill_sector(seed: u32, sector: u64, out: &mut [u8; SECTOR_SIZE]) {
    let mut x = (seed ^ (sector as u32).wrapping_mul(0x9E37_79B1)) | 1;
    for word in out.chunks_exact_mut(4) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        word.copy_from_slice(&x.to_le_bytes());
    }
}

/// Returns the index of the first sector in `data` (which starts at `first_sector`) that does not
/// hold its pattern, or `None` if all do.
pub fn first_mismatch(seed: u32, first_sector: u64, data: &[u8]) -> Option<u64> {
    let mut expected = [0u8; SECTOR_SIZE];
    for (i, sector) in data.chunks(SECTOR_SIZE).enumerate() {
        let s = first_sector + i as u64;
        fill_sector(seed, s, &mut expected);
        if sector != &expected[..sector.len()] {
            return Some(s);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sectors_and_seeds_differ_and_check_round_trips() {
        let mut a = [0u8; SECTOR_SIZE];
        let mut b = [0u8; SECTOR_SIZE];
        fill_sector(7, 0, &mut a);
        fill_sector(7, 1, &mut b);
        assert_ne!(a, b);
        fill_sector(8, 0, &mut b);
        assert_ne!(a, b);
        let mut disk = alloc::vec![0u8; 4 * SECTOR_SIZE];
        for (i, chunk) in disk.chunks_mut(SECTOR_SIZE).enumerate() {
            fill_sector(7, 10 + i as u64, chunk.try_into().unwrap());
        }
        assert_eq!(first_mismatch(7, 10, &disk), None);
        disk[2 * SECTOR_SIZE + 5] ^= 1;
        assert_eq!(first_mismatch(7, 10, &disk), Some(12));
        assert_eq!(
            first_mismatch(7, 10, &disk[SECTOR_SIZE..]),
            Some(10),
            "wrong offset"
        );
    }
}
