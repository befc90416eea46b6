//! The Xen guest interface: ABI definitions, hypercalls, console, event channels, grant
//! tables and scheduler operations.
//!
//! [`abi`] is plain data. Together with the pure logic of [`evtchn`] (the upcall's scan of the
//! shared info page), [`grant`] (entry updates, copy batches), [`ioreq`] (slots of the ioreq
//! page), [`dm`] and [`version`], it exists on every target, so that it is tested on the host. What issues hypercalls exists on bare
//! metal only. `unsafe` is confined to [`hypercall`] (the `hvc` and the calls that change our
//! address space or write our memory) and the two places that turn Xen's pages into Rust
//! objects ([`shared_info`], the mapping of the grant table in [`grant`]).

pub mod abi;
pub mod dm;
mod error;
pub mod evtchn;
pub mod grant;
pub mod ioreq;
pub mod shared_info;
pub mod version;

#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub mod console;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub mod hypercall;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub mod sched;

pub use error::HypercallError;

#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub use self::bare_metal::*;

/// What [`init`] found out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XenInfo {
    /// The hypervisor's version (at least [`version::MINIMUM`]).
    pub version: version::XenVersion,
    /// The event-channel upcall interrupt (a PPI).
    pub upcall_intid: u32,
    /// Where our grant table is mapped: base of the grant-table region.
    pub grant_table_base: u64,
    /// Size of the grant-table region.
    pub grant_table_size: u64,
}

/// `GUEST_EVTCHN_PPI` (xen/include/public/arch-arm.h): the upcall interrupt when the device
/// tree has no `/hypervisor` node to say so.
pub const DEFAULT_UPCALL_INTID: u32 = 31;
/// `GUEST_GNTTAB_BASE` (xen/include/public/arch-arm.h).
pub const DEFAULT_GRANT_TABLE_BASE: u64 = 0x3800_0000;
/// `GUEST_GNTTAB_SIZE` (xen/include/public/arch-arm.h).
pub const DEFAULT_GRANT_TABLE_SIZE: u64 = 0x0100_0000;

/// Why the Xen interface could not be set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitError {
    /// The hypervisor is too old, or would not say its version.
    Version(version::VersionError),
    /// Xen would not map the shared info page.
    SharedInfo(HypercallError),
    /// The upcall interrupt could not be enabled.
    #[cfg(all(target_arch = "aarch64", target_os = "none"))]
    Upcall {
        /// The interrupt.
        intid: u32,
        /// Why.
        error: crate::irq::IrqError,
    },
}

impl core::fmt::Display for InitError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            InitError::Version(error) => write!(f, "{error}"),
            InitError::SharedInfo(error) => write!(f, "cannot map the shared info page: {error}"),
            #[cfg(all(target_arch = "aarch64", target_os = "none"))]
            InitError::Upcall { intid, error } => {
                write!(
                    f,
                    "cannot enable the event-channel upcall interrupt {intid}: {error}"
                )
            }
        }
    }
}

#[cfg(all(target_arch = "aarch64", target_os = "none"))]
mod bare_metal {
    use super::*;
    use crate::platform::Hypervisor;

    /// Sets the Xen interface up: checks the version (and logs it), maps the shared info page,
    /// masks every event channel and enables the upcall interrupt. `hypervisor` is the
    /// platform's `/hypervisor` node; without one, Xen's fixed arm values are used.
    ///
    /// Idempotent. The grant table is mapped separately, by who grants
    /// ([`grant::GrantTable::map`] with the region returned here).
    pub fn init(hypervisor: Option<&Hypervisor<'_>>) -> Result<XenInfo, InitError> {
        let version = version::query().map_err(InitError::Version)?;
        let (upcall_intid, grant_table_base, grant_table_size, source) = match hypervisor {
            Some(node) => (
                node.upcall.intid,
                node.grant_table.base,
                node.grant_table.size,
                "/hypervisor",
            ),
            None => (
                DEFAULT_UPCALL_INTID,
                DEFAULT_GRANT_TABLE_BASE,
                DEFAULT_GRANT_TABLE_SIZE,
                "Xen's arm defaults",
            ),
        };
        evtchn::init(upcall_intid)?;
        log::info!(
            "Xen {version}; event channel upcall: interrupt {upcall_intid}; grant table region \
             {grant_table_base:#x}+{grant_table_size:#x} (from {source})"
        );
        Ok(XenInfo {
            version,
            upcall_intid,
            grant_table_base,
            grant_table_size,
        })
    }
}
