//! The platform an appliance runs on, read from the device tree that Xen made for its domain.
//!
//! This module owns the interpretation of the guest device tree: memory banks and reserved
//! ranges, `/chosen` bootargs, the UART (Xen's vpl011), the GIC (v2 or v3), the generic timer,
//! the Xen `/hypervisor` node and the devices passed through under `/passthrough`. It is pure
//! parsing over a byte slice (no `unsafe`, no allocation, no hardware access), so it is tested on
//! the host with device trees built in the tests.
//!
//! It must never panic on bad input and never guess: missing or contradictory data is a
//! [`BootError`] that names what is wrong and where, and the runtime turns it into a crash
//! shutdown. (The `fdt` crate panics on some malformed input - a `#address-cells` shorter than
//! four bytes, a missing `/chosen` - so this module only uses its non-panicking calls and reads
//! cell sizes, `reg` and `interrupts` itself.)
//!
//! Xen's domU device tree (xen/arch/arm/domain_build.c, Xen 4.17): root `#address-cells` and
//! `#size-cells` are 2; one `memory` node with one `reg` entry per bank; the GIC node has phandle
//! 65000 (`GUEST_PHANDLE_GIC`) and `#interrupt-cells = <3>`; the timer has four interrupts
//! (secure physical, physical, virtual, hypervisor); the vpl011 is `arm,sbsa-uart`; with
//! `xen,enhanced` there is a `hypervisor` node whose first `reg` entry is the grant-table region,
//! whose further entries are the extended regions, and whose interrupt is the event-channel
//! upcall PPI.

use core::fmt;

use fdt::node::FdtNode;
use fdt::Fdt;
use heapless::Vec;

/// Most memory banks (and most reserved ranges) a platform may have.
pub const MAX_BANKS: usize = 8;
/// Most devices under `/passthrough`.
pub const MAX_DEVICES: usize = 8;
/// Most `reg` entries (and most interrupts) kept per passed-through device.
pub const MAX_DEVICE_REGIONS: usize = 4;
/// Most extended regions kept from the `/hypervisor` node.
pub const MAX_EXTENDED_REGIONS: usize = 8;

/// Size of a page: everything the runtime maps or hands out is page-aligned.
pub const PAGE_SIZE: u64 = 4096;

/// A range of guest physical addresses.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// First address.
    pub base: u64,
    /// Length in bytes (never 0 in a parsed platform).
    pub size: u64,
}

impl Region {
    /// The region `[base, base + size)`.
    pub const fn new(base: u64, size: u64) -> Self {
        Self { base, size }
    }

    /// The first address after the region (saturating at `u64::MAX`).
    pub const fn end(&self) -> u64 {
        self.base.saturating_add(self.size)
    }

    /// Whether `address` lies inside the region.
    pub const fn contains(&self, address: u64) -> bool {
        address >= self.base && address < self.end()
    }

    /// Whether the two regions share at least one byte.
    pub const fn overlaps(&self, other: &Region) -> bool {
        self.base < other.end() && other.base < self.end()
    }

    /// The smallest page-aligned region that covers this one.
    pub const fn page_aligned_outward(&self) -> Region {
        let base = self.base & !(PAGE_SIZE - 1);
        let end = self.end().saturating_add(PAGE_SIZE - 1) & !(PAGE_SIZE - 1);
        Region::new(base, end - base)
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}..{:#x}", self.base, self.end())
    }
}

/// Addresses read best in hex: `Region(0x40000000..0x41000000)`.
impl fmt::Debug for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Region({self})")
    }
}

/// What kind of signal an interrupt is (the low bits of a GIC interrupt specifier's flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// Edge-triggered.
    Edge,
    /// Level-sensitive.
    Level,
}

/// An interrupt as the GIC numbers it (INTID: 16..32 PPIs, 32.. SPIs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interrupt {
    /// The GIC interrupt ID.
    pub intid: u32,
    /// Edge or level, from the device tree flags.
    pub trigger: Trigger,
}

/// The interrupt controller and where its registers are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gic {
    /// GICv2 (`arm,gic-400`, `arm,cortex-a15-gic`): distributor and CPU interface.
    V2 {
        /// GICD registers.
        distributor: Region,
        /// GICC registers.
        cpu_interface: Region,
    },
    /// GICv3 (`arm,gic-v3`): distributor and redistributors (the CPU interface is system
    /// registers).
    V3 {
        /// GICD registers.
        distributor: Region,
        /// All redistributor frames.
        redistributors: Region,
    },
}

impl Gic {
    /// The register regions, to be mapped as device memory.
    pub fn regions(&self) -> [Region; 2] {
        match *self {
            Gic::V2 {
                distributor,
                cpu_interface,
            } => [distributor, cpu_interface],
            Gic::V3 {
                distributor,
                redistributors,
            } => [distributor, redistributors],
        }
    }
}

/// The ARM generic timer (`arm,armv8-timer`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timer {
    /// The EL1 physical timer interrupt (PPI 14, INTID 30 on Xen).
    pub physical: Interrupt,
    /// The virtual timer interrupt (PPI 11, INTID 27 on Xen).
    pub virtual_timer: Interrupt,
    /// `clock-frequency` when the node has one (otherwise CNTFRQ_EL0 is right).
    pub clock_frequency: Option<u32>,
}

/// A UART the domain can use (Xen's vpl011 is an `arm,sbsa-uart`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Uart {
    /// Its registers.
    pub region: Region,
    /// Its interrupt, if the node names one.
    pub interrupt: Option<Interrupt>,
}

/// What the `/hypervisor` node (`compatible = "xen,xen"`) says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hypervisor<'a> {
    /// The most specific compatible string, e.g. `xen,xen-4.17`.
    pub version: &'a str,
    /// Where the grant table is to be mapped (the first `reg` entry). The runtime maps it as
    /// Normal write-back memory at boot.
    pub grant_table: Region,
    /// Free guest-physical ranges for foreign mappings (the other `reg` entries).
    pub extended_regions: Vec<Region, MAX_EXTENDED_REGIONS>,
    /// The event-channel upcall interrupt (a PPI, INTID 31 on Xen).
    pub upcall: Interrupt,
}

/// A device passed through to this domain (a child of `/passthrough`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device<'a> {
    /// The node name, e.g. `virtio_mmio@a003e00`.
    pub name: &'a str,
    /// The first compatible string, if any.
    pub compatible: Option<&'a str>,
    /// Its register regions.
    pub regions: Vec<Region, MAX_DEVICE_REGIONS>,
    /// Its interrupts.
    pub interrupts: Vec<Interrupt, MAX_DEVICE_REGIONS>,
    /// Whether the node says `dma-coherent`.
    pub dma_coherent: bool,
}

/// Everything the runtime takes from the device tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform<'a> {
    /// Where the device tree itself is (its address and `totalsize`).
    pub device_tree: Region,
    /// RAM banks, sorted by address, not overlapping.
    pub memory: Vec<Region, MAX_BANKS>,
    /// RAM that is not free: `/memreserve/` entries, `/reserved-memory` children, the initrd.
    pub reserved: Vec<Region, MAX_BANKS>,
    /// `/chosen` `bootargs` ("" when absent).
    pub bootargs: &'a str,
    /// Number of `/cpus/cpu@*` nodes (at least 1).
    pub cpus: usize,
    /// The interrupt controller.
    pub gic: Gic,
    /// The generic timer.
    pub timer: Timer,
    /// The first `arm,sbsa-uart` or `arm,pl011`, if there is one.
    pub uart: Option<Uart>,
    /// The `/hypervisor` node, if there is one.
    pub hypervisor: Option<Hypervisor<'a>>,
    /// Devices under `/passthrough`.
    pub passthrough: Vec<Device<'a>, MAX_DEVICES>,
}

/// Why the device tree cannot be used; printed as `ferry: boot error: <this>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootError<'a> {
    /// What is wrong.
    pub what: &'static str,
    /// The path of the parent of the node (`""` for children of the root).
    pub parent: &'static str,
    /// The node's own name (`""` for the root itself or for the DT header).
    pub node: &'a str,
    /// The property, if the problem is with one.
    pub property: Option<&'static str>,
}

impl fmt::Display for BootError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}, in {}/{}", self.what, self.parent, self.node)?;
        if let Some(property) = self.property {
            write!(f, " property {property}")?;
        }
        Ok(())
    }
}

/// Shorthand for building a [`BootError`].
fn error<'a>(
    what: &'static str,
    parent: &'static str,
    node: &'a str,
    property: Option<&'static str>,
) -> BootError<'a> {
    BootError {
        what,
        parent,
        node,
        property,
    }
}

/// The `totalsize` field of a flattened device tree header, or `None` without the FDT magic.
///
/// The runtime uses it to know how many bytes at the DT address belong to the DT before it makes
/// a slice of them.
pub fn device_tree_size(header: &[u8; 8]) -> Option<usize> {
    let magic = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
    if magic != 0xd00d_feed {
        return None;
    }
    Some(u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize)
}

/// Sorts a short list (a few memory banks, ring pages) by `key` with an insertion sort: the
/// library sorts cost kilobytes of image per element type, these lists have a handful of items.
pub fn sort_small_by_key<T, K: Ord>(items: &mut [T], key: impl Fn(&T) -> K) {
    for i in 1..items.len() {
        let mut j = i;
        while j > 0 && key(&items[j - 1]) > key(&items[j]) {
            items.swap(j - 1, j);
            j -= 1;
        }
    }
}

/// Looks `key` up in a bootargs string: `key=value` gives `value`, a bare `key` gives `""`.
///
/// Arguments are separated by whitespace; when a key appears more than once the last one wins.
pub fn boot_arg<'a>(bootargs: &'a str, key: &str) -> Option<&'a str> {
    let mut found = None;
    for word in bootargs.split_ascii_whitespace() {
        match word.split_once('=') {
            Some((name, value)) if name == key => found = Some(value),
            None if word == key => found = Some(""),
            _ => {}
        }
    }
    found
}

/// Cell sizes of a node's children.
#[derive(Clone, Copy, Debug)]
struct Cells {
    address: usize,
    size: usize,
}

/// Reads one `u32` cell property; `None` if absent, an error if malformed.
fn u32_property<'a>(
    node: FdtNode<'_, 'a>,
    parent: &'static str,
    name: &'static str,
) -> Result<Option<u32>, BootError<'a>> {
    match node.property(name) {
        None => Ok(None),
        Some(property) => match <[u8; 4]>::try_from(property.value) {
            Ok(bytes) => Ok(Some(u32::from_be_bytes(bytes))),
            Err(_) => Err(error(
                "property is not one 32-bit cell",
                parent,
                node.name,
                Some(name),
            )),
        },
    }
}

/// The `#address-cells`/`#size-cells` a node gives its children (defaults 2 and 1).
fn child_cells<'a>(node: FdtNode<'_, 'a>, path: &'static str) -> Result<Cells, BootError<'a>> {
    let address = u32_property(node, path, "#address-cells")?.unwrap_or(2) as usize;
    let size = u32_property(node, path, "#size-cells")?.unwrap_or(1) as usize;
    if !(1..=2).contains(&address) || size > 2 {
        return Err(error(
            "#address-cells must be 1 or 2 and #size-cells at most 2",
            path,
            "",
            Some("#address-cells"),
        ));
    }
    Ok(Cells { address, size })
}

/// Reads `cells` big-endian 32-bit cells as one number.
fn read_cells(bytes: &[u8], cells: usize) -> u64 {
    bytes[..cells * 4].chunks_exact(4).fold(0, |value, cell| {
        (value << 32) | u64::from(u32::from_be_bytes([cell[0], cell[1], cell[2], cell[3]]))
    })
}

/// The `reg` entries of `node`, whose parent gives `cells`; at most `N` entries.
///
/// Errors if `reg` is absent, not a whole number of entries, empty, has a zero size, wraps
/// around the address space, or has more than `N` entries.
fn reg<'a, const N: usize>(
    node: FdtNode<'_, 'a>,
    parent: &'static str,
    cells: Cells,
) -> Result<Vec<Region, N>, BootError<'a>> {
    let here = |what| error(what, parent, node.name, Some("reg"));
    let value = node
        .property("reg")
        .ok_or_else(|| here("missing reg"))?
        .value;
    let entry = (cells.address + cells.size) * 4;
    if value.is_empty() || value.len() % entry != 0 {
        return Err(here(
            "reg is not a whole number of (#address-cells + #size-cells) entries",
        ));
    }
    let mut regions = Vec::new();
    for chunk in value.chunks_exact(entry) {
        let base = read_cells(chunk, cells.address);
        let size = if cells.size == 0 {
            0
        } else {
            read_cells(&chunk[cells.address * 4..], cells.size)
        };
        if size == 0 {
            return Err(here("reg entry has size 0"));
        }
        if base.checked_add(size).is_none() {
            return Err(here("reg entry wraps around the address space"));
        }
        regions
            .push(Region::new(base, size))
            .map_err(|_| here("too many reg entries"))?;
    }
    Ok(regions)
}

/// The interrupts of `node` as GIC interrupt IDs (3-cell GIC specifiers), at most `N`.
fn interrupts<'a, const N: usize>(
    node: FdtNode<'_, 'a>,
    parent: &'static str,
) -> Result<Option<Vec<Interrupt, N>>, BootError<'a>> {
    let here = |what| error(what, parent, node.name, Some("interrupts"));
    let Some(property) = node.property("interrupts") else {
        return Ok(None);
    };
    let value = property.value;
    if value.is_empty() || value.len() % 12 != 0 {
        return Err(here(
            "interrupts is not a whole number of 3-cell GIC specifiers",
        ));
    }
    let mut list = Vec::new();
    for specifier in value.chunks_exact(12) {
        let kind = read_cells(specifier, 1);
        let number = read_cells(&specifier[4..], 1);
        let flags = read_cells(&specifier[8..], 1);
        let intid = match kind {
            0 if number < 988 => number + 32,
            1 if number < 16 => number + 16,
            _ => {
                return Err(here(
                    "interrupt is neither an SPI (0, <988) nor a PPI (1, <16)",
                ))
            }
        };
        let trigger = if flags & 0x3 != 0 {
            Trigger::Edge
        } else {
            Trigger::Level
        };
        list.push(Interrupt {
            intid: intid as u32,
            trigger,
        })
        .map_err(|_| here("too many interrupts"))?;
    }
    Ok(Some(list))
}

/// Checks that `node`'s interrupt parent (its own, else the root's) is the GIC, if it names one.
fn check_interrupt_parent<'a>(
    node: FdtNode<'_, 'a>,
    parent: &'static str,
    root_parent: Option<u32>,
    gic_phandle: Option<u32>,
) -> Result<(), BootError<'a>> {
    let own = u32_property(node, parent, "interrupt-parent")?;
    match (own.or(root_parent), gic_phandle) {
        (Some(phandle), Some(gic)) if phandle != gic => Err(error(
            "interrupt-parent is not the GIC",
            parent,
            node.name,
            Some("interrupt-parent"),
        )),
        (Some(_), None) => Err(error(
            "interrupt-parent names a phandle but the GIC node has none",
            parent,
            node.name,
            Some("interrupt-parent"),
        )),
        _ => Ok(()),
    }
}

fn is_compatible(node: FdtNode<'_, '_>, any_of: &[&str]) -> bool {
    node.compatible()
        .is_some_and(|compatible| compatible.all().any(|c| any_of.contains(&c)))
}

fn first_compatible<'a>(node: FdtNode<'_, 'a>) -> Option<&'a str> {
    node.compatible()
        .and_then(|compatible| compatible.all().next())
}

fn node_base_name<'a>(node: FdtNode<'_, 'a>) -> &'a str {
    node.name.split('@').next().unwrap_or(node.name)
}

const GIC_V2: &[&str] = &["arm,gic-400", "arm,cortex-a15-gic", "arm,cortex-a9-gic"];
const GIC_V3: &[&str] = &["arm,gic-v3"];
const UARTS: &[&str] = &["arm,sbsa-uart", "arm,pl011"];

impl<'a> Platform<'a> {
    /// Parses the device tree in `dtb`, which Xen put at guest physical address `address`.
    pub fn parse(dtb: &'a [u8], address: u64) -> Result<Platform<'a>, BootError<'a>> {
        let header = |what| error(what, "", "", None);
        let fdt = Fdt::new(dtb).map_err(|_| header("not a flattened device tree (bad header)"))?;
        let device_tree = Region::new(address, fdt.total_size() as u64);
        let root = fdt
            .find_node("/")
            .ok_or_else(|| header("device tree has no root node"))?;
        let root_cells = child_cells(root, "")?;
        let root_interrupt_parent = u32_property(root, "", "interrupt-parent")?;

        // Memory: every root child with device_type = "memory" (or named memory@...).
        let mut memory: Vec<Region, MAX_BANKS> = Vec::new();
        for node in root.children() {
            let device_type = node.property("device_type").and_then(|p| p.as_str());
            if device_type != Some("memory") && node_base_name(node) != "memory" {
                continue;
            }
            for bank in reg::<MAX_BANKS>(node, "", root_cells)? {
                memory
                    .push(bank)
                    .map_err(|_| error("too many memory banks", "", node.name, Some("reg")))?;
            }
        }
        if memory.is_empty() {
            return Err(error("no memory node", "", "memory", Some("reg")));
        }
        sort_small_by_key(&mut memory, |bank| bank.base);
        if memory.windows(2).any(|pair| pair[0].overlaps(&pair[1])) {
            return Err(error("memory banks overlap", "", "memory", Some("reg")));
        }
        if !memory.iter().any(|bank| bank.contains(address)) {
            return Err(error(
                "the device tree is not inside any memory bank",
                "",
                "memory",
                Some("reg"),
            ));
        }

        // Reserved RAM: /memreserve/, /reserved-memory children, the initrd.
        let mut reserved: Vec<Region, MAX_BANKS> = Vec::new();
        for reservation in fdt.memory_reservations() {
            let region = Region::new(reservation.address() as u64, reservation.size() as u64);
            if region.size != 0 {
                reserved
                    .push(region)
                    .map_err(|_| header("too many /memreserve/ entries"))?;
            }
        }
        if let Some(node) = fdt.find_node("/reserved-memory") {
            let cells = child_cells(node, "/reserved-memory")?;
            for child in node.children() {
                if child.property("reg").is_none() {
                    continue; // a dynamically placed reservation: nothing to exclude
                }
                for region in reg::<MAX_BANKS>(child, "/reserved-memory", cells)? {
                    reserved.push(region).map_err(|_| {
                        error(
                            "too many reserved regions",
                            "/reserved-memory",
                            child.name,
                            None,
                        )
                    })?;
                }
            }
        }

        // /chosen: bootargs and the initrd.
        let mut bootargs = "";
        if let Some(chosen) = fdt.find_node("/chosen") {
            if let Some(property) = chosen.property("bootargs") {
                bootargs = core::str::from_utf8(property.value)
                    .ok()
                    .map(|text| text.trim_end_matches('\0'))
                    .filter(|text| !text.contains('\0'))
                    .ok_or_else(|| {
                        error(
                            "bootargs is not one UTF-8 string",
                            "",
                            "chosen",
                            Some("bootargs"),
                        )
                    })?;
            }
            let start = chosen.property("linux,initrd-start");
            let end = chosen.property("linux,initrd-end");
            if let (Some(start), Some(end)) = (start, end) {
                let cells = |value: &[u8]| match value.len() {
                    4 | 8 => Some(read_cells(value, value.len() / 4)),
                    _ => None,
                };
                match (cells(start.value), cells(end.value)) {
                    // Xen writes zero placeholders and fills them only when it loads an initrd.
                    (Some(start), Some(end)) if end == start => {}
                    (Some(start), Some(end)) if end > start => {
                        reserved
                            .push(Region::new(start, end - start))
                            .map_err(|_| error("too many reserved regions", "", "chosen", None))?;
                    }
                    _ => {
                        return Err(error(
                            "initrd start/end are not 1- or 2-cell addresses with start <= end",
                            "",
                            "chosen",
                            Some("linux,initrd-start"),
                        ))
                    }
                }
            }
        }

        let cpus = match fdt.find_node("/cpus") {
            Some(node) => node
                .children()
                .filter(|child| node_base_name(*child) == "cpu")
                .count(),
            None => 0,
        };
        if cpus == 0 {
            return Err(error("no cpu node", "", "cpus", None));
        }

        // The GIC: exactly one v2 or v3 node.
        let mut gic = None;
        let mut gic_phandle = None;
        for node in fdt.all_nodes() {
            let version = if is_compatible(node, GIC_V3) {
                3
            } else if is_compatible(node, GIC_V2) {
                2
            } else {
                continue;
            };
            if gic.is_some() {
                return Err(error(
                    "more than one GIC node",
                    "",
                    node.name,
                    Some("compatible"),
                ));
            }
            if u32_property(node, "", "#interrupt-cells")? != Some(3) {
                return Err(error(
                    "GIC must have #interrupt-cells = <3>",
                    "",
                    node.name,
                    Some("#interrupt-cells"),
                ));
            }
            let regions = reg::<4>(node, "", root_cells)?;
            if regions.len() < 2 {
                return Err(error(
                    "GIC needs two reg entries (distributor, then CPU interface or redistributors)",
                    "",
                    node.name,
                    Some("reg"),
                ));
            }
            gic_phandle = u32_property(node, "", "phandle")?;
            gic = Some(match version {
                2 => Gic::V2 {
                    distributor: regions[0],
                    cpu_interface: regions[1],
                },
                _ => Gic::V3 {
                    distributor: regions[0],
                    redistributors: regions[1],
                },
            });
        }
        let gic = gic.ok_or_else(|| {
            error(
                "no GIC (arm,gic-v3, arm,gic-400 or arm,cortex-a15-gic)",
                "",
                "interrupt-controller",
                Some("compatible"),
            )
        })?;

        // The generic timer.
        let timer_node = fdt
            .find_compatible(&["arm,armv8-timer", "arm,armv7-timer"])
            .ok_or_else(|| {
                error(
                    "no generic timer (arm,armv8-timer)",
                    "",
                    "timer",
                    Some("compatible"),
                )
            })?;
        check_interrupt_parent(timer_node, "", root_interrupt_parent, gic_phandle)?;
        let timer_interrupts = interrupts::<4>(timer_node, "")?.ok_or_else(|| {
            error(
                "timer has no interrupts",
                "",
                timer_node.name,
                Some("interrupts"),
            )
        })?;
        if timer_interrupts.len() < 3
            || timer_interrupts
                .iter()
                .any(|interrupt| !(16..32).contains(&interrupt.intid))
        {
            return Err(error(
                "timer needs at least 3 PPIs (secure, non-secure physical, virtual)",
                "",
                timer_node.name,
                Some("interrupts"),
            ));
        }
        let timer = Timer {
            physical: timer_interrupts[1],
            virtual_timer: timer_interrupts[2],
            clock_frequency: u32_property(timer_node, "", "clock-frequency")?,
        };

        // The UART.
        let uart = match fdt.find_compatible(UARTS) {
            None => None,
            Some(node) => {
                let regions = reg::<2>(node, "", root_cells)?;
                check_interrupt_parent(node, "", root_interrupt_parent, gic_phandle)?;
                let interrupt = interrupts::<2>(node, "")?.and_then(|list| list.first().copied());
                Some(Uart {
                    region: regions[0],
                    interrupt,
                })
            }
        };

        // The Xen hypervisor node.
        let hypervisor = match fdt.find_compatible(&["xen,xen"]) {
            None => None,
            Some(node) => {
                let regions = reg::<{ MAX_EXTENDED_REGIONS + 1 }>(node, "", root_cells)?;
                check_interrupt_parent(node, "", root_interrupt_parent, gic_phandle)?;
                let upcall = interrupts::<1>(node, "")?
                    .and_then(|list| list.first().copied())
                    .ok_or_else(|| {
                        error(
                            "hypervisor node has no event-channel interrupt",
                            "",
                            node.name,
                            Some("interrupts"),
                        )
                    })?;
                if !(16..32).contains(&upcall.intid) {
                    return Err(error(
                        "the event-channel upcall interrupt is not a PPI",
                        "",
                        node.name,
                        Some("interrupts"),
                    ));
                }
                let version = node
                    .compatible()
                    .and_then(|compatible| compatible.all().find(|c| c.starts_with("xen,xen-")))
                    .unwrap_or("xen,xen");
                let mut extended_regions = Vec::new();
                for region in regions.iter().skip(1) {
                    // Cannot fail: `regions` holds at most MAX_EXTENDED_REGIONS + 1 entries.
                    let _ = extended_regions.push(*region);
                }
                Some(Hypervisor {
                    version,
                    grant_table: regions[0],
                    extended_regions,
                    upcall,
                })
            }
        };

        // Passed-through devices.
        let mut passthrough = Vec::new();
        if let Some(bus) = fdt.find_node("/passthrough") {
            let cells = child_cells(bus, "/passthrough")?;
            for node in bus.children() {
                if node.property("reg").is_none() && node.property("interrupts").is_none() {
                    continue; // e.g. a label-only helper node
                }
                let regions = reg::<MAX_DEVICE_REGIONS>(node, "/passthrough", cells)?;
                check_interrupt_parent(node, "/passthrough", root_interrupt_parent, gic_phandle)?;
                let interrupts =
                    interrupts::<MAX_DEVICE_REGIONS>(node, "/passthrough")?.unwrap_or_default();
                let device = Device {
                    name: node.name,
                    compatible: first_compatible(node),
                    regions,
                    interrupts,
                    dma_coherent: node.property("dma-coherent").is_some(),
                };
                passthrough.push(device).map_err(|_| {
                    error("too many passed-through devices", "", "passthrough", None)
                })?;
            }
        }

        let platform = Platform {
            device_tree,
            memory,
            reserved,
            bootargs,
            cpus,
            gic,
            timer,
            uart,
            hypervisor,
            passthrough,
        };
        platform.check_devices_outside_ram()?;
        Ok(platform)
    }

    /// Device regions must not overlap RAM: the MMU maps them with different attributes.
    fn check_devices_outside_ram(&self) -> Result<(), BootError<'a>> {
        let overlaps_ram = |region: &Region| self.memory.iter().any(|bank| bank.overlaps(region));
        for region in self.gic.regions() {
            if overlaps_ram(&region) {
                return Err(error(
                    "GIC registers overlap RAM",
                    "",
                    "interrupt-controller",
                    Some("reg"),
                ));
            }
        }
        if let Some(uart) = &self.uart {
            if overlaps_ram(&uart.region) {
                return Err(error("UART registers overlap RAM", "", "uart", Some("reg")));
            }
        }
        if let Some(hypervisor) = &self.hypervisor {
            if overlaps_ram(&hypervisor.grant_table) {
                return Err(error(
                    "grant-table region overlaps RAM",
                    "",
                    "hypervisor",
                    Some("reg"),
                ));
            }
        }
        for device in &self.passthrough {
            if device.regions.iter().any(overlaps_ram) {
                return Err(error(
                    "device registers overlap RAM",
                    "/passthrough",
                    device.name,
                    Some("reg"),
                ));
            }
        }
        Ok(())
    }

    /// Looks `key` up in the bootargs (see [`boot_arg`]).
    pub fn arg(&self, key: &str) -> Option<&'a str> {
        boot_arg(self.bootargs, key)
    }

    /// Every device region the runtime maps at boot: GIC, UART, passthrough devices.
    ///
    /// Not the grant-table region: grant frames are RAM that Xen shares with us, and a guest
    /// must map them as Normal cacheable memory like Xen does (Linux: `xen_remap`, write-back),
    /// or the two mappings disagree and atomics on grant entries fault.
    pub fn device_regions(&self) -> impl Iterator<Item = Region> + '_ {
        let gic = self.gic.regions();
        gic.into_iter()
            .chain(self.uart.iter().map(|uart| uart.region))
            .chain(
                self.passthrough
                    .iter()
                    .flat_map(|device| device.regions.iter().copied()),
            )
    }

    /// RAM that is free for the runtime: the memory banks minus the device tree, the reserved
    /// regions and `used` (the image), each rounded out to whole pages; free ranges are rounded
    /// in to whole pages and sorted by address.
    pub fn free_memory(&self, used: &[Region]) -> Vec<Region, { 2 * MAX_BANKS + 8 }> {
        let mut free: Vec<Region, { 2 * MAX_BANKS + 8 }> = Vec::new();
        for bank in &self.memory {
            let base = bank.base.next_multiple_of(PAGE_SIZE);
            let end = bank.end() & !(PAGE_SIZE - 1);
            if end > base {
                let _ = free.push(Region::new(base, end - base));
            }
        }
        let holes = used
            .iter()
            .chain(self.reserved.iter())
            .chain(core::iter::once(&self.device_tree));
        for hole in holes {
            let hole = hole.page_aligned_outward();
            let mut next: Vec<Region, { 2 * MAX_BANKS + 8 }> = Vec::new();
            for region in &free {
                if !region.overlaps(&hole) {
                    let _ = next.push(*region);
                    continue;
                }
                if region.base < hole.base {
                    let _ = next.push(Region::new(region.base, hole.base - region.base));
                }
                if hole.end() < region.end() {
                    let _ = next.push(Region::new(hole.end(), region.end() - hole.end()));
                }
            }
            free = next;
        }
        sort_small_by_key(&mut free, |region| region.base);
        free
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod sort_tests {
    #[test]
    fn sort_small_by_key_sorts() {
        let mut v = [5u32, 1, 4, 1, 3, 9, 0];
        super::sort_small_by_key(&mut v, |x| *x);
        assert_eq!(v, [0, 1, 1, 3, 4, 5, 9]);
        let mut empty: [u8; 0] = [];
        super::sort_small_by_key(&mut empty, |x| *x);
    }
}
