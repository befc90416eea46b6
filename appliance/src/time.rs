//! Time: the ARM generic timer's virtual counter and its virtual timer, as ticks.
//!
//! This module owns `CNTV_CVAL_EL0` and `CNTV_CTL_EL0` (one deadline at a time) and the
//! virtual-timer interrupt handler. Time is counted in ticks of the virtual counter
//! (`CNTVCT_EL0`), which Xen starts at zero when it creates the domain; [`frequency`] is ticks
//! per second (`CNTFRQ_EL0`, 62.5 MHz on QEMU `virt`). It never sleeps by itself: to wait for
//! a deadline, set it and idle (`runtime::wait_until`), which lets Xen deschedule the vCPU.

use core::sync::atomic::{AtomicU64, Ordering};

use aarch64_cpu::asm::barrier;
use aarch64_cpu::registers::{
    Readable, Writeable, CNTFRQ_EL0, CNTVCT_EL0, CNTV_CTL_EL0, CNTV_CVAL_EL0,
};

use crate::irq::{self, IrqError};

/// `CNTV_CTL_EL0.ENABLE`: the timer fires when the counter reaches `CNTV_CVAL_EL0`.
const CTL_ENABLE: u64 = 1 << 0;

/// How many times the virtual timer interrupt has fired since boot.
static FIRED: AtomicU64 = AtomicU64::new(0);

/// The virtual counter now, in ticks since the domain was created.
pub fn now() -> u64 {
    // The ISB keeps the counter read from being done early, before earlier instructions.
    barrier::isb(barrier::SY);
    CNTVCT_EL0.get()
}

/// Ticks per second of the counter.
pub fn frequency() -> u64 {
    CNTFRQ_EL0.get()
}

/// `micros` microseconds in ticks (rounded up, saturating).
pub fn ticks_from_micros(micros: u64) -> u64 {
    let ticks = u128::from(micros) * u128::from(frequency());
    u64::try_from(ticks.div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

/// `ticks` in whole microseconds.
pub fn micros_from_ticks(ticks: u64) -> u64 {
    let frequency = frequency().max(1);
    u64::try_from(u128::from(ticks) * 1_000_000 / u128::from(frequency)).unwrap_or(u64::MAX)
}

/// Arms the virtual timer: its interrupt fires once the counter reaches `ticks` (at once if it
/// already has). Replaces any earlier deadline. The interrupt wakes the CPU from `wfi`.
pub fn set_deadline(ticks: u64) {
    CNTV_CVAL_EL0.set(ticks);
    CNTV_CTL_EL0.set(CTL_ENABLE);
    barrier::isb(barrier::SY);
}

/// Disarms the virtual timer.
pub fn cancel_deadline() {
    CNTV_CTL_EL0.set(0);
    barrier::isb(barrier::SY);
}

/// How many times the deadline interrupt has fired since boot.
pub fn timer_interrupts() -> u64 {
    FIRED.load(Ordering::Relaxed)
}

/// The virtual timer interrupt: disarm (the interrupt is level-sensitive and would fire again)
/// and count.
fn on_virtual_timer() {
    cancel_deadline();
    FIRED.fetch_add(1, Ordering::Relaxed);
}

/// Enables the virtual timer interrupt `intid` (from the device tree) with its handler.
pub(crate) fn init(intid: u32) -> Result<(), IrqError> {
    cancel_deadline();
    irq::enable(intid, on_virtual_timer)
}
