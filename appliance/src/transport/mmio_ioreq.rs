//! The mmio-ioreq transport's serve loop: a virtio-mmio register window of the frontend, trapped
//! by Xen and forwarded to us as ioreqs, emulated by a [`MmioDevice`] whose buffers are reached
//! through [`GrantMemory`] (docs/transport-mmio-ioreq.md). While a queue is enabled its ring
//! pages are mapped (section 8 there): [`Serve::rings`] says where they are, and the loop maps
//! and unmaps them after register writes, before it answers the write.
//!
//! [`Serve`] is the target-independent part (tested on the host): it answers one request of a
//! slot - reads inside the window return the register's value, writes are applied; accesses
//! outside the window read all-ones and are ignored; `IOREQ_TYPE_INVALIDATE` is answered like a
//! write - then, once the request is answered, serves the queue a `QueueNotify` named and says
//! when the interrupt line changes level. The line is level-triggered: asserted with
//! `XEN_DMOP_set_irq_level(intid, 1)` while InterruptStatus is non-zero, deasserted when the
//! driver's InterruptACK clears it (virtio 1.2 section 4.2.3.4).
//!
//! [`run`] (bare metal) wires it to Xen: reads the `ioreq.*` bootargs, starts the ioreq server,
//! prints `ferry: serve: <device> ready for d<frontend> at <base> irq <intid> ticks=<n>
//! freq=<hz>` (ticks from the image's entry) and serves
//! forever, waiting for ioreq events in `wfi` between requests. When the frontend resets the
//! device (Status = 0 after it was in use) it prints
//! `ferry: serve: stats requests=<n> faults=<n> ...`. Frontend faults are logged at `warn` with
//! whose fault they are, and never stop the loop.

use ferry_virtio::{DeviceModel, GuestMemory};
use ferry_virtio_mmio::{MmioDevice, MmioEffect};

use crate::transport::grant_memory::RingLayout;
use crate::xen::abi::DomId;
use crate::xen::ioreq::{mask_to_size, IoRequest};

/// Offset of the Status register (virtio 1.2 section 4.2.2).
const STATUS_OFFSET: u64 = 0x70;

/// The frontend's register window and interrupt for one device, from the bootargs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// The frontend domain (`ioreq.frontend`).
    pub frontend: DomId,
    /// Guest physical base of the window (`ioreq.base`).
    pub base: u64,
    /// Its size (`ioreq.size`).
    pub size: u64,
    /// The SPI's GIC INTID (`ioreq.irq`).
    pub intid: u32,
}

/// A missing or malformed `ioreq.*` bootarg (a configuration error).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The bootarg.
    pub key: &'static str,
    /// What is wrong with it.
    pub what: &'static str,
}

impl core::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "bootarg {}: {}", self.key, self.what)
    }
}

/// Parses a decimal or `0x` hexadecimal number.
fn number(text: &str) -> Option<u64> {
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

impl Config {
    /// Reads `ioreq.frontend`, `ioreq.base`, `ioreq.size` and `ioreq.irq` through `arg` (e.g.
    /// `BootInfo::arg`) and checks them: a real domain, a non-empty page-contained window that
    /// does not wrap, an SPI of Xen's virtio range 33..=43 (xen/include/public/arch-arm.h).
    pub fn from_args<'a>(arg: impl Fn(&str) -> Option<&'a str>) -> Result<Config, ConfigError> {
        let get = |key: &'static str| {
            let text = arg(key).ok_or(ConfigError {
                key,
                what: "missing",
            })?;
            number(text).ok_or(ConfigError {
                key,
                what: "not a number",
            })
        };
        let frontend = get("ioreq.frontend")?;
        let frontend = DomId::try_from(frontend)
            .ok()
            .filter(|&domid| domid > 0 && domid < crate::xen::abi::DOMID_FIRST_RESERVED)
            .ok_or(ConfigError {
                key: "ioreq.frontend",
                what: "not a domU id",
            })?;
        let base = get("ioreq.base")?;
        let size = get("ioreq.size")?;
        if size < ferry_virtio_mmio::CONFIG_OFFSET || base.checked_add(size).is_none() {
            return Err(ConfigError {
                key: "ioreq.size",
                what: "window smaller than the register file, or wrapping",
            });
        }
        let intid = get("ioreq.irq")?;
        let intid = u32::try_from(intid)
            .ok()
            .filter(|intid| (33..=43).contains(intid))
            .ok_or(ConfigError {
                key: "ioreq.irq",
                what: "not one of Xen's virtio SPIs 33..=43",
            })?;
        Ok(Config {
            frontend,
            base,
            size,
            intid,
        })
    }

    /// Whether an access of `size` bytes at `addr` lies inside the window.
    pub fn contains(&self, addr: u64, size: u32) -> bool {
        addr >= self.base
            && addr
                .checked_add(u64::from(size))
                .is_some_and(|end| end <= self.base + self.size)
    }
}

/// Counters of one served device, cumulative over resets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Ioreqs answered (all kinds).
    pub ioreqs: u64,
    /// QueueNotify writes served.
    pub notifies: u64,
    /// Times the interrupt line was asserted.
    pub interrupts: u64,
    /// Accesses outside the window, with a pointer, or of an unknown type (answered, ignored).
    pub outside: u64,
    /// `IOREQ_TYPE_INVALIDATE` broadcasts answered.
    pub invalidates: u64,
    /// Faults recorded (register level and device level).
    pub faults: u64,
}

/// What the transport does with one answered request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The value for the slot's `data` (the read value, masked to the access size).
    pub data: u64,
    /// A queue to serve after the answer.
    pub effect: MmioEffect,
    /// The frontend reset a device that was in use (time for a stats line).
    pub reset: bool,
}

/// One virtio-mmio device served through ioreqs: everything but the hypercalls.
#[derive(Debug)]
pub struct Serve<D: DeviceModel> {
    device: MmioDevice<D>,
    config: Config,
    line: bool,
    stats: Stats,
}

impl<D: DeviceModel> Serve<D> {
    /// Serves `device` in the window `config` names. The line starts deasserted.
    pub fn new(device: MmioDevice<D>, config: Config) -> Self {
        Serve {
            device,
            config,
            line: false,
            stats: Stats::default(),
        }
    }

    /// The device.
    pub fn device(&self) -> &MmioDevice<D> {
        &self.device
    }

    /// The window.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The counters so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Virtio requests the device completed so far.
    pub fn requests(&self) -> u64 {
        self.device.device().requests()
    }

    /// Number of queues of the device.
    pub fn queue_count(&self) -> u16 {
        self.device.device().queue_count()
    }

    /// Where queue `index`'s rings are while the driver has the queue enabled (QueueReady
    /// reads 1); `None` before, after it stopped the queue, and after a reset.
    pub fn rings(&self, index: u16) -> Option<RingLayout> {
        if !self.device.queue_enabled(index) {
            return None;
        }
        let queue = self.device.device().queue(index)?;
        let (desc, avail, used) = queue.addresses();
        Some(RingLayout {
            desc,
            avail,
            used,
            size: queue.size(),
        })
    }

    /// Answers one request of a slot.
    pub fn access(&mut self, request: &IoRequest) -> Answer {
        self.stats.ioreqs += 1;
        let mut answer = Answer {
            data: 0,
            effect: MmioEffect::None,
            reset: false,
        };
        if request.is_invalidate() {
            self.stats.invalidates += 1;
            return answer;
        }
        let usable = request.is_mmio()
            && !request.data_is_ptr
            && request.count <= 1
            && self.config.contains(request.addr, request.size);
        if !usable {
            self.stats.outside += 1;
            log::warn!(
                "serve: frontend access ignored (Blame::Frontend): type {} {} of {} bytes at {:#x}{}",
                request.r#type,
                if request.write { "write" } else { "read" },
                request.size,
                request.addr,
                if request.data_is_ptr { " (data is a pointer)" } else { "" }
            );
            if !request.write {
                answer.data = mask_to_size(u64::MAX, request.size);
            }
            return answer;
        }
        let offset = request.addr - self.config.base;
        let size = request.size as u8;
        if request.write {
            let was_in_use = self.device.device().status() != 0;
            answer.effect = self.device.write(offset, size, request.data as u32);
            answer.reset = offset == STATUS_OFFSET && request.data == 0 && was_in_use;
        } else {
            answer.data = mask_to_size(u64::from(self.device.read(offset, size)), request.size);
        }
        answer
    }

    /// Serves what an answered request's `effect` asks for (a notified queue).
    pub fn serve<M: GuestMemory + ?Sized>(&mut self, effect: MmioEffect, memory: &M) {
        if let MmioEffect::Notify(queue) = effect {
            self.stats.notifies += 1;
            self.device.notify(queue, memory);
        }
    }

    /// The new level of the interrupt line if it must change: asserted while InterruptStatus
    /// is non-zero, deasserted once the driver acknowledged every bit.
    pub fn line_change(&mut self) -> Option<bool> {
        let level = self.device.interrupt_line();
        if level == self.line {
            return None;
        }
        self.line = level;
        if level {
            self.stats.interrupts += 1;
        }
        Some(level)
    }

    /// Logs (at `warn`, with whose fault it is) and counts the faults recorded since the last
    /// call.
    pub fn log_faults(&mut self) {
        for error in self.device.take_errors() {
            self.stats.faults += 1;
            log::warn!("serve: {:?}: {error}", error.blame());
        }
        for fault in self.device.take_device_faults() {
            self.stats.faults += 1;
            log::warn!("serve: {:?}: {fault:?}", fault.blame());
        }
    }
}

impl Stats {
    /// Writes the contract's stats line (without the `ferry: serve: ` prefix) for a device
    /// that completed `requests` virtio requests.
    pub fn line(&self, requests: u64) -> impl core::fmt::Display + '_ {
        struct Line<'a>(&'a Stats, u64);
        impl core::fmt::Display for Line<'_> {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                let s = self.0;
                write!(
                    f,
                    "stats requests={} faults={} ioreqs={} notifies={} interrupts={} \
                     outside={} invalidates={}",
                    self.1, s.faults, s.ioreqs, s.notifies, s.interrupts, s.outside, s.invalidates
                )
            }
        }
        Line(self, requests)
    }
}

#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub use self::xen_calls::run;

#[cfg(all(target_arch = "aarch64", target_os = "none"))]
mod xen_calls {
    use alloc::format;
    use alloc::string::String;
    use alloc::vec::Vec;
    use core::convert::Infallible;

    use super::*;
    use crate::platform::Region;
    use crate::transport::grant_memory::{GrantMemory, RING_WINDOW_PAGES};
    use crate::xen::ioreq::{choose_frames, IoreqServer};
    use crate::{irq, xen, BootInfo, Exit};

    /// Serves `device` (named `name` in log lines: `blk`, `rng`) to the frontend the `ioreq.*`
    /// bootargs name. Returns only if it cannot start, with [`Exit::Failure`] after printing
    /// `ferry: serve: <name> failed: <why>`.
    pub fn run<D: DeviceModel>(boot: &BootInfo, name: &str, device: MmioDevice<D>) -> Exit {
        match start(boot, name, device) {
            Ok(never) => match never {},
            Err(error) => {
                crate::println!("ferry: serve: {name} failed: {error}");
                Exit::Failure
            }
        }
    }

    fn start<D: DeviceModel>(
        boot: &BootInfo,
        name: &str,
        device: MmioDevice<D>,
    ) -> Result<Infallible, String> {
        let config = Config::from_args(|key| boot.arg(key)).map_err(|e| format!("{e}"))?;
        let hypervisor = boot.platform.hypervisor.as_ref();
        let info = xen::init(hypervisor).map_err(|e| format!("xen: {e}"))?;
        let extended: &[Region] = hypervisor.map_or(&[], |h| &h.extended_regions);
        let mut taken: Vec<Region> = boot.platform.device_regions().collect();
        taken.push(Region::new(info.grant_table_base, info.grant_table_size));
        // The ioreq page, then the window ring pages are mapped into.
        let frame = choose_frames(boot.memory, extended, &taken, 1 + RING_WINDOW_PAGES as u64)
            .ok_or("no free guest frames for the ioreq page and the ring window")?;
        let server = IoreqServer::start(config.frontend, &[(config.base, config.size)], frame)
            .map_err(|e| format!("ioreq server for d{}: {e}", config.frontend))?;
        log::info!(
            "serve: {} for d{}, ioreq page at {:#x}, {} slot(s)",
            server.id(),
            config.frontend,
            frame * crate::xen::abi::PAGE_SIZE as u64,
            server.slot_count()
        );
        crate::println!(
            "ferry: serve: {name} ready for d{} at {:#x} irq {} ticks={} freq={}",
            config.frontend,
            config.base,
            config.intid,
            boot.ticks_since_entry(),
            boot.counter_frequency
        );
        irq::enable_cpu_interrupts();
        // SAFETY: the frames after the ioreq page were chosen with it, in a hole of our
        // address space, and nothing else uses them.
        let mut memory = unsafe { GrantMemory::with_ring_window(config.frontend, frame + 1) };
        let mut serve = Serve::new(device, config);
        let mut mapped: Vec<Option<RingLayout>> =
            alloc::vec![None; usize::from(serve.queue_count())];
        loop {
            // Every slot is looked at before the first wait: a request posted between
            // enabling the server and binding its port raised no event for us.
            for vcpu in 0..server.slot_count() {
                let Some(request) = server.pending(vcpu) else {
                    continue;
                };
                let answer = serve.access(&request);
                if request.write {
                    // Before answering: once a stop or reset is answered, the frontend may end
                    // the grants of its rings, which Xen refuses while we map them.
                    sync_rings(&serve, &mut memory, &mut mapped);
                }
                if let Err(error) = server.respond(vcpu, answer.data) {
                    log::error!(
                        "serve: cannot answer d{} vCPU {vcpu}: {error}",
                        config.frontend
                    );
                }
                serve.serve(answer.effect, &memory);
                if let Some(level) = serve.line_change() {
                    if let Err(error) = server.set_irq_level(config.intid, level) {
                        log::error!("serve: interrupt {}: {error}", config.intid);
                    }
                }
                serve.log_faults();
                if answer.reset {
                    crate::println!(
                        "ferry: serve: {} copies={} copy_calls={} mapped_accesses={} \
                         map_failures={}",
                        serve.stats().line(serve.requests()),
                        memory.copies(),
                        memory.hypercalls(),
                        memory.mapped_accesses(),
                        memory.map_failures()
                    );
                }
            }
            server.wait();
        }
    }

    /// Maps the rings of queues the driver enabled and unmaps those of queues it stopped (or
    /// reset), so that `mapped` matches [`Serve::rings`] again.
    fn sync_rings<D: DeviceModel>(
        serve: &Serve<D>,
        memory: &mut GrantMemory,
        mapped: &mut [Option<RingLayout>],
    ) {
        for (index, current) in mapped.iter_mut().enumerate() {
            let queue = index as u16;
            let wanted = serve.rings(queue);
            if wanted == *current {
                continue;
            }
            if current.is_some() {
                memory.unmap_rings(queue);
            }
            if let Some(layout) = &wanted {
                memory.map_rings(queue, layout);
                log::debug!(
                    "serve: queue {queue}: {} ring page(s) mapped",
                    memory.mapped_pages()
                );
            }
            *current = wanted;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xen::abi::IOREQ_TYPE_COPY;
    use ferry_backend_rng::Rng;
    use ferry_drivers::{DeviceError, EntropySource};
    use ferry_virtio::features::VIRTIO_F_ACCESS_PLATFORM;
    use ferry_virtio::MemoryError;
    use std::collections::HashMap;

    struct Counter(u8);
    impl EntropySource for Counter {
        fn fill(&mut self, buf: &mut [u8]) -> Result<usize, DeviceError> {
            for byte in buf.iter_mut() {
                self.0 = self.0.wrapping_add(1);
                *byte = self.0;
            }
            Ok(buf.len())
        }
    }

    struct NoMemory;
    impl GuestMemory for NoMemory {
        fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
            Err(MemoryError::new(addr, buf.len()))
        }
        fn write(&self, addr: u64, data: &[u8]) -> Result<(), MemoryError> {
            Err(MemoryError::new(addr, data.len()))
        }
    }

    fn config() -> Config {
        Config {
            frontend: 1,
            base: 0x200_0000,
            size: 0x200,
            intid: 33,
        }
    }

    fn serve() -> Serve<Rng<Counter>> {
        let device = MmioDevice::new(Rng::new(Counter(0)), VIRTIO_F_ACCESS_PLATFORM);
        Serve::new(device, config())
    }

    fn mmio(addr: u64, size: u32, write: Option<u64>) -> IoRequest {
        IoRequest {
            r#type: IOREQ_TYPE_COPY,
            addr,
            size,
            count: 1,
            write: write.is_some(),
            data: write.unwrap_or(0),
            data_is_ptr: false,
        }
    }

    #[test]
    fn bootargs_are_parsed_and_checked() {
        let args: HashMap<&str, &str> = [
            ("ioreq.frontend", "1"),
            ("ioreq.base", "0x2000000"),
            ("ioreq.size", "0x200"),
            ("ioreq.irq", "33"),
        ]
        .into();
        let parsed = Config::from_args(|key| args.get(key).copied()).unwrap();
        assert_eq!(parsed, config());
        let mut bad = args.clone();
        bad.insert("ioreq.irq", "79");
        assert_eq!(
            Config::from_args(|key| bad.get(key).copied())
                .unwrap_err()
                .key,
            "ioreq.irq"
        );
        let mut missing = args.clone();
        missing.remove("ioreq.frontend");
        let error = Config::from_args(|key| missing.get(key).copied()).unwrap_err();
        assert_eq!((error.key, error.what), ("ioreq.frontend", "missing"));
    }

    #[test]
    fn registers_are_read_through_the_window() {
        let mut serve = serve();
        let magic = serve.access(&mmio(0x200_0000, 4, None));
        assert_eq!(magic.data, 0x7472_6976);
        assert_eq!(serve.access(&mmio(0x200_0004, 4, None)).data, 2);
        assert_eq!(serve.access(&mmio(0x200_0008, 4, None)).data, 4);
        assert_eq!(serve.stats().ioreqs, 3);
        assert_eq!(serve.stats().outside, 0);
    }

    #[test]
    fn accesses_outside_the_window_read_all_ones() {
        let mut serve = serve();
        assert_eq!(serve.access(&mmio(0x200_0200, 4, None)).data, 0xffff_ffff);
        assert_eq!(serve.access(&mmio(0x200_01fe, 4, None)).data, 0xffff_ffff);
        assert_eq!(serve.access(&mmio(0x1ff_fffc, 2, None)).data, 0xffff);
        let write = serve.access(&mmio(0x300_0000, 4, Some(1)));
        assert_eq!(write.effect, MmioEffect::None);
        assert_eq!(serve.stats().outside, 4);
    }

    #[test]
    fn invalidate_is_answered_like_a_write() {
        let mut serve = serve();
        let request = IoRequest {
            r#type: crate::xen::abi::IOREQ_TYPE_INVALIDATE,
            ..mmio(0, 4, Some(u64::MAX))
        };
        let answer = serve.access(&request);
        assert_eq!(answer.effect, MmioEffect::None);
        assert_eq!(serve.stats().invalidates, 1);
        assert_eq!(serve.stats().outside, 0);
    }

    #[test]
    fn the_line_follows_interrupt_status_and_ack() {
        let mut serve = serve();
        assert_eq!(serve.line_change(), None);
        // Bring the device up: ACKNOWLEDGE | DRIVER, VERSION_1 | ACCESS_PLATFORM (required),
        // FEATURES_OK, DRIVER_OK.
        for (offset, value) in [(0x70, 3), (0x24, 1), (0x20, 3), (0x70, 11), (0x70, 15)] {
            let _ = serve.access(&mmio(0x200_0000 + offset, 4, Some(value)));
        }
        assert_eq!(serve.access(&mmio(0x200_0070, 4, None)).data, 15);
        // A configuration change raises InterruptStatus bit 1.
        assert!(serve.device.config_changed());
        assert_eq!(serve.line_change(), Some(true));
        assert_eq!(serve.line_change(), None);
        assert_eq!(serve.access(&mmio(0x200_0060, 4, None)).data, 2);
        let _ = serve.access(&mmio(0x200_0064, 4, Some(2)));
        assert_eq!(serve.line_change(), Some(false));
        assert_eq!(serve.stats().interrupts, 1);
    }

    #[test]
    fn rings_are_reported_while_the_queue_is_enabled() {
        let mut serve = serve();
        let write = |serve: &mut Serve<Rng<Counter>>, offset: u64, value: u64| {
            let _ = serve.access(&mmio(0x200_0000 + offset, 4, Some(value)));
        };
        for (offset, value) in [(0x70, 3), (0x24, 1), (0x20, 3), (0x70, 11)] {
            write(&mut serve, offset, value);
        }
        let grant = 1u64 << 63;
        // QueueSel 0, QueueNum 8, QueueDesc/Driver/Device (low, high halves).
        for (offset, value) in [
            (0x30, 0),
            (0x38, 8),
            (0x80, 0x8000),
            (0x84, grant >> 32),
            (0x90, 0x8100),
            (0x94, grant >> 32),
            (0xa0, 0x9000),
            (0xa4, grant >> 32),
        ] {
            write(&mut serve, offset, value);
        }
        assert_eq!(serve.queue_count(), 1);
        assert_eq!(serve.rings(0), None, "not enabled yet");
        write(&mut serve, 0x44, 1);
        let layout = RingLayout {
            desc: grant | 0x8000,
            avail: grant | 0x8100,
            used: grant | 0x9000,
            size: 8,
        };
        assert_eq!(serve.rings(0), Some(layout));
        assert_eq!(serve.rings(1), None, "no such queue");
        write(&mut serve, 0x70, 15);
        assert_eq!(serve.rings(0), Some(layout));
        // Stopped while running (virtio-drivers on drop): no longer in use.
        write(&mut serve, 0x44, 0);
        assert_eq!(serve.rings(0), None);
        // Reset.
        write(&mut serve, 0x70, 0);
        assert_eq!(serve.rings(0), None);
    }

    #[test]
    fn a_reset_of_a_used_device_asks_for_stats_and_faults_are_counted() {
        let mut serve = serve();
        // Reset of a fresh device: no stats.
        assert!(!serve.access(&mmio(0x200_0070, 4, Some(0))).reset);
        let _ = serve.access(&mmio(0x200_0070, 4, Some(1)));
        assert!(serve.access(&mmio(0x200_0070, 4, Some(0))).reset);
        // A notify before DRIVER_OK is refused and recorded.
        let notify = serve.access(&mmio(0x200_0050, 4, Some(0)));
        serve.serve(notify.effect, &NoMemory);
        // A 2-byte access to a control register is refused and recorded.
        let _ = serve.access(&mmio(0x200_0000, 2, None));
        serve.log_faults();
        assert!(serve.stats().faults >= 1);
        let line = std::format!("{}", serve.stats().line(serve.requests()));
        assert!(line.starts_with("stats requests=0 faults="), "{line}");
    }
}
