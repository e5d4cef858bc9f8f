//! Fuzz entry functions for sozu, shared by the libFuzzer targets in
//! `fuzz_targets/` and by the normal suite's stable replay
//! (`command/tests/fuzz_replay.rs` includes these module files by path).
//!
//! Each entry function takes arbitrary bytes, drives one parser or state
//! machine the way a peer or an operator could, and panics only when an
//! oracle is violated (a crash of the code under test, or a result that
//! contradicts an independent model). It must never panic on input the code
//! under test is entitled to refuse. The UDP flow manager's target is owned
//! by the `udp_manager` target beside these.

pub mod channel_decoder;
pub mod config_loader;
