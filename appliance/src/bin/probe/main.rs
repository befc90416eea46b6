//! `probe`: a plain virtio-mmio frontend that exercises a Ferry backend exactly as a standard
//! guest would, and reports its own verdict.
//!
//! Bootargs (the contract, /tmp/ferry/contract.md): `probe.mode=grant|direct`,
//! `probe.backend=<domid>` (grant mode), `probe.device=blk|rng`, `probe.mib=<N>` (default 4),
//! `probe.seed=<u32>` (default 1), `probe.hostile=<flag,...>`, `probe.bench=1`.
//!
//! 1. Finds the first `/passthrough` node with compatible "virtio,mmio", maps it and checks it is
//!    a version-2 device of the expected type (`window`).
//! 2. Grant mode: maps our grant table; every DMA buffer virtio-drivers asks for is granted to
//!    the backend at consecutive refs and named by its grant address (`hal::GrantHal`). Direct
//!    mode: the domain is direct-mapped and owns the physical device; DMA is the identity
//!    (`hal::DirectHal`), the bench baseline.
//! 3. Runs the workload (`blk`: pattern write, flush, read back and verify, optionally the bench
//!    passes; `rng`: 64 KiB of entropy checked), then each hostile variant (`hostile`, with the
//!    by-hand queue of `rawq`).
//! 4. On success resets the device (Status = 0) as its very last action and powers off; on any
//!    failure prints `ferry: probe failed: <what>` and crashes.
//!
//! virtio-drivers 0.13 negotiates a fixed feature set per device that does not include
//! VIRTIO_F_ACCESS_PLATFORM, which a grant-based backend requires (it refuses FEATURES_OK
//! without it). So the probe wraps virtio-drivers' `MmioTransport` in `transport::ProbeTransport`,
//! which accepts it whenever the device offers it, as Linux does, and checks after each driver's
//! init that the device took FEATURES_OK and DRIVER_OK; the first negotiation is printed
//! (`ferry: probe: negotiated features <hex>`). Grant mode also checks that the device offers
//! it; QEMU's device in direct mode does not. The by-hand queue (`rawq`) accepts it too.
#![cfg_attr(target_os = "none", no_std, no_main)]

extern crate alloc;

#[cfg_attr(
    not(all(target_arch = "aarch64", target_os = "none")),
    allow(dead_code)
)]
mod plan;

#[cfg(all(target_arch = "aarch64", target_os = "none"))]
mod blk;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
mod hal;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
mod hostile;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
mod rawq;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
mod rng;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
mod transport;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
mod window;

#[cfg(all(target_arch = "aarch64", target_os = "none"))]
ferry_appliance::entry!(probe);

#[cfg(all(target_arch = "aarch64", target_os = "none"))]
fn probe(boot: &ferry_appliance::BootInfo) -> ferry_appliance::Exit {
    match app::run(boot) {
        Ok(window) => {
            // The very last action: a clean end for the backend.
            if let Err(what) = window.reset() {
                ferry_appliance::println!("ferry: probe failed: final reset: {what}");
                return ferry_appliance::Exit::Failure;
            }
            ferry_appliance::Exit::Success
        }
        Err(what) => {
            ferry_appliance::println!("ferry: probe failed: {what}");
            ferry_appliance::Exit::Failure
        }
    }
}

#[cfg(all(target_arch = "aarch64", target_os = "none"))]
mod app {
    use alloc::format;
    use alloc::string::String;

    use ferry_appliance::xen::grant::GrantTable;
    use ferry_appliance::{println, xen, BootInfo};

    use crate::hal::{self, DirectHal, GrantHal, ProbeHal};
    use crate::plan::{Config, DeviceKind, Mode};
    use crate::window::{Window, F_ACCESS_PLATFORM};
    use crate::{blk, hostile, rng};

    /// Runs everything the bootargs ask for; returns the window to reset at the very end.
    pub fn run(boot: &BootInfo) -> Result<Window, String> {
        let config = Config::parse(|key| boot.arg(key))?;
        let window = Window::find(boot, config.device.device_id())?;
        let features = window.device_features();
        println!(
            "ferry: probe: {} at {:#x}, {} mode, device features {features:#x}",
            config.device.name(),
            window.base,
            match config.mode {
                Mode::Grant => "grant",
                Mode::Direct => "direct",
            }
        );
        match config.mode {
            Mode::Grant => {
                if features & F_ACCESS_PLATFORM == 0 {
                    return Err(format!(
                        "grant mode: the device does not offer VIRTIO_F_ACCESS_PLATFORM \
                         (features {features:#x})"
                    ));
                }
                let backend = config.backend.ok_or("grant mode without probe.backend")?;
                let info = xen::init(boot.platform.hypervisor.as_ref())
                    .map_err(|error| format!("xen: {error}"))?;
                let table = GrantTable::map(info.grant_table_base, info.grant_table_size)
                    .map_err(|error| format!("grant table: {error}"))?;
                let entries = hal::init_grants(table, backend);
                println!("ferry: probe: granting to d{backend}, {entries} grant entries");
                workload::<GrantHal>(boot, &config, &window)?;
                let (granted, live, in_use) = hal::grant_counts();
                println!(
                    "ferry: probe: grants: {granted} made, {live} still granted, {in_use} found \
                     in use when ended"
                );
                if hal::in_use_at_end() > 0 {
                    return Err(format!(
                        "{in_use} grants were still in use by the backend when ended"
                    ));
                }
            }
            Mode::Direct => workload::<DirectHal>(boot, &config, &window)?,
        }
        Ok(window)
    }

    /// Prints `ferry: ready probe ticks=<since entry> freq=<hz>` (boot to a usable device).
    fn ready(boot: &BootInfo) {
        println!(
            "ferry: ready probe ticks={} freq={}",
            boot.ticks_since_entry(),
            boot.counter_frequency
        );
    }

    /// The device's workload, then the hostile variants in order.
    fn workload<H: ProbeHal>(
        boot: &BootInfo,
        config: &Config,
        window: &Window,
    ) -> Result<(), String> {
        match config.device {
            DeviceKind::Blk => {
                let mut disk = blk::open::<H>(window)?;
                ready(boot);
                blk::verify(&mut disk, config.mib, config.seed)?;
                if config.bench {
                    blk::bench(&mut disk, config.mib * 2048)?;
                }
            }
            DeviceKind::Rng => {
                let mut device = rng::open::<H>(window)?;
                ready(boot);
                rng::verify(&mut device)?;
            }
        }
        for &flag in &config.hostile {
            hostile::run::<H>(flag, window, config)?;
        }
        Ok(())
    }
}

#[cfg(not(target_os = "none"))]
fn main() -> std::process::ExitCode {
    ferry_appliance::host::refuse_to_run("probe")
}
