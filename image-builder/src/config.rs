//! Board and system files: strict TOML in, a validated [`System`] out.
//!
//! This module owns the meaning of every key of `boards/<board>/board.toml` and of the system
//! files beside it (reference: `docs/image-builder.md`), and the rules that turn a system into
//! numbers: domain ids, event-channel ports and the automatic bootargs. It reads files and
//! nothing else: it never builds, writes or runs anything.
//!
//! Every table is `deny_unknown_fields`. Errors name the file, the line when the TOML parser
//! knows it, the domain or channel by name, and the key, e.g.
//! `boards/qemu-virt-arm64/selftest.toml:12: domain 'pong': unknown key 'memry' (expected one of
//! ...)`.
//!
//! # Numbering rules
//!
//! - Domain ids follow the order of the `[[domain]]` entries, starting at 1 (there is no dom0):
//!   Xen gives dom0less domUs their ids in the order of the `xen,domain` nodes, and
//!   image-builder writes one node per entry in file order.
//! - Each domain's event-channel ports start at [`FIRST_PORT`] and count up in the order of the
//!   `[[channel]]` entries that the domain is an end of.
//! - Bootargs of a domain: `ferry.name=<name>`, then its own `bootargs` with every
//!   `{domid:NAME}` replaced by NAME's domain id, then for each channel end
//!   `<channel>.port=<local port> <channel>.peer=<peer domid>`.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::Deserialize;

/// First event-channel port of every domain. Ports below are left free for the runtime (Xen
/// allocates dynamic ports from 1 upwards).
pub const FIRST_PORT: u32 = 10;
/// Page size: every memory size, module address and static-memory base is a multiple of it.
pub const PAGE_SIZE: u64 = 4096;
/// Timeout of a system file that does not set `timeout_seconds`.
pub const DEFAULT_TIMEOUT_SECONDS: u64 = 60;
/// Default alignment of module load addresses.
pub const DEFAULT_MODULE_ALIGN: u64 = 2 << 20;
/// Guest address of a frontend's first emulated virtio-mmio window (`GUEST_VIRTIO_MMIO_BASE`,
/// Xen's `public/arch-arm.h`); window `k` is at `VIRTIO_MMIO_BASE + k * VIRTIO_MMIO_WINDOW`.
pub const VIRTIO_MMIO_BASE: u64 = 0x0200_0000;
/// Size of one emulated virtio-mmio window (libxl's `VIRTIO_MMIO_DEV_SIZE`).
pub const VIRTIO_MMIO_WINDOW: u64 = 0x200;
/// INTID of a frontend's first emulated virtio-mmio device (`GUEST_VIRTIO_MMIO_SPI_FIRST`);
/// device `k` gets `VIRTIO_MMIO_FIRST_INTID + k`.
pub const VIRTIO_MMIO_FIRST_INTID: u32 = 33;
/// Last INTID Xen reserves for emulated virtio-mmio devices (`GUEST_VIRTIO_MMIO_SPI_LAST`).
pub const VIRTIO_MMIO_LAST_INTID: u32 = 43;
/// Sector size of disk images: a created image's size must be a multiple of it.
pub const SECTOR_SIZE: u64 = 512;

// ---------------------------------------------------------------------------------------------
// Values
// ---------------------------------------------------------------------------------------------

/// A size in bytes, written as an integer, `"0x..."`, or a number with a `K`/`M`/`G` suffix
/// (powers of 1024): `"4M"`, `"512K"`, `4096`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "IntegerOrText")]
pub struct Size(pub u64);

/// A physical address, written as an integer or `"0x..."`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "IntegerOrText")]
pub struct Address(pub u64);

#[derive(Deserialize)]
#[serde(untagged)]
enum IntegerOrText {
    Integer(u64),
    Text(String),
}

impl TryFrom<IntegerOrText> for Size {
    type Error = String;
    fn try_from(value: IntegerOrText) -> Result<Self, String> {
        match value {
            IntegerOrText::Integer(bytes) => Ok(Size(bytes)),
            IntegerOrText::Text(text) => parse_size(&text).map(Size),
        }
    }
}

impl TryFrom<IntegerOrText> for Address {
    type Error = String;
    fn try_from(value: IntegerOrText) -> Result<Self, String> {
        match value {
            IntegerOrText::Integer(address) => Ok(Address(address)),
            IntegerOrText::Text(text) => parse_integer(&text)
                .map(Address)
                .ok_or_else(|| format!("invalid address '{text}' (write e.g. \"0x60000000\")")),
        }
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_size(self.0))
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

fn parse_integer(text: &str) -> Option<u64> {
    let text = text.trim().replace('_', "");
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

/// Parses a size: `"4M"`, `"512K"`, `"1G"`, `"0x400000"`, `"4096"`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let invalid = || format!("invalid size '{text}' (write e.g. \"4M\", \"512K\" or \"0x400000\")");
    let trimmed = text.trim();
    let (number, shift) = match trimmed.char_indices().last() {
        Some((at, 'K' | 'k')) => (&trimmed[..at], 10),
        Some((at, 'M' | 'm')) => (&trimmed[..at], 20),
        Some((at, 'G' | 'g')) => (&trimmed[..at], 30),
        _ => (trimmed, 0),
    };
    let value = parse_integer(number).ok_or_else(invalid)?;
    value.checked_mul(1 << shift).ok_or_else(invalid)
}

/// Formats a size the way it is usually written: `4M`, `512K`, `4097` (bytes).
pub fn format_size(bytes: u64) -> String {
    for (shift, suffix) in [(30, "G"), (20, "M"), (10, "K")] {
        if bytes != 0 && bytes.is_multiple_of(1 << shift) {
            return format!("{}{suffix}", bytes >> shift);
        }
    }
    bytes.to_string()
}

// ---------------------------------------------------------------------------------------------
// Board file
// ---------------------------------------------------------------------------------------------

/// `board.toml`: one machine, and how Xen and the domU kernels are put into it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Board {
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// The QEMU machine.
    pub qemu: QemuMachine,
    /// Xen's command line and console.
    pub xen: XenSettings,
    /// Where the domU kernels are loaded.
    pub modules: ModuleArea,
}

/// `[qemu]`: the machine QEMU emulates.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QemuMachine {
    /// `-M` value, e.g. `virt,virtualization=on,gic-version=3`.
    pub machine: String,
    /// `-cpu` value.
    pub cpu: String,
    /// `-m`: host RAM.
    pub memory: Size,
    /// `-smp` (without `--icount`).
    pub smp: u32,
    /// `-icount` value for deterministic timing (`--icount`, bench); implies `-smp 1`.
    pub icount: String,
    /// Further arguments, added to every QEMU command (e.g. `["-net", "none"]`).
    #[serde(default)]
    pub extra_args: Vec<String>,
}

/// `[xen]`: Xen's console and command line.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XenSettings {
    /// Device-tree path of the UART Xen drives (`dtuart=`); must exist in the machine's DT.
    pub uart: String,
    /// The rest of Xen's command line, after `console=dtuart dtuart=<uart>`.
    pub bootargs: String,
    /// Appended when a system runs the stock hypervisor (Debian's build: `xsm=dummy`, without
    /// which its SILO XSM policy denies domU-to-domU grant maps).
    #[serde(default)]
    pub stock_extra_bootargs: String,
    /// Appended when a system runs Ferry's hypervisor build.
    #[serde(default)]
    pub ferry_extra_bootargs: String,
}

/// `[modules]`: the physical memory where image-builder places the domU kernels.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModuleArea {
    /// First address of the area.
    pub base: Address,
    /// Size of the area.
    pub size: Size,
    /// Alignment of each module's address (a multiple of 4 KiB).
    #[serde(default = "default_module_align")]
    pub align: Size,
}

fn default_module_align() -> Size {
    Size(DEFAULT_MODULE_ALIGN)
}

impl ModuleArea {
    /// One past the last address of the area.
    pub fn end(&self) -> u64 {
        self.base.0.saturating_add(self.size.0)
    }
}

/// Reads and checks a board file.
pub fn load_board(path: &Path) -> Result<Board> {
    let text = read(path)?;
    parse_board(path, &text)
}

/// Parses and checks a board file's text; `path` is only used in messages.
pub fn parse_board(path: &Path, text: &str) -> Result<Board> {
    let board: Board = parse_toml(path, text)?;
    let file = path.display();
    let qemu = &board.qemu;
    if qemu.smp == 0 {
        bail!("{file}: qemu.smp: must be at least 1");
    }
    if qemu.memory.0 == 0 || !qemu.memory.0.is_multiple_of(1 << 20) {
        bail!(
            "{file}: qemu.memory: {} is not a whole number of MiB",
            qemu.memory
        );
    }
    for (key, value) in [
        ("qemu.machine", &qemu.machine),
        ("qemu.cpu", &qemu.cpu),
        ("qemu.icount", &qemu.icount),
    ] {
        if value.trim().is_empty() || value.contains(char::is_whitespace) {
            bail!("{file}: {key}: '{value}' must be one word, without spaces");
        }
    }
    if qemu.machine.contains("dumpdtb") {
        bail!("{file}: qemu.machine: image-builder adds dumpdtb= itself");
    }
    if !board.xen.uart.starts_with('/') {
        bail!(
            "{file}: xen.uart: '{}' is not a device-tree path (e.g. \"/pl011@9000000\")",
            board.xen.uart
        );
    }
    for word in board.xen.bootargs.split_whitespace() {
        if word.starts_with("console=") || word.starts_with("dtuart=") {
            bail!("{file}: xen.bootargs: '{word}' is derived from xen.uart, leave it out");
        }
    }
    let modules = &board.modules;
    if modules.align.0 == 0 || !modules.align.0.is_multiple_of(PAGE_SIZE) {
        bail!(
            "{file}: modules.align: {} is not a multiple of 4 KiB",
            modules.align
        );
    }
    if !modules.base.0.is_multiple_of(modules.align.0) {
        bail!(
            "{file}: modules.base: {} is not aligned to modules.align ({})",
            modules.base,
            modules.align
        );
    }
    if modules.size.0 == 0 || !modules.size.0.is_multiple_of(PAGE_SIZE) {
        bail!(
            "{file}: modules.size: {} is not a non-zero multiple of 4 KiB",
            modules.size
        );
    }
    if modules.base.0.checked_add(modules.size.0).is_none() {
        bail!("{file}: modules: the area wraps around the address space");
    }
    Ok(board)
}

// ---------------------------------------------------------------------------------------------
// System file
// ---------------------------------------------------------------------------------------------

/// Which Xen build runs the system.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Hypervisor {
    /// Debian's `xen-hypervisor-4.17-arm64` (`FERRY_XEN_STOCK`).
    Stock,
    /// Ferry's build with static memory, direct map, static shm and IOREQ (`FERRY_XEN_FERRY`).
    Ferry,
}

impl fmt::Display for Hypervisor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Hypervisor::Stock => "stock",
            Hypervisor::Ferry => "ferry",
        })
    }
}

/// A system file as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SystemFile {
    /// A board name (the folder `<name>` beside the system file's folder) or a path to a
    /// `board.toml` (or its folder) relative to the system file.
    pub board: String,
    /// The Xen build.
    pub hypervisor: Hypervisor,
    /// `image-builder run` kills QEMU and fails after this long.
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u64,
    /// Appended to Xen's command line.
    #[serde(default)]
    pub xen_bootargs: String,
    /// The domUs, in domain-id order.
    #[serde(rename = "domain", default)]
    pub domains: Vec<DomainEntry>,
    /// Static event channels.
    #[serde(rename = "channel", default)]
    pub channels: Vec<ChannelEntry>,
    /// Devices QEMU emulates, in `-device` order.
    #[serde(rename = "qemu_device", default)]
    pub qemu_devices: Vec<QemuDeviceEntry>,
    /// Emulated virtio-mmio devices served over Xen IOREQ by a backend domain.
    #[serde(rename = "virtio", default)]
    pub virtio: Vec<VirtioEntry>,
}

/// A `[[qemu_device]]` entry: a device on QEMU's command line (a virtio-mmio transport of the
/// machine), which a domain can own through `passthrough`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QemuDeviceEntry {
    /// Unique name; QEMU's device (and drive) id, and what `passthrough` refers to.
    pub id: String,
    /// The device.
    pub kind: QemuDeviceKind,
    /// `virtio-blk`: the raw disk image, relative to the workspace (the folder that holds
    /// `boards/`) when the system file is under `boards/`, else to the system file's folder.
    pub image: Option<String>,
    /// `virtio-blk` with `create = true`: the size of the image created.
    pub size: Option<Size>,
    /// `virtio-blk`: delete the image and create it afresh, sparse and zero-filled, at every run.
    #[serde(default)]
    pub create: bool,
    /// QEMU's virtio-mmio bus to put the device on, e.g. `"virtio-mmio-bus.23"` (`-device
    /// ...,bus=`); default: QEMU's choice (the highest free transport).
    pub bus: Option<String>,
}

/// The kinds of QEMU device a system can declare.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum QemuDeviceKind {
    /// `-device virtio-blk-device` with a raw `-drive`.
    #[serde(rename = "virtio-blk")]
    VirtioBlk,
    /// `-device virtio-rng-device`.
    #[serde(rename = "virtio-rng")]
    VirtioRng,
}

impl fmt::Display for QemuDeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            QemuDeviceKind::VirtioBlk => "virtio-blk",
            QemuDeviceKind::VirtioRng => "virtio-rng",
        })
    }
}

/// A `[[virtio]]` entry: `backend` emulates a virtio-mmio device of `kind` for `frontend`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VirtioEntry {
    /// The device model domain (an appliance such as `blk`).
    pub backend: String,
    /// The domain that sees the device.
    pub frontend: String,
    /// The virtio device type.
    pub kind: VirtioKind,
}

/// Virtio device types a backend can serve.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VirtioKind {
    /// virtio-blk (device id 2).
    Blk,
    /// virtio-rng (entropy, device id 4).
    Rng,
}

impl VirtioKind {
    /// The physical device kind a backend of this type drives.
    pub fn physical(self) -> QemuDeviceKind {
        match self {
            VirtioKind::Blk => QemuDeviceKind::VirtioBlk,
            VirtioKind::Rng => QemuDeviceKind::VirtioRng,
        }
    }
}

impl fmt::Display for VirtioKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VirtioKind::Blk => "blk",
            VirtioKind::Rng => "rng",
        })
    }
}

fn default_timeout() -> u64 {
    DEFAULT_TIMEOUT_SECONDS
}

fn default_vcpus() -> u32 {
    1
}

/// Kernels a domain can run instead of an appliance (`kernel = "..."`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KernelKind {
    /// Ferry's unmodified Linux frontend (`FERRY_LINUX_IMAGE`) with its busybox initramfs
    /// (`FERRY_LINUX_INITRAMFS`, a `multiboot,ramdisk` module): docs/linux-frontend.md.
    Linux,
}

/// What a domain boots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// A Ferry appliance: `build/images/<name>.img`.
    Appliance(String),
    /// Ferry's Linux frontend kernel and initramfs.
    Linux,
}

impl fmt::Display for Kernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kernel::Appliance(name) => write!(f, "appliance {name}"),
            Kernel::Linux => f.write_str("linux"),
        }
    }
}

/// The console device of Ferry's Linux frontend: Xen's vpl011 (an `arm,sbsa-uart`, driven by
/// the PL011 driver). `hvc0` needs xenstore, which dom0less domains do not have.
pub const LINUX_CONSOLE: &str = "console=ttyAMA0";

/// A `[[domain]]` entry.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainEntry {
    /// Unique name: console prefix, `ferry.name=`, channel ends.
    pub name: String,
    /// The appliance binary; its image is `build/images/<appliance>.img`. Exactly one of
    /// `appliance` and `kernel`.
    pub appliance: Option<String>,
    /// A kernel other than an appliance: `"linux"`.
    pub kernel: Option<KernelKind>,
    /// `kernel = "linux"`: the tests of the initramfs to run, in order (`ferry.test=a,b`).
    #[serde(default)]
    pub tests: Vec<String>,
    /// Guest RAM, a multiple of 4 KiB.
    pub memory: Size,
    /// Virtual CPUs.
    #[serde(default = "default_vcpus")]
    pub vcpus: u32,
    /// The domain's own bootargs; `{domid:NAME}` is replaced by NAME's domain id.
    #[serde(default)]
    pub bootargs: String,
    /// Guest RAM 1:1 at a fixed host address (`xen,static-mem` + `direct-map`; Ferry's Xen).
    pub direct_map: Option<DirectMap>,
    /// Ids of `[[qemu_device]]` entries this domain owns (passed through; needs `direct_map`).
    #[serde(default)]
    pub passthrough: Vec<String>,
}

/// `direct_map = { base = "0x60000000" }`.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectMap {
    /// Host (and guest) physical address of the domain's RAM.
    pub base: Address,
}

/// A `[[channel]]` entry: a static event channel between two domains.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelEntry {
    /// Unique name; also the bootargs prefix (`<name>.port=`, `<name>.peer=`).
    pub name: String,
    /// The two domains it connects.
    pub ends: [String; 2],
}

/// A checked system, with its board, domain ids, ports and final bootargs.
#[derive(Clone, Debug)]
pub struct System {
    /// The system file.
    pub path: PathBuf,
    /// The board file.
    pub board_path: PathBuf,
    /// The board.
    pub board: Board,
    /// The Xen build.
    pub hypervisor: Hypervisor,
    /// Run timeout.
    pub timeout_seconds: u64,
    /// Xen's whole command line.
    pub xen_bootargs: String,
    /// Domains in domain-id order.
    pub domains: Vec<Domain>,
    /// Channels in file order.
    pub channels: Vec<Channel>,
    /// QEMU devices in declaration (`-device`) order.
    pub qemu_devices: Vec<QemuDevice>,
    /// Emulated virtio-mmio devices, in `[[virtio]]` order.
    pub virtio: Vec<VirtioDevice>,
}

/// A checked `[[qemu_device]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QemuDevice {
    /// QEMU's device id (and drive id).
    pub id: String,
    /// The device.
    pub kind: QemuDeviceKind,
    /// `virtio-blk`: the disk image (absolute when it could be made so).
    pub image: Option<PathBuf>,
    /// `create = true`: the size the image is created with.
    pub create_size: Option<u64>,
    /// The domain that owns it, if any.
    pub owner: Option<u32>,
    /// `bus`: QEMU's virtio-mmio bus (`-device ...,bus=`), when given.
    pub bus: Option<String>,
}

/// A checked `[[virtio]]` entry: everything both ends are told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioDevice {
    /// The virtio device type.
    pub kind: VirtioKind,
    /// The device model's domain id.
    pub backend: u32,
    /// The frontend's domain id.
    pub frontend: u32,
    /// Index among the frontend's emulated devices (window and INTID number).
    pub index: u32,
    /// Guest address of the window in the frontend.
    pub base: u64,
    /// Size of the window.
    pub size: u64,
    /// The device's interrupt in the frontend (GIC INTID, an SPI).
    pub intid: u32,
}

/// A checked domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Domain {
    /// Its name.
    pub name: String,
    /// Its domain id (1 for the first entry).
    pub domid: u32,
    /// What it boots.
    pub kernel: Kernel,
    /// Guest RAM in bytes.
    pub memory: u64,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// `direct_map.base`, when direct-mapped.
    pub direct_map: Option<u64>,
    /// Its own bootargs with placeholders expanded (without the automatic ones).
    pub own_bootargs: String,
    /// Its channel ends, in channel order.
    pub ends: Vec<ChannelEnd>,
    /// Ids of the QEMU devices it owns.
    pub passthrough: Vec<String>,
    /// The emulated device it serves as a device model (it is then a *service*).
    pub serves: Option<VirtioDevice>,
    /// `kernel = "linux"`: the initramfs tests to run (`ferry.test=`).
    pub tests: Vec<String>,
}

/// One domain's end of a channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelEnd {
    /// The channel's name.
    pub channel: String,
    /// Local port in this domain.
    pub port: u32,
    /// The other domain's id.
    pub peer_domid: u32,
    /// The other end's local port.
    pub peer_port: u32,
}

/// A checked channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Channel {
    /// Its name.
    pub name: String,
    /// (domain id, local port) of each end, in the order of `ends`.
    pub ends: [(u32, u32); 2],
}

impl Domain {
    /// The whole command line of the domain's kernel (see the module docs for the order).
    pub fn bootargs(&self) -> String {
        let mut words = Vec::new();
        if self.kernel == Kernel::Linux {
            words.push(LINUX_CONSOLE.to_owned());
        }
        words.push(format!("ferry.name={}", self.name));
        words.extend(self.own_bootargs.split_whitespace().map(str::to_owned));
        if !self.tests.is_empty() {
            words.push(format!("ferry.test={}", self.tests.join(",")));
        }
        for end in &self.ends {
            words.push(format!("{}.port={}", end.channel, end.port));
            words.push(format!("{}.peer={}", end.channel, end.peer_domid));
        }
        if let Some(device) = &self.serves {
            words.push(format!("ioreq.frontend={}", device.frontend));
            words.push(format!("ioreq.base={:#x}", device.base));
            words.push(format!("ioreq.size={:#x}", device.size));
            words.push(format!("ioreq.irq={}", device.intid));
        }
        words.join(" ")
    }

    /// The appliance it runs, if it runs one.
    pub fn appliance(&self) -> Option<&str> {
        match &self.kernel {
            Kernel::Appliance(name) => Some(name),
            Kernel::Linux => None,
        }
    }

    /// Whether the domain is a service: a device model, which never exits on its own. The run
    /// passes without its poweroff once it printed `ferry: serve: ... ready`.
    pub fn is_service(&self) -> bool {
        self.serves.is_some()
    }
}

impl System {
    /// The domain with this id.
    pub fn domain_by_id(&self, domid: u32) -> Option<&Domain> {
        self.domains.iter().find(|domain| domain.domid == domid)
    }

    /// The QEMU device with this id.
    pub fn qemu_device(&self, id: &str) -> Option<&QemuDevice> {
        self.qemu_devices.iter().find(|device| device.id == id)
    }

    /// The emulated devices a domain sees as a frontend, in window order.
    pub fn frontend_devices(&self, domid: u32) -> Vec<VirtioDevice> {
        self.virtio
            .iter()
            .filter(|device| device.frontend == domid)
            .copied()
            .collect()
    }

    /// The domain whose device model this domain is (`xen,device-model-for`).
    pub fn device_model_for(&self, domid: u32) -> Option<u32> {
        self.domain_by_id(domid)
            .and_then(|domain| domain.serves)
            .map(|device| device.frontend)
    }

    /// A short name for messages: the system file's stem.
    pub fn name(&self) -> String {
        self.path
            .file_stem()
            .map(|stem| stem.to_string_lossy().into_owned())
            .unwrap_or_else(|| "system".to_owned())
    }

    /// Appends `words` to the own bootargs of every domain running `appliance` (bench:
    /// `probe.bench=1`); returns how many domains that was.
    pub fn append_bootargs(&mut self, appliance: &str, words: &str) -> usize {
        let mut count = 0;
        for domain in &mut self.domains {
            if domain.appliance() == Some(appliance) {
                domain.own_bootargs = format!("{} {words}", domain.own_bootargs).trim().to_owned();
                count += 1;
            }
        }
        count
    }

    /// Gives every domain `memory` bytes (bench: smallest memory that passes).
    pub fn set_all_memory(&mut self, memory: u64) -> Result<()> {
        check_memory(memory).map_err(|message| anyhow!("memory {}: {message}", Size(memory)))?;
        for domain in &mut self.domains {
            domain.memory = memory;
        }
        check_direct_map_overlaps(&self.path, &self.domains)
    }
}

/// Reads and checks a system file and its board.
pub fn load_system(path: &Path) -> Result<System> {
    let text = read(path)?;
    let file: SystemFile = parse_toml(path, &text)?;
    let board_path = board_path(path, &file.board)?;
    let board = load_board(&board_path)?;
    resolve(path, &file, board_path, board)
}

/// Where a system's `board` key points.
pub fn board_path(system_path: &Path, board: &str) -> Result<PathBuf> {
    let system_dir = system_path.parent().unwrap_or(Path::new("."));
    let is_path = board.contains('/') || board.ends_with(".toml");
    let candidate = if is_path {
        let path = system_dir.join(board);
        if path.is_dir() {
            path.join("board.toml")
        } else {
            path
        }
    } else {
        if !is_name(board) {
            bail!(
                "{}: board: '{board}' is neither a board name nor a path",
                system_path.display()
            );
        }
        system_dir.join("..").join(board).join("board.toml")
    };
    if !candidate.is_file() {
        bail!(
            "{}: board: '{board}' -> {} does not exist",
            system_path.display(),
            candidate.display()
        );
    }
    Ok(normalize(&candidate))
}

/// Removes `dir/..` pairs, so that messages show `boards/x/board.toml`.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir
                if out
                    .components()
                    .next_back()
                    .is_some_and(|last| matches!(last, std::path::Component::Normal(_))) =>
            {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Checks a parsed system file against its board and numbers it.
pub fn resolve(
    path: &Path,
    file: &SystemFile,
    board_path: PathBuf,
    board: Board,
) -> Result<System> {
    let name_of = path.display();
    if file.domains.is_empty() {
        bail!("{name_of}: no [[domain]] entry");
    }
    if file.timeout_seconds == 0 {
        bail!("{name_of}: timeout_seconds: must be at least 1");
    }

    let mut domids = BTreeMap::new();
    for (index, entry) in file.domains.iter().enumerate() {
        let at = format!("{name_of}: domain '{}'", entry.name);
        if !is_name(&entry.name) {
            bail!(
                "{name_of}: domain #{}: name: '{}' must be letters, digits, '-' or '_'",
                index + 1,
                entry.name
            );
        }
        if matches!(entry.name.as_str(), "xen" | "qemu") {
            bail!("{at}: name: '{}' is reserved for console lines", entry.name);
        }
        if domids
            .insert(entry.name.clone(), index as u32 + 1)
            .is_some()
        {
            bail!("{at}: name: a domain of that name comes earlier");
        }
        match (&entry.appliance, entry.kernel) {
            (Some(appliance), None) => {
                if !is_name(appliance) {
                    bail!("{at}: appliance: '{appliance}' is not an appliance binary name");
                }
                if !entry.tests.is_empty() {
                    bail!(
                        "{at}: tests: only for kernel = \"linux\" (an appliance reads its own \
                         bootargs)"
                    );
                }
            }
            (None, Some(KernelKind::Linux)) => {
                if entry.tests.is_empty() {
                    bail!(
                        "{at}: tests: missing (kernel = \"linux\" runs the initramfs tests \
                         listed here, e.g. tests = [\"blk\"]; linux/tests/<name>.sh)"
                    );
                }
                for test in &entry.tests {
                    let valid = !test.is_empty()
                        && test.chars().all(|c| {
                            c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_'
                        });
                    if !valid {
                        bail!("{at}: tests: '{test}' is not a test name ([a-z0-9_-]+)");
                    }
                }
                for word in entry.bootargs.split_whitespace() {
                    if word.starts_with("console=") || word.starts_with("ferry.test=") {
                        bail!(
                            "{at}: bootargs: '{word}' is added by image-builder ({LINUX_CONSOLE}, \
                             ferry.test= from tests), leave it out"
                        );
                    }
                }
            }
            (Some(_), Some(_)) => bail!("{at}: appliance and kernel: give one of them, not both"),
            (None, None) => bail!(
                "{at}: missing key 'appliance' (or 'kernel = \"linux\"'): what the domain boots"
            ),
        }
        check_memory(entry.memory.0)
            .map_err(|message| anyhow!("{at}: memory: {} {message}", entry.memory))?;
        if entry.vcpus == 0 {
            bail!("{at}: vcpus: must be at least 1");
        }
        if let Some(direct_map) = entry.direct_map {
            if file.hypervisor != Hypervisor::Ferry {
                bail!(
                    "{at}: direct_map: needs hypervisor = \"ferry\" (the stock Xen has no \
                     static memory nor direct map)"
                );
            }
            if direct_map.base.0 % PAGE_SIZE != 0 {
                bail!(
                    "{at}: direct_map.base: {} is not a multiple of 4 KiB",
                    direct_map.base
                );
            }
        }
    }

    let mut channel_names = HashSet::new();
    let mut next_port: BTreeMap<u32, u32> = BTreeMap::new();
    let mut channels = Vec::new();
    for (index, entry) in file.channels.iter().enumerate() {
        let at = format!("{name_of}: channel '{}'", entry.name);
        if !is_name(&entry.name) || entry.name.contains('.') {
            bail!(
                "{name_of}: channel #{}: name: '{}' must be letters, digits, '-' or '_'",
                index + 1,
                entry.name
            );
        }
        if !channel_names.insert(entry.name.clone()) {
            bail!("{at}: name: a channel of that name comes earlier");
        }
        let mut ends = [(0, 0); 2];
        for (slot, end) in entry.ends.iter().enumerate() {
            let domid = *domids
                .get(end)
                .ok_or_else(|| anyhow!("{at}: ends: no domain named '{end}'"))?;
            let port = next_port.entry(domid).or_insert(FIRST_PORT);
            ends[slot] = (domid, *port);
            *port += 1;
        }
        if entry.ends[0] == entry.ends[1] {
            bail!(
                "{at}: ends: both ends are domain '{}' (a channel connects two domains)",
                entry.ends[0]
            );
        }
        channels.push(Channel {
            name: entry.name.clone(),
            ends,
        });
    }

    let qemu_devices = resolve_qemu_devices(path, file)?;
    let virtio = resolve_virtio(path, file, &domids, &qemu_devices)?;

    let mut domains = Vec::new();
    for (index, entry) in file.domains.iter().enumerate() {
        let domid = index as u32 + 1;
        let own_bootargs = expand_placeholders(&entry.bootargs, &domids).map_err(|message| {
            anyhow!("{name_of}: domain '{}': bootargs: {message}", entry.name)
        })?;
        let mut ends = Vec::new();
        for channel in &channels {
            for (slot, &(end_domid, port)) in channel.ends.iter().enumerate() {
                if end_domid == domid {
                    let (peer_domid, peer_port) = channel.ends[1 - slot];
                    ends.push(ChannelEnd {
                        channel: channel.name.clone(),
                        port,
                        peer_domid,
                        peer_port,
                    });
                }
            }
        }
        domains.push(Domain {
            name: entry.name.clone(),
            domid,
            kernel: match &entry.appliance {
                Some(appliance) => Kernel::Appliance(appliance.clone()),
                None => Kernel::Linux,
            },
            memory: entry.memory.0,
            vcpus: entry.vcpus,
            direct_map: entry.direct_map.map(|direct_map| direct_map.base.0),
            own_bootargs,
            ends,
            passthrough: entry.passthrough.clone(),
            serves: virtio
                .iter()
                .find(|device| device.backend == domid)
                .copied(),
            tests: entry.tests.clone(),
        });
    }
    check_direct_map_overlaps(path, &domains)?;
    for domain in &domains {
        if let Some(base) = domain.direct_map {
            let end = base + domain.memory;
            if base < board.modules.end() && board.modules.base.0 < end {
                bail!(
                    "{name_of}: domain '{}': direct_map: {:#x}-{:#x} overlaps the board's module \
                     area {}-{:#x} ({})",
                    domain.name,
                    base,
                    end,
                    board.modules.base,
                    board.modules.end(),
                    board_path.display()
                );
            }
        }
    }

    let extra = match file.hypervisor {
        Hypervisor::Stock => &board.xen.stock_extra_bootargs,
        Hypervisor::Ferry => &board.xen.ferry_extra_bootargs,
    };
    let xen_bootargs = [
        format!("console=dtuart dtuart={}", board.xen.uart),
        board.xen.bootargs.clone(),
        extra.clone(),
        file.xen_bootargs.clone(),
    ]
    .iter()
    .flat_map(|part| part.split_whitespace())
    .collect::<Vec<_>>()
    .join(" ");

    Ok(System {
        path: path.to_owned(),
        board_path,
        board,
        hypervisor: file.hypervisor,
        timeout_seconds: file.timeout_seconds,
        xen_bootargs,
        domains,
        channels,
        qemu_devices,
        virtio,
    })
}

/// The folder relative image paths start from: the one that holds `boards/` when the system
/// file is under a `boards` folder, else the system file's own folder.
pub fn data_root(system_path: &Path) -> PathBuf {
    let directory = system_path.parent().unwrap_or(Path::new("."));
    let absolute = std::path::absolute(directory).unwrap_or_else(|_| directory.to_owned());
    let root = absolute
        .ancestors()
        .find(|ancestor| ancestor.file_name().is_some_and(|name| name == "boards"))
        .and_then(Path::parent)
        .map(Path::to_owned);
    normalize(&root.unwrap_or(absolute))
}

/// Checks the `[[qemu_device]]` entries and the domains' `passthrough` lists.
fn resolve_qemu_devices(path: &Path, file: &SystemFile) -> Result<Vec<QemuDevice>> {
    let name_of = path.display();
    let mut devices: Vec<QemuDevice> = Vec::new();
    for (index, entry) in file.qemu_devices.iter().enumerate() {
        if !is_name(&entry.id) {
            bail!(
                "{name_of}: qemu_device #{}: id: '{}' must be letters, digits, '-' or '_'",
                index + 1,
                entry.id
            );
        }
        let at = format!("{name_of}: qemu_device '{}'", entry.id);
        if devices.iter().any(|device| device.id == entry.id) {
            bail!("{at}: id: a qemu_device with that id comes earlier");
        }
        let (image, create_size) = match entry.kind {
            QemuDeviceKind::VirtioBlk => {
                let image = entry.image.as_deref().ok_or_else(|| {
                    anyhow!("{at}: image: missing (a virtio-blk device needs a raw disk image)")
                })?;
                if image.trim().is_empty() || image.contains(',') {
                    bail!(
                        "{at}: image: '{image}' must be a non-empty path without ',' (QEMU's \
                         option separator)"
                    );
                }
                let create_size = match (entry.create, entry.size) {
                    (true, Some(size)) => {
                        if size.0 == 0 || !size.0.is_multiple_of(SECTOR_SIZE) {
                            bail!(
                                "{at}: size: {size} ({} bytes) is not a non-zero multiple of \
                                 512 bytes",
                                size.0
                            );
                        }
                        Some(size.0)
                    }
                    (true, None) => bail!("{at}: size: missing (create = true needs a size)"),
                    (false, Some(_)) => {
                        bail!("{at}: size: only used with create = true (the image is used as is)")
                    }
                    (false, None) => None,
                };
                (Some(data_root(path).join(image)), create_size)
            }
            QemuDeviceKind::VirtioRng => {
                for (key, set) in [
                    ("image", entry.image.is_some()),
                    ("size", entry.size.is_some()),
                    ("create", entry.create),
                ] {
                    if set {
                        bail!("{at}: {key}: a {} device has no disk image", entry.kind);
                    }
                }
                (None, None)
            }
        };
        if let Some(bus) = &entry.bus {
            let valid = bus.strip_prefix("virtio-mmio-bus.").is_some_and(|number| {
                !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit())
            });
            if !valid {
                bail!(
                    "{at}: bus: '{bus}' is not a virtio-mmio bus name (e.g. \"virtio-mmio-bus.23\"; \
                     on virt bus N is the transport at 0x0a000000 + 0x200 * N)"
                );
            }
        }
        devices.push(QemuDevice {
            id: entry.id.clone(),
            kind: entry.kind,
            image,
            create_size,
            owner: None,
            bus: entry.bus.clone(),
        });
    }
    for (index, entry) in file.domains.iter().enumerate() {
        let at = format!("{name_of}: domain '{}'", entry.name);
        for id in &entry.passthrough {
            let device = devices.iter_mut().find(|device| &device.id == id);
            let Some(device) = device else {
                let known: Vec<_> = file.qemu_devices.iter().map(|d| d.id.as_str()).collect();
                bail!(
                    "{at}: passthrough: no qemu_device with id '{id}' (declared: {})",
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                );
            };
            if let Some(owner) = device.owner {
                let other = &file.domains[owner as usize - 1].name;
                if owner == index as u32 + 1 {
                    bail!("{at}: passthrough: '{id}' is listed twice");
                }
                bail!("{at}: passthrough: '{id}' is already passed through to domain '{other}'");
            }
            device.owner = Some(index as u32 + 1);
        }
        if !entry.passthrough.is_empty() && entry.direct_map.is_none() {
            bail!(
                "{at}: passthrough: needs direct_map (xen,static-mem + direct-map): the device \
                 does DMA to host physical addresses, so guest RAM must be host RAM 1:1"
            );
        }
    }
    Ok(devices)
}

/// Checks the `[[virtio]]` entries and numbers each frontend's windows and INTIDs.
fn resolve_virtio(
    path: &Path,
    file: &SystemFile,
    domids: &BTreeMap<String, u32>,
    qemu_devices: &[QemuDevice],
) -> Result<Vec<VirtioDevice>> {
    let name_of = path.display();
    let mut devices: Vec<VirtioDevice> = Vec::new();
    for (index, entry) in file.virtio.iter().enumerate() {
        let at = format!(
            "{name_of}: virtio #{} ({} -> {})",
            index + 1,
            entry.backend,
            entry.frontend
        );
        if file.hypervisor != Hypervisor::Ferry {
            bail!(
                "{at}: needs hypervisor = \"ferry\" (IOREQ servers and xen,device-model-for are \
                 only in Ferry's Xen build)"
            );
        }
        let backend = *domids
            .get(&entry.backend)
            .ok_or_else(|| anyhow!("{at}: backend: no domain named '{}'", entry.backend))?;
        let frontend = *domids
            .get(&entry.frontend)
            .ok_or_else(|| anyhow!("{at}: frontend: no domain named '{}'", entry.frontend))?;
        if backend == frontend {
            bail!(
                "{at}: frontend: domain '{}' cannot be its own device model",
                entry.frontend
            );
        }
        if let Some(earlier) = devices.iter().find(|device| device.backend == backend) {
            let earlier_frontend = &file.domains[earlier.frontend as usize - 1].name;
            bail!(
                "{at}: backend: domain '{}' already serves a device to '{earlier_frontend}' (a \
                 device model serves one device: one xen,device-model-for target and one set of \
                 ioreq.* bootargs)",
                entry.backend
            );
        }
        let backend_entry = &file.domains[backend as usize - 1];
        let physical = entry.kind.physical();
        let owns = backend_entry.passthrough.iter().any(|id| {
            qemu_devices
                .iter()
                .any(|device| &device.id == id && device.kind == physical)
        });
        if !owns {
            bail!(
                "{at}: backend: domain '{}' has no {physical} device in its passthrough list (the \
                 {} backend drives a passed-through {physical})",
                entry.backend,
                entry.kind
            );
        }
        let index = devices
            .iter()
            .filter(|device| device.frontend == frontend)
            .count() as u32;
        let intid = VIRTIO_MMIO_FIRST_INTID + index;
        if intid > VIRTIO_MMIO_LAST_INTID {
            bail!(
                "{at}: frontend: domain '{}' would get more than {} emulated devices (INTIDs \
                 {VIRTIO_MMIO_FIRST_INTID}..{VIRTIO_MMIO_LAST_INTID})",
                entry.frontend,
                VIRTIO_MMIO_LAST_INTID - VIRTIO_MMIO_FIRST_INTID + 1
            );
        }
        devices.push(VirtioDevice {
            kind: entry.kind,
            backend,
            frontend,
            index,
            base: VIRTIO_MMIO_BASE + u64::from(index) * VIRTIO_MMIO_WINDOW,
            size: VIRTIO_MMIO_WINDOW,
            intid,
        });
    }
    Ok(devices)
}

fn check_memory(memory: u64) -> Result<(), String> {
    if memory == 0 {
        return Err("is zero".to_owned());
    }
    if !memory.is_multiple_of(PAGE_SIZE) {
        return Err(format!("({memory} bytes) is not a multiple of 4 KiB"));
    }
    Ok(())
}

fn check_direct_map_overlaps(path: &Path, domains: &[Domain]) -> Result<()> {
    for (index, a) in domains.iter().enumerate() {
        for b in &domains[index + 1..] {
            if let (Some(a_base), Some(b_base)) = (a.direct_map, b.direct_map) {
                if a_base < b_base + b.memory && b_base < a_base + a.memory {
                    bail!(
                        "{}: domain '{}': direct_map: {:#x}-{:#x} overlaps domain '{}' at \
                         {:#x}-{:#x}",
                        path.display(),
                        b.name,
                        b_base,
                        b_base + b.memory,
                        a.name,
                        a_base,
                        a_base + a.memory
                    );
                }
            }
        }
    }
    Ok(())
}

/// Replaces `{domid:NAME}`; any other `{...}` is an error.
fn expand_placeholders(text: &str, domids: &BTreeMap<String, u32>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| format!("'{{' without '}}' in '{text}'"))?;
        let placeholder = &after[..close];
        let name = placeholder.strip_prefix("domid:").ok_or_else(|| {
            format!("unknown placeholder '{{{placeholder}}}' (only {{domid:NAME}} exists)")
        })?;
        let domid = domids
            .get(name)
            .ok_or_else(|| format!("'{{{placeholder}}}': no domain named '{name}'"))?;
        out.push_str(&domid.to_string());
        rest = &after[close + 1..];
    }
    if rest.contains('}') {
        return Err(format!("'}}' without '{{' in '{text}'"));
    }
    out.push_str(rest);
    Ok(out)
}

/// Names of domains, appliances, channels and boards.
fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// Strict TOML with messages that name the file, the line, the entry and the key
// ---------------------------------------------------------------------------------------------

/// Deserializes `text`; errors read `<file>:<line>: <where>: <what>`.
pub fn parse_toml<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T> {
    let file = path.display();
    let deserializer = toml::de::Deserializer::parse(text).map_err(|error| {
        let line = error.span().map(|span| line_of(text, span.start));
        anyhow!("{}: {}", location(&file, line), error.message().trim())
    })?;
    serde_path_to_error::deserialize(deserializer).map_err(|error| {
        let line = error.inner().span().map(|span| line_of(text, span.start));
        let (context, key) = describe_path(error.path(), text);
        let message = reword(error.inner().message(), key.as_deref());
        let location = location(&file, line);
        if context.is_empty() {
            anyhow!("{location}: {message}")
        } else {
            anyhow!("{location}: {context}: {message}")
        }
    })
}

fn location(file: &impl fmt::Display, line: Option<usize>) -> String {
    match line {
        Some(line) => format!("{file}:{line}"),
        None => file.to_string(),
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Turns `domain[1].direct_map.bse` into (`domain 'pong': direct_map`, Some(`bse`)): array
/// entries are named by their `name` key, and the last key is returned apart.
fn describe_path(path: &serde_path_to_error::Path, text: &str) -> (String, Option<String>) {
    use serde_path_to_error::Segment;
    let raw: Option<toml::Table> = toml::from_str(text).ok();
    let segments: Vec<&Segment> = path.iter().collect();
    let mut parts: Vec<String> = Vec::new();
    let mut index = 0;
    while index < segments.len() {
        match (segments[index], segments.get(index + 1)) {
            (Segment::Map { key }, Some(Segment::Seq { index: entry })) => {
                let name = raw
                    .as_ref()
                    .and_then(|table| table.get(key.as_str()))
                    .and_then(|value| value.as_array())
                    .and_then(|entries| entries.get(*entry))
                    .and_then(|value| value.get("name").or_else(|| value.get("id")))
                    .and_then(|name| name.as_str());
                parts.push(match name {
                    Some(name) => format!("{key} '{name}'"),
                    None => format!("{key} #{}", entry + 1),
                });
                index += 2;
            }
            (Segment::Map { key }, _) => {
                parts.push(key.clone());
                index += 1;
            }
            (Segment::Seq { index: entry }, _) => {
                parts.push(format!("#{}", entry + 1));
                index += 1;
            }
            _ => index += 1,
        }
    }
    // The last key is where the error is; for "unknown field" it is the unknown key itself.
    let last_is_key = matches!(segments.last(), Some(Segment::Map { .. }));
    let key = if last_is_key { parts.pop() } else { None };
    // A nested key stays in the context: `domain 'pong': direct_map` + `bse`.
    let context = group(&parts);
    (context, key)
}

/// Joins `["domain 'pong'", "direct_map"]` as `domain 'pong': direct_map`.
fn group(parts: &[String]) -> String {
    parts.join(": ")
}

/// serde's "unknown field `x`, expected ..." in the words of this project's files.
fn reword(message: &str, key: Option<&str>) -> String {
    let message = message.trim();
    if let Some(rest) = message.strip_prefix("unknown field `") {
        if let Some((field, expected)) = rest.split_once('`') {
            let expected = expected
                .trim_start_matches(',')
                .trim()
                .replace('`', "'")
                .replace("there are no fields", "this table has no keys");
            return format!("unknown key '{field}' ({expected})");
        }
    }
    if let Some(rest) = message.strip_prefix("missing field `") {
        if let Some((field, _)) = rest.split_once('`') {
            return format!("missing key '{field}'");
        }
    }
    let message = message.replace('`', "'");
    match key {
        Some(key) => format!("{key}: {message}"),
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOARD: &str = r#"
[qemu]
machine = "virt,virtualization=on,gic-version=3"
cpu = "cortex-a57"
memory = "1G"
smp = 2
icount = "shift=0,sleep=off"
extra_args = ["-net", "none"]

[xen]
uart = "/pl011@9000000"
bootargs = "bootscrub=0 loglvl=all guest_loglvl=all"
stock_extra_bootargs = "xsm=dummy"

[modules]
base = "0x50000000"
size = "256M"
"#;

    const SYSTEM: &str = r#"
board = "test-board"
hypervisor = "ferry"
timeout_seconds = 30

[[domain]]
name = "ping"
appliance = "selftest"
memory = "4M"
bootargs = "selftest.role=ping other={domid:pong}"

[[domain]]
name = "pong"
appliance = "selftest"
memory = "2M"
vcpus = 2
direct_map = { base = "0x60000000" }

[[domain]]
name = "third"
appliance = "selftest"
memory = 8192

[[channel]]
name = "selftest"
ends = ["ping", "pong"]

[[channel]]
name = "side"
ends = ["third", "ping"]
"#;

    fn board() -> Board {
        parse_board(Path::new("boards/test-board/board.toml"), BOARD).unwrap()
    }

    fn system(text: &str) -> Result<System> {
        let path = Path::new("boards/test-board/test.toml");
        let file: SystemFile = parse_toml(path, text)?;
        resolve(
            path,
            &file,
            PathBuf::from("boards/test-board/board.toml"),
            board(),
        )
    }

    fn error(text: &str) -> String {
        format!("{:#}", system(text).unwrap_err())
    }

    #[test]
    fn sizes_parse_with_suffixes_and_hex() {
        assert_eq!(parse_size("4M"), Ok(4 << 20));
        assert_eq!(parse_size("512K"), Ok(512 << 10));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("0x1000"), Ok(4096));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("4X").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("99999999999999G").is_err());
        assert_eq!(format_size(4 << 20), "4M");
        assert_eq!(format_size(1536 << 10), "1536K");
        assert_eq!(format_size(4097), "4097");
    }

    #[test]
    fn good_system_is_numbered() {
        let system = system(SYSTEM).unwrap();
        assert_eq!(system.timeout_seconds, 30);
        assert_eq!(
            system.xen_bootargs,
            "console=dtuart dtuart=/pl011@9000000 bootscrub=0 loglvl=all guest_loglvl=all"
        );
        let [ping, pong, third] = &system.domains[..] else {
            panic!("three domains")
        };
        assert_eq!((ping.domid, pong.domid, third.domid), (1, 2, 3));
        assert_eq!(ping.memory, 4 << 20);
        assert_eq!(pong.vcpus, 2);
        assert_eq!(pong.direct_map, Some(0x6000_0000));
        assert_eq!(third.memory, 8192);
        // Ports start at 10 per domain, in channel order.
        assert_eq!(system.channels[0].ends, [(1, 10), (2, 10)]);
        assert_eq!(system.channels[1].ends, [(3, 10), (1, 11)]);
        assert_eq!(
            ping.bootargs(),
            "ferry.name=ping selftest.role=ping other=2 selftest.port=10 selftest.peer=2 \
             side.port=11 side.peer=3"
        );
        assert_eq!(
            pong.bootargs(),
            "ferry.name=pong selftest.port=10 selftest.peer=1"
        );
        assert_eq!(
            third.bootargs(),
            "ferry.name=third side.port=10 side.peer=1"
        );
        assert_eq!(ping.ends[0].peer_port, 10);
        assert_eq!(ping.ends[1].peer_port, 10);
    }

    #[test]
    fn stock_hypervisor_adds_the_board_extra_bootargs() {
        let text = SYSTEM
            .replace("hypervisor = \"ferry\"", "hypervisor = \"stock\"")
            .replace("direct_map = { base = \"0x60000000\" }", "")
            .replacen(
                "timeout_seconds = 30",
                "timeout_seconds = 30\nxen_bootargs = \"console_timestamps=boot\"",
                1,
            );
        let system = system(&text).unwrap();
        assert_eq!(system.hypervisor, Hypervisor::Stock);
        assert!(system
            .xen_bootargs
            .ends_with("guest_loglvl=all xsm=dummy console_timestamps=boot"));
    }

    #[test]
    fn unknown_key_is_named_with_its_domain_and_line() {
        let text = SYSTEM.replace("memory = \"2M\"", "memry = \"2M\"");
        let message = error(&text);
        assert!(
            message
                .starts_with("boards/test-board/test.toml:15: domain 'pong': unknown key 'memry'"),
            "{message}"
        );
        assert!(message.contains("expected one of"), "{message}");
    }

    #[test]
    fn unknown_nested_and_top_level_keys_are_named() {
        let message = error(&SYSTEM.replace("{ base =", "{ bse ="));
        assert!(
            message.contains("domain 'pong': direct_map: unknown key 'bse'"),
            "{message}"
        );
        let message = error(&SYSTEM.replace("timeout_seconds", "timeout"));
        assert!(
            message.starts_with("boards/test-board/test.toml:4: unknown key 'timeout'"),
            "{message}"
        );
        let message = error(&SYSTEM.replace("ends = [\"third\"", "end = [\"third\""));
        assert!(
            message.contains("channel 'side': unknown key 'end'"),
            "{message}"
        );
    }

    #[test]
    fn bad_memory_is_refused() {
        let message = error(&SYSTEM.replace("\"4M\"", "\"4Q\""));
        assert!(
            message.contains("domain 'ping': memory: invalid size '4Q'"),
            "{message}"
        );
        let message = error(&SYSTEM.replace("memory = 8192", "memory = 6000"));
        assert!(
            message
                .contains("domain 'third': memory: 6000 (6000 bytes) is not a multiple of 4 KiB"),
            "{message}"
        );
        let message = error(&SYSTEM.replace("memory = 8192", "memory = 0"));
        assert!(message.contains("domain 'third': memory"), "{message}");
    }

    #[test]
    fn channel_ends_must_exist_and_differ() {
        let message = error(&SYSTEM.replace("[\"ping\", \"pong\"]", "[\"ping\", \"pnog\"]"));
        assert!(
            message.contains("channel 'selftest': ends: no domain named 'pnog'"),
            "{message}"
        );
        let message = error(&SYSTEM.replace("[\"ping\", \"pong\"]", "[\"ping\", \"ping\"]"));
        assert!(
            message.contains("channel 'selftest': ends: both ends are domain 'ping'"),
            "{message}"
        );
        let message = error(&SYSTEM.replace("[\"ping\", \"pong\"]", "[\"ping\"]"));
        assert!(message.contains("channel 'selftest': ends"), "{message}");
    }

    #[test]
    fn names_are_unique() {
        let message = error(&SYSTEM.replace("name = \"third\"", "name = \"ping\""));
        assert!(
            message.contains("domain 'ping': name: a domain of that name comes earlier"),
            "{message}"
        );
        let message = error(&SYSTEM.replace("name = \"side\"", "name = \"selftest\""));
        assert!(message.contains("channel 'selftest': name"), "{message}");
    }

    #[test]
    fn a_linux_domain_gets_its_console_and_tests() {
        let text = VIRTIO.replace(
            "appliance = \"probe\"\nmemory = \"16M\"\nbootargs = \"probe.backend={domid:blk}\"",
            "kernel = \"linux\"\nmemory = \"128M\"\ntests = [\"blk\", \"ioerror\"]\nbootargs = \"quiet\"",
        );
        let system = system(&text).unwrap();
        let linux = &system.domains[0];
        assert_eq!(linux.kernel, Kernel::Linux);
        assert_eq!(linux.appliance(), None);
        assert_eq!(
            linux.bootargs(),
            "console=ttyAMA0 ferry.name=probe quiet ferry.test=blk,ioerror"
        );
        assert_eq!(system.domains[1].appliance(), Some("blk"));

        let message = error(&text.replace("tests = [\"blk\", \"ioerror\"]\n", ""));
        assert!(
            message.contains("domain 'probe': tests: missing"),
            "{message}"
        );
        let message = error(&text.replace("\"ioerror\"", "\"Bad name\""));
        assert!(
            message.contains("tests: 'Bad name' is not a test name"),
            "{message}"
        );
        let message = error(&text.replace("\"quiet\"", "\"console=hvc0\""));
        assert!(
            message.contains("bootargs: 'console=hvc0' is added by image-builder"),
            "{message}"
        );
        let message = error(&text.replace("kernel = \"linux\"", "kernel = \"bsd\""));
        assert!(message.contains("kernel: unknown variant"), "{message}");
        let message = error(&text.replace(
            "kernel = \"linux\"",
            "kernel = \"linux\"\nappliance = \"probe\"",
        ));
        assert!(message.contains("give one of them, not both"), "{message}");
        let message = error(&VIRTIO.replace(
            "appliance = \"probe\"",
            "appliance = \"probe\"\ntests = [\"blk\"]",
        ));
        assert!(
            message.contains("tests: only for kernel = \"linux\""),
            "{message}"
        );
    }

    #[test]
    fn a_qemu_device_can_name_its_bus() {
        let text = VIRTIO.replace(
            "kind = \"virtio-rng\"",
            "kind = \"virtio-rng\"\nbus = \"virtio-mmio-bus.23\"",
        );
        let system = system(&text).unwrap();
        assert_eq!(
            system.qemu_device("rng0").unwrap().bus.as_deref(),
            Some("virtio-mmio-bus.23")
        );
        let message = error(&text.replace("bus.23", "bus.x"));
        assert!(
            message
                .contains("qemu_device 'rng0': bus: 'virtio-mmio-bus.x' is not a virtio-mmio bus"),
            "{message}"
        );
    }

    #[test]
    fn missing_keys_and_bad_values_are_named() {
        let message = error(&SYSTEM.replace("appliance = \"selftest\"\nmemory = \"4M\"", ""));
        assert!(message.contains("domain 'ping': missing key"), "{message}");
        let message = error(&SYSTEM.replace("\"ferry\"", "\"xen\""));
        assert!(
            message.contains(":3: hypervisor: unknown variant"),
            "{message}"
        );
    }

    #[test]
    fn direct_map_needs_ferry_and_no_overlap() {
        let message = error(&SYSTEM.replace("\"ferry\"", "\"stock\""));
        assert!(
            message.contains("domain 'pong': direct_map: needs hypervisor = \"ferry\""),
            "{message}"
        );
        let text = SYSTEM.replace(
            "memory = 8192",
            "memory = 8192\ndirect_map = { base = \"0x60100000\" }",
        );
        let message = error(&text);
        assert!(message.contains("overlaps domain 'pong'"), "{message}");
        let message = error(&SYSTEM.replace("0x60000000", "0x5ff00000"));
        assert!(
            message.contains("overlaps the board's module area"),
            "{message}"
        );
        let message = error(&SYSTEM.replace("0x60000000", "0x60000800"));
        assert!(message.contains("not a multiple of 4 KiB"), "{message}");
    }

    #[test]
    fn placeholders_are_checked() {
        let message = error(&SYSTEM.replace("{domid:pong}", "{domid:nobody}"));
        assert!(message.contains("no domain named 'nobody'"), "{message}");
        let message = error(&SYSTEM.replace("{domid:pong}", "{name}"));
        assert!(
            message.contains("unknown placeholder '{name}'"),
            "{message}"
        );
    }

    #[test]
    fn board_errors_name_the_key() {
        let path = Path::new("b/board.toml");
        let message = format!(
            "{:#}",
            parse_board(path, &BOARD.replace("smp = 2", "smp = 2\ncpus = 1")).unwrap_err()
        );
        assert!(
            message.starts_with("b/board.toml:7: qemu: unknown key 'cpus'"),
            "{message}"
        );
        let message = format!(
            "{:#}",
            parse_board(path, &BOARD.replace("0x50000000", "0x50000800")).unwrap_err()
        );
        assert!(message.contains("modules.base"), "{message}");
        let message = format!(
            "{:#}",
            parse_board(
                path,
                &BOARD.replace("bootscrub=0", "console=dtuart bootscrub=0")
            )
            .unwrap_err()
        );
        assert!(message.contains("xen.bootargs"), "{message}");
    }

    #[test]
    fn set_all_memory_checks_pages() {
        let mut system = system(SYSTEM).unwrap();
        system.set_all_memory(1 << 20).unwrap();
        assert!(system.domains.iter().all(|domain| domain.memory == 1 << 20));
        assert!(system.set_all_memory(1000).is_err());
    }

    #[test]
    fn board_names_resolve_beside_the_system_folder() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let system = root.join("boards/qemu-virt-arm64/selftest.toml");
        let board = board_path(&system, "qemu-virt-arm64").unwrap();
        assert!(board.ends_with("boards/qemu-virt-arm64/board.toml"));
        assert!(
            !board.to_string_lossy().contains(".."),
            "{}",
            board.display()
        );
        let by_path = board_path(&system, "board.toml").unwrap();
        assert_eq!(by_path, board);
        assert!(board_path(&system, "no-such-board").is_err());
    }

    const VIRTIO: &str = r#"
board = "test-board"
hypervisor = "ferry"

[[qemu_device]]
id = "disk0"
kind = "virtio-blk"
image = "build/disks/blk.img"
size = "64M"
create = true

[[qemu_device]]
id = "rng0"
kind = "virtio-rng"

[[domain]]
name = "probe"
appliance = "probe"
memory = "16M"
bootargs = "probe.backend={domid:blk}"

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

    #[test]
    fn virtio_devices_are_numbered_and_the_backend_is_a_service() {
        let system = system(VIRTIO).unwrap();
        let [probe, blk] = &system.domains[..] else {
            panic!("two domains")
        };
        assert_eq!(
            probe.bootargs(),
            "ferry.name=probe probe.backend=2",
            "nothing automatic for the frontend"
        );
        assert_eq!(
            blk.bootargs(),
            "ferry.name=blk ioreq.frontend=1 ioreq.base=0x2000000 ioreq.size=0x200 ioreq.irq=33"
        );
        assert!(blk.is_service() && !probe.is_service());
        assert_eq!(system.device_model_for(2), Some(1));
        assert_eq!(system.device_model_for(1), None);
        let disk = system.qemu_device("disk0").unwrap();
        assert_eq!(disk.kind, QemuDeviceKind::VirtioBlk);
        assert_eq!(disk.owner, Some(2));
        assert_eq!(disk.create_size, Some(64 << 20));
        let image = disk.image.as_ref().unwrap();
        assert!(image.is_absolute(), "{}", image.display());
        assert!(
            image.ends_with("build/disks/blk.img"),
            "{}",
            image.display()
        );
        assert!(
            !image.to_string_lossy().contains("boards"),
            "{}",
            image.display()
        );
        assert_eq!(system.qemu_device("rng0").unwrap().owner, None);
        assert_eq!(
            system.frontend_devices(1),
            [VirtioDevice {
                kind: VirtioKind::Blk,
                backend: 2,
                frontend: 1,
                index: 0,
                base: 0x200_0000,
                size: 0x200,
                intid: 33
            }]
        );
    }

    #[test]
    fn a_second_device_of_a_frontend_gets_the_next_window() {
        let text = format!(
            "{VIRTIO}\n[[domain]]\nname = \"rng\"\nappliance = \"rng\"\nmemory = \"4M\"\n\
             direct_map = {{ base = \"0x70000000\" }}\npassthrough = [\"rng0\"]\n\
             [[virtio]]\nbackend = \"rng\"\nfrontend = \"probe\"\nkind = \"rng\"\n"
        );
        let system = system(&text).unwrap();
        let devices = system.frontend_devices(1);
        assert_eq!(devices[1].base, 0x200_0200);
        assert_eq!(devices[1].intid, 34);
        assert_eq!(devices[1].backend, 3);
        assert!(system.domains[2]
            .bootargs()
            .ends_with("ioreq.base=0x2000200 ioreq.size=0x200 ioreq.irq=34"));
    }

    #[test]
    fn virtio_and_passthrough_errors_name_the_key() {
        let message = error(
            &VIRTIO
                .replace("hypervisor = \"ferry\"", "hypervisor = \"stock\"")
                .replace("direct_map = { base = \"0x60000000\" }\n", "")
                .replace("passthrough = [\"disk0\"]\n", ""),
        );
        assert!(
            message.contains("virtio #1 (blk -> probe): needs hypervisor = \"ferry\""),
            "{message}"
        );
        let message = error(&VIRTIO.replace("frontend = \"probe\"", "frontend = \"prbe\""));
        assert!(
            message.contains("virtio #1 (blk -> prbe): frontend: no domain named 'prbe'"),
            "{message}"
        );
        let message = error(&VIRTIO.replace("frontend = \"probe\"", "frontend = \"blk\""));
        assert!(
            message.contains("cannot be its own device model"),
            "{message}"
        );
        let message = error(&VIRTIO.replace("kind = \"blk\"", "kind = \"rng\""));
        assert!(
            message.contains("backend: domain 'blk' has no virtio-rng device in its passthrough"),
            "{message}"
        );
        let message = error(&VIRTIO.replace("kind = \"blk\"", "kind = \"net\""));
        assert!(
            message.contains("virtio #1: kind: unknown variant 'net'"),
            "{message}"
        );
        let message =
            error(&VIRTIO.replace("passthrough = [\"disk0\"]", "passthrough = [\"disk1\"]"));
        assert!(
            message.contains(
                "domain 'blk': passthrough: no qemu_device with id 'disk1' (declared: disk0, rng0)"
            ),
            "{message}"
        );
        let message = error(&VIRTIO.replace("direct_map = { base = \"0x60000000\" }\n", ""));
        assert!(
            message.contains("domain 'blk': passthrough: needs direct_map"),
            "{message}"
        );
        let message = error(&VIRTIO.replace(
            "bootargs = \"probe",
            "passthrough = [\"disk0\"]\ndirect_map = { base = \"0x70000000\" }\nbootargs = \"probe",
        ));
        assert!(
            message.contains(
                "domain 'blk': passthrough: 'disk0' is already passed through to domain 'probe'"
            ),
            "{message}"
        );
        let message = error(&VIRTIO.replace("size = \"64M\"\n", ""));
        assert!(
            message.contains("qemu_device 'disk0': size: missing (create = true needs a size)"),
            "{message}"
        );
        let message = error(&VIRTIO.replace("size = \"64M\"", "size = \"1000\""));
        assert!(
            message.contains("not a non-zero multiple of 512"),
            "{message}"
        );
        let message = error(&VIRTIO.replace(
            "kind = \"virtio-rng\"",
            "kind = \"virtio-rng\"\ncreate = true",
        ));
        assert!(
            message.contains("qemu_device 'rng0': create: a virtio-rng device has no disk image"),
            "{message}"
        );
        let message = error(&VIRTIO.replace(
            "kind = \"virtio-rng\"",
            "kind = \"virtio-rng\"\nimag = \"x\"",
        ));
        assert!(
            message.contains("qemu_device 'rng0': unknown key 'imag'"),
            "{message}"
        );
        let message = error(&VIRTIO.replace("kind = \"blk\"", "kind = \"blk\"\nwindow = 1"));
        assert!(
            message.contains("virtio #1: unknown key 'window'"),
            "{message}"
        );
        let message = error(&format!(
            "{VIRTIO}\n[[virtio]]\nbackend = \"blk\"\nfrontend = \"probe\"\nkind = \"blk\"\n"
        ));
        assert!(
            message.contains("virtio #2 (blk -> probe): backend: domain 'blk' already serves"),
            "{message}"
        );
    }
}
