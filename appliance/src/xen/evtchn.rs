//! Event channels, 2-level ABI: ports, their PENDING and MASK bits, the upcall, waiting.
//!
//! Xen marks a port PENDING in the shared info page ([`super::shared_info`]); for a port that is
//! not MASKED it also sets the port's word in the vCPU's `evtchn_pending_sel` and sets
//! `evtchn_upcall_pending`, and on arm injects the upcall interrupt: the PPI of the
//! `/hypervisor` node (`GUEST_EVTCHN_PPI`, 31, xen/include/public/arch-arm.h). The upcall
//! handler ([`upcall`], which the runtime's interrupt handler calls) clears what it consumes in
//! the order xen/include/public/xen.h documents - `evtchn_upcall_pending` first, then the
//! selector, then each PENDING bit it handles - and records each port in [`FIRED`], a set that
//! the appliance's code takes ports out of ([`Port::take_fired`], [`Port::wait`]).
//!
//! Static event channels (`xen,evtchn-v1` in the dom0less device tree) exist when the domain
//! starts; image-builder tells the appliance its local port (bootargs). Xen creates each one
//! with `evtchn_alloc_unbound` in the domain whose node comes first under `/chosen` and
//! `evtchn_bind_interdomain` in the other (xen/arch/arm/domain_build.c,
//! `alloc_domain_evtchn`), and binding marks the binder's port PENDING: the domain whose node
//! comes second sees one event that nobody sent. It must [`Port::clear_pending`] before its
//! first wait, and only then tell its peer that it is ready.
//!
//! All state here is atomics, so the upcall may interrupt any other function of this module.

use core::sync::atomic::{AtomicU64, Ordering};

use super::abi::{
    DomId, EvtchnStatus, SharedInfo, EVTCHNSTAT_CLOSED, EVTCHNSTAT_INTERDOMAIN, EVTCHNSTAT_IPI,
    EVTCHNSTAT_PIRQ, EVTCHNSTAT_UNBOUND, EVTCHNSTAT_VIRQ, EVTCHN_2L_NR_CHANNELS, EVTCHN_WORDS,
};
use super::HypercallError;

/// An event channel port of this domain (2-level ABI: 1..4096; port 0 is never valid).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Port(u32);

impl Port {
    /// The port `number`, if the 2-level ABI can have it.
    pub const fn new(number: u32) -> Option<Port> {
        if number == 0 || number as usize >= EVTCHN_2L_NR_CHANNELS {
            None
        } else {
            Some(Port(number))
        }
    }

    /// The port number.
    pub const fn number(self) -> u32 {
        self.0
    }

    /// Index of the port's 64-bit word in the PENDING / MASK arrays.
    const fn word(self) -> usize {
        self.0 as usize / 64
    }

    /// The port's bit within its word.
    const fn bit(self) -> u64 {
        1 << (self.0 % 64)
    }

    /// Whether Xen has the port PENDING in `shared`.
    pub fn is_pending_in(self, shared: &SharedInfo) -> bool {
        shared.evtchn_pending[self.word()].load(Ordering::Acquire) & self.bit() != 0
    }

    /// Whether the port is MASKED in `shared`.
    pub fn is_masked_in(self, shared: &SharedInfo) -> bool {
        shared.evtchn_mask[self.word()].load(Ordering::Acquire) & self.bit() != 0
    }

    /// Clears the port's PENDING bit in `shared`.
    pub fn clear_pending_in(self, shared: &SharedInfo) {
        shared.evtchn_pending[self.word()].fetch_and(!self.bit(), Ordering::AcqRel);
    }

    /// Sets the port's MASK bit in `shared`: Xen then raises no upcall for it.
    pub fn mask_in(self, shared: &SharedInfo) {
        shared.evtchn_mask[self.word()].fetch_or(self.bit(), Ordering::AcqRel);
    }
}

impl core::fmt::Display for Port {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "port {}", self.0)
    }
}

/// A set of ports, safe to update from the upcall and from ordinary code at the same time.
#[derive(Debug)]
pub struct PortSet {
    words: [AtomicU64; EVTCHN_WORDS],
}

impl PortSet {
    /// The empty set.
    pub const fn new() -> Self {
        Self {
            words: [const { AtomicU64::new(0) }; EVTCHN_WORDS],
        }
    }

    /// Adds every port whose bit is set in `bits`, the word `word` of the set.
    fn insert_word(&self, word: usize, bits: u64) {
        self.words[word].fetch_or(bits, Ordering::AcqRel);
    }

    /// Adds `port`.
    pub fn insert(&self, port: Port) {
        self.insert_word(port.word(), port.bit());
    }

    /// Removes `port`; returns whether it was in the set.
    pub fn take(&self, port: Port) -> bool {
        self.words[port.word()].fetch_and(!port.bit(), Ordering::AcqRel) & port.bit() != 0
    }

    /// Whether `port` is in the set.
    pub fn contains(&self, port: Port) -> bool {
        self.words[port.word()].load(Ordering::Acquire) & port.bit() != 0
    }
}

impl Default for PortSet {
    fn default() -> Self {
        Self::new()
    }
}

/// Ports that fired (were PENDING and unmasked when an upcall scanned them) and were not yet
/// taken by the appliance.
pub static FIRED: PortSet = PortSet::new();

/// Consumes the pending events in `shared` into `fired`; returns how many ports fired.
///
/// This is the body of [`upcall`], separate so that it is tested on the host. Order, from
/// xen/include/public/xen.h (`struct vcpu_info`, `struct shared_info`):
/// 1. clear `evtchn_upcall_pending` *before* looking for work (Xen sets it again, and injects
///    the upcall again, for any port that becomes pending after this);
/// 2. take the selector (`evtchn_pending_sel`, atomically swapped with 0);
/// 3. for each selected word: the ports PENDING and not MASKED; clear exactly those PENDING
///    bits (atomically: Xen sets others concurrently) and record them.
///
/// Masked ports stay PENDING: `EVTCHNOP_unmask` re-raises them. Two scans racing (the upcall
/// interrupting a polling caller) cannot record a port twice for one event: only the scan
/// whose `fetch_and` saw a bit set records it.
pub fn scan(shared: &SharedInfo, fired: &PortSet) -> usize {
    let vcpu = &shared.vcpu_info[0];
    let mut count = 0;
    // Bounded: events that keep arriving are handled by the next upcall instead.
    for _ in 0..8 {
        vcpu.evtchn_upcall_pending.store(0, Ordering::SeqCst);
        let mut selector = vcpu.evtchn_pending_sel.swap(0, Ordering::AcqRel);
        while selector != 0 {
            let word = selector.trailing_zeros() as usize;
            selector &= selector - 1;
            let pending = shared.evtchn_pending[word].load(Ordering::Acquire);
            let ready = pending & !shared.evtchn_mask[word].load(Ordering::Acquire);
            if ready == 0 {
                continue;
            }
            let cleared = shared.evtchn_pending[word].fetch_and(!ready, Ordering::AcqRel) & ready;
            fired.insert_word(word, cleared);
            count += cleared.count_ones() as usize;
        }
        if vcpu.evtchn_upcall_pending.load(Ordering::SeqCst) == 0 {
            break;
        }
    }
    count
}

/// Masks every port in `shared` (the start state of an appliance: nothing raises an upcall
/// until the appliance unmasks the ports it uses).
pub fn mask_all_in(shared: &SharedInfo) {
    for word in &shared.evtchn_mask {
        word.store(u64::MAX, Ordering::Release);
    }
}

impl Port {
    /// Takes the port out of [`FIRED`]: whether an upcall saw it fire since the last take.
    pub fn take_fired(self) -> bool {
        FIRED.take(self)
    }
}

/// What a port is bound to (`EVTCHNSTAT_*`, xen/include/public/event_channel.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortStatus {
    /// Not in use.
    Closed,
    /// Allocated, waiting for `remote` to bind to it.
    Unbound {
        /// The domain allowed to bind.
        remote: DomId,
    },
    /// Connected to `remote_port` of domain `remote`.
    Interdomain {
        /// The remote domain.
        remote: DomId,
        /// Its port.
        remote_port: u32,
    },
    /// Bound to a physical IRQ.
    Pirq(u32),
    /// Bound to a virtual IRQ.
    Virq(u32),
    /// Bound to an IPI.
    Ipi,
    /// A status this code does not know.
    Unknown(u32),
}

impl PortStatus {
    /// Decodes the OUT fields of `EVTCHNOP_status`.
    pub fn from_abi(status: &EvtchnStatus) -> Self {
        match status.status {
            EVTCHNSTAT_CLOSED => PortStatus::Closed,
            EVTCHNSTAT_UNBOUND => PortStatus::Unbound {
                remote: status.remote_domain(),
            },
            EVTCHNSTAT_INTERDOMAIN => PortStatus::Interdomain {
                remote: status.remote_domain(),
                remote_port: status.remote_port(),
            },
            EVTCHNSTAT_PIRQ => PortStatus::Pirq(status.u[0]),
            EVTCHNSTAT_VIRQ => PortStatus::Virq(status.u[0]),
            EVTCHNSTAT_IPI => PortStatus::Ipi,
            other => PortStatus::Unknown(other),
        }
    }
}

/// An interdomain channel: our port and the remote end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Channel {
    /// Our end.
    pub local: Port,
    /// The domain at the other end.
    pub remote_domain: DomId,
    /// Its port.
    pub remote_port: u32,
}

/// Why an event channel could not be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EvtchnError {
    /// Xen refused an event channel operation.
    Hypercall(HypercallError),
    /// The port number is not a port of the 2-level ABI (configuration error: bootargs).
    InvalidPort(u32),
    /// The port that the configuration names is not an interdomain channel (configuration
    /// error: the system's device tree has no such static channel).
    NotInterdomain {
        /// The port.
        port: Port,
        /// What it is instead.
        status: PortStatus,
    },
    /// The channel leads to another domain than the configuration says.
    WrongPeer {
        /// The port.
        port: Port,
        /// The domain the configuration names.
        expected: DomId,
        /// The domain at the other end.
        found: DomId,
    },
}

impl From<HypercallError> for EvtchnError {
    fn from(error: HypercallError) -> Self {
        EvtchnError::Hypercall(error)
    }
}

impl core::fmt::Display for EvtchnError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            EvtchnError::Hypercall(error) => write!(f, "{error}"),
            EvtchnError::InvalidPort(number) => {
                write!(f, "{number} is not an event channel port (1..4095)")
            }
            EvtchnError::NotInterdomain { port, status } => write!(
                f,
                "{port} is not an interdomain channel (Xen says {status:?}): \
                 is the static event channel in the device tree?"
            ),
            EvtchnError::WrongPeer {
                port,
                expected,
                found,
            } => write!(
                f,
                "{port} leads to domain {found}, not to domain {expected}"
            ),
        }
    }
}

/// Checks what `EVTCHNOP_status` said about a static channel's `port`.
pub fn check_static_channel(
    port: Port,
    status: PortStatus,
    expected_peer: Option<DomId>,
) -> Result<Channel, EvtchnError> {
    let PortStatus::Interdomain {
        remote,
        remote_port,
    } = status
    else {
        return Err(EvtchnError::NotInterdomain { port, status });
    };
    if let Some(expected) = expected_peer {
        if expected != remote {
            return Err(EvtchnError::WrongPeer {
                port,
                expected,
                found: remote,
            });
        }
    }
    Ok(Channel {
        local: port,
        remote_domain: remote,
        remote_port,
    })
}

#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub use self::xen_calls::*;

/// The parts that talk to Xen.
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
mod xen_calls {
    use super::super::abi::{EvtchnAllocUnbound, EvtchnBindInterdomain, EvtchnStatus, DOMID_SELF};
    use super::super::{hypercall, shared_info};
    use super::*;

    /// Number of upcalls handled since boot (see [`upcalls`]).
    static UPCALLS: AtomicU64 = AtomicU64::new(0);

    /// The event-channel upcall: consumes pending events into [`FIRED`].
    ///
    /// The runtime's handler of the upcall interrupt (the `/hypervisor` node's PPI) calls it.
    /// It does nothing before [`init`] has mapped the shared info page.
    pub fn upcall() {
        UPCALLS.fetch_add(1, Ordering::Relaxed);
        if let Some(shared) = shared_info::get() {
            scan(shared, &FIRED);
        }
    }

    /// How many times [`upcall`] has run since boot.
    pub fn upcalls() -> u64 {
        UPCALLS.load(Ordering::Relaxed)
    }

    /// Maps the shared info page, masks every port and makes [`upcall`] the handler of the
    /// upcall interrupt `upcall_intid` (the `/hypervisor` node's PPI). Idempotent.
    ///
    /// The CPU takes the upcall once its interrupts are enabled (`irq::enable_cpu_interrupts`,
    /// or while waiting in [`Port::wait`]).
    pub fn init(upcall_intid: u32) -> Result<(), super::super::InitError> {
        use super::super::InitError;
        let already = shared_info::get().is_some();
        let shared = shared_info::map().map_err(InitError::SharedInfo)?;
        if !already {
            mask_all_in(shared);
        }
        crate::irq::enable(upcall_intid, upcall).map_err(|error| InitError::Upcall {
            intid: upcall_intid,
            error,
        })
    }

    /// The shared info page; ports are used only after [`init`], so it is mapped.
    fn shared() -> &'static SharedInfo {
        shared_info::get().expect("evtchn::init maps the shared info page before ports are used")
    }

    impl Port {
        /// `EVTCHNOP_send`: notifies the other end.
        pub fn send(self) -> Result<(), HypercallError> {
            HypercallError::check("EVTCHNOP_send", hypercall::evtchn_send(self.0)).map(drop)
        }

        /// `EVTCHNOP_unmask`: Xen clears the MASK bit and raises the upcall if the port is
        /// already PENDING (a pending event is not lost by masking).
        pub fn unmask(self) -> Result<(), HypercallError> {
            HypercallError::check("EVTCHNOP_unmask", hypercall::evtchn_unmask(self.0)).map(drop)
        }

        /// Sets the MASK bit: no upcall for this port until [`Port::unmask`].
        pub fn mask(self) {
            self.mask_in(shared());
        }

        /// Whether the port is PENDING in the shared info page (not yet consumed by an upcall).
        pub fn is_pending(self) -> bool {
            self.is_pending_in(shared())
        }

        /// Forgets any event of this port: clears its PENDING bit, then takes it out of
        /// [`FIRED`]. For the event that Xen leaves pending when it binds a static channel.
        pub fn clear_pending(self) {
            self.clear_pending_in(shared());
            FIRED.take(self);
        }

        /// `EVTCHNOP_status`: what the port is bound to.
        pub fn status(self) -> Result<PortStatus, HypercallError> {
            let mut argument = EvtchnStatus {
                dom: DOMID_SELF,
                port: self.0,
                ..EvtchnStatus::default()
            };
            HypercallError::check("EVTCHNOP_status", hypercall::evtchn_status(&mut argument))?;
            Ok(PortStatus::from_abi(&argument))
        }

        /// `EVTCHNOP_close`.
        pub fn close(self) -> Result<(), HypercallError> {
            self.mask();
            FIRED.take(self);
            HypercallError::check("EVTCHNOP_close", hypercall::evtchn_close(self.0)).map(drop)
        }

        /// Waits until the port fires, then takes it out of [`FIRED`]: idles in `wfi`, woken
        /// by the upcall interrupt (see `runtime::wait_until`: the check runs with IRQs
        /// masked, so no wakeup is lost). Needs [`init`] and the port unmasked.
        pub fn wait(self) {
            crate::runtime::wait_until(|| FIRED.take(self));
        }

        /// Like [`Port::wait`] without interrupts: scans the shared info page itself and
        /// blocks in `SCHEDOP_poll` on the port (for code that runs with IRQs masked).
        pub fn wait_polling(self) -> Result<(), HypercallError> {
            loop {
                upcall();
                if FIRED.take(self) {
                    return Ok(());
                }
                super::super::sched::poll(&[self], 0)?;
            }
        }
    }

    /// `EVTCHNOP_alloc_unbound`: a new port of ours that domain `remote` may bind to.
    pub fn alloc_unbound(remote: DomId) -> Result<Port, EvtchnError> {
        let mut argument = EvtchnAllocUnbound {
            dom: DOMID_SELF,
            remote_dom: remote,
            port: 0,
        };
        let result = hypercall::evtchn_alloc_unbound(&mut argument);
        HypercallError::check("EVTCHNOP_alloc_unbound", result)?;
        Port::new(argument.port).ok_or(EvtchnError::InvalidPort(argument.port))
    }

    /// `EVTCHNOP_bind_interdomain`: connects a new port of ours to `remote_port`, an unbound
    /// port of domain `remote` (allocated for us). The new port starts PENDING and MASKED.
    pub fn bind_interdomain(remote: DomId, remote_port: u32) -> Result<Channel, EvtchnError> {
        let mut argument = EvtchnBindInterdomain {
            remote_dom: remote,
            remote_port,
            local_port: 0,
        };
        let result = hypercall::evtchn_bind_interdomain(&mut argument);
        HypercallError::check("EVTCHNOP_bind_interdomain", result)?;
        let local =
            Port::new(argument.local_port).ok_or(EvtchnError::InvalidPort(argument.local_port))?;
        Ok(Channel {
            local,
            remote_domain: remote,
            remote_port,
        })
    }

    impl Channel {
        /// The static channel whose local port is `port` (from the bootargs), checked with
        /// `EVTCHNOP_status` to be an interdomain channel to `expected_peer` (if given).
        ///
        /// The port stays MASKED and may hold Xen's event from binding; the caller clears it
        /// if it is the binding side, then unmasks.
        pub fn open_static(
            port: u32,
            expected_peer: Option<DomId>,
        ) -> Result<Channel, EvtchnError> {
            let port = Port::new(port).ok_or(EvtchnError::InvalidPort(port))?;
            check_static_channel(port, port.status()?, expected_peer)
        }

        /// Notifies the other end.
        pub fn notify(&self) -> Result<(), HypercallError> {
            self.local.send()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(number: u32) -> Port {
        Port::new(number).unwrap()
    }

    /// What Xen's `evtchn_2l_set_pending` does (xen/common/event_2l.c).
    fn xen_set_pending(shared: &SharedInfo, port: Port) {
        let before = shared.evtchn_pending[port.word()].fetch_or(port.bit(), Ordering::SeqCst);
        if before & port.bit() != 0 || port.is_masked_in(shared) {
            return;
        }
        let vcpu = &shared.vcpu_info[0];
        vcpu.evtchn_pending_sel
            .fetch_or(1 << port.word(), Ordering::SeqCst);
        vcpu.evtchn_upcall_pending.store(1, Ordering::SeqCst);
    }

    #[test]
    fn port_numbers_of_the_two_level_abi() {
        assert_eq!(Port::new(0), None);
        assert_eq!(Port::new(4096), None);
        assert_eq!(Port::new(4095).map(Port::number), Some(4095));
        assert_eq!(port(10).word(), 0);
        assert_eq!(port(70).word(), 1);
        assert_eq!(port(70).bit(), 1 << 6);
    }

    #[test]
    fn scan_clears_in_order_and_records_unmasked_ports() {
        let shared = SharedInfo::zeroed();
        let fired = PortSet::new();
        xen_set_pending(&shared, port(10));
        xen_set_pending(&shared, port(130));
        assert_eq!(scan(&shared, &fired), 2);
        assert!(fired.take(port(10)));
        assert!(!fired.take(port(10)));
        assert!(fired.contains(port(130)));
        let vcpu = &shared.vcpu_info[0];
        assert_eq!(vcpu.evtchn_upcall_pending.load(Ordering::SeqCst), 0);
        assert_eq!(vcpu.evtchn_pending_sel.load(Ordering::SeqCst), 0);
        assert!(!port(10).is_pending_in(&shared));
        assert!(!port(130).is_pending_in(&shared));
        // Nothing new: nothing fires.
        assert_eq!(scan(&shared, &fired), 0);
    }

    #[test]
    fn masked_ports_stay_pending_and_do_not_fire() {
        let shared = SharedInfo::zeroed();
        let fired = PortSet::new();
        mask_all_in(&shared);
        xen_set_pending(&shared, port(11));
        // Masked: Xen raises no upcall; a scan (e.g. from another port's upcall) skips it.
        shared.vcpu_info[0]
            .evtchn_pending_sel
            .store(1, Ordering::SeqCst);
        assert_eq!(scan(&shared, &fired), 0);
        assert!(port(11).is_pending_in(&shared));
        assert!(!fired.contains(port(11)));
        // A pending port found at start (the static channel's spurious event) is cleared.
        port(11).clear_pending_in(&shared);
        assert!(!port(11).is_pending_in(&shared));
    }

    #[test]
    fn static_channels_must_be_interdomain_to_the_configured_peer() {
        let status = EvtchnStatus {
            dom: 0,
            port: 10,
            status: EVTCHNSTAT_INTERDOMAIN,
            vcpu: 0,
            u: [2, 11],
        };
        let status = PortStatus::from_abi(&status);
        assert_eq!(
            status,
            PortStatus::Interdomain {
                remote: 2,
                remote_port: 11
            }
        );
        let channel = check_static_channel(port(10), status, Some(2)).unwrap();
        assert_eq!(channel.remote_port, 11);
        assert_eq!(
            check_static_channel(port(10), status, Some(3)),
            Err(EvtchnError::WrongPeer {
                port: port(10),
                expected: 3,
                found: 2
            })
        );
        let closed = PortStatus::from_abi(&EvtchnStatus::default());
        let error = check_static_channel(port(12), closed, None).unwrap_err();
        assert_eq!(
            std::string::ToString::to_string(&error),
            "port 12 is not an interdomain channel (Xen says Closed): is the static event \
             channel in the device tree?"
        );
    }

    #[test]
    fn a_pending_bit_already_set_raises_nothing_new() {
        let shared = SharedInfo::zeroed();
        let fired = PortSet::new();
        xen_set_pending(&shared, port(5));
        xen_set_pending(&shared, port(5));
        assert_eq!(scan(&shared, &fired), 1);
    }
}
