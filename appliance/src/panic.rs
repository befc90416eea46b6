//! The panic handler: report the panic on the Xen console and shut down with reason crash.

use core::panic::PanicInfo;
use core::sync::atomic::{AtomicBool, Ordering};

use crate::runtime;
use crate::xen::abi::ShutdownReason;

/// Set by the first panic, so that a panic while reporting one cannot loop.
///
/// Only plain loads and stores are used: with the MMU off memory is Device memory, on which
/// exclusive (read-modify-write) accesses are not allowed. The runtime runs on one vCPU.
static PANICKING: AtomicBool = AtomicBool::new(false);

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    if !PANICKING.load(Ordering::Relaxed) {
        PANICKING.store(true, Ordering::Relaxed);
        match info.location() {
            Some(location) => crate::println!("ferry: panic: {} at {location}", info.message()),
            None => crate::println!("ferry: panic: {}", info.message()),
        }
    }
    runtime::shutdown(ShutdownReason::Crash)
}
