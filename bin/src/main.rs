//! The `sozu` binary: `sozu start` runs the master, the hidden `sozu worker`
//! runs one worker (started by the master), every other subcommand is a
//! command-line client of a running master.
//!
//! Lint gates, and why: in a binary nothing is public outside the crate, so
//! `unreachable_pub` makes every item say `pub(crate)` and a bare `pub`
//! stands out as a mistake rather than an API; `missing_docs` keeps this
//! crate's own docs required should a part of it become a library; and the
//! process code is full of raw fds, fork/exec and signal handling, so every
//! `unsafe` block must state why it is sound
//! (`clippy::undocumented_unsafe_blocks`).

#![deny(missing_docs, unreachable_pub)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod cli;
mod ctl;
mod logging;
mod master;
mod worker;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command, WorkerCommand};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Start(args) => master::start(args),
        Command::Worker(WorkerCommand {
            process: Some(args),
            ..
        }) => worker::run(args),
        Command::Completions { shell } => {
            printed(cli::write_completions(shell, &mut std::io::stdout().lock()))
        }
        Command::Manpage => printed(cli::write_manpage(&mut std::io::stdout().lock())),
        command => ctl::run(cli.global, command),
    }
}

/// The exit code of a command that only prints.
fn printed(result: std::io::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: cannot write to stdout: {error}");
            ExitCode::FAILURE
        }
    }
}
