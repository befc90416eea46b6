//! Decoding of `ESR_EL1`, the exception syndrome, into words for crash reports.
//!
//! Pure data (Arm ARM D24.2.47, ESR_EL1), so it exists and is tested on every target. It owns
//! no state and must never touch hardware.

use core::fmt;

/// The exception class field (ESR bits 31:26).
pub const fn exception_class(esr: u64) -> u8 {
    ((esr >> 26) & 0x3f) as u8
}

/// A readable name of the exception class of `esr`.
pub const fn exception_class_name(esr: u64) -> &'static str {
    match exception_class(esr) {
        0x00 => "unknown reason (undefined instruction)",
        0x01 => "trapped WFI/WFE",
        0x07 => "trapped SVE/SIMD/FP access",
        0x0e => "illegal execution state",
        0x15 => "SVC instruction",
        0x16 => "HVC instruction",
        0x17 => "SMC instruction",
        0x18 => "trapped MSR/MRS/system instruction",
        0x19 => "trapped SVE access",
        0x20 => "instruction abort from EL0",
        0x21 => "instruction abort",
        0x22 => "PC alignment fault",
        0x24 => "data abort from EL0",
        0x25 => "data abort",
        0x26 => "SP alignment fault",
        0x2c => "floating-point exception",
        0x2f => "SError interrupt",
        0x30 | 0x31 => "breakpoint",
        0x32 | 0x33 => "software step",
        0x34 | 0x35 => "watchpoint",
        0x3c => "BRK instruction",
        _ => "other exception class",
    }
}

/// Whether `esr` reports an instruction or data abort (then `FAR_EL1` holds the address).
pub const fn is_abort(esr: u64) -> bool {
    matches!(exception_class(esr), 0x20 | 0x21 | 0x24 | 0x25)
}

/// The fault status code of an abort (ISS bits 5:0), in words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultStatus(pub u64);

impl FaultStatus {
    /// The fault status of abort syndrome `esr`.
    pub const fn of(esr: u64) -> Self {
        Self(esr & 0x3f)
    }
}

impl fmt::Display for FaultStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = self.0 & 3;
        match self.0 >> 2 {
            0b0000 => write!(f, "address size fault at level {level}"),
            0b0001 => write!(f, "translation fault at level {level}"),
            0b0010 => write!(f, "access flag fault at level {level}"),
            0b0011 => write!(f, "permission fault at level {level}"),
            _ => match self.0 {
                0b01_0000 => write!(f, "synchronous external abort"),
                0b10_0001 => write!(f, "alignment fault"),
                0b11_0000 => write!(f, "TLB conflict abort"),
                code => write!(f, "fault status {code:#04x}"),
            },
        }
    }
}

/// Whether a data abort syndrome says the access was a write (ISS bit 6, WnR).
pub const fn is_write(esr: u64) -> bool {
    esr & (1 << 6) != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;

    #[test]
    fn names_a_same_el_data_abort_read_translation_fault() {
        // What reading an unmapped address at EL1 gives: EC 0x25, IL, DFSC 0b000110.
        let esr = 0x9600_0006;
        assert_eq!(exception_class_name(esr), "data abort");
        assert!(is_abort(esr));
        assert!(!is_write(esr));
        assert_eq!(
            FaultStatus::of(esr).to_string(),
            "translation fault at level 2"
        );
    }

    #[test]
    fn names_other_classes() {
        assert_eq!(exception_class_name(0xf200_0000), "BRK instruction");
        assert_eq!(
            exception_class_name(0x0200_0000),
            "unknown reason (undefined instruction)"
        );
        assert!(!is_abort(0xf200_0000));
        assert_eq!(FaultStatus(0x21).to_string(), "alignment fault");
        assert_eq!(FaultStatus(0x0f).to_string(), "permission fault at level 3");
        assert_eq!(FaultStatus(0x3f).to_string(), "fault status 0x3f");
    }
}
