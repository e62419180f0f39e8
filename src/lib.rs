//! `portrange`: the pure and kernel-reading logic shared by the shim (`libportrange.so`, in
//! `shim/`) and the `portrange` command: configuration parsing, flow scope, the TCP strategy
//! choice, fleet planning and the sysctls of a network namespace.
//!
//! Nothing here interposes a libc symbol; the shim links this crate in.

#![deny(unsafe_op_in_unsafe_fn)]

pub mod choice;
pub mod config;
pub mod conntrack;
pub mod diag;
pub mod diag_wire;
pub mod elf;
pub mod nft;
pub mod placement;
pub mod plan;
pub mod reserve;
pub mod scope;
pub mod sockdiag;
pub mod stats;
pub mod status;
pub mod sysctl;

pub use choice::Tcp;
