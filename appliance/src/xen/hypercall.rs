//! Xen hypercalls on arm64, and the safe wrappers the runtime uses.
//!
//! ABI (xen/include/public/arch-arm.h): `hvc #0xEA1`; hypercall number in x16; arguments in
//! x0..x4; result in x0. Xen clobbers x16 and the argument registers. A preempted hypercall is
//! continued by Xen rewinding the guest PC to the `hvc` with updated argument registers, which
//! is why all of x0..x4 are declared as clobbered below.

use core::arch::asm;

use super::abi::{
    hypercall_number, DmOp, DmOpBuf, DomId, EvtchnAllocUnbound, EvtchnBindInterdomain, EvtchnPort,
    EvtchnPortArg, EvtchnStatus, GnttabCopy, GnttabMapGrantRef, GnttabQuerySize,
    GnttabUnmapGrantRef, SchedPoll, SchedShutdown, ShutdownReason, XenAddToPhysmap,
    XenMemAcquireResource, CONSOLEIO_WRITE, EVTCHNOP_ALLOC_UNBOUND, EVTCHNOP_BIND_INTERDOMAIN,
    EVTCHNOP_CLOSE, EVTCHNOP_SEND, EVTCHNOP_STATUS, EVTCHNOP_UNMASK, GNTTABOP_COPY,
    GNTTABOP_MAP_GRANT_REF, GNTTABOP_QUERY_SIZE, GNTTABOP_UNMAP_GRANT_REF, SCHEDOP_BLOCK,
    SCHEDOP_POLL, SCHEDOP_SHUTDOWN, SCHEDOP_YIELD, XENMEM_ACQUIRE_RESOURCE, XENMEM_ADD_TO_PHYSMAP,
    XENVER_VERSION,
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

/// `HYPERVISOR_xen_version(XENVER_version, NULL)`: `major << 16 | minor`, or a negative errno.
pub fn xen_version() -> i64 {
    // SAFETY: XENVER_version takes no argument (version.h: "arg == NULL") and touches no guest
    // memory.
    unsafe { hypercall5(hypercall_number::XEN_VERSION, [XENVER_VERSION, 0, 0, 0, 0]) }
}

/// `HYPERVISOR_memory_op(XENMEM_add_to_physmap, argument)`: makes a Xen page (shared info,
/// grant table frame) appear at guest frame `argument.gpfn`. Returns 0 or a negative errno.
///
/// # Safety
///
/// Whatever was at `argument.gpfn` (our own RAM, or nothing) is replaced by the Xen page: the
/// caller must own that guest frame and have no Rust object in it that relies on its contents,
/// except objects designed to be shared with Xen (made of atomics).
pub unsafe fn add_to_physmap(argument: &XenAddToPhysmap) -> i64 {
    // SAFETY: XENMEM_add_to_physmap reads a `struct xen_add_to_physmap`, which `argument` is;
    // the caller vouches for the frame being replaced.
    unsafe {
        hypercall5(
            hypercall_number::MEMORY_OP,
            [XENMEM_ADD_TO_PHYSMAP, &raw const *argument as u64, 0, 0, 0],
        )
    }
}

/// `HYPERVISOR_event_channel_op(command, argument)` for commands whose argument is `T`.
///
/// # Safety
///
/// `T` must be the struct that Xen reads and writes for `command`.
unsafe fn event_channel_op<T>(command: u64, argument: &mut T) -> i64 {
    // SAFETY: the caller matches `T` to `command`; `argument` is a live exclusive reference, so
    // Xen may read and write it for the whole call.
    unsafe {
        hypercall5(
            hypercall_number::EVENT_CHANNEL_OP,
            [command, &raw mut *argument as u64, 0, 0, 0],
        )
    }
}

/// `EVTCHNOP_alloc_unbound`; fills in `argument.port`. Returns 0 or a negative errno.
pub fn evtchn_alloc_unbound(argument: &mut EvtchnAllocUnbound) -> i64 {
    // SAFETY: EVTCHNOP_alloc_unbound takes a `struct evtchn_alloc_unbound` (event_channel.h).
    unsafe { event_channel_op(EVTCHNOP_ALLOC_UNBOUND, argument) }
}

/// `EVTCHNOP_bind_interdomain`; fills in `argument.local_port`. Returns 0 or a negative errno.
pub fn evtchn_bind_interdomain(argument: &mut EvtchnBindInterdomain) -> i64 {
    // SAFETY: EVTCHNOP_bind_interdomain takes a `struct evtchn_bind_interdomain`.
    unsafe { event_channel_op(EVTCHNOP_BIND_INTERDOMAIN, argument) }
}

/// `EVTCHNOP_status`; fills in the OUT fields. Returns 0 or a negative errno.
pub fn evtchn_status(argument: &mut EvtchnStatus) -> i64 {
    // SAFETY: EVTCHNOP_status takes a `struct evtchn_status`.
    unsafe { event_channel_op(EVTCHNOP_STATUS, argument) }
}

/// `EVTCHNOP_send` on `port`. Returns 0 or a negative errno.
pub fn evtchn_send(port: EvtchnPort) -> i64 {
    let mut argument = EvtchnPortArg { port };
    // SAFETY: EVTCHNOP_send takes a `struct evtchn_send`, which is `EvtchnPortArg`.
    unsafe { event_channel_op(EVTCHNOP_SEND, &mut argument) }
}

/// `EVTCHNOP_unmask` on `port`: Xen clears the mask bit and re-raises the upcall if the port is
/// pending. Returns 0 or a negative errno.
pub fn evtchn_unmask(port: EvtchnPort) -> i64 {
    let mut argument = EvtchnPortArg { port };
    // SAFETY: EVTCHNOP_unmask takes a `struct evtchn_unmask`, which is `EvtchnPortArg`.
    unsafe { event_channel_op(EVTCHNOP_UNMASK, &mut argument) }
}

/// `EVTCHNOP_close` on `port`. Returns 0 or a negative errno.
pub fn evtchn_close(port: EvtchnPort) -> i64 {
    let mut argument = EvtchnPortArg { port };
    // SAFETY: EVTCHNOP_close takes a `struct evtchn_close`, which is `EvtchnPortArg`.
    unsafe { event_channel_op(EVTCHNOP_CLOSE, &mut argument) }
}

/// `GNTTABOP_query_size` with one argument; fills in the OUT fields. Returns 0 or a negative
/// errno (the grant status is in `argument.status`).
pub fn gnttab_query_size(argument: &mut GnttabQuerySize) -> i64 {
    // SAFETY: GNTTABOP_query_size reads and writes `count` (1) `struct gnttab_query_size`.
    unsafe {
        hypercall5(
            hypercall_number::GRANT_TABLE_OP,
            [GNTTABOP_QUERY_SIZE, &raw mut *argument as u64, 1, 0, 0],
        )
    }
}

/// `GNTTABOP_copy` with all of `operations` in one hypercall. Returns 0 when Xen went through
/// the batch (then each entry has its own `status`) or a negative errno.
///
/// # Safety
///
/// Every destination that is a gfn of this domain must be memory that the caller may have
/// overwritten with arbitrary bytes right now (no live Rust reference into it other than one
/// the caller holds exclusively for the call).
pub unsafe fn gnttab_copy(operations: &mut [GnttabCopy]) -> i64 {
    // SAFETY: GNTTABOP_copy reads and writes `count` `struct gnttab_copy`, which `operations`
    // holds, exclusively borrowed; the caller vouches for the destination frames.
    unsafe {
        hypercall5(
            hypercall_number::GRANT_TABLE_OP,
            [
                GNTTABOP_COPY,
                operations.as_mut_ptr() as u64,
                operations.len() as u64,
                0,
                0,
            ],
        )
    }
}

/// `GNTTABOP_map_grant_ref` with all of `operations` in one hypercall. Returns 0 when Xen went
/// through the batch (then each entry has its own `status` and, if it succeeded, `handle`) or a
/// negative errno.
///
/// # Safety
///
/// Every `host_addr` must be a guest frame of ours that holds no RAM and no Rust object (a hole
/// of our address space): Xen puts the granted frame there. The caller must unmap every
/// successful entry before the grant's owner may reuse the frame.
pub unsafe fn gnttab_map_grant_ref(operations: &mut [GnttabMapGrantRef]) -> i64 {
    // SAFETY: GNTTABOP_map_grant_ref reads and writes `count` `struct gnttab_map_grant_ref`,
    // which `operations` holds, exclusively borrowed; the caller vouches for the frames.
    unsafe {
        hypercall5(
            hypercall_number::GRANT_TABLE_OP,
            [
                GNTTABOP_MAP_GRANT_REF,
                operations.as_mut_ptr() as u64,
                operations.len() as u64,
                0,
                0,
            ],
        )
    }
}

/// `GNTTABOP_unmap_grant_ref` with all of `operations` in one hypercall. Returns 0 when Xen
/// went through the batch (then each entry has its own `status`) or a negative errno.
///
/// # Safety
///
/// Nothing may access the frames at the entries' `host_addr` after this (they become holes
/// again; an access would fault).
pub unsafe fn gnttab_unmap_grant_ref(operations: &mut [GnttabUnmapGrantRef]) -> i64 {
    // SAFETY: GNTTABOP_unmap_grant_ref reads and writes `count` `struct
    // gnttab_unmap_grant_ref`, which `operations` holds, exclusively borrowed.
    unsafe {
        hypercall5(
            hypercall_number::GRANT_TABLE_OP,
            [
                GNTTABOP_UNMAP_GRANT_REF,
                operations.as_mut_ptr() as u64,
                operations.len() as u64,
                0,
                0,
            ],
        )
    }
}

/// `HYPERVISOR_sched_op(SCHEDOP_yield, NULL)`.
pub fn sched_yield() -> i64 {
    // SAFETY: SCHEDOP_yield takes no argument.
    unsafe { hypercall5(hypercall_number::SCHED_OP, [SCHEDOP_YIELD, 0, 0, 0, 0]) }
}

/// `HYPERVISOR_sched_op(SCHEDOP_block, NULL)`.
pub fn sched_block() -> i64 {
    // SAFETY: SCHEDOP_block takes no argument.
    unsafe { hypercall5(hypercall_number::SCHED_OP, [SCHEDOP_BLOCK, 0, 0, 0, 0]) }
}

/// `HYPERVISOR_sched_op(SCHEDOP_poll, &sched_poll)` on `ports`, until one of them is pending or
/// Xen system time reaches `timeout` (ns; 0: no timeout). Returns 0 or a negative errno.
pub fn sched_poll(ports: &[EvtchnPort], timeout: u64) -> i64 {
    let argument = SchedPoll {
        ports: ports.as_ptr() as u64,
        nr_ports: ports.len() as u32,
        timeout,
    };
    // SAFETY: SCHEDOP_poll reads a `struct sched_poll` and `nr_ports` ports from its handle;
    // `argument` and `ports` are alive and unchanged for the whole call. With PA = VA the
    // slice's address is the guest address Xen expects.
    unsafe {
        hypercall5(
            hypercall_number::SCHED_OP,
            [SCHEDOP_POLL, &raw const argument as u64, 0, 0, 0],
        )
    }
}

/// `HYPERVISOR_dm_op(domid, 1, &buf)` with one buffer holding `operation`
/// (xen/include/public/hvm/dm_op.h): Xen reads the op and, for ops with OUT fields, writes
/// `operation.u` back. Returns 0 or a negative errno.
///
/// # Safety
///
/// `T` must be the `xen_dm_op` union member that `operation.op` uses (Xen reads and writes
/// `8 + sizeof(member)` bytes of the buffer).
pub unsafe fn dm_op<T>(domid: DomId, operation: &mut DmOp<T>) -> i64 {
    let buffer = DmOpBuf {
        handle: &raw mut *operation as u64,
        size: core::mem::size_of::<DmOp<T>>() as u64,
    };
    // SAFETY: `buffer` describes `operation`, alive and exclusively borrowed for the call, of
    // the size Xen is told; the caller matches `T` to the op. PA = VA, so the addresses are the
    // guest addresses Xen expects.
    unsafe {
        hypercall5(
            hypercall_number::DM_OP,
            [u64::from(domid), 1, &raw const buffer as u64, 0, 0],
        )
    }
}

/// `HYPERVISOR_memory_op(XENMEM_acquire_resource, argument)`: on arm, maps the resource's
/// frames at the gfns that `argument.frame_list` lists. Returns 0 or a negative errno.
///
/// # Safety
///
/// `argument.frame_list` must point to `argument.nr_frames` gfns, and whatever is at those
/// gfns is replaced by the resource's pages: the caller must own them and have no Rust object
/// there (an unused hole in our address space is the usual choice).
pub unsafe fn acquire_resource(argument: &mut XenMemAcquireResource) -> i64 {
    // SAFETY: XENMEM_acquire_resource reads and writes a `struct xen_mem_acquire_resource`,
    // which `argument` is; the caller vouches for the frame list and the frames.
    unsafe {
        hypercall5(
            hypercall_number::MEMORY_OP,
            [XENMEM_ACQUIRE_RESOURCE, &raw mut *argument as u64, 0, 0, 0],
        )
    }
}
