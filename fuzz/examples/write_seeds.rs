//! Writes the channel decoder's seed corpus (`seeds/channel_decoder/seed-*`):
//! well-formed frames of several orders, split and pipelined, plus the
//! boundary cases of the framing rule; and the `tls_http` hostile corpus
//! (`seeds/tls_http/seed-*`). Run once with
//! `cargo run --manifest-path fuzz/Cargo.toml --no-default-features --example write_seeds`.

use sozu_fuzz::channel_decoder::{encode_input, frame, sample_request, stream_from_parts};

fn main() -> std::io::Result<()> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds/channel_decoder");
    std::fs::create_dir_all(&dir)?;
    let orders: Vec<u8> = (0..6u8)
        .flat_map(|kind| frame(&sample_request(kind, b"\x35\x14dns")))
        .collect();
    let seeds: Vec<(&str, Vec<u8>)> = vec![
        ("seed-orders", encode_input(5, 3, 7, &orders)),
        ("seed-orders-small-max", encode_input(2, 1, 99, &orders)),
        (
            "seed-undecodable",
            encode_input(5, 0, 1, &stream_from_parts(&[(1, 0, vec![0xff; 9])])),
        ),
        (
            "seed-too-short",
            encode_input(5, 2, 3, &stream_from_parts(&[(3, 7, vec![])])),
        ),
        (
            "seed-too-large",
            encode_input(1, 2, 3, &stream_from_parts(&[(3, 65, vec![])])),
        ),
        (
            "seed-half-frame",
            encode_input(4, 2, 5, &orders[..orders.len() - 3]),
        ),
    ];
    for (name, bytes) in seeds {
        std::fs::write(dir.join(name), bytes)?;
    }
    // The TLS hand-off's hostile corpus, as seeds for `tls_http`.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds/tls_http");
    std::fs::create_dir_all(&dir)?;
    for (name, bytes) in sozu_fuzz::tls_http::hostile_inputs() {
        std::fs::write(dir.join(format!("seed-{name}")), bytes)?;
    }
    Ok(())
}
