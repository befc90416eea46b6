//! The bench's search for the smallest domain memory that a system passes with, and the
//! reading of the probe's `ferry: bench:` lines.
//!
//! The search tries the given sizes from the largest down and stops at the first failure; then
//! it bisects between the smallest passing and the first failing size, in whole pages, so the
//! two figures it reports are one page apart (when some size passed and some failed). It only
//! decides which size to try next; running the system is the caller's `probe`.

use anyhow::Result;

use crate::config::PAGE_SIZE;

/// The result of [`smallest_memory`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemorySearch {
    /// The smallest size that passed.
    pub smallest_pass: Option<u64>,
    /// The largest size that failed, with the probe's reason.
    pub largest_fail: Option<(u64, String)>,
    /// Every probe, in order: (size, `Ok(())` or the failure).
    pub probes: Vec<(u64, Result<(), String>)>,
}

/// Finds the smallest passing memory size; `probe(size)` runs the system with every domain at
/// `size` bytes and returns `Err(reason)` when the run fails.
pub fn smallest_memory(
    sizes: &[u64],
    probe: &mut dyn FnMut(u64) -> Result<Result<(), String>>,
) -> Result<MemorySearch> {
    let mut sizes: Vec<u64> = sizes.to_vec();
    sizes.sort_unstable_by(|a, b| b.cmp(a));
    sizes.dedup();
    let mut search = MemorySearch {
        smallest_pass: None,
        largest_fail: None,
        probes: Vec::new(),
    };
    for &size in &sizes {
        let verdict = probe(size)?;
        search.probes.push((size, verdict.clone()));
        match verdict {
            Ok(()) => search.smallest_pass = Some(size),
            Err(reason) => {
                search.largest_fail = Some((size, reason));
                break;
            }
        }
    }
    while let (Some(pass), Some((fail, _))) = (search.smallest_pass, &search.largest_fail) {
        let gap_pages = (pass - fail) / PAGE_SIZE;
        if gap_pages <= 1 {
            break;
        }
        let middle = fail + gap_pages / 2 * PAGE_SIZE;
        let verdict = probe(middle)?;
        search.probes.push((middle, verdict.clone()));
        match verdict {
            Ok(()) => search.smallest_pass = Some(middle),
            Err(reason) => search.largest_fail = Some((middle, reason)),
        }
    }
    Ok(search)
}

/// One `ferry: bench: <name> bytes=<B> ticks=<T> freq=<F> [requests=<N>]` line of the probe,
/// or `ferry: bench: <name> bytes=<B> usecs=<U> [requests=<N>]` of a Linux test
/// (linux/lib.sh; read as ticks of a 1 MHz counter).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BenchLine {
    /// The pass: `seq-write`, `seq-read`, `rand-write-4k`, `rand-read-4k`, `request-cost`.
    pub name: String,
    /// Bytes moved.
    pub bytes: u64,
    /// Guest counter ticks the pass took.
    pub ticks: u64,
    /// Counter frequency in Hz.
    pub frequency: u64,
    /// Requests issued, when the line says (`requests=`).
    pub requests: Option<u64>,
}

/// Size of one request of the `request-cost` pass when its line has no `requests=`: one sector.
pub const DEFAULT_REQUEST_BYTES: u64 = 512;

impl BenchLine {
    /// Parses the text of a console line (without Xen's prefix).
    pub fn parse(text: &str) -> Option<Self> {
        let rest = text.trim().strip_prefix("ferry: bench: ")?;
        let mut words = rest.split_whitespace();
        let name = words.next()?.to_owned();
        let (mut bytes, mut ticks, mut frequency, mut requests) = (None, None, None, None);
        for word in words {
            let Some((key, value)) = word.split_once('=') else {
                continue;
            };
            let value = value.parse().ok();
            match key {
                "bytes" => bytes = value,
                "ticks" => ticks = value,
                "freq" => frequency = value,
                "requests" => requests = value,
                "usecs" => {
                    ticks = value;
                    frequency = Some(1_000_000);
                }
                _ => {}
            }
        }
        Some(Self {
            name,
            bytes: bytes?,
            ticks: ticks?,
            frequency: frequency.filter(|&frequency| frequency != 0)?,
            requests,
        })
    }

    /// Seconds of guest virtual time.
    pub fn seconds(&self) -> f64 {
        self.ticks as f64 / self.frequency as f64
    }

    /// Throughput in MiB per second of guest time.
    pub fn mib_per_second(&self) -> f64 {
        self.bytes as f64 / (1u64 << 20) as f64 / self.seconds()
    }

    /// Requests of the pass: `requests=`, else one per [`DEFAULT_REQUEST_BYTES`].
    pub fn request_count(&self) -> u64 {
        self.requests
            .unwrap_or(self.bytes / DEFAULT_REQUEST_BYTES)
            .max(1)
    }

    /// Microseconds of guest time per request.
    pub fn microseconds_per_request(&self) -> f64 {
        self.seconds() * 1e6 / self.request_count() as f64
    }
}

/// The printk timestamp of Linux's `Run /init as init process` line, in microseconds: the
/// kernel's own boot (from its clock's start, early in `time_init`) to user space.
pub fn linux_run_init_us(text: &str) -> Option<u64> {
    let rest = text.trim().strip_prefix('[')?;
    let (stamp, message) = rest.split_once(']')?;
    if !message
        .trim_start()
        .starts_with("Run /init as init process")
    {
        return None;
    }
    let (seconds, micros) = stamp.trim().split_once('.')?;
    let micros: String = micros.chars().chain("000000".chars()).take(6).collect();
    Some(seconds.parse::<u64>().ok()? * 1_000_000 + micros.parse::<u64>().ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn threshold(limit: u64) -> impl FnMut(u64) -> Result<Result<(), String>> {
        move |size| {
            Ok(if size >= limit {
                Ok(())
            } else {
                Err(format!("{size} too small"))
            })
        }
    }

    #[test]
    fn bisects_to_one_page() {
        let limit = (4 << 20) + PAGE_SIZE;
        let search = smallest_memory(&[2 << 20, 8 << 20, 4 << 20], &mut threshold(limit)).unwrap();
        assert_eq!(search.smallest_pass, Some(limit));
        assert_eq!(search.largest_fail.as_ref().unwrap().0, 4 << 20);
        // 8M, 4M, then log2(1024 pages) = 10 bisection steps.
        assert_eq!(search.probes.len(), 12);
        assert_eq!(search.probes[0].0, 8 << 20);
    }

    #[test]
    fn all_pass_or_all_fail() {
        let search = smallest_memory(&[1 << 20, 2 << 20], &mut threshold(0)).unwrap();
        assert_eq!(search.smallest_pass, Some(1 << 20));
        assert_eq!(search.largest_fail, None);
        let search = smallest_memory(&[1 << 20, 2 << 20], &mut threshold(u64::MAX)).unwrap();
        assert_eq!(search.smallest_pass, None);
        assert_eq!(search.largest_fail.unwrap().0, 2 << 20);
        assert_eq!(search.probes.len(), 1);
    }

    #[test]
    fn run_init_is_found() {
        assert_eq!(
            linux_run_init_us("[    0.128092] Run /init as init process"),
            Some(128_092)
        );
        assert_eq!(
            linux_run_init_us("[   12.5] Run /init as init process"),
            Some(12_500_000)
        );
        assert_eq!(linux_run_init_us("[    0.128092] Run /sbin/init"), None);
        assert_eq!(linux_run_init_us("ferry-linux: init"), None);
    }

    #[test]
    fn bench_lines_parse() {
        let line =
            BenchLine::parse("ferry: bench: seq-write bytes=4194304 ticks=62500000 freq=62500000")
                .unwrap();
        assert_eq!(line.name, "seq-write");
        assert_eq!(line.mib_per_second(), 4.0);
        assert_eq!(line.request_count(), 8192);
        let line = BenchLine::parse(
            "ferry: bench: request-cost bytes=512000 ticks=625000 freq=62500000 requests=1000",
        )
        .unwrap();
        assert_eq!(line.requests, Some(1000));
        assert!((line.microseconds_per_request() - 10.0).abs() < 1e-9);
        assert_eq!(
            BenchLine::parse("ferry: bench: seq-read bytes=1 ticks=x freq=1"),
            None
        );
        assert_eq!(
            BenchLine::parse("ferry: bench: seq-read bytes=1 ticks=1 freq=0"),
            None
        );
        assert_eq!(BenchLine::parse("ferry: ready probe ticks=1 freq=1"), None);
        let line = BenchLine::parse(
            "ferry: bench: linux-rand-read-4k bytes=262144 usecs=40000 requests=64",
        )
        .unwrap();
        assert_eq!((line.ticks, line.frequency), (40000, 1_000_000));
        assert!((line.microseconds_per_request() - 625.0).abs() < 1e-9);
    }
}
