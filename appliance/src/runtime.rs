//! From the entry code to the appliance's main function and back out to Xen.
//!
//! `ferry_rust_start` is the first Rust code that runs (called by [`crate::arch::aarch64::boot`]
//! with relocations applied, BSS zeroed and a stack). It calls the main function that the
//! appliance named with [`crate::entry!`] and shuts the domain down with its [`Exit`].

use crate::arch::aarch64::cpu;
use crate::xen::abi::ShutdownReason;
use crate::xen::hypercall;
use crate::Exit;

/// What the runtime knows at boot, handed to the appliance's main function.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct BootInfo {
    /// Guest physical address of the device tree that Xen made for this domain.
    pub device_tree: usize,
    /// Guest physical address at which Xen loaded the image (its first byte, the header).
    pub load_address: usize,
}

// SAFETY: the entry code calls this symbol by name, once, with the AAPCS64 arguments declared
// here; no Rust code defines another `ferry_rust_start`.
#[unsafe(no_mangle)]
extern "C" fn ferry_rust_start(device_tree: usize, load_address: usize) -> ! {
    unsafe extern "Rust" {
        // Defined by `entry!` in the appliance binary, with exactly this signature.
        fn __ferry_appliance_main(boot: &BootInfo) -> Exit;
    }
    let boot = BootInfo {
        device_tree,
        load_address,
    };
    // SAFETY: `entry!` is the only way to define `__ferry_appliance_main`, and it defines it as
    // a safe Rust function with the signature declared above.
    let exit = unsafe { __ferry_appliance_main(&boot) };
    shutdown(exit.shutdown_reason())
}

/// Ends the domain: prints `ferry: shutdown: <reason>` and asks Xen to shut it down.
///
/// If Xen refuses (it should not), the CPU halts.
pub fn shutdown(reason: ShutdownReason) -> ! {
    let name = match reason {
        ShutdownReason::Poweroff => "poweroff",
        ShutdownReason::Reboot => "reboot",
        ShutdownReason::Crash => "crash",
    };
    crate::println!("ferry: shutdown: {name}");
    let error = hypercall::sched_shutdown(reason);
    crate::println!("ferry: Xen refused SCHEDOP_shutdown ({error}); halting");
    cpu::halt()
}
