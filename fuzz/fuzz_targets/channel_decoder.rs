//! libFuzzer target: bytes → command channel frames → orders → state.
//! See `sozu_fuzz::channel_decoder` for the input layout and the oracles.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sozu_fuzz::channel_decoder::run(data));
