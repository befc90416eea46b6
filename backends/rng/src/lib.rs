//! virtio-rng, the entropy device (spec 5.4): one request queue; the driver posts writable
//! buffers, the device fills them with random bytes from the appliance's [`EntropySource`].
//!
//! This is the smallest backend and the model new ones are copied from. It owns nothing but the
//! entropy source; every guest-controlled size is capped ([`MAX_BYTES_PER_REQUEST`]).
#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use ferry_drivers::{DeviceError, EntropySource};
use ferry_virtio::device::Completion;
use ferry_virtio::{Blame, DescriptorChain, DeviceModel, GuestMemory, MemoryError, RequestError};

/// Virtio device ID of an entropy device (spec 5).
pub const DEVICE_ID: u32 = 4;
/// Most bytes served per request; larger buffers are filled only this far (used length says so).
pub const MAX_BYTES_PER_REQUEST: u32 = 64 * 1024;
/// Queue size offered.
pub const QUEUE_SIZE: u16 = 64;

/// Why an entropy request was not (fully) served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RngError {
    /// The driver posted device-readable buffers; requests must be write-only (spec 5.4.6).
    ReadableBuffer,
    /// The driver's buffer is in memory the device cannot reach.
    Memory(MemoryError),
    /// The entropy source failed.
    Source(DeviceError),
}

impl RequestError for RngError {
    fn blame(&self) -> Blame {
        match self {
            RngError::ReadableBuffer | RngError::Memory(_) => Blame::Frontend,
            RngError::Source(_) => Blame::PhysicalDevice,
        }
    }
}

/// The virtio-rng device model.
#[derive(Debug)]
pub struct Rng<E: EntropySource> {
    source: E,
    served_bytes: u64,
}

impl<E: EntropySource> Rng<E> {
    /// An entropy device backed by `source`.
    pub fn new(source: E) -> Self {
        Rng {
            source,
            served_bytes: 0,
        }
    }
    /// The entropy source.
    pub fn source(&self) -> &E {
        &self.source
    }
    /// Random bytes handed to the frontend so far.
    pub fn served_bytes(&self) -> u64 {
        self.served_bytes
    }
}

impl<E: EntropySource> DeviceModel for Rng<E> {
    type Error = RngError;

    fn device_id(&self) -> u32 {
        DEVICE_ID
    }
    fn features(&self) -> u64 {
        0
    }
    fn queue_count(&self) -> u16 {
        1
    }
    fn queue_max_size(&self, _index: u16) -> u16 {
        QUEUE_SIZE
    }
    fn config_len(&self) -> u32 {
        0
    }
    fn read_config(&self, _offset: u32, _data: &mut [u8]) {}

    fn process<M: GuestMemory + ?Sized>(
        &mut self,
        _queue: u16,
        chain: &DescriptorChain,
        mem: &M,
    ) -> Completion<RngError> {
        if chain.readable_len() > 0 {
            return Completion::failed(0, RngError::ReadableBuffer);
        }
        let want = chain.writable_len().min(MAX_BYTES_PER_REQUEST);
        let mut writer = chain.writer(0, want);
        let mut block = [0u8; 256];
        while writer.remaining() > 0 {
            let n = (writer.remaining() as usize).min(block.len());
            let got = match self.source.fill(&mut block[..n]) {
                Ok(0) => break,
                Ok(got) => got.min(n),
                Err(e) => return Completion::failed(writer.written(), RngError::Source(e)),
            };
            if let Err(e) = writer.write_all(mem, &block[..got]) {
                let error = match e {
                    ferry_virtio::ReadError::Memory(m) => RngError::Memory(m),
                    // Cannot happen: `got` never exceeds what remains.
                    ferry_virtio::ReadError::Short { .. } => break,
                };
                return Completion::failed(writer.written(), error);
            }
            self.served_bytes += got as u64;
        }
        Completion::ok(writer.written())
    }
}
