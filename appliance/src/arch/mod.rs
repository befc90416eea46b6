//! Architecture support: boot code and CPU instructions that Rust cannot express.
//!
//! Only `aarch64` bare metal exists so far. Everything here is `unsafe` territory and stays small.

#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub mod aarch64;
