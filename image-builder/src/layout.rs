//! Placing the domU kernels in the board's module area.
//!
//! Each domain gets its own copy of its appliance image (Xen frees boot modules after it has
//! built the domains, so two domains never share one), at the next address aligned to
//! `modules.align`, in domain-id order. A Linux domain (`kernel = "linux"`) gets
//! `FERRY_LINUX_IMAGE` there and its initramfs (`FERRY_LINUX_INITRAMFS`) at the next page.
//! This module only computes and checks addresses; it never reads or writes images.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};

use crate::config::{Kernel, System, PAGE_SIZE};

/// What a module is to Xen (the `compatible` of its node).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModuleKind {
    /// The domain's kernel (`multiboot,kernel`).
    Kernel,
    /// The domain's partial device tree (`multiboot,device-tree`).
    DeviceTree,
    /// A Linux domain's initramfs (`multiboot,ramdisk`).
    Ramdisk,
}

/// One domain's kernel or partial device tree in host memory: what `-device loader` loads and
/// the module node's `reg`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Module {
    /// The domain's id.
    pub domid: u32,
    /// Kernel or partial device tree.
    pub kind: ModuleKind,
    /// The image file.
    pub image: PathBuf,
    /// Load address (page aligned).
    pub address: u64,
    /// Size of the image file in bytes.
    pub size: u64,
}

impl Module {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.address + self.size
    }
}

/// The image of an appliance: `<images>/<appliance>.img`.
pub fn image_path(images: &Path, appliance: &str) -> PathBuf {
    images.join(format!("{appliance}.img"))
}

/// Ferry's Linux frontend: the kernel and the initramfs `scripts/setup` built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinuxFiles {
    /// `FERRY_LINUX_IMAGE`: the arm64 `Image`.
    pub image: PathBuf,
    /// `FERRY_LINUX_INITRAMFS`: the gzip'd cpio.
    pub initramfs: PathBuf,
}

impl LinuxFiles {
    /// From the environment or `$FERRY_CACHE/env.sh` (scripts/setup, steps `linux-frontend` and
    /// `linux-initramfs`).
    pub fn from_settings() -> Result<Self> {
        let get = |name: &str| {
            crate::qemu::setting(name)
                .map(PathBuf::from)
                .ok_or_else(|| {
                    anyhow!(
                        "kernel = \"linux\" needs {name} (in the environment or \
                     $FERRY_CACHE/env.sh): run scripts/setup"
                    )
                })
        };
        Ok(Self {
            image: get("FERRY_LINUX_IMAGE")?,
            initramfs: get("FERRY_LINUX_INITRAMFS")?,
        })
    }
}

/// The files a domain boots: its kernel, and for Linux its initramfs.
pub fn domain_files(images: &Path, kernel: &Kernel) -> Result<Vec<(ModuleKind, PathBuf)>> {
    Ok(match kernel {
        Kernel::Appliance(name) => vec![(ModuleKind::Kernel, image_path(images, name))],
        Kernel::Linux => {
            let linux = LinuxFiles::from_settings()?;
            vec![
                (ModuleKind::Kernel, linux.image),
                (ModuleKind::Ramdisk, linux.initramfs),
            ]
        }
    })
}

/// Places every domain's image (and a Linux domain's initramfs); `size_of` gives an image
/// file's size.
pub fn place(
    system: &System,
    images: &Path,
    size_of: &mut dyn FnMut(&Path) -> Result<u64>,
) -> Result<Vec<Module>> {
    let mut next = system.board.modules.base.0;
    let mut modules = Vec::new();
    for domain in &system.domains {
        for (kind, image) in domain_files(images, &domain.kernel)? {
            place_one(
                system,
                domain,
                kind,
                image,
                &mut next,
                size_of,
                &mut modules,
            )?;
        }
    }
    check(&modules)?;
    Ok(modules)
}

fn place_one(
    system: &System,
    domain: &crate::config::Domain,
    kind: ModuleKind,
    image: PathBuf,
    next: &mut u64,
    size_of: &mut dyn FnMut(&Path) -> Result<u64>,
    modules: &mut Vec<Module>,
) -> Result<()> {
    let area = system.board.modules;
    // A kernel at the board's alignment; an initramfs right after it (a page is enough).
    let align = match kind {
        ModuleKind::Kernel => area.align.0,
        _ => PAGE_SIZE,
    };
    let size = size_of(&image)?;
    if size == 0 {
        bail!(
            "domain '{}': image {} is empty",
            domain.name,
            image.display()
        );
    }
    let address = next.div_ceil(align) * align;
    let end = address + size;
    if end > area.end() {
        bail!(
            "domain '{}': {} ({size} bytes) does not fit in the module area {}-{:#x} of {} \
                 (next free address {address:#x})",
            domain.name,
            image.display(),
            area.base,
            area.end(),
            system.board_path.display()
        );
    }
    *next = end;
    modules.push(Module {
        domid: domain.domid,
        kind,
        image,
        address,
        size,
    });
    Ok(())
}

/// Places partial device trees `(domid, file, size)` after the last module, each page aligned
/// (Xen maps a partial device tree with `ioremap_cache`, so a page boundary is enough).
pub fn place_device_trees(
    system: &System,
    modules: &mut Vec<Module>,
    trees: &[(u32, PathBuf, u64)],
) -> Result<()> {
    let area = system.board.modules;
    let mut next = modules.iter().map(Module::end).max().unwrap_or(area.base.0);
    for (domid, image, size) in trees {
        let address = next.div_ceil(PAGE_SIZE) * PAGE_SIZE;
        let end = address + size;
        if end > area.end() {
            bail!(
                "the partial device tree of domain {domid} ({size} bytes) does not fit in the \
                 module area {}-{:#x} of {} (next free address {address:#x})",
                area.base,
                area.end(),
                system.board_path.display()
            );
        }
        next = end;
        modules.push(Module {
            domid: *domid,
            kind: ModuleKind::DeviceTree,
            image: image.clone(),
            address,
            size: *size,
        });
    }
    check(modules)
}

/// Checks that modules are page aligned and do not overlap.
pub fn check(modules: &[Module]) -> Result<()> {
    for (index, module) in modules.iter().enumerate() {
        if module.address % PAGE_SIZE != 0 {
            bail!(
                "module of domain {} at {:#x} is not page aligned",
                module.domid,
                module.address
            );
        }
        for other in &modules[index + 1..] {
            if module.address < other.end() && other.address < module.end() {
                bail!(
                    "modules of domains {} ({:#x}-{:#x}) and {} ({:#x}-{:#x}) overlap",
                    module.domid,
                    module.address,
                    module.end(),
                    other.domid,
                    other.address,
                    other.end()
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::{self, SystemFile};

    pub(crate) fn test_system(text: &str) -> System {
        let board = config::parse_board(
            Path::new("board.toml"),
            &std::fs::read_to_string(
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../boards/qemu-virt-arm64/board.toml"),
            )
            .unwrap(),
        )
        .unwrap();
        let path = Path::new("test.toml");
        let file: SystemFile = config::parse_toml(path, text).unwrap();
        config::resolve(path, &file, PathBuf::from("board.toml"), board).unwrap()
    }

    pub(crate) const TWO: &str = r#"
board = "qemu-virt-arm64"
hypervisor = "ferry"
[[domain]]
name = "ping"
appliance = "selftest"
memory = "4M"
[[domain]]
name = "pong"
appliance = "other"
memory = "4M"
direct_map = { base = "0x60000000" }
[[channel]]
name = "selftest"
ends = ["ping", "pong"]
"#;

    #[test]
    fn modules_are_aligned_in_domain_order() {
        let system = test_system(TWO);
        let modules = place(&system, Path::new("/img"), &mut |path| {
            Ok(if path.ends_with("selftest.img") {
                (2 << 20) + 1
            } else {
                100
            })
        })
        .unwrap();
        assert_eq!(modules[0].address, 0x5000_0000);
        assert_eq!(modules[0].image, PathBuf::from("/img/selftest.img"));
        assert_eq!(modules[1].address, 0x5040_0000);
        assert_eq!(modules[1].size, 100);
    }

    #[test]
    fn modules_must_fit_and_not_overlap() {
        let system = test_system(TWO);
        let error = place(&system, Path::new("/img"), &mut |_| Ok(200 << 20)).unwrap_err();
        assert!(error.to_string().contains("does not fit"), "{error}");
        let overlapping = [
            Module {
                domid: 1,
                kind: ModuleKind::Kernel,
                image: PathBuf::new(),
                address: 0x1000,
                size: 0x2000,
            },
            Module {
                domid: 2,
                kind: ModuleKind::Kernel,
                image: PathBuf::new(),
                address: 0x2000,
                size: 0x10,
            },
        ];
        assert!(check(&overlapping).is_err());
        let unaligned = [Module {
            domid: 1,
            kind: ModuleKind::Kernel,
            image: PathBuf::new(),
            address: 0x1800,
            size: 0x10,
        }];
        assert!(check(&unaligned).is_err());
    }
}
