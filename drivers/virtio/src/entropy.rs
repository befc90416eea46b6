//! [`VirtioEntropy`]: a passed-through virtio-rng device as an [`EntropySource`].

use ferry_drivers::{DeviceError, EntropySource};
use virtio_drivers::device::rng::VirtIORng;
use virtio_drivers::transport::{DeviceType, Transport};
use virtio_drivers::Hal;

use crate::{check_type, map_error, ProbeError};

/// Most bytes asked of the device in one request; [`EntropySource::fill`] may return fewer bytes
/// than asked, so larger buffers are filled only this far.
pub const MAX_ENTROPY_REQUEST: usize = 64 * 1024;

/// A virtio-rng device driven by `virtio-drivers`, seen as a Ferry [`EntropySource`].
pub struct VirtioEntropy<H: Hal, T: Transport> {
    rng: VirtIORng<H, T>,
}

impl<H: Hal, T: Transport> VirtioEntropy<H, T> {
    /// Initialises the entropy device behind `transport`.
    pub fn new(transport: T) -> Result<Self, ProbeError> {
        check_type(&transport, DeviceType::EntropySource)?;
        let rng = VirtIORng::new(transport).map_err(ProbeError::Driver)?;
        Ok(VirtioEntropy { rng })
    }
}

impl<H: Hal, T: Transport> core::fmt::Debug for VirtioEntropy<H, T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("VirtioEntropy").finish_non_exhaustive()
    }
}

impl<H: Hal, T: Transport> EntropySource for VirtioEntropy<H, T> {
    /// Asks the device for up to [`MAX_ENTROPY_REQUEST`] bytes and returns how many it wrote
    /// (virtio spec 5.4.6: the used length). An empty buffer is answered without a request.
    fn fill(&mut self, buf: &mut [u8]) -> Result<usize, DeviceError> {
        let len = buf.len().min(MAX_ENTROPY_REQUEST);
        let Some(buf) = buf.get_mut(..len).filter(|b| !b.is_empty()) else {
            return Ok(0);
        };
        let written = self.rng.request_entropy(buf).map_err(map_error)?;
        // The used length is the device's word; never report more than the buffer holds.
        Ok(written.min(len))
    }
}
