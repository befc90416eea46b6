//! Device trees shaped like the ones Xen 4.17 makes for a dom0less domU
//! (xen/arch/arm/domain_build.c: prepare_dtb_domU), built with `vm-fdt`, and broken on purpose.

use std::format;
use std::string::{String, ToString};
use std::vec;
use std::vec::Vec as StdVec;

use vm_fdt::{FdtReserveEntry, FdtWriter};

use super::*;

const GIC_PHANDLE: u32 = 65000;

/// What the generated device tree contains.
struct Options {
    memory: StdVec<(u64, u64)>,
    memory_reserve: StdVec<(u64, u64)>,
    bootargs: Option<&'static str>,
    gic_v3: bool,
    second_gic: bool,
    gic_interrupt_cells: u32,
    timer: bool,
    timer_interrupts: StdVec<u32>,
    uart_base: u64,
    hypervisor: bool,
    hypervisor_interrupts: Option<StdVec<u32>>,
    passthrough: StdVec<(String, StdVec<u64>, StdVec<u32>)>,
    passthrough_raw_reg: Option<StdVec<u32>>,
    reserved_memory: StdVec<(u64, u64)>,
    initrd: Option<(u64, u64)>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            memory: vec![(0x4000_0000, 0x100_0000)],
            memory_reserve: vec![],
            bootargs: Some("loglevel=debug selftest.role=ping"),
            gic_v3: true,
            second_gic: false,
            gic_interrupt_cells: 3,
            timer: true,
            timer_interrupts: vec![1, 13, 0xf08, 1, 14, 0xf08, 1, 11, 0xf08, 1, 10, 0xf08],
            uart_base: 0x2200_0000,
            hypervisor: true,
            hypervisor_interrupts: Some(vec![1, 15, 0xf08]),
            passthrough: vec![],
            passthrough_raw_reg: None,
            reserved_memory: vec![],
            initrd: None,
        }
    }
}

fn cells64(values: &[u64]) -> StdVec<u32> {
    values
        .iter()
        .flat_map(|value| [(value >> 32) as u32, *value as u32])
        .collect()
}

fn build(options: &Options) -> StdVec<u8> {
    let reserve: StdVec<FdtReserveEntry> = options
        .memory_reserve
        .iter()
        .map(|&(address, size)| FdtReserveEntry::new(address, size).unwrap())
        .collect();
    let mut fdt = FdtWriter::new_with_mem_reserv(&reserve).unwrap();
    let root = fdt.begin_node("").unwrap();
    fdt.property_string("compatible", "xen,xenvm-4.17").unwrap();
    fdt.property_u32("#address-cells", 2).unwrap();
    fdt.property_u32("#size-cells", 2).unwrap();
    fdt.property_u32("interrupt-parent", GIC_PHANDLE).unwrap();

    let chosen = fdt.begin_node("chosen").unwrap();
    if let Some(bootargs) = options.bootargs {
        fdt.property_string("bootargs", bootargs).unwrap();
    }
    if let Some((start, end)) = options.initrd {
        fdt.property_u64("linux,initrd-start", start).unwrap();
        fdt.property_u64("linux,initrd-end", end).unwrap();
    }
    fdt.end_node(chosen).unwrap();

    let cpus = fdt.begin_node("cpus").unwrap();
    fdt.property_u32("#address-cells", 1).unwrap();
    fdt.property_u32("#size-cells", 0).unwrap();
    let cpu = fdt.begin_node("cpu@0").unwrap();
    fdt.property_string("device_type", "cpu").unwrap();
    fdt.property_u32("reg", 0).unwrap();
    fdt.end_node(cpu).unwrap();
    fdt.end_node(cpus).unwrap();

    if !options.memory.is_empty() {
        let name = format!("memory@{:x}", options.memory[0].0);
        let memory = fdt.begin_node(&name).unwrap();
        fdt.property_string("device_type", "memory").unwrap();
        let flat: StdVec<u64> = options.memory.iter().flat_map(|&(b, s)| [b, s]).collect();
        fdt.property_array_u32("reg", &cells64(&flat)).unwrap();
        fdt.end_node(memory).unwrap();
    }

    if !options.reserved_memory.is_empty() {
        let reserved = fdt.begin_node("reserved-memory").unwrap();
        fdt.property_u32("#address-cells", 2).unwrap();
        fdt.property_u32("#size-cells", 2).unwrap();
        fdt.property_null("ranges").unwrap();
        for &(base, size) in &options.reserved_memory {
            let node = fdt.begin_node(&format!("xen-shmem@{base:x}")).unwrap();
            fdt.property_string("compatible", "xen,shared-memory-v1")
                .unwrap();
            fdt.property_array_u32("reg", &cells64(&[base, size]))
                .unwrap();
            fdt.end_node(node).unwrap();
        }
        fdt.end_node(reserved).unwrap();
    }

    let gic_count = if options.second_gic { 2 } else { 1 };
    for index in 0..gic_count {
        let gic = fdt
            .begin_node(&format!("interrupt-controller@{:x}", 0x300_1000 + index))
            .unwrap();
        if options.gic_v3 {
            fdt.property_string("compatible", "arm,gic-v3").unwrap();
            fdt.property_array_u32(
                "reg",
                &cells64(&[0x300_1000, 0x1_0000, 0x302_0000, 0x100_0000]),
            )
            .unwrap();
        } else {
            fdt.property_string("compatible", "arm,gic-400").unwrap();
            fdt.property_array_u32("reg", &cells64(&[0x300_1000, 0x1000, 0x300_2000, 0x2000]))
                .unwrap();
        }
        fdt.property_u32("#interrupt-cells", options.gic_interrupt_cells)
            .unwrap();
        fdt.property_null("interrupt-controller").unwrap();
        fdt.property_u32("phandle", GIC_PHANDLE).unwrap();
        fdt.end_node(gic).unwrap();
    }

    if options.timer {
        let timer = fdt.begin_node("timer").unwrap();
        fdt.property_string("compatible", "arm,armv8-timer")
            .unwrap();
        fdt.property_array_u32("interrupts", &options.timer_interrupts)
            .unwrap();
        fdt.property_u32("interrupt-parent", GIC_PHANDLE).unwrap();
        fdt.end_node(timer).unwrap();
    }

    let uart = fdt
        .begin_node(&format!("sbsa-uart@{:x}", options.uart_base))
        .unwrap();
    fdt.property_string("compatible", "arm,sbsa-uart").unwrap();
    fdt.property_array_u32("reg", &cells64(&[options.uart_base, 0x1000]))
        .unwrap();
    fdt.property_array_u32("interrupts", &[0, 0, 4]).unwrap();
    fdt.property_u32("interrupt-parent", GIC_PHANDLE).unwrap();
    fdt.end_node(uart).unwrap();

    if options.hypervisor {
        let hypervisor = fdt.begin_node("hypervisor").unwrap();
        fdt.property_string_list(
            "compatible",
            vec!["xen,xen-4.17".to_string(), "xen,xen".to_string()],
        )
        .unwrap();
        fdt.property_array_u32(
            "reg",
            &cells64(&[0x3800_0000, 0x100_0000, 0x8000_0000, 0x4000_0000]),
        )
        .unwrap();
        if let Some(interrupts) = &options.hypervisor_interrupts {
            fdt.property_array_u32("interrupts", interrupts).unwrap();
        }
        fdt.property_u32("interrupt-parent", GIC_PHANDLE).unwrap();
        fdt.end_node(hypervisor).unwrap();
    }

    if !options.passthrough.is_empty() || options.passthrough_raw_reg.is_some() {
        let bus = fdt.begin_node("passthrough").unwrap();
        fdt.property_string("compatible", "simple-bus").unwrap();
        fdt.property_null("ranges").unwrap();
        fdt.property_u32("#address-cells", 2).unwrap();
        fdt.property_u32("#size-cells", 2).unwrap();
        for (name, reg, interrupts) in &options.passthrough {
            let device = fdt.begin_node(name).unwrap();
            fdt.property_string("compatible", "virtio,mmio").unwrap();
            fdt.property_null("dma-coherent").unwrap();
            fdt.property_array_u32("reg", &cells64(reg)).unwrap();
            fdt.property_array_u32("interrupts", interrupts).unwrap();
            fdt.property_u32("interrupt-parent", GIC_PHANDLE).unwrap();
            fdt.end_node(device).unwrap();
        }
        if let Some(raw) = &options.passthrough_raw_reg {
            let device = fdt.begin_node("broken@a003e00").unwrap();
            fdt.property_array_u32("reg", raw).unwrap();
            fdt.end_node(device).unwrap();
        }
        fdt.end_node(bus).unwrap();
    }

    fdt.end_node(root).unwrap();
    fdt.finish().unwrap()
}

/// Parses `options`' device tree as if Xen put it at 0x40f00000 (near the top of 16 MiB).
fn parse(options: &Options) -> Result<Platform<'static>, String> {
    let dtb: &'static [u8] = StdVec::leak(build(options));
    let address = options.memory.first().map_or(0x4000_0000, |bank| bank.0) + 0xf0_0000;
    Platform::parse(dtb, address).map_err(|e| e.to_string())
}

#[test]
fn reads_a_xen_domu_device_tree_with_gicv3() {
    let platform = parse(&Options::default()).unwrap();
    assert_eq!(
        platform.memory.as_slice(),
        &[Region::new(0x4000_0000, 0x100_0000)]
    );
    assert_eq!(platform.bootargs, "loglevel=debug selftest.role=ping");
    assert_eq!(platform.arg("selftest.role"), Some("ping"));
    assert_eq!(platform.cpus, 1);
    assert_eq!(
        platform.gic,
        Gic::V3 {
            distributor: Region::new(0x300_1000, 0x1_0000),
            redistributors: Region::new(0x302_0000, 0x100_0000),
        }
    );
    assert_eq!(platform.timer.virtual_timer.intid, 27);
    assert_eq!(platform.timer.physical.intid, 30);
    assert_eq!(platform.timer.virtual_timer.trigger, Trigger::Level);
    let uart = platform.uart.unwrap();
    assert_eq!(uart.region, Region::new(0x2200_0000, 0x1000));
    assert_eq!(uart.interrupt.unwrap().intid, 32);
    let hypervisor = platform.hypervisor.as_ref().unwrap();
    assert_eq!(hypervisor.version, "xen,xen-4.17");
    assert_eq!(hypervisor.grant_table, Region::new(0x3800_0000, 0x100_0000));
    assert_eq!(
        hypervisor.extended_regions.as_slice(),
        &[Region::new(0x8000_0000, 0x4000_0000)]
    );
    assert_eq!(hypervisor.upcall.intid, 31);
    assert!(platform.passthrough.is_empty());
    assert_eq!(platform.device_regions().count(), 3);
}

#[test]
fn reads_gicv2() {
    let platform = parse(&Options {
        gic_v3: false,
        ..Options::default()
    })
    .unwrap();
    assert_eq!(
        platform.gic,
        Gic::V2 {
            distributor: Region::new(0x300_1000, 0x1000),
            cpu_interface: Region::new(0x300_2000, 0x2000),
        }
    );
}

#[test]
fn reads_a_direct_mapped_domain_with_a_passed_through_device() {
    let platform = parse(&Options {
        memory: vec![(0x6000_0000, 0x100_0000)],
        uart_base: 0x900_0000,
        passthrough: vec![(
            "virtio_mmio@a003e00".to_string(),
            vec![0xa00_3e00, 0x200],
            vec![0, 0x2f, 1],
        )],
        ..Options::default()
    })
    .unwrap();
    assert_eq!(platform.memory[0].base, 0x6000_0000);
    assert_eq!(platform.uart.unwrap().region.base, 0x900_0000);
    let device = &platform.passthrough[0];
    assert_eq!(device.name, "virtio_mmio@a003e00");
    assert_eq!(device.compatible, Some("virtio,mmio"));
    assert_eq!(device.regions.as_slice(), &[Region::new(0xa00_3e00, 0x200)]);
    assert_eq!(device.interrupts[0].intid, 0x2f + 32);
    assert_eq!(device.interrupts[0].trigger, Trigger::Edge);
    assert!(device.dma_coherent);
    assert_eq!(platform.device_regions().count(), 4);
}

#[test]
fn works_without_hypervisor_node_and_bootargs() {
    let platform = parse(&Options {
        hypervisor: false,
        bootargs: None,
        ..Options::default()
    })
    .unwrap();
    assert!(platform.hypervisor.is_none());
    assert_eq!(platform.bootargs, "");
    assert_eq!(platform.arg("loglevel"), None);
}

#[test]
fn free_memory_excludes_image_device_tree_and_reservations() {
    let platform = parse(&Options {
        memory: vec![(0x4000_0000, 0x100_0000), (0x2_0000_0000, 0x20_0000)],
        memory_reserve: vec![(0x4080_0000, 0x1000)],
        reserved_memory: vec![(0x2_0000_0000, 0x1_0000)],
        initrd: Some((0x40a0_0000, 0x40a0_0800)),
        ..Options::default()
    })
    .unwrap();
    let dtb_end = (0x40f0_0000 + platform.device_tree.size).next_multiple_of(PAGE_SIZE);
    let free = platform.free_memory(&[Region::new(0x4000_0000, 0x1_1000)]);
    assert_eq!(
        free.as_slice(),
        &[
            Region::new(0x4001_1000, 0x4080_0000 - 0x4001_1000),
            Region::new(0x4080_1000, 0x40a0_0000 - 0x4080_1000),
            Region::new(0x40a0_1000, 0x40f0_0000 - 0x40a0_1000),
            Region::new(dtb_end, 0x4100_0000 - dtb_end),
            Region::new(0x2_0001_0000, 0x1f_0000),
        ]
    );
}

#[test]
fn boot_args_lookup() {
    assert_eq!(boot_arg("a=1 b c=3 a=4", "a"), Some("4"));
    assert_eq!(boot_arg("a=1 b c=3", "b"), Some(""));
    assert_eq!(boot_arg("a=1 b c=3", "c"), Some("3"));
    assert_eq!(boot_arg("a=1 b c=3", "d"), None);
    assert_eq!(boot_arg("ab=1", "a"), None);
    assert_eq!(boot_arg("  x=y=z  ", "x"), Some("y=z"));
}

#[test]
fn device_tree_size_reads_the_header() {
    assert_eq!(
        device_tree_size(&[0xd0, 0x0d, 0xfe, 0xed, 0, 0, 0x10, 0]),
        Some(0x1000)
    );
    assert_eq!(device_tree_size(&[0; 8]), None);
}

fn expect_error(options: Options, expected: &str) {
    match parse(&options) {
        Ok(platform) => panic!("expected error {expected:?}, parsed {platform:?}"),
        Err(message) => assert_eq!(message, expected),
    }
}

#[test]
fn not_a_device_tree() {
    assert_eq!(
        Platform::parse(&[0u8; 64], 0x4000_0000)
            .unwrap_err()
            .to_string(),
        "not a flattened device tree (bad header), in /"
    );
}

#[test]
fn missing_memory() {
    expect_error(
        Options {
            memory: vec![],
            ..Options::default()
        },
        "no memory node, in /memory property reg",
    );
}

#[test]
fn overlapping_memory() {
    expect_error(
        Options {
            memory: vec![(0x4000_0000, 0x100_0000), (0x4080_0000, 0x100_0000)],
            ..Options::default()
        },
        "memory banks overlap, in /memory property reg",
    );
}

#[test]
fn device_tree_outside_memory() {
    let dtb: &'static [u8] = StdVec::leak(build(&Options::default()));
    assert_eq!(
        Platform::parse(dtb, 0x1000).unwrap_err().to_string(),
        "the device tree is not inside any memory bank, in /memory property reg"
    );
}

#[test]
fn missing_gic() {
    // A GIC with the wrong #interrupt-cells, then none at all.
    expect_error(
        Options {
            gic_interrupt_cells: 2,
            ..Options::default()
        },
        "GIC must have #interrupt-cells = <3>, in /interrupt-controller@3001000 property #interrupt-cells",
    );
    expect_error(
        Options {
            second_gic: true,
            ..Options::default()
        },
        "more than one GIC node, in /interrupt-controller@3001001 property compatible",
    );
}

#[test]
fn missing_timer() {
    expect_error(
        Options {
            timer: false,
            ..Options::default()
        },
        "no generic timer (arm,armv8-timer), in /timer property compatible",
    );
    expect_error(
        Options {
            timer_interrupts: vec![1, 13, 0xf08, 0, 14, 0xf08, 1, 11, 0xf08],
            ..Options::default()
        },
        "timer needs at least 3 PPIs (secure, non-secure physical, virtual), in /timer property interrupts",
    );
}

#[test]
fn hypervisor_without_upcall_interrupt() {
    expect_error(
        Options {
            hypervisor_interrupts: None,
            ..Options::default()
        },
        "hypervisor node has no event-channel interrupt, in /hypervisor property interrupts",
    );
    expect_error(
        Options {
            hypervisor_interrupts: Some(vec![0, 15, 4]),
            ..Options::default()
        },
        "the event-channel upcall interrupt is not a PPI, in /hypervisor property interrupts",
    );
}

#[test]
fn passthrough_reg_with_wrong_cell_count() {
    expect_error(
        Options {
            passthrough_raw_reg: Some(vec![0, 0xa00_3e00, 0x200]),
            ..Options::default()
        },
        "reg is not a whole number of (#address-cells + #size-cells) entries, in /passthrough/broken@a003e00 property reg",
    );
}

#[test]
fn passthrough_device_in_ram() {
    expect_error(
        Options {
            passthrough: vec![(
                "dev@40000000".to_string(),
                vec![0x4000_0000, 0x1000],
                vec![0, 1, 4],
            )],
            ..Options::default()
        },
        "device registers overlap RAM, in /passthrough/dev@40000000 property reg",
    );
}

#[test]
fn bad_interrupt_specifier() {
    expect_error(
        Options {
            passthrough: vec![("dev@a000000".to_string(), vec![0xa00_0000, 0x1000], vec![2, 1, 4])],
            ..Options::default()
        },
        "interrupt is neither an SPI (0, <988) nor a PPI (1, <16), in /passthrough/dev@a000000 property interrupts",
    );
}

#[test]
fn region_helpers() {
    let region = Region::new(0x1001, 0x1000);
    assert_eq!(region.end(), 0x2001);
    assert!(region.contains(0x1001) && !region.contains(0x2001));
    assert_eq!(region.page_aligned_outward(), Region::new(0x1000, 0x2000));
    assert!(region.overlaps(&Region::new(0x2000, 1)));
    assert!(!region.overlaps(&Region::new(0x2001, 1)));
}

#[test]
fn empty_initrd_placeholders_are_no_initrd_and_a_reversed_one_is_an_error() {
    // Xen's placeholders when no initrd is loaded: both 0.
    let platform = parse(&Options {
        initrd: Some((0, 0)),
        ..Options::default()
    })
    .unwrap();
    assert!(platform.reserved.is_empty());
    expect_error(
        Options {
            initrd: Some((0x40a0_0000, 0x4090_0000)),
            ..Options::default()
        },
        "initrd start/end are not 1- or 2-cell addresses with start <= end, in /chosen property linux,initrd-start",
    );
}
