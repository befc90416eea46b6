//! Xen's public guest ABI, as far as Ferry uses it: numbers and `repr(C)` structs only.
//!
//! Every item names the Xen public header (`xen/include/public/...`, Xen 4.17) it comes from.

/// Hypercall numbers (`__HYPERVISOR_*`, xen/include/public/xen.h).
pub mod hypercall_number {
    /// `__HYPERVISOR_console_io`.
    pub const CONSOLE_IO: u64 = 18;
    /// `__HYPERVISOR_sched_op` (the "new" sched_op that takes a pointer argument).
    pub const SCHED_OP: u64 = 29;
}

/// The immediate of the `hvc` instruction that Xen treats as a hypercall (`XEN_HYPERCALL_TAG`,
/// xen/include/public/arch-arm.h).
pub const HYPERCALL_TAG: u16 = 0xEA1;

/// `CONSOLEIO_write` (xen/include/public/xen.h): `console_io(CONSOLEIO_write, count, buffer)`.
pub const CONSOLEIO_WRITE: u64 = 0;

/// `SCHEDOP_shutdown` (xen/include/public/sched.h): `sched_op(SCHEDOP_shutdown, &SchedShutdown)`.
pub const SCHEDOP_SHUTDOWN: u64 = 2;

/// Why a domain shuts down (`SHUTDOWN_*`, xen/include/public/sched.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum ShutdownReason {
    /// `SHUTDOWN_poweroff`: the domain is done and exits cleanly.
    Poweroff = 0,
    /// `SHUTDOWN_reboot`: the domain asks to be restarted.
    Reboot = 1,
    /// `SHUTDOWN_crash`: the domain failed (a panic, or an appliance that returned failure).
    Crash = 3,
}

/// `struct sched_shutdown` (xen/include/public/sched.h): the argument of `SCHEDOP_shutdown`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct SchedShutdown {
    /// A `SHUTDOWN_*` value.
    pub reason: u32,
}

impl SchedShutdown {
    /// The argument for a shutdown with `reason`.
    pub const fn new(reason: ShutdownReason) -> Self {
        Self {
            reason: reason as u32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sched_shutdown_is_one_unsigned_int() {
        assert_eq!(core::mem::size_of::<SchedShutdown>(), 4);
        assert_eq!(core::mem::align_of::<SchedShutdown>(), 4);
    }

    #[test]
    fn shutdown_reasons_match_sched_h() {
        assert_eq!(SchedShutdown::new(ShutdownReason::Poweroff).reason, 0);
        assert_eq!(SchedShutdown::new(ShutdownReason::Reboot).reason, 1);
        assert_eq!(SchedShutdown::new(ShutdownReason::Crash).reason, 3);
    }
}
