//! From the entry code to the appliance's main function and back out to Xen.
//!
//! This module owns the boot sequence and the domain's end. `ferry_rust_start` is the first
//! Rust code that runs (called by [`crate::arch::aarch64::boot`] with relocations applied, BSS
//! zeroed, a stack and the exception vectors installed, MMU still off). In order, it:
//!
//! 1. reads the device tree (its address came in x0) into a [`Platform`]; a device tree it
//!    cannot use is a boot error: `ferry: boot error: <what>, in <node> property <name>`, then
//!    a crash shutdown;
//! 2. turns the MMU and caches on ([`crate::arch::aarch64::mmu`]) with page tables taken from
//!    the first free RAM after the image: RAM and the Xen grant-table region as Normal
//!    write-back memory, GIC, UART and passed-through devices as Device-nGnRE; until then no
//!    code may use atomics' read-modify-write operations or locks (memory is Device memory,
//!    which has no exclusive monitor);
//! 3. gives the rest of the free RAM to the heap ([`crate::heap`]), installs the logger
//!    (`loglevel=` in bootargs), sets the GIC and the virtual timer interrupt up (CPU
//!    interrupts stay masked until the appliance calls `irq::enable_cpu_interrupts`);
//! 4. calls the main function that the appliance named with [`crate::entry!`] and shuts the
//!    domain down with its [`Exit`].
//!
//! It must never return to the entry code, and nothing here may run before the step it
//! depends on (no logging before 3, no heap before 3).

use core::cell::UnsafeCell;
use core::fmt;
use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use heapless::Vec;

use crate::arch::aarch64::{cpu, mmu};
use crate::platform::{self, Platform, Region, PAGE_SIZE};
use crate::xen::abi::ShutdownReason;
use crate::xen::hypercall;
use crate::{heap, irq, logger, time, Exit};

/// Page tables the runtime reserves at boot (64 KiB): enough for RAM, the boot-time devices and
/// a few dozen more device pages mapped later with `mmu::map_device`.
const PAGE_TABLE_POOL_BYTES: u64 = 16 * PAGE_SIZE;

/// What the runtime knows at boot, handed to the appliance's main function.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct BootInfo {
    /// Guest physical address of the device tree that Xen made for this domain.
    pub device_tree: usize,
    /// Guest physical address at which Xen loaded the image (its first byte, the header).
    pub load_address: usize,
    /// Bytes the image occupies from `load_address` (code, data, bss, boot stack).
    pub image_size: usize,
    /// The `/chosen` bootargs ("" when there are none).
    pub bootargs: &'static str,
    /// RAM banks, from the device tree.
    pub memory: &'static [Region],
    /// Everything else the device tree says (GIC, timer, UART, Xen node, passthrough).
    pub platform: &'static Platform<'static>,
    /// The virtual counter at the image's entry (ticks since Xen created the domain).
    pub entry_ticks: u64,
    /// Ticks per second of the counter (`CNTFRQ_EL0`).
    pub counter_frequency: u64,
    /// Bytes the heap was given.
    pub heap_bytes: u64,
}

impl BootInfo {
    /// Looks `key` up in the bootargs: `key=value` gives `Some("value")`, a bare `key` gives
    /// `Some("")` (e.g. `boot.arg("selftest.role")`).
    pub fn arg(&self, key: &str) -> Option<&'static str> {
        platform::boot_arg(self.bootargs, key)
    }

    /// Ticks from the image's entry until now (e.g. boot-to-ready time).
    pub fn ticks_since_entry(&self) -> u64 {
        time::now().saturating_sub(self.entry_ticks)
    }
}

/// A value written once during boot, before anything reads it, then only read.
struct BootCell<T> {
    ready: AtomicBool,
    value: UnsafeCell<MaybeUninit<T>>,
}

// SAFETY: the value is written once, by `set` during single-threaded boot before `ready` is
// published, and only shared references are handed out after that.
unsafe impl<T: Sync> Sync for BootCell<T> {}

impl<T> BootCell<T> {
    const fn new() -> Self {
        Self {
            ready: AtomicBool::new(false),
            value: UnsafeCell::new(MaybeUninit::uninit()),
        }
    }

    /// Stores `value` and returns a reference to it for the rest of the program.
    ///
    /// # Safety
    ///
    /// Must be called at most once, before any `get`, while nothing else runs.
    unsafe fn set(&'static self, value: T) -> &'static T {
        // SAFETY: per the contract nobody else accesses the cell now, and it was never set.
        let stored = unsafe { (*self.value.get()).write(value) };
        self.ready.store(true, Ordering::Release);
        stored
    }

    fn get(&'static self) -> Option<&'static T> {
        if !self.ready.load(Ordering::Acquire) {
            return None;
        }
        // SAFETY: `ready` is only set after the value was written, and it is never written again.
        Some(unsafe { (*self.value.get()).assume_init_ref() })
    }
}

static PLATFORM: BootCell<Platform<'static>> = BootCell::new();
static LOAD_ADDRESS: AtomicUsize = AtomicUsize::new(0);

/// The platform read from the device tree (`None` only while booting).
pub fn platform() -> Option<&'static Platform<'static>> {
    PLATFORM.get()
}

/// Where the image was loaded (0 before the first line of Rust ran).
pub fn load_address() -> u64 {
    LOAD_ADDRESS.load(Ordering::Relaxed) as u64
}

/// The image's extent at run time, from the linker script's symbols.
fn image_region() -> Region {
    unsafe extern "C" {
        static __image_start: u8;
        static __image_end: u8;
    }
    // Only the addresses are used (PC-relative, so run-time addresses), never the contents.
    let start = (&raw const __image_start) as u64;
    let end = (&raw const __image_end) as u64;
    Region::new(start, end - start)
}

/// Reports a boot error and ends the domain as crashed.
fn boot_error(error: impl fmt::Display) -> ! {
    crate::println!("ferry: boot error: {error}");
    shutdown(ShutdownReason::Crash)
}

/// Reads the device tree at `address`: the header first (for its size), then all of it.
fn read_device_tree(address: usize) -> &'static [u8] {
    if address == 0 || !address.is_multiple_of(8) {
        boot_error(format_args!(
            "no device tree: x0 = {address:#x} is not an 8-byte aligned address, in /"
        ));
    }
    // SAFETY: Xen passes the guest physical address of the device tree in x0; its first 8
    // bytes (magic, totalsize) are readable. With the MMU off any address is accessible, and
    // an address outside RAM would fault into the crash report, not into undefined behaviour
    // of Rust code.
    let header = unsafe { (address as *const [u8; 8]).read_volatile() };
    let Some(size) = platform::device_tree_size(&header) else {
        boot_error(format_args!(
            "no device tree at x0 = {address:#x} (no FDT magic), in /"
        ))
    };
    // SAFETY: the header says the device tree is `size` bytes long; nothing in the runtime
    // writes to it (the heap and page tables exclude its pages) for the rest of the program.
    unsafe { core::slice::from_raw_parts(address as *const u8, size) }
}

// SAFETY: the entry code calls this symbol by name, once, with the AAPCS64 arguments declared
// here; no Rust code defines another `ferry_rust_start`.
#[unsafe(no_mangle)]
extern "C" fn ferry_rust_start(device_tree: usize, load_address: usize, entry_ticks: u64) -> ! {
    unsafe extern "Rust" {
        // Defined by `entry!` in the appliance binary, with exactly this signature.
        fn __ferry_appliance_main(boot: &BootInfo) -> Exit;
    }
    LOAD_ADDRESS.store(load_address, Ordering::Relaxed);
    let image = image_region();

    // 1. The device tree.
    let dtb = read_device_tree(device_tree);
    let platform = match Platform::parse(dtb, device_tree as u64) {
        Ok(platform) => platform,
        Err(error) => boot_error(error),
    };
    if !platform
        .memory
        .iter()
        .any(|bank| bank.contains(image.base) && bank.contains(image.end() - 1))
    {
        boot_error(format_args!(
            "the image ({image}) is not inside one memory bank, in /memory property reg"
        ));
    }

    // 2. Page tables in the first free RAM big enough, then the MMU.
    let mut free = platform.free_memory(&[image]);
    let Some(pool_index) = free
        .iter()
        .position(|region| region.size >= PAGE_TABLE_POOL_BYTES)
    else {
        boot_error("no free RAM for page tables, in /memory property reg")
    };
    let pool = Region::new(free[pool_index].base, PAGE_TABLE_POOL_BYTES);
    free[pool_index] = Region::new(pool.end(), free[pool_index].size - pool.size);
    let grant_table = platform.hypervisor.iter().map(|xen| xen.grant_table);
    let normal = platform.memory.iter().copied().chain(grant_table);
    // SAFETY: the MMU is off and this is its only enabling; `pool` is free RAM (outside the
    // image, the device tree and reserved ranges) that nothing else will use; RAM banks cover
    // the image, its stack and the device tree, checked above and by `Platform::parse`.
    let sctlr = match unsafe { mmu::enable(pool, normal, platform.device_regions(), &[image]) } {
        Ok(sctlr) => sctlr,
        Err(error) => boot_error(format_args!("cannot map the platform: {error}, in /memory")),
    };

    // 3. Runtime services.
    // SAFETY: we are still the only code running, and this is the only `set`.
    let platform = unsafe { PLATFORM.set(platform) };
    let heap_regions: Vec<Region, { 2 * platform::MAX_BANKS + 8 }> =
        free.into_iter().filter(|region| region.size > 0).collect();
    // SAFETY: these regions are the free RAM minus the page-table pool: mapped, and used by
    // nothing else; the MMU is on.
    let heap_bytes = unsafe { heap::init(&heap_regions) };
    logger::init(platform.bootargs);
    if let Err(error) = irq::init(&platform.gic) {
        boot_error(format_args!(
            "cannot set the GIC up: {error}, in /interrupt-controller"
        ));
    }
    if let Err(error) = time::init(platform.timer.virtual_timer.intid) {
        boot_error(format_args!(
            "cannot enable the virtual timer interrupt: {error}, in /timer property interrupts"
        ));
    }
    // Xen splits console lines at ~128 characters: keep each of these short.
    log::debug!("boot: image {image}, device tree {}", platform.device_tree);
    log::debug!("boot: RAM {:?}, {:?}", platform.memory, platform.gic);
    log::debug!(
        "boot: MMU on, SCTLR_EL1 {sctlr:#x}, {} page tables at {pool}, heap {} KiB",
        mmu::tables_used(),
        heap_bytes / 1024
    );

    // 4. The appliance.
    let boot = BootInfo {
        device_tree,
        load_address,
        image_size: image.size as usize,
        bootargs: platform.bootargs,
        memory: &platform.memory,
        platform,
        entry_ticks,
        counter_frequency: time::frequency(),
        heap_bytes,
    };
    // SAFETY: `entry!` is the only way to define `__ferry_appliance_main`, and it defines it as
    // a safe Rust function with the signature declared above.
    let exit = unsafe { __ferry_appliance_main(&boot) };
    shutdown(exit.shutdown_reason())
}

/// Waits for an interrupt (`wfi`). Xen traps `wfi` and deschedules the vCPU until an interrupt
/// is pending, so an idle domain does not use a physical CPU. With CPU interrupts enabled the
/// handler of the waking interrupt runs before this returns.
///
/// Checking a condition and then calling `idle` races with an interrupt that arrives in
/// between (the wakeup is lost until the next interrupt); use [`wait_until`] for that.
pub fn idle() {
    cpu::wait_for_interrupt();
}

/// Idles until `done()` is true, without losing wakeups: `done` is checked with IRQs masked,
/// `wfi` wakes on a pending (masked) interrupt, and its handler runs when IRQs are unmasked
/// again. IRQs are unmasked while waiting even if they were masked on entry; the previous
/// state is restored on return.
pub fn wait_until(mut done: impl FnMut() -> bool) {
    let was_masked = cpu::irqs_masked();
    loop {
        cpu::mask_irqs();
        if done() {
            break;
        }
        cpu::wait_for_interrupt();
        cpu::unmask_irqs();
    }
    if !was_masked {
        cpu::unmask_irqs();
    }
}

/// Ends the domain: prints `ferry: shutdown: <reason>` and asks Xen to shut it down.
///
/// If Xen refuses (it should not), the CPU halts.
pub fn shutdown(reason: ShutdownReason) -> ! {
    let name = match reason {
        ShutdownReason::Poweroff => "poweroff",
        ShutdownReason::Reboot => "reboot",
        ShutdownReason::Crash => "crash",
    };
    crate::println!("ferry: shutdown: {name}");
    let error = hypercall::sched_shutdown(reason);
    crate::println!("ferry: Xen refused SCHEDOP_shutdown ({error}); halting");
    cpu::halt()
}
