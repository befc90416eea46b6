//! The device-model side of Xen's IOREQ protocol (xen/include/public/hvm/ioreq.h): the
//! synchronous ioreq page, one 32-byte [`Ioreq`] slot per frontend vCPU, and its event
//! channels.
//!
//! Protocol per slot (xen/common/ioreq.c `ioreq_send`, xen/arch/arm/ioreq.c `handle_ioserv`):
//! Xen fills the slot, write barrier, sets `state = STATE_IOREQ_READY` and notifies the slot's
//! event channel. The device model reads the state (acquire), then the request; for a read it
//! stores the value, zero-extended to the access size, in `data`; write barrier; sets
//! `state = STATE_IORESP_READY`; notifies. Xen then sets the slot back to NONE. The device model
//! writes nothing else, ever: any other transition makes Xen crash the frontend ("Weird HVM
//! ioreq state transition"). Writes need the response too: the frontend vCPU waits for it.
//!
//! [`IoreqServer::start`] runs the start-up sequence of docs/transport-mmio-ioreq.md section 4:
//! create the server (no buffered ioreqs), check it, acquire its ioreq page at a frame of ours,
//! map the MMIO ranges, enable it (which releases the frontend, patch 0003), bind one event
//! channel per frontend vCPU. The caller must look at every slot once before it first waits:
//! a request posted between enabling and binding raised no event for us.
//!
//! The pure parts (decoding a slot, answering it, choosing the frame) exist on every target and
//! are tested on the host.

use core::sync::atomic::{fence, Ordering};

use super::abi::{
    Ioreq, IOREQ_DATA_IS_PTR, IOREQ_DIR, IOREQ_STATE_MASK, IOREQ_TYPE_COPY, IOREQ_TYPE_INVALIDATE,
    PAGE_SIZE, STATE_IOREQ_READY, STATE_IORESP_READY,
};
use crate::platform::Region;

/// One request as Xen posted it in a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoRequest {
    /// `IOREQ_TYPE_*`.
    pub r#type: u8,
    /// Guest physical address of the access.
    pub addr: u64,
    /// Access size in bytes.
    pub size: u32,
    /// Repetitions (1 on arm).
    pub count: u32,
    /// A store (`dir == IOREQ_WRITE`) rather than a load.
    pub write: bool,
    /// The value stored (for writes).
    pub data: u64,
    /// `data` is a guest address of the data (never on arm; refused).
    pub data_is_ptr: bool,
}

impl IoRequest {
    /// An MMIO access (`IOREQ_TYPE_COPY`).
    pub const fn is_mmio(&self) -> bool {
        self.r#type == IOREQ_TYPE_COPY
    }

    /// Xen's map-cache invalidation broadcast (`IOREQ_TYPE_INVALIDATE`): answered like a write.
    pub const fn is_invalidate(&self) -> bool {
        self.r#type == IOREQ_TYPE_INVALIDATE
    }
}

/// The state bits of a slot.
pub fn state(slot: &Ioreq) -> u8 {
    slot.flags.load(Ordering::Acquire) & IOREQ_STATE_MASK
}

/// The request in `slot` if Xen has posted one (`STATE_IOREQ_READY`), else `None`.
///
/// The state is read with acquire ordering, so the fields read after it are those Xen wrote
/// before its barrier and the state.
pub fn pending_request(slot: &Ioreq) -> Option<IoRequest> {
    let flags = slot.flags.load(Ordering::Acquire);
    if flags & IOREQ_STATE_MASK != STATE_IOREQ_READY {
        return None;
    }
    Some(IoRequest {
        r#type: slot.r#type.load(Ordering::Relaxed),
        addr: slot.addr.load(Ordering::Relaxed),
        size: slot.size.load(Ordering::Relaxed),
        count: slot.count.load(Ordering::Relaxed),
        write: flags & IOREQ_DIR == 0,
        data: slot.data.load(Ordering::Relaxed),
        data_is_ptr: flags & IOREQ_DATA_IS_PTR != 0,
    })
}

/// Answers the request in `slot`: stores `data` (the read value; ignored by Xen for writes),
/// a barrier (`dmb ish`), then `STATE_IORESP_READY`, then a full barrier before the caller
/// notifies the slot's event channel.
///
/// Call only for a slot that [`pending_request`] returned a request for, once.
pub fn respond(slot: &Ioreq, data: u64) {
    slot.data.store(data, Ordering::Relaxed);
    fence(Ordering::Release);
    let flags = slot.flags.load(Ordering::Relaxed);
    slot.flags.store(
        (flags & !IOREQ_STATE_MASK) | STATE_IORESP_READY,
        Ordering::Release,
    );
    fence(Ordering::SeqCst);
}

/// `value` with the bits beyond an access of `size` bytes cleared (Xen's `handle_ioserv`
/// expects the read handler to have zeroed them before it sign-extends).
pub const fn mask_to_size(value: u64, size: u32) -> u64 {
    if size >= 8 {
        value
    } else {
        value & ((1u64 << (size * 8)) - 1)
    }
}

/// Chooses the guest frame to map the ioreq page at: see [`choose_frames`] (one page).
pub fn choose_page_frame(memory: &[Region], extended: &[Region], taken: &[Region]) -> Option<u64> {
    choose_frames(memory, extended, taken, 1)
}

/// Chooses the first of `count` consecutive guest frames to map Xen or grant pages at: the
/// first place in an extended region (the ranges Xen advertises for foreign mappings, free but
/// for what we put there ourselves) where they fit, else right after a RAM bank; never
/// overlapping a RAM bank or anything in `taken` (device regions, the grant-table region).
pub fn choose_frames(
    memory: &[Region],
    extended: &[Region],
    taken: &[Region],
    count: u64,
) -> Option<u64> {
    let page = PAGE_SIZE as u64;
    let size = count.checked_mul(page).filter(|&size| size > 0)?;
    // The end of the first RAM bank or taken region that `[base, base + size)` overlaps.
    let blocked = |base: u64| {
        let candidate = Region::new(base, size);
        memory
            .iter()
            .chain(taken)
            .find(|region| region.overlaps(&candidate))
            .map(Region::end)
    };
    // From `base` on, skip past whatever is in the way, within `limit` (exclusive end).
    let first_fit = |mut base: u64, limit: u64| {
        // Each step passes one region, so this ends; the bound is only a backstop.
        for _ in 0..=memory.len() + taken.len() {
            base = base.checked_next_multiple_of(page)?;
            let end = base.checked_add(size)?;
            if end > limit {
                return None;
            }
            match blocked(base) {
                None => return Some(base / page),
                Some(next) => base = next,
            }
        }
        None
    };
    extended
        .iter()
        .filter_map(|region| first_fit(region.base, region.end()))
        .chain(memory.iter().filter_map(|bank| {
            // Outside extended regions nothing says what else is there: only the place right
            // after RAM is tried.
            let base = bank.end().checked_next_multiple_of(page)?;
            first_fit(base, base.checked_add(size)?)
        }))
        .next()
}

#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub use self::xen_calls::*;

#[cfg(all(target_arch = "aarch64", target_os = "none"))]
mod xen_calls {
    use alloc::vec::Vec;
    use core::fmt;

    use super::super::abi::{DomId, IOREQ_SLOTS_PER_PAGE};
    use super::super::dm::{self, IoreqServerId};
    use super::super::evtchn::{self, EvtchnError, Port, FIRED};
    use super::super::HypercallError;
    use super::*;
    use crate::mmu;
    use crate::paging::{MapError, MemoryKind};

    /// Why the ioreq server could not be set up.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum IoreqError {
        /// A hypercall failed (`EPERM`: this domain is not the frontend's device model - is
        /// `xen,device-model-for` set and Ferry's Xen used?).
        Hypercall(HypercallError),
        /// Binding a slot's event channel failed.
        Evtchn(EvtchnError),
        /// The frontend has more vCPUs than an ioreq page has slots.
        TooManyVcpus(u32),
        /// No free guest frame for the ioreq page (configuration).
        NoFrame,
        /// The ioreq page could not be mapped in our page tables.
        PageTables(MapError),
        /// An MMIO range is empty or wraps (configuration).
        BadRange {
            /// Its base.
            base: u64,
            /// Its size.
            size: u64,
        },
    }

    impl From<HypercallError> for IoreqError {
        fn from(error: HypercallError) -> Self {
            IoreqError::Hypercall(error)
        }
    }

    impl fmt::Display for IoreqError {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self {
                IoreqError::Hypercall(error) if error.errno == 1 => write!(
                    f,
                    "{error}: this domain is not the frontend's device model \
                     (xen,device-model-for and Ferry's Xen are needed)"
                ),
                IoreqError::Hypercall(error) => write!(f, "{error}"),
                IoreqError::Evtchn(error) => write!(f, "ioreq event channel: {error}"),
                IoreqError::TooManyVcpus(vcpus) => write!(
                    f,
                    "the frontend has {vcpus} vCPUs, an ioreq page serves {IOREQ_SLOTS_PER_PAGE}"
                ),
                IoreqError::NoFrame => write!(f, "no free guest frame for the ioreq page"),
                IoreqError::PageTables(error) => write!(f, "cannot map the ioreq page: {error}"),
                IoreqError::BadRange { base, size } => {
                    write!(f, "MMIO range {base:#x}+{size:#x} is empty or wraps")
                }
            }
        }
    }

    /// An enabled ioreq server of our target: its ioreq page and one bound port per vCPU.
    #[derive(Debug)]
    pub struct IoreqServer {
        target: DomId,
        id: IoreqServerId,
        slots: &'static [Ioreq],
        ports: Vec<Port>,
    }

    impl IoreqServer {
        /// Creates, maps and enables a server for `target`'s MMIO `ranges` (base, size), with
        /// its ioreq page at our guest frame `page_frame` (see [`choose_page_frame`]), and binds
        /// and unmasks the slots' event channels. [`evtchn::init`] must have run.
        ///
        /// Enabling releases the frontend if Xen held it for us: from then on requests come.
        pub fn start(
            target: DomId,
            ranges: &[(u64, u64)],
            page_frame: u64,
        ) -> Result<IoreqServer, IoreqError> {
            let vcpus = dm::nr_vcpus(target)?;
            let count = usize::try_from(vcpus)
                .ok()
                .filter(|&count| count <= IOREQ_SLOTS_PER_PAGE)
                .ok_or(IoreqError::TooManyVcpus(vcpus))?;
            let id = dm::create_ioreq_server(target)?;
            dm::check_ioreq_server(target, id)?;
            let page = Region::new(page_frame * PAGE_SIZE as u64, PAGE_SIZE as u64);
            if mmu::kind_of(page.base).is_some() {
                return Err(IoreqError::NoFrame);
            }
            // SAFETY: the caller chose a frame outside our RAM and devices, and it is not
            // mapped in our page tables (checked above): no Rust object lives there.
            unsafe { dm::acquire_ioreq_page(target, id, page_frame) }?;
            // Xen maps the page cacheable; so must we (notes/linux-frontend.md).
            mmu::map(page, MemoryKind::Normal).map_err(IoreqError::PageTables)?;
            // SAFETY: Xen's ioreq page is now mapped at `page` (PA = VA), Normal memory, for
            // as long as the server exists (forever: it is never destroyed). It holds
            // IOREQ_SLOTS_PER_PAGE `struct ioreq`, shared with Xen only, and `Ioreq` is made of
            // atomics for that; `count` is at most that many.
            let slots = unsafe { core::slice::from_raw_parts(page.base as *const Ioreq, count) };
            for &(base, size) in ranges {
                let (start, end) =
                    dm::inclusive_range(base, size).ok_or(IoreqError::BadRange { base, size })?;
                dm::map_mmio_range(target, id, start, end)?;
            }
            dm::set_ioreq_server_state(target, id, true)?;
            let mut ports = Vec::with_capacity(count);
            for slot in slots {
                let remote = slot.vp_eport.load(Ordering::Acquire);
                let channel =
                    evtchn::bind_interdomain(target, remote).map_err(IoreqError::Evtchn)?;
                ports.push(channel.local);
            }
            for port in &ports {
                port.unmask()
                    .map_err(|error| IoreqError::Evtchn(error.into()))?;
            }
            Ok(IoreqServer {
                target,
                id,
                slots,
                ports,
            })
        }

        /// The frontend domain.
        pub fn target(&self) -> DomId {
            self.target
        }

        /// The server id.
        pub fn id(&self) -> IoreqServerId {
            self.id
        }

        /// Number of slots (frontend vCPUs).
        pub fn slot_count(&self) -> usize {
            self.slots.len()
        }

        /// The request pending in slot `vcpu`, if any.
        pub fn pending(&self, vcpu: usize) -> Option<IoRequest> {
            self.slots.get(vcpu).and_then(pending_request)
        }

        /// Answers slot `vcpu` with `data` and notifies its event channel.
        pub fn respond(&self, vcpu: usize, data: u64) -> Result<(), HypercallError> {
            if let (Some(slot), Some(port)) = (self.slots.get(vcpu), self.ports.get(vcpu)) {
                respond(slot, data);
                port.send()?;
            }
            Ok(())
        }

        /// Idles (`wfi`, interrupt-driven) until an event arrives on one of the slots' ports,
        /// and consumes those events. Events that arrived since the last call return at once.
        pub fn wait(&self) {
            crate::runtime::wait_until(|| {
                self.ports
                    .iter()
                    .fold(false, |fired, &port| FIRED.take(port) | fired)
            });
        }

        /// `XEN_DMOP_set_irq_level` on the frontend's SPI `intid`.
        pub fn set_irq_level(&self, intid: u32, level: bool) -> Result<(), HypercallError> {
            dm::set_irq_level(self.target, intid, level)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::abi::{IOREQ_READ, STATE_IOREQ_NONE};
    use super::*;

    /// What Xen's `ioreq_send` does to a slot.
    fn xen_posts(slot: &Ioreq, addr: u64, size: u32, read: bool, data: u64) {
        slot.addr.store(addr, Ordering::Relaxed);
        slot.size.store(size, Ordering::Relaxed);
        slot.count.store(1, Ordering::Relaxed);
        slot.data.store(data, Ordering::Relaxed);
        slot.r#type.store(IOREQ_TYPE_COPY, Ordering::Relaxed);
        let dir = if read { IOREQ_READ << 5 } else { 0 };
        slot.flags.store(dir | STATE_IOREQ_READY, Ordering::Release);
    }

    #[test]
    fn a_posted_read_is_decoded_and_answered() {
        let slot = Ioreq::default();
        assert_eq!(pending_request(&slot), None);
        xen_posts(&slot, 0x200_0070, 4, true, 0);
        let request = pending_request(&slot).unwrap();
        assert!(request.is_mmio() && !request.write && !request.data_is_ptr);
        assert_eq!(
            (request.addr, request.size, request.count),
            (0x200_0070, 4, 1)
        );
        respond(&slot, 0x7472_6976);
        assert_eq!(state(&slot), STATE_IORESP_READY);
        // The dir bit is kept.
        assert_ne!(slot.flags.load(Ordering::SeqCst) & IOREQ_DIR, 0);
        assert_eq!(slot.data.load(Ordering::SeqCst), 0x7472_6976);
        assert_eq!(pending_request(&slot), None);
        // Xen completes it.
        slot.flags.store(STATE_IOREQ_NONE, Ordering::SeqCst);
        assert_eq!(pending_request(&slot), None);
    }

    #[test]
    fn a_posted_write_carries_its_value() {
        let slot = Ioreq::default();
        xen_posts(&slot, 0x200_0050, 4, false, 1);
        let request = pending_request(&slot).unwrap();
        assert!(request.write);
        assert_eq!(request.data, 1);
        slot.r#type.store(IOREQ_TYPE_INVALIDATE, Ordering::SeqCst);
        assert!(pending_request(&slot).unwrap().is_invalidate());
    }

    #[test]
    fn values_are_masked_to_the_access_size() {
        assert_eq!(mask_to_size(u64::MAX, 1), 0xff);
        assert_eq!(mask_to_size(u64::MAX, 2), 0xffff);
        assert_eq!(mask_to_size(u64::MAX, 4), 0xffff_ffff);
        assert_eq!(mask_to_size(u64::MAX, 8), u64::MAX);
    }

    #[test]
    fn the_ioreq_page_goes_into_a_hole() {
        let ram = [Region::new(0x6000_0000, 0x400_0000)];
        // No extended regions: right after RAM.
        assert_eq!(choose_page_frame(&ram, &[], &[]), Some(0x64000));
        // Something mapped there: no frame (no other candidate).
        let device = [Region::new(0x6400_0000, 0x1000)];
        assert_eq!(choose_page_frame(&ram, &[], &device), None);
        // An extended region is preferred.
        let extended = [Region::new(0x8000_0800, 0x10_0000)];
        assert_eq!(choose_page_frame(&ram, &extended, &device), Some(0x80001));
        let tiny = [Region::new(0x8000_0800, 0x1000)];
        assert_eq!(choose_page_frame(&ram, &tiny, &[]), Some(0x64000));
    }

    #[test]
    fn several_frames_go_after_what_is_taken() {
        let ram = [Region::new(0x6000_0000, 0x100_0000)];
        let extended = [Region::new(0x4000_0000, 0x2000_0000)];
        // The ioreq page took the first frame of the extended region: 16 frames follow it.
        let ioreq = Region::new(0x4000_0000, 0x1000);
        assert_eq!(choose_frames(&ram, &extended, &[ioreq], 16), Some(0x40001));
        // Without extended regions: right after RAM, if that is free.
        assert_eq!(choose_frames(&ram, &[], &[], 17), Some(0x61000));
        let device = Region::new(0x6100_8000, 0x1000);
        assert_eq!(choose_frames(&ram, &[], &[device], 17), None);
        // A region too small for all of them is passed over.
        let small = [Region::new(0x4000_0000, 0x4000)];
        assert_eq!(choose_frames(&ram, &small, &[], 16), Some(0x61000));
        assert_eq!(choose_frames(&ram, &small, &[], 4), Some(0x40000));
        assert_eq!(choose_frames(&ram, &[], &[], 0), None);
    }
}
