//! `blk`: serves the passed-through virtio-blk device to one frontend as a standard virtio-mmio
//! device over Xen IOREQ (docs/transport-mmio-ioreq.md).
//!
//! The physical device is the first `virtio,mmio` node under `/passthrough` (the domain must
//! be direct-mapped); the frontend and its window come from the bootargs `ioreq.frontend`,
//! `ioreq.base`, `ioreq.size` and `ioreq.irq`. It never returns while serving; it fails (crash
//! shutdown) if the device or the ioreq server cannot be set up.
//!
//! Fault injection: `blk.fail=<first sector>+<count>` (decimal) makes the physical disk "have a
//! bad range": reads and writes touching those sectors fail with an I/O error
//! (`ferry_drivers::FaultyDisk`), which the frontend sees as VIRTIO_BLK_S_IOERR and the serve
//! loop logs as a `PhysicalDevice` fault. A malformed value, or a range not on the disk, is a
//! boot error (`ferry: boot error: bootarg blk.fail=<value>: <why>`, crash shutdown).
//!
//! Dead disk: a read or write the physical device has not completed after `blk.timeout_ms`
//! milliseconds of guest time (decimal, default 5000) fails with an I/O error, and so does every
//! later request (`ferry_drivers_virtio::VirtioDisk`: the device is not reset).
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(all(target_arch = "aarch64", target_os = "none"))]
ferry_appliance::entry!(blk);

/// `blk.timeout_ms` when not given: 5 s of guest time for one physical request.
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
const DEFAULT_TIMEOUT_MS: u64 = 5000;

#[cfg(all(target_arch = "aarch64", target_os = "none"))]
fn blk(boot: &ferry_appliance::BootInfo) -> ferry_appliance::Exit {
    use ferry_appliance::dma::{passthrough_virtio_mmio, CounterWaiter, DirectMapHal};
    use ferry_appliance::transport::mmio_ioreq;
    use ferry_appliance::{println, Exit};
    use ferry_backend_blk::Blk;
    use ferry_drivers::{BadSectors, BadSectorsError, BlockDevice, FailOn, FaultyDisk};
    use ferry_drivers_virtio::VirtioDisk;
    use ferry_virtio::features::VIRTIO_F_ACCESS_PLATFORM;
    use ferry_virtio_mmio::MmioDevice;

    let bad_bootarg = |value: &str, error: BadSectorsError| {
        println!("ferry: boot error: bootarg blk.fail={value}: {error}");
        Exit::Failure
    };
    // Checked before the device is touched; whether the range fits is known only after.
    let bad = match boot.arg("blk.fail") {
        None => None,
        Some(value) => match value.parse::<BadSectors>() {
            Ok(bad) => Some((value, bad)),
            Err(error) => return bad_bootarg(value, error),
        },
    };
    let timeout_ms = match boot.arg("blk.timeout_ms") {
        None => DEFAULT_TIMEOUT_MS,
        Some(value) => match value.parse::<u64>() {
            Ok(ms) if ms > 0 => ms,
            _ => {
                println!(
                    "ferry: boot error: bootarg blk.timeout_ms={value}: not a positive number"
                );
                return Exit::Failure;
            }
        },
    };
    let (transport, window) = match passthrough_virtio_mmio(boot.platform) {
        Ok(device) => device,
        Err(error) => {
            println!("ferry: serve: blk failed: {error}");
            return Exit::Failure;
        }
    };
    let waiter = CounterWaiter::new("blk", timeout_ms);
    let disk = match VirtioDisk::<DirectMapHal, _, _>::with_waiter(transport, waiter) {
        Ok(disk) => disk,
        Err(error) => {
            println!("ferry: serve: blk failed: device at {window}: {error}");
            return Exit::Failure;
        }
    };
    log::info!(
        "blk: physical virtio-blk at {window}: {} sectors{}",
        disk.capacity_sectors(),
        if disk.read_only() { ", read-only" } else { "" }
    );
    // Always wrapped (healthy without blk.fail): one disk type, one copy of the serve loop.
    let mut disk = FaultyDisk::new(disk);
    if let Some((value, bad)) = bad {
        if let Err(error) = bad.check_fits(disk.capacity_sectors()) {
            // The domain is about to crash; skipping the disk's drop glue keeps it out of the
            // image (a few hundred bytes).
            core::mem::forget(disk);
            return bad_bootarg(value, error);
        }
        // Not through the logger: an injected fault must show whatever the loglevel.
        let (first, end) = (bad.first(), bad.range().end);
        println!("ferry: blk: injecting I/O errors at sectors {first}..{end} (reads and writes)");
        disk = disk.failing(bad, FailOn::ReadsAndWrites);
    }
    let device = MmioDevice::new(Blk::new(disk), VIRTIO_F_ACCESS_PLATFORM);
    mmio_ioreq::run(boot, "blk", device)
}

#[cfg(not(target_os = "none"))]
fn main() -> std::process::ExitCode {
    ferry_appliance::host::refuse_to_run("blk")
}
