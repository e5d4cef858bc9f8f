//! The fuzz targets' entry functions in the normal suite (stable, no
//! libFuzzer): the very files `fuzz/src/{channel_decoder,config_loader}.rs`
//! that the libFuzzer binaries call, replayed over every file of
//! `fuzz/seeds/<target>/` and `fuzz/regressions/<target>/` (crash inputs
//! kept once fixed), then over a few thousand
//! quickcheck-generated inputs. See "Fuzzing" in `doc/testing.md`.

#[path = "../../fuzz/src/channel_decoder.rs"]
mod channel_decoder;
#[path = "../../fuzz/src/config_loader.rs"]
mod config_loader;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use quickcheck::{Gen, QuickCheck, TestResult};

fn replay_dir(target: &str, run: fn(&[u8])) -> usize {
    let mut count = 0;
    for dir in ["seeds", "regressions"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz")
            .join(dir)
            .join(target);
        let Ok(entries) = std::fs::read_dir(&path) else {
            continue;
        };
        for entry in entries {
            let file = entry.unwrap().path();
            let bytes = std::fs::read(&file).unwrap();
            eprintln!("replaying {}", file.display());
            run(&bytes);
            count += 1;
        }
    }
    count
}

#[test]
fn channel_decoder_corpus_replays() {
    assert!(
        replay_dir("channel_decoder", channel_decoder::run) > 0,
        "no seed corpus"
    );
}

#[test]
fn config_loader_corpus_replays() {
    assert!(
        replay_dir("config_loader", config_loader::run) > 0,
        "no seed corpus"
    );
}

#[test]
fn channel_decoder_generated_streams() {
    fn prop(max: u8, initial: u8, seed: u16, parts: Vec<(u8, u16, Vec<u8>)>) -> TestResult {
        let stream = channel_decoder::stream_from_parts(&parts);
        channel_decoder::run(&channel_decoder::encode_input(max, initial, seed, &stream));
        TestResult::passed()
    }
    QuickCheck::new()
        .tests(3_000)
        .quickcheck(prop as fn(u8, u8, u16, Vec<(u8, u16, Vec<u8>)>) -> TestResult);
}

static ACCEPTED: AtomicUsize = AtomicUsize::new(0);

#[test]
fn config_loader_generated_texts() {
    fn prop(lines: Vec<(u8, String)>) -> TestResult {
        if config_loader::check(&config_loader::text_from_lines(&lines)) {
            ACCEPTED.fetch_add(1, Ordering::Relaxed);
        }
        TestResult::passed()
    }
    QuickCheck::new()
        .tests(3_000)
        .rng(Gen::new(6))
        .quickcheck(prop as fn(Vec<(u8, String)>) -> TestResult);
    // About a third of generated texts are valid; far fewer means the
    // generator stopped reaching order generation.
    let accepted = ACCEPTED.load(Ordering::Relaxed);
    assert!(
        accepted >= 300,
        "only {accepted} of 3000 generated configurations were accepted"
    );
}
