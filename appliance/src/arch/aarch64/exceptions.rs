//! The EL1 exception vector table (`VBAR_EL1`) and what happens on each exception.
//!
//! This module owns the vectors and the exception frame. IRQs are passed to [`crate::irq`] and
//! the interrupted code resumes; every other exception (synchronous, FIQ, SError, or anything
//! from a lower EL, which an appliance never runs) is a crash: it prints a report, every line
//! starting with `ferry: crash:`, and shuts the domain down with reason crash through
//! [`crate::runtime::shutdown`]. It must never try to recover from a synchronous exception.
//!
//! The boot code points `VBAR_EL1` at [`ferry_vectors`](self) before any Rust code runs. Each
//! of the 16 entries (Arm ARM D1.3.1: {current EL with SP0, current EL with SPx, lower EL
//! AArch64, lower EL AArch32} x {synchronous, IRQ, FIQ, SError}, 0x80 bytes apart) saves all
//! general-purpose registers, ELR, SPSR, the interrupted SP and all of the FP/SIMD state (Rust
//! code in the handler may use any SIMD register), and calls `ferry_exception(kind, frame)`.

use core::arch::global_asm;
use core::sync::atomic::{AtomicBool, Ordering};

use crate::arch::esr;
use crate::xen::abi::ShutdownReason;

/// Size of the frame that the vector entries push: [`ExceptionFrame`] (272 bytes), then
/// q0..q31 (512 bytes), then FPCR and FPSR (16 bytes).
const FRAME_SIZE: usize = 800;

global_asm!(
    r#"
    .section .text.vectors, "ax"
    .balign 2048
    .global ferry_vectors
ferry_vectors:
    .irp kind, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15
    .balign 0x80
    sub     sp, sp, #{frame}
    stp     x0, x1, [sp]
    mov     x0, #\kind
    b       ferry_exception_entry
    .endr

ferry_exception_entry:
    stp     x2, x3, [sp, #16]
    stp     x4, x5, [sp, #32]
    stp     x6, x7, [sp, #48]
    stp     x8, x9, [sp, #64]
    stp     x10, x11, [sp, #80]
    stp     x12, x13, [sp, #96]
    stp     x14, x15, [sp, #112]
    stp     x16, x17, [sp, #128]
    stp     x18, x19, [sp, #144]
    stp     x20, x21, [sp, #160]
    stp     x22, x23, [sp, #176]
    stp     x24, x25, [sp, #192]
    stp     x26, x27, [sp, #208]
    stp     x28, x29, [sp, #224]
    mrs     x1, elr_el1
    stp     x30, x1, [sp, #240]
    mrs     x1, spsr_el1
    add     x2, sp, #{frame}            // the SP of the interrupted code
    stp     x1, x2, [sp, #256]
    add     x1, sp, #272
    stp     q0, q1, [x1, #0]
    stp     q2, q3, [x1, #32]
    stp     q4, q5, [x1, #64]
    stp     q6, q7, [x1, #96]
    stp     q8, q9, [x1, #128]
    stp     q10, q11, [x1, #160]
    stp     q12, q13, [x1, #192]
    stp     q14, q15, [x1, #224]
    stp     q16, q17, [x1, #256]
    stp     q18, q19, [x1, #288]
    stp     q20, q21, [x1, #320]
    stp     q22, q23, [x1, #352]
    stp     q24, q25, [x1, #384]
    stp     q26, q27, [x1, #416]
    stp     q28, q29, [x1, #448]
    stp     q30, q31, [x1, #480]
    mrs     x2, fpcr
    mrs     x3, fpsr
    str     x2, [x1, #512]
    str     x3, [x1, #520]

    mov     x1, sp
    bl      ferry_exception            // returns only for an IRQ

    add     x1, sp, #272
    ldr     x2, [x1, #512]
    ldr     x3, [x1, #520]
    msr     fpcr, x2
    msr     fpsr, x3
    ldp     q0, q1, [x1, #0]
    ldp     q2, q3, [x1, #32]
    ldp     q4, q5, [x1, #64]
    ldp     q6, q7, [x1, #96]
    ldp     q8, q9, [x1, #128]
    ldp     q10, q11, [x1, #160]
    ldp     q12, q13, [x1, #192]
    ldp     q14, q15, [x1, #224]
    ldp     q16, q17, [x1, #256]
    ldp     q18, q19, [x1, #288]
    ldp     q20, q21, [x1, #320]
    ldp     q22, q23, [x1, #352]
    ldp     q24, q25, [x1, #384]
    ldp     q26, q27, [x1, #416]
    ldp     q28, q29, [x1, #448]
    ldp     q30, q31, [x1, #480]
    ldr     x1, [sp, #256]
    msr     spsr_el1, x1
    ldp     x30, x1, [sp, #240]
    msr     elr_el1, x1
    ldp     x2, x3, [sp, #16]
    ldp     x4, x5, [sp, #32]
    ldp     x6, x7, [sp, #48]
    ldp     x8, x9, [sp, #64]
    ldp     x10, x11, [sp, #80]
    ldp     x12, x13, [sp, #96]
    ldp     x14, x15, [sp, #112]
    ldp     x16, x17, [sp, #128]
    ldp     x18, x19, [sp, #144]
    ldp     x20, x21, [sp, #160]
    ldp     x22, x23, [sp, #176]
    ldp     x24, x25, [sp, #192]
    ldp     x26, x27, [sp, #208]
    ldp     x28, x29, [sp, #224]
    ldp     x0, x1, [sp]
    add     sp, sp, #{frame}
    eret
"#,
    frame = const FRAME_SIZE,
);

/// The general-purpose part of the frame the vector entries push, as `ferry_exception` sees it.
#[derive(Debug)]
#[repr(C)]
pub struct ExceptionFrame {
    /// x0..x30 of the interrupted code.
    pub x: [u64; 31],
    /// `ELR_EL1`: where the exception was taken (or where to resume).
    pub elr: u64,
    /// `SPSR_EL1`: the interrupted PSTATE.
    pub spsr: u64,
    /// The interrupted code's stack pointer.
    pub sp: u64,
}

const _: () = assert!(core::mem::size_of::<ExceptionFrame>() == 272);

/// The vector entry an exception came through: `offset / 0x80` in the table.
const IRQ_CURRENT_EL_SPX: u64 = 5;
const IRQ_CURRENT_EL_SP0: u64 = 1;

/// Set by the first crash report, so that a fault while reporting one cannot loop.
static CRASHING: AtomicBool = AtomicBool::new(false);

/// Names a vector entry: "synchronous exception from EL1 (SPx)" and the like.
fn entry_name(kind: u64) -> (&'static str, &'static str) {
    let what = match kind % 4 {
        0 => "synchronous exception",
        1 => "IRQ",
        2 => "FIQ",
        _ => "SError",
    };
    let from = match kind / 4 {
        0 => "EL1 with SP_EL0",
        1 => "EL1",
        2 => "EL0 (AArch64)",
        _ => "EL0 (AArch32)",
    };
    (what, from)
}

/// The Rust side of every vector entry. Returns (to resume the interrupted code) only for IRQs
/// taken at EL1.
// SAFETY: only the vector code above calls this symbol, with the AAPCS64 arguments declared
// here: `kind` in x0 and in x1 a pointer to the frame it just pushed on the current stack.
#[unsafe(no_mangle)]
extern "C" fn ferry_exception(kind: u64, frame: &mut ExceptionFrame) {
    if kind == IRQ_CURRENT_EL_SPX || kind == IRQ_CURRENT_EL_SP0 {
        crate::irq::handle_irq();
        return;
    }
    crash(kind, frame)
}

/// Prints the crash report and shuts the domain down with reason crash.
fn crash(kind: u64, frame: &ExceptionFrame) -> ! {
    if CRASHING.load(Ordering::Relaxed) {
        // A fault while reporting a fault: say nothing more, just go.
        let _ = crate::xen::hypercall::sched_shutdown(ShutdownReason::Crash);
        super::cpu::halt()
    }
    CRASHING.store(true, Ordering::Relaxed);

    let esr = read_sysreg_esr();
    let far = read_sysreg_far();
    let (what, from) = entry_name(kind);
    if kind.is_multiple_of(4) {
        crate::println!(
            "ferry: crash: {what} from {from}: {}",
            esr::exception_class_name(esr)
        );
        if esr::is_abort(esr) {
            let access = if esr::exception_class(esr) & !1 == 0x20 {
                "instruction fetch"
            } else if esr::is_write(esr) {
                "write"
            } else {
                "read"
            };
            crate::println!(
                "ferry: crash: {access} of {far:#x}: {}",
                esr::FaultStatus::of(esr)
            );
        }
    } else {
        crate::println!("ferry: crash: unexpected {what} from {from}");
    }
    crate::println!(
        "ferry: crash: ESR {esr:#010x} FAR {far:#x} ELR {:#x} SPSR {:#x} SP {:#x}",
        frame.elr,
        frame.spsr,
        frame.sp
    );
    let load = crate::runtime::load_address();
    if frame.elr >= load {
        crate::println!(
            "ferry: crash: ELR is image offset {:#x} (addr2line -e <appliance ELF> {:#x})",
            frame.elr - load,
            frame.elr - load
        );
    }
    crate::println!(
        "ferry: crash: x0 {:#x} x1 {:#x} x2 {:#x} x3 {:#x} x29 {:#x} x30 {:#x}",
        frame.x[0],
        frame.x[1],
        frame.x[2],
        frame.x[3],
        frame.x[29],
        frame.x[30]
    );
    crate::runtime::shutdown(ShutdownReason::Crash)
}

fn read_sysreg_esr() -> u64 {
    use aarch64_cpu::registers::{Readable, ESR_EL1};
    ESR_EL1.get()
}

fn read_sysreg_far() -> u64 {
    use aarch64_cpu::registers::{Readable, FAR_EL1};
    FAR_EL1.get()
}
