//! Kernel-facing pieces, each small and tested against the real kernel.
pub mod addr;
pub mod conntrack;
pub mod diag;
pub mod holder;
pub mod netlink;
pub mod options;
pub mod ownfd;
pub mod pid;
pub mod swap;
pub use portrange_lib::sysctl;
