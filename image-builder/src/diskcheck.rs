//! Host-side check of a disk image a probe wrote: the seeded sector pattern
//! (`ferry_drivers::pattern`) over the first `mib` MiB, and zeros everywhere after it.

use std::fs;
use std::path::Path;

use anyhow::{bail, Context, Result};
use ferry_drivers::{pattern, SECTOR_SIZE};

/// What a successful check saw.
#[derive(Debug, PartialEq, Eq)]
pub struct DiskCheck {
    /// Size of the image in bytes.
    pub image_bytes: u64,
    /// Sectors that hold the pattern.
    pub pattern_sectors: u64,
}

/// Checks `image`: sectors 0 .. `mib` MiB hold the pattern of `seed`, every later byte is zero.
pub fn check_pattern(image: &Path, seed: u32, mib: u64) -> Result<DiskCheck> {
    let disk = fs::read(image).with_context(|| format!("reading {}", image.display()))?;
    check_bytes(&disk, seed, mib).with_context(|| format!("{}", image.display()))
}

/// [`check_pattern`] on bytes already read.
pub fn check_bytes(disk: &[u8], seed: u32, mib: u64) -> Result<DiskCheck> {
    let written = usize::try_from(mib << 20).context("pattern size")?;
    if disk.len() < written {
        bail!(
            "the image has {} bytes, less than the {mib} MiB pattern",
            disk.len()
        );
    }
    if let Some(bad) = pattern::first_mismatch(seed, 0, &disk[..written]) {
        let offset = bad as usize * SECTOR_SIZE;
        bail!(
            "sector {bad} does not hold the pattern of seed {seed} (first bytes {:02x?})",
            &disk[offset..(offset + 16).min(disk.len())]
        );
    }
    if let Some(offset) = disk[written..].iter().position(|&byte| byte != 0) {
        let offset = written + offset;
        bail!(
            "byte {offset:#x} (sector {}) beyond the {mib} MiB pattern is not zero",
            offset / SECTOR_SIZE
        );
    }
    Ok(DiskCheck {
        image_bytes: disk.len() as u64,
        pattern_sectors: (written / SECTOR_SIZE) as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk_with_pattern(seed: u32, mib: u64, total: usize) -> Vec<u8> {
        let mut disk = vec![0u8; total];
        let sectors = (mib << 20) as usize / SECTOR_SIZE;
        for (s, chunk) in disk.chunks_mut(SECTOR_SIZE).take(sectors).enumerate() {
            pattern::fill_sector(seed, s as u64, chunk.try_into().unwrap());
        }
        disk
    }

    #[test]
    fn accepts_the_pattern_and_names_the_first_bad_sector() {
        let mut disk = disk_with_pattern(5, 1, 2 << 20);
        let ok = check_bytes(&disk, 5, 1).unwrap();
        assert_eq!(ok.pattern_sectors, 2048);
        assert!(check_bytes(&disk, 6, 1)
            .unwrap_err()
            .to_string()
            .contains("sector 0 "));
        disk[700 * SECTOR_SIZE + 3] ^= 0x40;
        assert!(check_bytes(&disk, 5, 1)
            .unwrap_err()
            .to_string()
            .contains("sector 700 "));
        disk[700 * SECTOR_SIZE + 3] ^= 0x40;
        disk[(1 << 20) + 4096] = 1;
        let stray = check_bytes(&disk, 5, 1).unwrap_err().to_string();
        assert!(
            stray.contains("sector 2056") && stray.contains("not zero"),
            "{stray}"
        );
        assert!(check_bytes(&disk[..1000], 5, 1).is_err(), "too small");
    }
}
