//! The `souk` binary's library: configuration, `serve`, `seed` and `load`.
//! It wires the crates into one process; the crates themselves know nothing of each other
//! beyond their declared dependencies.

pub mod config;
pub mod load;
pub mod seed;
pub mod serve;
