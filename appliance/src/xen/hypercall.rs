//! Xen hypercalls on arm64, and the safe wrappers the runtime uses.
//!
//! ABI (xen/include/public/arch-arm.h): `hvc #0xEA1`; hypercall number in x16; arguments in
//! x0..x4; result in x0. Xen clobbers x16 and the argument registers. A preempted hypercall is
//! continued by Xen rewinding the guest PC to the `hvc` with updated argument registers, which
//! is why all of x0..x4 are declared as clobbered below.

use core::arch::asm;

use super::abi::{
    hypercall_number, SchedShutdown, ShutdownReason, CONSOLEIO_WRITE, SCHEDOP_SHUTDOWN,
};

/// Issues hypercall `number` with five arguments and returns Xen's result (negative: an errno).
///
/// # Safety
///
/// The arguments must be valid for hypercall `number` as its Xen header defines it: every
/// pointer argument points to memory of the type Xen expects, valid for the reads and writes Xen
/// makes for the whole call, and the call must not change anything Rust code relies on (e.g.
/// take away memory that is in use).
#[inline(always)]
pub unsafe fn hypercall5(number: u64, args: [u64; 5]) -> i64 {
    let result: i64;
    // SAFETY: `hvc #0xEA1` enters Xen, which only reads and writes guest memory as the caller's
    // contract allows; the registers Xen changes (x0..x4, x16) are declared as outputs, and Xen
    // returns to the next instruction without using our stack.
    unsafe {
        asm!(
            "hvc #0xEA1",
            inout("x16") number => _,
            inout("x0") args[0] => result,
            inout("x1") args[1] => _,
            inout("x2") args[2] => _,
            inout("x3") args[3] => _,
            inout("x4") args[4] => _,
            options(nostack),
        );
    }
    result
}

/// Writes `bytes` to the Xen console: `HYPERVISOR_console_io(CONSOLEIO_write, len, bytes)`.
///
/// Xen (4.17) shows a dom0less domU's output as `(d<id>) <line>` when `guest_loglvl` lets guest
/// debug messages through; it buffers up to a newline and drops non-printable characters.
/// Returns Xen's result: 0, or a negative errno (e.g. `-EPERM` when this domain may not use the
/// console).
pub fn console_write(bytes: &[u8]) -> i64 {
    // SAFETY: CONSOLEIO_write only reads `len` bytes from `buffer`, and `bytes` is a live
    // shared slice of exactly that length. With the MMU off the slice's address is the guest
    // physical address that Xen expects.
    unsafe {
        hypercall5(
            hypercall_number::CONSOLE_IO,
            [
                CONSOLEIO_WRITE,
                bytes.len() as u64,
                bytes.as_ptr() as u64,
                0,
                0,
            ],
        )
    }
}

/// Asks Xen to shut this domain down: `HYPERVISOR_sched_op(SCHEDOP_shutdown, &reason)`.
///
/// On success Xen does not run this vCPU again; the function returns only if Xen refused, with
/// its negative errno.
pub fn sched_shutdown(reason: ShutdownReason) -> i64 {
    let argument = SchedShutdown::new(reason);
    // SAFETY: SCHEDOP_shutdown only reads a `struct sched_shutdown`, and `argument` is one,
    // alive on our stack for the whole call.
    unsafe {
        hypercall5(
            hypercall_number::SCHED_OP,
            [SCHEDOP_SHUTDOWN, &raw const argument as u64, 0, 0, 0],
        )
    }
}
