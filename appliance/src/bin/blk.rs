//! `blk`: serves the passed-through virtio-blk device to one frontend as a standard virtio-mmio
//! device over Xen IOREQ (docs/transport-mmio-ioreq.md).
//!
//! The physical device is the first `virtio,mmio` node under `/passthrough` (the domain must
//! be direct-mapped); the frontend and its window come from the bootargs `ioreq.frontend`,
//! `ioreq.base`, `ioreq.size` and `ioreq.irq`. It never returns while serving; it fails (crash
//! shutdown) if the device or the ioreq server cannot be set up.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(all(target_arch = "aarch64", target_os = "none"))]
ferry_appliance::entry!(blk);

#[cfg(all(target_arch = "aarch64", target_os = "none"))]
fn blk(boot: &ferry_appliance::BootInfo) -> ferry_appliance::Exit {
    use ferry_appliance::dma::{passthrough_virtio_mmio, DirectMapHal};
    use ferry_appliance::transport::mmio_ioreq;
    use ferry_appliance::{println, Exit};
    use ferry_backend_blk::Blk;
    use ferry_drivers::BlockDevice;
    use ferry_drivers_virtio::VirtioDisk;
    use ferry_virtio::features::VIRTIO_F_ACCESS_PLATFORM;
    use ferry_virtio_mmio::MmioDevice;

    let (transport, window) = match passthrough_virtio_mmio(boot.platform) {
        Ok(device) => device,
        Err(error) => {
            println!("ferry: serve: blk failed: {error}");
            return Exit::Failure;
        }
    };
    let disk = match VirtioDisk::<DirectMapHal, _>::new(transport) {
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
    let device = MmioDevice::new(Blk::new(disk), VIRTIO_F_ACCESS_PLATFORM);
    mmio_ioreq::run(boot, "blk", device)
}

#[cfg(not(target_os = "none"))]
fn main() -> std::process::ExitCode {
    ferry_appliance::host::refuse_to_run("blk")
}
