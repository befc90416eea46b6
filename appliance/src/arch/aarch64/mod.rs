//! arm64 at EL1 under Xen: the Image header and entry code, exception vectors, the MMU, and
//! CPU helpers.

pub mod boot;
pub mod cpu;
pub mod exceptions;
pub mod mmu;
