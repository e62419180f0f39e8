//! The ways of placing a flow in a slice.
pub mod kernel;
