//! Kernel-facing pieces, each small and tested against the real kernel.
pub mod addr;
pub mod diag;
pub mod ownfd;
pub mod sysctl;
