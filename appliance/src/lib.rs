//! Ferry's appliance runtime: the small `no_std` world a Ferry backend runs in as a Xen domain.
//!
//! An appliance is an arm64 unikernel that Xen boots like a Linux `Image` (see
//! `arch::aarch64::boot`). The runtime owns everything between the hypervisor and the
//! appliance's own code: the Image header and entry code, exception vectors and crash reports,
//! the device tree ([`platform`]), the MMU ([`paging`], `mmu`), the heap, the logger, the GIC
//! (`irq`), the generic timer (`time`), the Xen hypercall ABI ([`xen`]), the console, and the
//! way an appliance ends (clean poweroff, or crash on failure, fault and panic). Appliance
//! binaries (one per backend, in `src/bin/`) stay thin: they name their main function with
//! [`entry!`] and the runtime does the rest; `runtime` describes the boot sequence.
//!
//! The crate also compiles for the host so that the workspace builds, tests and lints there:
//! only the target-independent parts ([`Exit`], [`platform`], [`paging`], [`logger`]'s level
//! parsing, `arch::esr`, the Xen ABI) exist on the host, and appliance binaries built for the
//! host just say that they only run under Xen (`host`).
//!
//! The runtime turns the MMU on with caches right after reading the device tree, before the
//! heap, the logger and the appliance run. Code before that point runs on Device memory: it is
//! compiled `+strict-align` (the target's default, kept) and must not use atomic
//! read-modify-write operations or locks.
#![no_std]

#[cfg(all(target_os = "none", not(target_arch = "aarch64")))]
compile_error!("Ferry appliances run on aarch64 only so far (target aarch64-unknown-none)");

#[cfg(not(target_os = "none"))]
extern crate std;

#[cfg(all(target_arch = "aarch64", target_os = "none"))]
extern crate alloc;

pub mod arch;
pub mod dma;
pub mod logger;
pub mod paging;
pub mod platform;
pub mod transport;
pub mod xen;

#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub mod heap;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub mod irq;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
mod panic;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub mod runtime;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub mod time;

/// Mapping memory after boot: `mmu::map_device(region)` and friends.
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub use arch::aarch64::mmu;

#[cfg(not(target_os = "none"))]
pub mod host;

#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub use runtime::BootInfo;

use xen::abi::ShutdownReason;

/// How an appliance's main function ends; the runtime turns it into a Xen domain shutdown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum Exit {
    /// The appliance did its job: the domain powers off.
    Success,
    /// The appliance failed: the domain shuts down with reason "crash", like after a panic.
    Failure,
}

impl Exit {
    /// The Xen shutdown reason this exit is reported with.
    pub const fn shutdown_reason(self) -> ShutdownReason {
        match self {
            Exit::Success => ShutdownReason::Poweroff,
            Exit::Failure => ShutdownReason::Crash,
        }
    }
}

/// Names an appliance's main function: `fn(&BootInfo) -> Exit`.
///
/// The runtime calls it once, after boot, and shuts the domain down with the returned [`Exit`].
/// Use it exactly once per appliance binary, on bare metal only:
///
/// ```
/// #[cfg(all(target_arch = "aarch64", target_os = "none"))]
/// ferry_appliance::entry!(appliance_main);
///
/// #[cfg(all(target_arch = "aarch64", target_os = "none"))]
/// fn appliance_main(boot: &ferry_appliance::BootInfo) -> ferry_appliance::Exit {
///     ferry_appliance::println!("device tree at {:#x}", boot.device_tree);
///     ferry_appliance::Exit::Success
/// }
/// ```
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        // `runtime::ferry_rust_start` declares this symbol with the same signature and calls it.
        #[doc(hidden)]
        #[unsafe(export_name = "__ferry_appliance_main")]
        fn __ferry_appliance_main(boot: &$crate::BootInfo) -> $crate::Exit {
            let main: fn(&$crate::BootInfo) -> $crate::Exit = $main;
            main(boot)
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_powers_off_and_failure_crashes() {
        assert_eq!(Exit::Success.shutdown_reason(), ShutdownReason::Poweroff);
        assert_eq!(Exit::Failure.shutdown_reason(), ShutdownReason::Crash);
    }
}
