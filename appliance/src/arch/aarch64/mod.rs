//! arm64 at EL1 under Xen: the Image header and entry code, and CPU helpers.

pub mod boot;
pub mod cpu;
