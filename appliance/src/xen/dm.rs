//! Device-model operations on our target domain: `HYPERVISOR_dm_op` (xen/include/public/hvm/
//! dm_op.h) and the ioreq page through `XENMEM_acquire_resource` (xen/include/public/memory.h).
//!
//! Xen allows these calls on domain T only to a domain whose `target` is T (`XSM_DM_PRIV`,
//! xen/include/xsm/dummy.h); Ferry's Xen sets `target` from the dom0less property
//! `xen,device-model-for` (patch 0002). Without it every call fails with `EPERM`.
//! The sequence that uses them is in [`super::ioreq`] and docs/transport-mmio-ioreq.md section 4.
//!
//! This module only wraps the calls; it keeps no state.

/// An ioreq server of our target domain (`ioservid_t`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoreqServerId(pub u16);

impl core::fmt::Display for IoreqServerId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "ioreq server {}", self.0)
    }
}

/// The inclusive `(start, end)` of an MMIO range of `size` bytes at `base`, as
/// `XEN_DMOP_map_io_range_to_ioreq_server` takes it; `None` for an empty or wrapping range.
pub const fn inclusive_range(base: u64, size: u64) -> Option<(u64, u64)> {
    if size == 0 {
        return None;
    }
    match base.checked_add(size - 1) {
        Some(end) => Some((base, end)),
        None => None,
    }
}

#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub use self::xen_calls::*;

#[cfg(all(target_arch = "aarch64", target_os = "none"))]
mod xen_calls {
    use super::super::abi::DomId;
    use super::super::abi::{
        DmOp, DmOpCreateIoreqServer, DmOpGetIoreqServerInfo, DmOpIoreqServerRange, DmOpNrVcpus,
        DmOpSetIoreqServerState, DmOpSetIrqLevel, XenMemAcquireResource, HVM_IOREQSRV_BUFIOREQ_OFF,
        XENMEM_RESOURCE_IOREQ_SERVER, XENMEM_RESOURCE_IOREQ_SERVER_FRAME_IOREQ0,
        XEN_DMOP_CREATE_IOREQ_SERVER, XEN_DMOP_GET_IOREQ_SERVER_INFO, XEN_DMOP_IO_RANGE_MEMORY,
        XEN_DMOP_MAP_IO_RANGE_TO_IOREQ_SERVER, XEN_DMOP_NO_GFNS, XEN_DMOP_NR_VCPUS,
        XEN_DMOP_SET_IOREQ_SERVER_STATE, XEN_DMOP_SET_IRQ_LEVEL,
    };
    use super::super::hypercall;
    use super::super::HypercallError;
    use super::*;

    /// Issues `dm_op` on `target` with `u` as the member of op `op`; returns `u` as Xen left it.
    ///
    /// # Safety
    ///
    /// `T` must be the union member of `xen_dm_op` that `op` uses.
    unsafe fn call<T: Copy>(
        name: &'static str,
        target: DomId,
        op: u32,
        u: T,
    ) -> Result<T, HypercallError> {
        let mut operation = DmOp { op, pad: 0, u };
        // SAFETY: the caller matches `T` to `op`.
        let result = unsafe { hypercall::dm_op(target, &mut operation) };
        HypercallError::check(name, result)?;
        Ok(operation.u)
    }

    /// `XEN_DMOP_nr_vcpus`: how many vCPUs `target` has (one ioreq slot each).
    pub fn nr_vcpus(target: DomId) -> Result<u32, HypercallError> {
        // SAFETY: XEN_DMOP_nr_vcpus uses `struct xen_dm_op_nr_vcpus`.
        let out = unsafe {
            call(
                "XEN_DMOP_nr_vcpus",
                target,
                XEN_DMOP_NR_VCPUS,
                DmOpNrVcpus::default(),
            )
        }?;
        Ok(out.vcpus)
    }

    /// `XEN_DMOP_create_ioreq_server` without buffered ioreqs (arm never sends them for MMIO).
    pub fn create_ioreq_server(target: DomId) -> Result<IoreqServerId, HypercallError> {
        let input = DmOpCreateIoreqServer {
            handle_bufioreq: HVM_IOREQSRV_BUFIOREQ_OFF,
            ..DmOpCreateIoreqServer::default()
        };
        // SAFETY: XEN_DMOP_create_ioreq_server uses `struct xen_dm_op_create_ioreq_server`.
        let out = unsafe {
            call(
                "XEN_DMOP_create_ioreq_server",
                target,
                XEN_DMOP_CREATE_IOREQ_SERVER,
                input,
            )
        }?;
        Ok(IoreqServerId(out.id))
    }

    /// `XEN_DMOP_get_ioreq_server_info` with `XEN_DMOP_no_gfns`: checks that the server exists
    /// (on arm the pages are reached only with [`acquire_ioreq_page`]).
    pub fn check_ioreq_server(target: DomId, id: IoreqServerId) -> Result<(), HypercallError> {
        let input = DmOpGetIoreqServerInfo {
            id: id.0,
            flags: XEN_DMOP_NO_GFNS,
            ..DmOpGetIoreqServerInfo::default()
        };
        // SAFETY: XEN_DMOP_get_ioreq_server_info uses `struct
        // xen_dm_op_get_ioreq_server_info`.
        unsafe {
            call(
                "XEN_DMOP_get_ioreq_server_info",
                target,
                XEN_DMOP_GET_IOREQ_SERVER_INFO,
                input,
            )
        }
        .map(drop)
    }

    /// `XENMEM_acquire_resource`: maps the synchronous ioreq page of server `id` at our guest
    /// frame `gfn`.
    ///
    /// # Safety
    ///
    /// Whatever is at `gfn` is replaced by Xen's page: it must be a frame nothing of ours uses
    /// (an unused hole in our guest physical address space).
    pub unsafe fn acquire_ioreq_page(
        target: DomId,
        id: IoreqServerId,
        gfn: u64,
    ) -> Result<(), HypercallError> {
        let frames = [gfn];
        let mut argument = XenMemAcquireResource {
            domid: target,
            r#type: XENMEM_RESOURCE_IOREQ_SERVER,
            id: u32::from(id.0),
            nr_frames: 1,
            flags: 0,
            frame: XENMEM_RESOURCE_IOREQ_SERVER_FRAME_IOREQ0,
            frame_list: frames.as_ptr() as u64,
        };
        // SAFETY: `frame_list` points to `frames`, one gfn, alive for the call; the caller
        // vouches for the frame.
        let result = unsafe { hypercall::acquire_resource(&mut argument) };
        HypercallError::check("XENMEM_acquire_resource(ioreq_server)", result).map(drop)
    }

    /// `XEN_DMOP_map_io_range_to_ioreq_server`: Xen forwards `target`'s accesses to the MMIO
    /// range `[start, end]` (inclusive, see [`inclusive_range`]) to server `id`.
    pub fn map_mmio_range(
        target: DomId,
        id: IoreqServerId,
        start: u64,
        end: u64,
    ) -> Result<(), HypercallError> {
        let input = DmOpIoreqServerRange {
            id: id.0,
            pad: 0,
            r#type: XEN_DMOP_IO_RANGE_MEMORY,
            start,
            end,
        };
        // SAFETY: XEN_DMOP_map_io_range_to_ioreq_server uses `struct
        // xen_dm_op_ioreq_server_range`.
        unsafe {
            call(
                "XEN_DMOP_map_io_range_to_ioreq_server",
                target,
                XEN_DMOP_MAP_IO_RANGE_TO_IOREQ_SERVER,
                input,
            )
        }
        .map(drop)
    }

    /// `XEN_DMOP_set_ioreq_server_state`. Enabling makes the ranges live and, with Ferry's
    /// patch 0003, releases the frontend that Xen held paused for us.
    pub fn set_ioreq_server_state(
        target: DomId,
        id: IoreqServerId,
        enabled: bool,
    ) -> Result<(), HypercallError> {
        let input = DmOpSetIoreqServerState {
            id: id.0,
            enabled: u8::from(enabled),
            pad: 0,
        };
        // SAFETY: XEN_DMOP_set_ioreq_server_state uses `struct
        // xen_dm_op_set_ioreq_server_state`.
        unsafe {
            call(
                "XEN_DMOP_set_ioreq_server_state",
                target,
                XEN_DMOP_SET_IOREQ_SERVER_STATE,
                input,
            )
        }
        .map(drop)
    }

    /// `XEN_DMOP_set_irq_level`: asserts or deasserts SPI `intid` of `target`. Xen refuses
    /// INTIDs routed to a physical interrupt (xen/arch/arm/dm.c).
    pub fn set_irq_level(target: DomId, intid: u32, level: bool) -> Result<(), HypercallError> {
        let input = DmOpSetIrqLevel {
            irq: intid,
            level: u8::from(level),
            pad: [0; 3],
        };
        // SAFETY: XEN_DMOP_set_irq_level uses `struct xen_dm_op_set_irq_level`.
        unsafe {
            call(
                "XEN_DMOP_set_irq_level",
                target,
                XEN_DMOP_SET_IRQ_LEVEL,
                input,
            )
        }
        .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_inclusive() {
        assert_eq!(
            inclusive_range(0x200_0000, 0x200),
            Some((0x200_0000, 0x200_01ff))
        );
        assert_eq!(inclusive_range(0x200_0000, 0), None);
        assert_eq!(inclusive_range(u64::MAX, 2), None);
        assert_eq!(inclusive_range(u64::MAX, 1), Some((u64::MAX, u64::MAX)));
    }
}
