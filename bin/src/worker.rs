//! `sozu worker`: one worker process, started by the master with its channel.

use std::process::ExitCode;

use clap::Args;

/// Arguments the master passes to a worker it starts.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Worker id given by the master.
    #[arg(long)]
    pub id: u32,
    /// File descriptor of the worker's end of the channel socketpair.
    #[arg(long)]
    pub channel_fd: i32,
}

pub fn run(args: WorkerArgs) -> ExitCode {
    eprintln!(
        "error: worker {} is not available yet (channel fd {})",
        args.id, args.channel_fd
    );
    ExitCode::FAILURE
}
