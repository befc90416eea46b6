//! The arm64 Image header and the entry code: from Xen's jump to the first instruction up to
//! the call of [`crate::runtime`]'s Rust entry.
//!
//! # Boot protocol
//!
//! Xen starts an arm64 domU the way Linux's `Documentation/arch/arm64/booting.rst` describes:
//! it copies the raw image to the start of guest RAM plus `text_offset` and enters its first
//! byte at EL1 with the MMU and data cache off, interrupts masked, and `x0` holding the guest
//! physical address of the device tree. Xen only accepts the image if the 64-byte header below
//! carries the magic `0x644d5241` ("ARM\x64") at offset 56.
//!
//! | offset | field         | value                                                         |
//! |--------|---------------|---------------------------------------------------------------|
//! | 0      | code0         | `b ferry_boot`                                                |
//! | 4      | code1         | 0                                                             |
//! | 8      | text_offset   | 0                                                             |
//! | 16     | image_size    | `__image_size` from `link.ld`: image start to end of bss and boot stack, rounded up to 4 KiB |
//! | 24     | flags         | `0xa`: little endian, 4 KiB pages, may be placed anywhere in physical memory |
//! | 32..56 | res2..res4    | 0                                                             |
//! | 56     | magic         | `0x644d5241`                                                  |
//! | 60     | res5          | 0 (no PE/COFF header)                                         |
//!
//! # Position independence
//!
//! An appliance must run wherever Xen puts it: at 0x40000000 (the default guest RAM base) in an
//! ordinary domU, at the host address of its RAM (e.g. 0x60000000) when it is direct-mapped.
//! The image is a **static PIE with self-relocation**, like the Linux arm64 kernel:
//!
//! - all code is PC-relative anyway (`adrp`/`add` in the small code model), but Rust puts
//!   absolute pointers into data (vtables, `fmt::Arguments` pieces, panic locations), and those
//!   cannot be avoided;
//! - `link.ld` links the image at address 0 and `build.rs` passes `--pie`, so the linker turns
//!   every absolute pointer into an `R_AARCH64_RELATIVE` entry of `.rela.dyn`;
//! - the entry code below adds the load address (the run-time address of the header) to each of
//!   them before any Rust code runs. Any other relocation type stops the boot with a crash
//!   shutdown; image-builder already refuses such an ELF.
//!
//! The entry code itself uses only PC-relative addressing and registers until the relocations
//! are applied.
//!
//! # Entry sequence
//!
//! 0. read the virtual counter into x21 (the first instruction after the header's branch, so
//!    that `BootInfo::entry_ticks` is the boot timestamp; image-builder insists that code0 is a
//!    branch);
//! 1. keep the device tree address (x0) in x19 and the load address in x20;
//! 2. enable FP/SIMD for EL1 (`CPACR_EL1.FPEN = 0b11`): the target's Rust code uses NEON
//!    registers, and with FPEN clear every such instruction traps;
//! 3. point `sp` at the top of the boot stack (`link.ld`, 64 KiB, 16-byte aligned);
//! 4. apply `.rela.dyn`;
//! 5. zero `.bss` (Xen does not promise zeroed memory);
//! 6. install the exception vectors (`exceptions`), so that a fault from here on is reported;
//! 7. call `ferry_rust_start(device_tree, load_address, entry_ticks)`, which never returns.
//!
//! The MMU is still off when Rust code starts: all data accesses are Device-nGnRnE until
//! `runtime` turns it on, which it does as soon as it has read the device tree.

use core::arch::global_asm;

global_asm!(
    r#"
    .section .head, "ax"
    .global _start
_start:
    b       ferry_boot              // code0
    .long   0                       // code1
    .quad   0                       // text_offset
    .quad   __image_size            // image_size (link.ld)
    .quad   0xa                     // flags: LE, 4 KiB pages, anywhere in PA space
    .quad   0                       // res2
    .quad   0                       // res3
    .quad   0                       // res4
    .long   0x644d5241              // magic "ARM\x64"
    .long   0                       // res5

    .section .text.boot, "ax"
ferry_boot:
    mrs     x21, cntvct_el0         // boot timestamp
    mov     x19, x0                 // device tree address
    adrp    x20, __image_start      // load address: link.ld links __image_start at 0
    add     x20, x20, :lo12:__image_start

    mrs     x1, cpacr_el1
    orr     x1, x1, #(3 << 20)      // FPEN: no trapping of FP/SIMD at EL1 and EL0
    msr     cpacr_el1, x1
    isb

    adrp    x1, __stack_top
    add     x1, x1, :lo12:__stack_top
    mov     sp, x1

    adrp    x2, __rela_start
    add     x2, x2, :lo12:__rela_start
    adrp    x3, __rela_end
    add     x3, x3, :lo12:__rela_end
1:  cmp     x2, x3
    b.hs    2f
    ldp     x4, x5, [x2], #16       // r_offset, r_info
    ldr     x6, [x2], #8            // r_addend
    cmp     x5, #1027               // R_AARCH64_RELATIVE (no symbol)
    b.ne    9f
    add     x6, x6, x20             // *(load + r_offset) = load + r_addend
    str     x6, [x20, x4]
    b       1b

2:  adrp    x2, __bss_start
    add     x2, x2, :lo12:__bss_start
    adrp    x3, __bss_end
    add     x3, x3, :lo12:__bss_end
3:  cmp     x2, x3
    b.hs    4f
    stp     xzr, xzr, [x2], #16
    b       3b

4:  adrp    x1, ferry_vectors
    add     x1, x1, :lo12:ferry_vectors
    msr     vbar_el1, x1
    isb

    mov     x0, x19
    mov     x1, x20
    mov     x2, x21
    bl      ferry_rust_start
    b       .

    // Unsupported relocation: HYPERVISOR_sched_op(SCHEDOP_shutdown, &{{ SHUTDOWN_crash }}).
9:  mov     x1, #3
    str     x1, [sp, #-16]!
    mov     x1, sp
    mov     x0, #2
    mov     x16, #29
    hvc     #0xea1
    b       .
"#
);
