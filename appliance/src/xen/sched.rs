//! Scheduler operations (`HYPERVISOR_sched_op`, xen/include/public/sched.h) for this vCPU.
//!
//! Shutdown lives in [`super::hypercall::sched_shutdown`] and is used by the runtime only (an
//! appliance ends by returning its [`crate::Exit`]).

use super::evtchn::Port;
use super::hypercall;
use super::HypercallError;

/// `SCHEDOP_yield`: lets Xen run something else, then continues.
pub fn yield_now() -> Result<(), HypercallError> {
    HypercallError::check("SCHEDOP_yield", hypercall::sched_yield()).map(drop)
}

/// `SCHEDOP_block`: sleeps until an event is delivered to this vCPU.
///
/// On arm Xen only wakes the vCPU for an interrupt it could take: call it with interrupts
/// enabled (PSTATE.I clear). It returns at once if an interrupt is already pending.
pub fn block() -> Result<(), HypercallError> {
    HypercallError::check("SCHEDOP_block", hypercall::sched_block()).map(drop)
}

/// The most ports [`poll`] passes to Xen in one call (Xen accepts up to 128).
pub const POLL_MAX_PORTS: usize = 8;

/// `SCHEDOP_poll`: sleeps until one of `ports` is PENDING (masked or not, upcall or not) or
/// Xen's system time reaches `timeout` (ns since Xen booted; 0: no timeout). Returns at once
/// if one already is. At most [`POLL_MAX_PORTS`] ports are passed; the rest are ignored.
pub fn poll(ports: &[Port], timeout: u64) -> Result<(), HypercallError> {
    let mut numbers = [0u32; POLL_MAX_PORTS];
    let count = ports.len().min(POLL_MAX_PORTS);
    for (number, port) in numbers.iter_mut().zip(ports) {
        *number = port.number();
    }
    HypercallError::check(
        "SCHEDOP_poll",
        hypercall::sched_poll(&numbers[..count], timeout),
    )
    .map(drop)
}
