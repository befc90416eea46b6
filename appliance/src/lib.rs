//! Ferry's appliance runtime: the small `no_std` world a Ferry backend runs in as a Xen domain.
//!
//! An appliance is an arm64 unikernel that Xen boots like a Linux `Image` (see
//! `arch::aarch64::boot`). The runtime owns everything between the hypervisor and the
//! appliance's own code: the Image header and entry code, the Xen hypercall ABI ([`xen`]), the
//! console, and the way an appliance ends (clean poweroff, or crash on failure and on panic).
//! Appliance binaries (one per backend, in `src/bin/`) stay thin: they name their main function
//! with [`entry!`] and the runtime does the rest.
//!
//! The crate also compiles for the host so that the workspace builds, tests and lints there:
//! only the target-independent parts ([`Exit`], the Xen ABI constants) exist on the host, and
//! appliance binaries built for the host just say that they only run under Xen (`host`).
//!
//! So far the runtime runs with the MMU off. Until it turns the MMU on, all memory is
//! Device-nGnRnE for the appliance: no unaligned accesses (the target is `+strict-align`) and no
//! exclusive or atomic read-modify-write instructions.
#![no_std]

#[cfg(all(target_os = "none", not(target_arch = "aarch64")))]
compile_error!("Ferry appliances run on aarch64 only so far (target aarch64-unknown-none)");

#[cfg(not(target_os = "none"))]
extern crate std;

pub mod arch;
pub mod xen;

#[cfg(all(target_arch = "aarch64", target_os = "none"))]
mod panic;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub mod runtime;

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
