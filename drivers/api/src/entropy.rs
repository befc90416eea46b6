//! Sources of random bytes (CPU RNDR, a passed-through virtio-rng, a fake in tests).

use crate::DeviceError;

/// A source of entropy owned by the appliance.
pub trait EntropySource {
    /// Fills a prefix of `buf` with random bytes and returns how many were written.
    ///
    /// Returning fewer bytes than asked (even zero) is allowed; an error means the source failed.
    fn fill(&mut self, buf: &mut [u8]) -> Result<usize, DeviceError>;
}
