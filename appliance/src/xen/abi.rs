//! Xen's public guest ABI, as far as Ferry uses it: numbers and `repr(C)` structs only.
//!
//! Every item names the Xen public header (`xen/include/public/...`, Xen 4.17) it comes from.
//! The layouts are those of arm64 (`xen/include/public/arch-arm.h`): `xen_ulong_t` and
//! `xen_pfn_t` are 64 bits, a `XEN_GUEST_HANDLE` in a struct is 8 bytes, 8-byte aligned, and
//! `XEN_LEGACY_MAX_VCPUS` is 1. The tests at the bottom check every size and offset that Xen
//! reads or writes, on the host, so `cargo test -p ferry-appliance` catches a layout mistake.
//!
//! Structs that Xen writes while we read them (the shared info page, grant entries) are made of
//! atomics, so that sharing them with Xen is like sharing them with another thread.

use core::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, AtomicU8};

/// Hypercall numbers (`__HYPERVISOR_*`, xen/include/public/xen.h).
pub mod hypercall_number {
    /// `__HYPERVISOR_memory_op`.
    pub const MEMORY_OP: u64 = 12;
    /// `__HYPERVISOR_xen_version`.
    pub const XEN_VERSION: u64 = 17;
    /// `__HYPERVISOR_console_io`.
    pub const CONSOLE_IO: u64 = 18;
    /// `__HYPERVISOR_grant_table_op`.
    pub const GRANT_TABLE_OP: u64 = 20;
    /// `__HYPERVISOR_sched_op` (the "new" sched_op that takes a pointer argument).
    pub const SCHED_OP: u64 = 29;
    /// `__HYPERVISOR_event_channel_op` (the "new" one: command and pointer argument).
    pub const EVENT_CHANNEL_OP: u64 = 32;
    /// `__HYPERVISOR_dm_op`: operations of a device model on its target domain.
    pub const DM_OP: u64 = 41;
}

/// The immediate of the `hvc` instruction that Xen treats as a hypercall (`XEN_HYPERCALL_TAG`,
/// xen/include/public/arch-arm.h).
pub const HYPERCALL_TAG: u16 = 0xEA1;

/// A domain id (`domid_t`, xen/include/public/xen.h).
pub type DomId = u16;

/// `DOMID_SELF` (xen/include/public/xen.h): "this domain" where a hypercall takes a domid.
pub const DOMID_SELF: DomId = 0x7FF0;

/// `DOMID_FIRST_RESERVED` (xen/include/public/xen.h): ids from here on are not real domains.
pub const DOMID_FIRST_RESERVED: DomId = 0x7FF0;

/// Size of a Xen page on arm64 with 4 KiB granules (`XEN_PAGE_SHIFT` 12).
pub const PAGE_SIZE: usize = 4096;

// ----------------------------------------------------------------------------------------------
// console_io (xen/include/public/xen.h)

/// `CONSOLEIO_write` (xen/include/public/xen.h): `console_io(CONSOLEIO_write, count, buffer)`.
pub const CONSOLEIO_WRITE: u64 = 0;

// ----------------------------------------------------------------------------------------------
// xen_version (xen/include/public/version.h)

/// `XENVER_version` (xen/include/public/version.h): no argument, returns `major << 16 | minor`.
pub const XENVER_VERSION: u64 = 0;

// ----------------------------------------------------------------------------------------------
// sched_op (xen/include/public/sched.h)

/// `SCHEDOP_yield`: give up the CPU; no argument.
pub const SCHEDOP_YIELD: u64 = 0;
/// `SCHEDOP_block`: block until an event is delivered; no argument.
pub const SCHEDOP_BLOCK: u64 = 1;
/// `SCHEDOP_shutdown`: `sched_op(SCHEDOP_shutdown, &SchedShutdown)`.
pub const SCHEDOP_SHUTDOWN: u64 = 2;
/// `SCHEDOP_poll`: `sched_op(SCHEDOP_poll, &SchedPoll)`.
pub const SCHEDOP_POLL: u64 = 3;

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

/// `struct sched_poll` (xen/include/public/sched.h): the argument of `SCHEDOP_poll`.
///
/// `ports` is a `XEN_GUEST_HANDLE(evtchn_port_t)`: on arm a 64-bit guest address
/// (xen/include/public/arch-arm.h). `timeout` is absolute Xen system time in ns, 0 for none.
/// Xen accepts at most 128 ports (`do_poll`, xen/common/sched/core.c).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct SchedPoll {
    /// Guest address of an array of `nr_ports` `evtchn_port_t`.
    pub ports: u64,
    /// Number of ports in the array.
    pub nr_ports: u32,
    /// Absolute Xen system time (ns) at which to give up; 0: wait without a timeout.
    pub timeout: u64,
}

/// The most ports one `SCHEDOP_poll` accepts (xen/common/sched/core.c, `do_poll`).
pub const SCHED_POLL_MAX_PORTS: usize = 128;

// ----------------------------------------------------------------------------------------------
// memory_op (xen/include/public/memory.h)

/// `XENMEM_add_to_physmap`: `memory_op(XENMEM_add_to_physmap, &XenAddToPhysmap)`.
pub const XENMEM_ADD_TO_PHYSMAP: u64 = 7;
/// `XENMAPSPACE_shared_info`: map the shared info page (`idx` 0).
pub const XENMAPSPACE_SHARED_INFO: u32 = 0;
/// `XENMAPSPACE_grant_table`: map grant table frame `idx`.
pub const XENMAPSPACE_GRANT_TABLE: u32 = 1;

/// `struct xen_add_to_physmap` (xen/include/public/memory.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct XenAddToPhysmap {
    /// The domain whose physmap changes (`DOMID_SELF`).
    pub domid: DomId,
    /// Number of pages, for `XENMAPSPACE_gmfn_range` only.
    pub size: u16,
    /// A `XENMAPSPACE_*` value.
    pub space: u32,
    /// Index into the space (`xen_ulong_t`).
    pub idx: u64,
    /// Guest frame number at which the page appears (`xen_pfn_t`).
    pub gpfn: u64,
}

// ----------------------------------------------------------------------------------------------
// event_channel_op (xen/include/public/event_channel.h)

/// An event channel port (`evtchn_port_t`, xen/include/public/event_channel.h).
pub type EvtchnPort = u32;

/// `EVTCHNOP_bind_interdomain`.
pub const EVTCHNOP_BIND_INTERDOMAIN: u64 = 0;
/// `EVTCHNOP_close`.
pub const EVTCHNOP_CLOSE: u64 = 3;
/// `EVTCHNOP_send`.
pub const EVTCHNOP_SEND: u64 = 4;
/// `EVTCHNOP_status`.
pub const EVTCHNOP_STATUS: u64 = 5;
/// `EVTCHNOP_alloc_unbound`.
pub const EVTCHNOP_ALLOC_UNBOUND: u64 = 6;
/// `EVTCHNOP_unmask`.
pub const EVTCHNOP_UNMASK: u64 = 9;

/// `EVTCHNSTAT_closed`: the channel is not in use.
pub const EVTCHNSTAT_CLOSED: u32 = 0;
/// `EVTCHNSTAT_unbound`: waiting for the remote domain to bind.
pub const EVTCHNSTAT_UNBOUND: u32 = 1;
/// `EVTCHNSTAT_interdomain`: connected to a remote domain.
pub const EVTCHNSTAT_INTERDOMAIN: u32 = 2;
/// `EVTCHNSTAT_pirq`: bound to a physical IRQ.
pub const EVTCHNSTAT_PIRQ: u32 = 3;
/// `EVTCHNSTAT_virq`: bound to a virtual IRQ.
pub const EVTCHNSTAT_VIRQ: u32 = 4;
/// `EVTCHNSTAT_ipi`: bound to a virtual IPI.
pub const EVTCHNSTAT_IPI: u32 = 5;

/// `struct evtchn_alloc_unbound`: allocate a port that `remote_dom` may bind to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct EvtchnAllocUnbound {
    /// IN: the domain the port is allocated in (`DOMID_SELF`).
    pub dom: DomId,
    /// IN: the domain allowed to bind to it.
    pub remote_dom: DomId,
    /// OUT: the new port.
    pub port: EvtchnPort,
}

/// `struct evtchn_bind_interdomain`: connect to an unbound port of `remote_dom`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct EvtchnBindInterdomain {
    /// IN: the remote domain.
    pub remote_dom: DomId,
    /// IN: its unbound port.
    pub remote_port: EvtchnPort,
    /// OUT: our new local port.
    pub local_port: EvtchnPort,
}

/// `struct evtchn_send`, and equally `struct evtchn_unmask` and `struct evtchn_close`: one port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct EvtchnPortArg {
    /// IN: the port.
    pub port: EvtchnPort,
}

/// `struct evtchn_status`: what a port is bound to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct EvtchnStatus {
    /// IN: the domain (`DOMID_SELF`).
    pub dom: DomId,
    /// IN: the port.
    pub port: EvtchnPort,
    /// OUT: an `EVTCHNSTAT_*` value.
    pub status: u32,
    /// OUT: the vCPU the channel notifies.
    pub vcpu: u32,
    /// OUT: the union `u` as two 32-bit words (little endian): word 0 holds `unbound.dom` /
    /// `interdomain.dom` (low 16 bits), `pirq` or `virq`; word 1 holds `interdomain.port`.
    pub u: [u32; 2],
}

impl EvtchnStatus {
    /// `u.unbound.dom` / `u.interdomain.dom`.
    pub const fn remote_domain(&self) -> DomId {
        self.u[0] as DomId
    }

    /// `u.interdomain.port`.
    pub const fn remote_port(&self) -> EvtchnPort {
        self.u[1]
    }
}

// ----------------------------------------------------------------------------------------------
// grant_table_op (xen/include/public/grant_table.h)

/// A grant reference (`grant_ref_t`): an index into a domain's grant table.
pub type GrantRefNumber = u32;

/// `GNTTABOP_map_grant_ref`: map another domain's granted frame into our address space.
pub const GNTTABOP_MAP_GRANT_REF: u64 = 0;
/// `GNTTABOP_unmap_grant_ref`: undo a `GNTTABOP_map_grant_ref`.
pub const GNTTABOP_UNMAP_GRANT_REF: u64 = 1;
/// `GNTTABOP_copy`: copy between frames given by gfn or grant reference.
pub const GNTTABOP_COPY: u64 = 5;
/// `GNTTABOP_query_size`: current and maximum number of grant table frames.
pub const GNTTABOP_QUERY_SIZE: u64 = 6;

/// `GNTTAB_NR_RESERVED_ENTRIES`: refs 0..8 are reserved (console, xenstore, ...).
pub const GNTTAB_NR_RESERVED_ENTRIES: u32 = 8;

/// `GTF_invalid`: the entry grants nothing.
pub const GTF_INVALID: u16 = 0;
/// `GTF_permit_access`: `domid` may map / copy `frame`.
pub const GTF_PERMIT_ACCESS: u16 = 1;
/// `GTF_type_mask`: the type bits of `flags`.
pub const GTF_TYPE_MASK: u16 = 3;
/// `GTF_readonly`: the grantee may only read.
pub const GTF_READONLY: u16 = 1 << 2;
/// `GTF_reading`: Xen sets this while the grantee has the frame mapped or is copying from it.
pub const GTF_READING: u16 = 1 << 3;
/// `GTF_writing`: Xen sets this while the grantee has the frame mapped writable or writes it.
pub const GTF_WRITING: u16 = 1 << 4;

/// `GNTMAP_host_map`: map the frame for CPU access; on arm `host_addr` is the guest physical
/// address (page-aligned) where Xen puts it in our stage-2 tables.
pub const GNTMAP_HOST_MAP: u32 = 1 << 1;
/// `GNTMAP_readonly`: map read-only.
pub const GNTMAP_READONLY: u32 = 1 << 2;

/// `GNTCOPY_source_gref`: `source.u` is a grant reference of `source.domid`, not a gfn.
pub const GNTCOPY_SOURCE_GREF: u16 = 1 << 0;
/// `GNTCOPY_dest_gref`: `dest.u` is a grant reference of `dest.domid`, not a gfn.
pub const GNTCOPY_DEST_GREF: u16 = 1 << 1;

/// `GNTST_*` status codes (xen/include/public/grant_table.h), in `GNTTABOP_error_msgs` order.
pub mod gntst {
    /// `GNTST_okay`.
    pub const OKAY: i16 = 0;
    /// `GNTST_general_error`.
    pub const GENERAL_ERROR: i16 = -1;
    /// `GNTST_bad_domain`.
    pub const BAD_DOMAIN: i16 = -2;
    /// `GNTST_bad_gntref`.
    pub const BAD_GNTREF: i16 = -3;
    /// `GNTST_bad_handle`.
    pub const BAD_HANDLE: i16 = -4;
    /// `GNTST_bad_virt_addr`.
    pub const BAD_VIRT_ADDR: i16 = -5;
    /// `GNTST_bad_dev_addr`.
    pub const BAD_DEV_ADDR: i16 = -6;
    /// `GNTST_no_device_space`.
    pub const NO_DEVICE_SPACE: i16 = -7;
    /// `GNTST_permission_denied`.
    pub const PERMISSION_DENIED: i16 = -8;
    /// `GNTST_bad_page`.
    pub const BAD_PAGE: i16 = -9;
    /// `GNTST_bad_copy_arg`.
    pub const BAD_COPY_ARG: i16 = -10;
    /// `GNTST_address_too_big`.
    pub const ADDRESS_TOO_BIG: i16 = -11;
    /// `GNTST_eagain`.
    pub const EAGAIN: i16 = -12;
    /// `GNTST_no_space`.
    pub const NO_SPACE: i16 = -13;

    /// The name of a `GNTST_*` status, as in `GNTTABOP_error_msgs`.
    pub const fn message(status: i16) -> &'static str {
        match status {
            OKAY => "okay",
            GENERAL_ERROR => "undefined error",
            BAD_DOMAIN => "unrecognised domain id",
            BAD_GNTREF => "invalid grant reference",
            BAD_HANDLE => "invalid mapping handle",
            BAD_VIRT_ADDR => "invalid virtual address",
            BAD_DEV_ADDR => "invalid device address",
            NO_DEVICE_SPACE => "no spare translation slot in the I/O MMU",
            PERMISSION_DENIED => "permission denied",
            BAD_PAGE => "bad page",
            BAD_COPY_ARG => "copy arguments cross page boundary",
            ADDRESS_TOO_BIG => "page address size too large",
            EAGAIN => "operation not done; try again",
            NO_SPACE => "out of space",
            _ => "unknown status",
        }
    }
}

/// `struct grant_entry_v1`: one entry of a version 1 grant table, shared with Xen.
///
/// The guest writes `domid` and `frame`, then (after a barrier) `flags`; Xen sets and clears
/// `GTF_reading` / `GTF_writing` in `flags` while the grantee uses the frame.
#[derive(Debug, Default)]
#[repr(C)]
pub struct GrantEntryV1 {
    /// `GTF_*` type and flags.
    pub flags: AtomicU16,
    /// The domain being granted access.
    pub domid: AtomicU16,
    /// The granted guest frame number.
    pub frame: AtomicU32,
}

/// Entries of a version 1 grant table per 4 KiB frame.
pub const GRANT_ENTRIES_V1_PER_FRAME: usize = PAGE_SIZE / core::mem::size_of::<GrantEntryV1>();

/// `union { grant_ref_t ref; xen_pfn_t gmfn; }` of `struct gnttab_copy_ptr`, as one 64-bit word.
pub type GnttabCopyPtrUnion = u64;

/// `struct gnttab_copy_ptr` (inside `struct gnttab_copy`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct GnttabCopyPtr {
    /// A grant reference (with `GNTCOPY_*_gref`) or a gfn of the calling domain.
    pub u: GnttabCopyPtrUnion,
    /// The domain the reference or frame belongs to.
    pub domid: DomId,
    /// Byte offset into the frame.
    pub offset: u16,
}

/// `struct gnttab_copy`: one copy of up to a page; `len + offset` must stay within the frame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct GnttabCopy {
    /// IN: where to copy from.
    pub source: GnttabCopyPtr,
    /// IN: where to copy to.
    pub dest: GnttabCopyPtr,
    /// IN: number of bytes.
    pub len: u16,
    /// IN: `GNTCOPY_*`.
    pub flags: u16,
    /// OUT: a `GNTST_*` value.
    pub status: i16,
}

/// `struct gnttab_map_grant_ref` (32 bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct GnttabMapGrantRef {
    /// IN: where to map (with `GNTMAP_host_map` on arm: a guest physical address of ours).
    pub host_addr: u64,
    /// IN: `GNTMAP_*`.
    pub flags: u32,
    /// IN: the granting domain's reference.
    pub r#ref: GrantRefNumber,
    /// IN: the granting domain.
    pub dom: DomId,
    /// OUT: a `GNTST_*` value.
    pub status: i16,
    /// OUT: the handle to unmap with.
    pub handle: u32,
    /// OUT: the bus address (unused without an IOMMU).
    pub dev_bus_addr: u64,
}

/// `struct gnttab_unmap_grant_ref` (24 bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct GnttabUnmapGrantRef {
    /// IN: the address given to the map.
    pub host_addr: u64,
    /// IN: the bus address (0).
    pub dev_bus_addr: u64,
    /// IN: the handle the map returned.
    pub handle: u32,
    /// OUT: a `GNTST_*` value.
    pub status: i16,
}

/// `struct gnttab_query_size`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct GnttabQuerySize {
    /// IN: the domain (`DOMID_SELF`).
    pub dom: DomId,
    /// OUT: current number of grant table frames.
    pub nr_frames: u32,
    /// OUT: the most frames the table may grow to.
    pub max_nr_frames: u32,
    /// OUT: a `GNTST_*` value.
    pub status: i16,
}

// ----------------------------------------------------------------------------------------------
// shared_info (xen/include/public/xen.h, arch-arm.h)

/// `struct vcpu_time_info` (xen/include/public/xen.h), 32 bytes; Xen on arm does not maintain it.
#[derive(Debug)]
#[repr(C)]
pub struct VcpuTimeInfo {
    /// `version`, `pad0`, `tsc_timestamp`, `system_time`, `tsc_to_system_mul`, `tsc_shift`,
    /// `flags`, `pad1`: unused by Ferry, kept as raw words.
    pub words: [AtomicU64; 4],
}

impl VcpuTimeInfo {
    /// All zero.
    pub const fn zeroed() -> Self {
        Self {
            words: [const { AtomicU64::new(0) }; 4],
        }
    }
}

/// `struct vcpu_info` (xen/include/public/xen.h) on arm64: 48 bytes.
///
/// arm has no `XEN_HAVE_PV_UPCALL_MASK`, so the second byte is padding (the upcall is masked
/// at the GIC and with PSTATE.I instead), and `struct arch_vcpu_info` is empty.
#[derive(Debug)]
#[repr(C)]
pub struct VcpuInfo {
    /// Set by Xen when an event is pending for this vCPU; cleared by the guest *before* it
    /// scans the selector, "thus avoiding a set-and-check race" (xen.h).
    pub evtchn_upcall_pending: AtomicU8,
    /// `pad0` on arm.
    pub pad0: AtomicU8,
    /// One bit per word of `evtchn_pending` that has a newly pending, unmasked port.
    pub evtchn_pending_sel: AtomicU64,
    /// Time information; not updated by Xen on arm.
    pub time: VcpuTimeInfo,
}

impl VcpuInfo {
    /// All zero.
    pub const fn zeroed() -> Self {
        Self {
            evtchn_upcall_pending: AtomicU8::new(0),
            pad0: AtomicU8::new(0),
            evtchn_pending_sel: AtomicU64::new(0),
            time: VcpuTimeInfo::zeroed(),
        }
    }
}

/// Number of 64-bit words in `evtchn_pending` / `evtchn_mask`: `sizeof(xen_ulong_t) * 8`.
pub const EVTCHN_WORDS: usize = 64;
/// Number of ports of the 2-level event channel ABI: 64 words of 64 bits.
pub const EVTCHN_2L_NR_CHANNELS: usize = EVTCHN_WORDS * 64;

/// `struct shared_info` (xen/include/public/xen.h) on arm64.
///
/// Xen writes it concurrently with us (from other physical CPUs), so every field is atomic.
#[derive(Debug)]
#[repr(C)]
pub struct SharedInfo {
    /// `vcpu_info[XEN_LEGACY_MAX_VCPUS]`, and `XEN_LEGACY_MAX_VCPUS` is 1 on arm.
    pub vcpu_info: [VcpuInfo; 1],
    /// PENDING bits, one per port: set by Xen, cleared by the guest.
    pub evtchn_pending: [AtomicU64; EVTCHN_WORDS],
    /// MASK bits, one per port: written by the guest only; a masked port raises no upcall.
    pub evtchn_mask: [AtomicU64; EVTCHN_WORDS],
    /// `wc_version`, `wc_sec`, `wc_nsec`, `wc_sec_hi` (wall clock; unused).
    pub wallclock: [AtomicU32; 4],
    // `struct arch_shared_info` is empty on arm.
}

impl SharedInfo {
    /// All zero (what our page holds before Xen's shared info page replaces it).
    pub const fn zeroed() -> Self {
        Self {
            vcpu_info: [VcpuInfo::zeroed()],
            evtchn_pending: [const { AtomicU64::new(0) }; EVTCHN_WORDS],
            evtchn_mask: [const { AtomicU64::new(0) }; EVTCHN_WORDS],
            wallclock: [const { AtomicU32::new(0) }; 4],
        }
    }
}

// ----------------------------------------------------------------------------------------------
// XENMEM_acquire_resource (xen/include/public/memory.h)

/// `XENMEM_acquire_resource`: `memory_op(XENMEM_acquire_resource, &XenMemAcquireResource)`.
pub const XENMEM_ACQUIRE_RESOURCE: u64 = 28;
/// `XENMEM_resource_ioreq_server`: the pages of an ioreq server (`id` = server id).
pub const XENMEM_RESOURCE_IOREQ_SERVER: u16 = 0;
/// `XENMEM_resource_ioreq_server_frame_ioreq(0)`: the first synchronous ioreq page (frame 0
/// is the buffered-ioreq page, which a server created with `handle_bufioreq = 0` has not).
pub const XENMEM_RESOURCE_IOREQ_SERVER_FRAME_IOREQ0: u64 = 1;

/// `struct xen_mem_acquire_resource` (xen/include/public/memory.h), 32 bytes.
///
/// On arm the caller is auto-translated: `frame_list` points to `nr_frames` gfns of the
/// *caller* at which Xen maps the resource's pages (an input; `set_foreign_p2m_entry`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct XenMemAcquireResource {
    /// IN: the domain whose resource is mapped.
    pub domid: DomId,
    /// IN: a `XENMEM_resource_*` type.
    pub r#type: u16,
    /// IN: type-specific id (the ioreq server id).
    pub id: u32,
    /// IN: number of frames (and of gfns in `frame_list`).
    pub nr_frames: u32,
    /// OUT: `XENMEM_rsrc_acq_caller_owned` (never set for ioreq pages).
    pub flags: u32,
    /// IN: index of the first frame of the resource.
    pub frame: u64,
    /// IN: guest address of an array of `nr_frames` `xen_pfn_t` (`XEN_GUEST_HANDLE`).
    pub frame_list: u64,
}

// ----------------------------------------------------------------------------------------------
// dm_op (xen/include/public/hvm/dm_op.h)

/// An ioreq server id (`ioservid_t`, xen/include/public/hvm/dm_op.h).
pub type IoServId = u16;

/// `XEN_DMOP_create_ioreq_server`.
pub const XEN_DMOP_CREATE_IOREQ_SERVER: u32 = 1;
/// `XEN_DMOP_get_ioreq_server_info`.
pub const XEN_DMOP_GET_IOREQ_SERVER_INFO: u32 = 2;
/// `XEN_DMOP_map_io_range_to_ioreq_server`.
pub const XEN_DMOP_MAP_IO_RANGE_TO_IOREQ_SERVER: u32 = 3;
/// `XEN_DMOP_set_ioreq_server_state`.
pub const XEN_DMOP_SET_IOREQ_SERVER_STATE: u32 = 5;
/// `XEN_DMOP_set_irq_level`: assert or deassert an SPI of the target (arm).
pub const XEN_DMOP_SET_IRQ_LEVEL: u32 = 19;
/// `XEN_DMOP_nr_vcpus`: the target's vCPU count (= number of ioreq slots).
pub const XEN_DMOP_NR_VCPUS: u32 = 20;

/// `HVM_IOREQSRV_BUFIOREQ_OFF` (xen/include/public/hvm/hvm_op.h): no buffered ioreq page.
pub const HVM_IOREQSRV_BUFIOREQ_OFF: u8 = 0;
/// `XEN_DMOP_no_gfns`: do not map the ioreq pages into the target (the only way on arm).
pub const XEN_DMOP_NO_GFNS: u16 = 1 << 0;
/// `XEN_DMOP_IO_RANGE_MEMORY`: an MMIO range.
pub const XEN_DMOP_IO_RANGE_MEMORY: u32 = 1;

/// `struct xen_dm_op`: the op number, padding, then the op's member of the union `u` at offset
/// 8. Generic over the member so each call passes exactly one type; Xen reads and writes
/// `8 + sizeof(member)` bytes (`op_size[]` in xen/arch/arm/dm.c), which `size_of::<DmOp<T>>()`
/// covers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct DmOp<T> {
    /// A `XEN_DMOP_*` number.
    pub op: u32,
    /// `pad`.
    pub pad: u32,
    /// The member of `u` that `op` uses.
    pub u: T,
}

/// `struct xen_dm_op_buf`: one buffer of a `dm_op` call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct DmOpBuf {
    /// Guest address of the buffer (`XEN_GUEST_HANDLE(void)`).
    pub handle: u64,
    /// Its size in bytes (`xen_ulong_t`).
    pub size: u64,
}

/// `struct xen_dm_op_create_ioreq_server`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct DmOpCreateIoreqServer {
    /// IN: `HVM_IOREQSRV_BUFIOREQ_*`.
    pub handle_bufioreq: u8,
    /// `pad[3]`.
    pub pad: [u8; 3],
    /// OUT: the server id.
    pub id: IoServId,
}

/// `struct xen_dm_op_get_ioreq_server_info`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct DmOpGetIoreqServerInfo {
    /// IN: the server.
    pub id: IoServId,
    /// IN: `XEN_DMOP_no_gfns`.
    pub flags: u16,
    /// OUT: buffered ioreq event channel (none here).
    pub bufioreq_port: EvtchnPort,
    /// OUT: gfn of the ioreq page (not with `XEN_DMOP_no_gfns`).
    pub ioreq_gfn: u64,
    /// OUT: gfn of the buffered ioreq page.
    pub bufioreq_gfn: u64,
}

/// `struct xen_dm_op_ioreq_server_range` (`map_io_range_to_ioreq_server`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct DmOpIoreqServerRange {
    /// IN: the server.
    pub id: IoServId,
    /// `pad`.
    pub pad: u16,
    /// IN: `XEN_DMOP_IO_RANGE_*`.
    pub r#type: u32,
    /// IN: first address.
    pub start: u64,
    /// IN: last address (inclusive).
    pub end: u64,
}

/// `struct xen_dm_op_set_ioreq_server_state`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct DmOpSetIoreqServerState {
    /// IN: the server.
    pub id: IoServId,
    /// IN: 1 enabled, 0 disabled.
    pub enabled: u8,
    /// `pad`.
    pub pad: u8,
}

/// `struct xen_dm_op_set_irq_level`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct DmOpSetIrqLevel {
    /// IN: the interrupt (GIC INTID; SPIs only).
    pub irq: u32,
    /// IN: 1 asserted, 0 deasserted.
    pub level: u8,
    /// `pad[3]`.
    pub pad: [u8; 3],
}

/// `struct xen_dm_op_nr_vcpus`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct DmOpNrVcpus {
    /// OUT: number of vCPUs.
    pub vcpus: u32,
}

// ----------------------------------------------------------------------------------------------
// ioreq (xen/include/public/hvm/ioreq.h)

/// `IOREQ_READ` (the `dir` bit).
pub const IOREQ_READ: u8 = 1;
/// `IOREQ_WRITE`.
pub const IOREQ_WRITE: u8 = 0;
/// `STATE_IOREQ_NONE`: the slot is free.
pub const STATE_IOREQ_NONE: u8 = 0;
/// `STATE_IOREQ_READY`: Xen posted a request.
pub const STATE_IOREQ_READY: u8 = 1;
/// `STATE_IOREQ_INPROCESS`: the device model took it (optional, Ferry skips it).
pub const STATE_IOREQ_INPROCESS: u8 = 2;
/// `STATE_IORESP_READY`: the device model answered.
pub const STATE_IORESP_READY: u8 = 3;
/// `IOREQ_TYPE_PIO`: port I/O (x86).
pub const IOREQ_TYPE_PIO: u8 = 0;
/// `IOREQ_TYPE_COPY`: an MMIO access.
pub const IOREQ_TYPE_COPY: u8 = 1;
/// `IOREQ_TYPE_PCI_CONFIG`.
pub const IOREQ_TYPE_PCI_CONFIG: u8 = 2;
/// `IOREQ_TYPE_TIMEOFFSET` (x86).
pub const IOREQ_TYPE_TIMEOFFSET: u8 = 7;
/// `IOREQ_TYPE_INVALIDATE`: the target changed its p2m; drop any map cache.
pub const IOREQ_TYPE_INVALIDATE: u8 = 8;

/// `struct ioreq` (xen/include/public/hvm/ioreq.h), 32 bytes: one slot per target vCPU in the
/// synchronous ioreq page (`struct shared_iopage`).
///
/// Xen writes the request while the state is NONE and the device model writes the answer while
/// it is READY, from other physical CPUs: every field is atomic. Byte 30 holds the bitfields
/// `state:4, data_is_ptr:1, dir:1, df:1, _pad1:1` (GCC allocates bitfields from bit 0 on
/// little-endian arm64).
#[derive(Debug, Default)]
#[repr(C)]
pub struct Ioreq {
    /// Guest physical address of the access.
    pub addr: AtomicU64,
    /// Written value, or where the device model puts the read value.
    pub data: AtomicU64,
    /// Repetitions (x86 `rep`); 1 on arm.
    pub count: AtomicU32,
    /// Access size in bytes.
    pub size: AtomicU32,
    /// The target's end of the event channel for this vCPU (unbound; the device model binds).
    pub vp_eport: AtomicU32,
    /// `_pad0`.
    pub pad0: AtomicU16,
    /// `state:4, data_is_ptr:1, dir:1, df:1, _pad1:1`.
    pub flags: AtomicU8,
    /// An `IOREQ_TYPE_*`.
    pub r#type: AtomicU8,
}

/// Mask of `state` in [`Ioreq::flags`].
pub const IOREQ_STATE_MASK: u8 = 0x0f;
/// `data_is_ptr` in [`Ioreq::flags`].
pub const IOREQ_DATA_IS_PTR: u8 = 1 << 4;
/// `dir` in [`Ioreq::flags`].
pub const IOREQ_DIR: u8 = 1 << 5;
/// `df` in [`Ioreq::flags`].
pub const IOREQ_DF: u8 = 1 << 6;

/// Slots of the synchronous ioreq page: one 4 KiB page of 32-byte `struct ioreq`.
pub const IOREQ_SLOTS_PER_PAGE: usize = PAGE_SIZE / core::mem::size_of::<Ioreq>();

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, offset_of, size_of};

    #[test]
    fn sched_shutdown_is_one_unsigned_int() {
        assert_eq!(size_of::<SchedShutdown>(), 4);
        assert_eq!(align_of::<SchedShutdown>(), 4);
    }

    #[test]
    fn shutdown_reasons_match_sched_h() {
        assert_eq!(SchedShutdown::new(ShutdownReason::Poweroff).reason, 0);
        assert_eq!(SchedShutdown::new(ShutdownReason::Reboot).reason, 1);
        assert_eq!(SchedShutdown::new(ShutdownReason::Crash).reason, 3);
    }

    #[test]
    fn sched_poll_layout() {
        assert_eq!(offset_of!(SchedPoll, ports), 0);
        assert_eq!(offset_of!(SchedPoll, nr_ports), 8);
        assert_eq!(offset_of!(SchedPoll, timeout), 16);
        assert_eq!(size_of::<SchedPoll>(), 24);
    }

    #[test]
    fn add_to_physmap_layout() {
        assert_eq!(offset_of!(XenAddToPhysmap, domid), 0);
        assert_eq!(offset_of!(XenAddToPhysmap, size), 2);
        assert_eq!(offset_of!(XenAddToPhysmap, space), 4);
        assert_eq!(offset_of!(XenAddToPhysmap, idx), 8);
        assert_eq!(offset_of!(XenAddToPhysmap, gpfn), 16);
        assert_eq!(size_of::<XenAddToPhysmap>(), 24);
    }

    #[test]
    fn event_channel_layouts() {
        assert_eq!(offset_of!(EvtchnAllocUnbound, dom), 0);
        assert_eq!(offset_of!(EvtchnAllocUnbound, remote_dom), 2);
        assert_eq!(offset_of!(EvtchnAllocUnbound, port), 4);
        assert_eq!(size_of::<EvtchnAllocUnbound>(), 8);

        assert_eq!(offset_of!(EvtchnBindInterdomain, remote_dom), 0);
        assert_eq!(offset_of!(EvtchnBindInterdomain, remote_port), 4);
        assert_eq!(offset_of!(EvtchnBindInterdomain, local_port), 8);
        assert_eq!(size_of::<EvtchnBindInterdomain>(), 12);

        assert_eq!(size_of::<EvtchnPortArg>(), 4);

        assert_eq!(offset_of!(EvtchnStatus, dom), 0);
        assert_eq!(offset_of!(EvtchnStatus, port), 4);
        assert_eq!(offset_of!(EvtchnStatus, status), 8);
        assert_eq!(offset_of!(EvtchnStatus, vcpu), 12);
        assert_eq!(offset_of!(EvtchnStatus, u), 16);
        assert_eq!(size_of::<EvtchnStatus>(), 24);
    }

    #[test]
    fn grant_table_layouts() {
        assert_eq!(offset_of!(GrantEntryV1, flags), 0);
        assert_eq!(offset_of!(GrantEntryV1, domid), 2);
        assert_eq!(offset_of!(GrantEntryV1, frame), 4);
        assert_eq!(size_of::<GrantEntryV1>(), 8);
        assert_eq!(GRANT_ENTRIES_V1_PER_FRAME, 512);

        assert_eq!(offset_of!(GnttabCopyPtr, u), 0);
        assert_eq!(offset_of!(GnttabCopyPtr, domid), 8);
        assert_eq!(offset_of!(GnttabCopyPtr, offset), 10);
        assert_eq!(size_of::<GnttabCopyPtr>(), 16);
        assert_eq!(offset_of!(GnttabCopy, source), 0);
        assert_eq!(offset_of!(GnttabCopy, dest), 16);
        assert_eq!(offset_of!(GnttabCopy, len), 32);
        assert_eq!(offset_of!(GnttabCopy, flags), 34);
        assert_eq!(offset_of!(GnttabCopy, status), 36);
        assert_eq!(size_of::<GnttabCopy>(), 40);
        assert_eq!(align_of::<GnttabCopy>(), 8);

        assert_eq!(offset_of!(GnttabMapGrantRef, host_addr), 0);
        assert_eq!(offset_of!(GnttabMapGrantRef, flags), 8);
        assert_eq!(offset_of!(GnttabMapGrantRef, r#ref), 12);
        assert_eq!(offset_of!(GnttabMapGrantRef, dom), 16);
        assert_eq!(offset_of!(GnttabMapGrantRef, status), 18);
        assert_eq!(offset_of!(GnttabMapGrantRef, handle), 20);
        assert_eq!(offset_of!(GnttabMapGrantRef, dev_bus_addr), 24);
        assert_eq!(size_of::<GnttabMapGrantRef>(), 32);
        assert_eq!(offset_of!(GnttabUnmapGrantRef, host_addr), 0);
        assert_eq!(offset_of!(GnttabUnmapGrantRef, dev_bus_addr), 8);
        assert_eq!(offset_of!(GnttabUnmapGrantRef, handle), 16);
        assert_eq!(offset_of!(GnttabUnmapGrantRef, status), 20);
        assert_eq!(size_of::<GnttabUnmapGrantRef>(), 24);

        assert_eq!(offset_of!(GnttabQuerySize, dom), 0);
        assert_eq!(offset_of!(GnttabQuerySize, nr_frames), 4);
        assert_eq!(offset_of!(GnttabQuerySize, max_nr_frames), 8);
        assert_eq!(offset_of!(GnttabQuerySize, status), 12);
        assert_eq!(size_of::<GnttabQuerySize>(), 16);
    }

    #[test]
    fn shared_info_layout_on_arm64() {
        assert_eq!(size_of::<VcpuTimeInfo>(), 32);
        assert_eq!(offset_of!(VcpuInfo, evtchn_upcall_pending), 0);
        assert_eq!(offset_of!(VcpuInfo, evtchn_pending_sel), 8);
        assert_eq!(offset_of!(VcpuInfo, time), 16);
        assert_eq!(size_of::<VcpuInfo>(), 48);

        assert_eq!(offset_of!(SharedInfo, vcpu_info), 0);
        assert_eq!(offset_of!(SharedInfo, evtchn_pending), 48);
        assert_eq!(offset_of!(SharedInfo, evtchn_mask), 48 + 512);
        assert_eq!(offset_of!(SharedInfo, wallclock), 48 + 1024);
        assert_eq!(size_of::<SharedInfo>(), 1088);
        assert!(size_of::<SharedInfo>() <= PAGE_SIZE);
        assert_eq!(EVTCHN_2L_NR_CHANNELS, 4096);
    }

    #[test]
    fn grant_status_messages() {
        assert_eq!(
            gntst::message(gntst::PERMISSION_DENIED),
            "permission denied"
        );
        assert_eq!(gntst::message(-100), "unknown status");
    }

    #[test]
    fn acquire_resource_layout() {
        assert_eq!(offset_of!(XenMemAcquireResource, domid), 0);
        assert_eq!(offset_of!(XenMemAcquireResource, r#type), 2);
        assert_eq!(offset_of!(XenMemAcquireResource, id), 4);
        assert_eq!(offset_of!(XenMemAcquireResource, nr_frames), 8);
        assert_eq!(offset_of!(XenMemAcquireResource, flags), 12);
        assert_eq!(offset_of!(XenMemAcquireResource, frame), 16);
        assert_eq!(offset_of!(XenMemAcquireResource, frame_list), 24);
        assert_eq!(size_of::<XenMemAcquireResource>(), 32);
    }

    #[test]
    fn dm_op_layouts() {
        assert_eq!(size_of::<DmOpBuf>(), 16);
        assert_eq!(offset_of!(DmOp<DmOpNrVcpus>, u), 8);
        assert_eq!(offset_of!(DmOp<DmOpGetIoreqServerInfo>, u), 8);

        assert_eq!(offset_of!(DmOpCreateIoreqServer, handle_bufioreq), 0);
        assert_eq!(offset_of!(DmOpCreateIoreqServer, id), 4);
        assert_eq!(size_of::<DmOpCreateIoreqServer>(), 6);

        assert_eq!(offset_of!(DmOpGetIoreqServerInfo, flags), 2);
        assert_eq!(offset_of!(DmOpGetIoreqServerInfo, bufioreq_port), 4);
        assert_eq!(offset_of!(DmOpGetIoreqServerInfo, ioreq_gfn), 8);
        assert_eq!(offset_of!(DmOpGetIoreqServerInfo, bufioreq_gfn), 16);
        assert_eq!(size_of::<DmOpGetIoreqServerInfo>(), 24);

        assert_eq!(offset_of!(DmOpIoreqServerRange, r#type), 4);
        assert_eq!(offset_of!(DmOpIoreqServerRange, start), 8);
        assert_eq!(offset_of!(DmOpIoreqServerRange, end), 16);
        assert_eq!(size_of::<DmOpIoreqServerRange>(), 24);

        assert_eq!(offset_of!(DmOpSetIoreqServerState, enabled), 2);
        assert_eq!(size_of::<DmOpSetIoreqServerState>(), 4);

        assert_eq!(offset_of!(DmOpSetIrqLevel, level), 4);
        assert_eq!(size_of::<DmOpSetIrqLevel>(), 8);
        assert_eq!(size_of::<DmOpNrVcpus>(), 4);
        // Xen needs buf.size >= 8 + sizeof(member).
        assert!(size_of::<DmOp<DmOpCreateIoreqServer>>() >= 8 + 6);
    }

    #[test]
    fn ioreq_layout() {
        assert_eq!(offset_of!(Ioreq, addr), 0);
        assert_eq!(offset_of!(Ioreq, data), 8);
        assert_eq!(offset_of!(Ioreq, count), 16);
        assert_eq!(offset_of!(Ioreq, size), 20);
        assert_eq!(offset_of!(Ioreq, vp_eport), 24);
        assert_eq!(offset_of!(Ioreq, pad0), 28);
        assert_eq!(offset_of!(Ioreq, flags), 30);
        assert_eq!(offset_of!(Ioreq, r#type), 31);
        assert_eq!(size_of::<Ioreq>(), 32);
        assert_eq!(IOREQ_SLOTS_PER_PAGE, 128);
    }
}
