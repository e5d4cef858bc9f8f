//! Harness for end-to-end tests that run the real `sozu` binary.
//!
//! A test starts a master with [`Sozu::start`] (a temp dir, a generated
//! `config.toml`, ephemeral loopback ports), drives it through the CLI
//! ([`Sozu::cli`]) or the raw command channel ([`Sozu::request`]), sends
//! traffic with [`UdpClient`] to [`UdpBackend`]s, observes processes through
//! `/proc` ([`procfs`]) and metrics ([`Metrics`]), and drops the [`Sozu`] to
//! kill every process it started, by pid.
//!
//! Nothing here sleeps blindly: every wait polls a condition against a
//! [`Deadline`] and fails with a message naming what it waited for.
//!
//! Lint gates: every public helper is documented, since tests across the
//! suite call it by name (`missing_docs`); `unreachable_pub` and
//! `clippy::undocumented_unsafe_blocks` as in the other crates.

#![deny(missing_docs, unreachable_pub)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod binary;
pub mod config;
pub mod deps;
pub mod http;
pub mod metrics;
pub mod ports;
pub mod procfs;
pub mod proxy_protocol;
pub mod quic;
pub mod sozu;
pub mod stream;
pub mod udp;
pub mod wait;

pub use config::{Backend, ClusterConfig, HealthConfig, SozuConfig, UdpListener};
pub use metrics::Metrics;
pub use sozu::{CliOutput, Sozu};
pub use udp::{Received, SteadyTraffic, TrafficReport, UdpBackend, UdpClient};
pub use wait::{wait_until, Deadline};
