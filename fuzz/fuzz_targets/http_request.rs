//! libFuzzer target: pipelined HTTP/1.1 requests → heads, forwarded heads,
//! body framing. See `sozu_fuzz::http_request` for the oracles.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sozu_fuzz::http_request::run(data));
