//! `selftest`: the smallest appliance. It proves that an image boots under Xen, that its
//! relocations were applied (formatting goes through vtables), that the Xen console works and
//! that the domain shuts down cleanly.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(all(target_arch = "aarch64", target_os = "none"))]
ferry_appliance::entry!(selftest);

#[cfg(all(target_arch = "aarch64", target_os = "none"))]
fn selftest(boot: &ferry_appliance::BootInfo) -> ferry_appliance::Exit {
    ferry_appliance::println!(
        "ferry: selftest: loaded at {:#x}, device tree at {:#x}",
        boot.load_address,
        boot.device_tree
    );
    ferry_appliance::Exit::Success
}

#[cfg(not(target_os = "none"))]
fn main() -> std::process::ExitCode {
    ferry_appliance::host::refuse_to_run("selftest")
}
