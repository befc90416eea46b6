//! Unmodified Linux guests as frontends of Ferry's appliances (docs/linux-frontend.md).
//!
//! - The initramfs's disk pattern (`linux/mkinitramfs`, Python) is byte for byte
//!   `ferry_drivers::pattern::fill_sector`, so the host can check what Linux wrote.
//! - `linux-blk.toml` (blk + ioerror tests through the blk appliance, whose disk has a bad range:
//!   Linux must see I/O errors there, keep running and blame nobody), `linux-parallel.toml`
//!   (concurrent writers) and `linux-blk-direct.toml` (Linux owning the disk, no grants) pass,
//!   and the disk image holds the pattern and zeros elsewhere; `linux-rng.toml` and
//!   `linux-mixed.toml` (one Linux, two appliances) pass.
//!
//! They need `FERRY_LINUX_IMAGE` and `FERRY_LINUX_INITRAMFS` (scripts/setup). The appliance
//! images are built once; runs are serialized (QEMU uses both host cores).

use std::fs;
use std::path::Path;
use std::process::Command;

mod common;
use common::{board_dir, isolated_copy, run, workspace_root, Run};
use image_builder::config;

/// linux/mkinitramfs's PATTERN_SEED and PATTERN_MIB (linux/tests/*.sh print them).
const PATTERN_SEED: u32 = 20251127;
const PATTERN_MIB: u64 = 4;

/// Runs a Linux blk system and checks the disk image on the host.
fn blk_system_writes_the_pattern(name: &str, tests: &[&str]) -> Run {
    let path = isolated_copy(name);
    let system = config::load_system(&path).unwrap();
    let image = system.qemu_device("disk0").unwrap().image.clone().unwrap();
    assert!(image.starts_with(env!("CARGO_TARGET_TMPDIR")));
    let run = run(&path, &[]);
    assert!(run.success, "{name}.toml failed");
    assert!(run.stderr.contains(&format!("PASS: {name}")));
    assert!(
        run.stdout
            .contains("virtio_blk virtio0: [vda] 131072 512-byte logical blocks"),
        "Linux's virtio-blk probe line"
    );
    for test in tests {
        assert!(
            run.stdout
                .contains(&format!("ferry-linux: test {test}: exit 0")),
            "test {test} passed"
        );
    }
    assert!(run
        .stdout
        .contains(&format!("verified {PATTERN_MIB} MiB seed {PATTERN_SEED}")));
    if let Err(error) = image_builder::diskcheck::check_pattern(&image, PATTERN_SEED, PATTERN_MIB) {
        panic!("{error:#}");
    }
    run
}

#[test]
fn the_initramfs_pattern_is_ferry_drivers_pattern() {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("pattern.bin");
    let status = Command::new("python3")
        .arg(workspace_root().join("linux/mkinitramfs"))
        .arg("--pattern-only")
        .arg(&out)
        .args(["--seed", "7", "--mib", "1"])
        .status()
        .unwrap();
    assert!(status.success());
    let bytes = fs::read(&out).unwrap();
    assert_eq!(bytes.len(), 1 << 20);
    image_builder::diskcheck::check_bytes(&bytes, 7, 1).unwrap();
    assert!(image_builder::diskcheck::check_bytes(&bytes, 8, 1).is_err());
    // The defaults are the constants the tests check the disks with.
    let status = Command::new("python3")
        .arg(workspace_root().join("linux/mkinitramfs"))
        .arg("--pattern-only")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let bytes = fs::read(&out).unwrap();
    image_builder::diskcheck::check_bytes(&bytes, PATTERN_SEED, PATTERN_MIB).unwrap();
}

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
fn linux_writes_its_pattern_through_the_blk_appliance() {
    // The bad range, stated once per side: the blk appliance's `blk.fail=` and Linux's
    // `ferry.fail=` (linux/tests/ioerror.sh) must agree.
    let system = config::load_system(&board_dir().join("linux-blk.toml")).unwrap();
    let fail = own_arg(&system, "blk", "blk.fail").expect("blk.fail= on the blk appliance");
    assert_eq!(
        own_arg(&system, "linux", "ferry.fail").as_deref(),
        Some(fail.as_str()),
        "Linux's ferry.fail= is the appliance's blk.fail="
    );
    let bad: ferry_drivers::BadSectors = fail.parse().unwrap();
    let (first, last) = (bad.first(), bad.range().end - 1);
    // Outside blk.sh's pattern (0..4 MiB) and bench area (8..16 MiB), with 4 KiB to spare on
    // either side (ioerror.sh writes there), so check-disk still holds.
    assert!(
        first >= (16 << 11) + 8,
        "bad range {bad} after the bench area"
    );

    let run = blk_system_writes_the_pattern("linux-blk", &["blk", "ioerror"]);
    assert!(run.stdout.contains("ACCESS_PLATFORM"), "grant-based DMA");
    assert!(run.stdout.contains("ferry: serve: blk ready for d1"));
    assert!(run.stdout.contains("ferry: bench: linux-seq-write bytes="));
    assert!(run
        .stdout
        .contains("ferry-linux: ioerror: write past the end: refused"));

    // The appliance injects the errors ...
    assert!(run.stdout.contains(&format!(
        "ferry: blk: injecting I/O errors at sectors {bad} (reads and writes)"
    )));
    // ... Linux sees them as I/O errors at those sectors (O_DIRECT reads and writes, a
    // request that only ends in the range, a buffered read) and carries on ...
    for line in [
        format!("I/O error, dev vda, sector {first} op 0x0:(READ)"),
        format!("I/O error, dev vda, sector {last} op 0x1:(WRITE)"),
        format!("I/O error, dev vda, sector {} op 0x0:(READ)", first - 7),
        format!("Buffer I/O error on dev vda, logical block {}", first / 8),
        format!(
            "ferry-linux: ioerror: O_DIRECT read of sectors {first}..{}: I/O error \
             (dd: /dev/vda: Input/output error)",
            first + 8
        ),
        format!(
            "ferry-linux: ioerror: O_DIRECT write of sectors {last}..{}: I/O error \
             (dd: error writing '/dev/vda': Input/output error)",
            last + 8
        ),
        format!("ferry-linux: ioerror: buffered read of sector {first}: I/O error"),
        "ferry-linux: ioerror: normal I/O after the device errors: ok".to_owned(),
    ] {
        assert!(run.stdout.contains(&line), "no `{line}`");
    }
    // ... and the appliance blames the physical device for each failed request, and nobody
    // for anything else (Linux never sent it anything malformed).
    let warnings: Vec<&str> = run
        .stdout
        .lines()
        .filter(|line| line.starts_with("blk ") && line.contains("ferry: [warn] serve: "))
        .collect();
    assert!(
        warnings.len() >= 4,
        "one fault per failed request (3 O_DIRECT + the buffered read's): {warnings:#?}"
    );
    for warning in &warnings {
        assert!(
            warning.contains("ferry: [warn] serve: PhysicalDevice: Request { queue: 0, head: ")
                && warning.ends_with(", error: Device(Io) }"),
            "{warning}"
        );
    }
}

#[test]
fn linux_keeps_requests_in_flight_through_the_blk_appliance() {
    let run = blk_system_writes_the_pattern("linux-parallel", &["parallel"]);
    assert!(run.stdout.contains("ferry-linux: parallel: 4 writers done"));
}

#[test]
fn linux_owns_a_passed_through_disk_without_grants() {
    let run = blk_system_writes_the_pattern("linux-blk-direct", &["blk", "ioerror"]);
    let features = run
        .stdout
        .lines()
        .find(|line| line.contains("ferry-linux: blk: virtio0 features:"))
        .expect("the features line");
    assert!(
        !features.contains("ACCESS_PLATFORM"),
        "a real device, no grants: {features}"
    );
}

#[test]
fn linux_reads_entropy_through_the_rng_appliance() {
    let run = run(&board_dir().join("linux-rng.toml"), &[]);
    assert!(run.success, "linux-rng.toml failed");
    assert!(run
        .stdout
        .contains("ferry-linux: rng: rng_current: virtio_rng.0"));
    assert!(run
        .stdout
        .contains("ferry-linux: rng: 65536 bytes, 256 distinct byte values"));
    assert!(run.stdout.contains("ferry: serve: rng ready for d1"));
}

#[test]
fn one_linux_guest_uses_two_appliances() {
    let path = isolated_copy("linux-mixed");
    let run = run(&path, &[]);
    assert!(run.success, "linux-mixed.toml failed");
    assert!(run
        .stdout
        .contains("ferry: serve: blk ready for d1 at 0x2000000 irq 33"));
    assert!(run
        .stdout
        .contains("ferry: serve: rng ready for d1 at 0x2000200 irq 34"));
    assert!(run.stdout.contains("ferry-linux: test blk: exit 0"));
    assert!(run.stdout.contains("ferry-linux: test rng: exit 0"));
    assert!(run
        .stdout
        .contains("ferry-linux: rng: rng_current: virtio_rng.0"));
}
