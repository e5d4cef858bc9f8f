//! Fuzz target: drives the `DNS_ID` mux from arbitrary bytes (see
//! `sozu_fuzz::dns_id::run`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sozu_fuzz::dns_id::run(data);
});
