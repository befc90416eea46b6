//! What the system tests share: the workspace paths, one image build per test binary, a lock
//! that runs one QEMU system at a time, and isolated copies of board system files.
#![allow(dead_code)] // each test binary uses a different part

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard, OnceLock};

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("image-builder is inside the workspace")
        .to_owned()
}

pub fn board_dir() -> PathBuf {
    workspace_root().join("boards").join("qemu-virt-arm64")
}

/// Builds the images once; holds the lock that serializes runs.
pub fn images() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    static BUILT: OnceLock<()> = OnceLock::new();
    let guard = LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    BUILT.get_or_init(|| {
        let output = Command::new(env!("CARGO_BIN_EXE_image-builder"))
            .arg("build")
            .current_dir(workspace_root())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "image-builder build failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    });
    guard
}

pub struct Run {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

pub fn run(system: &Path, extra: &[&str]) -> Run {
    let _lock = images();
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new(env!("CARGO_BIN_EXE_image-builder"))
        .arg("run")
        .arg(system)
        .arg("--no-build")
        .args(extra)
        .current_dir(workspace_root())
        .output()
        .unwrap();
    let run = Run {
        success: status.success(),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    };
    eprintln!("{}", run.all());
    run
}

/// A copy of a board system file whose disk images live in the test's own directory, so that
/// concurrent runs of the same system never share a disk image.
pub fn isolated_copy(name: &str) -> PathBuf {
    let text = fs::read_to_string(board_dir().join(format!("{name}.toml"))).unwrap();
    let directory = Path::new(env!("CARGO_TARGET_TMPDIR")).join("isolated");
    fs::create_dir_all(&directory).unwrap();
    let board = board_dir().join("board.toml");
    let text = text
        .replace(
            "board = \"qemu-virt-arm64\"",
            &format!("board = \"{}\"", board.display()),
        )
        .replace("image = \"build/disks/", "image = \"disks/");
    assert!(
        text.contains(&board.display().to_string()),
        "{name}: board key"
    );
    let path = directory.join(format!("{name}.toml"));
    fs::write(&path, text).unwrap();
    path
}
