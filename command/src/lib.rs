//! sozu's command library: the protobuf orders and answers, the framed
//! channel they travel on, the TOML configuration that produces them, the
//! state they build, and file-descriptor passing for upgrades.
//!
//! Protobuf types stop at this crate's edge where a richer Rust type says
//! more: see [`proto::convert`] for addresses and "0 = unlimited" knobs.

pub mod certificate;
pub mod channel;
pub mod config;
pub mod limits;
pub mod proto;
pub mod scm;
pub mod state;

pub use proto::command;
