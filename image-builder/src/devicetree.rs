//! Xen's dom0less device tree: the machine's device tree with a system added under `/chosen`.
//!
//! The input is the machine's own device tree (for QEMU, what `-machine dumpdtb=` writes). Every
//! node, property and memory reservation of it is copied unchanged, then `/chosen` gets
//! (binding: Xen 4.17 `docs/misc/arm/device-tree/booting.txt`):
//!
//! - `xen,xen-bootargs`: Xen's command line (replacing one that was there);
//! - one `domU<id>` node per domain, in domain-id order, so that Xen gives them ids 1, 2, ...:
//!   `compatible = "xen,domain"`, `#address-cells = <2>`, `#size-cells = <2>`, `memory` in KiB
//!   (64 bits), `cpus`, `vpl011`, `xen,enhanced = "no-xenstore"` (which gives the guest the
//!   event-channel interface and Xen's hypervisor node), and for a direct-mapped domain
//!   `xen,static-mem = <base size>` (in `/chosen`'s cells, which Xen uses for it) and
//!   `direct-map`;
//! - inside it `module@<addr>` (`compatible = "multiboot,kernel", "multiboot,module"`,
//!   `reg = <addr size>`, `bootargs`) and one `evtchn-<channel>` node per channel end
//!   (`compatible = "xen,evtchn-v1"`, `xen,evtchn = <local-port &peer-end>`, `phandle`). The
//!   phandles are allocated above the highest phandle of the machine's tree.
//!
//! This module also checks the tree against the system: Xen's UART exists, and the module area
//! and every direct-mapped domain's memory lie in RAM. It never runs a tool.

use std::collections::BTreeSet;

use anyhow::{anyhow, bail, Context, Result};
use fdt::node::FdtNode;
use fdt::Fdt;
use vm_fdt::{FdtReserveEntry, FdtWriter};

use crate::config::System;
use crate::layout::Module;

/// The multiboot compatible strings of a domU kernel module.
pub const KERNEL_MODULE_COMPATIBLE: [&str; 2] = ["multiboot,kernel", "multiboot,module"];
/// `xen,enhanced` value of every domain: event channels and grants, no xenstore.
pub const XEN_ENHANCED: &str = "no-xenstore";

/// Builds Xen's device tree from the machine's `base` tree.
pub fn build(base: &[u8], system: &System, modules: &[Module]) -> Result<Vec<u8>> {
    let tree = Fdt::new(base).map_err(|error| anyhow!("the machine's device tree: {error:?}"))?;
    check_against_machine(&tree, system, modules)?;

    let chosen_cells = chosen_cells(&tree);
    let mut phandles = BTreeSet::new();
    for node in tree.all_nodes() {
        for property in node.properties() {
            if matches!(property.name, "phandle" | "linux,phandle") {
                if let Some(value) = property.as_usize() {
                    phandles.insert(value as u32);
                }
            }
        }
    }
    let first_phandle = phandles.last().map_or(1, |highest| highest + 1);
    // Channel end phandles: (channel index, end slot) -> phandle.
    let end_phandle =
        |channel: usize, slot: usize| first_phandle + 2 * channel as u32 + slot as u32;

    let reservations = tree
        .memory_reservations()
        .map(|reservation| {
            FdtReserveEntry::new(reservation.address() as u64, reservation.size() as u64)
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| anyhow!("memory reservation: {error}"))?;
    let mut writer = FdtWriter::new_with_mem_reserv(&reservations).map_err(dt_error)?;
    writer.set_boot_cpuid_phys(boot_cpuid_phys(base));

    let root = tree
        .find_node("/")
        .context("the machine's device tree has no root node")?;
    let additions = Additions {
        system,
        modules,
        chosen_cells,
        end_phandle: &end_phandle,
    };
    copy_node(&mut writer, root, "/", &additions)?;
    if tree.find_node("/chosen").is_none() {
        bail!("the machine's device tree has no /chosen node");
    }
    writer.finish().map_err(dt_error)
}

struct Additions<'a> {
    system: &'a System,
    modules: &'a [Module],
    chosen_cells: (u32, u32),
    end_phandle: &'a dyn Fn(usize, usize) -> u32,
}

fn dt_error(error: vm_fdt::Error) -> anyhow::Error {
    anyhow!("writing the device tree: {error}")
}

fn copy_node(
    writer: &mut FdtWriter,
    node: FdtNode<'_, '_>,
    path: &str,
    additions: &Additions<'_>,
) -> Result<()> {
    let is_root = path == "/";
    let is_chosen = path == "/chosen";
    let handle = writer
        .begin_node(if is_root { "" } else { node.name })
        .map_err(|error| anyhow!("node {path}: {error}"))?;
    for property in node.properties() {
        if is_chosen && property.name == "xen,xen-bootargs" {
            continue;
        }
        let result = if property.name == "phandle" && property.value.len() == 4 {
            let value = u32::from_be_bytes(property.value.try_into().expect("4 bytes"));
            writer.property_phandle(value)
        } else {
            writer.property(property.name, property.value)
        };
        result.map_err(|error| anyhow!("property {path}:{}: {error}", property.name))?;
    }
    if is_chosen {
        writer
            .property_string("xen,xen-bootargs", &additions.system.xen_bootargs)
            .map_err(dt_error)?;
    }
    for child in node.children() {
        if is_chosen
            && child
                .compatible()
                .is_some_and(|compatible| compatible.all().any(|c| c == "xen,domain"))
        {
            bail!(
                "the machine's device tree already has a domain node /chosen/{}",
                child.name
            );
        }
        let child_path = if is_root {
            format!("/{}", child.name)
        } else {
            format!("{path}/{}", child.name)
        };
        copy_node(writer, child, &child_path, additions)?;
    }
    if is_chosen {
        for domain in &additions.system.domains {
            write_domain(writer, additions, domain.domid)?;
        }
    }
    writer.end_node(handle).map_err(dt_error)
}

fn write_domain(writer: &mut FdtWriter, additions: &Additions<'_>, domid: u32) -> Result<()> {
    let system = additions.system;
    let domain = system
        .domain_by_id(domid)
        .expect("the caller iterates over the system's domains");
    let module = additions
        .modules
        .iter()
        .find(|module| module.domid == domid)
        .ok_or_else(|| anyhow!("domain '{}' has no module", domain.name))?;
    let node = writer
        .begin_node(&format!("domU{domid}"))
        .map_err(dt_error)?;
    writer
        .property_string("compatible", "xen,domain")
        .map_err(dt_error)?;
    writer.property_u32("#address-cells", 2).map_err(dt_error)?;
    writer.property_u32("#size-cells", 2).map_err(dt_error)?;
    writer
        .property_u64("memory", domain.memory / 1024)
        .map_err(dt_error)?;
    writer
        .property_u32("cpus", domain.vcpus)
        .map_err(dt_error)?;
    writer.property_null("vpl011").map_err(dt_error)?;
    writer
        .property_string("xen,enhanced", XEN_ENHANCED)
        .map_err(dt_error)?;
    if let Some(base) = domain.direct_map {
        let (address_cells, size_cells) = additions.chosen_cells;
        let mut cells = to_cells(base, address_cells)
            .with_context(|| format!("domain '{}': direct_map.base", domain.name))?;
        cells.extend(
            to_cells(domain.memory, size_cells)
                .with_context(|| format!("domain '{}': memory", domain.name))?,
        );
        writer
            .property_array_u32("xen,static-mem", &cells)
            .map_err(dt_error)?;
        writer.property_null("direct-map").map_err(dt_error)?;
    }

    let module_node = writer
        .begin_node(&format!("module@{:x}", module.address))
        .map_err(dt_error)?;
    writer
        .property_string_list(
            "compatible",
            KERNEL_MODULE_COMPATIBLE.map(str::to_owned).to_vec(),
        )
        .map_err(dt_error)?;
    writer
        .property_array_u64("reg", &[module.address, module.size])
        .map_err(dt_error)?;
    writer
        .property_string("bootargs", &domain.bootargs())
        .map_err(dt_error)?;
    writer.end_node(module_node).map_err(dt_error)?;

    for (index, channel) in system.channels.iter().enumerate() {
        for (slot, &(end_domid, port)) in channel.ends.iter().enumerate() {
            if end_domid != domid {
                continue;
            }
            let end = writer
                .begin_node(&format!("evtchn-{}", channel.name))
                .map_err(dt_error)?;
            writer
                .property_string("compatible", "xen,evtchn-v1")
                .map_err(dt_error)?;
            writer
                .property_array_u32(
                    "xen,evtchn",
                    &[port, (additions.end_phandle)(index, 1 - slot)],
                )
                .map_err(dt_error)?;
            writer
                .property_phandle((additions.end_phandle)(index, slot))
                .map_err(|error| anyhow!("channel '{}': phandle: {error}", channel.name))?;
            writer.end_node(end).map_err(dt_error)?;
        }
    }
    writer.end_node(node).map_err(dt_error)
}

/// `value` as `cells` big-endian 32-bit cells.
fn to_cells(value: u64, cells: u32) -> Result<Vec<u32>> {
    match cells {
        1 if value <= u64::from(u32::MAX) => Ok(vec![value as u32]),
        1 => bail!("{value:#x} does not fit in one cell"),
        2 => Ok(vec![(value >> 32) as u32, value as u32]),
        other => bail!("{other} cells per value are not supported"),
    }
}

/// `#address-cells` and `#size-cells` that apply to the children of `/chosen`: its own, else
/// the root's (Xen inherits them from the parent), else the spec defaults 2 and 1.
fn chosen_cells(tree: &Fdt<'_>) -> (u32, u32) {
    let read = |path: &str, name: &str| {
        tree.find_node(path)
            .and_then(|node| node.property(name))
            .and_then(|property| property.as_usize())
            .map(|value| value as u32)
    };
    let address = read("/chosen", "#address-cells")
        .or_else(|| read("/", "#address-cells"))
        .unwrap_or(2);
    let size = read("/chosen", "#size-cells")
        .or_else(|| read("/", "#size-cells"))
        .unwrap_or(1);
    (address, size)
}

fn boot_cpuid_phys(base: &[u8]) -> u32 {
    base.get(28..32)
        .map(|bytes| u32::from_be_bytes(bytes.try_into().expect("4 bytes")))
        .unwrap_or(0)
}

/// RAM banks of the machine: `reg` of every root child with `device_type = "memory"`.
pub fn ram_banks(tree: &Fdt<'_>) -> Vec<(u64, u64)> {
    let mut banks = Vec::new();
    let Some(root) = tree.find_node("/") else {
        return banks;
    };
    for node in root.children() {
        let is_memory = node
            .property("device_type")
            .and_then(|property| property.as_str())
            == Some("memory");
        if !is_memory {
            continue;
        }
        if let Some(regions) = node.reg() {
            for region in regions {
                banks.push((
                    region.starting_address as u64,
                    region.size.unwrap_or(0) as u64,
                ));
            }
        }
    }
    banks
}

fn check_against_machine(tree: &Fdt<'_>, system: &System, modules: &[Module]) -> Result<()> {
    let board = system.board_path.display();
    let uart = &system.board.xen.uart;
    if tree.find_node(uart).is_none() {
        bail!("{board}: xen.uart: the machine's device tree has no node {uart}");
    }
    let banks = ram_banks(tree);
    let in_ram = |start: u64, end: u64| {
        banks
            .iter()
            .any(|&(base, size)| base <= start && end <= base + size)
    };
    let area = system.board.modules;
    if !in_ram(area.base.0, area.end()) {
        bail!(
            "{board}: modules: {}-{:#x} is not inside the machine's RAM {}",
            area.base,
            area.end(),
            show_banks(&banks)
        );
    }
    for module in modules {
        if !in_ram(module.address, module.end()) {
            bail!(
                "module of domain {} at {:#x}-{:#x} is not inside the machine's RAM {}",
                module.domid,
                module.address,
                module.end(),
                show_banks(&banks)
            );
        }
    }
    for domain in &system.domains {
        if let Some(base) = domain.direct_map {
            if !in_ram(base, base + domain.memory) {
                bail!(
                    "{}: domain '{}': direct_map: {base:#x}-{:#x} is not inside the machine's RAM \
                     {}",
                    system.path.display(),
                    domain.name,
                    base + domain.memory,
                    show_banks(&banks)
                );
            }
        }
    }
    Ok(())
}

fn show_banks(banks: &[(u64, u64)]) -> String {
    if banks.is_empty() {
        return "(no memory node)".to_owned();
    }
    banks
        .iter()
        .map(|(base, size)| format!("{base:#x}-{:#x}", base + size))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::path::PathBuf;
    use std::process::{Command, Stdio};

    use super::*;
    use crate::layout::tests::{test_system, TWO};

    /// A small tree shaped like QEMU virt's: 2/2 cells, RAM at 1 GiB, a UART, an interrupt
    /// controller with a phandle, /chosen with stdout-path, and a memory reservation.
    pub(crate) fn machine_tree(ram: u64) -> Vec<u8> {
        let mut w =
            FdtWriter::new_with_mem_reserv(&[FdtReserveEntry::new(0x4800_0000, 0x1000).unwrap()])
                .unwrap();
        let root = w.begin_node("").unwrap();
        w.property_string("compatible", "linux,dummy-virt").unwrap();
        w.property_u32("#address-cells", 2).unwrap();
        w.property_u32("#size-cells", 2).unwrap();
        w.property_u32("interrupt-parent", 0x8002).unwrap();
        let chosen = w.begin_node("chosen").unwrap();
        w.property_string("stdout-path", "/pl011@9000000").unwrap();
        w.property_string("xen,xen-bootargs", "old").unwrap();
        w.end_node(chosen).unwrap();
        let memory = w.begin_node("memory@40000000").unwrap();
        w.property_string("device_type", "memory").unwrap();
        w.property_array_u64("reg", &[0x4000_0000, ram]).unwrap();
        w.end_node(memory).unwrap();
        let uart = w.begin_node("pl011@9000000").unwrap();
        w.property_string_list(
            "compatible",
            vec!["arm,pl011".to_owned(), "arm,primecell".to_owned()],
        )
        .unwrap();
        w.property_array_u64("reg", &[0x900_0000, 0x1000]).unwrap();
        w.end_node(uart).unwrap();
        let clock = w.begin_node("apb-pclk").unwrap();
        w.property_phandle(0x8000).unwrap();
        w.end_node(clock).unwrap();
        let gic = w.begin_node("intc@8000000").unwrap();
        w.property_null("interrupt-controller").unwrap();
        w.property_phandle(0x8002).unwrap();
        w.end_node(gic).unwrap();
        w.end_node(root).unwrap();
        w.finish().unwrap()
    }

    fn modules() -> Vec<Module> {
        vec![
            Module {
                domid: 1,
                image: PathBuf::from("/img/selftest.img"),
                address: 0x5000_0000,
                size: 0x3210,
            },
            Module {
                domid: 2,
                image: PathBuf::from("/img/other.img"),
                address: 0x5020_0000,
                size: 0x1000,
            },
        ]
    }

    /// `dtc -I dtb -O dts`: fails the test if dtc refuses the tree; returns the source.
    fn decompile(dtb: &[u8]) -> String {
        let mut child = Command::new("dtc")
            .args(["-I", "dtb", "-O", "dts", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("dtc is installed (device-tree-compiler, scripts/setup)");
        child.stdin.take().unwrap().write_all(dtb).unwrap();
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "dtc failed: {stderr}");
        String::from_utf8(output.stdout).unwrap()
    }

    fn u32s(value: &[u8]) -> Vec<u32> {
        value
            .chunks(4)
            .map(|chunk| u32::from_be_bytes(chunk.try_into().unwrap()))
            .collect()
    }

    #[test]
    fn domains_channels_and_bootargs_are_added_under_chosen() {
        let system = test_system(TWO);
        let dtb = build(&machine_tree(1 << 30), &system, &modules()).unwrap();

        let source = decompile(&dtb);
        assert!(source.contains("domU1 {"), "{source}");
        assert!(source.contains("/memreserve/\t0x0000000048000000 0x0000000000001000;"));

        let tree = Fdt::new(&dtb).unwrap();
        // The machine's nodes and phandles are still there.
        assert!(tree.find_node("/pl011@9000000").is_some());
        assert_eq!(tree.find_phandle(0x8002).unwrap().name, "intc@8000000");
        assert_eq!(tree.memory_reservations().count(), 1);

        let chosen = tree.find_node("/chosen").unwrap();
        assert_eq!(
            chosen.property("stdout-path").unwrap().as_str(),
            Some("/pl011@9000000")
        );
        let bootargs: Vec<_> = chosen
            .properties()
            .filter(|property| property.name == "xen,xen-bootargs")
            .collect();
        assert_eq!(bootargs.len(), 1, "the old xen,xen-bootargs is replaced");
        assert_eq!(bootargs[0].as_str(), Some(system.xen_bootargs.as_str()));

        let names: Vec<_> = chosen.children().map(|node| node.name).collect();
        assert_eq!(names, ["domU1", "domU2"]);

        let ping = tree.find_node("/chosen/domU1").unwrap();
        assert_eq!(
            ping.compatible().unwrap().first(),
            "xen,domain",
            "compatible"
        );
        assert_eq!(
            ping.property("memory").unwrap().value,
            &4096u64.to_be_bytes()
        );
        assert_eq!(ping.property("cpus").unwrap().as_usize(), Some(1));
        assert!(ping.property("vpl011").unwrap().value.is_empty());
        assert_eq!(
            ping.property("xen,enhanced").unwrap().as_str(),
            Some("no-xenstore")
        );
        assert!(ping.property("xen,static-mem").is_none());
        assert!(ping.property("direct-map").is_none());

        let module = tree.find_node("/chosen/domU1/module@50000000").unwrap();
        assert_eq!(
            module.compatible().unwrap().all().collect::<Vec<_>>(),
            KERNEL_MODULE_COMPATIBLE
        );
        assert_eq!(
            u32s(module.property("reg").unwrap().value),
            [0, 0x5000_0000, 0, 0x3210]
        );
        assert_eq!(
            module.property("bootargs").unwrap().as_str(),
            Some("ferry.name=ping selftest.port=10 selftest.peer=2")
        );

        let pong = tree.find_node("/chosen/domU2").unwrap();
        assert_eq!(
            u32s(pong.property("xen,static-mem").unwrap().value),
            [0, 0x6000_0000, 0, 0x40_0000]
        );
        assert!(pong.property("direct-map").is_some());

        // Event channels: phandles above the machine's highest (0x8002), pointing at each other.
        let ping_end = tree.find_node("/chosen/domU1/evtchn-selftest").unwrap();
        let pong_end = tree.find_node("/chosen/domU2/evtchn-selftest").unwrap();
        assert_eq!(
            ping_end.compatible().unwrap().first(),
            "xen,evtchn-v1",
            "compatible"
        );
        let ping_phandle = ping_end.property("phandle").unwrap().as_usize().unwrap() as u32;
        let pong_phandle = pong_end.property("phandle").unwrap().as_usize().unwrap() as u32;
        assert_eq!((ping_phandle, pong_phandle), (0x8003, 0x8004));
        assert_eq!(
            u32s(ping_end.property("xen,evtchn").unwrap().value),
            [10, pong_phandle]
        );
        assert_eq!(
            u32s(pong_end.property("xen,evtchn").unwrap().value),
            [10, ping_phandle]
        );
        assert_eq!(
            tree.find_phandle(pong_phandle).unwrap().name,
            "evtchn-selftest"
        );
    }

    #[test]
    fn static_mem_uses_the_cells_of_chosen() {
        let mut w = FdtWriter::new().unwrap();
        let root = w.begin_node("").unwrap();
        w.property_u32("#address-cells", 2).unwrap();
        w.property_u32("#size-cells", 2).unwrap();
        let chosen = w.begin_node("chosen").unwrap();
        w.property_u32("#address-cells", 1).unwrap();
        w.property_u32("#size-cells", 1).unwrap();
        w.end_node(chosen).unwrap();
        let memory = w.begin_node("memory@40000000").unwrap();
        w.property_string("device_type", "memory").unwrap();
        w.property_array_u64("reg", &[0x4000_0000, 1 << 30])
            .unwrap();
        w.end_node(memory).unwrap();
        let uart = w.begin_node("pl011@9000000").unwrap();
        w.end_node(uart).unwrap();
        w.end_node(root).unwrap();
        let base = w.finish().unwrap();

        let dtb = build(&base, &test_system(TWO), &modules()).unwrap();
        decompile(&dtb);
        let tree = Fdt::new(&dtb).unwrap();
        let pong = tree.find_node("/chosen/domU2").unwrap();
        assert_eq!(
            u32s(pong.property("xen,static-mem").unwrap().value),
            [0x6000_0000, 0x40_0000]
        );
        // With no phandle in the machine's tree, channel phandles start at 1.
        let end = tree.find_node("/chosen/domU1/evtchn-selftest").unwrap();
        assert_eq!(end.property("phandle").unwrap().as_usize(), Some(1));
    }

    #[test]
    fn the_machine_must_have_the_uart_and_the_ram() {
        let system = test_system(TWO);
        let small = build(&machine_tree(0x1000_0000), &system, &modules()).unwrap_err();
        assert!(
            small
                .to_string()
                .contains("is not inside the machine's RAM"),
            "{small}"
        );
        let mut other_uart = system.clone();
        other_uart.board.xen.uart = "/pl011@9040000".to_owned();
        let error = build(&machine_tree(1 << 30), &other_uart, &modules()).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("xen.uart: the machine's device tree has no node"),
            "{error}"
        );
        assert!(build(b"not a tree", &system, &modules()).is_err());
    }

    #[test]
    fn a_tree_dumped_by_qemu_is_copied_whole() {
        // The real thing when QEMU is installed (it is, on every machine scripts/setup ran on).
        let dir = std::env::temp_dir().join(format!("ferry-dt-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let system = test_system(TWO);
        let base = match crate::qemu::dump_machine_dtb(
            &crate::qemu::qemu_binary(),
            &system.board.qemu,
            system.board.qemu.smp,
            &dir.join("virt.dtb"),
        ) {
            Ok(base) => base,
            Err(error) => panic!("QEMU could not dump its device tree: {error:#}"),
        };
        let _ = std::fs::remove_dir_all(&dir);
        let dtb = build(&base, &system, &modules()).unwrap();
        let before = Fdt::new(&base).unwrap();
        let after = Fdt::new(&dtb).unwrap();
        assert_eq!(
            before.all_nodes().count() + 6,
            after.all_nodes().count(),
            "2 domain nodes, 2 module nodes and 2 channel ends are added"
        );
        for node in before.all_nodes() {
            let copied: Vec<_> = after
                .all_nodes()
                .filter(|other| other.name == node.name)
                .collect();
            assert!(!copied.is_empty(), "{} is copied", node.name);
        }
        decompile(&dtb);
    }
}
