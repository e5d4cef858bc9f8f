//! libFuzzer target: bytes → an HTTPS client connection (raw bytes, or a
//! real rustls client with split, injected and flipped records) → the TLS
//! transport → the HTTP session model. See `sozu_fuzz::tls_http`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sozu_fuzz::tls_http::run(data);
});
