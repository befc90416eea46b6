//! Architecture support: boot code, exception vectors, MMU and CPU instructions that Rust
//! cannot express.
//!
//! Only `aarch64` bare metal exists so far. Everything in `aarch64` is `unsafe` territory and
//! stays small; [`esr`] is pure decoding and exists on every target so that it is tested.

#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub mod aarch64;
pub mod esr;
