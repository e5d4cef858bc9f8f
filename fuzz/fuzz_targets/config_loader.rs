//! libFuzzer target: bytes → `Config::from_str` → orders → state.
//! See `sozu_fuzz::config_loader` for the oracles.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sozu_fuzz::config_loader::run(data));
