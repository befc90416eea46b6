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
}

fn default_timeout() -> u64 {
    DEFAULT_TIMEOUT_SECONDS
}

fn default_vcpus() -> u32 {
    1
}

/// A `[[domain]]` entry.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainEntry {
    /// Unique name: console prefix, `ferry.name=`, channel ends.
    pub name: String,
    /// The appliance binary; its image is `build/images/<appliance>.img`.
    pub appliance: String,
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
}

/// A checked domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Domain {
    /// Its name.
    pub name: String,
    /// Its domain id (1 for the first entry).
    pub domid: u32,
    /// The appliance binary.
    pub appliance: String,
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
        let mut words = vec![format!("ferry.name={}", self.name)];
        words.extend(self.own_bootargs.split_whitespace().map(str::to_owned));
        for end in &self.ends {
            words.push(format!("{}.port={}", end.channel, end.port));
            words.push(format!("{}.peer={}", end.channel, end.peer_domid));
        }
        words.join(" ")
    }
}

impl System {
    /// The domain with this id.
    pub fn domain_by_id(&self, domid: u32) -> Option<&Domain> {
        self.domains.iter().find(|domain| domain.domid == domid)
    }

    /// A short name for messages: the system file's stem.
    pub fn name(&self) -> String {
        self.path
            .file_stem()
            .map(|stem| stem.to_string_lossy().into_owned())
            .unwrap_or_else(|| "system".to_owned())
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
        if !is_name(&entry.appliance) {
            bail!(
                "{at}: appliance: '{}' is not an appliance binary name",
                entry.appliance
            );
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
            appliance: entry.appliance.clone(),
            memory: entry.memory.0,
            vcpus: entry.vcpus,
            direct_map: entry.direct_map.map(|direct_map| direct_map.base.0),
            own_bootargs,
            ends,
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
    })
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
                    .and_then(|value| value.get("name"))
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
    fn missing_keys_and_bad_values_are_named() {
        let message = error(&SYSTEM.replace("appliance = \"selftest\"\nmemory = \"4M\"", ""));
        assert!(
            message.contains("domain 'ping': missing key 'appliance'"),
            "{message}"
        );
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
}
