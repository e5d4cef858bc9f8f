//! Finding the `sozu` binary under test.
//!
//! The e2e tests are built into `<target>/<profile>/deps/`; the binary is in
//! `<target>/<profile>/sozu`. This works with any `CARGO_TARGET_DIR` because
//! it starts from the running test executable. `SOZU_BIN` overrides it.

use std::path::PathBuf;

/// Path of the `sozu` binary to test; panics with what to do if it is
/// missing.
pub fn sozu_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("SOZU_BIN") {
        let path = PathBuf::from(path);
        assert!(path.is_file(), "SOZU_BIN={} is not a file", path.display());
        return path;
    }
    let exe = std::env::current_exe().expect("the test executable has a path");
    // <target>/<profile>/deps/<test>-<hash> → <target>/<profile>/sozu
    let mut candidates = Vec::new();
    if let Some(deps) = exe.parent() {
        if let Some(profile) = deps.parent() {
            candidates.push(profile.join("sozu"));
        }
        candidates.push(deps.join("sozu"));
    }
    for candidate in &candidates {
        if candidate.is_file() {
            return candidate.clone();
        }
    }
    panic!(
        "the sozu binary is missing (looked at {candidates:?}); build it first with \
         `cargo build -p sozu` (same profile and CARGO_TARGET_DIR as the tests), \
         or run `cargo test --workspace`, or set SOZU_BIN"
    );
}
