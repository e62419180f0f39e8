//! The ways of placing a flow in a slice.
pub mod exclusive;
pub mod kernel;
pub mod order;
