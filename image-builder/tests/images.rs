//! Builds the real appliances with the bare-metal toolchain and checks every image.
//!
//! This test really runs the bare-metal cargo build (~20 s the first time). It fails, and does
//! not skip, when the toolchain is missing: an image that cannot be built is a broken build.
//! The checks read the ELF and the image independently of `image_builder::image`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use image_builder::appliances::{self, BuildOptions};
use object::{Object, ObjectSegment};

const MAGIC: u32 = 0x644d_5241;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("image-builder is inside the workspace")
        .to_owned()
}

fn out_dir(name: &str) -> PathBuf {
    let directory = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = fs::remove_dir_all(&directory);
    directory
}

fn u32_at(bytes: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap())
}

fn u64_at(bytes: &[u8], offset: usize) -> u64 {
    u64::from_le_bytes(bytes[offset..offset + 8].try_into().unwrap())
}

/// Checks the image at `image_path` against the ELF at `elf_path`.
fn check_image(name: &str, elf_path: &Path, image_path: &Path) {
    let elf_data = fs::read(elf_path).unwrap();
    let elf = object::File::parse(&*elf_data).unwrap();
    let image = fs::read(image_path).unwrap();

    let loads: Vec<_> = elf.segments().collect();
    assert!(!loads.is_empty(), "{name}: no segments");
    let lowest = loads.iter().map(|segment| segment.address()).min().unwrap();
    let memory_end = loads
        .iter()
        .map(|segment| segment.address() + segment.size())
        .max()
        .unwrap();
    let memory_size = memory_end - lowest;
    let rounded = memory_size.div_ceil(4096) * 4096;

    assert!(
        image.len() >= 64,
        "{name}: {} bytes, no room for a header",
        image.len()
    );
    assert_eq!(u32_at(&image, 56), MAGIC, "{name}: magic at offset 56");
    let code0 = u32_at(&image, 0);
    assert_eq!(
        code0 & 0xfc00_0000,
        0x1400_0000,
        "{name}: code0 {code0:#010x} is not `b`"
    );
    let image_size = u64_at(&image, 16);
    assert_eq!(
        image_size, rounded,
        "{name}: image_size vs ELF memory size {memory_size:#x} rounded up to 4 KiB"
    );
    assert!(
        image.len() as u64 <= image_size,
        "{name}: file of {} bytes is larger than image_size {image_size:#x}",
        image.len()
    );
    for segment in &loads {
        let data = segment.data().unwrap();
        let start = (segment.address() - lowest) as usize;
        assert_eq!(
            &image[start..start + data.len()],
            data,
            "{name}: segment at {:#x} is not at its offset in the image",
            segment.address()
        );
    }
}

#[test]
fn every_appliance_builds_into_a_valid_image() {
    let options = BuildOptions::new(workspace_root(), out_dir("images"));
    let images = appliances::build_all(&options, &mut |line| eprintln!("{line}"))
        .unwrap_or_else(|error| panic!("image-builder build failed: {error:#}"));

    let names: Vec<&str> = images.iter().map(|image| image.name.as_str()).collect();
    assert!(names.contains(&"selftest"), "built {names:?}");
    let sources = workspace_root().join("appliance/src/bin");
    for entry in fs::read_dir(&sources).unwrap() {
        let path = entry.unwrap().path();
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        assert!(
            names.contains(&stem.as_str()),
            "{} has no image",
            path.display()
        );
    }

    for image in &images {
        assert_eq!(
            image.path,
            options.out_dir.join(format!("{}.img", image.name))
        );
        assert_eq!(fs::metadata(&image.path).unwrap().len(), image.bytes);
        check_image(&image.name, &image.elf, &image.path);
    }
}

#[test]
fn the_build_command_writes_and_lists_the_images() {
    let out = out_dir("cli-images");
    let output = Command::new(env!("CARGO_BIN_EXE_image-builder"))
        .args(["build", "--out"])
        .arg(&out)
        .current_dir(workspace_root())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );

    let selftest = out.join("selftest.img");
    let bytes = fs::metadata(&selftest).unwrap().len();
    let line = stdout
        .lines()
        .find(|line| line.starts_with("selftest "))
        .unwrap_or_else(|| panic!("no line for selftest in:\n{stdout}"));
    assert!(line.contains(&format!("{bytes} bytes")), "{line}");
    let elf = workspace_root().join("target/baremetal/aarch64-unknown-none/appliance/selftest");
    check_image("selftest", &elf, &selftest);
}
