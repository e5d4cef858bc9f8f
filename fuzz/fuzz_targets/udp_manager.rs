//! Fuzz target: drives a UDP flow manager from arbitrary bytes (see
//! `sozu_fuzz::drive_udp_manager`). Debug assertions (on by default under
//! cargo-fuzz) run the manager's invariant sweep after every call.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sozu_fuzz::drive_udp_manager(data);
});
