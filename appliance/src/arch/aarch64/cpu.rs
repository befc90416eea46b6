//! Single CPU instructions wrapped in safe functions: halting, waiting for interrupts, and
//! masking them (`DAIF.I`).

use core::arch::asm;

/// Stops this CPU for good: masks interrupts and waits for them forever.
pub fn halt() -> ! {
    mask_irqs();
    loop {
        wait_for_interrupt();
    }
}

/// `wfi`: sleeps until an interrupt is pending (even a masked one). Under Xen this traps and
/// deschedules the vCPU until an interrupt arrives.
pub fn wait_for_interrupt() {
    // SAFETY: `wfi` only pauses the CPU until an interrupt or event; it touches no memory
    // and no register that Rust code relies on.
    unsafe { asm!("wfi", options(nomem, nostack, preserves_flags)) };
}

/// Masks IRQs (sets `DAIF.I`).
pub fn mask_irqs() {
    // SAFETY: masking IRQs only delays interrupt handlers; it touches no memory. The compiler
    // barrier (no `nomem`) keeps memory accesses of a critical section after it.
    unsafe { asm!("msr daifset, #2", options(nostack, preserves_flags)) };
}

/// Unmasks IRQs (clears `DAIF.I`): pending interrupts are taken right after this.
pub fn unmask_irqs() {
    // SAFETY: unmasking IRQs lets the IRQ vector run, which saves and restores everything it
    // changes. The compiler barrier keeps a critical section's accesses before it.
    unsafe { asm!("msr daifclr, #2", options(nostack, preserves_flags)) };
}

/// Whether IRQs are masked (`DAIF.I`).
pub fn irqs_masked() -> bool {
    let daif: u64;
    // SAFETY: reading DAIF has no side effect.
    unsafe { asm!("mrs {}, daif", out(reg) daif, options(nomem, nostack, preserves_flags)) };
    daif & (1 << 7) != 0
}
