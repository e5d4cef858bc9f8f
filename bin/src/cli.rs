//! The command line (clap). `start` and the hidden `worker` run processes;
//! every other subcommand is turned into one order by [`crate::ctl`].

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// sozu: a UDP, TCP and HTTP reverse proxy steered at runtime.
#[derive(Debug, Parser)]
#[command(name = "sozu", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Options shared by every client command.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Configuration file; its `command_socket` is the master to talk to.
    #[arg(short = 'c', long = "config", global = true)]
    pub config: Option<PathBuf>,
    /// Command socket path (overrides the configuration file).
    #[arg(long = "socket", global = true)]
    pub socket: Option<PathBuf>,
    /// Print answers as JSON.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the master and its workers.
    Start(crate::master::StartArgs),
    /// Run one worker (started by the master, not by hand).
    #[command(hide = true)]
    Worker(crate::worker::WorkerArgs),
    /// Show the workers and their state.
    Status,
}
