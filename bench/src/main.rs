//! sozu-bench: UDP benchmark tool for sozu.
//!
//! `gen` is the load generator, `echo` the echo backend, `run` the
//! scenario runner comparing direct, sozu, nginx `stream` and Envoy
//! `udp_proxy`; `https` compares sozu and nginx terminating TLS (h2load
//! against the `httpd` backend). Everything stays on loopback and every
//! phase is bounded.
//!
//! Lint gates as in the `sozu` binary: items are `pub(crate)` (nothing is
//! public outside a binary), and every `unsafe` block (mmsg batches, raw
//! sockets) says why it is sound.

#![deny(missing_docs, unreachable_pub)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod dns;
mod echo;
mod generator;
mod https;
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
    /// Scenario runner: direct vs sozu vs nginx vs envoy (the targets).
    Run(runner::RunArgs),
    /// One-way load (no answers) from many sources: proxy CPU per datagram
    /// (targets: sozu, nginx).
    Oneway(oneway::OneWayArgs),
    /// DNS-shaped one-reply queries, each from a new source port (or
    /// dnsperf → dnsmasq): sozu DNS_ID vs flows vs nginx vs dnsdist.
    Dns(dns::DnsArgs),
    /// HTTPS through sozu and nginx with one certificate (h2load --h1):
    /// keep-alive requests/s, handshakes/s, proxy CPU per request.
    Https(https::HttpsArgs),
    /// Tiny HTTP/1.1 keep-alive backend (fixed body), for `https`.
    Httpd(https::HttpdArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Gen(args) => generator::run(&args),
        Cmd::Echo(args) => echo::run(&args),
        Cmd::Run(args) => runner::run(&args),
        Cmd::Oneway(args) => oneway::run(&args),
        Cmd::Dns(args) => dns::run(&args),
        Cmd::Https(args) => https::run(&args),
        Cmd::Httpd(args) => https::run_httpd(&args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sozu-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::{Cli, Cmd};

    #[test]
    fn shared_options_parse_the_same_in_every_command() {
        Cli::command().debug_assert();
        let parse = |command: &str| {
            Cli::try_parse_from([
                "sozu-bench",
                command,
                "--targets",
                "sozu,nginx",
                "--no-pin",
                "--sozu",
                "/bin/true",
            ])
            .expect("shared options parse")
            .command
        };
        for command in ["run", "oneway", "dns", "https"] {
            let target = match parse(command) {
                Cmd::Run(args) => args.target,
                Cmd::Oneway(args) => args.target,
                Cmd::Dns(args) => args.target,
                Cmd::Https(args) => args.target,
                other => panic!("{other:?}"),
            };
            assert_eq!(target.targets, ["sozu", "nginx"], "{command}");
            assert!(target.no_pin, "{command}");
            assert_eq!(target.sozu.as_deref(), Some("/bin/true".as_ref()));
        }
        let Cmd::Dns(dns) = Cli::try_parse_from(["sozu-bench", "dns", "--rounds", "2"])
            .expect("dns parses")
            .command
        else {
            panic!("dns");
        };
        assert_eq!((dns.load.rounds, dns.load.sources), (2, 10_000));
    }
}
