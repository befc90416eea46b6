//! Converting an appliance ELF into the raw arm64 `Image` that Xen loads, and checking it.
//!
//! This module owns the contract between the appliance's link layout (`appliance/link.ld`, the
//! entry code in `appliance/src/arch/aarch64/boot.rs`) and Xen's arm64 Image loader. It never
//! patches an image: a header that does not match the ELF is an appliance build bug, reported
//! as an error that names the ELF.
//!
//! # Layout
//!
//! The `PT_LOAD` segments are laid out flat from the lowest address: the byte at address `A`
//! goes to file offset `A - lowest`, gaps are zero, and the image ends with the last byte that
//! has file contents (bss is not stored; the entry code zeroes it). The lowest address must be
//! 0 and the ELF entry point must be there, because Xen enters the image at its first byte and
//! the entry code relocates by the load address (see `link.ld`).
//!
//! # Checks
//!
//! - the 64-byte header (Linux `Documentation/arch/arm64/booting.rst`): magic `0x644d5241` at
//!   offset 56; code0 is a `b` instruction; `image_size` at offset 16 equals the memory size of
//!   the ELF (from the lowest address to the end of the highest segment, bss included) rounded
//!   up to [`IMAGE_SIZE_ALIGN`];
//! - dynamic relocations: only `R_AARCH64_RELATIVE` in allocated `SHT_RELA` sections, which lie
//!   inside the stored part of the image, and which patch only stored bytes. That is all the
//!   entry code applies.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use object::elf;
use object::read::elf::{FileHeader as _, ProgramHeader as _, Rela as _, SectionHeader as _};
use object::LittleEndian;

/// Size of the arm64 Image header.
pub const HEADER_SIZE: usize = 64;
/// The header magic, "ARM\x64" in little endian.
pub const MAGIC: u32 = 0x644d_5241;
/// Offset of the magic in the header.
pub const MAGIC_OFFSET: usize = 56;
/// Offset of the `image_size` field in the header.
pub const IMAGE_SIZE_OFFSET: usize = 16;
/// `image_size` is the ELF's memory size rounded up to this (one 4 KiB page).
pub const IMAGE_SIZE_ALIGN: u64 = 4096;
/// Largest memory size accepted; far more than an appliance needs, small enough that a
/// mislinked ELF (e.g. one segment at 0, another at 0x40000000) is refused instead of padded.
pub const MAX_MEMORY_SIZE: u64 = 64 << 20;

/// The fields of the arm64 Image header that Ferry sets (all little endian).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// First instruction, executed by the entry: a branch to the entry code.
    pub code0: u32,
    /// Second instruction word (unused by Ferry, 0).
    pub code1: u32,
    /// Offset from the start of RAM at which the image is loaded.
    pub text_offset: u64,
    /// Memory the image occupies once running, bss included.
    pub image_size: u64,
    /// Bit 0: big endian; bits 1-2: page size; bit 3: placement anywhere in memory.
    pub flags: u64,
    /// [`MAGIC`] in a valid header.
    pub magic: u32,
}

impl Header {
    /// Reads a header from the start of `bytes`, or `None` if there are fewer than
    /// [`HEADER_SIZE`] bytes.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let header = bytes.get(..HEADER_SIZE)?;
        let u32_at = |offset: usize| {
            u32::from_le_bytes(header[offset..offset + 4].try_into().expect("4 bytes"))
        };
        let u64_at = |offset: usize| {
            u64::from_le_bytes(header[offset..offset + 8].try_into().expect("8 bytes"))
        };
        Some(Self {
            code0: u32_at(0),
            code1: u32_at(4),
            text_offset: u64_at(8),
            image_size: u64_at(IMAGE_SIZE_OFFSET),
            flags: u64_at(24),
            magic: u32_at(MAGIC_OFFSET),
        })
    }

    /// Whether `code0` is an unconditional immediate branch (`b label`, A64 encoding
    /// `0b000101` in bits 31:26).
    pub fn code0_is_branch(&self) -> bool {
        self.code0 & 0xfc00_0000 == 0x1400_0000
    }
}

/// `image_size` for an ELF whose memory size is `memory_size` bytes.
pub fn rounded_image_size(memory_size: u64) -> u64 {
    memory_size.div_ceil(IMAGE_SIZE_ALIGN) * IMAGE_SIZE_ALIGN
}

/// A raw arm64 Image made from an appliance ELF.
#[derive(Clone, Debug)]
pub struct Image {
    bytes: Vec<u8>,
    header: Header,
    memory_size: u64,
}

impl Image {
    /// The image file's contents.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The (checked) header at the start of the image.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The ELF's memory size: from the lowest address to the end of the highest segment,
    /// bss included, not rounded.
    pub fn memory_size(&self) -> u64 {
        self.memory_size
    }
}

/// Why an ELF cannot become an appliance image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The bytes are not an ELF file that `object` can read.
    #[error("not a readable 64-bit little-endian ELF file: {0}")]
    Parse(#[from] object::read::Error),
    /// The ELF is for another machine.
    #[error("not an AArch64 ELF (e_machine {0})")]
    NotAarch64(u16),
    /// The ELF is a relocatable object or a core dump, not a linked program.
    #[error("not an executable ELF (e_type {0}); give the linked appliance binary")]
    NotExecutable(u16),
    /// A segment claims more file bytes than memory bytes.
    #[error(
        "PT_LOAD segment at {vaddr:#x} has file size {file_size:#x} > memory size {memory_size:#x}"
    )]
    FileSizeExceedsMemorySize {
        /// Segment address.
        vaddr: u64,
        /// `p_filesz`.
        file_size: u64,
        /// `p_memsz`.
        memory_size: u64,
    },
    /// A segment's file bytes lie beyond the end of the ELF file.
    #[error("PT_LOAD segment at {0:#x} extends beyond the end of the file")]
    SegmentOutsideFile(u64),
    /// No `PT_LOAD` segment with memory.
    #[error("has no PT_LOAD segment")]
    NoLoadSegments,
    /// The image is not linked at address 0.
    #[error(
        "lowest PT_LOAD address is {0:#x}, not 0: appliances are linked at 0 (appliance/link.ld) \
         and relocate themselves by their load address"
    )]
    NotLinkedAtZero(u64),
    /// Two segments share addresses.
    #[error("PT_LOAD segments at {first:#x} and {second:#x} overlap")]
    OverlappingSegments {
        /// The lower segment.
        first: u64,
        /// The segment that starts inside it.
        second: u64,
    },
    /// The memory size is implausible for an appliance.
    #[error("memory size {0:#x} exceeds the limit of {MAX_MEMORY_SIZE:#x} bytes")]
    TooLarge(u64),
    /// Xen enters the image at its first byte, so the ELF must start there too.
    #[error("entry point {0:#x} is not the start of the image (0)")]
    EntryNotAtStart(u64),
    /// The stored part of the image cannot even hold the header.
    #[error("image has only {0} bytes, fewer than the 64-byte arm64 Image header")]
    TooShortForHeader(usize),
    /// Xen rejects an image without the magic.
    #[error("bad arm64 Image header: magic at offset 56 is {0:#010x}, expected 0x644d5241")]
    BadMagic(u32),
    /// The first instruction does not jump over the header.
    #[error("bad arm64 Image header: code0 {0:#010x} is not a branch instruction")]
    Code0NotBranch(u32),
    /// `image_size` does not cover what the ELF occupies in memory.
    #[error(
        "bad arm64 Image header: image_size is {header:#x}, but the ELF's memory size \
         (file + bss) {memory_size:#x} rounded up to 4 KiB is {expected:#x}"
    )]
    ImageSizeMismatch {
        /// `image_size` in the header.
        header: u64,
        /// The ELF's memory size.
        memory_size: u64,
        /// What `image_size` should be.
        expected: u64,
    },
    /// A relocation section the entry code does not process.
    #[error(
        "has an allocated relocation section of type {0:#x}; the entry code applies only SHT_RELA"
    )]
    UnsupportedRelocationSection(u32),
    /// The entry code reads relocations from the loaded image, so they must be in it.
    #[error("relocation section at {start:#x}..{end:#x} is not inside the stored image (0..{image_end:#x})")]
    RelocationsOutsideImage {
        /// Section start address.
        start: u64,
        /// Section end address.
        end: u64,
        /// End of the stored image.
        image_end: u64,
    },
    /// A dynamic relocation the entry code cannot apply.
    #[error(
        "dynamic relocation of type {r_type} (symbol {r_sym}) at {offset:#x}; the entry code \
         applies only R_AARCH64_RELATIVE (1027) without symbol"
    )]
    UnsupportedRelocation {
        /// `r_offset`.
        offset: u64,
        /// `r_type`.
        r_type: u32,
        /// `r_sym`.
        r_sym: u32,
    },
    /// A relocation that would patch bytes which are not stored in the image (bss).
    #[error("relocation at {0:#x} patches bytes outside the stored image")]
    RelocationTargetOutsideImage(u64),
}

/// One `PT_LOAD` segment with memory.
struct Segment<'data> {
    vaddr: u64,
    memory_size: u64,
    data: &'data [u8],
}

/// Converts an appliance ELF into its raw arm64 Image and checks it (see the module doc).
pub fn from_elf(elf_data: &[u8]) -> Result<Image, ImageError> {
    let file = elf::FileHeader64::<LittleEndian>::parse(elf_data)?;
    let endian = file.endian()?;
    let machine = file.e_machine(endian);
    if machine != elf::EM_AARCH64 {
        return Err(ImageError::NotAarch64(machine));
    }
    let kind = file.e_type(endian);
    if kind != elf::ET_EXEC && kind != elf::ET_DYN {
        return Err(ImageError::NotExecutable(kind));
    }

    let mut segments = Vec::new();
    for program_header in file.program_headers(endian, elf_data)? {
        if program_header.p_type(endian) != elf::PT_LOAD {
            continue;
        }
        let vaddr = program_header.p_vaddr(endian);
        let file_size = program_header.p_filesz(endian);
        let memory_size = program_header.p_memsz(endian);
        if file_size > memory_size {
            return Err(ImageError::FileSizeExceedsMemorySize {
                vaddr,
                file_size,
                memory_size,
            });
        }
        if memory_size == 0 {
            continue;
        }
        let data = program_header
            .data(endian, elf_data)
            .map_err(|()| ImageError::SegmentOutsideFile(vaddr))?;
        segments.push(Segment {
            vaddr,
            memory_size,
            data,
        });
    }
    segments.sort_by_key(|segment| segment.vaddr);

    let base = segments.first().ok_or(ImageError::NoLoadSegments)?.vaddr;
    if base != 0 {
        return Err(ImageError::NotLinkedAtZero(base));
    }
    let mut memory_end = 0u64;
    let mut file_end = 0u64;
    let mut previous = None;
    for segment in &segments {
        // Sorted by address, so only the previous segment can reach into this one.
        if let Some(first) = previous.filter(|_| segment.vaddr < memory_end) {
            return Err(ImageError::OverlappingSegments {
                first,
                second: segment.vaddr,
            });
        }
        memory_end = segment
            .vaddr
            .checked_add(segment.memory_size)
            .filter(|&end| end <= MAX_MEMORY_SIZE)
            .ok_or(ImageError::TooLarge(
                segment.vaddr.saturating_add(segment.memory_size),
            ))?;
        if !segment.data.is_empty() {
            file_end = segment.vaddr + segment.data.len() as u64;
        }
        previous = Some(segment.vaddr);
    }
    let entry = file.e_entry(endian);
    if entry != base {
        return Err(ImageError::EntryNotAtStart(entry));
    }

    // Both ends are at most MAX_MEMORY_SIZE, so the casts cannot truncate.
    let mut bytes = vec![0u8; file_end as usize];
    for segment in segments.iter().filter(|segment| !segment.data.is_empty()) {
        let start = segment.vaddr as usize;
        bytes[start..start + segment.data.len()].copy_from_slice(segment.data);
    }

    let header = Header::parse(&bytes).ok_or(ImageError::TooShortForHeader(bytes.len()))?;
    if header.magic != MAGIC {
        return Err(ImageError::BadMagic(header.magic));
    }
    if !header.code0_is_branch() {
        return Err(ImageError::Code0NotBranch(header.code0));
    }
    let expected = rounded_image_size(memory_end);
    if header.image_size != expected {
        return Err(ImageError::ImageSizeMismatch {
            header: header.image_size,
            memory_size: memory_end,
            expected,
        });
    }

    check_relocations(file, endian, elf_data, file_end)?;

    Ok(Image {
        bytes,
        header,
        memory_size: memory_end,
    })
}

/// Checks that every dynamic relocation is one the entry code applies (see the module doc).
fn check_relocations(
    file: &elf::FileHeader64<LittleEndian>,
    endian: LittleEndian,
    elf_data: &[u8],
    image_end: u64,
) -> Result<(), ImageError> {
    for section in file.sections(endian, elf_data)?.iter() {
        if section.sh_flags(endian) & u64::from(elf::SHF_ALLOC) == 0 {
            continue;
        }
        match section.sh_type(endian) {
            elf::SHT_RELA => {}
            kind @ (elf::SHT_REL | elf::SHT_RELR) => {
                return Err(ImageError::UnsupportedRelocationSection(kind));
            }
            _ => continue,
        }
        let start = section.sh_addr(endian);
        let end = start.saturating_add(section.sh_size(endian));
        if end > image_end {
            return Err(ImageError::RelocationsOutsideImage {
                start,
                end,
                image_end,
            });
        }
        let relocations: &[elf::Rela64<LittleEndian>] = section.data_as_array(endian, elf_data)?;
        for relocation in relocations {
            let offset = relocation.r_offset(endian);
            let r_type = relocation.r_type(endian, false);
            let r_sym = relocation.r_sym(endian, false);
            if r_type != elf::R_AARCH64_RELATIVE || r_sym != 0 {
                return Err(ImageError::UnsupportedRelocation {
                    offset,
                    r_type,
                    r_sym,
                });
            }
            if offset.checked_add(8).is_none_or(|end| end > image_end) {
                return Err(ImageError::RelocationTargetOutsideImage(offset));
            }
        }
    }
    Ok(())
}

/// Why [`convert`] failed; every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// The ELF could not be read.
    #[error("cannot read ELF {path}: {source}")]
    Read {
        /// The ELF.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The ELF is not a valid appliance.
    #[error("ELF {path}: {source}")]
    Invalid {
        /// The ELF.
        path: PathBuf,
        /// What is wrong with it.
        source: ImageError,
    },
    /// The image could not be written.
    #[error("cannot write image {path}: {source}")]
    Write {
        /// The image file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
}

/// Reads the appliance ELF at `elf_path`, converts it and writes the image to `image_path`.
pub fn convert(elf_path: &Path, image_path: &Path) -> Result<Image, ConvertError> {
    let elf_data = fs::read(elf_path).map_err(|source| ConvertError::Read {
        path: elf_path.to_owned(),
        source,
    })?;
    let image = from_elf(&elf_data).map_err(|source| ConvertError::Invalid {
        path: elf_path.to_owned(),
        source,
    })?;
    fs::write(image_path, image.bytes()).map_err(|source| ConvertError::Write {
        path: image_path.to_owned(),
        source,
    })?;
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;
    use object::write::elf::{FileHeader, ProgramHeader, Rel, SectionHeader, Writer};
    use object::Endianness;

    /// `b .+0x40`: jumps over the header.
    const BRANCH_OVER_HEADER: u32 = 0x1400_0010;
    const NOP: u32 = 0xd503_201f;

    fn header(code0: u32, image_size: u64, magic: u32) -> Vec<u8> {
        let mut bytes = vec![0u8; HEADER_SIZE];
        bytes[0..4].copy_from_slice(&code0.to_le_bytes());
        bytes[16..24].copy_from_slice(&image_size.to_le_bytes());
        bytes[24..32].copy_from_slice(&0xa_u64.to_le_bytes());
        bytes[56..60].copy_from_slice(&magic.to_le_bytes());
        bytes
    }

    struct Segment {
        vaddr: u64,
        data: Vec<u8>,
        memory_size: u64,
    }

    /// A synthetic appliance ELF: what `link.ld` produces, in miniature.
    struct Elf {
        entry: u64,
        segments: Vec<Segment>,
        /// Address of the allocated `.rela.dyn` section and its (offset, type) entries.
        relocations: Option<(u64, Vec<(u64, u32)>)>,
    }

    impl Elf {
        /// Text with a valid header at 0 (0x100 bytes), data at 0x1000 (0x20 bytes), and bss
        /// from 0x1030 (after an alignment gap) up to 0x6030: memory size 0x6030, image_size
        /// 0x7000, file part 0x1020 bytes.
        fn valid() -> Self {
            Self::with_header(header(BRANCH_OVER_HEADER, 0x7000, MAGIC))
        }

        fn with_header(header: Vec<u8>) -> Self {
            let mut text = header;
            text.resize(0x100, 0xee);
            Self {
                entry: 0,
                segments: vec![
                    Segment {
                        vaddr: 0,
                        data: text,
                        memory_size: 0x100,
                    },
                    Segment {
                        vaddr: 0x1000,
                        data: vec![0x5a; 0x20],
                        memory_size: 0x20,
                    },
                    Segment {
                        vaddr: 0x1030,
                        data: Vec::new(),
                        memory_size: 0x5000,
                    },
                ],
                relocations: Some((0x80, vec![(0x1008, elf::R_AARCH64_RELATIVE)])),
            }
        }

        fn write(&self) -> Vec<u8> {
            let mut out = Vec::new();
            let mut writer = Writer::new(Endianness::Little, true, &mut out);
            writer.reserve_file_header();
            writer.reserve_program_headers(self.segments.len() as u32);
            let offsets: Vec<usize> = self
                .segments
                .iter()
                .map(|segment| writer.reserve(segment.data.len(), 16))
                .collect();
            let rela = self.relocations.as_ref().map(|(address, entries)| {
                let name = writer.add_section_name(b".rela.dyn");
                let index = writer.reserve_section_index();
                let offset = writer.reserve_relocations(entries.len(), true);
                (name, index, offset, *address, entries)
            });
            writer.reserve_shstrtab_section_index();
            writer.reserve_shstrtab();
            writer.reserve_section_headers();

            writer
                .write_file_header(&FileHeader {
                    os_abi: elf::ELFOSABI_NONE,
                    abi_version: 0,
                    e_type: elf::ET_DYN,
                    e_machine: elf::EM_AARCH64,
                    e_entry: self.entry,
                    e_flags: 0,
                })
                .unwrap();
            writer.write_align_program_headers();
            for (segment, offset) in self.segments.iter().zip(&offsets) {
                writer.write_program_header(&ProgramHeader {
                    p_type: elf::PT_LOAD,
                    p_flags: elf::PF_R | elf::PF_W | elf::PF_X,
                    p_offset: *offset as u64,
                    p_vaddr: segment.vaddr,
                    p_paddr: segment.vaddr,
                    p_filesz: segment.data.len() as u64,
                    p_memsz: segment.memory_size,
                    p_align: 16,
                });
            }
            for segment in &self.segments {
                writer.write_align(16);
                writer.write(&segment.data);
            }
            if let Some((_, _, _, _, entries)) = &rela {
                writer.write_align_relocation();
                for &(offset, r_type) in entries.iter() {
                    writer.write_relocation(
                        true,
                        &Rel {
                            r_offset: offset,
                            r_sym: 0,
                            r_type,
                            r_addend: 0x40,
                        },
                    );
                }
            }
            writer.write_shstrtab();
            writer.write_null_section_header();
            if let Some((name, _, offset, address, entries)) = rela {
                writer.write_section_header(&SectionHeader {
                    name: Some(name),
                    sh_type: elf::SHT_RELA,
                    sh_flags: elf::SHF_ALLOC.into(),
                    sh_addr: address,
                    sh_offset: offset as u64,
                    sh_size: (entries.len() * 24) as u64,
                    sh_link: 0,
                    sh_info: 0,
                    sh_addralign: 8,
                    sh_entsize: 24,
                });
            }
            writer.write_shstrtab_section_header();
            out
        }
    }

    #[test]
    fn segments_are_laid_out_flat_from_address_zero() {
        let image = from_elf(&Elf::valid().write()).unwrap();
        let bytes = image.bytes();
        assert_eq!(
            bytes.len(),
            0x1020,
            "ends with the last stored byte, bss is not stored"
        );
        assert_eq!(
            &bytes[..HEADER_SIZE],
            header(BRANCH_OVER_HEADER, 0x7000, MAGIC)
        );
        assert!(bytes[HEADER_SIZE..0x100].iter().all(|&byte| byte == 0xee));
        assert!(
            bytes[0x100..0x1000].iter().all(|&byte| byte == 0),
            "gap is zero"
        );
        assert!(bytes[0x1000..].iter().all(|&byte| byte == 0x5a));
        assert_eq!(image.memory_size(), 0x6030);
        assert_eq!(image.header().image_size, 0x7000);
        assert_eq!(image.header().flags, 0xa);
    }

    #[test]
    fn segment_order_in_the_file_does_not_matter() {
        let mut elf = Elf::valid();
        elf.segments.reverse();
        let image = from_elf(&elf.write()).unwrap();
        assert_eq!(image.bytes().len(), 0x1020);
        assert_eq!(image.header().magic, MAGIC);
    }

    #[test]
    fn wrong_magic_is_refused() {
        let elf = Elf::with_header(header(BRANCH_OVER_HEADER, 0x7000, 0x1234_5678));
        let error = from_elf(&elf.write()).unwrap_err();
        assert!(
            matches!(error, ImageError::BadMagic(0x1234_5678)),
            "{error}"
        );
    }

    #[test]
    fn image_size_must_be_memory_size_rounded_to_4k() {
        for wrong in [0x6030, 0x6000, 0x8000, 0x1020, 0] {
            let elf = Elf::with_header(header(BRANCH_OVER_HEADER, wrong, MAGIC));
            match from_elf(&elf.write()) {
                Err(ImageError::ImageSizeMismatch {
                    header,
                    memory_size,
                    expected,
                }) => assert_eq!((header, memory_size, expected), (wrong, 0x6030, 0x7000)),
                other => panic!("image_size {wrong:#x}: {other:?}"),
            }
        }
    }

    #[test]
    fn code0_must_be_a_branch() {
        let elf = Elf::with_header(header(NOP, 0x7000, MAGIC));
        let error = from_elf(&elf.write()).unwrap_err();
        assert!(matches!(error, ImageError::Code0NotBranch(NOP)), "{error}");
    }

    #[test]
    fn only_plain_branches_count_as_branches() {
        let parse = |code0| Header::parse(&header(code0, 0, MAGIC)).unwrap();
        assert!(parse(BRANCH_OVER_HEADER).code0_is_branch());
        assert!(parse(0x17ff_ffff).code0_is_branch(), "b backwards");
        assert!(!parse(0x9400_0010).code0_is_branch(), "bl");
        assert!(!parse(NOP).code0_is_branch());
    }

    #[test]
    fn an_image_too_short_for_the_header_is_refused() {
        let mut elf = Elf::valid();
        elf.segments = vec![Segment {
            vaddr: 0,
            data: vec![0; 32],
            memory_size: 0x1000,
        }];
        elf.relocations = None;
        let error = from_elf(&elf.write()).unwrap_err();
        assert!(
            matches!(error, ImageError::TooShortForHeader(32)),
            "{error}"
        );
    }

    #[test]
    fn the_image_must_be_linked_and_entered_at_zero() {
        let mut elf = Elf::valid();
        for segment in &mut elf.segments {
            segment.vaddr += 0x4000_0000;
        }
        let error = from_elf(&elf.write()).unwrap_err();
        assert!(
            matches!(error, ImageError::NotLinkedAtZero(0x4000_0000)),
            "{error}"
        );

        let mut elf = Elf::valid();
        elf.entry = 0x40;
        let error = from_elf(&elf.write()).unwrap_err();
        assert!(
            matches!(error, ImageError::EntryNotAtStart(0x40)),
            "{error}"
        );
    }

    #[test]
    fn overlapping_segments_are_refused() {
        let mut elf = Elf::valid();
        elf.segments[1].vaddr = 0x80;
        let error = from_elf(&elf.write()).unwrap_err();
        assert!(
            matches!(
                error,
                ImageError::OverlappingSegments {
                    first: 0,
                    second: 0x80
                }
            ),
            "{error}"
        );
    }

    #[test]
    fn a_huge_layout_is_refused_before_allocating_it() {
        let mut elf = Elf::valid();
        elf.segments[2].vaddr = 0x4000_0000;
        let error = from_elf(&elf.write()).unwrap_err();
        assert!(matches!(error, ImageError::TooLarge(_)), "{error}");
    }

    #[test]
    fn only_relative_relocations_are_accepted() {
        let mut elf = Elf::valid();
        elf.relocations = Some((0x80, vec![(0x1000, elf::R_AARCH64_ABS64)]));
        let error = from_elf(&elf.write()).unwrap_err();
        assert!(
            matches!(
                error,
                ImageError::UnsupportedRelocation {
                    offset: 0x1000,
                    r_type: elf::R_AARCH64_ABS64,
                    r_sym: 0
                }
            ),
            "{error}"
        );
    }

    #[test]
    fn relocations_must_be_inside_the_stored_image() {
        let mut elf = Elf::valid();
        elf.relocations = Some((0x2000, vec![(0x1000, elf::R_AARCH64_RELATIVE)]));
        let error = from_elf(&elf.write()).unwrap_err();
        assert!(
            matches!(error, ImageError::RelocationsOutsideImage { .. }),
            "{error}"
        );

        let mut elf = Elf::valid();
        elf.relocations = Some((0x80, vec![(0x2000, elf::R_AARCH64_RELATIVE)]));
        let error = from_elf(&elf.write()).unwrap_err();
        assert!(
            matches!(error, ImageError::RelocationTargetOutsideImage(0x2000)),
            "{error}"
        );
    }

    #[test]
    fn other_files_are_refused() {
        assert!(matches!(
            from_elf(b"MZ not an ELF"),
            Err(ImageError::Parse(_))
        ));
    }

    #[test]
    fn convert_writes_the_image_and_errors_name_the_elf() {
        let directory =
            std::env::temp_dir().join(format!("ferry-image-test-{}", std::process::id()));
        fs::create_dir_all(&directory).unwrap();
        let (good, bad, image_path) = (
            directory.join("good.elf"),
            directory.join("bad.elf"),
            directory.join("good.img"),
        );
        fs::write(&good, Elf::valid().write()).unwrap();
        let image = convert(&good, &image_path).unwrap();
        assert_eq!(fs::read(&image_path).unwrap(), image.bytes());

        let bad_header = Elf::with_header(header(BRANCH_OVER_HEADER, 0x7000, 0));
        fs::write(&bad, bad_header.write()).unwrap();
        let message = convert(&bad, &directory.join("bad.img"))
            .unwrap_err()
            .to_string();
        assert!(message.contains(&*bad.to_string_lossy()), "{message}");
        assert!(message.contains("magic"), "{message}");
        fs::remove_dir_all(&directory).unwrap();
    }
}
