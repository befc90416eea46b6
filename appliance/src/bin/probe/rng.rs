//! The rng workload: read at least 64 KiB of entropy and check that it is not constant and has
//! no repeating 64-byte block.

use alloc::format;
use alloc::string::String;
use alloc::vec;

use ferry_appliance::println;
use virtio_drivers::device::rng::VirtIORng;
use virtio_drivers::Hal;

use crate::plan::check_entropy;
use crate::transport::{check_running, ProbeTransport};
use crate::window::Window;

/// An rng driver on the probe's window.
pub type Rng<H> = VirtIORng<H, ProbeTransport>;

/// Bytes the workload reads.
const BYTES: usize = 64 * 1024;
/// Bytes asked for per request.
const REQUEST: usize = 4096;
/// Requests after which a device that keeps returning nothing is given up on.
const MAX_EMPTY: usize = 1000;

/// Opens the rng device in the window with virtio-drivers.
pub fn open<H: Hal>(window: &Window) -> Result<Rng<H>, String> {
    let transport = window.transport()?;
    let rng = VirtIORng::new(transport).map_err(|error| format!("rng init: {error}"))?;
    check_running(window).map_err(|error| format!("rng init: {error}"))?;
    Ok(rng)
}

/// Fills `buf` from the device; returns the number of requests it took.
pub fn fill<H: Hal>(rng: &mut Rng<H>, buf: &mut [u8]) -> Result<usize, String> {
    let mut at = 0;
    let mut requests = 0;
    let mut empty = 0;
    while at < buf.len() {
        let end = (at + REQUEST).min(buf.len());
        let got = rng
            .request_entropy(&mut buf[at..end])
            .map_err(|error| format!("entropy request at byte {at}: {error}"))?;
        requests += 1;
        if got > end - at {
            return Err(format!(
                "the device claims {got} bytes for a {}-byte buffer",
                end - at
            ));
        }
        if got == 0 {
            empty += 1;
            if empty > MAX_EMPTY {
                return Err(format!("{MAX_EMPTY} entropy requests returned nothing"));
            }
        }
        at += got;
    }
    Ok(requests)
}

/// The rng workload.
pub fn verify<H: Hal>(rng: &mut Rng<H>) -> Result<(), String> {
    let mut bytes = vec![0u8; BYTES];
    let requests = fill(rng, &mut bytes)?;
    let distinct = check_entropy(&bytes)?;
    println!("ferry: probe: rng: {requests} requests");
    println!(
        "ferry: probe: rng: {} bytes, {distinct} distinct byte values, no repeat",
        bytes.len()
    );
    Ok(())
}
