//! sozu's command library: the protobuf orders and answers, the framed
//! channel they travel on, the TOML configuration that produces them, the
//! state they build, and file-descriptor passing for upgrades.
//!
//! Protobuf types stop at this crate's edge where a richer Rust type says
//! more: see [`proto::convert`] for addresses and "0 = unlimited" knobs.
//!
//! Lint gates, and why: this crate is the contract between the CLI, the
//! master, the workers and outside Sōzu tooling, so every public item says
//! what it is (`missing_docs`); an item marked `pub` that nothing outside
//! can reach is a lie about that contract (`unreachable_pub`); and every
//! `unsafe` block (fd passing, raw fds) states why it is sound
//! (`clippy::undocumented_unsafe_blocks`).

#![deny(missing_docs, unreachable_pub)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod certificate;
pub mod channel;
pub mod config;
pub mod limits;
pub mod proto;
pub mod scm;
pub mod state;

pub use proto::command;
