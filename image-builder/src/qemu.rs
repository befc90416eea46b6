//! Running a system under QEMU: the command lines, the machine's device tree, the console
//! stream and the verdict.
//!
//! `run` does, in this order: place the domains' images in the module area ([`layout`]),
//! create the disk images of `create = true` devices afresh, ask QEMU for the machine's device
//! tree (`-machine <machine>,dumpdtb=<file>` with the same `-cpu`/`-m`/`-smp` and devices as
//! the run), ask QEMU which virtio-mmio transport each declared device sits on (`info qtree`),
//! write each domain's partial device tree and place it after the kernels, add the system to
//! the machine's tree ([`devicetree`]), start
//! `qemu-system-aarch64 ... -kernel <xen> -dtb <tree> -device loader,file=<img>,addr=<addr>,
//! force-raw=on ... <devices>`, feed every console line to a [`Monitor`] (which knows the
//! services: device models pass by serving), and kill QEMU when the monitor has a verdict (after a short grace period for failures, so that Xen's panic message or
//! register dump is shown) or at the timeout. Xen keeps running when all its domains are
//! gone, so QEMU is always killed, never waited for.
//!
//! Where things come from: the hypervisors and QEMU are found through `FERRY_XEN_STOCK`,
//! `FERRY_XEN_FERRY` and `FERRY_QEMU`, from the environment or else from the `env.sh` that
//! `scripts/setup` writes (`$FERRY_CACHE/env.sh`, default `/var/cache/ferry/env.sh`).

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::config::{format_size, Hypervisor, QemuDeviceKind, QemuMachine, System};
use crate::console::{Monitor, Outcome, Source};
use crate::devicetree::{self, HostDevice};
use crate::layout::{self, Module, ModuleKind};

/// How long a failed run keeps reading the console before QEMU is killed.
pub const FAILURE_GRACE: Duration = Duration::from_millis(1500);
/// The default location of the environment file of `scripts/setup`.
pub const DEFAULT_CACHE: &str = "/var/cache/ferry";

/// The settings of `scripts/setup`'s `env.sh`, overridden by the process environment.
pub fn setting(name: &str) -> Option<String> {
    if let Ok(value) = std::env::var(name) {
        if !value.is_empty() {
            return Some(value);
        }
    }
    let cache = std::env::var("FERRY_CACHE").unwrap_or_else(|_| DEFAULT_CACHE.to_owned());
    let text = fs::read_to_string(Path::new(&cache).join("env.sh")).ok()?;
    text.lines()
        .filter_map(|line| line.split_once('='))
        .find(|(key, _)| key.trim() == name)
        .map(|(_, value)| value.trim().trim_matches('"').to_owned())
}

/// The QEMU binary: `FERRY_QEMU`, else `qemu-system-aarch64` from `PATH`.
pub fn qemu_binary() -> PathBuf {
    setting("FERRY_QEMU")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("qemu-system-aarch64"))
}

/// The Xen image of a hypervisor choice.
pub fn hypervisor_image(hypervisor: Hypervisor) -> Result<PathBuf> {
    let variable = match hypervisor {
        Hypervisor::Stock => "FERRY_XEN_STOCK",
        Hypervisor::Ferry => "FERRY_XEN_FERRY",
    };
    let path = setting(variable).with_context(|| {
        format!(
            "{variable} is not set and no env.sh has it: run scripts/setup (it builds or \
             downloads the {hypervisor} hypervisor and writes {DEFAULT_CACHE}/env.sh)"
        )
    })?;
    let path = PathBuf::from(path);
    if !path.is_file() {
        bail!(
            "{variable}={}: no such file (run scripts/setup)",
            path.display()
        );
    }
    Ok(path)
}

/// `-M ... -cpu ... -m ... -smp ... -nographic <extra args>`, shared by dumpdtb and the run.
pub fn machine_args(machine: &QemuMachine, smp: u32, dumpdtb: Option<&Path>) -> Vec<String> {
    let mut machine_value = machine.machine.clone();
    if let Some(path) = dumpdtb {
        machine_value.push_str(&format!(",dumpdtb={}", path.display()));
    }
    let mut args = vec![
        "-M".to_owned(),
        machine_value,
        "-cpu".to_owned(),
        machine.cpu.clone(),
        "-m".to_owned(),
        format_size(machine.memory.0),
        "-smp".to_owned(),
        smp.to_string(),
        "-nographic".to_owned(),
    ];
    args.extend(machine.extra_args.iter().cloned());
    args
}

/// Asks QEMU for the machine's device tree (written to `path` and returned).
pub fn dump_machine_dtb(
    qemu: &Path,
    machine: &QemuMachine,
    smp: u32,
    path: &Path,
) -> Result<Vec<u8>> {
    dump_machine_dtb_with(qemu, machine, smp, &[], path)
}

/// [`dump_machine_dtb`] with further arguments (the system's `-device`s).
pub fn dump_machine_dtb_with(
    qemu: &Path,
    machine: &QemuMachine,
    smp: u32,
    devices: &[String],
    path: &Path,
) -> Result<Vec<u8>> {
    let mut args = machine_args(machine, smp, Some(path));
    args.extend(devices.iter().cloned());
    let shown = show_command(qemu, &args);
    let output = Command::new(qemu)
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run `{shown}`"))?;
    if !output.status.success() || !path.is_file() {
        bail!(
            "`{shown}` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// How [`device_args`] backs a virtio-blk device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drives {
    /// The system's disk images (a run).
    Images,
    /// QEMU's `null-co` driver: no file needed, same devices in the same order (locating the
    /// devices and dumping the device tree, which do not depend on the disks' contents).
    Null,
}

/// The system's QEMU devices, in declaration order: `-drive ... -device virtio-blk-device,...`,
/// `-device virtio-rng-device,...`, then `-global virtio-mmio.force-legacy=false` (virtio-mmio
/// version 2, what the appliances drive). Empty when the system declares none.
pub fn device_args(system: &System, drives: Drives) -> Vec<String> {
    let mut args = Vec::new();
    for device in &system.qemu_devices {
        let id = &device.id;
        let bus = device
            .bus
            .as_ref()
            .map_or(String::new(), |bus| format!(",bus={bus}"));
        match device.kind {
            QemuDeviceKind::VirtioBlk => {
                let drive = match (drives, &device.image) {
                    (Drives::Images, Some(image)) => {
                        format!("file={},if=none,format=raw,id={id}", image.display())
                    }
                    _ => format!("if=none,id={id},driver=null-co"),
                };
                args.extend([
                    "-drive".to_owned(),
                    drive,
                    "-device".to_owned(),
                    format!("virtio-blk-device,drive={id},id={id}{bus}"),
                ]);
            }
            QemuDeviceKind::VirtioRng => {
                args.extend([
                    "-device".to_owned(),
                    format!("virtio-rng-device,id={id}{bus}"),
                ]);
            }
        }
    }
    if !args.is_empty() {
        args.extend([
            "-global".to_owned(),
            "virtio-mmio.force-legacy=false".to_owned(),
        ]);
    }
    args
}

/// Asks QEMU where it put each of the system's devices: the register window of the
/// virtio-mmio transport each device id sits on (`info qtree` of a stopped machine). QEMU
/// fills its virtio-mmio transports from the highest address down, so the first `-device` is
/// at 0x0a003e00 on virt, but this asks instead of assuming.
pub fn locate_devices(
    qemu: &Path,
    machine: &QemuMachine,
    smp: u32,
    system: &System,
) -> Result<BTreeMap<String, u64>> {
    if system.qemu_devices.is_empty() {
        return Ok(BTreeMap::new());
    }
    let mut args: Vec<String> = machine_args(machine, smp, None)
        .into_iter()
        .filter(|arg| arg != "-nographic")
        .collect();
    args.extend(
        [
            "-display", "none", "-serial", "none", "-S", "-monitor", "stdio",
        ]
        .map(str::to_owned),
    );
    args.extend(device_args(system, Drives::Null));
    let shown = show_command(qemu, &args);
    let mut child = Command::new(qemu)
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run `{shown}`"))?;
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        // A write error means QEMU already exited; its status and stderr say why.
        let _ = stdin.write_all(b"info qtree\nquit\n");
    }
    let output = child
        .wait_with_output()
        .with_context(|| format!("`{shown}` did not finish"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    let found = parse_qtree(&text);
    let mut located = BTreeMap::new();
    for device in &system.qemu_devices {
        let base = found.get(&device.id).copied().with_context(|| {
            format!(
                "qemu_device '{}': `{shown}` (info qtree) shows no virtio-mmio transport with it \
                 ({}); stderr: {}",
                device.id,
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            )
        })?;
        located.insert(device.id.clone(), base);
    }
    Ok(located)
}

/// From `info qtree`: device id -> address of the virtio-mmio transport it sits on. A
/// transport prints `mmio <address>/<size>`, then its bus, then `dev: <type>, id "<id>"`.
pub fn parse_qtree(text: &str) -> BTreeMap<String, u64> {
    let mut located = BTreeMap::new();
    let mut last_mmio = None;
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("mmio ") {
            last_mmio = rest
                .split_once('/')
                .and_then(|(address, _)| u64::from_str_radix(address, 16).ok());
        } else if let Some(rest) = line.strip_prefix("dev: ") {
            let Some((kind, id)) = rest.split_once(", id \"") else {
                continue;
            };
            if kind == "virtio-mmio" {
                continue;
            }
            let id = id.trim_end_matches('"');
            if let (true, false, Some(address)) =
                (kind.starts_with("virtio-"), id.is_empty(), last_mmio)
            {
                located.insert(id.to_owned(), address);
            }
        }
    }
    located
}

/// Creates the disk images of `create = true` devices afresh (the old file is deleted first,
/// then a sparse zero-filled file of the size is created) and checks the others exist.
pub fn prepare_disks(system: &System, print: &mut dyn FnMut(Print)) -> Result<()> {
    for device in &system.qemu_devices {
        let Some(image) = &device.image else {
            continue;
        };
        match device.create_size {
            Some(size) => {
                if image.exists() {
                    fs::remove_file(image)
                        .with_context(|| format!("cannot delete {}", image.display()))?;
                }
                if let Some(parent) = image.parent() {
                    fs::create_dir_all(parent)
                        .with_context(|| format!("cannot create {}", parent.display()))?;
                }
                let file = fs::File::create(image)
                    .with_context(|| format!("cannot create {}", image.display()))?;
                file.set_len(size)
                    .with_context(|| format!("cannot size {}", image.display()))?;
                print(Print::Progress(format!(
                    "  qemu_device '{}': created {} ({}, zero-filled)",
                    device.id,
                    image.display(),
                    format_size(size)
                )));
            }
            None => {
                if !image.is_file() {
                    bail!(
                        "{}: qemu_device '{}': image {} does not exist (set create = true and a \
                         size to have it created)",
                        system.path.display(),
                        device.id,
                        image.display()
                    );
                }
            }
        }
    }
    Ok(())
}

/// The device trees of a run, written into its directory.
#[derive(Debug)]
pub struct Trees {
    /// The machine's tree as QEMU dumped it (`machine.dtb`).
    pub machine: Vec<u8>,
    /// The system's QEMU devices as located in the machine.
    pub devices: Vec<HostDevice>,
    /// Every module: the kernels given, then the partial device trees.
    pub modules: Vec<Module>,
    /// Xen's device tree (`xen.dtb`).
    pub xen: Vec<u8>,
}

/// Dumps the machine's tree (with the system's devices on the command line), locates the
/// devices, writes each domain's partial device tree (`<domain>.partial.dtb`), places those
/// after `kernels` and writes Xen's tree (`xen.dtb`), all in `directory`.
pub fn build_trees(
    system: &System,
    qemu: &Path,
    smp: u32,
    directory: &Path,
    kernels: Vec<Module>,
    print: &mut dyn FnMut(Print),
) -> Result<Trees> {
    let machine_dtb = directory.join("machine.dtb");
    let null_devices = device_args(system, Drives::Null);
    let mut shown_args = machine_args(&system.board.qemu, smp, Some(&machine_dtb));
    shown_args.extend(null_devices.iter().cloned());
    print(Print::Progress(format!(
        "dumping the machine's device tree: {}",
        show_command(qemu, &shown_args)
    )));
    let machine =
        dump_machine_dtb_with(qemu, &system.board.qemu, smp, &null_devices, &machine_dtb)?;
    let located = locate_devices(qemu, &system.board.qemu, smp, system)?;
    let mut devices = Vec::new();
    for device in &system.qemu_devices {
        let host = devicetree::host_device(&machine, &device.id, located[&device.id])?;
        print(Print::Progress(format!(
            "  qemu_device '{}' ({}): {} reg {:#x}+{:#x} INTID {}{}",
            device.id,
            device.kind,
            host.path,
            host.base,
            host.size,
            host.intid()
                .map_or("?".to_owned(), |intid| intid.to_string()),
            device
                .owner
                .and_then(|owner| system.domain_by_id(owner))
                .map_or(String::new(), |domain| format!(
                    ", passed through to '{}'",
                    domain.name
                ))
        )));
        devices.push(host);
    }
    devicetree::check_devices(system, &devices)?;

    let mut partial = Vec::new();
    for domain in &system.domains {
        if let Some(tree) = devicetree::partial_tree(system, domain.domid, &devices)? {
            let path = directory.join(format!("{}.partial.dtb", domain.name));
            fs::write(&path, &tree).with_context(|| format!("cannot write {}", path.display()))?;
            partial.push((domain.domid, path, tree.len() as u64));
        }
    }
    let mut modules = kernels;
    layout::place_device_trees(system, &mut modules, &partial)?;
    for device in &system.virtio {
        let name = |domid: u32| {
            system
                .domain_by_id(domid)
                .map_or_else(|| domid.to_string(), |domain| domain.name.clone())
        };
        print(Print::Progress(format!(
            "  virtio {}: '{}' (d{}) serves '{}' (d{}) at {:#x}+{:#x} INTID {}",
            device.kind,
            name(device.backend),
            device.backend,
            name(device.frontend),
            device.frontend,
            device.base,
            device.size,
            device.intid
        )));
    }

    let xen_dtb = directory.join("xen.dtb");
    let xen = devicetree::build(&machine, system, &modules, &devices)?;
    fs::write(&xen_dtb, &xen).with_context(|| format!("cannot write {}", xen_dtb.display()))?;
    Ok(Trees {
        machine,
        devices,
        modules,
        xen,
    })
}

/// A command line as it can be pasted into a shell.
pub fn show_command(program: &Path, args: &[String]) -> String {
    std::iter::once(program.display().to_string())
        .chain(args.iter().cloned())
        .map(|word| {
            if !word.is_empty()
                && word
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_=,./:@+%".contains(c))
            {
                word
            } else {
                format!("'{}'", word.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// How to run a system.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Where `<appliance>.img` are.
    pub images: PathBuf,
    /// Kill QEMU and fail after this long (from QEMU's start).
    pub timeout: Duration,
    /// `-icount <board's icount>` and `-smp 1`.
    pub icount: bool,
    /// Keep the device trees and the command in this directory (else a temporary one that is
    /// removed afterwards).
    pub keep: Option<PathBuf>,
}

/// What `run` prints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Print {
    /// A progress line (the CLI writes it to stderr).
    Progress(String),
    /// A console line, labelled (the CLI writes `<label> | <text>` to stdout).
    Console {
        /// `xen`, `qemu`, or a domain's name.
        label: String,
        /// The line.
        text: String,
    },
}

/// How a run ended.
#[derive(Debug)]
pub struct RunReport {
    /// The verdict, or `None` when the timeout came first or QEMU exited by itself.
    pub outcome: Option<Outcome>,
    /// Whether the timeout ended the run.
    pub timed_out: bool,
    /// QEMU's exit status when it exited by itself.
    pub qemu_exit: Option<std::process::ExitStatus>,
    /// The console's state at the end (histories, ready figures, per-domain states).
    pub monitor: Monitor,
    /// QEMU's stderr lines.
    pub qemu_stderr: Vec<String>,
    /// Wall time from QEMU's start to the verdict.
    pub elapsed: Duration,
    /// The timeout that applied.
    pub timeout: Duration,
}

impl RunReport {
    /// Whether every domain powered off cleanly.
    pub fn is_success(&self) -> bool {
        self.outcome.as_ref().is_some_and(Outcome::is_success)
    }

    /// The verdict in words, with the lines that explain a failure.
    pub fn summary(&self, system: &System) -> Vec<String> {
        let mut lines = Vec::new();
        let seconds = self.elapsed.as_secs_f64();
        let monitor = &self.monitor;
        match &self.outcome {
            Some(Outcome::AllPoweredOff) => {
                let services: Vec<String> = system
                    .domains
                    .iter()
                    .filter(|domain| domain.is_service())
                    .map(|domain| format!("'{}'", domain.name))
                    .collect();
                if services.is_empty() {
                    lines.push(format!(
                        "PASS: {}: every domain powered off ({seconds:.1} s)",
                        system.name()
                    ));
                } else {
                    lines.push(format!(
                        "PASS: {}: every domain powered off, services serving: {} (stopped with \
                         QEMU) ({seconds:.1} s)",
                        system.name(),
                        services.join(", ")
                    ));
                }
            }
            Some(Outcome::Crashed { domid, reason }) => {
                let name = monitor.label(Source::Domain(*domid));
                lines.push(format!(
                    "FAIL: {}: domain '{name}' (domid {domid}) crashed after {seconds:.1} s: \
                     {reason}",
                    system.name()
                ));
                lines.push(format!("last lines of '{name}':"));
                lines.extend(
                    monitor
                        .history(Source::Domain(*domid))
                        .into_iter()
                        .map(|line| format!("  {name} | {line}")),
                );
                if reason.starts_with("Xen:") {
                    lines.push("last lines of Xen:".to_owned());
                    lines.extend(
                        monitor
                            .history(Source::Xen)
                            .into_iter()
                            .map(|line| format!("  xen | {line}")),
                    );
                }
            }
            Some(Outcome::Fatal(message)) => {
                lines.push(format!(
                    "FAIL: {}: Xen failed after {seconds:.1} s: {message}",
                    system.name()
                ));
                lines.push("last lines of Xen:".to_owned());
                lines.extend(
                    monitor
                        .history(Source::Xen)
                        .into_iter()
                        .map(|line| format!("  xen | {line}")),
                );
            }
            None => {
                let why = if self.timed_out {
                    format!("timeout after {} s", self.timeout.as_secs())
                } else {
                    match self.qemu_exit {
                        Some(status) => format!("QEMU exited ({status}) after {seconds:.1} s"),
                        None => "QEMU's console ended".to_owned(),
                    }
                };
                let unfinished = monitor.unfinished();
                let names: Vec<_> = unfinished
                    .iter()
                    .map(|(_, name)| format!("'{name}'"))
                    .collect();
                lines.push(format!(
                    "FAIL: {}: {why}; not finished: {}",
                    system.name(),
                    names.join(", ")
                ));
                for (domid, name) in &unfinished {
                    let history = monitor.history(Source::Domain(*domid));
                    if history.is_empty() {
                        lines.push(format!("'{name}' printed nothing"));
                    } else {
                        lines.push(format!("last lines of '{name}':"));
                        lines.extend(history.into_iter().map(|line| format!("  {name} | {line}")));
                    }
                }
                lines.push("last lines of Xen:".to_owned());
                lines.extend(
                    monitor
                        .history(Source::Xen)
                        .into_iter()
                        .map(|line| format!("  xen | {line}")),
                );
                if !self.qemu_stderr.is_empty() {
                    lines.push("QEMU's stderr:".to_owned());
                    lines.extend(
                        self.qemu_stderr
                            .iter()
                            .map(|line| format!("  qemu | {line}")),
                    );
                }
            }
        }
        lines
    }
}

static RUN_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A directory for one run's files.
fn work_dir(keep: Option<&Path>) -> Result<PathBuf> {
    let directory = match keep {
        Some(directory) => directory.to_owned(),
        None => std::env::temp_dir().join(format!(
            "ferry-run-{}-{}",
            std::process::id(),
            RUN_COUNTER.fetch_add(1, Ordering::Relaxed)
        )),
    };
    fs::create_dir_all(&directory)
        .with_context(|| format!("cannot create {}", directory.display()))?;
    Ok(directory)
}

/// Everything a run needs before QEMU starts: files written, command ready.
#[derive(Debug)]
pub struct Prepared {
    /// The QEMU binary.
    pub qemu: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// The domains' modules.
    pub modules: Vec<Module>,
    /// The directory with `machine.dtb`, `xen.dtb` and `qemu.sh`.
    pub directory: PathBuf,
}

/// Writes the device trees and returns the QEMU command of a run.
pub fn prepare(
    system: &System,
    options: &RunOptions,
    print: &mut dyn FnMut(Print),
) -> Result<Prepared> {
    let mut size_of = |path: &Path| -> Result<u64> {
        match fs::metadata(path) {
            Ok(metadata) => Ok(metadata.len()),
            Err(error) => {
                let available = available_images(path.parent().unwrap_or(Path::new(".")));
                bail!(
                    "cannot read {}: {error} (images there: {})",
                    path.display(),
                    if available.is_empty() {
                        "none".to_owned()
                    } else {
                        available.join(", ")
                    }
                )
            }
        }
    };
    let kernels = layout::place(system, &options.images, &mut size_of)?;
    let xen = hypervisor_image(system.hypervisor)?;
    let qemu = qemu_binary();
    let directory = work_dir(options.keep.as_deref())?;
    let smp = if options.icount {
        1
    } else {
        system.board.qemu.smp
    };
    prepare_disks(system, print)?;
    let trees = build_trees(system, &qemu, smp, &directory, kernels, print)?;
    let modules = trees.modules;
    let xen_dtb = directory.join("xen.dtb");
    print(Print::Progress(format!(
        "wrote Xen's device tree {} ({} domain(s), {} channel(s), {} virtio device(s))",
        xen_dtb.display(),
        system.domains.len(),
        system.channels.len(),
        system.virtio.len()
    )));
    print(Print::Progress(format!(
        "  Xen ({} hypervisor {}): \"{}\"",
        system.hypervisor,
        xen.display(),
        system.xen_bootargs
    )));
    for module in &modules {
        if module.kind != ModuleKind::Kernel {
            print(Print::Progress(format!(
                "  domU{}: {} {} at {:#x} ({} bytes)",
                module.domid,
                if module.kind == ModuleKind::DeviceTree {
                    "partial device tree"
                } else {
                    "initramfs"
                },
                module.image.display(),
                module.address,
                module.size
            )));
            continue;
        }
        let domain = system
            .domain_by_id(module.domid)
            .expect("a module per domain");
        print(Print::Progress(format!(
            "  domU{} '{}': {} at {:#x} ({} bytes), memory {}, bootargs \"{}\"",
            domain.domid,
            domain.name,
            module.image.display(),
            module.address,
            module.size,
            format_size(domain.memory),
            domain.bootargs()
        )));
    }

    let mut args = machine_args(&system.board.qemu, smp, None);
    if options.icount {
        args.push("-icount".to_owned());
        args.push(system.board.qemu.icount.clone());
    }
    args.push("-kernel".to_owned());
    args.push(xen.display().to_string());
    args.push("-dtb".to_owned());
    args.push(xen_dtb.display().to_string());
    for module in &modules {
        args.push("-device".to_owned());
        args.push(format!(
            "loader,file={},addr={:#x},force-raw=on",
            module.image.display(),
            module.address
        ));
    }
    args.extend(device_args(system, Drives::Images));
    let script = format!("#!/bin/sh\nexec {}\n", show_command(&qemu, &args));
    fs::write(directory.join("qemu.sh"), script)
        .with_context(|| format!("cannot write {}", directory.join("qemu.sh").display()))?;
    Ok(Prepared {
        qemu,
        args,
        modules,
        directory,
    })
}

fn available_images(directory: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(directory)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|name| name.ends_with(".img"))
        .collect();
    names.sort();
    names
}

/// Runs a system to its verdict.
pub fn run(
    system: &System,
    options: &RunOptions,
    print: &mut dyn FnMut(Print),
) -> Result<RunReport> {
    let prepared = prepare(system, options, print)?;
    let result = run_prepared(system, options, &prepared, print);
    if options.keep.is_none() {
        let _ = fs::remove_dir_all(&prepared.directory);
    } else {
        print(Print::Progress(format!(
            "kept machine.dtb, xen.dtb, the partial device trees (*.partial.dtb) and qemu.sh in \
             {}",
            prepared.directory.display()
        )));
    }
    result
}

enum Stream {
    Stdout(String),
    Stderr(String),
}

fn read_lines(reader: impl Read, wrap: fn(String) -> Stream, sender: mpsc::Sender<Stream>) {
    let mut reader = BufReader::new(reader);
    let mut buffer = Vec::new();
    loop {
        buffer.clear();
        match reader.read_until(b'\n', &mut buffer) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buffer)
                    .trim_end_matches(['\r', '\n'])
                    .to_owned();
                if sender.send(wrap(line)).is_err() {
                    return;
                }
            }
        }
    }
}

fn run_prepared(
    system: &System,
    options: &RunOptions,
    prepared: &Prepared,
    print: &mut dyn FnMut(Print),
) -> Result<RunReport> {
    let shown = show_command(&prepared.qemu, &prepared.args);
    print(Print::Progress(format!(
        "starting QEMU ({} hypervisor, timeout {} s{}): {shown}",
        system.hypervisor,
        options.timeout.as_secs(),
        if options.icount { ", icount" } else { "" }
    )));
    let mut child = Command::new(&prepared.qemu)
        .args(&prepared.args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run `{shown}`"))?;
    let started = Instant::now();
    let deadline = started + options.timeout;

    let (sender, receiver) = mpsc::channel();
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let stdout_sender = sender.clone();
    let readers = [
        thread::spawn(move || read_lines(stdout, Stream::Stdout, stdout_sender)),
        thread::spawn(move || read_lines(stderr, Stream::Stderr, sender)),
    ];

    let mut monitor = Monitor::new(
        system
            .domains
            .iter()
            .map(|domain| (domain.domid, domain.name.clone())),
    )
    .with_services(
        system
            .domains
            .iter()
            .filter(|domain| domain.is_service())
            .map(|domain| domain.domid),
    );
    let mut qemu_stderr = Vec::new();
    let mut end = deadline;
    let mut elapsed = None;
    let mut timed_out = false;
    loop {
        let now = Instant::now();
        if now >= end {
            timed_out = elapsed.is_none();
            break;
        }
        match receiver.recv_timeout(end - now) {
            Ok(Stream::Stdout(line)) => {
                let labelled = monitor.feed(&line);
                print(Print::Console {
                    label: labelled.label,
                    text: labelled.text,
                });
                if elapsed.is_none() {
                    if let Some(outcome) = monitor.outcome() {
                        elapsed = Some(started.elapsed());
                        if outcome.is_success() {
                            break;
                        }
                        end = (Instant::now() + FAILURE_GRACE).min(deadline);
                    }
                }
            }
            Ok(Stream::Stderr(line)) => {
                print(Print::Console {
                    label: "qemu".to_owned(),
                    text: line.clone(),
                });
                qemu_stderr.push(line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                timed_out = elapsed.is_none();
                break;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let qemu_exit = match child.try_wait() {
        Ok(Some(status)) => Some(status),
        _ => {
            // QEMU only ends by itself on error; Xen idles forever without domains.
            let _ = child.kill();
            let _ = child.wait();
            None
        }
    };
    for reader in readers {
        let _ = reader.join();
    }
    // Lines that arrived after the verdict but before the kill still belong in the history.
    while let Ok(line) = receiver.try_recv() {
        match line {
            Stream::Stdout(line) => {
                monitor.feed(&line);
            }
            Stream::Stderr(line) => qemu_stderr.push(line),
        }
    }
    Ok(RunReport {
        outcome: monitor.outcome().cloned(),
        timed_out,
        qemu_exit,
        monitor,
        qemu_stderr,
        elapsed: elapsed.unwrap_or_else(|| started.elapsed()),
        timeout: options.timeout,
    })
}

/// Boot-to-ready figures of a run, by domain name: `ferry: ready ... ticks= freq=`, or for a
/// service its `ferry: serve: ... ready` line when that has `ticks=` and `freq=`.
pub fn ready_figures(
    system: &System,
    report: &RunReport,
) -> BTreeMap<String, crate::console::Ready> {
    let serving = report
        .monitor
        .serving()
        .iter()
        .filter_map(|(domid, ready)| ready.map(|ready| (*domid, ready)));
    let mut figures = BTreeMap::new();
    for (domid, ready) in serving.chain(report.monitor.ready().iter().map(|(d, r)| (*d, *r))) {
        if let Some(domain) = system.domain_by_id(domid) {
            figures.insert(domain.name.clone(), ready);
        }
    }
    figures
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::tests::{test_system, TWO};

    #[test]
    fn machine_arguments_follow_the_board() {
        let system = test_system(TWO);
        let args = machine_args(&system.board.qemu, 1, Some(Path::new("/t/virt.dtb")));
        assert_eq!(
            args,
            [
                "-M",
                "virt,virtualization=on,gic-version=3,dumpdtb=/t/virt.dtb",
                "-cpu",
                "cortex-a57",
                "-m",
                "1G",
                "-smp",
                "1",
                "-nographic",
                "-net",
                "none"
            ]
        );
    }

    #[test]
    fn commands_are_shown_quoted() {
        assert_eq!(
            show_command(
                Path::new("/usr/bin/qemu"),
                &["-M".into(), "virt,x=y".into(), "a b".into(), "it's".into()]
            ),
            r"/usr/bin/qemu -M virt,x=y 'a b' 'it'\''s'"
        );
    }

    #[test]
    fn qtree_gives_each_device_its_transport() {
        let text = r#"
  dev: virtio-mmio, id ""
    format_transport_address = true
    force-legacy = false
    mmio 000000000a003e00/0000000000000200
    bus: virtio-mmio-bus.31
      type virtio-mmio-bus
      dev: virtio-blk-device, id "disk0"
        drive = "disk0"
  dev: virtio-mmio, id ""
    mmio 000000000a003c00/0000000000000200
    bus: virtio-mmio-bus.30
      type virtio-mmio-bus
      dev: virtio-rng-device, id "rng0"
  dev: virtio-mmio, id ""
    mmio 000000000a003a00/0000000000000200
    bus: virtio-mmio-bus.29
      type virtio-mmio-bus
"#;
        let located = parse_qtree(text);
        assert_eq!(located.len(), 2);
        assert_eq!(located["disk0"], 0xa00_3e00);
        assert_eq!(located["rng0"], 0xa00_3c00);
    }

    #[test]
    fn devices_are_added_in_declaration_order() {
        let system = test_system(
            r#"
board = "qemu-virt-arm64"
hypervisor = "ferry"
[[qemu_device]]
id = "disk0"
kind = "virtio-blk"
image = "/d/disk.img"
[[qemu_device]]
id = "rng0"
kind = "virtio-rng"
[[domain]]
name = "one"
appliance = "selftest"
memory = "4M"
"#,
        );
        assert_eq!(
            device_args(&system, Drives::Images),
            [
                "-drive",
                "file=/d/disk.img,if=none,format=raw,id=disk0",
                "-device",
                "virtio-blk-device,drive=disk0,id=disk0",
                "-device",
                "virtio-rng-device,id=rng0",
                "-global",
                "virtio-mmio.force-legacy=false"
            ]
        );
        assert_eq!(
            device_args(&system, Drives::Null)[1],
            "if=none,id=disk0,driver=null-co"
        );
        assert!(device_args(&test_system(TWO), Drives::Images).is_empty());
    }

    #[test]
    fn qemu_puts_the_first_device_on_the_highest_transport() {
        // The real thing: QEMU says where it put each device.
        let system = test_system(
            r#"
board = "qemu-virt-arm64"
hypervisor = "ferry"
[[qemu_device]]
id = "disk0"
kind = "virtio-blk"
image = "/nonexistent/disk.img"
[[qemu_device]]
id = "rng0"
kind = "virtio-rng"
[[domain]]
name = "one"
appliance = "selftest"
memory = "4M"
"#,
        );
        let located = locate_devices(&qemu_binary(), &system.board.qemu, 1, &system).unwrap();
        assert_eq!(located["disk0"], 0xa00_3e00);
        assert_eq!(located["rng0"], 0xa00_3c00);
    }
}
