//! Device lifecycle: status, feature negotiation, queues, config space (spec 2.1-2.5, 3.1).
//!
//! [`Device`] is what a transport talks to. It wraps one [`DeviceModel`] (rng, blk, ...) and
//! enforces the order of initialisation: features may change only before FEATURES_OK, FEATURES_OK
//! is refused if the driver asked for a feature we did not offer, left out VERSION_1 or left out a
//! feature the transport requires (ACCESS_PLATFORM for grant-based transports), queues run only
//! after DRIVER_OK, status bits are cleared only by a reset (writing 0). Anything the driver
//! gets wrong is recorded as a [`Fault`] (readable by the appliance for logs and by tests) and never
//! panics. A fatal queue error sets DEVICE_NEEDS_RESET and raises a configuration interrupt.

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::fmt::Debug;

use crate::features::*;
use crate::memory::GuestMemory;
use crate::queue::{DescriptorChain, Queue, QueueConfigError, QueueError};
use crate::Blame;

/// How many faults are kept for inspection; older ones are dropped (and counted).
pub const FAULT_LOG_LEN: usize = 32;

/// An error a device model reports for one request.
pub trait RequestError: Copy + Debug + PartialEq {
    /// Whose fault the error is.
    fn blame(&self) -> Blame;
}

/// The outcome of one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion<E> {
    /// Bytes written into the chain's writable buffers (the used-ring length).
    pub used_len: u32,
    /// What went wrong, if anything (the request is completed either way).
    pub error: Option<E>,
}

impl<E> Completion<E> {
    /// A successful completion.
    pub fn ok(used_len: u32) -> Self {
        Completion {
            used_len,
            error: None,
        }
    }
    /// A failed completion that still wrote `used_len` bytes (e.g. a status byte).
    pub fn failed(used_len: u32, error: E) -> Self {
        Completion {
            used_len,
            error: Some(error),
        }
    }
}

/// One virtio device type: what it offers and how it serves a request.
pub trait DeviceModel {
    /// The model's per-request error.
    type Error: RequestError;

    /// Virtio device ID (spec 5: 2 = block, 4 = entropy, ...).
    fn device_id(&self) -> u32;
    /// Device-specific feature bits offered (the common bits are added by [`Device`]).
    fn features(&self) -> u64;
    /// Number of virtqueues.
    fn queue_count(&self) -> u16;
    /// Largest size of queue `index`.
    fn queue_max_size(&self, index: u16) -> u16;
    /// Size of the device-specific configuration space in bytes.
    fn config_len(&self) -> u32;
    /// Reads config bytes `offset .. offset + data.len()`; the range is within `config_len`.
    fn read_config(&self, offset: u32, data: &mut [u8]);
    /// Writes config bytes; returns false if the field is read-only.
    fn write_config(&mut self, offset: u32, data: &[u8]) -> bool {
        let _ = (offset, data);
        false
    }
    /// Called when the driver sets DRIVER_OK, with the negotiated features.
    fn activate(&mut self, features: u64) {
        let _ = features;
    }
    /// Called on device reset.
    fn reset(&mut self) {}
    /// Serves one validated chain from queue `queue`.
    fn process<M: GuestMemory + ?Sized>(
        &mut self,
        queue: u16,
        chain: &DescriptorChain,
        mem: &M,
    ) -> Completion<Self::Error>;
}

/// A driver mistake in the initialisation or control protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LifecycleError {
    /// The driver tried to clear status bits without a reset (spec 2.1.1).
    StatusBitCleared {
        /// Status before.
        old: u8,
        /// Status written.
        new: u8,
    },
    /// FEATURES_OK refused: the driver accepted features the device did not offer.
    FeaturesNotOffered {
        /// Features the driver wrote.
        requested: u64,
        /// Features the device offered.
        offered: u64,
    },
    /// FEATURES_OK refused: the driver did not accept VIRTIO_F_VERSION_1 (we are not legacy).
    LegacyDriver,
    /// FEATURES_OK refused: the driver did not accept features the transport requires (e.g.
    /// VIRTIO_F_ACCESS_PLATFORM on a grant-based transport: without it the driver would put
    /// guest-physical addresses in the rings, which the device cannot reach; spec 6.1).
    RequiredFeatureMissing {
        /// The required features the driver did not accept.
        missing: u64,
    },
    /// The driver wrote features after FEATURES_OK.
    FeaturesAfterFeaturesOk,
    /// The driver set DRIVER_OK without FEATURES_OK.
    DriverOkWithoutFeaturesOk,
    /// A queue index the device does not have.
    NoSuchQueue(u16),
    /// A queue configuration refused when enabling it.
    QueueConfig {
        /// Queue index.
        queue: u16,
        /// What was wrong.
        error: QueueConfigError,
    },
    /// A queue was changed while the device was running.
    QueueChangedWhileRunning(u16),
    /// A notification before DRIVER_OK, or after the device failed.
    NotifyWhileStopped(u16),
    /// A write to a read-only or nonexistent config field.
    ConfigWriteRefused {
        /// Offset of the write.
        offset: u32,
        /// Length of the write.
        len: u32,
    },
}

/// Something that went wrong, recorded by [`Device`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault<E> {
    /// A control-path mistake.
    Lifecycle(LifecycleError),
    /// A ring-level error on a queue.
    Queue {
        /// Queue index.
        queue: u16,
        /// The error.
        error: QueueError,
    },
    /// A request the device model could not serve as asked.
    Request {
        /// Queue index.
        queue: u16,
        /// Head of the request's chain.
        head: u16,
        /// The model's error.
        error: E,
    },
}

impl<E: RequestError> Fault<E> {
    /// Whose fault it is.
    pub fn blame(&self) -> Blame {
        match self {
            Fault::Lifecycle(_) => Blame::Frontend,
            Fault::Queue { error, .. } => error.blame(),
            Fault::Request { error, .. } => error.blame(),
        }
    }
}

/// A virtio device: a model plus the state every device type shares.
#[derive(Debug)]
pub struct Device<D: DeviceModel> {
    model: D,
    status: u8,
    offered: u64,
    required: u64,
    driver_features: u64,
    high_features: bool,
    queues: Vec<Queue>,
    config_generation: u32,
    interrupt_status: u32,
    faults: VecDeque<Fault<D::Error>>,
    faults_dropped: u64,
    requests: u64,
}

impl<D: DeviceModel> Device<D> {
    /// A device offering the model's features plus VERSION_1, INDIRECT_DESC and EVENT_IDX, and
    /// `transport_features`.
    ///
    /// `transport_features` are features the transport *requires*, not merely offers: FEATURES_OK
    /// is refused ([`LifecycleError::RequiredFeatureMissing`]) unless the driver accepts all of
    /// them. A grant-based transport passes VIRTIO_F_ACCESS_PLATFORM: the device reaches only
    /// memory the frontend granted, so a driver that does not accept it (and would put
    /// guest-physical addresses in the rings) could never be served (spec 6.1 lets the device
    /// fail then). Pass 0 for a transport that reaches guest memory directly.
    pub fn new(model: D, transport_features: u64) -> Self {
        let offered = model.features()
            | VIRTIO_F_VERSION_1
            | VIRTIO_F_INDIRECT_DESC
            | VIRTIO_F_EVENT_IDX
            | transport_features;
        let queues = (0..model.queue_count())
            .map(|i| Queue::new(model.queue_max_size(i)))
            .collect();
        Device {
            model,
            status: 0,
            offered,
            required: transport_features,
            driver_features: 0,
            high_features: false,
            queues,
            config_generation: 0,
            interrupt_status: 0,
            faults: VecDeque::new(),
            faults_dropped: 0,
            requests: 0,
        }
    }

    /// The device model.
    pub fn model(&self) -> &D {
        &self.model
    }
    /// The device model, mutably (call [`Device::config_changed`] after changing its config).
    pub fn model_mut(&mut self) -> &mut D {
        &mut self.model
    }
    /// Virtio device ID.
    pub fn device_id(&self) -> u32 {
        self.model.device_id()
    }
    /// Features the device offers.
    pub fn device_features(&self) -> u64 {
        self.offered
    }
    /// Features the driver must accept for FEATURES_OK (the transport's, see [`Device::new`]).
    pub fn required_features(&self) -> u64 {
        self.required
    }
    /// Features the driver has written so far.
    pub fn driver_features(&self) -> u64 {
        self.driver_features
    }
    /// Negotiated features (valid once FEATURES_OK is set).
    pub fn negotiated_features(&self) -> u64 {
        if self.status & STATUS_FEATURES_OK != 0 {
            self.driver_features
        } else {
            0
        }
    }
    /// The device status byte.
    pub fn status(&self) -> u8 {
        self.status
    }
    /// The configuration generation counter (spec 2.5.1).
    pub fn config_generation(&self) -> u32 {
        self.config_generation
    }
    /// Pending interrupt reasons (INTERRUPT_USED_BUFFER, INTERRUPT_CONFIG_CHANGE).
    pub fn interrupt_status(&self) -> u32 {
        self.interrupt_status
    }
    /// Clears the given interrupt reasons (InterruptACK).
    pub fn ack_interrupt(&mut self, bits: u32) {
        self.interrupt_status &= !bits;
    }
    /// Number of queues.
    pub fn queue_count(&self) -> u16 {
        self.queues.len() as u16
    }
    /// Queue `index`, if it exists.
    pub fn queue(&self, index: u16) -> Option<&Queue> {
        self.queues.get(usize::from(index))
    }
    /// Requests served (successfully or not) since creation.
    pub fn requests(&self) -> u64 {
        self.requests
    }

    /// Takes the recorded faults, oldest first.
    pub fn take_faults(&mut self) -> Vec<Fault<D::Error>> {
        self.faults.drain(..).collect()
    }
    /// Faults dropped because the log was full.
    pub fn faults_dropped(&self) -> u64 {
        self.faults_dropped
    }

    fn record(&mut self, fault: Fault<D::Error>) {
        log::debug!("virtio device {}: {:?}", self.model.device_id(), fault);
        if self.faults.len() == FAULT_LOG_LEN {
            self.faults.pop_front();
            self.faults_dropped += 1;
        }
        self.faults.push_back(fault);
    }

    fn lifecycle(&mut self, error: LifecycleError) {
        self.record(Fault::Lifecycle(error));
    }

    /// Writes one 32-bit word of the driver feature bits (word 0 = bits 0-31, 1 = bits 32-63).
    pub fn set_driver_features_word(&mut self, word: u32, value: u32) {
        if self.status & STATUS_FEATURES_OK != 0 {
            self.lifecycle(LifecycleError::FeaturesAfterFeaturesOk);
            return;
        }
        match word {
            0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(value),
            1 => {
                self.driver_features =
                    (self.driver_features & 0xffff_ffff) | (u64::from(value) << 32)
            }
            // Bits beyond 63 are never offered; accepting one makes FEATURES_OK fail.
            _ => self.high_features |= value != 0,
        }
    }

    /// Writes all 64 driver feature bits.
    pub fn set_driver_features(&mut self, features: u64) {
        if self.status & STATUS_FEATURES_OK != 0 {
            self.lifecycle(LifecycleError::FeaturesAfterFeaturesOk);
            return;
        }
        self.set_driver_features_word(0, features as u32);
        self.set_driver_features_word(1, (features >> 32) as u32);
    }

    /// Writes the status register (spec 2.1, 3.1.1). Writing 0 resets the device.
    pub fn set_status(&mut self, new: u8) {
        if new == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        let sticky = old & STATUS_DEVICE_NEEDS_RESET;
        let requested = new & !STATUS_DEVICE_NEEDS_RESET;
        if old & !STATUS_DEVICE_NEEDS_RESET & !requested != 0 {
            self.lifecycle(LifecycleError::StatusBitCleared { old, new });
            return;
        }
        let mut accepted = requested | sticky;
        let added = accepted & !old;
        if added & STATUS_FEATURES_OK != 0 && !self.accept_features() {
            accepted &= !STATUS_FEATURES_OK;
        }
        if added & STATUS_DRIVER_OK != 0 && accepted & STATUS_FEATURES_OK == 0 {
            self.lifecycle(LifecycleError::DriverOkWithoutFeaturesOk);
            accepted &= !STATUS_DRIVER_OK;
        }
        self.status = accepted;
        if accepted & !old & STATUS_DRIVER_OK != 0 {
            self.model.activate(self.driver_features);
        }
    }

    fn accept_features(&mut self) -> bool {
        let requested = self.driver_features;
        if requested & !self.offered != 0 || self.high_features {
            self.lifecycle(LifecycleError::FeaturesNotOffered {
                requested,
                offered: self.offered,
            });
            return false;
        }
        if requested & VIRTIO_F_VERSION_1 == 0 {
            self.lifecycle(LifecycleError::LegacyDriver);
            return false;
        }
        let missing = self.required & !requested;
        if missing != 0 {
            self.lifecycle(LifecycleError::RequiredFeatureMissing { missing });
            return false;
        }
        for q in &mut self.queues {
            q.set_features(requested);
        }
        true
    }

    /// Resets the device to its initial state (spec 2.4).
    pub fn reset(&mut self) {
        self.status = 0;
        self.driver_features = 0;
        self.high_features = false;
        self.interrupt_status = 0;
        for q in &mut self.queues {
            q.reset();
        }
        self.model.reset();
    }

    fn running(&self) -> bool {
        self.status & STATUS_DRIVER_OK != 0
            && self.status & (STATUS_DEVICE_NEEDS_RESET | STATUS_FAILED) == 0
    }

    /// Configures queue `index` (size and ring addresses) and enables or disables it.
    /// Refused (and recorded) while the device is running or when the layout is invalid.
    pub fn configure_queue(
        &mut self,
        index: u16,
        size: u16,
        rings: (u64, u64, u64),
        ready: bool,
    ) -> bool {
        if usize::from(index) >= self.queues.len() {
            self.lifecycle(LifecycleError::NoSuchQueue(index));
            return false;
        }
        if self.status & STATUS_DRIVER_OK != 0 {
            self.lifecycle(LifecycleError::QueueChangedWhileRunning(index));
            return false;
        }
        let features = self.negotiated_features();
        let q = &mut self.queues[usize::from(index)];
        q.set_size(size);
        q.set_addresses(rings.0, rings.1, rings.2);
        q.set_features(features);
        match q.set_ready(ready) {
            Ok(()) => true,
            Err(error) => {
                self.lifecycle(LifecycleError::QueueConfig {
                    queue: index,
                    error,
                });
                false
            }
        }
    }

    /// The driver notified queue `index`: serve every available chain. Returns true if the
    /// frontend must be interrupted (used buffers under the suppression rules, or NEEDS_RESET).
    pub fn notify<M: GuestMemory + ?Sized>(&mut self, index: u16, mem: &M) -> bool {
        if usize::from(index) >= self.queues.len() {
            self.lifecycle(LifecycleError::NoSuchQueue(index));
            return false;
        }
        if !self.running() {
            self.lifecycle(LifecycleError::NotifyWhileStopped(index));
            return false;
        }
        if !self.queues[usize::from(index)].ready() {
            return false;
        }
        match self.drain(index, mem) {
            Ok(interrupt) => {
                if interrupt {
                    self.interrupt_status |= INTERRUPT_USED_BUFFER;
                }
                interrupt
            }
            Err(error) => {
                self.record(Fault::Queue {
                    queue: index,
                    error,
                });
                self.status |= STATUS_DEVICE_NEEDS_RESET;
                self.interrupt_status |= INTERRUPT_CONFIG_CHANGE;
                true
            }
        }
    }

    fn drain<M: GuestMemory + ?Sized>(&mut self, index: u16, mem: &M) -> Result<bool, QueueError> {
        let i = usize::from(index);
        loop {
            self.queues[i].set_notification(mem, false)?;
            loop {
                match self.queues[i].pop(mem) {
                    Ok(Some(chain)) => {
                        self.requests += 1;
                        let done = self.model.process(index, &chain, mem);
                        self.queues[i].add_used(mem, chain.head(), done.used_len)?;
                        if let Some(error) = done.error {
                            self.record(Fault::Request {
                                queue: index,
                                head: chain.head(),
                                error,
                            });
                        }
                    }
                    Ok(None) => break,
                    Err(error) if !error.is_fatal() => {
                        self.requests += 1;
                        self.record(Fault::Queue {
                            queue: index,
                            error,
                        });
                    }
                    Err(error) => return Err(error),
                }
            }
            self.queues[i].set_notification(mem, true)?;
            // A buffer added between the last pop and re-enabling would otherwise wait forever.
            if !self.queues[i].has_available(mem)? {
                break;
            }
        }
        self.queues[i].needs_interrupt(mem)
    }

    /// Reads device config bytes; bytes outside the config space read as zero.
    pub fn read_config(&self, offset: u32, data: &mut [u8]) {
        data.fill(0);
        let len = self.model.config_len();
        if offset >= len {
            return;
        }
        let n = data.len().min((len - offset) as usize);
        self.model.read_config(offset, &mut data[..n]);
    }

    /// Writes device config bytes (most fields are read-only; refused writes are recorded).
    pub fn write_config(&mut self, offset: u32, data: &[u8]) {
        let len = data.len() as u32;
        let inside = offset
            .checked_add(len)
            .is_some_and(|end| end <= self.model.config_len());
        if !inside || !self.model.write_config(offset, data) {
            self.lifecycle(LifecycleError::ConfigWriteRefused { offset, len });
        }
    }

    /// The device changed its configuration (e.g. disk resized): bump the generation and raise
    /// a configuration interrupt. Returns true if the frontend should be interrupted now.
    pub fn config_changed(&mut self) -> bool {
        self.config_generation = self.config_generation.wrapping_add(1);
        if self.status & STATUS_DRIVER_OK != 0 {
            self.interrupt_status |= INTERRUPT_CONFIG_CHANGE;
            true
        } else {
            false
        }
    }
}
