//! Harness for the `libportrange.so` integration tests.
//!
//! Every test runs a real program (curl, python3, node, java, ...) with the shim preloaded and
//! asserts on what the *peer* saw: a [`Recorder`] is a TCP listener that remembers the source
//! address of every connection it accepted.
//!
//! Ports: tests in one binary run in parallel and several test binaries may run at once, so
//! every port comes from a machine-wide allocator (a counter file guarded by `flock`):
//! [`slice_ports`] for slices (inside the kernel's ephemeral range), [`high_slice_ports`] for
//! slices above it, [`listen_port`] for listeners (below the ephemeral range, so neither the
//! kernel's automatic port choice nor a slice ever lands on a listener's port).
//!
//! One module per concern, all re-exported here: [`artifacts`] (the library and binary under
//! test), [`ports`], [`recorder`], [`assert`], [`tools`] (required programs, visible skips),
//! [`tempdir`], [`run`] (programs under the shim), [`netns`] (private namespaces, veth pairs),
//! [`strategies`], [`golden`], [`cprog`] (C test programs), [`json`].

pub mod json;
pub use json::Json;

pub const EPERM: i32 = libc::EPERM;
pub const EAGAIN: i32 = libc::EAGAIN;
pub const EADDRNOTAVAIL: i32 = libc::EADDRNOTAVAIL;
pub const ECONNREFUSED: i32 = libc::ECONNREFUSED;
pub const EINPROGRESS: i32 = libc::EINPROGRESS;

pub mod artifacts;
pub use artifacts::*;
pub mod ports;
pub use ports::*;
pub mod recorder;
pub use recorder::*;
pub mod assert;
pub use assert::*;
pub mod tools;
pub use tools::*;
pub mod tempdir;
pub use tempdir::*;
pub mod run;
pub use run::*;
pub mod netns;
pub use netns::*;
pub mod strategies;
pub use strategies::*;
pub mod golden;
pub use golden::*;
pub mod cprog;
pub use cprog::*;
