//! The `http_request` fuzz target's entry function in the normal suite
//! (stable, no libFuzzer): the very file `fuzz/src/http_request.rs`, replayed
//! over `fuzz/seeds/http_request/` and `fuzz/regressions/http_request/`, then
//! over 3,000 quickcheck-generated pipelined request streams. See "Fuzzing"
//! in `doc/testing.md`.

#[path = "../../fuzz/src/http_request.rs"]
mod http_request;

use std::path::Path;

use quickcheck::{QuickCheck, TestResult};

#[test]
fn http_request_corpus_replays() {
    let mut count = 0;
    for dir in ["seeds", "regressions"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz")
            .join(dir)
            .join("http_request");
        let Ok(entries) = std::fs::read_dir(&path) else {
            continue;
        };
        for entry in entries {
            let file = entry.unwrap().path();
            eprintln!("replaying {}", file.display());
            http_request::run(&std::fs::read(&file).unwrap());
            count += 1;
        }
    }
    assert!(count > 0, "no seed corpus");
}

#[test]
fn http_request_generated_pipelines() {
    fn prop(control: u8, parts: Vec<(u8, Vec<u8>, u8)>) -> TestResult {
        http_request::run(&http_request::stream_from_parts(control, &parts));
        TestResult::passed()
    }
    QuickCheck::new()
        .tests(3_000)
        .quickcheck(prop as fn(u8, Vec<(u8, Vec<u8>, u8)>) -> TestResult);
}
