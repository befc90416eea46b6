//! Links bare-metal appliance binaries with our linker script (`link.ld`) as static PIE.
//!
//! Host builds (tests, clippy) link normally: nothing is passed for them.

use std::env;

fn main() {
    println!("cargo::rerun-if-changed=link.ld");
    println!("cargo::rerun-if-changed=build.rs");

    let os = env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    if os != "none" || arch != "aarch64" {
        return;
    }

    let manifest_dir = env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    for arg in [
        format!("-T{manifest_dir}/link.ld"),
        // Position independence: see the module doc of src/arch/aarch64/boot.rs.
        "--pie".to_owned(),
        "--no-dynamic-linker".to_owned(),
        // The code is compiled with the target's static relocation model, so absolute pointers
        // sit in read-only sections (vtables in .rodata); their R_AARCH64_RELATIVE entries are
        // applied by our entry code before the MMU is on, so "text relocations" are fine here.
        "-znotext".to_owned(),
        "-zmax-page-size=4096".to_owned(),
        "--no-eh-frame-hdr".to_owned(),
    ] {
        println!("cargo::rustc-link-arg-bins={arg}");
    }
}
