//! The Xen guest interface: ABI definitions, hypercalls and the Xen console.
//!
//! [`abi`] is plain data and exists on every target. The rest talks to Xen and exists on bare
//! metal only; `hypercall` is the one place with `unsafe` for it.

pub mod abi;

#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub mod console;
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub mod hypercall;
