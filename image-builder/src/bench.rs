//! The bench's search for the smallest domain memory that a system passes with.
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
}
