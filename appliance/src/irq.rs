//! Interrupts: the GIC (v2 or v3, through the `arm-gic` crate), a fixed table of handlers, and
//! the IRQ path from the exception vector.
//!
//! This module owns the GIC and the handler table. Code registers a plain `fn()` for an
//! interrupt ID with [`enable`]; the IRQ vector calls [`handle_irq`], which acknowledges each
//! pending interrupt, runs its handler with IRQs still masked, and ends it (EOI, which also
//! deactivates it). Handlers must be short and must never block or wait: they run on the
//! interrupted code's stack with interrupts masked. A level-sensitive source must be quietened
//! by its handler (e.g. the timer handler masks the timer), or it fires again at once.
//!
//! Xen's virtual GIC: group 1 with GICv3 (`ICC_IAR1_EL1`), group 0 with GICv2 (`GICC_IAR`),
//! the way Linux uses them as a Xen guest.

use arm_gic::gicv2::GicV2;
use arm_gic::gicv3::{GicCpuInterface, GicV3};
use arm_gic::{IntId, InterruptGroup, Trigger, UniqueMmioPointer};
use core::fmt;
use core::ptr::NonNull;
use spinning_top::Spinlock;

use crate::arch::aarch64::cpu;
use crate::platform::{self, Gic};

/// Interrupt IDs below this can have a handler: SGIs, PPIs and the first 96 SPIs.
pub const MAX_INTID: u32 = 128;

/// Priority given to every enabled interrupt (all equal: no preemption).
const PRIORITY: u8 = 0x80;

/// Why an interrupt cannot be enabled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IrqError {
    /// [`init`] has not run (or failed).
    NoGic,
    /// The interrupt ID is an SGI, beyond [`MAX_INTID`] or not valid for this GIC.
    BadIntId(u32),
    /// The GIC refused the configuration (it says why).
    Gic(&'static str),
}

impl fmt::Display for IrqError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IrqError::NoGic => write!(f, "the GIC is not set up"),
            IrqError::BadIntId(intid) => {
                write!(
                    f,
                    "interrupt {intid} cannot have a handler (SGI or >= {MAX_INTID})"
                )
            }
            IrqError::Gic(what) => write!(f, "the GIC refused: {what}"),
        }
    }
}

enum Driver {
    V2(GicV2<'static>),
    V3(GicV3<'static>),
}

// SAFETY: the drivers hold pointers to the GIC's MMIO registers, which are the same for every
// context; the spinlock below serialises all use, so moving one between contexts is fine.
unsafe impl Send for Driver {}

/// The handler of each interrupt ID below [`MAX_INTID`].
type HandlerTable = [Option<fn()>; MAX_INTID as usize];

static GIC: Spinlock<Option<Driver>> = Spinlock::new(None);
static HANDLERS: Spinlock<HandlerTable> = Spinlock::new([None; MAX_INTID as usize]);

/// Runs `f` with IRQs masked, restoring the previous mask afterwards.
pub fn without_interrupts<R>(f: impl FnOnce() -> R) -> R {
    let was_masked = cpu::irqs_masked();
    cpu::mask_irqs();
    let result = f();
    if !was_masked {
        cpu::unmask_irqs();
    }
    result
}

/// Lets this CPU take IRQs (clears `DAIF.I`).
pub fn enable_cpu_interrupts() {
    cpu::unmask_irqs();
}

/// Stops this CPU from taking IRQs (sets `DAIF.I`).
pub fn disable_cpu_interrupts() {
    cpu::mask_irqs();
}

/// Whether this CPU takes IRQs now.
pub fn cpu_interrupts_enabled() -> bool {
    !cpu::irqs_masked()
}

/// Sets the GIC up: distributor and this CPU's interface, everything disabled, all priorities
/// unmasked. Called once by the runtime at boot, with the MMU on and the GIC regions mapped.
pub(crate) fn init(gic: &Gic) -> Result<(), IrqError> {
    let driver = match *gic {
        Gic::V2 {
            distributor,
            cpu_interface,
        } => {
            // SAFETY: the runtime mapped both regions as device memory, and this is the only
            // driver instance (init runs once).
            let mut driver = unsafe {
                GicV2::new(
                    distributor.base as *mut arm_gic::gicv2::registers::Gicd,
                    cpu_interface.base as *mut arm_gic::gicv2::registers::Gicc,
                )
            };
            driver.setup();
            driver.set_priority_mask(0xff);
            Driver::V2(driver)
        }
        Gic::V3 {
            distributor,
            redistributors,
        } => {
            let gicd = NonNull::new(distributor.base as *mut arm_gic::gicv3::registers::Gicd)
                .ok_or(IrqError::Gic("distributor at address 0"))?;
            let gicr = NonNull::new(redistributors.base as *mut arm_gic::gicv3::registers::GicrSgi)
                .ok_or(IrqError::Gic("redistributors at address 0"))?;
            // SAFETY: the runtime mapped the distributor and redistributor regions as device
            // memory; nothing else accesses them, and this is the only driver (init runs once).
            // The appliance runs on one vCPU, so only redistributor 0 is used.
            let mut driver = unsafe { GicV3::new(UniqueMmioPointer::new(gicd), gicr, 1, false) };
            driver.setup(0);
            GicCpuInterface::set_priority_mask(0xff);
            Driver::V3(driver)
        }
    };
    without_interrupts(|| *GIC.lock() = Some(driver));
    Ok(())
}

/// Enables interrupt `intid` (a PPI 16..32 or an SPI) and makes `handler` its handler.
///
/// The trigger is left as the GIC has it (PPIs are fixed by Xen); see [`enable_with_trigger`].
/// The CPU takes the interrupt only once [`enable_cpu_interrupts`] has run.
pub fn enable(intid: u32, handler: fn()) -> Result<(), IrqError> {
    configure(intid, None, handler)
}

/// Like [`enable`], and first sets the interrupt's trigger (for SPIs of passed-through devices,
/// from their device tree flags).
pub fn enable_with_trigger(
    intid: u32,
    trigger: platform::Trigger,
    handler: fn(),
) -> Result<(), IrqError> {
    configure(intid, Some(trigger), handler)
}

fn configure(
    intid: u32,
    trigger: Option<platform::Trigger>,
    handler: fn(),
) -> Result<(), IrqError> {
    if !(16..MAX_INTID).contains(&intid) {
        return Err(IrqError::BadIntId(intid));
    }
    let id = IntId::try_from(intid).map_err(|_| IrqError::BadIntId(intid))?;
    let trigger = trigger.map(|trigger| match trigger {
        platform::Trigger::Edge => Trigger::Edge,
        platform::Trigger::Level => Trigger::Level,
    });
    without_interrupts(|| {
        HANDLERS.lock()[intid as usize] = Some(handler);
        let mut guard = GIC.lock();
        match guard.as_mut().ok_or(IrqError::NoGic)? {
            Driver::V2(gic) => {
                if let Some(trigger) = trigger {
                    gic.set_trigger(id, trigger);
                }
                gic.set_interrupt_priority(id, PRIORITY);
                gic.enable_interrupt(id, true)
                    .map_err(|_| IrqError::Gic("GICD_ISENABLER did not take the interrupt"))
            }
            Driver::V3(gic) => {
                let cpu = Some(0);
                if let Some(trigger) = trigger {
                    gic.set_trigger(id, cpu, trigger)
                        .map_err(|_| IrqError::Gic("cannot set the trigger"))?;
                }
                gic.set_interrupt_priority(id, cpu, PRIORITY)
                    .map_err(|_| IrqError::Gic("cannot set the priority"))?;
                gic.enable_interrupt(id, cpu, true)
                    .map_err(|_| IrqError::Gic("cannot enable the interrupt"))
            }
        }
    })
}

/// Disables interrupt `intid` at the GIC and forgets its handler.
pub fn disable(intid: u32) -> Result<(), IrqError> {
    if !(16..MAX_INTID).contains(&intid) {
        return Err(IrqError::BadIntId(intid));
    }
    let id = IntId::try_from(intid).map_err(|_| IrqError::BadIntId(intid))?;
    without_interrupts(|| {
        HANDLERS.lock()[intid as usize] = None;
        set_enabled(id, false)
    })
}

/// Enables or disables `id` at the GIC; IRQs must be masked.
fn set_enabled(id: IntId, enable: bool) -> Result<(), IrqError> {
    match GIC.lock().as_mut().ok_or(IrqError::NoGic)? {
        Driver::V2(gic) => gic
            .enable_interrupt(id, enable)
            .map_err(|_| IrqError::Gic("cannot change the enable bit")),
        Driver::V3(gic) => gic
            .enable_interrupt(id, Some(0), enable)
            .map_err(|_| IrqError::Gic("cannot change the enable bit")),
    }
}

/// Acknowledges the highest-priority pending interrupt, if any.
fn acknowledge() -> Option<IntId> {
    match GIC.lock().as_mut()? {
        Driver::V2(gic) => gic.get_and_acknowledge_interrupt(InterruptGroup::Group0),
        Driver::V3(_) => GicCpuInterface::get_and_acknowledge_interrupt(InterruptGroup::Group1),
    }
}

/// Signals the end of interrupt `id` (priority drop and deactivation).
fn end(id: IntId) {
    match GIC.lock().as_mut() {
        Some(Driver::V2(gic)) => gic.end_interrupt(id, InterruptGroup::Group0),
        Some(Driver::V3(_)) => GicCpuInterface::end_interrupt(id, InterruptGroup::Group1),
        None => {}
    }
}

/// The IRQ path: called by the exception vector with IRQs masked. Handles every pending
/// interrupt, then returns to the interrupted code.
pub(crate) fn handle_irq() {
    while let Some(id) = acknowledge() {
        let intid = u32::from(id);
        let handler = HANDLERS.lock().get(intid as usize).copied().flatten();
        match handler {
            Some(handler) => handler(),
            None => {
                // Nobody wants it: switch it off so that a level interrupt cannot storm.
                let _ = set_enabled(id, false);
                log::warn!("irq: interrupt {intid} has no handler; disabled it");
            }
        }
        end(id);
    }
}
