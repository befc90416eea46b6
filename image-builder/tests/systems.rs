//! Boots the board's systems under QEMU with `image-builder run` and checks their verdicts.
//!
//! - Every system file under `boards/` loads, and its Xen device tree builds against the
//!   machine's real device tree (CI thereby builds every system it finds).
//! - `selftest.toml` and `selftest-stock.toml` pass, and both domains report `ferry: ready`;
//!   `selftest-panic.toml` fails and shows `ferry: panic:`.
//! - The runner's own verdicts: a crashing domain fails the run with its last lines, a domain
//!   too small for Xen fails with Xen's panic, and a timeout names the unfinished domains.
//!
//! - The IOREQ systems (they need the `probe`, `blk` and `rng` appliances): `blk-demo.toml`
//!   passes and the disk image holds the probe's pattern at exactly the sectors it wrote, and
//!   zeros everywhere else; `rng-demo.toml` passes and the probe reports its entropy check;
//!   `blk-hostile.toml` passes and the probe reports every hostile action refused; a malformed
//!   `blk.fail=` (the blk appliance's fault injection) fails the blk domain's boot, naming it.
//!
//! The images are built once (the real bare-metal build), then every run uses `--no-build`.
//! Runs are serialized: QEMU runs on two host cores and the runs time themselves.

use std::fs;
use std::path::{Path, PathBuf};

mod common;
use common::{board_dir, isolated_copy, run, workspace_root};
use image_builder::config;
use image_builder::devicetree;
use image_builder::layout;
use image_builder::qemu;

/// A system file in the test's own directory that uses the real board.
fn temporary_system(name: &str, text: &str) -> PathBuf {
    let directory = Path::new(env!("CARGO_TARGET_TMPDIR")).join("systems");
    fs::create_dir_all(&directory).unwrap();
    let path = directory.join(format!("{name}.toml"));
    let board = board_dir().join("board.toml");
    fs::write(&path, format!("board = \"{}\"\n{text}", board.display())).unwrap();
    path
}

fn system_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for board in fs::read_dir(workspace_root().join("boards")).unwrap() {
        let board = board.unwrap().path();
        if !board.is_dir() {
            continue;
        }
        for entry in fs::read_dir(&board).unwrap() {
            let path = entry.unwrap().path();
            if path
                .extension()
                .is_some_and(|extension| extension == "toml")
                && path.file_name().is_some_and(|name| name != "board.toml")
            {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

#[test]
fn every_system_file_loads_and_its_device_tree_builds() {
    let files = system_files();
    assert!(
        files.len() >= 3,
        "expected the selftest systems, found {files:?}"
    );
    let directory = Path::new(env!("CARGO_TARGET_TMPDIR")).join("every-system");
    fs::create_dir_all(&directory).unwrap();
    for file in files {
        let system = config::load_system(&file).unwrap_or_else(|error| panic!("{error:#}"));
        // Image sizes do not matter for the tree; 64 KiB stands for any image.
        let kernels = layout::place(&system, Path::new("/images"), &mut |_| Ok(64 << 10))
            .unwrap_or_else(|error| panic!("{}: {error:#}", file.display()));
        // Dumps the machine's tree with the system's devices, locates them, writes the partial
        // trees and Xen's; disk images are neither needed nor touched.
        let trees = qemu::build_trees(
            &system,
            &qemu::qemu_binary(),
            system.board.qemu.smp,
            &directory,
            kernels,
            &mut |_| {},
        )
        .unwrap_or_else(|error| panic!("{}: {error:#}", file.display()));
        devicetree::check_devices(&system, &trees.devices).unwrap();
    }
}

#[test]
fn selftest_passes_on_ferrys_xen() {
    let run = run(&board_dir().join("selftest.toml"), &[]);
    assert!(run.success, "selftest.toml failed");
    assert!(
        run.stdout.contains("ping | ferry: ready ping"),
        "ping ready"
    );
    assert!(
        run.stdout.contains("pong | ferry: ready pong"),
        "pong ready"
    );
    assert!(run.stderr.contains("PASS: selftest"));
}

#[test]
fn selftest_passes_on_the_stock_xen() {
    let run = run(&board_dir().join("selftest-stock.toml"), &[]);
    assert!(run.success, "selftest-stock.toml failed");
    assert!(
        run.stdout.contains("ping | ferry: ready ping"),
        "ping ready"
    );
    assert!(
        run.stdout.contains("pong | ferry: ready pong"),
        "pong ready"
    );
    assert!(
        run.stderr.contains("xsm=dummy"),
        "the stock Xen gets xsm=dummy"
    );
}

#[test]
fn selftest_panic_fails_and_shows_the_panic() {
    let run = run(&board_dir().join("selftest-panic.toml"), &[]);
    assert!(!run.success, "selftest-panic.toml passed");
    assert!(run.all().contains("ferry: panic:"), "no `ferry: panic:`");
    assert!(
        run.stderr.contains("FAIL: selftest-panic: domain 'pong'"),
        "pong is named as the crashed domain"
    );
}

#[test]
fn a_crashing_domain_fails_the_run_and_shows_its_last_lines() {
    // A selftest without a peer and a role has nothing to test: it reports a failure and
    // shuts down with reason crash.
    let system = temporary_system(
        "alone",
        r#"hypervisor = "ferry"
timeout_seconds = 30
[[domain]]
name = "alone"
appliance = "selftest"
memory = "6M"
"#,
    );
    let run = run(&system, &[]);
    assert!(!run.success);
    assert!(run.stdout.contains("alone | ferry: shutdown: crash"));
    assert!(run.stdout.contains("xen   | Xen dom0less mode detected"));
    assert!(run
        .stderr
        .contains("FAIL: alone: domain 'alone' (domid 1) crashed"));
    assert!(run.stderr.contains("last lines of 'alone':"));
    assert!(run.stderr.contains("starting QEMU"));
    assert!(run.stderr.contains("-device loader,file="));
}

#[test]
fn too_little_memory_fails_with_xens_message() {
    // 4 MiB is the floor for an image under 2 MiB (kernel rounded to 2 MiB + the DTB's 2 MiB
    // slot; exactly 4 MiB fits on Ferry's Xen, patch 0004): one page less cannot boot.
    let system = temporary_system(
        "too-small",
        r#"hypervisor = "ferry"
timeout_seconds = 30
[[domain]]
name = "tiny"
appliance = "selftest"
memory = "4092K"
"#,
    );
    let run = run(&system, &[]);
    assert!(!run.success);
    assert!(
        run.stderr.contains("Xen failed after")
            && run
                .stderr
                .contains("Not enough memory in the first bank for the kernel+dtb+initrd"),
        "Xen's panic is the reason"
    );
}

#[test]
fn timeout_names_the_unfinished_domains() {
    // The stock Xen counts down 3 s after its XSM warning, so 1 s is never enough.
    let system = temporary_system(
        "slow",
        r#"hypervisor = "stock"
timeout_seconds = 30
[[domain]]
name = "late"
appliance = "selftest"
memory = "6M"
"#,
    );
    let run = run(&system, &["--timeout", "1"]);
    assert!(!run.success);
    assert!(
        run.stderr
            .contains("timeout after 1 s; not finished: 'late'"),
        "timeout message"
    );
}

/// A copy of a board system file in the test's own directory whose disk images are there too,
/// so that a run by hand of the same system (which recreates `build/disks/...`) cannot change
/// the image between this test's run and its check of the image.
/// The value of `key=` in a domain's own bootargs.
fn own_arg(system: &config::System, domain: &str, key: &str) -> Option<String> {
    let domain = system
        .domains
        .iter()
        .find(|candidate| candidate.name == domain)?;
    domain
        .own_bootargs
        .split_whitespace()
        .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
        .map(str::to_owned)
}

#[test]
fn blk_demo_writes_its_pattern_to_the_disk_through_the_blk_appliance() {
    let path = isolated_copy("blk-demo");
    let system = config::load_system(&path).unwrap();
    let seed: u32 = own_arg(&system, "probe", "probe.seed")
        .unwrap()
        .parse()
        .unwrap();
    let mib: usize = own_arg(&system, "probe", "probe.mib")
        .unwrap()
        .parse()
        .unwrap();
    let image = system.qemu_device("disk0").unwrap().image.clone().unwrap();
    assert!(
        image.starts_with(env!("CARGO_TARGET_TMPDIR")),
        "{}",
        image.display()
    );
    let run = run(&path, &[]);
    assert!(run.success, "blk-demo.toml failed");
    assert!(
        run.stdout.contains(&format!(
            "ferry: probe: blk: verified {mib} MiB seed {seed}"
        )),
        "the probe's verification line"
    );
    assert!(
        run.stdout.contains("ferry: serve: blk ready for d1"),
        "the blk appliance's serve line"
    );
    assert!(run.stderr.contains("PASS: blk-demo"));
    assert!(
        run.stderr.contains("created"),
        "the image is created afresh"
    );

    // The disk itself, read on the host.
    let len = fs::metadata(&image).map(|m| m.len()).unwrap_or(0);
    assert_eq!(len, 64 << 20, "the image keeps its size");
    // The pattern at exactly the sectors the probe wrote, and zeros everywhere else (the image
    // was created zero-filled for this run).
    if let Err(error) = image_builder::diskcheck::check_pattern(&image, seed, mib as u64) {
        panic!("{error:#}");
    }
}

#[test]
fn rng_demo_serves_entropy_through_the_rng_appliance() {
    let run = run(&board_dir().join("rng-demo.toml"), &[]);
    assert!(run.success, "rng-demo.toml failed");
    let line = run
        .stdout
        .lines()
        .find(|line| line.contains("ferry: probe: rng: ") && line.contains(" bytes, "))
        .expect("the probe's `rng: <bytes> bytes, ...` line");
    assert!(line.contains("distinct byte values, no repeat"), "{line}");
    assert!(run.stdout.contains("ferry: serve: rng ready for d1"));
    assert!(run.stderr.contains("PASS: rng-demo"));
}

#[test]
fn blk_hostile_frontend_is_refused_and_the_backend_keeps_serving() {
    let path = isolated_copy("blk-hostile");
    let system = config::load_system(&path).unwrap();
    let flags = own_arg(&system, "probe", "probe.hostile").unwrap();
    let run = run(&path, &[]);
    assert!(run.success, "blk-hostile.toml failed");
    for flag in flags.split(',') {
        assert!(
            run.stdout
                .contains(&format!("ferry: probe: hostile {flag}: ok")),
            "no `hostile {flag}: ok` line"
        );
    }
    assert!(run.stdout.contains("ferry: probe: blk: verified"));
    assert!(run.stderr.contains("PASS: blk-hostile"));
}

#[test]
fn a_bad_blk_fail_bootarg_fails_the_blk_appliances_boot() {
    // blk-demo with a fault-injection bootarg the blk appliance must refuse: malformed (before
    // the disk is touched), then a range past the end of the 64 MiB disk (131072 sectors).
    // Its own disk image: blk-demo's test checks the one of its own copy after its run.
    let copy = isolated_copy("blk-demo");
    let text = fs::read_to_string(&copy)
        .unwrap()
        .replace("disks/blk-demo.img", "disks/blk-fail-bad.img");
    let path = copy.with_file_name("blk-fail-bad.toml");
    for (value, why) in [
        (
            "4096+",
            "expected <first sector>+<count>, two decimal numbers",
        ),
        ("131071+2", "the range ends past the disk's end"),
    ] {
        let with_arg = text.replace(
            "passthrough = [\"disk0\"]",
            &format!("passthrough = [\"disk0\"]\nbootargs = \"blk.fail={value}\""),
        );
        assert_ne!(with_arg, text);
        fs::write(&path, with_arg).unwrap();
        let run = run(&path, &[]);
        assert!(!run.success, "blk.fail={value} was accepted");
        assert!(
            run.stdout.contains(&format!(
                "blk   | ferry: boot error: bootarg blk.fail={value}: {why}"
            )),
            "the boot error names the bootarg"
        );
        assert!(run.stdout.contains("blk   | ferry: shutdown: crash"));
        assert!(!run.stdout.contains("ferry: serve: blk ready"));
    }
}
