//! The generated protobuf types (`proto/command.proto`) and their
//! conversions to richer Rust types.

/// Messages generated from `proto/command.proto` by prost at build time.
///
/// The crate's `missing_docs` gate is lifted here only: prost carries the
/// `.proto`'s comments over (protox keeps the source info), but the
/// Sōzu-compatible schema does not comment every message and field; a
/// comment added in `proto/command.proto` shows up here as the item's doc.
/// Clippy's lints do not apply to generated code.
#[allow(clippy::all, missing_docs)]
pub mod command {
    include!(concat!(env!("OUT_DIR"), "/sozu.command.rs"));
}

pub mod convert;
pub mod weight;

#[cfg(test)]
mod wire_tests;
