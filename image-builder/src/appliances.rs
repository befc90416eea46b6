//! Building every appliance binary for bare metal and turning each into an image.
//!
//! The bare-metal build is an ordinary cargo build of the appliance package with the Debian
//! toolchain that is linked into rustup as `debian-web` (shared/notes/toolchain.md), run from
//! the workspace root:
//!
//! ```text
//! RUSTC_BOOTSTRAP=1 cargo +debian-web build -p ferry-appliance --bins --profile appliance \
//!     --target aarch64-unknown-none \
//!     -Zbuild-std=core,alloc,compiler_builtins -Zbuild-std-features=compiler-builtins-mem \
//!     --target-dir target/baremetal --message-format=json-render-diagnostics
//! ```
//!
//! It has its own target directory so that it and host builds never wait for each other's lock
//! nor rebuild each other's artifacts. The appliances are the binaries that cargo reports as
//! built (every bin target of `ferry-appliance`), so adding one needs no change here. Variables
//! that a surrounding cargo or rustup may have set for the host build (`RUSTFLAGS`, `RUSTC`,
//! `RUSTUP_TOOLCHAIN`, ...) are removed, so the bare-metal build is the same wherever it runs.

use std::ffi::OsString;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;

use anyhow::{bail, Context, Result};

use crate::image;

/// The package whose binaries are the appliances.
pub const APPLIANCE_PACKAGE: &str = "ferry-appliance";
/// The bare-metal target.
pub const TARGET: &str = "aarch64-unknown-none";
/// The rustup toolchain of the bare-metal build.
pub const DEFAULT_TOOLCHAIN: &str = "debian-web";

/// Environment variables that must not leak from a host build into the bare-metal build.
const HOST_BUILD_VARIABLES: &[&str] = &[
    "RUSTC",
    "RUSTDOC",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTFLAGS",
    "RUSTDOCFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    "CARGO_BUILD_TARGET",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET_DIR",
    "RUSTUP_TOOLCHAIN",
];

/// What to build, with what, and where to put the images.
#[derive(Clone, Debug)]
pub struct BuildOptions {
    /// The Ferry workspace (the directory of the root `Cargo.toml`).
    pub workspace_root: PathBuf,
    /// Where `<appliance>.img` files are written; created if missing.
    pub out_dir: PathBuf,
    /// The rustup toolchain for the bare-metal build.
    pub toolchain: String,
}

impl BuildOptions {
    /// Options with the default toolchain.
    pub fn new(workspace_root: impl Into<PathBuf>, out_dir: impl Into<PathBuf>) -> Self {
        Self {
            workspace_root: workspace_root.into(),
            out_dir: out_dir.into(),
            toolchain: DEFAULT_TOOLCHAIN.to_owned(),
        }
    }

    /// The target directory of the bare-metal build.
    pub fn target_dir(&self) -> PathBuf {
        self.workspace_root.join("target").join("baremetal")
    }

    fn cargo_arguments(&self) -> Vec<OsString> {
        let mut arguments: Vec<OsString> = [
            format!("+{}", self.toolchain).as_str(),
            "build",
            "-p",
            APPLIANCE_PACKAGE,
            "--bins",
            "--profile",
            "appliance",
            "--target",
            TARGET,
            "-Zbuild-std=core,alloc,compiler_builtins",
            "-Zbuild-std-features=compiler-builtins-mem",
            "--message-format=json-render-diagnostics",
            "--target-dir",
        ]
        .into_iter()
        .map(OsString::from)
        .collect();
        arguments.push(self.target_dir().into_os_string());
        arguments
    }
}

/// An appliance image written by [`build_all`].
#[derive(Clone, Debug)]
pub struct BuiltImage {
    /// The appliance's name (its binary's name).
    pub name: String,
    /// The bare-metal ELF the image was made from.
    pub elf: PathBuf,
    /// The image file, `<out_dir>/<name>.img`.
    pub path: PathBuf,
    /// Size of the image file.
    pub bytes: u64,
    /// `image_size` from its header: the memory it occupies once running.
    pub image_size: u64,
}

/// Builds every appliance and writes one image per appliance into `options.out_dir`.
///
/// `progress` receives one line per step, including cargo's own progress output.
pub fn build_all(
    options: &BuildOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<BuiltImage>> {
    let binaries = build_binaries(options, progress)?;
    fs::create_dir_all(&options.out_dir)
        .with_context(|| format!("cannot create {}", options.out_dir.display()))?;
    let mut images = Vec::new();
    for (name, elf) in binaries {
        let path = options.out_dir.join(format!("{name}.img"));
        let image = image::convert(&elf, &path)?;
        progress(&format!(
            "converted {} -> {}",
            elf.display(),
            path.display()
        ));
        images.push(BuiltImage {
            name,
            elf,
            path,
            bytes: image.bytes().len() as u64,
            image_size: image.header().image_size,
        });
    }
    Ok(images)
}

/// Runs the bare-metal build; returns each appliance binary's name and ELF path, by name.
fn build_binaries(
    options: &BuildOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<(String, PathBuf)>> {
    let arguments = options.cargo_arguments();
    let shown = format!(
        "RUSTC_BOOTSTRAP=1 cargo {}",
        arguments
            .iter()
            .map(|argument| argument.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    progress(&format!(
        "building appliances in {}: {shown}",
        options.workspace_root.display()
    ));
    progress("(the first build compiles core and alloc from source, ~20 s)");

    let mut command = Command::new("cargo");
    command
        .args(&arguments)
        .current_dir(&options.workspace_root)
        .env("RUSTC_BOOTSTRAP", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for variable in HOST_BUILD_VARIABLES {
        command.env_remove(variable);
    }
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot run `{shown}`"))?;

    // Cargo's JSON messages come on stdout, its progress and diagnostics on stderr; read both
    // at once so that neither pipe fills up.
    let stdout = child.stdout.take().expect("stdout is piped");
    let artifacts = thread::spawn(move || collect_binaries(BufReader::new(stdout)));
    let mut stderr_text = String::new();
    for line in BufReader::new(child.stderr.take().expect("stderr is piped")).lines() {
        let line = line.with_context(|| format!("cannot read the output of `{shown}`"))?;
        progress(&format!("  {}", line.trim_start()));
        stderr_text.push_str(&line);
        stderr_text.push('\n');
    }
    let binaries = artifacts
        .join()
        .expect("the stdout reader does not panic")
        .with_context(|| format!("cannot read the output of `{shown}`"))?;
    let status = child
        .wait()
        .with_context(|| format!("cannot wait for `{shown}`"))?;
    if !status.success() {
        let hint = if stderr_text.contains("is not installed") {
            format!(
                "\nhint: the bare-metal toolchain is the Debian rustc linked into rustup: \
                 `rustup toolchain link {} /usr`",
                options.toolchain
            )
        } else {
            String::new()
        };
        bail!("`{shown}` failed ({status}); its stderr:\n{stderr_text}{hint}");
    }
    if binaries.is_empty() {
        bail!("`{shown}` built no binary of {APPLIANCE_PACKAGE}; its stderr:\n{stderr_text}");
    }
    Ok(binaries)
}

/// Reads cargo's JSON messages and returns the built binaries (name, executable), by name.
fn collect_binaries(reader: impl BufRead) -> std::io::Result<Vec<(String, PathBuf)>> {
    let mut binaries = Vec::new();
    for line in reader.lines() {
        if let Some(binary) = binary_artifact(&line?) {
            binaries.push(binary);
        }
    }
    binaries.sort();
    binaries.dedup();
    Ok(binaries)
}

/// The (name, executable) of a `compiler-artifact` message for a bin target, if `line` is one.
fn binary_artifact(line: &str) -> Option<(String, PathBuf)> {
    let message: serde_json::Value = serde_json::from_str(line).ok()?;
    if message["reason"] != "compiler-artifact" {
        return None;
    }
    let target = &message["target"];
    let is_bin = target["kind"].as_array()?.iter().any(|kind| kind == "bin");
    if !is_bin {
        return None;
    }
    let name = target["name"].as_str()?;
    let executable = message["executable"].as_str()?;
    Some((name.to_owned(), PathBuf::from(executable)))
}

/// The workspace that contains the current directory, as `cargo locate-project` finds it.
pub fn find_workspace_root() -> Result<PathBuf> {
    let shown = "cargo locate-project --workspace --message-format plain";
    let output = Command::new("cargo")
        .args(["locate-project", "--workspace", "--message-format", "plain"])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run `{shown}`"))?;
    if !output.status.success() {
        bail!(
            "`{shown}` failed ({}); its stderr:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let manifest = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    manifest
        .parent()
        .map(Path::to_owned)
        .with_context(|| format!("`{shown}` printed no directory: {}", manifest.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bin_artifacts_are_collected_and_others_ignored() {
        let output = concat!(
            r#"{"reason":"compiler-artifact","target":{"kind":["lib"],"name":"ferry_appliance"},"executable":null}"#,
            "\n",
            r#"{"reason":"compiler-artifact","target":{"kind":["bin"],"name":"selftest"},"executable":"/t/selftest"}"#,
            "\n",
            r#"{"reason":"compiler-artifact","target":{"kind":["custom-build"],"name":"build-script-build"},"executable":null}"#,
            "\n",
            "not json\n",
            r#"{"reason":"build-finished","success":true}"#,
            "\n",
        );
        let binaries = collect_binaries(output.as_bytes()).unwrap();
        assert_eq!(
            binaries,
            vec![("selftest".to_owned(), PathBuf::from("/t/selftest"))]
        );
    }

    #[test]
    fn build_command_is_the_documented_bare_metal_build() {
        let options = BuildOptions::new("/ws", "/out");
        let arguments: Vec<String> = options
            .cargo_arguments()
            .into_iter()
            .map(|argument| argument.into_string().unwrap())
            .collect();
        assert_eq!(arguments[0], "+debian-web");
        for expected in [
            "-p",
            APPLIANCE_PACKAGE,
            "appliance",
            TARGET,
            "-Zbuild-std=core,alloc,compiler_builtins",
            "-Zbuild-std-features=compiler-builtins-mem",
            "/ws/target/baremetal",
        ] {
            assert!(
                arguments.iter().any(|argument| argument == expected),
                "{expected}"
            );
        }
    }
}
