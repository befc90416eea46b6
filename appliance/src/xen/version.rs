//! Which Xen we run on, and the refusal to run on one older than Ferry supports.
//!
//! Ferry relies on Xen 4.17 behaviour: dom0less domUs with `xen,enhanced` (the `/hypervisor`
//! node), static event channels (`xen,evtchn-v1`, new in 4.17) and the arm64 guest ABI of that
//! release. An older Xen would fail later in confusing ways, so the check comes first.

use core::fmt;

use super::error::HypercallError;

/// A Xen release as `XENVER_version` reports it (xen/include/public/version.h: `major:minor`
/// in 16:16 bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct XenVersion {
    /// Major version, e.g. 4.
    pub major: u16,
    /// Minor version, e.g. 17.
    pub minor: u16,
}

/// The oldest Xen that Ferry runs on.
pub const MINIMUM: XenVersion = XenVersion {
    major: 4,
    minor: 17,
};

impl XenVersion {
    /// Decodes the result of `XENVER_version`.
    pub const fn from_raw(raw: u32) -> Self {
        Self {
            major: (raw >> 16) as u16,
            minor: raw as u16,
        }
    }

    /// Whether Ferry supports this release.
    pub fn is_supported(self) -> bool {
        self >= MINIMUM
    }
}

impl fmt::Display for XenVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// Why the version check failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VersionError {
    /// Xen refused `XENVER_version` (it should never).
    Hypercall(HypercallError),
    /// The hypervisor is older than [`MINIMUM`]: a configuration error of the system.
    TooOld(XenVersion),
}

impl fmt::Display for VersionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VersionError::Hypercall(error) => write!(f, "cannot ask Xen its version: {error}"),
            VersionError::TooOld(found) => write!(
                f,
                "Xen {found} is too old: Ferry appliances need Xen {MINIMUM} or newer"
            ),
        }
    }
}

/// Checks a `XENVER_version` result against [`MINIMUM`].
pub fn check(raw: i64) -> Result<XenVersion, VersionError> {
    let raw = HypercallError::check("XENVER_version", raw).map_err(VersionError::Hypercall)?;
    let version = XenVersion::from_raw(raw as u32);
    if version.is_supported() {
        Ok(version)
    } else {
        Err(VersionError::TooOld(version))
    }
}

/// Asks Xen its version and checks it against [`MINIMUM`].
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub fn query() -> Result<XenVersion, VersionError> {
    check(super::hypercall::xen_version())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;

    #[test]
    fn decodes_major_and_minor() {
        assert_eq!(
            XenVersion::from_raw(0x0004_0011),
            XenVersion {
                major: 4,
                minor: 17
            }
        );
    }

    #[test]
    fn accepts_4_17_and_newer() {
        assert_eq!(check(0x0004_0011).unwrap().to_string(), "4.17");
        assert!(check(0x0004_0013).is_ok());
        assert!(check(0x0005_0000).is_ok());
    }

    #[test]
    fn refuses_older_with_a_clear_message() {
        let error = check(0x0004_0010).unwrap_err();
        assert_eq!(
            error,
            VersionError::TooOld(XenVersion::from_raw(0x0004_0010))
        );
        assert_eq!(
            error.to_string(),
            "Xen 4.16 is too old: Ferry appliances need Xen 4.17 or newer"
        );
        assert!(matches!(check(-38), Err(VersionError::Hypercall(_))));
    }
}
