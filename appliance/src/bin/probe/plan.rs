//! The probe's pure logic, tested on the host: what the bootargs ask for, grant addresses and
//! the page span of a buffer, the allocator of consecutive grant references, and the
//! deterministic offsets of the random bench passes.
//!
//! Nothing here touches hardware or Xen; `hal`, `rawq` and the workloads build on it.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

/// Bytes in a page (the unit of granting).
pub const PAGE_SIZE: usize = 4096;

/// Bit 63 marks a grant address (contract: `(1 << 63) | (gref << 12) | offset`).
pub const GRANT_ADDRESS_BIT: u64 = 1 << 63;

/// How buffers reach the device (`probe.mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Buffers are granted to the backend domain; addresses are grant addresses.
    Grant,
    /// The probe owns the passed-through physical device: identity DMA (direct-mapped domain).
    Direct,
}

/// Which virtio device the probe expects (`probe.device`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    /// virtio-blk (device ID 2).
    Blk,
    /// virtio-rng (device ID 4).
    Rng,
}

impl DeviceKind {
    /// The virtio device ID (virtio 1.2 section 5).
    pub const fn device_id(self) -> u32 {
        match self {
            DeviceKind::Blk => 2,
            DeviceKind::Rng => 4,
        }
    }

    /// The name used in bootargs and console lines.
    pub const fn name(self) -> &'static str {
        match self {
            DeviceKind::Blk => "blk",
            DeviceKind::Rng => "rng",
        }
    }
}

/// A misbehaviour the probe commits on purpose after its normal workload (`probe.hostile`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hostile {
    /// A blk write beyond the capacity must fail with IOERR.
    WritePastEnd,
    /// Malformed descriptor chains must come back unused (len 0), no status written.
    BadChain,
    /// Data buffers that are not (validly) granted must fail with IOERR.
    Ungranted,
    /// Undefined registers read as 0 and ignore writes.
    BadRegister,
}

impl Hostile {
    /// The flag as written in bootargs and console lines.
    pub const fn flag(self) -> &'static str {
        match self {
            Hostile::WritePastEnd => "write-past-end",
            Hostile::BadChain => "bad-chain",
            Hostile::Ungranted => "ungranted",
            Hostile::BadRegister => "bad-register",
        }
    }

    fn parse(flag: &str) -> Option<Hostile> {
        [
            Hostile::WritePastEnd,
            Hostile::BadChain,
            Hostile::Ungranted,
            Hostile::BadRegister,
        ]
        .into_iter()
        .find(|hostile| hostile.flag() == flag)
    }
}

/// Everything the bootargs ask of the probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// How buffers reach the device.
    pub mode: Mode,
    /// The domain to grant to (grant mode only).
    pub backend: Option<u16>,
    /// The device expected in the window.
    pub device: DeviceKind,
    /// blk: pattern size in MiB.
    pub mib: u64,
    /// blk: pattern seed.
    pub seed: u32,
    /// Misbehaviours to commit, in order.
    pub hostile: Vec<Hostile>,
    /// Whether to run the bench passes.
    pub bench: bool,
}

impl Config {
    /// Reads the `probe.*` bootargs through `arg` (e.g. `BootInfo::arg`).
    pub fn parse<'a>(arg: impl Fn(&str) -> Option<&'a str>) -> Result<Config, String> {
        let mode = match arg("probe.mode") {
            Some("grant") => Mode::Grant,
            Some("direct") => Mode::Direct,
            other => return Err(format!("probe.mode must be grant or direct, not {other:?}")),
        };
        let device = match arg("probe.device") {
            Some("blk") => DeviceKind::Blk,
            Some("rng") => DeviceKind::Rng,
            other => return Err(format!("probe.device must be blk or rng, not {other:?}")),
        };
        let backend = match (mode, arg("probe.backend")) {
            (Mode::Grant, None) => return Err("probe.mode=grant needs probe.backend".into()),
            (_, None) => None,
            (_, Some(value)) => Some(
                value
                    .parse::<u16>()
                    .map_err(|_| format!("probe.backend={value} is not a domid"))?,
            ),
        };
        let mib = number(&arg, "probe.mib", 4u64)?;
        if mib == 0 || mib > 1024 {
            return Err(format!("probe.mib={mib} must be 1..=1024"));
        }
        let seed = number(&arg, "probe.seed", 1u32)?;
        let mut hostile = Vec::new();
        for flag in arg("probe.hostile")
            .unwrap_or("")
            .split(',')
            .filter(|flag| !flag.is_empty())
        {
            let parsed =
                Hostile::parse(flag).ok_or_else(|| format!("unknown probe.hostile flag {flag}"))?;
            if !hostile.contains(&parsed) {
                hostile.push(parsed);
            }
        }
        let bench = match arg("probe.bench") {
            None | Some("0") => false,
            Some("1") | Some("") => true,
            Some(other) => return Err(format!("probe.bench must be 0 or 1, not {other}")),
        };
        Ok(Config {
            mode,
            backend,
            device,
            mib,
            seed,
            hostile,
            bench,
        })
    }
}

/// A numeric bootarg with a default.
fn number<'a, T: core::str::FromStr>(
    arg: &impl Fn(&str) -> Option<&'a str>,
    key: &str,
    default: T,
) -> Result<T, String> {
    match arg(key) {
        None => Ok(default),
        Some(value) => value
            .parse()
            .map_err(|_| format!("{key}={value} is not a number")),
    }
}

/// The grant address of byte `offset` of the page granted at `gref`.
pub const fn grant_address(gref: u32, offset: usize) -> u64 {
    GRANT_ADDRESS_BIT | ((gref as u64) << 12) | (offset as u64 % PAGE_SIZE as u64)
}

/// The first grant ref named by a grant address (`None` without bit 63).
pub const fn grant_ref_of(address: u64) -> Option<u32> {
    if address & GRANT_ADDRESS_BIT == 0 {
        None
    } else {
        Some(((address & !GRANT_ADDRESS_BIT) >> 12) as u32)
    }
}

/// The pages a buffer `[address, address + len)` touches: (first page number, page count).
/// An empty buffer touches none.
pub const fn page_span(address: usize, len: usize) -> (usize, usize) {
    if len == 0 {
        return (address / PAGE_SIZE, 0);
    }
    let first = address / PAGE_SIZE;
    let last = (address + len - 1) / PAGE_SIZE;
    (first, last - first + 1)
}

/// Most grant refs the allocator tracks (eight v1 grant-table frames).
pub const MAX_REFS: usize = 4096;

/// Hands out runs of consecutive grant refs in `[first, end)` (first fit).
///
/// Buffers spanning several pages are granted at consecutive refs, as Linux's xen-grant-dma
/// does, so that one grant address names all of them.
#[derive(Debug)]
pub struct RefAllocator {
    used: [u64; MAX_REFS / 64],
    first: u32,
    end: u32,
    in_use: usize,
}

impl RefAllocator {
    /// An allocator over refs `[first, end)`; `end` is capped at [`MAX_REFS`].
    pub const fn new(first: u32, end: u32) -> Self {
        let end = if end as usize > MAX_REFS {
            MAX_REFS as u32
        } else {
            end
        };
        Self {
            used: [0; MAX_REFS / 64],
            first,
            end,
            in_use: 0,
        }
    }

    fn is_used(&self, gref: u32) -> bool {
        self.used[gref as usize / 64] & (1 << (gref % 64)) != 0
    }

    fn set(&mut self, gref: u32, used: bool) {
        let word = &mut self.used[gref as usize / 64];
        if used {
            *word |= 1 << (gref % 64);
        } else {
            *word &= !(1 << (gref % 64));
        }
    }

    /// Takes `count` consecutive free refs and returns the first, or `None` if no run is free.
    pub fn allocate(&mut self, count: usize) -> Option<u32> {
        if count == 0 {
            return None;
        }
        let mut start = self.first;
        while start as usize + count <= self.end as usize {
            match (start..start + count as u32).find(|&gref| self.is_used(gref)) {
                Some(used) => start = used + 1,
                None => {
                    for gref in start..start + count as u32 {
                        self.set(gref, true);
                    }
                    self.in_use += count;
                    return Some(start);
                }
            }
        }
        None
    }

    /// Gives back `count` refs from `first` (they must have been allocated).
    pub fn release(&mut self, first: u32, count: usize) {
        for gref in first..first + count as u32 {
            if gref >= self.first && gref < self.end && self.is_used(gref) {
                self.set(gref, false);
                self.in_use -= 1;
            }
        }
    }

    /// Refs handed out now.
    pub const fn in_use(&self) -> usize {
        self.in_use
    }
}

/// A 64-bit LCG (Knuth's MMIX constants): the offsets of the random bench passes, the same on
/// every run.
#[derive(Clone, Debug)]
pub struct Lcg(u64);

impl Lcg {
    /// A generator from `seed`.
    pub const fn new(seed: u64) -> Self {
        Lcg(seed)
    }

    /// The next value in `0..bound` (`bound` > 0), from the high bits.
    pub fn below(&mut self, bound: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % bound
    }
}

/// Checks entropy from the rng: at least 200 distinct byte values and no 64-byte block that
/// repeats. Returns the number of distinct byte values, or what is wrong.
pub fn check_entropy(bytes: &[u8]) -> Result<usize, String> {
    let mut seen = [false; 256];
    for &byte in bytes {
        seen[usize::from(byte)] = true;
    }
    let distinct = seen.iter().filter(|&&seen| seen).count();
    if distinct < 200 {
        return Err(format!(
            "only {distinct} distinct byte values in {} bytes",
            bytes.len()
        ));
    }
    let mut blocks: Vec<&[u8]> = bytes.chunks_exact(64).collect();
    blocks.sort_unstable();
    if let Some(pair) = blocks.windows(2).find(|pair| pair[0] == pair[1]) {
        return Err(format!(
            "the 64-byte block {:02x?}.. repeats",
            &pair[0][..8]
        ));
    }
    Ok(distinct)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn args<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<&'a str> + 'a {
        let map: HashMap<&str, &str> = pairs.iter().copied().collect();
        move |key| map.get(key).copied()
    }

    #[test]
    fn bootargs_parse_with_defaults() {
        let config = Config::parse(args(&[
            ("probe.mode", "grant"),
            ("probe.backend", "2"),
            ("probe.device", "blk"),
            ("probe.hostile", "bad-chain,write-past-end,bad-chain"),
        ]))
        .unwrap();
        assert_eq!(config.mode, Mode::Grant);
        assert_eq!(config.backend, Some(2));
        assert_eq!(config.device, DeviceKind::Blk);
        assert_eq!((config.mib, config.seed, config.bench), (4, 1, false));
        assert_eq!(
            config.hostile,
            [Hostile::BadChain, Hostile::WritePastEnd],
            "in order, once each"
        );
        let direct = Config::parse(args(&[
            ("probe.mode", "direct"),
            ("probe.device", "rng"),
            ("probe.mib", "16"),
            ("probe.seed", "77"),
            ("probe.bench", "1"),
        ]))
        .unwrap();
        assert_eq!(
            (
                direct.mode,
                direct.backend,
                direct.mib,
                direct.seed,
                direct.bench
            ),
            (Mode::Direct, None, 16, 77, true)
        );
    }

    #[test]
    fn bad_bootargs_are_refused() {
        let refused: &[&[(&str, &str)]] = &[
            &[("probe.device", "blk")],
            &[("probe.mode", "grant"), ("probe.device", "blk")],
            &[("probe.mode", "direct"), ("probe.device", "net")],
            &[
                ("probe.mode", "direct"),
                ("probe.device", "blk"),
                ("probe.mib", "0"),
            ],
            &[
                ("probe.mode", "direct"),
                ("probe.device", "blk"),
                ("probe.hostile", "everything"),
            ],
            &[
                ("probe.mode", "grant"),
                ("probe.backend", "x"),
                ("probe.device", "blk"),
            ],
        ];
        for pairs in refused {
            assert!(Config::parse(args(pairs)).is_err(), "{pairs:?}");
        }
    }

    #[test]
    fn grant_addresses_round_trip() {
        assert_eq!(grant_address(8, 0), 0x8000_0000_0000_8000);
        assert_eq!(grant_address(9, 0x123), 0x8000_0000_0000_9123);
        assert_eq!(grant_ref_of(0x8000_0000_0000_9123), Some(9));
        assert_eq!(grant_ref_of(0x4000_0000), None);
    }

    #[test]
    fn page_spans_count_every_touched_page() {
        assert_eq!(page_span(0x1000, 0x1000), (1, 1));
        assert_eq!(page_span(0x1fff, 2), (1, 2));
        assert_eq!(page_span(0x1010, 0x10000), (1, 17));
        assert_eq!(page_span(0x1010, 0), (1, 0));
        assert_eq!(page_span(0x2000, 1), (2, 1));
    }

    #[test]
    fn refs_are_consecutive_first_fit_and_reusable() {
        let mut refs = RefAllocator::new(8, 20);
        assert_eq!(refs.allocate(3), Some(8));
        assert_eq!(refs.allocate(2), Some(11));
        assert_eq!(refs.allocate(1), Some(13));
        refs.release(11, 2);
        assert_eq!(refs.allocate(3), Some(14), "the hole of 2 is too small");
        assert_eq!(refs.allocate(2), Some(11));
        assert_eq!(refs.in_use(), 9);
        assert_eq!(refs.allocate(3), Some(17));
        assert_eq!(refs.allocate(1), None, "full");
        assert_eq!(refs.allocate(0), None);
        refs.release(8, 12);
        assert_eq!(refs.in_use(), 0);
        assert_eq!(refs.allocate(12), Some(8));
        assert_eq!(
            RefAllocator::new(8, 100_000).allocate(MAX_REFS - 8),
            Some(8)
        );
    }

    #[test]
    fn lcg_is_deterministic_and_bounded() {
        let mut a = Lcg::new(5);
        let mut b = Lcg::new(5);
        let values: Vec<u64> = (0..100).map(|_| a.below(10)).collect();
        assert!(values.iter().all(|&v| v < 10));
        assert!((0..10).all(|v| values.contains(&v)));
        assert!(values.iter().all(|&v| v == b.below(10)));
    }

    #[test]
    fn entropy_check_refuses_constant_and_repeating_data() {
        let mut lcg = Lcg::new(1);
        let good: Vec<u8> = (0..65536).map(|_| lcg.below(256) as u8).collect();
        assert!(check_entropy(&good).unwrap() >= 200);
        assert!(check_entropy(&[7u8; 65536]).is_err());
        let mut repeating = good.clone();
        repeating.copy_within(0..64, 64 * 100);
        assert!(check_entropy(&repeating).unwrap_err().contains("repeats"));
    }
}
