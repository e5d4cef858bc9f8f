//! sozu-bench: UDP benchmark tool for sozu.
//!
//! `gen` is the load generator, `echo` the echo backend, `run` the
//! scenario runner comparing direct, sozu, nginx `stream` and Envoy
//! `udp_proxy`. Everything stays on loopback and every phase is bounded.
//!
//! Lint gates as in the `sozu` binary: items are `pub(crate)` (nothing is
//! public outside a binary), and every `unsafe` block (mmsg batches, raw
//! sockets) says why it is sound.

#![deny(missing_docs, unreachable_pub)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod dns;
mod echo;
mod generator;
mod oneway;
mod runner;
mod stats;

use clap::{Parser, Subcommand};

/// UDP benchmark tool: load generator, echo backend, scenario runner.
#[derive(Parser, Debug)]
#[command(name = "sozu-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// UDP load generator (F flows, W in flight or an open-loop rate).
    Gen(generator::GenArgs),
    /// UDP echo backend (recvmmsg/sendmmsg, several sockets).
    Echo(echo::EchoArgs),
    /// Scenario runner: direct vs sozu vs nginx vs envoy.
    Run(runner::RunArgs),
    /// One-way load (no answers) from many sources: proxy CPU per datagram.
    Oneway(oneway::OneWayArgs),
    /// DNS-shaped one-reply queries, each from a new source port (or
    /// dnsperf → dnsmasq): sozu DNS_ID vs flows vs nginx vs dnsdist.
    Dns(dns::DnsArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Gen(args) => generator::run(&args),
        Cmd::Echo(args) => echo::run(&args),
        Cmd::Run(args) => runner::run(&args),
        Cmd::Oneway(args) => oneway::run(&args),
        Cmd::Dns(args) => dns::run(&args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sozu-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
