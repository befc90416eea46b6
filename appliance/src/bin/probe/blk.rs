//! The blk workload: write the contract's sector pattern, flush, read it back and verify; and the
//! bench passes.
//!
//! Throughput passes keep up to [`DEPTH`] requests in flight (virtio-drivers'
//! `read_blocks_nb`/`write_blocks_nb`; without its `alloc` feature every request takes three
//! descriptors of the 16-entry queue, so at most five fit). Completion is found by polling the
//! used ring, as virtio-drivers does for its blocking calls.
//!
//! The bench area is the disk *after* the pattern area: sectors `pattern .. pattern + 8 MiB`
//! (less if the disk ends earlier; at least 1 MiB is required). The bench never writes the
//! pattern area, so the host's check of the disk image still holds after a bench run.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use ferry_appliance::xen::sched;
use ferry_appliance::{println, time};
use ferry_drivers::pattern::{fill_sector, first_mismatch};
use virtio_drivers::device::blk::{BlkReq, BlkResp, VirtIOBlk, SECTOR_SIZE};
use virtio_drivers::Error;

use crate::hal::ProbeHal;
use crate::transport::{check_running, ProbeTransport};

use crate::plan::Lcg;
use crate::window::Window;

/// A blk driver on the probe's window.
pub type Blk<H> = VirtIOBlk<H, ProbeTransport>;

/// Requests in flight in the throughput passes.
const DEPTH: usize = 4;
/// Sectors per request in the sequential passes and the pattern write (64 KiB).
const LARGE: usize = 128;
/// Sectors per request in the random passes (4 KiB).
const SMALL: usize = 8;
/// Largest bench area, in sectors (8 MiB).
const BENCH_SECTORS: u64 = 8 * 2048;
/// Smallest bench area, in sectors (1 MiB).
const MIN_BENCH_SECTORS: u64 = 2048;
/// Requests in each random pass.
const RANDOM_REQUESTS: usize = 512;
/// Requests in the request-cost measurement.
const COST_REQUESTS: u64 = 256;
/// How long a request may take before the probe gives up on the device, in seconds.
const REQUEST_TIMEOUT_SECONDS: u64 = 20;

/// Opens the blk device in the window with virtio-drivers (reset, negotiate, one queue).
pub fn open<H: ProbeHal>(window: &Window) -> Result<Blk<H>, String> {
    let transport = window.transport()?;
    let blk = VirtIOBlk::new(transport).map_err(|error| format!("blk init: {error}"))?;
    check_running(window).map_err(|error| format!("blk init: {error}"))?;
    Ok(blk)
}

/// Read or write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Read,
    Write,
}

/// One request buffer set of the pipeline; the device owns it while `token` is set.
struct Slot {
    req: BlkReq,
    resp: BlkResp,
    buf: Vec<u8>,
    token: Option<u16>,
    sector: u64,
    sectors: usize,
}

/// Grant mode: gives the physical CPU to the backend, which may share it with us. Direct mode
/// polls without hypercalls (the baseline has no other domain to wait for).
pub fn yield_to_backend<H: ProbeHal>() {
    if H::GRANTED {
        let _ = sched::yield_now();
    } else {
        core::hint::spin_loop();
    }
}

/// Waits until the device has used some chain; returns its token.
pub fn wait_used<H: ProbeHal>(blk: &mut Blk<H>) -> Result<u16, String> {
    let deadline = time::now() + REQUEST_TIMEOUT_SECONDS * time::frequency();
    loop {
        if let Some(token) = blk.peek_used() {
            return Ok(token);
        }
        if time::now() > deadline {
            return Err(format!(
                "no request completed within {REQUEST_TIMEOUT_SECONDS} s"
            ));
        }
        yield_to_backend::<H>();
    }
}

/// Runs `requests` ((first sector, sector count <= `max_sectors`)) as `op` with up to
/// [`DEPTH`] in flight. Before a write, `fill` fills its buffer; after a read, `check` checks
/// it. Returns the bytes moved and the number of requests.
fn pipeline<H: ProbeHal>(
    blk: &mut Blk<H>,
    op: Op,
    requests: impl Iterator<Item = (u64, usize)>,
    max_sectors: usize,
    mut fill: impl FnMut(u64, &mut [u8]),
    mut check: impl FnMut(u64, &[u8]) -> Result<(), String>,
) -> Result<(u64, u64), String> {
    let mut slots: Vec<Slot> = (0..DEPTH)
        .map(|_| Slot {
            req: BlkReq::default(),
            resp: BlkResp::default(),
            buf: vec![0; max_sectors * SECTOR_SIZE],
            token: None,
            sector: 0,
            sectors: 0,
        })
        .collect();
    let mut requests = requests.peekable();
    let mut in_flight = 0;
    let mut bytes = 0u64;
    let mut done = 0u64;
    loop {
        // Submit while there is a free slot and room in the queue.
        while let Some(&(sector, sectors)) = requests.peek() {
            let Some(slot) = slots.iter_mut().find(|slot| slot.token.is_none()) else {
                break;
            };
            let len = sectors * SECTOR_SIZE;
            slot.sector = sector;
            slot.sectors = sectors;
            let submitted = match op {
                Op::Write => {
                    fill(sector, &mut slot.buf[..len]);
                    // SAFETY: the slot's req, buf and resp stay in `slots` (never moved nor
                    // touched) until `complete_write_blocks` below returns for this token.
                    unsafe {
                        blk.write_blocks_nb(
                            sector as usize,
                            &mut slot.req,
                            &slot.buf[..len],
                            &mut slot.resp,
                        )
                    }
                }
                // SAFETY: as above, until `complete_read_blocks`.
                Op::Read => unsafe {
                    blk.read_blocks_nb(
                        sector as usize,
                        &mut slot.req,
                        &mut slot.buf[..len],
                        &mut slot.resp,
                    )
                },
            };
            match submitted {
                Ok(token) => {
                    slot.token = Some(token);
                    in_flight += 1;
                    requests.next();
                }
                Err(Error::QueueFull) if in_flight > 0 => break,
                Err(error) => {
                    return Err(format!("{op:?} of sector {sector} not submitted: {error}"))
                }
            }
        }
        if in_flight == 0 {
            return Ok((bytes, done));
        }
        let token = wait_used(blk)?;
        let slot = slots
            .iter_mut()
            .find(|slot| slot.token == Some(token))
            .ok_or_else(|| format!("the device used chain {token}, which is not in flight"))?;
        let len = slot.sectors * SECTOR_SIZE;
        let result = match op {
            // SAFETY: the same req, buf and resp as passed to `write_blocks_nb` for `token`.
            Op::Write => unsafe {
                blk.complete_write_blocks(token, &slot.req, &slot.buf[..len], &mut slot.resp)
            },
            // SAFETY: the same req, buf and resp as passed to `read_blocks_nb` for `token`.
            Op::Read => unsafe {
                blk.complete_read_blocks(token, &slot.req, &mut slot.buf[..len], &mut slot.resp)
            },
        };
        slot.token = None;
        in_flight -= 1;
        result.map_err(|error| {
            format!(
                "{op:?} of sectors {}..{} failed: {error}",
                slot.sector,
                slot.sector + slot.sectors as u64
            )
        })?;
        if op == Op::Read {
            check(slot.sector, &slot.buf[..len])?;
        }
        bytes += len as u64;
        done += 1;
    }
}

/// [`COST_REQUESTS`] 512-byte reads in the bench area, one in flight at a time.
fn pipeline_depth_one<H: ProbeHal>(blk: &mut Blk<H>, start: u64, count: u64) -> Result<(), String> {
    let mut req = BlkReq::default();
    let mut resp = BlkResp::default();
    let mut buf = [0u8; SECTOR_SIZE];
    for i in 0..COST_REQUESTS {
        let sector = start + i % count;
        // SAFETY: req, buf and resp are not touched until `complete_read_blocks` below.
        let token = unsafe { blk.read_blocks_nb(sector as usize, &mut req, &mut buf, &mut resp) }
            .map_err(|error| format!("request-cost read {i}: {error}"))?;
        let used = wait_used(blk)?;
        if used != token {
            return Err(format!("the device used chain {used}, not {token}"));
        }
        // SAFETY: the same req, buf and resp as passed to `read_blocks_nb` for `token`.
        unsafe { blk.complete_read_blocks(token, &req, &mut buf, &mut resp) }
            .map_err(|error| format!("request-cost read {i}: {error}"))?;
    }
    Ok(())
}

/// Fills `buf` (whole sectors from `sector`) with the contract pattern.
fn fill_pattern(seed: u32, sector: u64, buf: &mut [u8]) {
    for (i, chunk) in buf.chunks_exact_mut(SECTOR_SIZE).enumerate() {
        let chunk: &mut [u8; SECTOR_SIZE] = chunk.try_into().expect("a whole sector");
        fill_sector(seed, sector + i as u64, chunk);
    }
}

/// Requests of up to `per_request` sectors covering `[start, start + count)`.
fn sequential(start: u64, count: u64, per_request: usize) -> impl Iterator<Item = (u64, usize)> {
    (start..start + count)
        .step_by(per_request)
        .map(move |sector| {
            (
                sector,
                (start + count - sector).min(per_request as u64) as usize,
            )
        })
}

/// Reads sector `sector` and checks it holds the pattern.
pub fn check_sector<H: ProbeHal>(blk: &mut Blk<H>, seed: u32, sector: u64) -> Result<(), String> {
    let mut buf = [0u8; SECTOR_SIZE];
    blk.read_blocks(sector as usize, &mut buf)
        .map_err(|error| format!("read of sector {sector}: {error}"))?;
    match first_mismatch(seed, sector, &buf) {
        None => Ok(()),
        Some(_) => Err(format!("sector {sector} does not hold the pattern")),
    }
}

/// The verification workload: pattern over `mib` MiB, flush, read back and compare.
pub fn verify<H: ProbeHal>(blk: &mut Blk<H>, mib: u64, seed: u32) -> Result<(), String> {
    let sectors = mib * 2048;
    let capacity = blk.capacity();
    if blk.readonly() {
        return Err("the disk is read-only".into());
    }
    if capacity < sectors {
        return Err(format!(
            "the disk has {capacity} sectors, fewer than the {sectors} of probe.mib={mib}"
        ));
    }
    let started = time::now();
    pipeline(
        blk,
        Op::Write,
        sequential(0, sectors, LARGE),
        LARGE,
        |sector, buf| fill_pattern(seed, sector, buf),
        |_, _| Ok(()),
    )?;
    blk.flush().map_err(|error| format!("flush: {error}"))?;
    let written = time::now();
    pipeline(
        blk,
        Op::Read,
        sequential(0, sectors, LARGE),
        LARGE,
        |_, _| {},
        |sector, buf| match first_mismatch(seed, sector, buf) {
            None => Ok(()),
            Some(bad) => Err(format!("sector {bad} read back does not hold the pattern")),
        },
    )?;
    let read = time::now();
    println!(
        "ferry: probe: blk: {capacity} sectors; wrote {mib} MiB in {} us, read back in {} us",
        time::micros_from_ticks(written - started),
        time::micros_from_ticks(read - written)
    );
    println!("ferry: probe: blk: verified {mib} MiB seed {seed}");
    Ok(())
}

/// Prints a contract bench line.
fn report(name: &str, bytes: u64, ticks: u64, requests: u64) {
    println!(
        "ferry: bench: {name} bytes={bytes} ticks={ticks} freq={} requests={requests}",
        time::frequency()
    );
}

/// The bench passes over the area after the pattern (`pattern_sectors` on).
pub fn bench<H: ProbeHal>(blk: &mut Blk<H>, pattern_sectors: u64) -> Result<(), String> {
    let start = pattern_sectors;
    let available = blk.capacity().saturating_sub(start);
    let count = available.min(BENCH_SECTORS) / SMALL as u64 * SMALL as u64;
    if count < MIN_BENCH_SECTORS {
        return Err(format!(
            "probe.bench=1 needs at least 1 MiB after the pattern area; the disk has {available} \
             sectors there"
        ));
    }
    let bench_seed = 0xbe0c_4000;
    let timed = |blk: &mut Blk<H>,
                 name: &str,
                 op: Op,
                 requests: &mut dyn Iterator<Item = (u64, usize)>,
                 max_sectors: usize|
     -> Result<(), String> {
        let started = time::now();
        let (bytes, count) = pipeline(
            blk,
            op,
            requests,
            max_sectors,
            |sector, buf| fill_pattern(bench_seed, sector, buf),
            |_, _| Ok(()),
        )?;
        report(name, bytes, time::now() - started, count);
        Ok(())
    };
    timed(
        blk,
        "seq-write",
        Op::Write,
        &mut sequential(start, count, LARGE),
        LARGE,
    )?;
    blk.flush().map_err(|error| format!("flush: {error}"))?;
    timed(
        blk,
        "seq-read",
        Op::Read,
        &mut sequential(start, count, LARGE),
        LARGE,
    )?;
    let blocks = count / SMALL as u64;
    let random = |seed: u64| {
        let mut lcg = Lcg::new(seed);
        (0..RANDOM_REQUESTS).map(move |_| (start + lcg.below(blocks) * SMALL as u64, SMALL))
    };
    timed(
        blk,
        "rand-write-4k",
        Op::Write,
        &mut random(0x5eed_0001),
        SMALL,
    )?;
    timed(
        blk,
        "rand-read-4k",
        Op::Read,
        &mut random(0x5eed_0002),
        SMALL,
    )?;

    // Request cost: one 512-byte read at a time, each waited for.
    let started = time::now();
    pipeline_depth_one(blk, start, count)?;
    let ticks = time::now() - started;
    report(
        "request-cost",
        COST_REQUESTS * SECTOR_SIZE as u64,
        ticks,
        COST_REQUESTS,
    );
    println!(
        "ferry: probe: request-cost: {COST_REQUESTS} requests of {SECTOR_SIZE} bytes, {} ticks \
         ({} us) each",
        ticks / COST_REQUESTS,
        time::micros_from_ticks(ticks / COST_REQUESTS)
    );
    Ok(())
}
