//! The error of a failed hypercall: which operation, and Xen's errno.

use core::fmt;

/// A hypercall that Xen answered with a negative errno.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HypercallError {
    /// The operation, as Xen's headers name it (e.g. `EVTCHNOP_send`).
    pub operation: &'static str,
    /// The positive errno (`XEN_E*`, xen/include/public/errno.h).
    pub errno: u32,
}

impl HypercallError {
    /// Turns a hypercall's return value into `Ok(value)` (non-negative) or the error.
    pub fn check(operation: &'static str, result: i64) -> Result<u64, HypercallError> {
        if result >= 0 {
            Ok(result as u64)
        } else {
            Err(HypercallError {
                operation,
                errno: result.unsigned_abs().min(u64::from(u32::MAX)) as u32,
            })
        }
    }

    /// The symbolic name of the errno, if it is one Xen defines (xen/include/public/errno.h).
    pub const fn errno_name(&self) -> Option<&'static str> {
        Some(match self.errno {
            1 => "EPERM",
            2 => "ENOENT",
            3 => "ESRCH",
            4 => "EINTR",
            5 => "EIO",
            6 => "ENXIO",
            7 => "E2BIG",
            9 => "EBADF",
            11 => "EAGAIN",
            12 => "ENOMEM",
            13 => "EACCES",
            14 => "EFAULT",
            16 => "EBUSY",
            17 => "EEXIST",
            19 => "ENODEV",
            22 => "EINVAL",
            28 => "ENOSPC",
            38 => "ENOSYS",
            95 => "EOPNOTSUPP",
            _ => return None,
        })
    }
}

impl fmt::Display for HypercallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.errno_name() {
            Some(name) => write!(f, "{} failed: {name} (-{})", self.operation, self.errno),
            None => write!(f, "{} failed: -{}", self.operation, self.errno),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;

    #[test]
    fn non_negative_results_are_ok() {
        assert_eq!(HypercallError::check("EVTCHNOP_send", 0), Ok(0));
        assert_eq!(
            HypercallError::check("XENVER_version", 0x4_0011),
            Ok(0x4_0011)
        );
    }

    #[test]
    fn negative_results_name_operation_and_errno() {
        let error = HypercallError::check("EVTCHNOP_alloc_unbound", -1).unwrap_err();
        assert_eq!(
            error.to_string(),
            "EVTCHNOP_alloc_unbound failed: EPERM (-1)"
        );
        let error = HypercallError::check("GNTTABOP_copy", -200).unwrap_err();
        assert_eq!(error.to_string(), "GNTTABOP_copy failed: -200");
    }
}
