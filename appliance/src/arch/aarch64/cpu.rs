//! Single CPU instructions wrapped in safe functions.

use core::arch::asm;

/// Stops this CPU for good: waits for interrupts forever (they are masked, so it never wakes
/// up to do anything).
pub fn halt() -> ! {
    loop {
        // SAFETY: `wfi` only pauses the CPU until an interrupt or event; it touches no memory
        // and no register that Rust code relies on.
        unsafe { asm!("wfi", options(nomem, nostack, preserves_flags)) };
    }
}
