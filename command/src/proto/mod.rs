//! The generated protobuf types (`proto/command.proto`) and their
//! conversions to richer Rust types.

/// Messages generated from `proto/command.proto` by prost at build time.
#[allow(clippy::all, missing_docs)]
pub mod command {
    include!(concat!(env!("OUT_DIR"), "/sozu.command.rs"));
}

pub mod convert;
pub mod weight;

#[cfg(test)]
mod wire_tests;
