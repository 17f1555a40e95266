//! The `souk` binary's library: configuration, `serve`, `seed`, `load`, `keys`, `admin`, `notify`, `logs`, `asyncapi`,
//! `import`, `backup` and `restore`.
//! It wires the crates into one process; the crates themselves know nothing of each other
//! beyond their declared dependencies.

pub mod admin;
pub mod asyncapi;
pub mod backup;
pub mod client;
pub mod config;
pub mod import;
pub mod keys;
pub mod load;
pub mod logs;
pub mod notify;
pub mod seed;
pub mod serve;
