//! Ferry's image builder: turns the appliance binaries into bootable arm64 images.
//!
//! - [`image`]: ELF -> raw arm64 `Image`, with the checks that make an image bootable by Xen.
//! - [`appliances`]: builds every appliance binary with the bare-metal toolchain and converts
//!   each into an image.
//!
//! The command-line interface (`src/main.rs`) only parses arguments and prints.

pub mod appliances;
pub mod image;
