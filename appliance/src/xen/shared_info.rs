//! The shared info page: where Xen posts pending events for this domain.
//!
//! A dom0less arm64 domU has no start_info page; it picks a page of its own RAM and asks Xen to
//! put the shared info page there with `XENMEM_add_to_physmap(XENMAPSPACE_shared_info)`
//! (xen/include/public/memory.h). That page is [`PAGE`], a page-aligned static in `.bss`: the
//! image runs with guest physical = virtual addresses, so its address is its guest frame.
//! After the mapping the static *is* Xen's `struct shared_info` (xen/include/public/xen.h),
//! which [`SharedInfo`] describes with atomics only, so Rust code and Xen may use it at the
//! same time. Nothing else may live in that page, which the page alignment guarantees.
//!
//! This module owns the mapping; [`super::evtchn`] owns the meaning of the event bits.

use core::sync::atomic::{AtomicBool, Ordering};

use super::abi::{SharedInfo, PAGE_SIZE};

/// [`SharedInfo`] padded to exactly one page and aligned to a page.
#[repr(C, align(4096))]
struct SharedInfoPage(SharedInfo);

const _: () = assert!(core::mem::size_of::<SharedInfoPage>() == PAGE_SIZE);

/// The page that Xen's shared info replaces. All zero until then, so it lives in `.bss`.
static PAGE: SharedInfoPage = SharedInfoPage(SharedInfo::zeroed());

/// Set once Xen has mapped its shared info page over [`PAGE`].
static MAPPED: AtomicBool = AtomicBool::new(false);

/// The shared info page, once [`map`] has succeeded.
pub fn get() -> Option<&'static SharedInfo> {
    if MAPPED.load(Ordering::Acquire) {
        Some(&PAGE.0)
    } else {
        None
    }
}

/// The guest frame number of the page (guest physical address >> 12; PA = VA in Ferry).
pub fn frame() -> u64 {
    (&raw const PAGE as usize / PAGE_SIZE) as u64
}

/// Asks Xen to map the shared info page over [`PAGE`]; returns it. Calling it again is cheap.
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub fn map() -> Result<&'static SharedInfo, super::HypercallError> {
    use super::abi::{XenAddToPhysmap, DOMID_SELF, XENMAPSPACE_SHARED_INFO};

    if let Some(shared) = get() {
        return Ok(shared);
    }
    let argument = XenAddToPhysmap {
        domid: DOMID_SELF,
        size: 0,
        space: XENMAPSPACE_SHARED_INFO,
        idx: 0,
        gpfn: frame(),
    };
    // SAFETY: the frame is that of `PAGE`, which fills its page alone (size and alignment are
    // one page) and consists of atomics only, meant to be shared with Xen: replacing its
    // contents with Xen's shared info breaks no Rust invariant.
    let result = unsafe { super::hypercall::add_to_physmap(&argument) };
    super::HypercallError::check("XENMEM_add_to_physmap(XENMAPSPACE_shared_info)", result)?;
    MAPPED.store(true, Ordering::Release);
    Ok(&PAGE.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_is_one_aligned_page() {
        assert_eq!(frame() as usize * PAGE_SIZE, &raw const PAGE as usize);
        assert!(get().is_none());
    }
}
