//! The `dns_id` fuzz target's driver in the normal suite (stable, no
//! libFuzzer): the very file `fuzz/src/dns_id.rs`, over 3,000
//! quickcheck-generated inputs. See "Fuzzing" in `doc/testing.md`.

#[path = "../../fuzz/src/dns_id.rs"]
mod dns_id;

use quickcheck::{QuickCheck, TestResult};

#[test]
fn dns_id_generated_inputs() {
    fn prop(data: Vec<u8>) -> TestResult {
        dns_id::run(&data);
        TestResult::passed()
    }
    QuickCheck::new()
        .tests(3_000)
        .quickcheck(prop as fn(Vec<u8>) -> TestResult);
}
