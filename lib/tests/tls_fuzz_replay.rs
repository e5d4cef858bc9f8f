//! The `tls_http` fuzz target's entry function in the normal suite (stable,
//! no libFuzzer): the very file `fuzz/src/tls_http.rs`, replayed over its
//! hostile corpus (plain HTTP on the TLS port, oversized and truncated
//! records, a handshake message larger than rustls joins, garbage and
//! flipped bits after a real handshake, a client that never reads, a head
//! too large, a dribbled handshake), over the files of
//! `fuzz/seeds/tls_http/` and `fuzz/regressions/tls_http/`, then over
//! pseudo-random scripts. See "Fuzzing" in `doc/testing.md`.

#[path = "../../fuzz/src/tls_http.rs"]
mod tls_http;

use std::path::Path;

/// Each hostile input ends the way a user would check: refused as TLS,
/// or served up to the point the bytes allow, within the bounds.
#[test]
fn tls_http_hostile_corpus_replays() {
    let corpus = tls_http::hostile_inputs();
    assert_eq!(corpus.len(), 11, "the corpus changed: update the checks");
    for (name, input) in corpus {
        let o = tls_http::run(&input);
        eprintln!("{name}: {o:?}");
        match name {
            // Not TLS, or a record TLS does not allow: refused before any
            // handshake, nothing reaches the HTTP layer.
            // (A handshake message beyond what rustls joins once stalled
            // here until the deadline: the driver's no-stall check.)
            "raw-plain-http" | "raw-oversized-record" | "raw-huge-client-hello" => {
                assert!(o.tls_error && !o.handshake && o.plaintext == 0, "{name}")
            }
            // A hello that never completes: no error, ended by the EOF.
            "raw-truncated-hello" => assert!(!o.tls_error && !o.handshake, "{name}"),
            // Records in 1-byte pieces: every pipelined request served.
            "client-requests-split" => {
                assert!(o.handshake && !o.tls_error && o.requests == 12, "{name}")
            }
            // Garbage, a flipped bit or an oversized record after a real
            // handshake: refused, and no plaintext reaches the HTTP layer
            // from the damaged record (the prefix check ran in `run`).
            "client-garbage-after-handshake"
            | "client-flipped-bit"
            | "client-oversized-app-record" => {
                assert!(o.handshake && o.tls_error && o.plaintext == 0, "{name}")
            }
            // A client that never reads: the output bound is reached and
            // holds; received plaintext waiting is bounded too.
            "client-tls12-hoarding" => {
                assert!(o.handshake && !o.tls_error, "{name}");
                assert!(o.out_peak > 32 * 1024, "{name}: out peak {}", o.out_peak);
                assert!(o.held_peak > 4096, "{name}: held peak {}", o.held_peak);
            }
            "client-head-too-large" => assert_eq!(o.closed_with, Some(431), "{name}"),
            "client-dribbled-handshake" => {
                assert!(o.handshake && !o.tls_error && o.requests == 4, "{name}")
            }
            other => panic!("no check for {other}"),
        }
    }
}

#[test]
fn tls_http_saved_inputs_replay() {
    for dir in ["seeds", "regressions"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz")
            .join(dir)
            .join("tls_http");
        let Ok(entries) = std::fs::read_dir(&path) else {
            continue;
        };
        for entry in entries {
            let file = entry.expect("a directory entry").path();
            eprintln!("replaying {}", file.display());
            tls_http::run(&std::fs::read(&file).expect("a readable input"));
        }
    }
}

/// Pseudo-random scripts (xorshift, fixed seed): every scenario bit and
/// every operation gets exercised.
#[test]
fn tls_http_pseudo_random_scripts() {
    let mut state = 0x0123_4567_89ab_cdefu64;
    for round in 0..300u32 {
        let mut data = Vec::with_capacity(256);
        data.push(round as u8);
        for _ in 0..255 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            data.push(state as u8);
        }
        tls_http::run(&data);
    }
}
