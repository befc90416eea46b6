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
//! - with QEMU devices and IOREQ devices (`[[qemu_device]]`, `passthrough`, `[[virtio]]`):
//!   `xen,passthrough` on the machine's node of every passed-through device, a `phandle` on
//!   each frontend's domain node and `xen,device-model-for = <&frontend>` on its backend's
//!   (Ferry's Xen patch 0002), and a `multiboot,device-tree` module per domain that has a
//!   partial device tree ([`partial_tree`]: the passed-through devices with `xen,reg`/
//!   `xen,path`, and a frontend's emulated virtio-mmio windows with `xen,grant-dma`).
//!
//! This module also checks the tree against the system: Xen's UART exists, the module area
//! and every direct-mapped domain's memory lie in RAM, and passed-through devices neither
//! share a page across domains nor use a frontend's emulated INTIDs. It never runs a tool.

use std::collections::BTreeSet;

use anyhow::{anyhow, bail, Context, Result};
use fdt::node::FdtNode;
use fdt::Fdt;
use vm_fdt::{FdtReserveEntry, FdtWriter};

use crate::config::{System, PAGE_SIZE, VIRTIO_MMIO_FIRST_INTID, VIRTIO_MMIO_LAST_INTID};
use crate::layout::{Module, ModuleKind};

/// The multiboot compatible strings of a domU kernel module.
pub const KERNEL_MODULE_COMPATIBLE: [&str; 2] = ["multiboot,kernel", "multiboot,module"];
/// The multiboot compatible strings of a Linux domU's initramfs module.
pub const RAMDISK_MODULE_COMPATIBLE: [&str; 2] = ["multiboot,ramdisk", "multiboot,module"];
/// The multiboot compatible strings of a domU's partial device tree module.
pub const DEVICE_TREE_MODULE_COMPATIBLE: [&str; 2] = ["multiboot,device-tree", "multiboot,module"];
/// Phandle of the `/gic` placeholder of a partial device tree. Xen 4.17 takes the phandle of
/// the placeholder for the GIC node it writes into the guest's tree
/// (`domain_handle_dtb_bootmodule()`); this is its default, `GUEST_PHANDLE_GIC`
/// (`public/device_tree_defs.h`).
pub const GUEST_PHANDLE_GIC: u32 = 65000;
/// Phandle of the `xen,grant-dma` node of a frontend's partial device tree.
pub const GRANT_DMA_PHANDLE: u32 = 1;
/// GIC `interrupts` flags of an emulated device's SPI: level-sensitive, active high.
pub const IRQ_TYPE_LEVEL_HIGH: u32 = 4;
/// `xen,enhanced` value of every domain: event channels and grants, no xenstore.
pub const XEN_ENHANCED: &str = "no-xenstore";

/// A QEMU device as the machine's device tree describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostDevice {
    /// The `[[qemu_device]]` id.
    pub id: String,
    /// Its node's path in the machine's tree, e.g. `/virtio_mmio@a003e00`.
    pub path: String,
    /// Its register window.
    pub base: u64,
    /// Size of the register window.
    pub size: u64,
    /// Its `interrupts` cells, as the machine's tree has them (GIC: type, number, flags).
    pub interrupts: Vec<u32>,
}

impl HostDevice {
    /// The node's name: the last component of its path.
    pub fn node_name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or(&self.path)
    }

    /// The GIC INTID of its first interrupt (SPI `n` is INTID `n + 32`, PPI `n` is `n + 16`).
    pub fn intid(&self) -> Option<u32> {
        match self.interrupts.get(..2)? {
            [0, number] => Some(number + 32),
            [1, number] => Some(number + 16),
            _ => None,
        }
    }

    /// The pages that hold the register window: (first page, size in bytes).
    pub fn pages(&self) -> (u64, u64) {
        let start = self.base / PAGE_SIZE * PAGE_SIZE;
        let end = (self.base + self.size).div_ceil(PAGE_SIZE) * PAGE_SIZE;
        (start, end - start)
    }
}

/// Finds the device at `base` in the machine's tree: a `virtio,mmio` node whose `reg` starts
/// there (QEMU's virt machine lists all of its virtio-mmio transports, used or not).
pub fn host_device(machine: &[u8], id: &str, base: u64) -> Result<HostDevice> {
    let tree =
        Fdt::new(machine).map_err(|error| anyhow!("the machine's device tree: {error:?}"))?;
    let root = tree
        .find_node("/")
        .context("the machine's device tree has no root node")?;
    for node in root.children() {
        let is_virtio = node
            .compatible()
            .is_some_and(|compatible| compatible.all().any(|c| c == "virtio,mmio"));
        if !is_virtio {
            continue;
        }
        let Some(region) = node.reg().and_then(|mut regions| regions.next()) else {
            continue;
        };
        if region.starting_address as u64 != base {
            continue;
        }
        let interrupts = node
            .property("interrupts")
            .map(|property| {
                property
                    .value
                    .chunks_exact(4)
                    .map(|chunk| u32::from_be_bytes(chunk.try_into().expect("4 bytes")))
                    .collect()
            })
            .unwrap_or_default();
        return Ok(HostDevice {
            id: id.to_owned(),
            path: format!("/{}", node.name),
            base,
            size: region.size.unwrap_or(0) as u64,
            interrupts,
        });
    }
    bail!(
        "qemu_device '{id}': QEMU put it on the virtio-mmio transport at {base:#x}, but the \
         machine's device tree has no virtio,mmio node there"
    )
}

/// Checks the located QEMU devices against the system: no two owners of one page, and no
/// passed-through interrupt of a frontend in the emulated devices' INTIDs 33..43.
pub fn check_devices(system: &System, devices: &[HostDevice]) -> Result<()> {
    let owner = |device: &HostDevice| {
        system
            .qemu_device(&device.id)
            .and_then(|declared| declared.owner)
    };
    for (index, a) in devices.iter().enumerate() {
        for b in &devices[index + 1..] {
            let (a_page, a_size) = a.pages();
            let (b_page, b_size) = b.pages();
            let overlap = a_page < b_page + b_size && b_page < a_page + a_size;
            if let (true, Some(a_owner), Some(b_owner)) = (overlap, owner(a), owner(b)) {
                if a_owner != b_owner {
                    let name = |domid: u32| {
                        system
                            .domain_by_id(domid)
                            .map_or_else(|| domid.to_string(), |domain| domain.name.clone())
                    };
                    bail!(
                        "{}: qemu_device '{}' ({:#x}) and '{}' ({:#x}) share the page {a_page:#x} \
                         (Xen passes whole pages), so they cannot go to two domains ('{}' and \
                         '{}')",
                        system.path.display(),
                        a.id,
                        a.base,
                        b.id,
                        b.base,
                        name(a_owner),
                        name(b_owner)
                    );
                }
            }
        }
    }
    for device in devices {
        let Some(owner) = owner(device) else {
            continue;
        };
        let intid = device.intid().ok_or_else(|| {
            anyhow!(
                "qemu_device '{}': {} has no GIC interrupt in the machine's tree ({:?})",
                device.id,
                device.path,
                device.interrupts
            )
        })?;
        let is_frontend = !system.frontend_devices(owner).is_empty();
        if is_frontend && (VIRTIO_MMIO_FIRST_INTID..=VIRTIO_MMIO_LAST_INTID).contains(&intid) {
            bail!(
                "qemu_device '{}': INTID {intid} is reserved for emulated virtio-mmio devices in \
                 a frontend ({VIRTIO_MMIO_FIRST_INTID}..{VIRTIO_MMIO_LAST_INTID})",
                device.id
            );
        }
    }
    Ok(())
}

/// The partial device tree of a domain (Xen's `multiboot,device-tree` module, binding:
/// `docs/misc/arm/passthrough.txt`), or `None` when it needs none. It has a `/gic`
/// placeholder (phandle [`GUEST_PHANDLE_GIC`]) and a `/passthrough` simple-bus with:
///
/// - per QEMU device the domain owns: a `virtio,mmio` node like the machine's (`reg`,
///   `interrupts`, `dma-coherent`) plus `xen,reg` (the pages, mapped 1:1: the domain is
///   direct-mapped), `xen,path` (the machine's node, whose interrupt Xen routes) and
///   `xen,force-assign-without-iommu` (QEMU virt has no SMMU);
/// - when the domain is a frontend: a `xen,grant-dma` node (`#iommu-cells = <1>`) and per
///   emulated device a `virtio_mmio@<base>` node with its window, its SPI (level-high),
///   `dma-coherent` and `iommus = <&grant_dma BACKEND_DOMID>`, and no `xen,reg`: nothing is
///   mapped, every access traps to the backend (docs/transport-mmio-ioreq.md).
pub fn partial_tree(
    system: &System,
    domid: u32,
    devices: &[HostDevice],
) -> Result<Option<Vec<u8>>> {
    let domain = system
        .domain_by_id(domid)
        .ok_or_else(|| anyhow!("no domain {domid}"))?;
    let owned: Vec<&HostDevice> = domain
        .passthrough
        .iter()
        .map(|id| {
            devices
                .iter()
                .find(|device| &device.id == id)
                .ok_or_else(|| {
                    anyhow!(
                        "domain '{}': passthrough '{id}' was not located",
                        domain.name
                    )
                })
        })
        .collect::<Result<_>>()?;
    let emulated = system.frontend_devices(domid);
    if owned.is_empty() && emulated.is_empty() {
        return Ok(None);
    }
    if !owned.is_empty() && domain.direct_map.is_none() {
        bail!(
            "domain '{}': passthrough needs direct_map (the device's DMA addresses are host \
             physical addresses)",
            domain.name
        );
    }
    let mut w = FdtWriter::new().map_err(dt_error)?;
    let root = w.begin_node("").map_err(dt_error)?;
    w.property_u32("#address-cells", 2).map_err(dt_error)?;
    w.property_u32("#size-cells", 2).map_err(dt_error)?;
    let gic = w.begin_node("gic").map_err(dt_error)?;
    w.property_u32("#address-cells", 0).map_err(dt_error)?;
    w.property_u32("#interrupt-cells", 3).map_err(dt_error)?;
    w.property_null("interrupt-controller").map_err(dt_error)?;
    w.property_phandle(GUEST_PHANDLE_GIC).map_err(dt_error)?;
    w.end_node(gic).map_err(dt_error)?;

    let bus = w.begin_node("passthrough").map_err(dt_error)?;
    w.property_string("compatible", "simple-bus")
        .map_err(dt_error)?;
    w.property_null("ranges").map_err(dt_error)?;
    w.property_u32("#address-cells", 2).map_err(dt_error)?;
    w.property_u32("#size-cells", 2).map_err(dt_error)?;
    for device in &owned {
        let node = w.begin_node(device.node_name()).map_err(dt_error)?;
        w.property_string("compatible", "virtio,mmio")
            .map_err(dt_error)?;
        w.property_array_u64("reg", &[device.base, device.size])
            .map_err(dt_error)?;
        w.property_u32("interrupt-parent", GUEST_PHANDLE_GIC)
            .map_err(dt_error)?;
        w.property_array_u32("interrupts", &device.interrupts)
            .map_err(dt_error)?;
        w.property_null("dma-coherent").map_err(dt_error)?;
        let (page, size) = device.pages();
        w.property_array_u64("xen,reg", &[page, size, page])
            .map_err(dt_error)?;
        w.property_string("xen,path", &device.path)
            .map_err(dt_error)?;
        w.property_null("xen,force-assign-without-iommu")
            .map_err(dt_error)?;
        w.end_node(node).map_err(dt_error)?;
    }
    if !emulated.is_empty() {
        let grant = w.begin_node("xen-grant-dma").map_err(dt_error)?;
        w.property_string("compatible", "xen,grant-dma")
            .map_err(dt_error)?;
        w.property_u32("#iommu-cells", 1).map_err(dt_error)?;
        w.property_phandle(GRANT_DMA_PHANDLE).map_err(dt_error)?;
        w.end_node(grant).map_err(dt_error)?;
        for device in &emulated {
            let node = w
                .begin_node(&format!("virtio_mmio@{:x}", device.base))
                .map_err(dt_error)?;
            w.property_string("compatible", "virtio,mmio")
                .map_err(dt_error)?;
            w.property_array_u64("reg", &[device.base, device.size])
                .map_err(dt_error)?;
            w.property_u32("interrupt-parent", GUEST_PHANDLE_GIC)
                .map_err(dt_error)?;
            w.property_array_u32("interrupts", &[0, device.intid - 32, IRQ_TYPE_LEVEL_HIGH])
                .map_err(dt_error)?;
            w.property_null("dma-coherent").map_err(dt_error)?;
            w.property_array_u32("iommus", &[GRANT_DMA_PHANDLE, device.backend])
                .map_err(dt_error)?;
            w.end_node(node).map_err(dt_error)?;
        }
    }
    w.end_node(bus).map_err(dt_error)?;
    w.end_node(root).map_err(dt_error)?;
    w.finish().map(Some).map_err(dt_error)
}

/// Builds Xen's device tree from the machine's `base` tree. `devices` are the located QEMU
/// devices; the ones a domain owns get `xen,passthrough`.
pub fn build(
    base: &[u8],
    system: &System,
    modules: &[Module],
    devices: &[HostDevice],
) -> Result<Vec<u8>> {
    let tree = Fdt::new(base).map_err(|error| anyhow!("the machine's device tree: {error:?}"))?;
    check_against_machine(&tree, system, modules)?;
    check_devices(system, devices)?;
    let passed_through: BTreeSet<String> = devices
        .iter()
        .filter(|device| {
            system
                .qemu_device(&device.id)
                .is_some_and(|declared| declared.owner.is_some())
        })
        .map(|device| device.path.clone())
        .collect();
    for path in &passed_through {
        if tree.find_node(path).is_none() {
            bail!("the machine's device tree has no node {path}");
        }
    }

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
    // Domain node phandles (frontends only, for `xen,device-model-for`), after the channels'.
    let domains_phandle = first_phandle + 2 * system.channels.len() as u32;
    let domain_phandle = move |domid: u32| domains_phandle + domid - 1;

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
        domain_phandle: &domain_phandle,
        passed_through: &passed_through,
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
    domain_phandle: &'a dyn Fn(u32) -> u32,
    passed_through: &'a BTreeSet<String>,
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
    if additions.passed_through.contains(path) && node.property("xen,passthrough").is_none() {
        writer
            .property_null("xen,passthrough")
            .map_err(|error| anyhow!("property {path}:xen,passthrough: {error}"))?;
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
    let modules: Vec<&Module> = additions
        .modules
        .iter()
        .filter(|module| module.domid == domid)
        .collect();
    if !modules
        .iter()
        .any(|module| module.kind == ModuleKind::Kernel)
    {
        bail!("domain '{}' has no kernel module", domain.name);
    }
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
    if let Some(frontend) = system.device_model_for(domid) {
        writer
            .property_u32("xen,device-model-for", (additions.domain_phandle)(frontend))
            .map_err(dt_error)?;
    }
    let is_frontend = system.virtio.iter().any(|device| device.frontend == domid);
    if is_frontend {
        writer
            .property_phandle((additions.domain_phandle)(domid))
            .map_err(|error| anyhow!("domain '{}': phandle: {error}", domain.name))?;
    }

    for module in modules {
        let module_node = writer
            .begin_node(&format!("module@{:x}", module.address))
            .map_err(dt_error)?;
        let compatible = match module.kind {
            ModuleKind::Kernel => KERNEL_MODULE_COMPATIBLE,
            ModuleKind::DeviceTree => DEVICE_TREE_MODULE_COMPATIBLE,
            ModuleKind::Ramdisk => RAMDISK_MODULE_COMPATIBLE,
        };
        writer
            .property_string_list("compatible", compatible.map(str::to_owned).to_vec())
            .map_err(dt_error)?;
        writer
            .property_array_u64("reg", &[module.address, module.size])
            .map_err(dt_error)?;
        if module.kind == ModuleKind::Kernel {
            writer
                .property_string("bootargs", &domain.bootargs())
                .map_err(dt_error)?;
        }
        writer.end_node(module_node).map_err(dt_error)?;
    }

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
        for base in [0xa00_3c00u64, 0xa00_3e00] {
            let virtio = w.begin_node(&format!("virtio_mmio@{base:x}")).unwrap();
            w.property_null("dma-coherent").unwrap();
            w.property_array_u32(
                "interrupts",
                &[0, (base as u32 - 0xa00_0000) / 0x200 + 16, 1],
            )
            .unwrap();
            w.property_array_u64("reg", &[base, 0x200]).unwrap();
            w.property_string("compatible", "virtio,mmio").unwrap();
            w.end_node(virtio).unwrap();
        }
        w.end_node(root).unwrap();
        w.finish().unwrap()
    }

    fn modules() -> Vec<Module> {
        vec![
            Module {
                domid: 1,
                kind: ModuleKind::Kernel,
                image: PathBuf::from("/img/selftest.img"),
                address: 0x5000_0000,
                size: 0x3210,
            },
            Module {
                domid: 2,
                kind: ModuleKind::Kernel,
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
        let dtb = build(&machine_tree(1 << 30), &system, &modules(), &[]).unwrap();

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

        let dtb = build(&base, &test_system(TWO), &modules(), &[]).unwrap();
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
        let small = build(&machine_tree(0x1000_0000), &system, &modules(), &[]).unwrap_err();
        assert!(
            small
                .to_string()
                .contains("is not inside the machine's RAM"),
            "{small}"
        );
        let mut other_uart = system.clone();
        other_uart.board.xen.uart = "/pl011@9040000".to_owned();
        let error = build(&machine_tree(1 << 30), &other_uart, &modules(), &[]).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("xen.uart: the machine's device tree has no node"),
            "{error}"
        );
        assert!(build(b"not a tree", &system, &modules(), &[]).is_err());
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
        let dtb = build(&base, &system, &modules(), &[]).unwrap();
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

    const BLK_DEMO: &str = r#"
board = "qemu-virt-arm64"
hypervisor = "ferry"
[[qemu_device]]
id = "disk0"
kind = "virtio-blk"
image = "build/disks/test.img"
size = "64M"
create = true
[[qemu_device]]
id = "rng0"
kind = "virtio-rng"
[[domain]]
name = "probe"
appliance = "probe"
memory = "16M"
bootargs = "probe.mode=grant probe.backend={domid:blk}"
[[domain]]
name = "blk"
appliance = "blk"
memory = "16M"
direct_map = { base = "0x60000000" }
passthrough = ["disk0"]
[[virtio]]
backend = "blk"
frontend = "probe"
kind = "blk"
"#;

    fn blk_modules() -> Vec<Module> {
        vec![
            Module {
                domid: 1,
                kind: ModuleKind::Kernel,
                image: PathBuf::from("/img/probe.img"),
                address: 0x5000_0000,
                size: 0x3000,
            },
            Module {
                domid: 2,
                kind: ModuleKind::Kernel,
                image: PathBuf::from("/img/blk.img"),
                address: 0x5020_0000,
                size: 0x3000,
            },
            Module {
                domid: 1,
                kind: ModuleKind::DeviceTree,
                image: PathBuf::from("/run/probe.partial.dtb"),
                address: 0x5020_3000,
                size: 0x280,
            },
            Module {
                domid: 2,
                kind: ModuleKind::DeviceTree,
                image: PathBuf::from("/run/blk.partial.dtb"),
                address: 0x5020_4000,
                size: 0x280,
            },
        ]
    }

    /// What QEMU gives for the first two -devices (disk0 first, at the highest transport).
    fn located(machine: &[u8]) -> Vec<HostDevice> {
        vec![
            host_device(machine, "disk0", 0xa00_3e00).unwrap(),
            host_device(machine, "rng0", 0xa00_3c00).unwrap(),
        ]
    }

    #[test]
    fn host_devices_are_read_from_the_machine_tree() {
        let machine = machine_tree(1 << 30);
        let [disk, rng] = &located(&machine)[..] else {
            panic!("two devices")
        };
        assert_eq!(disk.path, "/virtio_mmio@a003e00");
        assert_eq!(disk.node_name(), "virtio_mmio@a003e00");
        assert_eq!((disk.base, disk.size), (0xa00_3e00, 0x200));
        assert_eq!(disk.interrupts, [0, 0x2f, 1]);
        assert_eq!(disk.intid(), Some(79));
        assert_eq!(disk.pages(), (0xa00_3000, 0x1000));
        assert_eq!(rng.intid(), Some(78));
        let error = host_device(&machine, "disk9", 0xa00_3a00).unwrap_err();
        assert!(
            error.to_string().contains(
                "qemu_device 'disk9': QEMU put it on the virtio-mmio transport at 0xa003a00"
            ),
            "{error}"
        );
    }

    #[test]
    fn the_backend_gets_its_device_and_the_frontend_a_grant_dma_window() {
        let system = test_system(BLK_DEMO);
        let machine = machine_tree(1 << 30);
        let devices = located(&machine);

        let backend = partial_tree(&system, 2, &devices).unwrap().unwrap();
        let source = decompile(&backend);
        assert!(
            source.contains("xen,force-assign-without-iommu;"),
            "{source}"
        );
        let tree = Fdt::new(&backend).unwrap();
        let gic = tree.find_node("/gic").unwrap();
        assert_eq!(
            gic.property("phandle").unwrap().as_usize(),
            Some(GUEST_PHANDLE_GIC as usize)
        );
        assert!(gic.property("interrupt-controller").is_some());
        let bus = tree.find_node("/passthrough").unwrap();
        assert_eq!(bus.compatible().unwrap().first(), "simple-bus");
        assert!(bus.property("ranges").is_some());
        assert_eq!(bus.property("#address-cells").unwrap().as_usize(), Some(2));
        assert_eq!(bus.property("#size-cells").unwrap().as_usize(), Some(2));
        let names: Vec<_> = bus.children().map(|node| node.name).collect();
        assert_eq!(names, ["virtio_mmio@a003e00"], "only the owned device");
        let disk = tree.find_node("/passthrough/virtio_mmio@a003e00").unwrap();
        assert_eq!(disk.compatible().unwrap().first(), "virtio,mmio");
        assert_eq!(
            u32s(disk.property("reg").unwrap().value),
            [0, 0xa00_3e00, 0, 0x200]
        );
        assert_eq!(
            u32s(disk.property("interrupts").unwrap().value),
            [0, 0x2f, 1]
        );
        assert_eq!(
            u32s(disk.property("interrupt-parent").unwrap().value),
            [GUEST_PHANDLE_GIC]
        );
        assert!(disk.property("dma-coherent").is_some());
        assert_eq!(
            u32s(disk.property("xen,reg").unwrap().value),
            [0, 0xa00_3000, 0, 0x1000, 0, 0xa00_3000],
            "page aligned, 1:1"
        );
        assert_eq!(
            disk.property("xen,path").unwrap().as_str(),
            Some("/virtio_mmio@a003e00")
        );

        let frontend = partial_tree(&system, 1, &devices).unwrap().unwrap();
        decompile(&frontend);
        let tree = Fdt::new(&frontend).unwrap();
        let grant = tree.find_node("/passthrough/xen-grant-dma").unwrap();
        assert_eq!(grant.compatible().unwrap().first(), "xen,grant-dma");
        assert_eq!(grant.property("#iommu-cells").unwrap().as_usize(), Some(1));
        let phandle = grant.property("phandle").unwrap().as_usize().unwrap() as u32;
        assert_ne!(phandle, GUEST_PHANDLE_GIC);
        let window = tree.find_node("/passthrough/virtio_mmio@2000000").unwrap();
        assert_eq!(window.compatible().unwrap().first(), "virtio,mmio");
        assert_eq!(
            u32s(window.property("reg").unwrap().value),
            [0, 0x200_0000, 0, 0x200]
        );
        assert_eq!(
            u32s(window.property("interrupts").unwrap().value),
            [0, 1, 4],
            "INTID 33, level-high"
        );
        assert_eq!(
            u32s(window.property("interrupt-parent").unwrap().value),
            [GUEST_PHANDLE_GIC]
        );
        assert!(window.property("dma-coherent").is_some());
        assert_eq!(
            u32s(window.property("iommus").unwrap().value),
            [phandle, 2],
            "grant to the backend, domid 2"
        );
        assert!(
            window.property("xen,reg").is_none(),
            "emulated: nothing is mapped"
        );
        assert!(window.property("xen,path").is_none());
    }

    #[test]
    fn xen_gets_passthrough_device_model_and_device_tree_modules() {
        let system = test_system(BLK_DEMO);
        let machine = machine_tree(1 << 30);
        let dtb = build(&machine, &system, &blk_modules(), &located(&machine)).unwrap();
        decompile(&dtb);
        let tree = Fdt::new(&dtb).unwrap();
        assert!(tree
            .find_node("/virtio_mmio@a003e00")
            .unwrap()
            .property("xen,passthrough")
            .is_some());
        assert!(
            tree.find_node("/virtio_mmio@a003c00")
                .unwrap()
                .property("xen,passthrough")
                .is_none(),
            "rng0 is not passed through"
        );
        let probe = tree.find_node("/chosen/domU1").unwrap();
        let blk = tree.find_node("/chosen/domU2").unwrap();
        let probe_phandle = probe.property("phandle").unwrap().as_usize().unwrap() as u32;
        assert_eq!(probe_phandle, 0x8003, "above the machine's phandles");
        assert_eq!(
            u32s(blk.property("xen,device-model-for").unwrap().value),
            [probe_phandle]
        );
        assert!(probe.property("xen,device-model-for").is_none());
        assert!(blk.property("phandle").is_none(), "only frontends need one");
        let partial = tree.find_node("/chosen/domU2/module@50204000").unwrap();
        assert_eq!(
            partial.compatible().unwrap().all().collect::<Vec<_>>(),
            DEVICE_TREE_MODULE_COMPATIBLE
        );
        assert_eq!(
            u32s(partial.property("reg").unwrap().value),
            [0, 0x5020_4000, 0, 0x280]
        );
        assert!(partial.property("bootargs").is_none());
        let kernel = tree.find_node("/chosen/domU2/module@50200000").unwrap();
        assert_eq!(
            kernel.property("bootargs").unwrap().as_str(),
            Some("ferry.name=blk ioreq.frontend=1 ioreq.base=0x2000000 ioreq.size=0x200 ioreq.irq=33")
        );
    }

    #[test]
    fn devices_sharing_a_page_cannot_go_to_two_domains() {
        let text = BLK_DEMO.replace(
            "[[domain]]\nname = \"blk\"",
            "[[domain]]\nname = \"rng\"\nappliance = \"rng\"\nmemory = \"4M\"\n\
             direct_map = { base = \"0x70000000\" }\npassthrough = [\"rng0\"]\n\
             [[domain]]\nname = \"blk\"",
        );
        let system = test_system(&text);
        let machine = machine_tree(1 << 30);
        let error = check_devices(&system, &located(&machine)).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("share the page 0xa003000 (Xen passes whole pages)"),
            "{error}"
        );
        // A device the machine does not have is refused when the tree is built.
        let mut other = located(&machine);
        other[0].path = "/virtio_mmio@b000000".to_owned();
        let error = build(&machine, &test_system(BLK_DEMO), &blk_modules(), &other).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("has no node /virtio_mmio@b000000"),
            "{error}"
        );
    }
}
