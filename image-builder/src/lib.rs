//! Ferry's image builder: turns the appliance binaries into bootable arm64 images, and board +
//! system files into a Xen device tree and a QEMU run.
//!
//! - [`image`]: ELF -> raw arm64 `Image`, with the checks that make an image bootable by Xen.
//! - [`appliances`]: builds every appliance binary with the bare-metal toolchain and converts
//!   each into an image.
//! - [`config`]: board and system TOML files -> a checked [`config::System`] (domain ids,
//!   ports, bootargs).
//! - [`layout`]: where each domain's kernel is loaded in the board's module area.
//! - [`devicetree`]: the machine's device tree + a system -> Xen's dom0less device tree.
//! - [`console`]: what a line of Xen's console says (which domain, done, serving, crashed,
//!   fatal).
//! - [`qemu`]: QEMU and Xen command lines, `dumpdtb`, and running a system to its verdict.
//! - [`bench`]: the search for the smallest domain memory that passes, and the probe's
//!   `ferry: bench:` lines.
//!
//! The command-line interface (`src/main.rs`) only parses arguments and prints.

pub mod appliances;
pub mod bench;
pub mod config;
pub mod console;
pub mod devicetree;
pub mod diskcheck;
pub mod image;
pub mod layout;
pub mod qemu;
