//! Running a system under QEMU: the command lines, the machine's device tree, the console
//! stream and the verdict.
//!
//! `run` does, in this order: place the domains' images in the module area ([`layout`]), ask
//! QEMU for the machine's device tree (`-machine <machine>,dumpdtb=<file>` with the same
//! `-cpu`/`-m`/`-smp` as the run), add the system to it ([`devicetree`]), start
//! `qemu-system-aarch64 ... -kernel <xen> -dtb <tree> -device loader,file=<img>,addr=<addr>,
//! force-raw=on ...`, feed every console line to a [`Monitor`], and kill QEMU when the monitor
//! has a verdict (after a short grace period for failures, so that Xen's panic message or
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

use crate::config::{format_size, Hypervisor, QemuMachine, System};
use crate::console::{Monitor, Outcome, Source};
use crate::devicetree;
use crate::layout::{self, Module};

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
    let args = machine_args(machine, smp, Some(path));
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
                lines.push(format!(
                    "PASS: {}: every domain powered off ({seconds:.1} s)",
                    system.name()
                ));
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
    let modules = layout::place(system, &options.images, &mut size_of)?;
    let xen = hypervisor_image(system.hypervisor)?;
    let qemu = qemu_binary();
    let directory = work_dir(options.keep.as_deref())?;
    let smp = if options.icount {
        1
    } else {
        system.board.qemu.smp
    };

    let machine_dtb = directory.join("machine.dtb");
    print(Print::Progress(format!(
        "dumping the machine's device tree: {}",
        show_command(
            &qemu,
            &machine_args(&system.board.qemu, smp, Some(&machine_dtb))
        )
    )));
    let base = dump_machine_dtb(&qemu, &system.board.qemu, smp, &machine_dtb)?;
    let xen_dtb = directory.join("xen.dtb");
    print(Print::Progress(format!(
        "writing Xen's device tree {} ({} domain(s), {} channel(s))",
        xen_dtb.display(),
        system.domains.len(),
        system.channels.len()
    )));
    print(Print::Progress(format!(
        "  Xen ({} hypervisor {}): \"{}\"",
        system.hypervisor,
        xen.display(),
        system.xen_bootargs
    )));
    let tree = devicetree::build(&base, system, &modules)?;
    fs::write(&xen_dtb, &tree).with_context(|| format!("cannot write {}", xen_dtb.display()))?;
    for module in &modules {
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
            "kept machine.dtb, xen.dtb and qemu.sh in {}",
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

/// Boot-to-ready figures of a run, by domain name.
pub fn ready_figures(
    system: &System,
    report: &RunReport,
) -> BTreeMap<String, crate::console::Ready> {
    report
        .monitor
        .ready()
        .iter()
        .filter_map(|(domid, ready)| {
            system
                .domain_by_id(*domid)
                .map(|domain| (domain.name.clone(), *ready))
        })
        .collect()
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
}
