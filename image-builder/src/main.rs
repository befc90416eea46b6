//! `image-builder`: builds Ferry appliance images and runs systems under QEMU.
//!
//! - `image-builder build [--out DIR]` builds every appliance for bare metal and writes
//!   `DIR/<appliance>.img` (default DIR: `build/images` in the workspace).
//! - `image-builder run <system.toml> [--timeout S] [--icount] [--keep DIR] [--no-build]` builds
//!   the images, writes Xen's device tree and boots the system in QEMU; the console goes to
//!   stdout as `<domain> | <line>`, progress to stderr; exit status 0 only when every domain
//!   powered off cleanly (services - device models - when serving).
//! - `image-builder bench [--system FILE] [--sizes LIST] [--skip-memory] [--skip-blk]
//!   [--blk-system FILE] [--blk-baseline FILE] [--no-build]` prints image sizes, the smallest
//!   domain memory the system passes with, boot-to-ready times under icount, and the blk
//!   throughput through the blk appliance against the probe owning the disk.
//!
//! Reference: docs/image-builder.md.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use image_builder::appliances::{self, BuildOptions, DEFAULT_TOOLCHAIN};
use image_builder::bench;
use image_builder::config::{self, format_size, parse_size, System};
use image_builder::console::{self, Outcome};
use image_builder::image::Header;
use image_builder::qemu::{self, Print, RunOptions, RunReport};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Builds Ferry appliance images and runs Ferry systems under QEMU"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Args)]
struct ImageArgs {
    /// Use the images already in the image directory instead of building them
    #[arg(long)]
    no_build: bool,
    /// Directory of the images [default: build/images in the workspace]
    #[arg(long, value_name = "DIR")]
    images: Option<PathBuf>,
    /// rustup toolchain of the bare-metal build
    #[arg(long, value_name = "NAME", default_value = DEFAULT_TOOLCHAIN)]
    toolchain: String,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build every appliance and write one raw arm64 Image per appliance
    Build {
        /// Directory for the images [default: build/images in the workspace]
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// rustup toolchain of the bare-metal build
        #[arg(long, value_name = "NAME", default_value = DEFAULT_TOOLCHAIN)]
        toolchain: String,
    },
    /// Boot a system file under QEMU and report the domains' verdict
    Run {
        /// The system file, e.g. boards/qemu-virt-arm64/selftest.toml
        system: PathBuf,
        /// Seconds before QEMU is killed and the run fails [default: the system's timeout_seconds]
        #[arg(long, value_name = "S")]
        timeout: Option<u64>,
        /// Deterministic virtual time: QEMU -icount (board's setting) with one CPU
        #[arg(long)]
        icount: bool,
        /// Keep the device trees and the QEMU command (qemu.sh) in DIR
        #[arg(long, value_name = "DIR")]
        keep: Option<PathBuf>,
        #[command(flatten)]
        images: ImageArgs,
    },
    /// Check on the host that a disk image holds a probe's seeded pattern (and zeros after it)
    CheckDisk {
        /// The disk image, e.g. build/disks/blk-demo.img
        image: PathBuf,
        /// The pattern seed (probe.seed)
        #[arg(long)]
        seed: u32,
        /// The pattern size in MiB (probe.mib)
        #[arg(long)]
        mib: u64,
    },
    /// Print image sizes, the smallest domain memory that passes, and boot-to-ready times
    Bench {
        /// The system to measure [default: boards/qemu-virt-arm64/selftest.toml]
        #[arg(long, value_name = "FILE")]
        system: Option<PathBuf>,
        /// Memory sizes to try for every domain, largest first
        #[arg(long, value_name = "LIST", default_value = "16M,8M,4M,2M,1M")]
        sizes: String,
        /// Skip the smallest-memory search
        #[arg(long)]
        skip_memory: bool,
        /// Skip the blk figures (appliance vs direct)
        #[arg(long)]
        skip_blk: bool,
        /// The blk system served by the appliance [default: boards/qemu-virt-arm64/blk-demo.toml]
        #[arg(long, value_name = "FILE")]
        blk_system: Option<PathBuf>,
        /// The blk baseline, the probe owning the disk [default: boards/qemu-virt-arm64/blk-direct.toml]
        #[arg(long, value_name = "FILE")]
        blk_baseline: Option<PathBuf>,
        /// Skip the Linux figures (Linux through the blk appliance vs Linux owning the disk)
        #[arg(long)]
        skip_linux: bool,
        /// Linux through the blk appliance [default: boards/qemu-virt-arm64/linux-blk.toml]
        #[arg(long, value_name = "FILE")]
        linux_system: Option<PathBuf>,
        /// Linux owning the disk [default: boards/qemu-virt-arm64/linux-blk-direct.toml]
        #[arg(long, value_name = "FILE")]
        linux_baseline: Option<PathBuf>,
        #[command(flatten)]
        images: ImageArgs,
    },
}

fn main() -> ExitCode {
    match dispatch(Cli::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("image-builder: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a command; `Ok(false)` is a run whose verdict is a failure.
fn dispatch(cli: Cli) -> Result<bool> {
    match cli.command {
        Command::Build { out, toolchain } => build(out, toolchain).map(|()| true),
        Command::CheckDisk { image, seed, mib } => {
            let seen = image_builder::diskcheck::check_pattern(&image, seed, mib)?;
            println!(
                "{}: sectors 0..{} hold the pattern of seed {seed}; the other {} bytes are zero",
                image.display(),
                seen.pattern_sectors,
                seen.image_bytes - (mib << 20)
            );
            Ok(true)
        }
        Command::Run {
            system,
            timeout,
            icount,
            keep,
            images,
        } => run(&system, timeout, icount, keep, &images),
        Command::Bench {
            system,
            sizes,
            skip_memory,
            skip_blk,
            blk_system,
            blk_baseline,
            skip_linux,
            linux_system,
            linux_baseline,
            images,
        } => bench(
            BenchArgs {
                system,
                sizes,
                skip_memory,
                skip_blk,
                blk_system,
                blk_baseline,
                skip_linux,
                linux_system,
                linux_baseline,
            },
            &images,
        )
        .map(|()| true),
    }
}

fn progress(line: &str) {
    eprintln!("image-builder: {line}");
}

fn build(out: Option<PathBuf>, toolchain: String) -> Result<()> {
    let workspace_root = appliances::find_workspace_root()?;
    let out_dir = out.unwrap_or_else(|| workspace_root.join("build").join("images"));
    let options = BuildOptions {
        workspace_root,
        out_dir,
        toolchain,
    };
    let images = appliances::build_all(&options, &mut |line| progress(line))?;
    let width = images
        .iter()
        .map(|image| image.name.len())
        .max()
        .unwrap_or(0);
    for image in &images {
        println!(
            "{:width$}  {:>8} bytes  (image_size {:#x})  {}",
            image.name,
            image.bytes,
            image.image_size,
            image.path.display()
        );
    }
    Ok(())
}

/// Builds the images unless told not to; returns the image directory.
fn prepare_images(args: &ImageArgs) -> Result<PathBuf> {
    let workspace_root = appliances::find_workspace_root();
    let images = match (&args.images, &workspace_root) {
        (Some(images), _) => images.clone(),
        (None, Ok(root)) => root.join("build").join("images"),
        (None, Err(error)) => bail!("cannot find the workspace for build/images: {error:#}"),
    };
    if args.no_build {
        return Ok(images);
    }
    let options = BuildOptions {
        workspace_root: workspace_root?,
        out_dir: images.clone(),
        toolchain: args.toolchain.clone(),
    };
    progress(&format!(
        "building appliance images into {}",
        images.display()
    ));
    let built = appliances::build_all(&options, &mut |line| progress(line))?;
    for image in &built {
        progress(&format!(
            "  {}: {} bytes ({})",
            image.name,
            image.bytes,
            image.path.display()
        ));
    }
    Ok(images)
}

/// Prints console lines as `<label> | <text>` with labels padded to one width.
fn console_printer(system: &System) -> impl FnMut(Print) {
    let width = system
        .domains
        .iter()
        .map(|domain| domain.name.len())
        .chain([4])
        .max()
        .unwrap_or(4);
    move |print| match print {
        Print::Progress(line) => progress(&line),
        Print::Console { label, text } => println!("{label:<width$} | {text}"),
    }
}

fn run(
    system_path: &Path,
    timeout: Option<u64>,
    icount: bool,
    keep: Option<PathBuf>,
    image_args: &ImageArgs,
) -> Result<bool> {
    let system = config::load_system(system_path)?;
    let images = prepare_images(image_args)?;
    let options = RunOptions {
        images,
        timeout: Duration::from_secs(timeout.unwrap_or(system.timeout_seconds)),
        icount,
        keep,
    };
    let report = qemu::run(&system, &options, &mut console_printer(&system))?;
    for line in report.summary(&system) {
        eprintln!("{line}");
    }
    print_ready(&system, &report);
    Ok(report.is_success())
}

fn print_ready(system: &System, report: &RunReport) {
    let figures = qemu::ready_figures(system, report);
    for (name, ready) in &figures {
        eprintln!(
            "ready: {name}: {} ticks at {} Hz = {:.1} us after domain start",
            ready.ticks,
            ready.frequency,
            ready.microseconds()
        );
    }
    for domid in report.monitor.serving().keys() {
        if let Some(domain) = system.domain_by_id(*domid) {
            if !figures.contains_key(&domain.name) {
                eprintln!(
                    "ready: {}: serving (its `ferry: serve: ... ready` line has no ticks=/freq=)",
                    domain.name
                );
            }
        }
    }
}

struct BenchArgs {
    system: Option<PathBuf>,
    sizes: String,
    skip_memory: bool,
    skip_blk: bool,
    blk_system: Option<PathBuf>,
    blk_baseline: Option<PathBuf>,
    skip_linux: bool,
    linux_system: Option<PathBuf>,
    linux_baseline: Option<PathBuf>,
}

fn default_board_file(path: Option<PathBuf>, name: &str) -> Result<PathBuf> {
    match path {
        Some(path) => Ok(path),
        None => Ok(appliances::find_workspace_root()?
            .join("boards")
            .join("qemu-virt-arm64")
            .join(name)),
    }
}

fn bench(args: BenchArgs, image_args: &ImageArgs) -> Result<()> {
    let system_path = default_board_file(args.system, "selftest.toml")?;
    let sizes = args.sizes.as_str();
    let sizes: Vec<u64> = sizes
        .split(',')
        .map(|size| parse_size(size).map_err(anyhow::Error::msg))
        .collect::<Result<_>>()
        .context("--sizes")?;
    let system = config::load_system(&system_path)?;
    let images = prepare_images(image_args)?;

    // 1. Image sizes.
    let mut table = vec![format!("# images ({})", images.display())];
    let mut entries: Vec<_> = std::fs::read_dir(&images)
        .with_context(|| format!("cannot read {}", images.display()))?
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().ends_with(".img"))
        .collect();
    entries.sort_by_key(|entry| entry.file_name());
    table.push(format!(
        "{:<16} {:>10} {:>12}",
        "appliance", "bytes", "image_size"
    ));
    for entry in entries {
        let bytes = std::fs::read(entry.path())?;
        let image_size = Header::parse(&bytes)
            .map(|header| header.image_size.to_string())
            .unwrap_or_else(|| "-".to_owned());
        table.push(format!(
            "{:<16} {:>10} {:>12}",
            entry.file_name().to_string_lossy().trim_end_matches(".img"),
            bytes.len(),
            image_size
        ));
    }

    // 2. Smallest memory that passes, every domain at the same size.
    let timeout = Duration::from_secs(system.timeout_seconds);
    if args.skip_memory {
        table.push(String::new());
        table.push("# smallest domain memory: skipped (--skip-memory)".to_owned());
    } else {
        smallest_memory_table(&system, &system_path, &sizes, &images, &mut table)?;
    }

    // 3. Boot to ready in guest virtual time (icount, one CPU), at the system's own memory.
    let report = qemu::run(
        &system,
        &RunOptions {
            images: images.clone(),
            timeout,
            icount: true,
            keep: None,
        },
        &mut quiet_printer(),
    )?;
    table.push(String::new());
    table.push(format!(
        "# boot to ready (icount {}, -smp 1; guest counter from domain start; run: {})",
        system.board.qemu.icount,
        verdict_word(&report)
    ));
    ready_table(&system, &report, &mut table);

    // 4. blk: the probe through the blk appliance (IOREQ + grants) against the probe owning the
    //    disk itself.
    if args.skip_blk {
        table.push(String::new());
        table.push("# blk: skipped (--skip-blk)".to_owned());
    } else {
        let served = default_board_file(args.blk_system, "blk-demo.toml")?;
        let direct = default_board_file(args.blk_baseline, "blk-direct.toml")?;
        if let Err(error) = blk_tables(&served, &direct, &images, &mut table) {
            table.push(String::new());
            table.push(format!("# blk: not measured: {error:#}"));
        }
    }
    // 5. Linux: the same unmodified Linux and tests through the blk appliance and owning the
    //    disk itself.
    if args.skip_linux {
        table.push(String::new());
        table.push("# linux: skipped (--skip-linux)".to_owned());
    } else {
        let served = default_board_file(args.linux_system, "linux-blk.toml")?;
        let direct = default_board_file(args.linux_baseline, "linux-blk-direct.toml")?;
        if let Err(error) = linux_tables(&served, &direct, &images, &mut table) {
            table.push(String::new());
            table.push(format!("# linux: not measured: {error:#}"));
        }
    }
    for line in table {
        println!("{line}");
    }
    Ok(())
}

/// What one icount run of a Linux blk system gave.
struct LinuxRun {
    /// `ferry: bench: linux-...` lines.
    lines: Vec<bench::BenchLine>,
    /// `Run /init as init process` in kernel time, microseconds.
    run_init_us: Option<u64>,
    /// Boot to ready of the services (their `ferry: serve: ... ready ticks= freq=`).
    services: Vec<(String, console::Ready)>,
}

/// Runs a Linux system under icount; returns its bench lines and boot figures.
fn linux_run(path: &Path, images: &Path) -> Result<LinuxRun> {
    let system = config::load_system(path)?;
    let mut lines = Vec::new();
    let mut run_init_us = None;
    let report = icount_run(&system, images, |text| {
        if let Some(line) = bench::BenchLine::parse(text) {
            lines.push(line);
        }
        if let Some(us) = bench::linux_run_init_us(text) {
            run_init_us.get_or_insert(us);
        }
    })?;
    require_success(&system, &report)?;
    if lines.is_empty() {
        bail!("{}: Linux printed no `ferry: bench:` line", system.name());
    }
    let figures = qemu::ready_figures(&system, &report);
    let services = system
        .domains
        .iter()
        .filter(|domain| domain.is_service())
        .filter_map(|domain| {
            figures
                .get(&domain.name)
                .map(|ready| (domain.name.clone(), *ready))
        })
        .collect();
    Ok(LinuxRun {
        lines,
        run_init_us,
        services,
    })
}

fn linux_tables(
    served: &Path,
    direct: &Path,
    images: &Path,
    table: &mut Vec<String>,
) -> Result<()> {
    let appliance = linux_run(served, images)?;
    let baseline = linux_run(direct, images)?;
    table.push(String::new());
    table.push(format!(
        "# linux blk throughput (Linux's own clock, guest virtual time, icount, -smp 1; \
         O_DIRECT dd): appliance = {}, direct = {}",
        served.display(),
        direct.display()
    ));
    table.push(format!(
        "{:<22} {:>9} {:>15} {:>12} {:>7} {:>15} {:>12}",
        "pass",
        "bytes",
        "appliance MiB/s",
        "direct MiB/s",
        "ratio",
        "appliance us/rq",
        "direct us/rq"
    ));
    let overhead = |lines: &[bench::BenchLine]| {
        lines
            .iter()
            .find(|line| line.name == "linux-dd-4k")
            .map(|line| line.microseconds_per_request())
    };
    let (appliance_dd, direct_dd) = (overhead(&appliance.lines), overhead(&baseline.lines));
    for line in &appliance.lines {
        if line.name == "linux-dd-4k" {
            continue;
        }
        let Some(other) = baseline.lines.iter().find(|other| other.name == line.name) else {
            table.push(format!(
                "{:<22} {:>9} {:>15.2} {:>12}",
                line.name,
                line.bytes,
                line.mib_per_second(),
                "(no direct figure)"
            ));
            continue;
        };
        let per_request = |line: &bench::BenchLine| {
            line.requests.map_or("-".to_owned(), |_| {
                format!("{:.1}", line.microseconds_per_request())
            })
        };
        table.push(format!(
            "{:<22} {:>9} {:>15.2} {:>12.2} {:>7.3} {:>15} {:>12}",
            line.name,
            line.bytes,
            line.mib_per_second(),
            other.mib_per_second(),
            line.mib_per_second() / other.mib_per_second(),
            per_request(line),
            per_request(other)
        ));
        if let (Some(_), Some(a_dd), Some(d_dd)) = (line.requests, appliance_dd, direct_dd) {
            let net = |line: &bench::BenchLine, dd: f64| line.microseconds_per_request() - dd;
            let (a, d) = (net(line, a_dd), net(other, d_dd));
            // A net cost at or below zero is within the noise of the dd subtraction.
            let ratio = if a > 0.0 && d > 0.0 {
                format!("{:.2}", a / d)
            } else {
                "noise".to_owned()
            };
            table.push(format!(
                "{:<22} {:>9} {:>15} {:>12} {:>7} {:>15.1} {:>12.1}",
                format!("  {} net", line.name.trim_start_matches("linux-")),
                "",
                "",
                "",
                ratio,
                a,
                d
            ));
        }
    }
    if let (Some(a), Some(d)) = (appliance_dd, direct_dd) {
        table.push(format!(
            "(random passes: one dd process per 4 KiB request; `net` subtracts the same dd \
             from /dev/zero to /dev/null, {a:.1} / {d:.1} us per process; ratio = appliance / \
             direct per request; `noise` where a net cost is not above zero)"
        ));
    }
    table.push(String::new());
    table.push("# linux boot (icount, -smp 1)".to_owned());
    let mut boot = |name: &str, run: &LinuxRun| {
        table.push(format!(
            "{name}: Linux kernel start to `Run /init`: {}",
            run.run_init_us
                .map_or("(no `Run /init` line)".to_owned(), |us| format!(
                    "{:.1} ms (printk time)",
                    us as f64 / 1000.0
                ))
        ));
        for (service, ready) in &run.services {
            table.push(format!(
                "{name}: appliance '{service}' domain start to serving: {:.1} ms",
                ready.microseconds() / 1000.0
            ));
        }
    };
    boot("appliance", &appliance);
    boot("direct", &baseline);
    Ok(())
}

/// Runs `system` once under icount (one CPU) at its own timeout, quietly, handing every console
/// line's text to `on_line`.
fn icount_run(system: &System, images: &Path, mut on_line: impl FnMut(&str)) -> Result<RunReport> {
    let mut printer = quiet_printer();
    qemu::run(
        system,
        &RunOptions {
            images: images.to_owned(),
            timeout: Duration::from_secs(system.timeout_seconds),
            icount: true,
            keep: None,
        },
        &mut |print: Print| {
            if let Print::Console { text, .. } = &print {
                on_line(text);
            }
            printer(print);
        },
    )
}

/// Fails with the run's summary unless every domain passed.
fn require_success(system: &System, report: &RunReport) -> Result<()> {
    if !report.is_success() {
        for line in report.summary(system) {
            eprintln!("{line}");
        }
        bail!("{}: {}", system.name(), verdict_word(report));
    }
    Ok(())
}

fn quiet_printer() -> impl FnMut(Print) {
    |print: Print| {
        if let Print::Progress(line) = print {
            if line.starts_with("starting QEMU") {
                progress(&line);
            }
        }
    }
}

fn ready_table(system: &System, report: &RunReport, table: &mut Vec<String>) {
    let ready = qemu::ready_figures(system, report);
    table.push(format!(
        "{:<12} {:>8} {:>12} {:>12} {:>12} {:>12}",
        "domain", "memory", "ticks", "freq_hz", "ready_us", "up_us"
    ));
    for domain in &system.domains {
        let up = report
            .monitor
            .up()
            .get(&domain.domid)
            .map_or_else(|| "-".to_owned(), |up| format!("{:.1}", up.microseconds()));
        match ready.get(&domain.name) {
            Some(figure) => table.push(format!(
                "{:<12} {:>8} {:>12} {:>12} {:>12.1} {:>12}",
                domain.name,
                format_size(domain.memory),
                figure.ticks,
                figure.frequency,
                figure.microseconds(),
                up
            )),
            None if report.monitor.serving().contains_key(&domain.domid) => table.push(format!(
                "{:<12} {:>8} {:>12}",
                domain.name,
                format_size(domain.memory),
                "(serving; its `ferry: serve: ... ready` line needs ticks= freq=)"
            )),
            None => table.push(format!(
                "{:<12} {:>8} {:>12}",
                domain.name,
                format_size(domain.memory),
                "(no `ferry: ready` line)"
            )),
        }
    }
}

/// Runs a blk system under icount with `probe.bench=1`; returns its bench lines.
fn blk_run(path: &Path, images: &Path, table: &mut Vec<String>) -> Result<Vec<bench::BenchLine>> {
    let mut system = config::load_system(path)?;
    if system.append_bootargs("probe", "probe.bench=1") == 0 {
        bail!("{}: no domain runs the probe appliance", path.display());
    }
    let mut lines = Vec::new();
    let report = icount_run(&system, images, |text| {
        if let Some(line) = bench::BenchLine::parse(text) {
            lines.push(line);
        }
    })?;
    table.push(String::new());
    table.push(format!(
        "# boot to ready: {} (icount, -smp 1; run: {})",
        path.display(),
        verdict_word(&report)
    ));
    ready_table(&system, &report, table);
    require_success(&system, &report)?;
    if lines.is_empty() {
        bail!(
            "{}: the probe printed no `ferry: bench:` line with probe.bench=1",
            system.name()
        );
    }
    Ok(lines)
}

fn blk_tables(served: &Path, direct: &Path, images: &Path, table: &mut Vec<String>) -> Result<()> {
    let mut boot = Vec::new();
    let appliance = blk_run(served, images, &mut boot)?;
    let baseline = blk_run(direct, images, &mut boot)?;
    table.push(String::new());
    table.push(format!(
        "# blk throughput (guest virtual time, icount, -smp 1): appliance = {}, direct = {}",
        served.display(),
        direct.display()
    ));
    table.push(format!(
        "{:<14} {:>10} {:>14} {:>12} {:>7} {:>14} {:>12} {:>7}",
        "pass",
        "bytes",
        "appliance MiB/s",
        "direct MiB/s",
        "ratio",
        "appliance us/rq",
        "direct us/rq",
        "ratio"
    ));
    for line in &appliance {
        let Some(other) = baseline.iter().find(|other| other.name == line.name) else {
            table.push(format!(
                "{:<14} {:>10} {:>14.2} {:>12}",
                line.name,
                line.bytes,
                line.mib_per_second(),
                "(no direct figure)"
            ));
            continue;
        };
        table.push(format!(
            "{:<14} {:>10} {:>14.2} {:>12.2} {:>7.3} {:>14.1} {:>12.1} {:>7.2}",
            line.name,
            line.bytes,
            line.mib_per_second(),
            other.mib_per_second(),
            line.mib_per_second() / other.mib_per_second(),
            line.microseconds_per_request(),
            other.microseconds_per_request(),
            line.microseconds_per_request() / other.microseconds_per_request()
        ));
    }
    if appliance.iter().any(|line| line.requests.is_none()) {
        table.push(format!(
            "(us/rq: lines without requests= are counted as one request per {} bytes)",
            bench::DEFAULT_REQUEST_BYTES
        ));
    }
    table.extend(boot);
    Ok(())
}

fn smallest_memory_table(
    system: &System,
    system_path: &Path,
    sizes: &[u64],
    images: &Path,
    table: &mut Vec<String>,
) -> Result<()> {
    let timeout = Duration::from_secs(system.timeout_seconds);
    let search = bench::smallest_memory(sizes, &mut |size| {
        let mut sized = system.clone();
        sized.set_all_memory(size)?;
        let options = RunOptions {
            images: images.to_owned(),
            timeout,
            icount: false,
            keep: None,
        };
        let report = qemu::run(&sized, &options, &mut quiet_printer())?;
        let verdict = verdict_word(&report);
        progress(&format!(
            "memory {}: {verdict} ({:.1} s)",
            format_size(size),
            report.elapsed.as_secs_f64()
        ));
        Ok(if report.is_success() {
            Ok(())
        } else {
            Err(verdict)
        })
    })?;
    table.push(String::new());
    table.push(format!(
        "# smallest domain memory ({}, every domain at the same size; tried {}, then \
         bisected to a page)",
        system_path.display(),
        sizes
            .iter()
            .map(|&size| format_size(size))
            .collect::<Vec<_>>()
            .join(" ")
    ));
    table.push(format!(
        "smallest passing: {}",
        search
            .smallest_pass
            .map_or("none".to_owned(), |size| format!(
                "{} ({size} bytes)",
                format_size(size)
            ))
    ));
    table.push(match &search.largest_fail {
        Some((size, verdict)) => format!(
            "largest failing:  {} ({size} bytes): {verdict}",
            format_size(*size)
        ),
        None => "largest failing:  none (every size tried passed)".to_owned(),
    });

    Ok(())
}

fn verdict_word(report: &RunReport) -> String {
    match &report.outcome {
        Some(Outcome::AllPoweredOff) => "pass".to_owned(),
        Some(outcome) => format!("fail: {outcome}"),
        None if report.timed_out => "fail: timeout".to_owned(),
        None => "fail: QEMU exited".to_owned(),
    }
}
