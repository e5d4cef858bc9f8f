//! Harness for end-to-end tests that run the real `sozu` binary.
